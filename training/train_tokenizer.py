"""Train the video compression network on a dataset's frames.

    worldsim train tokenizer --data DIR --out RUN [--config small] [--steps 4000]

Every hyper-parameter is a field of TrainConfig. The run directory holds
`latest.safetensors` (weights, optimizer, step, config; rewritten atomically every
`ckpt_every` steps and at the end), `metrics.csv` and TensorBoard event files. Running
the same command again resumes from `latest.safetensors`.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from worldsim.checkpoint import load_checkpoint, optimizer_tensors, restore_optimizer
from worldsim.dataset import DatasetError, WindowDataset
from worldsim.tokenizer import CONFIGS, Tokenizer, TokenizerConfig


@dataclass
class TrainConfig:
    data: str
    out: str
    config: str = "small"  # tokenizer size: tiny | small | base
    latent_channels: int = 8
    downsample: int = 8
    temporal: int = 1
    steps: int = 4000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    ckpt_every: int = 250
    log_every: int = 25
    seed: int = 0
    device: str = "auto"
    overrides: dict = field(default_factory=dict)  # extra TokenizerConfig fields


class FrameSampler:
    """Random groups of `temporal` consecutive frames from a dataset split.

    The draw for a step depends only on (seed, step), so a resumed run sees the same
    batches as one that never stopped."""

    def __init__(self, root, split, temporal, seed):
        self.windows = WindowDataset(root, split=split, context=temporal, horizon=0)
        self.seed = seed

    def batch(self, n, step: int) -> torch.Tensor:
        idx = np.random.default_rng([self.seed, step]).integers(len(self.windows), size=n)
        return torch.from_numpy(np.stack([self.windows[int(i)]["context"] for i in idx]))


def lr_at(step, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(progress, 1.0))))


def _device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    from tqdm import tqdm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "latest.safetensors"
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    train_frames = FrameSampler(cfg.data, "train", cfg.temporal, cfg.seed)
    frame_shape = train_frames.windows.meta["frame_shape"]
    tok_cfg = TokenizerConfig(frame_size=tuple(frame_shape[:2]), latent_channels=cfg.latent_channels,
                              downsample=cfg.downsample, temporal=cfg.temporal,
                              **{**CONFIGS[cfg.config], **cfg.overrides})
    model = Tokenizer(tok_cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    if ckpt.exists():  # resume
        tensors, meta = load_checkpoint(ckpt)
        if meta["tokenizer"] != json.loads(json.dumps(tok_cfg.__dict__)):
            raise ValueError(f"{ckpt} was trained with {meta['tokenizer']}, not {tok_cfg.__dict__}; "
                             "use another --out or the same settings")
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
        restore_optimizer(opt, {k: v.to(device) for k, v in tensors.items()}, meta["optimizer"])
        step = meta["step"]
        torch.set_rng_state(tensors["rng/torch"])

    def save():
        opt_tensors, opt_info = optimizer_tensors(opt)
        model.save(ckpt, extra={"step": step, "train": asdict(cfg), "optimizer": opt_info,
                                "dataset": train_frames.windows.meta},
                   tensors={**opt_tensors, "rng/torch": torch.get_rng_state()})

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    writer = _tensorboard(out)
    log_path = out / "metrics.csv"
    new_log = not log_path.exists()
    log_file = open(log_path, "a", newline="")
    log = csv.writer(log_file)
    if new_log:
        log.writerow(["step", "loss", "mse", "l1", "kl", "psnr", "lr", "frames_per_s"])
    bar = tqdm(total=cfg.steps, initial=step, desc="train tokenizer", unit="step", disable=not progress, mininterval=1)
    t0, frames_seen, stats = time.perf_counter(), 0, {}
    model.train()
    while step < cfg.steps:
        frames = train_frames.batch(cfg.batch_size, step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        with autocast:
            loss, stats = model.loss(frames.to(device))
        if not np.isfinite(stats["loss"]):
            raise FloatingPointError(f"loss is {stats['loss']} at step {step}; the last good checkpoint is {ckpt}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        frames_seen += frames.shape[0] * frames.shape[1]
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            fps = frames_seen / (time.perf_counter() - t0)
            row = [step, stats["loss"], stats["mse"], stats["l1"], stats["kl"], stats["psnr"], lr_at(step - 1, cfg), fps]
            log.writerow(row)
            log_file.flush()
            if writer:
                for name, value in zip(["loss", "mse", "l1", "kl", "psnr", "lr", "frames_per_s"], row[1:]):
                    writer.add_scalar(f"tokenizer/{name}", value, step)
            bar.set_postfix(psnr=f"{stats['psnr']:.1f}", refresh=False)
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            model.eval()
            rng_state = torch.get_rng_state()  # measuring the stats must not shift the training noise
            model.fit_latent_stats(train_frames.batch(256, cfg.steps).to(device))  # a draw no step uses
            torch.set_rng_state(rng_state)
            model.train()
            save()
    bar.close()
    log_file.close()
    if writer:
        writer.close()
    return {"checkpoint": str(ckpt), "step": step, "train_psnr_last_batch": stats.get("psnr"),
            "frames_per_s": frames_seen / max(time.perf_counter() - t0, 1e-9)}


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: metrics.csv always has the figures
        return None
    return SummaryWriter(str(out / "tb"))


def encode_dataset(checkpoint: str, data: str, out: str, batch_frames: int = 256, progress: bool = True) -> dict:
    """Pre-encode every episode to latents, so the dynamics model trains without the encoder.

    The output mirrors the input's layout: `latents` (T'+1, C, h, w) float16 in place of
    frames, with actions, rewards, ends and ground truth copied unchanged.
    """
    import h5py
    from tqdm import tqdm

    from worldsim.dataset import _atomic_write_bytes, _put, episode_paths, load_meta, open_episode

    meta = load_meta(data)
    model = Tokenizer.load(checkpoint, frame_size=meta["frame_shape"][:2])
    if model.cfg.temporal != 1:
        raise ValueError("encode supports temporal=1 tokenizers; group frames at training time for temporal > 1")
    root = Path(out)
    paths = episode_paths(data)
    if not paths:
        raise DatasetError(f"{data} has no episodes to encode")
    frames_done = 0
    for path in tqdm(paths, desc="encode", unit="episode", disable=not progress):
        target = root / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        with open_episode(path) as src, h5py.File(tmp, "w") as dst:
            frames = src["frames"]
            chunks = []
            with torch.no_grad():
                for s in range(0, len(frames), batch_frames):
                    chunks.append(model.encode(torch.from_numpy(frames[s:s + batch_frames])[None])[0].half().numpy())
            _put(dst, "latents", np.concatenate(chunks), chunk_frames=64)
            for name in ("actions", "rewards", "terminated", "truncated"):
                if name in src:
                    _put(dst, name, src[name][()])
            if "gt" in src:
                for key in src["gt"]:
                    _put(dst, f"gt/{key}", src["gt"][key][()], chunk_frames=32)
            for key, value in src.attrs.items():
                dst.attrs[key] = value
            frames_done += len(frames)
        tmp.replace(target)
    _atomic_write_bytes(root / "dataset.json", json.dumps(
        {**meta, "source": "encode", "tokenizer": str(checkpoint), "latent_shape": list(model.cfg.latent_shape)},
        indent=2).encode())
    return {"episodes": len(paths), "frames": frames_done, "out": out}
