"""Does the TakeCover dream move the player as the game does? Two measures:

- held moves (any world model): each action held from the start for `--hold` steps, in
  the game and in the dream, and how far the view has shifted sideways (the far wall's
  column profile matched step by step, a quarter pixel at a time). In the game a held
  move carries the view about a pixel a step and standing still keeps it still; a dream
  that drifts while standing still, or moves at half speed, lets fireballs miss a player
  who never stepped aside.
- one step (pixel world models): from real contexts of the test split, the next frame
  drawn for every action from the same noise; how often the real next frame is nearest
  (MSE) the one drawn for the action taken (chance: one in the number of actions), and
  how far apart the actions' frames are. A move shifts the view by about a pixel and
  the player keeps some momentum, so this is a noisy measure: the held one is plainer.

    python bench/diag/moves.py CKPT [CKPT ...] --data data/takecover_big --guidance 0 1
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


SHIFTS = np.arange(-3, 3.01, 0.25)  # candidate sideways shifts of one step, in pixels
BAND = slice(12, 40)  # rows of TakeCover's far wall, whose columns show a sideways move


def view_shift(before: np.ndarray, after: np.ndarray) -> float:
    """How many pixels the picture moved right from one frame (H, W, 3) to the next (the
    player stepped left): the shift of the far wall's column profile that matches best,
    margins left out."""
    a, b = (f[BAND].astype(np.float32).mean((0, 2)) for f in (before, after))
    cols = np.arange(8, len(a) - 8)
    errors = [((np.interp(cols - s, np.arange(len(a)), a) - b[cols]) ** 2).mean() for s in SHIFTS]
    return float(SHIFTS[int(np.argmin(errors))])


def total_shift(frames: np.ndarray) -> float:
    """The view's sideways shift summed over an episode's frames (T, H, W, 3)."""
    return sum(view_shift(frames[t], frames[t + 1]) for t in range(len(frames) - 1))


def game_held(action: int, hold: int, episodes: int, seed: int) -> list:
    """Total shift of each real episode with `action` held from the start for `hold`
    steps (or until the episode ends)."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the game)

    env, out = gym.make("worldsim/Vizdoom-TakeCover-v0"), []
    for k in range(episodes):
        frames = [env.reset(seed=seed + k)[0]]
        for _ in range(hold):
            obs, _, terminated, truncated, _ = env.step(action)
            frames.append(obs)
            if terminated or truncated:
                break
        out.append(total_shift(np.stack(frames)))
    env.close()
    return out


def dream_held(model, action: int, hold: int, episodes: int, seed: int) -> list:
    """The same in a dream of `model` (a loaded world model), its ends not drawn."""
    from worldsim.dream_env import DreamVectorEnv

    env = DreamVectorEnv(episodes, checkpoint=model, obs_type="rgb", max_steps=hold + 1)
    frames = [env.reset(seed=seed)[0]]
    for _ in range(hold):
        frames.append(env.step(np.full(episodes, action))[0])
    return [total_shift(f) for f in np.stack(frames, 1)]


def action_scores(model, data, count: int = 512, seed: int = 0, batch: int = 128) -> dict:
    """`count` test transitions past an episode's first frames, each frame drawn for every
    action from the same noise; see the module docstring."""
    n = model.dynamics.cfg.actions
    rng = np.random.default_rng(seed)
    started = np.flatnonzero(data.context_rows[:, 0] != data.context_rows[:, 1])  # a full context of real frames
    idx = np.sort(rng.choice(started, min(count, len(started)), replace=False))
    errors, spread = [], []
    for i in range(0, len(idx), batch):
        ctx, target, taken, _, _, past = data.batch(idx[i:i + batch])
        drawn = torch.stack([model.dynamics.sample(ctx, torch.full_like(taken, a),
                                                   generator=torch.Generator().manual_seed(seed + i), past=past)
                             for a in range(n)], 1)  # (B, actions, 3, H, W)
        errors.append((drawn - target[:, None]).pow(2).flatten(2).mean(2))
        spread.append((drawn[:, :, None] - drawn[:, None]).pow(2).flatten(3).mean(3).sum((1, 2)) / (n * (n - 1)))
    errors, spread = torch.cat(errors), torch.cat(spread)
    taken = torch.from_numpy(data.actions[idx])
    hit = (errors.argmin(1) == taken).float()
    return {"transitions": len(idx), "taken_nearest": float(hit.mean()),
            "taken_nearest_stderr": float(hit.std() / len(hit) ** 0.5), "chance": 1 / n,
            "taken_nearest_by_action": [float(hit[taken == a].mean()) for a in range(n)],
            "mse_taken": float(errors[torch.arange(len(idx)), taken].mean()),
            "mse_between_actions": float(spread.mean())}


def main(argv=None):
    from training.train_pixel import Transitions
    from worldsim.dataset import EVAL_SEEDS_START
    from worldsim.dream_env import load_world_model
    from worldsim.pixel_world_model import PixelWorldModel

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="TakeCover world models")
    p.add_argument("--data", default="data/takecover_big", help="frames dataset whose test split the one-step measure reads")
    p.add_argument("--transitions", type=int, default=512, help="one-step measure: test transitions (0: skip it)")
    p.add_argument("--hold", type=int, default=24, help="held moves: steps each action is held")
    p.add_argument("--episodes", type=int, default=8, help="held moves: episodes per action, game and each dream")
    p.add_argument("--guidance", type=float, nargs="+", default=None,
                   help="action guidance weights to sample with (default: each model's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    names = ("stand still", "left", "right")  # worldsim/Vizdoom-TakeCover-v0's actions
    out = {"hold": args.hold, "held": {"game": [game_held(a, args.hold, args.episodes, EVAL_SEEDS_START + args.seed)
                                                for a in range(3)]}, "one_step": {}}
    line = lambda shifts: " | ".join(f"{np.mean(v):+6.2f} ± {np.std(v):5.2f}" for v in shifts)  # noqa: E731
    print(f"the view's sideways shift after {args.hold} steps of each action held, pixels (mean ± sd of "
          f"{args.episodes} episodes)\n{'':>56} | " + " | ".join(f"{n:>14}" for n in names))
    print(f"{'game':>56} | {line(out['held']['game'])}", flush=True)
    data = None
    for path in args.checkpoints:
        model = load_world_model(path)
        pixel = isinstance(model, PixelWorldModel)
        for w in args.guidance or [model.dynamics.cfg.action_guidance]:
            model.dynamics.cfg.action_guidance = w
            name = f"{path} guidance {w:g}"
            held = out["held"][name] = [dream_held(model, a, args.hold, args.episodes, args.seed) for a in range(3)]
            print(f"{name[-56:]:>56} | {line(held)}", flush=True)
            if pixel and args.transitions:
                if data is None:
                    data = Transitions(args.data, "test", model.dynamics.cfg.context,
                                       max_frames=4 * args.transitions + 20_000)
                s = out["one_step"][name] = action_scores(model, data, args.transitions, args.seed)
                print(f"{'one step: taken action nearest the real frame':>56} | {s['taken_nearest']:.3f} ± "
                      f"{s['taken_nearest_stderr']:.3f} (chance {s['chance']:.3f}); MSE to the real frame "
                      f"{s['mse_taken']:.4f}, between the actions' frames {s['mse_between_actions']:.4f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
