"""Does the TakeCover dream draw the fireballs? Held-out windows replayed with their real
actions; in each predicted frame the fireball pixels (bright yellow, the only such colour
in the game) are set against the real frame's, beside copy-last-frame and the tokenizer
ceiling: recall (real fireball pixels with a predicted one within 2 pixels), precision
(the other way round), and how many fireball pixels each draws, by horizon. --deaths: what
the last frames before a death show, in the game (the test split's random play) and in
each dream (random play, ends drawn from the head): a dream that kills for the game's
reason kills after a fireball came close.

    python bench/diag/fireballs.py worldsim/checkpoints/takecover.safetensors --data data/takecover_big --deaths

A dream without fireballs has nothing for an agent to dodge: what kills in the game never
comes in the dream (RESULTS, "TakeCover agents"). --one-step also predicts each frame in
one step from the real frames before it, beside copying the real frame before: whether a
fireball is lost in the model's own step or only as the dream reads its own frames.
--picture writes real | each model's dream for the windows with the most real fireball
pixels.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from worldsim.replay import baselines, dream_windows, replay_windows
from worldsim.dream_env import load_world_model

BUCKETS = ((1, 1), (2, 4), (5, 8), (9, 16))  # horizons scored together
CLOSE = 40  # fireball pixels in a 64x64 frame: one that is about to hit (a far one is a few pixels)


def fireball_mask(frames: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., H, W) bool: the bright yellow of an imp's fireball."""
    r, g, b = (frames[..., i].astype(np.int16) for i in range(3))
    return (r > 180) & (g > 120) & (b < 120)


def close_fireball(frames: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (...) bool: the frame shows a fireball about to hit."""
    return fireball_mask(frames).sum(axis=(-2, -1)) >= CLOSE


def near(mask: np.ndarray, pixels: int = 2) -> np.ndarray:
    """Each frame's mask grown by `pixels` in every direction (a square; frames along the first axes)."""
    flat = torch.from_numpy(mask.reshape(-1, 1, *mask.shape[-2:])).float()
    return (F.max_pool2d(flat, 2 * pixels + 1, stride=1, padding=pixels) > 0).numpy().reshape(mask.shape)


def scores(real: np.ndarray, predicted: np.ndarray) -> dict:
    """Fireball recall, precision and pixels per frame of predicted frames against real
    ones (N, L, H, W, 3), by horizon bucket."""
    out = {}
    for a, b in BUCKETS:
        r, p = fireball_mask(real[:, a - 1:b]), fireball_mask(predicted[:, a - 1:b])
        out[f"{a}-{b}" if b > a else str(a)] = {
            "recall": float((r & near(p)).sum() / max(r.sum(), 1)),
            "precision": float((p & near(r)).sum() / p.sum()) if p.any() else float("nan"),
            "pixels_per_frame": float(p.sum() / (p.shape[0] * p.shape[1])),
            "real_pixels_per_frame": float(r.sum() / (r.shape[0] * r.shape[1]))}
    return out


def one_step_predictions(model, frames: np.ndarray, actions: np.ndarray, context: int,
                         sample_steps: int | None = None) -> np.ndarray:
    """Each frame after the context predicted in one step from the `context` real frames just
    before it (N, L, H, W, 3): the model's own step, without the errors of its earlier
    steps. A dream that loses a fireball here cannot keep one over many steps."""
    length = frames.shape[1] - context
    return np.concatenate([dream_windows(model, frames[:, h:h + context + 1], actions[:, h:h + context], context,
                                         sample_steps=sample_steps) for h in range(length)], 1)


def death_scores(last_frames: list[np.ndarray], episode_steps: list[int], close_share: float) -> dict:
    """The frames before each death (each (k, H, W, 3): the last k of an episode that ended
    in a death): how many show a fireball about to hit, and the fireball pixels they hold;
    beside `close_share`, the share of all frames with a fireball about to hit."""
    px = np.array([fireball_mask(f).sum(axis=(1, 2)).max() for f in last_frames])
    return {"close_fireball_any_frame": close_share, "deaths": len(px),
            "close_fireball_before_death": float((px >= CLOSE).mean()) if len(px) else float("nan"),
            "fireball_pixels_before_death": float(px.mean()) if len(px) else float("nan"),
            "steps_to_death": float(np.mean(episode_steps)) if episode_steps else float("nan")}


def real_deaths(data: str, last: int = 2) -> dict:
    from worldsim.dataset import episode_paths, read_episode

    frames, steps, close = [], [], []
    for path in episode_paths(data, "test"):
        e = read_episode(path)
        close.append(close_fireball(e.frames))
        if e.terminated[-1]:
            frames.append(e.frames[-last:])
            steps.append(len(e))
    return death_scores(frames, steps, float(np.concatenate(close).mean()))


def dream_deaths(checkpoint: str, envs: int, steps: int, last: int = 2, seed: int = 0) -> dict:
    """Random play in the dream with ends drawn from the head; the last frames before each end."""
    import gymnasium as gym

    import worldsim  # noqa: F401  (registers the dream env)

    env = gym.make_vec("worldsim/Dream-v0", num_envs=envs, vectorization_mode="vector_entry_point",
                       checkpoint=checkpoint, obs_type="rgb", sample_ends=True, max_steps=10_000)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    recent = [[o] for o in obs]
    started, frames, lengths, restart = np.zeros(envs, int), [], [], np.zeros(envs, bool)
    close = []
    for t in range(steps):
        obs, _, terminated, truncated, _ = env.step(rng.integers(env.single_action_space.n, size=envs))
        close.append(close_fireball(obs))
        for i in range(envs):
            if restart[i]:  # NEXT_STEP autoreset: this obs is a new episode's first frame, no step taken
                recent[i], started[i] = [obs[i]], t + 1
                continue
            recent[i] = (recent[i] + [obs[i]])[-last:]
            if terminated[i]:
                frames.append(np.stack(recent[i]))
                lengths.append(t + 1 - started[i])
        restart = terminated | truncated
    env.close()
    return death_scores(frames, lengths, float(np.mean(close)))


NOOP, LEFT, RIGHT = 0, 1, 2  # worldsim/Vizdoom-TakeCover-v0's actions
AWAY, TOWARD, STILL = "away", "toward", "still"  # the first two steps after a fireball is seen
SEEN = (10, CLOSE)  # fireball pixels of one on its way: seen, not yet about to hit
AHEAD = 4  # steps scored after it is seen


def biggest_fireball(frame: np.ndarray):
    """(pixels, mean column) of the biggest fireball in a frame, or (0, None)."""
    from scipy import ndimage

    labels, n = ndimage.label(fireball_mask(frame))
    if n == 0:
        return 0, None
    sizes = ndimage.sum(labels > 0, labels, range(1, n + 1))
    k = int(np.argmax(sizes))
    return int(sizes[k]), float(np.nonzero(labels == k + 1)[1].mean())


def dodge_windows(data: str, context: int, count: int):
    """Windows of the test split whose last context frame shows a fireball on its way
    (SEEN pixels), followed by AHEAD real steps; each with the fireball's side (the
    column is left of centre) and, in the game, whether the player was hit in those steps
    (health fell). Returns (frames (N, context + AHEAD, ...), actions, on_left (N,), hit (N,))."""
    from worldsim.dataset import episode_paths, read_episode

    frames, actions, on_left, hit = [], [], [], []
    for path in episode_paths(data, "test"):
        e = read_episode(path)
        health = e.gt["game_variables"][:, 0]
        for t in range(context - 1, len(e) - AHEAD + 1, 2):
            pixels, column = biggest_fireball(e.frames[t])
            if SEEN[0] <= pixels < SEEN[1]:
                frames.append(e.frames[t - context + 1:t + AHEAD + 1])
                actions.append(e.actions[t - context + 1:t + AHEAD])
                on_left.append(column < e.frames.shape[2] / 2)
                hit.append(bool((health[t + 1:t + AHEAD + 1] < health[t]).any()))
                if len(frames) == count:
                    return np.stack(frames), np.stack(actions), np.array(on_left), np.array(hit)
    return np.stack(frames), np.stack(actions), np.array(on_left), np.array(hit)


def moves(on_left: bool) -> dict:
    """The action of each class for a fireball on the left (else right) of the view."""
    return {AWAY: RIGHT if on_left else LEFT, TOWARD: LEFT if on_left else RIGHT, STILL: NOOP}


def step_class(first_two: np.ndarray, on_left: bool) -> str | None:
    """AWAY, TOWARD or STILL when both steps are that move."""
    for name, a in moves(on_left).items():
        if (first_two == a).all():
            return name
    return None


def dodge_scores(data: str, checkpoints: list, context: int, count: int, seed: int = 0, picture=None) -> dict:
    """Does stepping away from a fireball keep it from coming close, in the game and in each
    dream? For windows where one is on its way: the share whose next AHEAD frames show it
    close (CLOSE pixels), by the first two steps (away from it, toward it, standing still);
    in the game also the share where the player was hit, in each dream the chance the
    dream ends in those steps (a death; the game's deaths come after about 7 hits). The
    game's classes come from its random play; each dream takes all three from the same
    frames, its steps after the first two the real ones. `picture`: a PNG of 3 windows,
    each the real frames, then each dream's away, toward and still."""
    frames, actions, on_left, hit = dodge_windows(data, context, count)
    after = frames[:, context:]
    close = close_fireball(after).any(1)
    classes = np.array([step_class(a[context - 1:context + 1], left) for a, left in zip(actions, on_left)])
    game = {c: {"windows": int((classes == c).sum()), "close": float(close[classes == c].mean()),
                "hit": float(hit[classes == c].mean())} for c in (AWAY, TOWARD, STILL)}
    out = {"windows": len(frames), "game": game}
    shown = np.arange(0, len(frames), max(len(frames) // 3, 1))[:3]
    rows = {i: [frames[i, context - 1:]] for i in shown}
    for path in checkpoints:
        model = load_world_model(path)
        row = {}
        for c in (AWAY, TOWARD, STILL):
            acts = actions[:, context - 1:].copy()
            acts[:, :2] = np.array([moves(left)[c] for left in on_left])[:, None]
            dreamed, ends = [], []
            for i in range(0, len(frames), 8):
                f, _, p = model.rollout(frames[i:i + 8, :context], actions[i:i + 8, :context - 1], acts[i:i + 8],
                                        seed=seed + i)
                dreamed.append(f)
                ends.append(1 - np.prod(1 - p, axis=1))
            dreamed = np.concatenate(dreamed)
            for i in shown:
                rows[i].append(np.concatenate([frames[i, context - 1:context], dreamed[i]]))
            row[c] = {"windows": len(frames),
                      "close": float(close_fireball(dreamed).any(1).mean()),
                      "end": float(np.concatenate(ends).mean())}
        out[path] = row
    if picture:
        from PIL import Image

        grid = np.concatenate([np.concatenate(list(r), 1) for i in shown for r in rows[i]], 0)
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(picture)
    return out


def buckets(s: dict) -> str:
    """One model's `scores` on a line, bucket by bucket."""
    return " | ".join(f"rec {v['recall']:.2f} pre {v['precision']:.2f} px {v['pixels_per_frame']:4.1f}" for v in s.values())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", default="data/takecover_big")
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--context", type=int, default=4)
    parser.add_argument("--sample-steps", type=int, default=None)
    parser.add_argument("--picture", default=None, help="a PNG of real | dream frames")
    parser.add_argument("--json", default=None)
    parser.add_argument("--deaths", action="store_true", help="also what comes before each death, game and dreams")
    parser.add_argument("--one-step", action="store_true",
                        help="also each frame predicted in one step from the real frames before it")
    parser.add_argument("--dream-envs", type=int, default=16)
    parser.add_argument("--dream-steps", type=int, default=300, help="random steps of each dream env for --deaths")
    parser.add_argument("--dodge", type=int, default=0, metavar="N",
                        help="also, on N windows with a fireball on its way: does stepping away keep it off")
    parser.add_argument("--dodge-picture", default=None,
                        help="with --dodge, a PNG: for 3 windows the real frames, then each dream stepping away, "
                             "toward and standing still")
    args = parser.parse_args()
    torch.set_num_threads(2)
    length = BUCKETS[-1][1]
    ws = replay_windows(args.data, args.context, length, args.windows)
    frames, actions = np.stack([w[0] for w in ws]), np.stack([w[1] for w in ws])
    real = frames[:, args.context:]
    models = {path: load_world_model(path) for path in args.checkpoints}
    first = models[args.checkpoints[0]]
    predictions = {path: dream_windows(m, frames, actions, args.context, sample_steps=args.sample_steps)
                   for path, m in models.items()}
    predictions |= baselines(first, frames, args.context)
    result = {"data": args.data, "windows": len(ws), "context": args.context, "sample_steps": args.sample_steps,
              "scores": {name: scores(real, p) for name, p in predictions.items()}}
    print(f"{len(ws)} windows of {args.data}'s test split, {args.context} real frames then the real actions")
    print(f"{'':>58} | " + " | ".join(f"{'steps ' + k:>22}" for k in result["scores"]["copy_last_frame"]))
    for name, s in result["scores"].items():
        print(f"{name[-58:]:>58} | " + buckets(s))
    print(f"{'real fireball pixels per frame':>58} | "
          + " | ".join(f"{v['real_pixels_per_frame']:22.1f}" for v in result["scores"]["copy_last_frame"].values()))
    if args.one_step:
        result["one_step"] = {path: scores(real, one_step_predictions(m, frames, actions, args.context, args.sample_steps))
                              for path, m in models.items()}
        result["one_step"]["copy_last_frame"] = scores(real, frames[:, args.context - 1:-1])  # the real frame before
        print("each frame in one step from the real frames before it; copy-last-frame: the real frame before it")
        for name, s in result["one_step"].items():
            print(f"{name[-58:]:>58} | " + buckets(s))
    if args.deaths:
        result["deaths"] = {"game (test split, random play)": real_deaths(args.data),
                            **{path: dream_deaths(path, args.dream_envs, args.dream_steps) for path in args.checkpoints}}
        print(f"before each death (its last 2 frames), random play; a fireball about to hit: {CLOSE}+ pixels")
        for name, d in result["deaths"].items():
            print(f"{name[-58:]:>58} | {d['deaths']:5d} deaths, {d['close_fireball_before_death']:.2f} after a close "
                  f"fireball, {d['fireball_pixels_before_death']:5.1f} fireball pixels, "
                  f"{d['steps_to_death']:6.1f} steps to a death; {d['close_fireball_any_frame']:.3f} of all frames show a close one")
    if args.dodge:
        d = result["dodge"] = dodge_scores(args.data, args.checkpoints, args.context, args.dodge,
                                           picture=args.dodge_picture)
        print(f"{d['windows']} windows with a fireball on its way ({SEEN[0]} to {SEEN[1] - 1} pixels); the next "
              f"{AHEAD} frames show it close ({CLOSE}+ pixels) / the player is hit (game) / the dream ends, "
              f"by the first two steps")
        for name in ("game", *args.checkpoints):
            print(f"{name[-58:]:>58} | " + " | ".join(
                f"{c} {v['close']:.2f} / " + (f"hit {v['hit']:.2f} (n={v['windows']})" if name == "game"
                                              else f"end {v['end']:.3f}")
                for c, v in d[name].items()))
        if args.dodge_picture:
            print(f"wrote {args.dodge_picture}: 3 windows, each the real frames, then each dream stepping away, "
                  f"toward and standing still for the first 2 steps (" + ", ".join(args.checkpoints) + ")")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.picture:
        from PIL import Image

        shown = np.argsort(-fireball_mask(real).sum(axis=(1, 2, 3)))[:3]
        steps = list(range(0, length, 2))
        rows = [np.concatenate([p[i, t] for t in steps], 1)
                for i in shown for p in (real, *(predictions[c] for c in args.checkpoints))]
        Image.fromarray(np.concatenate(rows, 0)).resize((len(steps) * 128, len(rows) * 128), Image.NEAREST).save(args.picture)
        print(f"wrote {args.picture}: for the 3 windows with the most fireball, real then "
              + ", ".join(args.checkpoints) + f"; dream steps {steps[0] + 1} to {steps[-1] + 1}, every 2nd")


if __name__ == "__main__":
    main()
