"""Object-persistent latent memory: past latent frames kept beyond the context window.

Each entry is a latent frame with its key, the camera pose (x, y, yaw) it was seen from,
or, for an env that reports no pose, the latent itself (`latent_keys`).
For the frame about to be generated, the entries whose views overlap its view most are
retrieved (WorldMem's rule: the share of points in the new view's field of view that the
old view also saw) and the transformer attends to them, with each entry's pose relative
to the new frame as its conditioning (`Dynamics.forward(memory=...)`).

In a dream there is no ground-truth pose, so `PoseTracker` integrates the env's motion
model (what each action does to the pose, exported with the world model) from an
arbitrary origin: only relative poses are ever used. Collisions are unknown to it, so
its key drifts where the agent walks into walls.

The memory is bounded: an entry that sees nearly the same view as a newer one is
replaced by it (the newer frame shows the world as it is now), otherwise the oldest entry
goes.
"""

from __future__ import annotations

import numpy as np
import torch


# When two frames show the same view (a revisit, or a memory entry to replace), and the
# least likeness worth retrieving, for each kind of key: view overlap of poses, cosine
# similarity of latent keys.
SAME_VIEW = {"pose": 0.9, "latent": 0.98}
MIN_LIKENESS = {"pose": 0.1, "latent": 0.5}


def _frustum_points(fov_deg: float, reach: float, n: int = 8) -> np.ndarray:
    """(n*n, 2) points (forward, left) spread over a 2D field of view up to `reach`."""
    half = np.radians(fov_deg) / 2
    angles = np.linspace(-half, half, n)
    dists = np.linspace(reach / n, reach, n)
    a, d = np.meshgrid(angles, dists)
    return np.stack([d * np.cos(a), d * np.sin(a)], -1).reshape(-1, 2)


def relative_poses(query: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Poses (N, 3) seen from `query` (3,): (N, 3) of (forward, left, dyaw in (-pi, pi])."""
    d = poses[:, :2] - query[:2]
    c, s = np.cos(query[2]), np.sin(query[2])
    forward, left = d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c
    dyaw = np.angle(np.exp(1j * (poses[:, 2] - query[2])))
    return np.stack([forward, left, dyaw], -1)


def view_points_seen(query: np.ndarray, poses: np.ndarray, fov_deg: float, reach: float) -> np.ndarray:
    """(N, P) booleans: which of the query view's sampled points (its field of view up to
    `reach`) each of `poses` (N, 3) also sees."""
    c, s = np.cos(query[2]), np.sin(query[2])
    pts = _frustum_points(fov_deg, reach)
    world = query[:2] + pts[:, :1] * np.array([c, s]) + pts[:, 1:] * np.array([-s, c])  # P, 2
    d = world[None] - poses[:, None, :2]  # N, P, 2
    dist = np.linalg.norm(d, axis=-1)
    bearing = np.angle(np.exp(1j * (np.arctan2(d[..., 1], d[..., 0]) - poses[:, None, 2])))
    return (np.abs(bearing) <= np.radians(fov_deg) / 2 + 1e-6) & (dist <= reach + 1e-6)


def view_overlap(query: np.ndarray, poses: np.ndarray, fov_deg: float, reach: float) -> np.ndarray:
    """Share of the query view's field of view (sampled points up to `reach`) that each
    of `poses` (N, 3) also sees: 1 for the same pose, 0 for disjoint views."""
    if len(poses) == 0:
        return np.zeros(0)
    return view_points_seen(query, poses, fov_deg, reach).mean(axis=1)


def turned_columns(dyaw: torch.Tensor, cols: int, fov_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the `cols` screen columns of a view turned by `dyaw` (..., radians, positive
    = turned left, as yaw grows) from the current one land on the current screen, for a
    pinhole camera of horizontal field of view `fov_deg`: fractional column indices
    (..., cols), clamped to the screen, and whether each lands on it."""
    half = np.tan(np.radians(fov_deg) / 2)
    centre = (torch.arange(cols, device=dyaw.device, dtype=torch.float32) + 0.5) / cols  # 0 left .. 1 right
    bearing = torch.atan((1 - 2 * centre) * half) + dyaw.float()[..., None]  # to the left of the view axis
    bearing = torch.atan2(bearing.sin(), bearing.cos())
    on_screen = (bearing.abs() < np.pi / 2) & (bearing.tan().abs() <= half)
    return ((1 - bearing.tan() / half) / 2 * cols - 0.5).clamp(0, cols - 1), on_screen


def best_views(overlap: np.ndarray, k: int, min_overlap: float) -> np.ndarray:
    """Indices of the (at most) k largest overlaps, best first, none below min_overlap."""
    order = np.argsort(-overlap, kind="stable")[:k]
    return order[overlap[order] >= min_overlap]


def pose_features(rel: np.ndarray, reach: float) -> np.ndarray:
    """Relative poses (..., 3) -> model inputs (..., 4): position in units of reach, and
    the yaw difference as cos and sin."""
    return np.concatenate([rel[..., :2] / reach, np.cos(rel[..., 2:]), np.sin(rel[..., 2:])], -1).astype(np.float32)


def fit_pose_model(poses: list, actions: list, n_actions: int, fov_deg: float | None = None,
                   reach: float | None = None) -> dict:
    """A pose model fitted from data, for envs that report a pose (x, y, yaw, facing
    (cos yaw, sin yaw)) but have no ``pose_model()``: each action's motion is the median
    of what it did to the pose, seen from the pose it started at, over its steps that
    moved at least half as far as its longer ones (walls stop or slow the others). The
    field of view defaults to 90 degrees and the reach to 8 of the longest steps."""
    rel = np.concatenate([relative_poses_pairwise(np.asarray(p, np.float64)) for p in poses])
    acts = np.concatenate([np.asarray(a).reshape(-1) for a in actions]).astype(np.int64)
    if len(rel) != len(acts):
        raise ValueError(f"fit_pose_model: {len(rel)} pose steps but {len(acts)} actions")
    motion = np.zeros((n_actions, 3))
    for a in range(n_actions):
        if (acts == a).any():
            mine = rel[acts == a]
            length = np.linalg.norm(mine[:, :2], axis=1)
            motion[a] = np.median(mine[length >= 0.5 * np.percentile(length, 90)], axis=0)
    stride = float(np.abs(motion[:, :2]).max())
    if reach is None and stride == 0:
        raise ValueError("fit_pose_model: no action moved the pose; give the env a view_reach or a pose_model()")
    return {"motion": motion.tolist(), "fov_deg": float(fov_deg or 90.0), "reach": float(reach or 8 * stride),
            "fitted": True}


def relative_poses_pairwise(poses: np.ndarray) -> np.ndarray:
    """(T+1, 3) poses -> (T, 3): each pose seen from the one before it."""
    prev, nxt = poses[:-1], poses[1:]
    d = nxt[:, :2] - prev[:, :2]
    c, s = np.cos(prev[:, 2]), np.sin(prev[:, 2])
    dyaw = np.angle(np.exp(1j * (nxt[:, 2] - prev[:, 2])))
    return np.stack([d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c, dyaw], -1)


class PoseTracker:
    """Dead reckoning from actions: motion[a] = (forward, left, turn radians) of action a."""

    def __init__(self, motion):
        self.motion = np.asarray(motion, dtype=np.float64)
        if self.motion.ndim != 2 or self.motion.shape[1] != 3:
            raise ValueError(f"motion must be one (forward, left, turn) row per action, got shape {self.motion.shape}")

    def step(self, pose: np.ndarray, action) -> np.ndarray:
        forward, left, turn = self.motion[int(action)]
        c, s = np.cos(pose[2]), np.sin(pose[2])
        return np.array([pose[0] + forward * c - left * s, pose[1] + forward * s + left * c, pose[2] + turn])

    def path(self, actions, start=(0.0, 0.0, 0.0)) -> np.ndarray:
        """Poses (T+1, 3) along `actions` (T,) from `start`."""
        poses = [np.asarray(start, dtype=np.float64)]
        for a in np.asarray(actions).reshape(-1):
            poses.append(self.step(poses[-1], a))
        return np.stack(poses)


def latent_keys(latents) -> np.ndarray:
    """Keys of latent frames (..., C, h, w) for an env without a pose: each frame pooled to
    a 4x4 grid per channel, centred and scaled to unit length, so that the dot product of
    two keys is the cosine similarity of what the frames show, coarsely."""
    z = torch.as_tensor(latents).float().cpu()
    lead = z.shape[:-3]
    z = torch.nn.functional.adaptive_avg_pool2d(z.reshape(-1, *z.shape[-3:]), 4).flatten(1)
    z = z - z.mean(1, keepdim=True)
    return (z / z.norm(dim=1, keepdim=True).clamp_min(1e-6)).reshape(*lead, -1).numpy()


class LatentMemory:
    """A bounded bank of (latent, key, step) entries.

    Keyed by pose (key="pose", the default): retrieval by view overlap, and each entry
    comes with its pose relative to the query. Keyed by the latent itself (key="latent",
    for envs that report no pose): retrieval by the cosine similarity of `latent_keys`,
    queried with the newest frame, and entries come with no relative pose (zeros)."""

    def __init__(self, latent_shape, capacity: int = 256, fov_deg: float = 60.0, reach: float = 5.0,
                 same_view: float | None = None, min_overlap: float | None = None, key: str = "pose"):
        if capacity < 1:
            raise ValueError(f"memory capacity must be at least 1, got {capacity}")
        if key not in ("pose", "latent"):
            raise ValueError(f"memory key must be 'pose' or 'latent', got {key!r}")
        self.latent_shape = tuple(latent_shape)
        self.capacity, self.fov_deg, self.reach, self.key = capacity, fov_deg, reach, key
        self.same_view = SAME_VIEW[key] if same_view is None else same_view
        self.min_overlap = MIN_LIKENESS[key] if min_overlap is None else min_overlap
        self.latents: list[torch.Tensor] = []
        self.entry_keys = np.zeros((0, 3) if key == "pose" else (0, 16 * latent_shape[0]))  # poses or latent keys
        self.steps = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.latents)

    def similarity(self, query, keys) -> np.ndarray:
        """View overlap (pose keys) or cosine similarity (latent keys) of `query` with `keys`."""
        if self.key == "pose":
            return view_overlap(query, keys, self.fov_deg, self.reach)
        return keys @ query if len(keys) else np.zeros(0)

    def _key_of(self, pose, latent) -> np.ndarray:
        """The key of an entry or a query: its pose, or its latent's `latent_keys`."""
        return np.asarray(pose, dtype=np.float64) if self.key == "pose" else latent_keys(latent.detach().cpu())

    def add(self, latent: torch.Tensor, pose, step: int):
        """`pose` keys the entry; with latent keys it is ignored (pass None)."""
        key = self._key_of(pose, latent)
        overlap = self.similarity(key, self.entry_keys)
        if len(overlap) and overlap.max() >= self.same_view:
            drop = int(overlap.argmax())  # the same view seen again: keep the newer frame
        elif len(self) >= self.capacity:
            drop = int(self.steps.argmin())  # full: the oldest goes
        else:
            drop = None
        if drop is not None:
            del self.latents[drop]
            self.entry_keys, self.steps = np.delete(self.entry_keys, drop, 0), np.delete(self.steps, drop)
        self.latents.append(latent.detach().cpu())  # memory lives in host RAM; a GPU holds the context
        self.entry_keys = np.concatenate([self.entry_keys, key[None]])
        self.steps = np.append(self.steps, step)

    def retrieve(self, query, k: int, before_step: int):
        """The k entries seen before `before_step` most like `query`: those whose views
        overlap the pose `query`'s most, or (latent keys) whose latents are most like the
        latent `query`.

        Returns latents (k, C, h, w), features (k, 4) of their poses relative to `query`
        (zeros with latent keys), and valid (k,) bool (False pads slots with no entry
        of enough overlap)."""
        query = self._key_of(query, query)
        old = np.nonzero(self.steps < before_step)[0]
        order = old[best_views(self.similarity(query, self.entry_keys[old]), k, self.min_overlap)]
        return gather(self.latents, self.entry_keys if self.key == "pose" else None, order, query, k, self.reach,
                      self.latent_shape)


def gather(latents, poses: np.ndarray | None, order, query: np.ndarray, k: int, reach: float, latent_shape):
    """Entries `order` of `latents` in k slots, with their `poses` relative to `query`
    (zeros where there are no poses: memory keyed by latents)."""
    z = torch.zeros(k, *latent_shape)
    feats = np.zeros((k, 4), np.float32)
    valid = np.zeros(k, bool)
    n = len(order)
    if n:
        z[:n] = torch.stack([torch.as_tensor(latents[i]).float() for i in order])
        if poses is not None:
            feats[:n] = pose_features(relative_poses(query, poses[order]), reach)
        valid[:n] = True
    return z, feats, valid
