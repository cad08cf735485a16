"""Walkback: loop closure for top-down grid worlds (Crafter): walk out until the start
view's edge cells leave the view, and back; scored on the cells that left and came back.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from envs import GRID_MOVES, action_meanings
from worldsim.cells import VIEW, view_geometry
from worldsim.probes.common import Probe, Scenario, first_env_seed, masked_psnr
from worldsim.probes.loop import loop_headline, score_loop

BACK = {"move_left": "move_right", "move_right": "move_left", "move_up": "move_down", "move_down": "move_up"}


def walkback_scenarios(env_id: str, env_kwargs: dict, count: int, context: int, seed: int = 0, steps: int = 4,
                       view=VIEW, min_change: float = 10.0, max_scan: int = 300) -> list[Scenario]:
    """Top-down grid worlds (Crafter: move_left/right/up/down, info["gt"]["player_pos"], a
    `view` of cells around the player in the frame's top rows, drawn as crafter draws
    them): random play (as the data was collected) until a walk would show something (at
    most `max_scan` steps), its last frames the context; two cells one way (so that the
    start view is no context frame, and copying the last one does not restore it); walk
    `steps` cells further, wait (half the scripts no steps, half a context window of
    noops), and walk back to the start. Cells at the far edge of the start view leave it
    and return: the scenario's gt["returned"] masks them in the returned frame (the
    player's own cell aside: it is drawn facing the way it last moved). The kind says
    whether the return comes within the context window or beyond. The way is one whose
    path the world map (gt["semantic"]) shows open and whose leaving cells differ from
    what replaces them (`_open_ways`); kept only where the real walk moved every step and
    came back to its start cell, and where the cells that left held something the far view
    does not show in their place (a walk over open grass would test nothing). Scored by
    `score_walkback`."""
    env = gym.make(env_id, **env_kwargs)
    names = list(action_meanings(env))
    if not set(GRID_MOVES) | {"noop"} <= set(names):
        env.close()
        raise ValueError(f"the walkback probe walks a grid: {env_id} has actions {names}, expected "
                         f"{', '.join(GRID_MOVES)} and noop among them")
    out, s = [], first_env_seed(seed)
    for _ in range(count * 20):  # tries: a walk may be blocked, cross open grass, or the episode may end
        if len(out) == count:
            break
        rng = np.random.default_rng(s)
        s += 1
        wait = 0 if len(out) % 2 == 0 else context
        walk, ways = GridWalk(env, s - 1), []
        while not ways and len(walk.actions) < max_scan:  # random play until a walk would show something
            if not walk.take([int(rng.integers(len(names)))]):
                break
            ways = _open_ways(walk.gt, steps, view, lead=2) if len(walk.actions) >= context - 1 else []
        if not ways:
            continue
        way, first = str(rng.choice(ways)), len(walk.actions) - (context - 1)  # the context: the last frames before
        if not walk.take([names.index(way)] * (2 + steps) + [names.index("noop")] * wait
                         + [names.index(BACK[way])] * steps):
            continue
        frames, actions, pos = (np.stack(x[first:]) for x in (walk.frames, walk.actions, walk.positions))
        start, far = context + 1, context + 1 + steps
        if not (np.array_equal(pos[start] - pos[context - 1], np.multiply(GRID_MOVES[way], 2))
                and np.array_equal(pos[far] - pos[start], np.multiply(GRID_MOVES[way], steps))
                and np.array_equal(pos[-1], pos[start])):
            continue
        mask = returned_cells(way, steps, view, frames.shape[1:3])
        if np.abs(frames[far][mask].astype(int) - frames[start][mask]).mean() < min_change:
            continue
        gap = len(actions) - start
        out.append(Scenario("walkback", frames, actions, {"returned": mask}, context,
                            {"kind": "within context" if gap < context else "beyond context", "start": start,
                             "return": len(actions), "gap": gap, "way": way, "seed": s - 1, "from_step": first}))
    env.close()
    if len(out) < count:
        raise ValueError(f"walkback: only {len(out)} of {count} scripts in {env_id} walked out and back unblocked "
                         "past something to remember (it reads the world map from info['gt']['semantic'])")
    return out


class GridWalk:
    """A real episode stepped a plan at a time: its frames, actions, player positions."""

    def __init__(self, env, seed: int):
        self.env = env
        frame, info = env.reset(seed=seed)
        self.frames, self.actions, self.gt = [frame], [], info["gt"]
        self.positions = [info["gt"]["player_pos"]]

    def take(self, actions) -> bool:
        """Step `actions`; False if the episode ended on the way."""
        for a in actions:
            frame, _, terminated, truncated, info = self.env.step(a)
            self.frames.append(frame)
            self.actions.append(a)
            self.gt = info["gt"]
            self.positions.append(info["gt"]["player_pos"])
            if terminated or truncated:
                return False
        return True


def _open_ways(gt: dict, steps: int, view, lead: int = 0) -> list[str]:
    """The ways whose next `lead + steps` cells the world map shows walkable (Crafter's
    semantic map, indexed [x, y]: grass, sand or path, no creature) and along which, from
    `lead` cells on, the cells that leave the view differ from those that take their place
    on screen in at least a quarter of them (else a walk would show nothing to remember);
    [] without a map."""
    from envs.crafter_env import SEMANTIC_IDS

    if "semantic" not in gt:
        return []
    world, (x, y) = gt["semantic"], gt["player_pos"]
    cols, rows = view
    inside = lambda cx, cy: 0 <= cx < world.shape[0] and 0 <= cy < world.shape[1]  # noqa: E731
    walkable = [SEMANTIC_IDS.index(n) for n in ("grass", "sand", "path")]
    ways = []
    for way, (dx, dy) in GRID_MOVES.items():
        path = [(x + dx * k, y + dy * k) for k in range(1, lead + steps + 1)]
        if not all(inside(cx, cy) and world[cx, cy] in walkable for cx, cy in path):
            continue
        cells = np.argwhere(returned_cells(way, steps, view, (rows, cols)))  # one pixel per cell: (row, col)
        leaving = [(x + dx * lead + c - cols // 2, y + dy * lead + r - rows // 2) for r, c in cells]
        pairs = [(a, (a[0] + dx * steps, a[1] + dy * steps)) for a in leaving]
        pairs = [(a, b) for a, b in pairs if inside(*a) and inside(*b)]
        if pairs and np.mean([world[a] != world[b] for a, b in pairs]) >= 0.25:
            ways.append(way)
    return ways


def returned_cells(way: str, steps: int, view, frame_hw) -> np.ndarray:
    """Pixels of the start view's cells that leave it on a walk of `steps` cells `way`
    (the view's far edge) and come back when the walk returns."""
    cols, rows = view
    cells = np.zeros((rows, cols), bool)
    dx, dy = GRID_MOVES[way]
    if dx:
        cells[:, slice(cols - steps, cols) if dx < 0 else slice(0, steps)] = True
    else:
        cells[slice(rows - steps, rows) if dy < 0 else slice(0, steps)] = True
    cells[rows // 2, cols // 2] = False  # the player's cell
    return cells_to_pixels(cells, frame_hw)


def cells_to_pixels(cells: np.ndarray, frame_hw) -> np.ndarray:
    """A (rows, cols) mask of view cells as a mask of the frame's pixels."""
    rows, cols = cells.shape
    unit, border = view_geometry(frame_hw, (cols, rows))
    mask = np.zeros(frame_hw, bool)
    mask[border:border + rows * unit, border:border + cols * unit] = np.kron(cells, np.ones((unit, unit), bool))
    return mask


def score_walkback(scenarios, predictions) -> dict:
    """Loop closure of the returned view (`score_loop`), plus the PSNR of the cells that
    left the view and came back, by kind (within or beyond the context window)."""
    out = score_loop(scenarios, predictions)
    for s, p, row in zip(scenarios, predictions, out["scenarios"]):
        j = s.meta["return"] - s.context
        row["returned_cells_psnr_db"] = masked_psnr(p[j], s.frames[s.meta["return"]], s.gt["returned"])
    region = [r["returned_cells_psnr_db"] for r in out["scenarios"]]
    out["returned_cells_psnr_db"] = float(np.mean(region))
    out["returned_cells_psnr_db_stderr"] = float(np.std(region) / np.sqrt(len(region)))
    out["returned_cells_by_kind"] = {k: float(np.mean([r["returned_cells_psnr_db"] for r in out["scenarios"]
                                                       if r["kind"] == k])) for k in out["by_kind"]}
    return out


def walkback_headline(score: dict) -> str:
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in score["returned_cells_by_kind"].items())
    return (loop_headline(score) + f"; cells that left and came back {score['returned_cells_psnr_db']:.2f} ± "
            f"{score['returned_cells_psnr_db_stderr']:.2f} dB ({kinds})")


PROBE = Probe("walkback", lambda setup: walkback_scenarios(setup.env_id, setup.env_kwargs, setup.count, setup.context,
                                                           setup.seed),
              lambda cases, predictions, reference, setup: score_walkback(cases, predictions), walkback_headline)
