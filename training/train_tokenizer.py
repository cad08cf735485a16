"""Train the video compression network on a dataset's frames.

    worldsim train tokenizer --data DIR --out RUN [--config small] [--steps 4000]

`--init TOKENIZER --decoder-only` fine-tunes only the decoder of a trained tokenizer: its
encoder and latent statistics stay as they were, so the latents, and every dynamics model
trained on them, stay valid (GameNGen sharpens its decoder this way). `--detail-weight`
weighs edges and small objects more in the reconstruction loss (`Tokenizer.loss`).

Every hyper-parameter is a field of TrainConfig. The run directory holds
`latest.safetensors` (weights, optimizer, step, config; rewritten atomically every
`ckpt_every` steps and at the end), `metrics.csv` and TensorBoard event files. Running
the same command again resumes from `latest.safetensors`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from training.loop import RunConfig, pick_device, run
from worldsim.dataset import DatasetError, WindowDataset
from worldsim.tokenizer import Tokenizer, TokenizerConfig, size_preset


@dataclass(kw_only=True)
class TrainConfig(RunConfig):
    config: str = "small"  # tokenizer size: tiny | small | base
    latent_channels: int = 8  # 4 to 16
    downsample: int = 8  # spatial factor: 4 or 8
    steps: int = 4000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    init: str | None = None  # start from this tokenizer's weights (and its architecture, not the fields above)
    decoder_only: bool = False  # with --init: train only the decoder; the latents (and dynamics trained on them) stay valid
    decoder_width: float | None = None  # with --decoder-only: a new decoder, this share of the encoder's widths, learnt from scratch (a cheaper path to pixels for the same latents)
    detail_weight: float = 0.0  # weigh errors at edges and small objects up to this much more (0: plain MSE + L1)


class FrameSampler:
    """Random frames from a dataset split.

    The draw for a step depends only on (seed, step), so a resumed run sees the same
    batches as one that never stopped."""

    def __init__(self, root, split, seed):
        self.windows = WindowDataset(root, split=split, context=1, horizon=0)
        self.seed = seed

    def batch(self, n, step: int) -> torch.Tensor:
        idx = np.random.default_rng([self.seed, step]).integers(len(self.windows), size=n)
        return torch.from_numpy(np.stack([self.windows[int(i)]["context"] for i in idx]))


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    sampler = FrameSampler(cfg.data, "train", cfg.seed)
    frame_shape = sampler.windows.meta["frame_shape"]
    if cfg.decoder_only and not cfg.init:
        raise ValueError("--decoder-only fine-tunes a trained tokenizer's decoder; pass it with --init")
    if cfg.decoder_width is not None and not cfg.decoder_only:
        raise ValueError("--decoder-width builds a new decoder for a trained encoder's latents: pass --init and "
                         "--decoder-only")
    torch.manual_seed(cfg.seed)  # the initial weights
    if cfg.init:
        model = Tokenizer.load(cfg.init, frame_size=tuple(frame_shape[:2])).train()
        tok_cfg = model.cfg
        clash = {k: getattr(cfg, k) for k in ("latent_channels", "downsample")
                 if getattr(cfg, k) != TrainConfig.__dataclass_fields__[k].default and getattr(cfg, k) != getattr(tok_cfg, k)}
        if clash:
            raise ValueError(f"--init {cfg.init} is a tokenizer with latent_channels={tok_cfg.latent_channels}, "
                             f"downsample={tok_cfg.downsample}; it cannot become {clash}")
        if cfg.decoder_width is not None:  # the encoder and latent statistics kept, the decoder new
            trained = model
            tok_cfg = replace(trained.cfg, decoder_width=cfg.decoder_width)
            model = Tokenizer(tok_cfg).train()
            missing = model.load_state_dict({k: v for k, v in trained.state_dict().items()
                                             if not k.startswith("decoder.")}, strict=False).missing_keys
            assert all(k.startswith("decoder.") for k in missing), missing  # all but the decoder carried over
    else:
        tok_cfg = TokenizerConfig(frame_size=tuple(frame_shape[:2]), latent_channels=cfg.latent_channels,
                                  downsample=cfg.downsample,
                                  **size_preset(cfg.config, cfg.downsample))
        model = Tokenizer(tok_cfg)
    if cfg.decoder_only:
        model.encoder.requires_grad_(False)
    device = pick_device(cfg.device)

    def fit_stats():
        # Latent shift/scale from a fixed draw no training step uses; the RNG is put back
        # so measuring does not change the training noise.
        state = torch.get_rng_state()
        model.eval()
        model.fit_latent_stats(sampler.batch(256, cfg.steps).to(device))
        model.train()
        torch.set_rng_state(state)

    config = {"kind": "tokenizer", "tokenizer": asdict(tok_cfg), "train": asdict(cfg), "dataset": sampler.windows.meta}
    return run(model, cfg, "tokenizer", config,
               batch_at=lambda step, rank: sampler.batch(cfg.batch_size, step + rank * 10**9),
               loss_of=lambda m, frames: m.loss(frames, cfg.detail_weight),
               items_per_batch=lambda frames: frames.shape[0] * frames.shape[1],
               before_save=None if cfg.decoder_only else fit_stats, device=device, progress=progress)


_encoder = None  # each encode worker's tokenizer


def _load_encoder(checkpoint: str, frame_size, device: str, threads: int = 0):
    global _encoder
    if threads:  # workers share the cores
        torch.set_num_threads(threads)
    _encoder = Tokenizer.load(checkpoint, frame_size=frame_size).to(pick_device(device))
    return _encoder


def _encode_episode(job: tuple[Path, Path, int]) -> int:
    """Writes one episode's latents, with its actions, rewards, ends and ground truth, and
    returns its frame count."""
    import h5py

    from worldsim.dataset import _put, open_episode, read_array

    path, target, batch_frames = job
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    with open_episode(path) as src, h5py.File(tmp, "w") as dst:
        frames = src["frames"]
        chunks = []
        with torch.no_grad():
            for s in range(0, len(frames), batch_frames):
                batch = read_array(src, "frames", slice(s, s + batch_frames))
                chunks.append(_encoder.encode(torch.from_numpy(batch)[None])[0].half().cpu().numpy())
        _put(dst, "latents", np.concatenate(chunks), chunk_frames=64)
        for name in ("actions", "rewards", "terminated", "truncated"):
            if name in src:
                _put(dst, name, read_array(src, name))
        if "gt" in src:
            for key in src["gt"]:
                _put(dst, f"gt/{key}", read_array(src, f"gt/{key}"), chunk_frames=32)
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        count = len(frames)
    tmp.replace(target)
    return count


def encode_dataset(checkpoint: str, data: str, out: str, batch_frames: int = 256, progress: bool = True,
                   device: str = "auto", workers: int = 1) -> dict:
    """Pre-encode every episode to latents, so the dynamics model trains without the encoder.

    The output mirrors the input's layout: `latents` (T'+1, C, h, w) float16 in place of
    frames, with actions, rewards, ends and ground truth copied unchanged. Reading an
    episode costs about as much as encoding it on a GPU: `workers` processes (each with
    its own tokenizer on `device`) read and encode episodes side by side.
    """
    import multiprocessing

    from tqdm import tqdm

    from worldsim.dataset import atomic_write_bytes, episode_paths, load_meta

    meta = load_meta(data)
    # With workers, each loads its own; this process only reads the config.
    model = _load_encoder(checkpoint, meta["frame_shape"][:2], device if workers <= 1 else "cpu")
    root = Path(out)
    paths = episode_paths(data)
    if not paths:
        raise DatasetError(f"{data} has no episodes to encode")
    jobs = [(path, root / path.parent.name / path.name, batch_frames) for path in paths]
    counts = []
    with tqdm(total=len(jobs), desc="encode", unit="episode", disable=not progress) as bar:
        if workers > 1:  # spawned, not forked: each worker may start its own CUDA context
            threads = max(1, torch.get_num_threads() // workers)
            with multiprocessing.get_context("spawn").Pool(workers, _load_encoder,
                                                           (checkpoint, meta["frame_shape"][:2], device, threads)) as pool:
                for n in pool.imap_unordered(_encode_episode, jobs):
                    counts.append(n)
                    bar.update(1)
        else:
            for job in jobs:
                counts.append(_encode_episode(job))
                bar.update(1)
    atomic_write_bytes(root / "dataset.json", json.dumps(
        {**meta, "source": "encode", "tokenizer": str(Path(checkpoint).resolve()),
         "frames_dataset": str(Path(data).resolve()), "latent_shape": list(model.cfg.latent_shape)},
        indent=2).encode())
    return {"episodes": len(paths), "frames": sum(counts), "out": out}
