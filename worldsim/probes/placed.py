"""Placed: what the agent built stays where it put it. In a top-down grid world (Crafter)
the agent plants a sapling, walks away until the plant leaves the view, and comes back to
a cell it never stood on; scored on the plant's cell in the returned frame.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from envs import GRID_MOVES, action_meanings
from worldsim.cells import VIEW
from worldsim.probes.common import Probe, Scenario, first_env_seed, masked_psnr
from worldsim.probes.walkback import BACK, GridWalk, cells_to_pixels
from worldsim.tokenizer import psnr

RETURN_DISTANCE = 3  # cells between the returned player and its plant: no context frame shows the plant there


def placed_scenarios(env_id: str, env_kwargs: dict, count: int, context: int, seed: int = 0,
                     view=VIEW, max_tries: int = 60) -> list[Scenario]:
    """Random play for a context window, then: step one cell a way whose next cell is grass,
    `do` on that grass until a sapling is in the inventory (at most `max_tries`), plant it,
    and step one cell back (the plant two cells off): the context ends there. The script
    walks on, away from the plant, until it leaves the view, waits (half the scripts no
    steps, half a context window of noops), and walks back to RETURN_DISTANCE cells from it,
    a cell no context frame was taken from, so holding the last frame draws the plant one
    cell off. Kept only where every step moved as planned and the world map (gt["semantic"])
    still holds the plant at the return; gt["plant"] masks its cell in the returned frame."""
    from envs.crafter_env import INVENTORY, SEMANTIC_IDS

    env = gym.make(env_id, **env_kwargs)
    names = list(action_meanings(env))
    if not set(GRID_MOVES) | {"do", "place_plant", "noop"} <= set(names):
        env.close()
        raise ValueError(f"the placed probe plants a sapling on a grid: {env_id} has actions {names}, expected "
                         f"{', '.join(GRID_MOVES)}, do, place_plant and noop among them")
    grass, plant, sapling = SEMANTIC_IDS.index("grass"), SEMANTIC_IDS.index("plant"), INVENTORY.index("sapling")
    walkable = [SEMANTIC_IDS.index(n) for n in ("grass", "sand", "path")]
    cols, rows = view
    out, s = [], first_env_seed(seed)
    for _ in range(count * 20):  # tries: the way may be blocked, no sapling may fall, the episode may end
        if len(out) == count:
            break
        rng = np.random.default_rng(s)
        s += 1
        wait = 0 if len(out) % 2 == 0 else context
        walk = GridWalk(env, s - 1)
        if not walk.take(rng.integers(len(names), size=context).tolist()):
            continue
        world, here = walk.gt["semantic"], np.asarray(walk.gt["player_pos"])
        hide = (cols // 2 + 1, rows // 2 + 1)  # cells away at which the plant leaves the view, across / up-down
        ways = {}  # the open ways, and how far each walks away
        for way, d in GRID_MOVES.items():
            away = hide[0] if d[0] else hide[1]
            cells = [here + np.multiply(d, k) for k in range(-away, 3) if k]  # the walk away, a step, the plant's cell
            if all(0 <= c[0] < world.shape[0] and 0 <= c[1] < world.shape[1] for c in cells) and all(
                    world[tuple(c)] in walkable for c in cells[:-1]) and world[tuple(cells[-1])] == grass:
                ways[way] = away
        if not ways:
            continue
        way = str(rng.choice(list(ways)))
        d, away = np.asarray(GRID_MOVES[way]), ways[way]
        if not walk.take([names.index(way)]):
            continue
        target = np.asarray(walk.gt["player_pos"]) + d
        for _ in range(max_tries):
            if walk.gt["inventory"][sapling] > 0 or not walk.take([names.index("do")]):
                break
        if walk.gt["inventory"][sapling] == 0 or not walk.take([names.index("place_plant")]):
            continue
        if walk.gt["semantic"][tuple(target)] != plant:
            continue
        if not walk.take([names.index(BACK[way])]):
            continue
        last = len(walk.actions)  # the last context frame: the plant two cells off
        out_steps = away - 2  # from two cells off to `away`: out of view
        if not walk.take([names.index(BACK[way])] * out_steps + [names.index("noop")] * wait
                         + [names.index(way)] * (away - RETURN_DISTANCE)):
            continue
        pos = np.stack(walk.positions)
        far = last + out_steps
        if not (np.array_equal(target - pos[last], 2 * d) and np.array_equal(target - pos[far], away * d)
                and np.array_equal(target - pos[-1], RETURN_DISTANCE * d)
                and walk.gt["semantic"][tuple(target)] == plant):
            continue
        first = last - (context - 1)
        frames, actions = np.stack(walk.frames[first:]), np.asarray(walk.actions[first:])
        cell = np.zeros((rows, cols), bool)
        cell[rows // 2 + RETURN_DISTANCE * d[1], cols // 2 + RETURN_DISTANCE * d[0]] = True
        ret = len(actions)
        out.append(Scenario("placed", frames, actions, {"plant": cells_to_pixels(cell, frames.shape[1:3])}, context,
                            {"kind": "within context" if ret - (context - 1) < context else "beyond context",
                             "return": ret, "gap": ret - (context - 1), "way": str(BACK[way]), "seed": s - 1}))
    env.close()
    if len(out) < count:
        raise ValueError(f"placed: only {len(out)} of {count} scripts in {env_id} planted a sapling, walked out of "
                         "its view and back unblocked (it reads the world map from info['gt']['semantic'])")
    return out


def score_placed(scenarios, predictions) -> dict:
    """PSNR of the plant's cell in the returned frame, and of the whole returned frame, by
    kind (within or beyond the context window)."""
    rows = []
    for s, p in zip(scenarios, predictions):
        j, real = s.meta["return"] - s.context, s.frames[s.meta["return"]]
        rows.append({"kind": s.meta["kind"], "gap": s.meta["gap"],
                     "plant_cell_psnr_db": masked_psnr(p[j], real, s.gt["plant"]),
                     "psnr_vs_real_db": float(np.minimum(psnr(p[j], real), 99.0))})
    cell = [r["plant_cell_psnr_db"] for r in rows]
    kinds = sorted({r["kind"] for r in rows})
    return {"plant_cell_psnr_db": float(np.mean(cell)), "plant_cell_psnr_db_stderr": float(np.std(cell) / np.sqrt(len(cell))),
            "psnr_vs_real_db": float(np.mean([r["psnr_vs_real_db"] for r in rows])),
            "plant_cell_by_kind": {k: float(np.mean([r["plant_cell_psnr_db"] for r in rows if r["kind"] == k]))
                                   for k in kinds},
            "scenarios": rows}


def placed_headline(score: dict) -> str:
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in score["plant_cell_by_kind"].items())
    return (f"the planted cell on return {score['plant_cell_psnr_db']:.2f} ± {score['plant_cell_psnr_db_stderr']:.2f} dB "
            f"({kinds}); returned view {score['psnr_vs_real_db']:.2f} dB")


def placed_plot(cases, views, scores, path, count: int = 8):
    """The first `count` scripts: the last context frame (the plant two cells off), the real
    return and each predictor's, the plant's cell outlined."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cases = cases[:count]
    names = list(views)
    fig, axes = plt.subplots(2 + len(names), len(cases), figsize=(1.3 * len(cases), 1.4 * (2 + len(names))),
                             squeeze=False)
    for j, case in enumerate(cases):
        ret = case.meta["return"]
        ys, xs = np.nonzero(case.gt["plant"])
        panels = [("last context\nframe", case.frames[case.context - 1]), ("real", case.frames[ret])]
        panels += [(n.replace("_", "\n"), views[n][j][ret - case.context]) for n in names]
        for i, (label, image) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(image, interpolation="nearest")
            if i:
                ax.add_patch(Rectangle((xs.min() - 0.5, ys.min() - 0.5), np.ptp(xs) + 1, np.ptp(ys) + 1, fill=False,
                                       edgecolor="tab:red", linewidth=1))
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
        axes[0, j].set_title(f"{case.meta['kind']}\ngap {case.meta['gap']}", fontsize=7)
    fig.suptitle("a planted sapling seen again from three cells off (red: its cell)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


PROBE = Probe("placed", lambda setup: placed_scenarios(setup.env_id, setup.env_kwargs, setup.count, setup.context,
                                                       setup.seed),
              lambda cases, predictions, reference, setup: score_placed(cases, predictions), placed_headline,
              figure=placed_plot, figure_file="placed_returns.png")
