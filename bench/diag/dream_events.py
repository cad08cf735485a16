"""Does the dream draw the events a game pays for? A model with counted events (Crafter's
achievements, `worldsim train dynamics --events`) pays the first of each an episode has;
a dream that never draws a sapling gathered gives its head nothing to pay for.

Each test episode of DATA (a frames dataset with the events' ground truth) is dreamed from
its first frame with its own actions, as long as it lasted. Printed per event: how often
the game counted it (real), how often the head detects it on the real frames (the
ceiling of what it can pay), and how often in the dream; then the unlocks per episode
(events new to the episode) that each would pay. With --lead L, each real event is also
dreamed from the 4 real frames ending L steps before it, with the real actions, and
counted where the head detects that event on the dreamed step (L = 0: one step ahead).

    python bench/diag/dream_events.py CHECKPOINT DATA [--episodes 64] [--lead 0 4]
"""
import argparse

import numpy as np
import torch

from worldsim.dataset import episode_paths, read_episode
from worldsim.dynamics import event_rises
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
    p.add_argument("--lead", type=int, nargs="*", default=[], help="also dream each event from L steps before it")
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
            rose = event_rises(np.asarray(e.gt[key]))
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
    for lead in args.lead:
        found = drawn_from(model, episodes, key, lead, args.batch, generator)
        print(f"events dreamed from real frames {lead} steps before: " + ", ".join(
            f"{names[j]} {hit}/{total}" for j, (hit, total) in sorted(found.items())))


def drawn_from(model, episodes, key, lead: int, batch: int, generator, context: int = 4) -> dict:
    """{event: (dreamed steps the head detects it on, real events)} for the events dreamed
    from the `context` real frames ending `lead` steps before each, with the real actions."""
    cases = []
    for e in episodes:
        for t, j in zip(*np.nonzero(event_rises(np.asarray(e.gt[key])))):  # event j in step t (frame t -> t + 1)
            if t - lead >= context - 1:
                cases.append((e, int(t), int(j)))
    found = {}
    for i in range(0, len(cases), batch):
        chunk = cases[i:i + batch]
        core = DreamCore(model, len(chunk))
        starts = [t - lead - context + 1 for _, t, _ in chunk]
        core.reset_rows(range(len(chunk)), [(e.frames[s:s + context], e.actions[s:s + context - 1])
                                            for (e, _, _), s in zip(chunk, starts)], generator)
        for k in range(lead + 1):
            core.step(np.stack([e.actions[t - lead + k] for e, t, _ in chunk]), generator)
        for row, (_, _, j) in enumerate(chunk):
            hit, total = found.get(j, (0, 0))
            found[j] = (hit + int(core.happened[row, j]), total + 1)
    return found


if __name__ == "__main__":
    main()
