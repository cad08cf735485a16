"""Train the depth network on Rooms frames and the depth their ground truth gives, and
score it on held-out frames.

    worldsim train depth --data DIR --out RUN [--steps 3000]

DIR is a Rooms dataset collected with ground truth (every `worldsim collect` of Rooms
records it). The run directory holds the loop's files and, at the end, `scores.json`:
the depth error on the test split's frames (median relative error of the depth, and
how often the sky/ceiling is called far) beside predicting every pixel's mean inverse
depth. `worldsim export --depth RUN/latest.safetensors` puts it into a world model,
whose memory then re-renders remembered views from the dream's new poses.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from envs.rooms import depth_image
from training.loop import RunConfig, pick_device, run
from worldsim.dataset import DatasetError, WindowDataset
from worldsim.depth import FAR_INVERSE_DEPTH, DepthConfig, DepthNet

GT_KEYS = ("depth", "object_ids", "objects_xy", "pose")


@dataclass(kw_only=True)
class TrainConfig(RunConfig):
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    width: int = 24  # channels at full resolution (DepthConfig)
    eval_frames: int = 1024  # held-out frames scored at the end


class DepthFrames:
    """Random frames of a split with their true depth. The draw for a step depends only on
    (seed, step), so a resumed run sees the same batches."""

    def __init__(self, root, split: str, seed: int):
        try:
            self.windows = WindowDataset(root, split=split, context=1, horizon=0, gt_keys=GT_KEYS)
        except DatasetError as e:
            raise DatasetError(f"{e}; the depth network learns from Rooms episodes collected with their ground "
                               "truth (`worldsim collect --env worldsim/Rooms-v0`)") from e
        self.fov_deg = float(self.windows.meta.get("env_kwargs", {}).get("fov_deg", 60.0))
        self.seed = seed

    def batch(self, n: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.random.default_rng([self.seed, step]).integers(len(self.windows), size=n)
        items = [self.windows[int(i)] for i in idx]
        frames = np.stack([it["context"][0] for it in items])
        depth = np.stack([depth_image({k: it[f"gt/{k}"] for k in GT_KEYS}, 0, self.fov_deg) for it in items])
        return torch.from_numpy(frames), torch.from_numpy(depth.astype(np.float32))


@torch.no_grad()
def score(model: DepthNet, frames: torch.Tensor, depth: torch.Tensor, mean_inverse: torch.Tensor) -> dict:
    """Depth errors of the model's prediction and of predicting each pixel's mean inverse depth."""
    def errors(pred_inv):
        finite = depth.isfinite()
        pred = 1 / pred_inv.clamp(min=1e-6)
        rel = ((pred - depth).abs() / depth)[finite]
        far = depth.isinf()
        return {"median_relative_depth_error": float(rel.median()), "within_10_percent": float((rel < 0.1).float().mean()),
                "far_called_far": float((pred_inv[far] < FAR_INVERSE_DEPTH).float().mean()) if far.any() else float("nan")}
    return {"depth_net": errors(torch.cat([model(frames[i:i + 256]) for i in range(0, len(frames), 256)])),
            "mean_inverse_depth": errors(mean_inverse.expand_as(depth))}


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    data = DepthFrames(cfg.data, "train", cfg.seed)
    torch.manual_seed(cfg.seed)
    model = DepthNet(DepthConfig(width=cfg.width))
    device = pick_device(cfg.device)
    config = {"kind": "depth", "depth": asdict(model.cfg), "train": asdict(cfg), "dataset": data.windows.meta,
              "fov_deg": data.fov_deg}
    result = run(model, cfg, "depth", config, batch_at=lambda step, rank: data.batch(cfg.batch_size, step + rank * 10**9),
                 loss_of=lambda m, batch: m.loss(*batch), items_per_batch=lambda batch: batch[0].shape[0],
                 device=device, progress=progress)
    model.eval().cpu()
    _, train_depth = data.batch(1024, cfg.steps)  # a draw no training step used
    mean_inverse = (1 / train_depth).clamp(max=model.cfg.max_inverse_depth).mean(0)
    test = DepthFrames(cfg.data, "test", cfg.seed + 1)
    frames, depth = test.batch(cfg.eval_frames, 0)
    scores = score(model, frames, depth, mean_inverse)
    (Path(cfg.out) / "scores.json").write_text(json.dumps(scores, indent=2))
    if progress:
        print(json.dumps(scores, indent=2))
    return {**result, "scores": scores}
