"""Which of a grid world's things the dream keeps: per class, the share of the real
frame's cells of that class that the dream draws as that class (recall), beside
copy-last-frame, by horizon; and, one step ahead, after a move and after any other
action (a view that shifts against one that stays).

    python bench/diag/dream_cells.py worldsim/checkpoints/crafter.safetensors data/crafter [--windows 128]

Cells are read by the cell reader of `bench_dynamics.py --cells` (worldsim/cells.py),
fitted on the data's train split; windows of the test split, 4 real frames of context.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from envs import GRID_MOVES
from worldsim.cells import fit_for_model, off_player
from worldsim.replay import dream_windows, replay_windows
from worldsim.world_model import WorldModel


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("data")
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--horizons", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--sample-steps", type=int, default=None)
    parser.add_argument("--min-cells", type=int, default=20, help="classes with fewer real cells at a horizon are left out")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = WorldModel.load(args.checkpoint)
    reader, accuracy = fit_for_model(model, args.data)
    print(f"cell reader: {accuracy['real']:.3f} of the val split's real cells read right")
    context, length = 4, max(args.horizons)
    windows = replay_windows(args.data, context, length, args.windows)
    frames, actions = np.stack([w[0] for w in windows]), np.stack([w[1] for w in windows])
    dream = reader.read(dream_windows(model, frames, actions, context, sample_steps=args.sample_steps))
    real = reader.read(frames[:, context:])
    last = reader.read(frames[:, context - 1])
    keep, names = off_player(reader.view), reader.names
    for h in args.horizons:
        r, d, c = real[:, h - 1][:, keep].ravel(), dream[:, h - 1][:, keep].ravel(), last[:, keep].ravel()
        print(f"horizon {h}: {'class':>9} {'real cells':>10} {'dream recall':>12} {'copy-last recall':>16} "
              f"{'dream cells':>11}")
        for k in np.unique(r):
            m = r == k
            if m.sum() >= args.min_cells:
                print(f"{'':>11}{names[k]:>9} {m.sum():>10} {np.mean(d[m] == k):>12.2f} {np.mean(c[m] == k):>16.2f} "
                      f"{np.sum(d == k):>11}")
    moves = [model.info["action_meanings"].index(m) for m in GRID_MOVES]
    grass = names.index("grass")
    for name, rows in (("a move", np.isin(actions[:, context - 1], moves)),
                       ("any other action", ~np.isin(actions[:, context - 1], moves))):
        r, d = real[rows, 0][:, keep].ravel(), dream[rows, 0][:, keep].ravel()
        other = r != grass
        print(f"one step after {name} ({rows.sum()} windows): the dream keeps {np.mean(d[other] == r[other]):.2f} of "
              f"the {other.sum()} cells that are not grass")


if __name__ == "__main__":
    main()
