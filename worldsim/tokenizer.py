"""The video compression network: frames <-> a compact latent, frame by frame.

A small KL-regularised convolutional autoencoder (Stable-Diffusion style): each stage
halves the resolution, so `downsample` 8 maps a 64x64 RGB frame to an 8x8 latent of
`latent_channels`, one latent frame per frame (every latent frame has its own action).

Latents come out normalised by a per-channel shift and scale measured on training data
and stored with the checkpoint, so the dynamics model sees roughly unit-variance inputs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsim.checkpoint import (MODEL, CheckpointError, config_from, load_checkpoint, prefixed, save_checkpoint,
                                 with_prefix)


@dataclass
class TokenizerConfig:
    frame_size: tuple[int, int] = (64, 64)
    latent_channels: int = 8
    downsample: int = 8  # 4 or 8 (any power of two works)
    channels: tuple[int, ...] = (48, 96, 128)  # width after each downsampling stage
    stem_channels: int = 24  # width at full resolution
    decoder_width: float = 1.0  # the decoder's widths as a share of the encoder's: 0.5 costs about a quarter of the FLOPs per frame
    kl_weight: float = 1e-6
    # Settings older files carry, with the one value this version still reads.
    RETIRED: ClassVar[dict] = {"temporal": 1}  # frames per latent frame

    def __post_init__(self):
        self.frame_size = tuple(self.frame_size)
        self.channels = tuple(self.channels)
        stages = halvings(self.downsample)
        if 2 ** stages != self.downsample or len(self.channels) != stages:
            raise ValueError(f"downsample must be a power of two with one entry of `channels` per halving; got "
                             f"downsample={self.downsample}, channels={self.channels}")
        if any(s % self.downsample for s in self.frame_size):
            raise ValueError(f"frame_size {self.frame_size} must be divisible by downsample {self.downsample}")
        if not 1 <= self.latent_channels <= 64:
            raise ValueError(f"expected 1 <= latent_channels <= 64, got {self.latent_channels}")
        if not 0 < self.decoder_width <= 4:
            raise ValueError(f"expected 0 < decoder_width <= 4 (a share of the encoder's widths), got {self.decoder_width}")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        h, w = self.frame_size
        return self.latent_channels, h // self.downsample, w // self.downsample


CONFIGS = {  # widths for 8x (three halvings); see size_preset
    "tiny": dict(channels=(16, 32, 32), stem_channels=8),
    "small": dict(),
    "base": dict(channels=(64, 128, 256), stem_channels=32),
}


def halvings(downsample: int) -> int:
    """Stages that each halve the resolution (downsample 8 -> 3)."""
    return int(math.log2(downsample))


def size_preset(name: str, downsample: int) -> dict:
    """A CONFIGS entry for this downsample factor: fewer halvings than 8x take the first widths."""
    if name not in CONFIGS:
        raise ValueError(f"unknown tokenizer size {name!r}; expected one of {', '.join(CONFIGS)}")
    preset = {"channels": TokenizerConfig.channels, **CONFIGS[name]}
    return {**preset, "channels": tuple(preset["channels"])[:halvings(downsample)]}


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                  _norm(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        layers = [nn.Conv2d(3, cfg.stem_channels, 3, padding=1)]
        width = cfg.stem_channels
        for c in cfg.channels:
            layers += [nn.SiLU(), nn.Conv2d(width, c, 4, stride=2, padding=1), ResBlock(c)]
            width = c
        layers += [_norm(width), nn.SiLU(), nn.Conv2d(width, 2 * cfg.latent_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        mean, logvar = self.net(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30, 20)


class Decoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        scaled = lambda c: max(8, 8 * round(c * cfg.decoder_width / 8))  # noqa: E731  (GroupNorm's 8 groups)
        widths, stem = [scaled(c) for c in cfg.channels[::-1]], scaled(cfg.stem_channels)
        layers = [nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1), ResBlock(widths[0])]
        for i, c in enumerate(widths):
            out = widths[i + 1] if i + 1 < len(widths) else stem
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, out, 3, padding=1)]
            layers += [ResBlock(out)] if i + 1 < len(widths) else []
        layers += [_norm(stem), nn.SiLU(), nn.Conv2d(stem, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


class Tokenizer(nn.Module):
    """frames (B, T, H, W, 3) uint8 <-> latents (B, T, C, h, w) float, normalised."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.register_buffer("latent_shift", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_scale", torch.ones(cfg.latent_channels))

    # ---------------------------------------------------------------- pixels
    def check_frames(self, frames) -> torch.Tensor:
        frames = torch.as_tensor(frames)
        h, w = self.cfg.frame_size
        if frames.dtype != torch.uint8 or frames.ndim != 5 or tuple(frames.shape[2:]) != (h, w, 3):
            raise ValueError(f"expected uint8 frames (B, T, {h}, {w}, 3) for this tokenizer, "
                             f"got {frames.dtype} {tuple(frames.shape)}")
        return frames

    def to_input(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> float (B * T, 3, H, W) in [-1, 1]."""
        b, t, h, w, _ = frames.shape
        x = frames.to(self.latent_shift.device).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
        return x.reshape(b * t, 3, h, w)

    def from_output(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """float (B * T, 3, H, W) -> uint8 (B, T, H, W, 3)."""
        n, _, h, w = x.shape
        x = x.reshape(batch, n // batch, 3, h, w).permute(0, 1, 3, 4, 2)
        return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

    # ---------------------------------------------------------------- latents
    def encode(self, frames, sample: bool = False) -> torch.Tensor:
        frames = self.check_frames(frames)
        mean, logvar = self.encoder(self.to_input(frames))
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
        z = (z - self.latent_shift[:, None, None]) / self.latent_scale[:, None, None]
        return z.reshape(frames.shape[0], -1, *z.shape[1:])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T, C, h, w) normalised latents -> uint8 frames (B, T, H, W, 3)."""
        if latents.ndim != 5 or tuple(latents.shape[2:]) != self.cfg.latent_shape:
            raise ValueError(f"expected latents (B, T, {', '.join(map(str, self.cfg.latent_shape))}), got {tuple(latents.shape)}")
        b = latents.shape[0]
        z = latents.flatten(0, 1) * self.latent_scale[:, None, None] + self.latent_shift[:, None, None]
        return self.from_output(self.decoder(z), b)

    def loss(self, frames, detail_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
        """Reconstruction (MSE + L1 in [-1, 1]) plus a small KL to a unit Gaussian.

        detail_weight a > 0 weighs each pixel's error by 1 + a * (its distance from the
        5x5 mean around it), normalised to mean 1, so edges and objects a few pixels
        across weigh more than their share of the frame's area."""
        x = self.to_input(self.check_frames(frames))
        mean, logvar = self.encoder(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        recon = self.decoder(z).float()
        err = recon - x
        weight = detail_weights(x, detail_weight) if detail_weight else 1.0
        recon_loss = (weight * err ** 2).mean() + (weight * err.abs()).mean()
        mse, l1 = (err.detach() ** 2).mean(), err.detach().abs().mean()  # logged unweighted
        kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1 - logvar.float()).mean()
        total = recon_loss + self.cfg.kl_weight * kl
        psnr = 10 * torch.log10(4.0 / mse)  # signal range 2 in [-1, 1]
        return total, {"loss": total.item(), "mse": mse.item(), "l1": l1.item(), "kl": kl.item(), "psnr": psnr.item()}

    @torch.no_grad()
    def fit_latent_stats(self, frames):
        """Set the per-channel shift and scale from the latent means of these frames."""
        self.latent_shift.zero_()
        self.latent_scale.fill_(1)
        z = self.encode(frames).transpose(1, 2).flatten(2)  # (B, C, ...) -> per channel
        z = z.transpose(0, 1).reshape(self.cfg.latent_channels, -1)
        self.latent_shift.copy_(z.mean(1))
        self.latent_scale.copy_(z.std(1).clamp_min(1e-4))

    # ---------------------------------------------------------------- files
    def save(self, path, extra: dict | None = None, tensors: dict | None = None):
        config = {"kind": "tokenizer", "tokenizer": asdict(self.cfg), **(extra or {})}
        save_checkpoint(path, {**prefixed(self.state_dict(), MODEL), **(tensors or {})}, config)

    @classmethod
    def load(cls, path, frame_size=None, map_location="cpu") -> "Tokenizer":
        tensors, config = load_checkpoint(path)
        if config.get("kind") != "tokenizer" or "tokenizer" not in config:
            raise CheckpointError(f"{path} is a {config.get('kind', 'unknown')!r} checkpoint; expected a tokenizer")
        model = cls(config_from(TokenizerConfig, config, "tokenizer", path))
        if frame_size is not None and tuple(frame_size) != model.cfg.frame_size:
            raise CheckpointError(f"{path} is a tokenizer for {model.cfg.frame_size[0]}x{model.cfg.frame_size[1]} frames; "
                                  f"expected one for {frame_size[0]}x{frame_size[1]}")
        weights = with_prefix(tensors, MODEL)
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not match its own config ({e})") from e
        return model.to(map_location).eval()


def detail_weights(x: torch.Tensor, strength: float) -> torch.Tensor:
    """(N, 1, H, W) pixel weights 1 + strength * |x - local 5x5 mean| (over channels), mean 1."""
    with torch.no_grad():
        detail = (x - F.avg_pool2d(x, 5, 1, 2, count_include_pad=False)).abs().mean(1, keepdim=True)
        weight = 1 + strength * detail
        return weight / weight.mean()


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB between uint8 arrays (..., H, W, 3)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(-3, -2, -1))
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


def psnr_pooled(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of the mean squared error over all frames: unlike a mean of per-frame PSNR, a
    few identical frames (infinite PSNR) cannot dominate it."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame SSIM (Wang et al. 2004, 7x7 Gaussian window, sigma 1.5) over RGB, for uint8 (..., H, W, 3)."""
    import cv2

    a = a.reshape(-1, *a.shape[-3:]).astype(np.float64)
    b = b.reshape(-1, *b.shape[-3:]).astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda x: cv2.GaussianBlur(x, (7, 7), 1.5)  # noqa: E731
    out = []
    for x, y in zip(a, b):
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
        out.append(s.mean())
    return np.array(out)
