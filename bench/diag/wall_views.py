"""Does the dream collapse onto walls? Replays of held-out Rooms windows (real actions,
4 real context frames, 64 steps) and the share of frames, step by step, in which a wall
fills the whole view (no ceiling in the top rows), for the real frames, the dream with memory
on and off, and copy-last-frame. The README demo's dream stays on a wall while the real
agent turns into the room; this says whether that is the rule.

    python bench/diag/wall_views.py [CHECKPOINT|""] [DATA] [--windows 32] [--samples N]

DATA defaults to data/rooms_fresh (RESULTS.md, command C). With --samples N the
README demo's turn from its wall (5 real frames, the next 4 real actions; its data from
`worldsim collect --steps 2000 --out data/demo`) is also dreamed N times, each from its
own noise: how many samples turn into the room.
"""
import argparse

import numpy as np

from worldsim.dataset import read_episode
from worldsim.dream_env import load_world_model
from worldsim.replay import dream_windows, replay_windows

# The Rooms ceiling's top rows average about 37-46; the darkest wall (umber, facing y, 0.75x) about 75.
CEILING_ROWS, CEILING_LEVEL = 4, 58


def wall_filled(frames: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (...) bool: under a tenth of the columns show ceiling in
    their top rows (a wall fills the view)."""
    ceiling = frames[..., :CEILING_ROWS, :, :].mean((-1, -3)) < CEILING_LEVEL  # (..., W)
    return ceiling.mean(-1) < 0.1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", default="")
    parser.add_argument("data", nargs="?", default="data/rooms_fresh")
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--samples", type=int, default=0)
    args = parser.parse_args()
    model = load_world_model(args.checkpoint or None)
    context, length = 4, 64
    ws = replay_windows(args.data, context, length, args.windows, "test")
    frames, actions = np.stack([w[0] for w in ws]), np.stack([w[1] for w in ws])
    shares = {"real": wall_filled(frames[:, context:]),
              "copy_last_frame": np.repeat(wall_filled(frames[:, context - 1:context]), length, 1)}
    for name, memory in (("dream", None), ("dream_memory_off", False)):
        shares[name] = wall_filled(dream_windows(model, frames, actions, context, memory))
    print(f"{args.checkpoint or 'shipped model'} on {args.data}: share of frames a wall fills, {len(ws)} windows")
    print(f"{'steps':>8} | " + " ".join(f"{n:>17}" for n in shares))
    for lo, hi in ((1, 1), (2, 4), (5, 16), (17, 64)):
        print(f"{lo:>3}-{hi:<4} | " + " ".join(f"{s[:, lo - 1:hi].mean():>17.2f}" for s in shares.values()))

    if args.samples:
        ep = read_episode("data/demo/test/ep_000002.h5")
        k = 5  # frames 0-4 face the wall; the real agent's next turns reveal the room at frame 6
        turned = [wall_filled(model.rollout(ep.frames[None, :k], ep.actions[None, :k - 1],
                                            ep.actions[None, k - 1:k + 3], seed=s)[0][0]) for s in range(args.samples)]
        left = [int((~np.stack(turned)[:, :i + 1]).any(1).sum()) for i in range(4)]
        print(f"README demo from its 5 wall frames, the next 4 real actions: real frames wall-filled "
              f"{wall_filled(ep.frames[k:k + 4]).astype(int).tolist()}; dream samples off the wall by each step "
              f"{left} of {args.samples}")


if __name__ == "__main__":
    main()
