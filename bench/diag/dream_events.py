"""Does the dream draw the events a game pays for? A model with counted events (Crafter's
achievements, `worldsim train dynamics --events`) pays the first of each an episode has;
a dream that never draws a sapling gathered gives its head nothing to pay for.

Each test episode of DATA (a frames dataset with the events' ground truth) is dreamed from
its first frame with its own actions, as long as it lasted. Printed per event: how often
the game counted it (real), how often the head detects it on the real frames (the
ceiling of what it can pay), and how often in the dream; then the unlocks per episode
(events new to the episode) that each would pay.

    python bench/diag/dream_events.py CHECKPOINT DATA [--episodes 64]
"""
import argparse

import numpy as np
import torch

from worldsim.dataset import episode_paths, read_episode
from worldsim.world_model import DreamCore, WorldModel


def unlocks(happened: np.ndarray) -> int:
    """Events (T, E) bool -> how many of them an episode had at least once."""
    return int(happened.any(0).sum())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("data")
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    model = WorldModel.load(args.checkpoint)
    names, key = model.dynamics.cfg.events, (model.info.get("train") or {}).get("events")
    if not names:
        raise SystemExit(f"{args.checkpoint} has no counted events (train one with --events)")
    episodes = [read_episode(path) for path in episode_paths(args.data, "test")[:args.episodes]]
    real, detected, dreamed = (np.zeros(len(names), int) for _ in range(3))
    per_episode = {"real": [], "detected": [], "dreamed": []}
    generator = torch.Generator(device=model.device).manual_seed(args.seed)
    for i in range(0, len(episodes), args.batch):
        chunk = episodes[i:i + args.batch]
        core = DreamCore(model, len(chunk))
        core.reset_rows(range(len(chunk)), [(e.frames[:1], e.actions[:0]) for e in chunk], generator)
        steps = [[] for _ in chunk]
        for t in range(max(len(e) for e in chunk)):
            core.step(np.stack([e.actions[min(t, len(e) - 1)] for e in chunk]), generator)
            for row, e in enumerate(chunk):
                if t < len(e):
                    steps[row].append(core.happened[row].copy())
        for e, dream in zip(chunk, steps):
            counts = np.asarray(e.gt[key])
            rose = counts[1:] > counts[:-1]
            with torch.no_grad():
                z = model.encode(e.frames[None])[0]
                _, _, logits = model.dynamics.heads(z[:-1], z[1:], torch.as_tensor(e.actions, device=z.device))
            seen, dream = (logits > 0).cpu().numpy(), np.array(dream)
            real, detected, dreamed = real + rose.sum(0), detected + seen.sum(0), dreamed + dream.sum(0)
            for name, happened in (("real", rose), ("detected", seen), ("dreamed", dream)):
                per_episode[name].append(unlocks(happened))
        print(f"{min(i + args.batch, len(episodes))} / {len(episodes)} episodes dreamed", flush=True)
    steps = sum(len(e) for e in episodes)
    print(f"{args.checkpoint}: {len(episodes)} test episodes of {args.data}, {steps} steps, their own actions")
    print(f"{'event':<22} {'real':>6} {'head on real':>13} {'dream':>6}")
    for j, name in enumerate(names):
        if real[j] or detected[j] or dreamed[j]:
            print(f"{name:<22} {real[j]:>6} {detected[j]:>13} {dreamed[j]:>6}")
    print("unlocks per episode (what would be paid): " + ", ".join(
        f"{name} {np.mean(v):.2f}" for name, v in per_episode.items()))


if __name__ == "__main__":
    main()
