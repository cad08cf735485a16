"""Does a pixel world model draw the move it is given? One step from real contexts of the
test split, the next frame sampled for every action: how often the real next frame is
nearest (MSE) the one drawn for the action actually taken (chance: one in the number of
actions), and how far apart the actions' frames are beside how far the real frame is from
the taken action's. In TakeCover a move shifts the view by about a pixel a step and the
player keeps some momentum, so a dream that ignores the action is only a little wrong
per frame, yet cannot teach anyone to dodge.

    python bench/diag/pixel_actions.py CKPT [CKPT ...] --data data/takecover_big --guidance 0 1 2
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def action_scores(model, data, count: int = 512, seed: int = 0, batch: int = 128) -> dict:
    """`count` test transitions past an episode's first frames, each frame drawn for every
    action from the same noise; see the module docstring."""
    n = model.dynamics.cfg.actions
    rng = np.random.default_rng(seed)
    started = np.flatnonzero(data.context_rows[:, 0] != data.context_rows[:, 1])  # a full context of real frames
    idx = np.sort(rng.choice(started, min(count, len(started)), replace=False))
    errors, spread = [], []
    for i in range(0, len(idx), batch):
        ctx, target, taken = data.batch(idx[i:i + batch])[:3]
        drawn = torch.stack([model.dynamics.sample(ctx, torch.full_like(taken, a),
                                                   generator=torch.Generator().manual_seed(seed + i))
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
    from worldsim.pixel_world_model import PixelWorldModel

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="pixel world models")
    p.add_argument("--data", default="data/takecover_big")
    p.add_argument("--transitions", type=int, default=512)
    p.add_argument("--guidance", type=float, nargs="+", default=None,
                   help="action guidance weights to sample with (default: each model's own)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    data = Transitions(args.data, "test", PixelWorldModel.load(args.checkpoints[0]).dynamics.cfg.context,
                       max_frames=4 * args.transitions + 20_000)
    out = {}
    for path in args.checkpoints:
        model = PixelWorldModel.load(path)
        for w in args.guidance or [model.dynamics.cfg.action_guidance]:
            model.dynamics.cfg.action_guidance = w
            s = out[f"{path} guidance {w:g}"] = action_scores(model, data, args.transitions)
            print(f"{path} guidance {w:g}: taken action's frame nearest the real one {s['taken_nearest']:.3f} "
                  f"± {s['taken_nearest_stderr']:.3f} (chance {s['chance']:.3f}; by action "
                  f"{' / '.join(f'{v:.2f}' for v in s['taken_nearest_by_action'])}); MSE to the real frame "
                  f"{s['mse_taken']:.4f}, between the actions' frames {s['mse_between_actions']:.4f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
