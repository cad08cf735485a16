"""Which of a grid world's things the dream keeps: per class, the share of the real
frame's cells of that class that the dream draws as that class (recall), beside
copy-last-frame, by horizon; one step ahead, after a move and after any other action
(a view that shifts against one that stays); and what one pass of the network keeps of
the real next frame given to it noised to each level tau (the real context in its
cache): a network that loses cells even at tau = 0.1, where its input is nine parts
signal, cannot draw them however it is sampled.

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
from worldsim.sampler import prime
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
    r = real[:, 0][:, keep]
    other = r != grass
    for tau, x0 in denoised(model, frames[:, :context + 1], actions[:, :context]):
        d = reader.read(x0)[:, keep]
        print(f"one pass from the real next frame at tau {tau}: keeps {np.mean(d[other] == r[other]):.2f} of the cells "
              f"that are not grass, agrees on {np.mean(d == r):.3f}")


@torch.no_grad()
def denoised(model, frames, actions, taus=(1.0, 0.67, 0.33, 0.1), seed: int = 0):
    """For windows of context + 1 frames: the network's prediction of the last frame in one
    pass from its latent noised to each tau, the real context in the cache, decoded."""
    dyn, generator = model.dynamics, torch.Generator().manual_seed(seed)
    z = model.encode(frames)
    b, t = z.shape[:2]
    into, has = dyn.actions_into_frames(torch.as_tensor(actions), b, t, z.device)
    eps = torch.randn(z[:, -1].shape, generator=generator)
    for tau in taus:
        cache = dyn.new_cache()
        prime(dyn, cache, z[:, :-1], into[:, :-1], has[:, :-1], torch.arange(t - 1).expand(b, t - 1), generator)
        x = (1 - tau) * z[:, -1] + tau * eps
        x0 = dyn(x[:, None], torch.full((b, 1), tau), into[:, -1:], has[:, -1:], torch.full((b, 1), t - 1), None, cache)
        yield tau, model.decode(x0)[:, 0].cpu().numpy()


if __name__ == "__main__":
    main()
