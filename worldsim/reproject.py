"""A frame re-rendered from another pose, with its depth: the view memory holds, moved to
where the camera now stands (GEN3C's 3D cache, for a camera that only walks and turns).

The camera is a pinhole of horizontal field of view `fov_deg` with square pixels, its
horizon at mid-screen, moving on the ground and turning about the vertical: a pose is
(x, y, yaw), yaw growing to the left, as `PoseTracker` and the Rooms and ViZDoom poses
have it. Depth is along the view axis, in the poses' units; an inverse depth of 0 is a
point at infinity (a sky, or a ceiling drawn by row alone), which only turns move.

Every pixel is cut into `sub` x `sub` samples, each sample goes to its 3D point and into
the new view, and the nearest sample that lands on a pixel colours it (a z-buffer), so a
view seen from nearer is magnified without gaps (up to `sub` times). Pixels no sample reaches (what
the old view did not see) are left uncovered. `rerender` puts several such views of one
place together: what a dream's memory shows from where it now stands.
"""

from __future__ import annotations

import math

import torch


def reproject(frames: torch.Tensor, inverse_depth: torch.Tensor, poses_from: torch.Tensor, poses_to: torch.Tensor,
              fov_deg: float, sub: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """frames (B, H, W, C) seen from poses_from (B, 3) with inverse_depth (B, H, W) ->
    the frames seen from poses_to (B, 3), (B, H, W, C) in frames' dtype (zero where
    uncovered), and their inverse depth there (B, H, W), float32: -1 where uncovered."""
    b, h, w, c = frames.shape
    dev = frames.device
    half_fov = math.tan(math.radians(fov_deg) / 2)
    # Sample centres in pixel units, and the pixel each sample takes its colour and depth from.
    ys = (torch.arange(h * sub, device=dev, dtype=torch.float32) + 0.5) / sub
    xs = (torch.arange(w * sub, device=dev, dtype=torch.float32) + 0.5) / sub
    src = (ys.long().clamp(max=h - 1)[:, None] * w + xs.long().clamp(max=w - 1)[None, :]).reshape(-1)  # (S,)
    row_y = (ys - h / 2)[:, None].expand(-1, w * sub).reshape(-1)  # below the horizon > 0
    cam_x = (2 * xs / w - 1)[None, :].expand(h * sub, -1).reshape(-1)  # -1 left .. 1 right
    inv = inverse_depth.reshape(b, -1).float()[:, src]  # (B, S)
    far = inv <= 0
    depth = torch.where(far, torch.ones_like(inv), 1 / inv.clamp(min=1e-12))

    def axes(pose):  # view direction and the camera's right, (B, 2) each
        c, s = torch.cos(pose[:, 2]), torch.sin(pose[:, 2])
        return torch.stack([c, s], -1), torch.stack([s, -c], -1)

    pa, pb = poses_from.float().to(dev), poses_to.float().to(dev)
    dir_a, right_a = axes(pa)
    dir_b, right_b = axes(pb)
    ray = dir_a[:, None, :] + (cam_x * half_fov)[None, :, None] * right_a[:, None, :]  # (B, S, 2), unit forward part
    # A point at infinity keeps its direction whatever the camera's position.
    shift = torch.where(far[..., None], torch.zeros_like(ray), (pa[:, :2] - pb[:, :2])[:, None, :])
    rel = shift + depth[..., None] * ray
    fwd = (rel * dir_b[:, None, :]).sum(-1)
    side = (rel * right_b[:, None, :]).sum(-1)
    ahead = fwd > 1e-3
    safe = torch.where(ahead, fwd, torch.ones_like(fwd))
    col = torch.floor((side / (safe * half_fov) + 1) * w / 2)
    row = torch.floor(h / 2 + row_y[None, :] * depth / safe)
    lands = ahead & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    target = (torch.arange(b, device=dev)[:, None] * (h * w) + row.clamp(0, h - 1).long() * w
              + col.clamp(0, w - 1).long())
    # Nearer samples win; points at infinity only where nothing finite lands.
    nearness = torch.where(far, torch.zeros_like(fwd), 1 / safe)
    nearness = torch.where(lands, nearness + 1, torch.full_like(fwd, -1.0))  # +1: a landed far point beats nothing
    best = torch.full((b * h * w,), -1.0, dtype=torch.float32, device=dev)
    best.scatter_reduce_(0, target.reshape(-1), nearness.reshape(-1), reduce="amax")
    wins = lands & (nearness == best[target])
    # Of equally near samples on one pixel, the last one colours it (a fixed choice on any device).
    sample = torch.arange(src.numel(), device=dev).expand(b, -1)
    winner = torch.full((b * h * w,), -1, dtype=torch.long, device=dev)
    winner.scatter_reduce_(0, target[wins], sample[wins], reduce="amax")
    colours = frames.reshape(b, h * w, c)[torch.arange(b, device=dev)[:, None], src[None, :].expand(b, -1)]
    shown = winner >= 0
    out = torch.zeros(b * h * w, c, dtype=frames.dtype, device=dev)
    out[shown] = colours[torch.arange(b * h * w, device=dev)[shown] // (h * w), winner[shown]]
    inverse = torch.where(best > 0, best - 1, -1.0)  # back from nearness + 1
    return out.reshape(b, h, w, c), inverse.reshape(b, h, w)


def fuse(frames: torch.Tensor, inverse_depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of one place from several sources (B, S, H, W, C), each with its inverse depth
    (B, S, H, W; -1 where it shows nothing), in order of preference, as one: each pixel
    from the first source that shows it. Sources are not depth-tested against each other:
    in a static world the preferred (least moved) source is right where it sees, and a
    later source's nearer surface there is mostly its depth error. Returns (B, H, W, C)
    and its inverse depth (B, H, W)."""
    pick = (inverse_depth >= 0).int().argmax(1)  # (B, H, W): the first source showing it; 0 where none
    out = frames.gather(1, pick[:, None, ..., None].expand(-1, 1, *frames.shape[2:]))[:, 0]
    return out, inverse_depth.gather(1, pick[:, None])[:, 0]


def rerender(frames: torch.Tensor, inverse_depth: torch.Tensor, poses: torch.Tensor, shown: torch.Tensor,
             fov_deg: float) -> torch.Tensor:
    """Sources (R, S, H, W, C) with their inverse depths (R, S, H, W) and poses (R, S, 3)
    relative to a new view (which looks along +x from the origin), `shown` (R, S) the
    sources that count, as one view from there (R, H, W, C). Where sources see the same
    surface, the one seen from nearest the new pose gives it (the least moved, so the
    least blurred by depth errors); what none sees is source 0 as it was (a dream's last
    frame, the likeliest guess of what is new)."""
    r, s = frames.shape[:2]
    views, near = reproject(frames.flatten(0, 1), inverse_depth.flatten(0, 1), poses.flatten(0, 1),
                            torch.zeros_like(poses.flatten(0, 1)), fov_deg)
    near = torch.where(shown.flatten()[:, None, None], near, -1.0).unflatten(0, (r, s))
    moved = poses[..., :2].norm(dim=-1) + poses[..., 2].abs()
    order = torch.argsort(moved, dim=1, stable=True)
    pick = lambda t: t.gather(1, order.view(r, s, *[1] * (t.ndim - 2)).expand_as(t))  # noqa: E731
    view, near = fuse(pick(views.unflatten(0, (r, s))), pick(near))
    return torch.where(near[..., None] >= 0, view, frames[:, 0])
