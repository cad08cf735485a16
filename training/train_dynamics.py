"""Train the diffusion transformer (with its reward/termination head) on latents.

    worldsim encode --checkpoint TOKENIZER --data DIR --out LATENTS
    worldsim train dynamics --data LATENTS --out RUN [--config XS] [--steps 3000]
    torchrun --nproc_per_node 2 -m worldsim.cli train dynamics ...   # data-parallel

Windows of `window` consecutive latent frames with the actions between them; every
hyper-parameter is a field of TrainConfig. Checkpoints, logs and resume: training/loop.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from training.loop import RunConfig, pick_device, run
from worldsim.dataset import WindowDataset
from worldsim.dynamics import CONFIGS, Dynamics, DynamicsConfig


@dataclass(kw_only=True)
class TrainConfig(RunConfig):  # data: a latent dataset from `worldsim encode`
    config: str = "XS"  # tiny | XS | S | B | L
    window: int = 0  # frames per training window; 0 = the model's max_frames
    steps: int = 3000
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.01
    overrides: dict = field(default_factory=dict)  # extra DynamicsConfig fields


class LatentWindows:
    """Random windows of latents with their actions, rewards and ends; the draw depends
    only on (seed, step, rank)."""

    def __init__(self, root, window, seed):
        self.windows = WindowDataset(root, split="train", context=window, horizon=0, field="latents")
        if not self.windows.has_actions:
            raise ValueError(f"{root} has no actions; the dynamics model needs action-labelled episodes")
        self.seed = seed

    def batch(self, n, step, rank, device):
        idx = np.random.default_rng([self.seed, step, rank]).integers(len(self.windows), size=n)
        items = [self.windows[int(i)] for i in idx]
        stack = lambda k: torch.from_numpy(np.stack([it[k] for it in items])).to(device)  # noqa: E731
        return {"z": stack("context").float(), "actions": stack("actions"), "rewards": stack("rewards"),
                "terminated": stack("terminated")}


def build(cfg: TrainConfig, meta: dict) -> Dynamics:
    if "latent_shape" not in meta:
        raise ValueError(f"{cfg.data} is not a latent dataset; make one with `worldsim encode`")
    dyn_cfg = DynamicsConfig(latent_shape=tuple(meta["latent_shape"]), action_space=meta["action_space"],
                             **{**CONFIGS[cfg.config], **cfg.overrides})
    torch.manual_seed(cfg.seed)  # the initial weights
    return Dynamics(dyn_cfg)


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    probe = WindowDataset(cfg.data, split="train", context=1, horizon=0, field="latents")
    model = build(cfg, probe.meta)
    window = cfg.window or model.cfg.max_frames
    if window > model.cfg.max_frames:
        raise ValueError(f"window {window} is longer than the model's context of {model.cfg.max_frames} frames")
    data = LatentWindows(cfg.data, window, cfg.seed)
    device = pick_device(cfg.device)
    config = {"kind": "dynamics", "dynamics": asdict(model.cfg), "train": asdict(cfg), "dataset": probe.meta}
    tokens = window * model.cfg.tokens_per_frame
    return run(model, cfg, "dynamics", config,
               batch_at=lambda step, rank: data.batch(cfg.batch_size, step, rank, device),
               loss_of=lambda m, b: m.loss(**b),
               items_per_batch=lambda b: b["z"].shape[0] * tokens, device=device, progress=progress)

