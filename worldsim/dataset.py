"""On-disk episodes and the window loader that feeds training.

Layout of a dataset directory::

    DIR/dataset.json            what made it: env id, action space, frame shape, source
    DIR/{train,val,test}/ep_000042.h5

One HDF5 file per episode (h5py): HDF5 is a long-kept standard with chunked, compressed
datasets and partial reads, so a training window decompresses only the chunks it
touches; gzip is built into every HDF5 build, so any reader opens the files without
plugins. Inside an episode of T steps::

    frames      (T+1, H, W, 3) uint8   frames[0] is the reset frame
    actions     (T, ...)               actions[t] was taken on frames[t] and led to frames[t+1]
    rewards     (T,) float32           reward for that step
    terminated  (T,) bool
    truncated   (T,) bool              the last one is True when the episode was cut short
    gt/<key>    (T+1, ...)             ground truth of each frame (pose, depth, objects, ...)
    attrs       caption, source, ...

Action-free footage has no `actions` dataset. Every write goes to a hidden temporary
file that is linked into place only once complete, so a killed writer never leaves a
half-written episode behind, and finished episodes are never touched again.
Episodes are assigned to splits when written: of every ten, the second goes to val and
the third to test, so even three episodes give all three splits and a file never changes
split as the dataset grows.

Several writers may share a directory at once (two collects, say): each claims its
episode number by linking its finished file to the first free name (a link never
replaces an existing file), temporary files carry their writer's pid, and dataset.json
is read, changed and rewritten under a lock. Each collect's env seeds are recorded in
dataset.json, so a second collect never replays the episodes of the first.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Env seeds at and above this are kept for probes and evaluation: `collect` refuses them,
# so no probe replays an episode (or, with world_seed=None, a map) a model trained on.
PROBE_SEEDS_START = 1_000_000_000
EVAL_SEEDS_START = 1_900_000_000  # the real episodes agents are scored on (probes stay below)

SPLITS = ("train", "val", "test")
FORMAT = "worldsim-episodes/1"


class DatasetError(RuntimeError):
    """A dataset directory or episode file that is missing, corrupt or inconsistent."""


@dataclass
class Episode:
    frames: np.ndarray
    actions: np.ndarray | None
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    gt: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rewards)

    def validate(self, where: str = "episode"):
        t = len(self.rewards)
        if self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[-1] != 3:
            raise DatasetError(f"{where}: frames must be uint8 (T+1, H, W, 3), got {self.frames.dtype} {self.frames.shape}")
        if len(self.frames) != t + 1:
            raise DatasetError(f"{where}: {len(self.frames)} frames for {t} steps; expected T+1 frames for T steps")
        for name in ("terminated", "truncated"):
            if len(getattr(self, name)) != t:
                raise DatasetError(f"{where}: {name} has length {len(getattr(self, name))}, expected {t}")
        if self.actions is not None and len(self.actions) != t:
            raise DatasetError(f"{where}: actions has length {len(self.actions)}, expected {t}")
        for key, value in self.gt.items():
            if len(value) != t + 1:
                raise DatasetError(f"{where}: gt/{key} has length {len(value)}, expected one per frame ({t + 1})")


def split_for(index: int) -> str:
    """Split of the index-th episode written to a dataset (0-based)."""
    return {1: "val", 2: "test"}.get(index % 10, "train")


def _tmp_path(path: Path) -> Path:
    """A hidden temporary name beside `path`, unique to this writer; the pid in it tells
    a later writer whether the file's writer is still alive."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def _is_stale(tmp: Path) -> bool:
    """Whether the process that was writing `tmp` is gone (or the name holds no pid)."""
    try:
        pid = int(tmp.name.split(".")[-2].split("-")[0])
    except ValueError:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def atomic_write_bytes(path: Path, data: bytes):
    tmp = _tmp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class DatasetWriter:
    """Appends episodes to a dataset directory, atomically, one file per episode; safe
    with other writers on the same directory."""

    def __init__(self, root: str | os.PathLike, meta: dict):
        self.root = Path(root)
        try:
            for split in SPLITS:
                (self.root / split).mkdir(parents=True, exist_ok=True)
            probe = _tmp_path(self.root / ".write-test")
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise DatasetError(f"cannot write a dataset to {self.root}: {e.strerror or e}; expected a writable directory") from e
        # Temporary files left by a killed writer hold no finished episode; a live writer's are its own.
        for stale in [*self.root.glob(".*.tmp"), *self.root.glob("*/.*.tmp")]:
            if _is_stale(stale):
                stale.unlink(missing_ok=True)
        meta = {"format": FORMAT, **meta}
        with self._locked():
            if (self.root / "dataset.json").exists():
                old = load_meta(self.root)
                for key in ("env_id", "action_space", "frame_shape"):
                    if key in meta and key in old and old[key] != meta[key]:
                        raise DatasetError(f"{self.root} holds a dataset with {key}={old[key]!r}, not {meta[key]!r}; "
                                           "expected an empty directory or one from the same env")
            else:
                atomic_write_bytes(self.root / "dataset.json", json.dumps(meta, indent=2).encode())
        self.count = sum(1 for _ in self.root.glob("*/ep_*.h5"))  # the first episode number to try

    @contextmanager
    def _locked(self):
        """Holds the directory's lock: one writer at a time reads and rewrites dataset.json."""
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    def claim_seeds(self, seed: int, count: int, record: dict) -> int:
        """Record a collect that seeds `count` sub-envs from `seed` on, and return the seed
        it must use: `seed`, or the first one after it whose seeds no earlier collect into
        this directory used (same env and seed, same episodes: a split would leak)."""
        with self._locked():
            meta = load_meta(self.root)
            collects = meta.get("collects", [])
            used = {s for c in collects for s in range(c["seed"], c["seed"] + c["num_envs"])}
            first = seed
            while used.intersection(range(first, first + count)):
                first += 1
            meta["collects"] = [*collects, {**record, "seed": first, "num_envs": count}]
            atomic_write_bytes(self.root / "dataset.json", json.dumps(meta, indent=2).encode())
        return first

    def write(self, episode: Episode) -> Path:
        import h5py

        episode.validate(f"episode for {self.root}")
        tmp = _tmp_path(self.root / ".episode")
        try:
            with h5py.File(tmp, "w") as f:
                _put(f, "frames", episode.frames, chunk_frames=32)
                if episode.actions is not None:
                    _put(f, "actions", np.asarray(episode.actions))
                _put(f, "rewards", np.asarray(episode.rewards, np.float32))
                _put(f, "terminated", np.asarray(episode.terminated, bool))
                _put(f, "truncated", np.asarray(episode.truncated, bool))
                for key, value in episode.gt.items():
                    _put(f, f"gt/{key}", np.asarray(value), chunk_frames=32)
                for key, value in episode.attrs.items():
                    f.attrs[key] = value
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            index = self.count
            while True:  # the first free number is ours: a link, unlike a rename, never replaces a file
                path = self.root / split_for(index) / f"ep_{index:06d}.h5"
                try:
                    os.link(tmp, path)
                    break
                except FileExistsError:  # another writer's, or ours from before
                    index += 1
        finally:
            tmp.unlink(missing_ok=True)
        self.count = index + 1
        return path


def _put(f, name: str, array: np.ndarray, chunk_frames: int = 1024):
    """Store an array chunked along time (a window reads few chunks), gzip-compressed."""
    if array.size == 0:
        f.create_dataset(name, data=array)
        return
    chunks = (min(chunk_frames, len(array)), *array.shape[1:])
    f.create_dataset(name, data=array, chunks=chunks, compression="gzip", compression_opts=4)


def load_meta(root: str | os.PathLike) -> dict:
    path = Path(root) / "dataset.json"
    if not path.exists():
        raise DatasetError(f"{root} is not a worldsim dataset: no dataset.json (make one with `worldsim collect` or `worldsim import-video`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is corrupt: {e}; expected the JSON written by worldsim") from e


def episode_paths(root: str | os.PathLike, split: str | None = None) -> list[Path]:
    load_meta(root)
    if split is not None and split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {SPLITS}")
    splits = SPLITS if split is None else (split,)
    # In the order they were written (the file name is the episode's index).
    return sorted((p for s in splits for p in (Path(root) / s).glob("ep_*.h5")), key=lambda p: p.name)


def open_episode(path: str | os.PathLike):
    """Open an episode file for reading, with a clear error if it is not one."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not a readable episode file ({e}); expected an HDF5 episode written by worldsim. "
                           "Delete it or collect it again; other episodes are unaffected.") from e
    missing = [k for k in ("rewards", "terminated", "truncated") if k not in f]
    if "frames" not in f and "latents" not in f:
        missing.append("frames")
    if missing:
        f.close()
        raise DatasetError(f"{path}: missing {missing}; expected an HDF5 episode written by worldsim")
    return f


def read_episode(path: str | os.PathLike) -> Episode:
    with open_episode(path) as f:
        try:
            episode = Episode(
                frames=f["frames"][()], actions=f["actions"][()] if "actions" in f else None,
                rewards=f["rewards"][()], terminated=f["terminated"][()], truncated=f["truncated"][()],
                gt={k: v[()] for k, v in f["gt"].items()} if "gt" in f else {}, attrs=dict(f.attrs))
        except (OSError, KeyError) as e:
            raise DatasetError(f"{path}: corrupt episode data ({e}); expected an HDF5 episode written by worldsim") from e
    episode.validate(str(path))
    return episode


def read_array(f, name: str, index=()) -> np.ndarray:
    """f[name][index] of an open episode file; a damaged chunk raises a DatasetError naming
    the file and the array (h5py's OSError names neither)."""
    try:
        return f[name][index]
    except OSError as e:
        raise DatasetError(f"{f.filename}: {name} is damaged ({e}); delete the file or collect it again, other "
                           "episodes are unaffected (`worldsim dataset DIR` lists every damaged one)") from e


def verify_episode(path: str | os.PathLike) -> tuple[int, int]:
    """Read every array of an episode file, as a damaged chunk shows only when read;
    returns its (frames, steps). Raises DatasetError naming the file and the array."""
    import h5py

    with open_episode(path) as f:
        names = []
        f.visit(names.append)
        for name in names:
            if isinstance(f[name], h5py.Dataset):
                read_array(f, name)
        frames = f["frames"] if "frames" in f else f["latents"]
        if len(frames) != len(f["rewards"]) + 1:
            raise DatasetError(f"{path}: {len(frames)} frames for {len(f['rewards'])} steps; expected T+1 frames for T steps")
        return len(frames), len(f["rewards"])


def summarize(root: str | os.PathLike) -> dict:
    """`worldsim dataset DIR`: the metadata and each split's size, every episode read in
    full; damaged episodes raise one DatasetError that names them all."""
    summary, damaged = {"meta": load_meta(root), "splits": {}}, []
    for split in SPLITS:
        paths = episode_paths(root, split)
        frames = steps = 0
        for p in paths:
            try:
                n_frames, n_steps = verify_episode(p)
            except DatasetError as e:
                damaged.append(str(e))
                continue
            frames, steps = frames + n_frames, steps + n_steps
        summary["splits"][split] = {"episodes": len(paths), "frames": frames, "steps": steps,
                                    "bytes": sum(p.stat().st_size for p in paths)}
    if damaged:
        raise DatasetError(f"{root}: {len(damaged)} damaged episode file(s):\n  " + "\n  ".join(damaged))
    return summary


class WindowDataset:
    """Fixed-length windows of `context` frames followed by `horizon` target frames.

    Item i is a dict of numpy arrays (a torch DataLoader batches it as it is)::

        context   (context, H, W, 3) uint8
        target    (horizon, H, W, 3) uint8
        actions   (context + horizon - 1, ...)  actions[j] led from window frame j to j+1
        rewards, terminated   (context + horizon - 1,)
        gt/<key>  (context + horizon, ...)      for each key in `gt_keys`

    so the action that produced target frame k is actions[context - 1 + k].
    With field="latents" it reads a dataset made by `worldsim encode` the same way.
    """

    def __init__(self, root, split: str = "train", context: int = 4, horizon: int = 1, stride: int = 1,
                 gt_keys: tuple[str, ...] = (), field: str = "frames"):
        if context < 1 or horizon < 0 or stride < 1:
            raise ValueError(f"expected context >= 1, horizon >= 0, stride >= 1; got {context}, {horizon}, {stride}")
        self.root, self.context, self.horizon, self.gt_keys = Path(root), context, horizon, tuple(gt_keys)
        self.field = field
        self.meta = load_meta(root)
        self.paths = episode_paths(root, split)
        if not self.paths:
            raise DatasetError(f"{root} has no episodes in split {split!r}; collect more episodes "
                               "(of every ten written, one goes to val and one to test)")
        length = context + horizon
        self.index = []  # (episode number, start frame)
        self.has_actions = True
        for e, path in enumerate(self.paths):
            with open_episode(path) as f:
                if field not in f:
                    raise DatasetError(f"{path}: no {field!r}; expected a dataset of {field} "
                                       "(latents come from `worldsim encode`)")
                n_frames = len(f[field])
                self.has_actions &= "actions" in f
                for key in self.gt_keys:
                    if f"gt/{key}" not in f:
                        raise DatasetError(f"{path}: no ground truth {key!r}; it has {sorted(f['gt']) if 'gt' in f else []}")
            self.index += [(e, t) for t in range(0, n_frames - length + 1, stride)]
        self._files = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.index)

    def _file(self, e: int):
        if self._pid != os.getpid():  # h5py handles must not cross a fork (DataLoader workers)
            self._files, self._pid = {}, os.getpid()
        if e not in self._files:
            self._files[e] = open_episode(self.paths[e])
        return self._files[e]

    def __getitem__(self, i: int) -> dict:
        e, t = self.index[i]
        f = self._file(e)
        end = t + self.context + self.horizon
        try:
            frames = f[self.field][t:end]
            item = {"context": frames[:self.context], "target": frames[self.context:],
                    "rewards": f["rewards"][t:end - 1], "terminated": f["terminated"][t:end - 1]}
            if self.has_actions:
                item["actions"] = f["actions"][t:end - 1]
            for key in self.gt_keys:
                item[f"gt/{key}"] = f["gt"][key][t:end]
        except OSError as err:  # h5py's own message names no file
            raise DatasetError(f"{self.paths[e]}: cannot read frames {t}-{end - 1} ({err}); the file is damaged "
                               "(check the dataset with `worldsim dataset DIR`): delete it or collect it again") from err
        return item

    def close(self):
        for f in self._files.values():
            f.close()
        self._files = {}
