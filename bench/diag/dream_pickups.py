"""Does the dream draw the step that pays? Rooms pays when an object is reached; a dream
whose frames never show an object reached and gone gives its reward head nothing to pay
for, and an agent trained there can only farm the head's small outputs elsewhere.

Every pickup in the test splits of DATA (pixel datasets with the Rooms ground truth) whose
object was in view the frame before is replayed in the dream from 5 to 8 real frames
ending LEAD steps before it, then dreamed with the real actions through the pickup step.
Printed: the reward head on the dreamed pickup step (mean, and how often above 0.5), and
its mean per step on the dreamed steps before it (what an agent could farm).

    python bench/diag/dream_pickups.py CHECKPOINT DATA [DATA ...] [--lead 0 4]
"""
import argparse

import numpy as np
import torch

from worldsim.dataset import episode_paths, read_episode
from worldsim.world_model import DreamCore, WorldModel


def visible_pickups(roots, lead: int) -> list:
    """(episode, step) of each test pickup whose object was in view the frame before."""
    cases = []
    for root in roots:
        for path in episode_paths(root, "test"):
            e = read_episode(path)
            alive, view = e.gt["objects_alive"], e.gt["objects_in_view"]
            cases += [(e, t) for t in np.flatnonzero(e.rewards > 0.5)
                      if t - lead >= 4 and (alive[t] & ~alive[t + 1] & view[t]).any()]
    return cases


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("data", nargs="+")
    p.add_argument("--lead", type=int, nargs="+", default=[0, 4], help="dreamed steps before the pickup step")
    args = p.parse_args()
    model = WorldModel.load(args.checkpoint)
    for lead in args.lead:
        cases = visible_pickups(args.data, lead)
        if not cases:
            raise SystemExit(f"no visible pickup in the test splits of {args.data} with {lead} steps before it")
        generator = torch.Generator().manual_seed(0)
        core = DreamCore(model, len(cases))
        starts = [t - lead for _, t in cases]
        core.reset_rows(range(len(cases)), [(e.frames[max(0, s - 7):s + 1], e.actions[max(0, s - 7):s])
                                            for (e, _), s in zip(cases, starts)], generator)
        paid = np.stack([core.step(np.stack([e.actions[s + j] for (e, _), s in zip(cases, starts)]), generator)[1]
                         for j in range(lead + 1)], 1)  # (cases, lead + 1); the last column is the pickup step
        before = f"; before it, {paid[:, :-1].mean():.4f} a step" if lead else ""
        print(f"lead {lead}: {len(cases)} visible pickups; head on the dreamed pickup step: mean {paid[:, -1].mean():.3f}, "
              f"above 0.5 in {(paid[:, -1] > 0.5).sum()}{before}")


if __name__ == "__main__":
    main()
