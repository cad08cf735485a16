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
MEMORY_CAPACITY = 256  # latent frames each dream row remembers beyond its context window
SEEN_HERE = (0.0, 0.0, 1.0, 0.0)  # the pose features of a view seen from the query pose itself


def _frustum_points(fov_deg: float, reach: float, n: int = 8) -> np.ndarray:
    """(n*n, 2) points (forward, left) spread over a 2D field of view up to `reach`."""
    half = np.radians(fov_deg) / 2
    angles = np.linspace(-half, half, n)
    dists = np.linspace(reach / n, reach, n)
    a, d = np.meshgrid(angles, dists)
    return np.stack([d * np.cos(a), d * np.sin(a)], -1).reshape(-1, 2)


def relative_poses_batched(queries: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
    """Poses (R, N, 3) seen from each row's query (R, 3): (R, N, 3) of (forward, left,
    dyaw in (-pi, pi])."""
    d = poses[..., :2] - queries[:, None, :2]
    c, s = torch.cos(queries[:, None, 2]), torch.sin(queries[:, None, 2])
    dyaw = poses[..., 2] - queries[:, None, 2]
    return torch.stack([d[..., 0] * c + d[..., 1] * s, -d[..., 0] * s + d[..., 1] * c,
                        torch.atan2(torch.sin(dyaw), torch.cos(dyaw))], -1)


def relative_poses(query: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Poses (N, 3) seen from `query` (3,): (N, 3) of (forward, left, dyaw in (-pi, pi])."""
    return relative_poses_batched(torch.as_tensor(np.asarray(query, np.float64))[None],
                                  torch.as_tensor(np.asarray(poses, np.float64))[None])[0].numpy()


def pose_features_batched(rel: torch.Tensor, reach: float) -> torch.Tensor:
    """Relative poses (..., 3) -> model inputs (..., 4), float32: position in units of
    reach, and the yaw difference as cos and sin."""
    return torch.cat([rel[..., :2] / reach, torch.cos(rel[..., 2:]), torch.sin(rel[..., 2:])], -1).float()


def points_seen(queries: torch.Tensor, poses: torch.Tensor, fov_deg: float, reach: float, pts=None) -> torch.Tensor:
    """(..., N, P) booleans: which of each query view's sampled points (its field of view
    up to `reach`; `pts`, `_frustum_points` as a tensor where the caller keeps one) each
    of `poses` (..., N, 3) also sees; queries (..., 3). Batched over the leading
    dimensions (a dream's rows)."""
    q = queries[..., None, :]  # ..., 1, 3
    c, s = torch.cos(q[..., 2:]), torch.sin(q[..., 2:])
    if pts is None:
        pts = torch.as_tensor(_frustum_points(fov_deg, reach), dtype=poses.dtype, device=poses.device)
    world = torch.stack([q[..., 0:1] + pts[:, 0] * c - pts[:, 1] * s,
                         q[..., 1:2] + pts[:, 0] * s + pts[:, 1] * c], -1)  # ..., 1, P, 2
    d = world - poses[..., :, None, :2]  # ..., N, P, 2
    dist = torch.linalg.vector_norm(d, dim=-1)
    bearing = torch.atan2(d[..., 1], d[..., 0]) - poses[..., None, 2]
    bearing = torch.atan2(torch.sin(bearing), torch.cos(bearing))
    return (bearing.abs() <= np.radians(fov_deg) / 2 + 1e-6) & (dist <= reach + 1e-6)


def view_points_seen(query: np.ndarray, poses: np.ndarray, fov_deg: float, reach: float) -> np.ndarray:
    """(N, P) booleans: which of the query view's sampled points (its field of view up to
    `reach`) each of `poses` (N, 3) also sees."""
    return points_seen(torch.as_tensor(np.asarray(query, np.float64)), torch.as_tensor(np.asarray(poses, np.float64)),
                       fov_deg, reach).numpy()


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
    """`pose_features_batched` of numpy relative poses (..., 3)."""
    return pose_features_batched(torch.as_tensor(np.asarray(rel, np.float64)), reach).numpy()


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
        """Pose (..., 3) after action (...): one pose, or every row of a dream at once."""
        pose = np.asarray(pose, np.float64)
        forward, left, turn = np.moveaxis(self.motion[np.asarray(action, np.int64).reshape(pose.shape[:-1])], -1, 0)
        c, s = np.cos(pose[..., 2]), np.sin(pose[..., 2])
        return np.stack([pose[..., 0] + forward * c - left * s, pose[..., 1] + forward * s + left * c,
                         pose[..., 2] + turn], -1)

    def path(self, actions, start=(0.0, 0.0, 0.0)) -> np.ndarray:
        """Poses (T+1, 3) along `actions` (T,) from `start`."""
        poses = [np.asarray(start, dtype=np.float64)]
        for a in np.asarray(actions).reshape(-1):
            poses.append(self.step(poses[-1], a))
        return np.stack(poses)


def pooled_keys(latents: torch.Tensor) -> torch.Tensor:
    """Keys of latent frames (..., C, h, w) for an env without a pose, on their device:
    each frame pooled to a 4x4 grid per channel, centred and scaled to unit length, so
    that the dot product of two keys is the cosine similarity of what the frames show,
    coarsely."""
    z = latents.float()
    lead = z.shape[:-3]
    z = torch.nn.functional.adaptive_avg_pool2d(z.reshape(-1, *z.shape[-3:]), 4).flatten(1)
    z = z - z.mean(1, keepdim=True)
    return (z / z.norm(dim=1, keepdim=True).clamp_min(1e-6)).reshape(*lead, -1)


def latent_keys(latents) -> np.ndarray:
    """`pooled_keys` of latents (numpy or tensor) as a numpy array."""
    return pooled_keys(torch.as_tensor(latents)).cpu().numpy()


class MemoryBank:
    """Bounded banks of (latent, key, step) entries, one bank per dream row, held as
    tensors on one device (the model's: 1,024 rows of 256 Rooms latents take 1 GiB
    there) so that every row adds and retrieves in the same few operations.

    Keyed by pose (key="pose", the default): retrieval by view overlap, and each entry
    comes with its pose relative to the query. Keyed by the latent itself (key="latent",
    for envs that report no pose): retrieval by the cosine similarity of `pooled_keys`,
    queried with the newest frame, and entries come with no relative pose (zeros).
    Ties (overlaps come in steps of 1/64) go to the entry added first.

    With `view_shape` (H, W), each entry also keeps its decoded frame and inverse depth
    (what re-rendering it from a new pose needs: worldsim/reproject.py), so a frame is
    decoded and given depth once, when it is added, not each time it is recalled: 20 KiB
    an entry at 64x64, 5 MiB a row at capacity 256."""

    def __init__(self, rows: int, latent_shape, capacity: int = MEMORY_CAPACITY, fov_deg: float = 60.0, reach: float = 5.0,
                 same_view: float | None = None, min_overlap: float | None = None, key: str = "pose", device="cpu",
                 view_shape: tuple[int, int] | None = None):
        if capacity < 1:
            raise ValueError(f"memory capacity must be at least 1, got {capacity}")
        if key not in ("pose", "latent"):
            raise ValueError(f"memory key must be 'pose' or 'latent', got {key!r}")
        self.rows, self.latent_shape = rows, tuple(latent_shape)
        self.capacity, self.fov_deg, self.reach, self.key = capacity, fov_deg, reach, key
        self.same_view = SAME_VIEW[key] if same_view is None else same_view
        self.min_overlap = MIN_LIKENESS[key] if min_overlap is None else min_overlap
        self.points = torch.as_tensor(_frustum_points(fov_deg, reach), dtype=torch.float64, device=device)
        key_dim = 3 if key == "pose" else 16 * self.latent_shape[0]
        # Slots grow with use, up to capacity; a free slot has used False.
        self.latents = torch.zeros(rows, 0, *self.latent_shape, device=device)
        self.keys = torch.zeros(rows, 0, key_dim, dtype=torch.float64, device=device)  # poses or latent keys
        self.steps = torch.zeros(rows, 0, dtype=torch.long, device=device)
        self.order = torch.zeros(rows, 0, dtype=torch.long, device=device)  # when each entry came: ties go to the first
        self.used = torch.zeros(rows, 0, dtype=torch.bool, device=device)
        self.views = view_shape is not None
        if self.views:  # each entry's frame (uint8) and inverse depth (float16)
            self.pixels = torch.zeros(rows, 0, *view_shape, 3, dtype=torch.uint8, device=device)
            self.inverse = torch.zeros(rows, 0, *view_shape, dtype=torch.float16, device=device)
        self.added = 0
        self.adds = np.zeros(rows, np.int64)  # adds per row since cleared, on the host: at least its entries

    def entries(self, row: int) -> int:
        """How many entries row `row` holds."""
        return int(self.used[row].sum())

    def clear(self, rows):
        """Empty the banks of `rows` (a row starting a new episode)."""
        self.used[torch.as_tensor(rows, device=self.used.device)] = False
        self.adds[np.asarray(rows)] = 0

    def similarity(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(R, M): view overlap (pose keys) or cosine similarity (latent keys) of each row's
        query (R, key) with its entries' keys (R, M, key)."""
        if self.key == "pose":
            return points_seen(queries, keys, self.fov_deg, self.reach, self.points).double().mean(-1)
        return (keys @ queries[..., None])[..., 0]

    def _key_of(self, poses, latents) -> torch.Tensor:
        """Keys of entries or queries (R, key): their poses, or their latents' `pooled_keys`."""
        if self.key == "pose":
            return torch.as_tensor(poses, dtype=torch.float64, device=self.keys.device)
        return pooled_keys(latents.to(self.keys.device)).double()

    @staticmethod
    def _first_best(scores: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Each row's slot of the highest score (R,), ties to the entry added first."""
        best = scores == scores.max(1, keepdim=True).values
        return torch.where(best, order, torch.iinfo(order.dtype).max).argmin(1)

    def add(self, latents: torch.Tensor, poses, steps, rows=None, views=None):
        """One entry per row of `rows` (default: every row): latents (R, C, h, w), poses
        (R, 3) keying them (ignored with latent keys: pass None), steps (R,); with
        `view_shape`, views = (frames (R, H, W, 3) uint8, inverse depth (R, H, W)). An entry
        that sees nearly the same view as one already kept replaces it (the newer frame
        shows the world as it is now); in a full bank the oldest entry goes."""
        if self.views and views is None:
            raise ValueError("this memory keeps each entry's frame and inverse depth: pass views=(frames, inverse)")
        device = self.used.device
        rows = np.arange(self.rows) if rows is None else np.asarray(rows)
        if self.used.shape[1] < self.capacity and self.adds[rows].max() >= self.used.shape[1]:
            self._grow()
        self.adds[rows] += 1
        at = torch.as_tensor(rows, device=device)
        key, used, order = self._key_of(poses, latents), self.used[at], self.order[at]
        likeness = torch.where(used, self.similarity(key, self.keys[at]), -torch.inf)
        same = self._first_best(likeness, order)
        oldest = self._first_best(torch.where(used, -self.steps[at].double(), -torch.inf), order)
        free = (~used).int().argmax(1)  # the first free slot
        slot = torch.where(likeness.gather(1, same[:, None])[:, 0] >= self.same_view, same,
                           torch.where(used.all(1), oldest, free))
        self.latents[at, slot] = latents.to(device=device, dtype=self.latents.dtype)
        self.keys[at, slot] = key
        self.steps[at, slot] = torch.as_tensor(steps, device=device)
        self.order[at, slot] = self.added + torch.arange(len(rows), device=device)
        self.used[at, slot] = True
        if self.views:
            self.pixels[at, slot] = views[0].to(device)
            self.inverse[at, slot] = views[1].to(device=device, dtype=torch.float16)
        self.added += len(rows)

    def _grow(self):
        """Twice the slots (at least 8, at most capacity), free."""
        grow = min(max(8, self.used.shape[1]), self.capacity - self.used.shape[1])
        pad = lambda t: torch.cat([t, t.new_zeros(t.shape[0], grow, *t.shape[2:])], 1)  # noqa: E731
        self.latents, self.keys, self.steps, self.order, self.used = map(
            pad, (self.latents, self.keys, self.steps, self.order, self.used))
        if self.views:
            self.pixels, self.inverse = pad(self.pixels), pad(self.inverse)

    def retrieve(self, queries, k: int, before_step, views: bool = False):
        """For every row, the k entries seen before its `before_step` (R,) most like its
        query: those whose views overlap the pose query (R, 3) most, or (latent keys)
        whose latents are most like the latent query (R, C, h, w).

        Returns latents (R, k, C, h, w), features (R, k, 4) of their poses relative to the
        query (zeros with latent keys), and valid (R, k) bool (False pads slots with no
        entry of enough likeness); with `views`, also their frames (R, k, H, W, 3) and
        inverse depths (R, k, H, W)."""
        if views and not self.views:
            raise ValueError("this memory keeps no frames or depth (make it with view_shape) to return views of")
        device = self.used.device
        z = torch.zeros(self.rows, k, *self.latent_shape, device=device)
        feats = torch.zeros(self.rows, k, 4, device=device)
        valid = torch.zeros(self.rows, k, dtype=torch.bool, device=device)
        if views:
            pixels = torch.zeros(self.rows, k, *self.pixels.shape[2:], dtype=torch.uint8, device=device)
            inverse = torch.zeros(self.rows, k, *self.inverse.shape[2:], device=device)
        out = lambda: (z, feats, valid, pixels, inverse) if views else (z, feats, valid)  # noqa: E731
        m = min(k, self.used.shape[1])
        if m == 0:
            return out()
        query = self._key_of(queries, queries)
        before = torch.as_tensor(before_step, device=device).expand(self.rows)
        eligible = self.used & (self.steps < before[:, None])
        likeness = torch.where(eligible, self.similarity(query, self.keys), -torch.inf)
        by_age = torch.argsort(self.order, dim=1)  # stable sort by likeness after it: ties to the first added
        best = by_age.gather(1, torch.argsort(-likeness.gather(1, by_age), dim=1, stable=True))[:, :m]
        valid[:, :m] = likeness.gather(1, best) >= self.min_overlap
        rows = torch.arange(self.rows, device=device)[:, None]
        z[:, :m] = torch.where(valid[:, :m, None, None, None], self.latents[rows, best], 0.0)
        if self.key == "pose":
            rel = relative_poses_batched(query, self.keys[rows, best])
            feats[:, :m] = torch.where(valid[:, :m, None], pose_features_batched(rel, self.reach), 0.0)
        if views:
            pixels[:, :m] = torch.where(valid[:, :m, None, None, None], self.pixels[rows, best], 0)
            inverse[:, :m] = torch.where(valid[:, :m, None, None], self.inverse[rows, best].float(), 0.0)
        return out()


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


def bank_drops(poses: np.ndarray, fov_deg: float, reach: float, capacity: int = MEMORY_CAPACITY) -> np.ndarray:
    """For frames seen from `poses` (T, 3) added one by one to a pose-keyed MemoryBank, as
    a dream adds its frames: the frame whose adding dropped each one (a near-copy of its
    view, or the oldest of a full bank), T where none did. Frame t is in the bank that
    recalls for frame s when t < s and drops[t] >= s.

    MemoryBank.add's rules on a list kept in the order entries came (so the first of tied
    overlaps and the oldest entry are the list's first), with overlaps computed for 64
    frames at a time against every frame since the oldest one held: about 5x faster than
    filling a bank, and bounded by the bank's reach back, not the episode's length."""
    n = len(poses)
    q = torch.as_tensor(np.asarray(poses, np.float64))
    pts = torch.as_tensor(_frustum_points(fov_deg, reach), dtype=torch.float64)
    held: list[int] = []  # in the order they came, so also by frame
    drops = np.full(n, n)
    for lo in range(0, n, 64):
        hi, first = min(n, lo + 64), held[0] if held else lo  # frames lo..hi-1 recall nothing older than first
        # overlap[t - lo, j - first]: share of frame t's view that frame j's pose sees
        overlap = points_seen(q[lo:hi], q[None, first:hi].expand(hi - lo, hi - first, 3), fov_deg, reach,
                              pts).double().mean(-1).numpy()
        for t in range(lo, hi):
            if held:
                likeness = overlap[t - lo, np.asarray(held) - first]
                same = int(np.argmax(likeness))  # the first of ties: the entry that came first
                gone = same if likeness[same] >= SAME_VIEW["pose"] else 0 if len(held) == capacity else None
                if gone is not None:
                    drops[held.pop(gone)] = t
            held.append(t)
    return drops
