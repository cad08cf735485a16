"""World-model quality and speed on held-out episodes, replayed with their real actions.

    python bench/bench_dynamics.py --checkpoint worldsim/checkpoints/rooms.safetensors --data data/rooms

For windows of the test split: give `context` real frames, dream `max(horizons)` steps
with the episode's real actions, and score the dream against the real frames at each
horizon (PSNR of the mean squared error over windows), beside copy-last-frame (the last context frame held) and the tokenizer's
reconstruction of the real frame (the ceiling). Also reward and termination prediction
on real held-out transitions against the always-zero baseline, training tokens/s and
sampling frames/s on this machine. Writes JSON and a plot to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from worldsim.dataset import episode_paths, read_episode
from worldsim.tokenizer import psnr_pooled, ssim
from worldsim.world_model import WorldModel


def windows(data: str, context: int, length: int, count: int):
    """Up to `count` (frames, actions) windows of context + length frames from the test split."""
    out = []
    for path in episode_paths(data, "test"):
        e = read_episode(path)
        for s in range(0, len(e) - context - length + 2, max(length // 2, 1)):
            out.append((e.frames[s:s + context + length], e.actions[s:s + context + length - 1]))
            if len(out) == count:
                return out
    return out


def heads_accuracy(model: WorldModel, data: str, max_steps: int = 4000) -> dict:
    """Reward and termination predicted from real consecutive latents of held-out episodes."""
    preds, reals, end_p, end_r = [], [], [], []
    seen = 0
    for path in episode_paths(data, "test"):
        e = read_episode(path)
        with torch.no_grad():
            z = torch.cat([model.encode(e.frames[None, s:s + 256])[0] for s in range(0, len(e.frames), 256)])
            r, end = model.dynamics.heads(z[:-1], z[1:], torch.as_tensor(e.actions))
        preds.append(r.numpy()), reals.append(e.rewards), end_p.append(torch.sigmoid(end).numpy()), end_r.append(e.terminated)
        seen += len(e)
        if seen >= max_steps:
            break
    p, r, ep, er = map(np.concatenate, (preds, reals, end_p, end_r))
    rewarded = np.abs(r) > 0.5
    return {
        "heads_transitions": int(len(r)),
        "reward_mse": float(((p - r) ** 2).mean()), "reward_mse_always_zero": float((r ** 2).mean()),
        "reward_event_accuracy": float(((np.abs(p) > 0.5) == rewarded).mean()),
        "reward_event_accuracy_always_zero": float((~rewarded).mean()),
        "reward_events": int(rewarded.sum()),
        "reward_event_recall": float((np.abs(p[rewarded]) > 0.5).mean()) if rewarded.any() else None,
        "termination_accuracy": float(((ep > 0.5) == er).mean()),
        "termination_accuracy_always_zero": float((~er).mean()),
        "terminations": int(er.sum()),
        "termination_recall": float((ep[er] > 0.5).mean()) if er.any() else None,
    }


def sampling_fps(model: WorldModel, batch: int, steps: int = 16, pixels: bool = True) -> float:
    dyn = model.dynamics
    frames = np.repeat(model.start_frames[:1][None], batch, 0)
    z = model.encode(frames)
    cache = dyn.new_cache()
    into, has = dyn.actions_into_frames(torch.zeros(batch, 0, dtype=torch.long), batch, 1, "cpu")
    dyn.prime(cache, z, into, has, torch.zeros(batch, 1, dtype=torch.long))
    a = torch.zeros(batch, dtype=torch.long)
    with torch.no_grad():
        t0 = time.perf_counter()
        for k in range(steps):
            nxt = dyn.sample_next(cache, a, torch.full((batch,), 1 + k))
            dyn.heads(z[:, 0], nxt, a)
            if pixels:
                model.decode(nxt[:, None])
    return batch * steps / (time.perf_counter() - t0)


def training_tokens_per_s(model: WorldModel, batch: int = 8, steps: int = 3) -> float:
    dyn = model.dynamics
    dyn.train()
    t = dyn.cfg.max_frames
    z = torch.randn(batch, t, *dyn.cfg.latent_shape)
    a = torch.zeros(batch, t - 1, dtype=torch.long)
    opt = torch.optim.AdamW(dyn.parameters(), lr=0.0)
    dyn.loss(z, a, torch.zeros(batch, t - 1), torch.zeros(batch, t - 1, dtype=torch.bool))[0].backward()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss, _ = dyn.loss(z, a, torch.zeros(batch, t - 1), torch.zeros(batch, t - 1, dtype=torch.bool))
        opt.zero_grad()
        loss.backward()
        opt.step()
    dyn.eval()
    return batch * t * dyn.cfg.tokens_per_frame * steps / (time.perf_counter() - t0)


def plot(result: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hs = result["horizons"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("psnr_db", "ssim")):
        for name, style in (("dream", "o-"), ("dream_memory_off", "o-."), ("copy_last_frame", "s--"),
                            ("tokenizer_ceiling", "^:")):
            if f"{name}_{metric}" not in result:
                continue
            ax.plot(hs, [result[f"{name}_{metric}"][str(h)] for h in hs], style, label=name.replace("_", " "))
        ax.set_xscale("log", base=2)
        ax.set_xticks(hs, [str(h) for h in hs])
        ax.set_xlabel("steps dreamed (real actions)")
        ax.set_ylabel(metric.replace("_db", " (dB)").upper())
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{result['env_id']}: dream vs real on {result['windows']} held-out windows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default="worldsim/checkpoints/rooms.safetensors")
    parser.add_argument("--data", default="data/rooms", help="frames dataset; its test split is scored")
    parser.add_argument("--context", type=int, default=4)
    parser.add_argument("--horizons", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--sample-steps", type=int, default=None)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = WorldModel.load(args.checkpoint)
    length = max(args.horizons)
    ws = windows(args.data, args.context, length, args.windows)
    if not ws:
        raise SystemExit(f"{args.data}: no test episode is long enough for {args.context} + {length} frames")
    frames = np.stack([w[0] for w in ws])
    actions = np.stack([w[1] for w in ws])
    c = args.context
    def rollout(memory):
        return np.concatenate([model.rollout(frames[i:i + 8, :c], actions[i:i + 8, :c - 1], actions[i:i + 8, c - 1:],
                                             steps=args.sample_steps, seed=i, memory=memory)[0]
                               for i in range(0, len(ws), 8)])

    dreams = {"dream": rollout(None)}  # with the model's memory when it has one
    if model.dynamics.cfg.memory:
        dreams["dream_memory_off"] = rollout(False)
    real = frames[:, c:]
    with torch.no_grad():
        ceiling = np.stack([model.decode(model.encode(real[i:i + 1]))[0].numpy() for i in range(len(real))])
    copy = np.repeat(frames[:, c - 1:c], length, 1)
    result = {"checkpoint": args.checkpoint, "env_id": model.info.get("env_id"), "data": args.data,
              "windows": len(ws), "context": c, "sample_steps": args.sample_steps or model.dynamics.cfg.sample_steps,
              "horizons": args.horizons}
    for name, pred in (*dreams.items(), ("copy_last_frame", copy), ("tokenizer_ceiling", ceiling)):
        result[f"{name}_psnr_db"] = {str(h): psnr_pooled(real[:, h - 1], pred[:, h - 1]) for h in args.horizons}
        result[f"{name}_ssim"] = {str(h): float(ssim(real[:, h - 1], pred[:, h - 1]).mean()) for h in args.horizons}
    result["dream_beats_copy_last_frame_at_every_horizon"] = all(
        result["dream_psnr_db"][str(h)] > result["copy_last_frame_psnr_db"][str(h)] for h in args.horizons)
    result.update(heads_accuracy(model, args.data))
    for b in (1, 16):
        result[f"cpu_sampling_fps_pixels_batch{b}"] = sampling_fps(model, b)
        result[f"cpu_sampling_fps_latents_batch{b}"] = sampling_fps(model, b, pixels=False)
    result["cpu_training_tokens_per_s"] = training_tokens_per_s(model)

    print(f"{'horizon':>8} | {'dream PSNR':>10} {'copy-last':>10} {'ceiling':>10} | {'dream SSIM':>10} {'copy-last':>10} {'ceiling':>10}")
    for h in args.horizons:
        k = str(h)
        print(f"{h:>8} | {result['dream_psnr_db'][k]:>10.2f} {result['copy_last_frame_psnr_db'][k]:>10.2f} "
              f"{result['tokenizer_ceiling_psnr_db'][k]:>10.2f} | {result['dream_ssim'][k]:>10.3f} "
              f"{result['copy_last_frame_ssim'][k]:>10.3f} {result['tokenizer_ceiling_ssim'][k]:>10.3f}")
    if "dream_memory_off_psnr_db" in result:
        print("dream with memory off, PSNR by horizon:",
              ", ".join(f"{h}: {result['dream_memory_off_psnr_db'][str(h)]:.2f}" for h in args.horizons))
    for k, v in result.items():
        if not isinstance(v, (dict, list)):
            print(f"{k:<44} {v:.4g}" if isinstance(v, float) else f"{k:<44} {v}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    name = args.name or Path(args.data).name
    (out / f"dynamics_{name}.json").write_text(json.dumps(result, indent=2))
    plot(result, out / f"dynamics_{name}.png")
    print(f"wrote {out / f'dynamics_{name}.json'} and .png")


if __name__ == "__main__":
    main()
