"""Spacetime patches: latent videos cut into tokens with (t, h, w) positions.

A latent video (B, T, C, H, W) is cut into non-overlapping patches of (pt, ph, pw); each
patch becomes one token of C*pt*ph*pw numbers. Any T, H, W divisible by the patch works,
so videos are tokenised at their native size (as in Sora) and the round trip is exact.
Token order is t-major, then h, then w: all of a frame's tokens are contiguous.
"""

from __future__ import annotations

import torch


def _check(shape, patch):
    t, h, w = shape
    pt, ph, pw = patch
    if t % pt or h % ph or w % pw:
        raise ValueError(f"latent video (T, H, W) = {tuple(shape)} is not divisible by the patch {tuple(patch)}")


def patchify(latents: torch.Tensor, patch=(1, 2, 2)) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, C, H, W) -> tokens (B, N, C*pt*ph*pw) and positions (N, 3) of (t, h, w) patch indices."""
    if latents.ndim != 5:
        raise ValueError(f"expected latents (B, T, C, H, W), got shape {tuple(latents.shape)}")
    b, t, c, h, w = latents.shape
    _check((t, h, w), patch)
    pt, ph, pw = patch
    x = latents.reshape(b, t // pt, pt, c, h // ph, ph, w // pw, pw)
    x = x.permute(0, 1, 4, 6, 3, 2, 5, 7)  # B, T', H', W', C, pt, ph, pw
    tokens = x.reshape(b, (t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)
    return tokens, patch_positions((t, h, w), patch, device=latents.device)


def patch_positions(shape, patch=(1, 2, 2), device=None) -> torch.Tensor:
    """(N, 3) long tensor of (t, h, w) patch indices, in token order."""
    t, h, w = shape
    _check(shape, patch)
    grid = torch.meshgrid(torch.arange(t // patch[0], device=device), torch.arange(h // patch[1], device=device),
                          torch.arange(w // patch[2], device=device), indexing="ij")
    return torch.stack([g.reshape(-1) for g in grid], dim=-1)


def unpatchify(tokens: torch.Tensor, shape, patch=(1, 2, 2)) -> torch.Tensor:
    """Inverse of patchify: tokens (B, N, D) -> (B, T, C, H, W) for shape = (T, C, H, W)."""
    t, c, h, w = shape
    _check((t, h, w), patch)
    pt, ph, pw = patch
    b, n, d = tokens.shape
    if n != (t // pt) * (h // ph) * (w // pw) or d != c * pt * ph * pw:
        raise ValueError(f"tokens {tuple(tokens.shape)} do not make a latent video {tuple(shape)} with patch {tuple(patch)}")
    x = tokens.reshape(b, t // pt, h // ph, w // pw, c, pt, ph, pw)
    x = x.permute(0, 1, 5, 4, 2, 6, 3, 7)  # B, T', pt, C, H', ph, W', pw
    return x.reshape(b, t, c, h, w)
