"""Does the TakeCover dream draw the fireballs? Held-out windows replayed with their real
actions; in each predicted frame the fireball pixels (bright yellow, the only such colour
in the game) are set against the real frame's, beside copy-last-frame and the tokenizer
ceiling: recall (real fireball pixels with a predicted one within 2 pixels), precision
(the other way round), and how many fireball pixels each draws, by horizon.

    python bench/diag/fireballs.py worldsim/checkpoints/takecover.safetensors --data data/takecover_big

A dream without fireballs has nothing for an agent to dodge: what kills in the game never
comes in the dream (RESULTS, "TakeCover agents"). --picture writes real | each model's
dream for the windows with the most real fireball pixels.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from scipy.ndimage import binary_dilation

from worldsim.replay import dream_windows, replay_windows
from worldsim.world_model import WorldModel

BUCKETS = ((1, 1), (2, 4), (5, 8), (9, 16))  # horizons scored together


def fireball_mask(frames: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., H, W) bool: the bright yellow of an imp's fireball."""
    r, g, b = (frames[..., i].astype(np.int16) for i in range(3))
    return (r > 180) & (g > 120) & (b < 120)


def near(mask: np.ndarray, pixels: int = 2) -> np.ndarray:
    """Each frame's mask grown by `pixels` in every direction (frames along the first axes)."""
    flat = mask.reshape(-1, *mask.shape[-2:])
    grown = np.stack([binary_dilation(m, iterations=pixels) if m.any() else m for m in flat])
    return grown.reshape(mask.shape)


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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", default="data/takecover_big")
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--context", type=int, default=4)
    parser.add_argument("--sample-steps", type=int, default=None)
    parser.add_argument("--picture", default=None, help="a PNG of real | dream frames")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    length = BUCKETS[-1][1]
    ws = replay_windows(args.data, args.context, length, args.windows)
    frames, actions = np.stack([w[0] for w in ws]), np.stack([w[1] for w in ws])
    real = frames[:, args.context:]
    models = {path: WorldModel.load(path) for path in args.checkpoints}
    first = models[args.checkpoints[0]]
    with torch.no_grad():
        ceiling = np.stack([first.decode(first.encode(real[i:i + 1]))[0].cpu().numpy() for i in range(len(real))])
    predictions = {path: dream_windows(m, frames, actions, args.context, sample_steps=args.sample_steps)
                   for path, m in models.items()}
    predictions |= {"copy-last-frame": np.repeat(frames[:, args.context - 1:args.context], length, 1),
                    "tokenizer ceiling": ceiling}
    result = {"data": args.data, "windows": len(ws), "context": args.context, "sample_steps": args.sample_steps,
              "scores": {name: scores(real, p) for name, p in predictions.items()}}
    print(f"{len(ws)} windows of {args.data}'s test split, {args.context} real frames then the real actions")
    print(f"{'':>58} | " + " | ".join(f"{'steps ' + k:>22}" for k in result["scores"]["copy-last-frame"]))
    for name, s in result["scores"].items():
        print(f"{name[-58:]:>58} | " + " | ".join(f"rec {v['recall']:.2f} pre {v['precision']:.2f} px {v['pixels_per_frame']:4.1f}"
                                                for v in s.values()))
    print(f"{'real fireball pixels per frame':>58} | "
          + " | ".join(f"{v['real_pixels_per_frame']:22.1f}" for v in result["scores"]["copy-last-frame"].values()))
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
