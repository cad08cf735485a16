"""Depth from a frame: a small U-Net that reads a frame and gives the inverse depth of each
pixel (0: infinitely far), so that a dreamed frame, which has no ground truth, can be
re-rendered from another pose (worldsim/reproject.py). Three halvings give it a view of
a whole column, where a wall's height on screen says how far it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsim.checkpoint import MODEL, CheckpointError, load_checkpoint, network_of, with_prefix


FAR_INVERSE_DEPTH = 0.05  # below this (beyond 20 units) a pixel counts as infinitely far: a ceiling or sky


@dataclass
class DepthConfig:
    width: int = 24  # channels at full resolution; doubled at each of the three halvings
    max_inverse_depth: float = 10.0  # the nearest a pixel can be is 1 / this


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(4, cout), nn.GELU(),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(4, cout), nn.GELU())


class DepthNet(nn.Module):
    def __init__(self, cfg: DepthConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.width
        self.down = nn.ModuleList([_block(3, c), _block(c, 2 * c, 2), _block(2 * c, 4 * c, 2), _block(4 * c, 4 * c, 2)])
        self.up = nn.ModuleList([_block(8 * c, 2 * c), _block(4 * c, c), _block(2 * c, c)])
        self.head = nn.Conv2d(c, 1, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, H, W, 3) uint8 -> inverse depth (B, H, W), in [0, max_inverse_depth]."""
        x = frames.permute(0, 3, 1, 2).float() / 127.5 - 1
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(torch.cat([x, skips.pop()], 1))
        return torch.sigmoid(self.head(x)[:, 0]) * self.cfg.max_inverse_depth

    def predict(self, frames: torch.Tensor) -> torch.Tensor:
        """Inverse depth (B, H, W) for re-rendering: 0 (infinitely far, so it only turns) where
        the network sees nothing nearer than 1 / FAR_INVERSE_DEPTH."""
        inverse = self(frames)
        return torch.where(inverse < FAR_INVERSE_DEPTH, torch.zeros_like(inverse), inverse)

    def loss(self, frames: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """L1 on inverse depth against the true depth (B, H, W) (inf: infinitely far)."""
        target = (1 / depth.float()).clamp(max=self.cfg.max_inverse_depth)
        pred = self(frames)
        loss = F.l1_loss(pred, target)
        return loss, {"loss": loss.item(), "far_error": (pred[depth.isinf()]).mean().item() if depth.isinf().any() else 0.0}


def load_depth_run(path, env_id: str | None, fov_deg: float | None, user: str) -> tuple[DepthNet, dict]:
    """The network of a depth run (`worldsim train depth`), or the one a world model
    carries, and its train config, checked to be for `user`'s env and camera (re-rendering
    needs the same field of view)."""
    tensors, config = load_checkpoint(path)
    if config.get("kind") == "world_model":  # the depth network a world model carries
        tensors, config = network_of(path, tensors, config, "depth")
    if config.get("kind") != "depth":
        raise CheckpointError(f"--depth {path} is a {config.get('kind')!r} checkpoint; expected a "
                              "`worldsim train depth` run, or a world model that carries its depth network")
    if config["dataset"].get("env_id") != env_id:
        raise CheckpointError(f"--depth {path} learnt depth in {config['dataset'].get('env_id')}; {user} is {env_id}")
    if fov_deg is None or abs(fov_deg - config["fov_deg"]) > 1e-6:
        raise CheckpointError(f"--depth {path} learnt depth through a {config['fov_deg']} degree field of view; "
                              f"{user}'s pose model has {fov_deg}: re-rendering needs the same camera")
    net = DepthNet(DepthConfig(**config["depth"]))
    net.load_state_dict(with_prefix(tensors, MODEL))
    return net.eval(), config
