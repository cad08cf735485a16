"""Import real Minecraft play: OpenAI's VPT contractor recordings and the MineRL v0.4 dataset.

    worldsim import-minecraft SRC --format vpt|minerl --out DIR [--size 64]

Each recording becomes one episode of the project's datasets (worldsim/dataset.py),
written atomically, frames centre-cropped to a square and resized to `size`, at the
recordings' own 20 frames per second. Actions keep Minecraft's structure: a Dict action
space (``dataset.json`` "action_space", as worldsim/spaces.py describes it) whose keys
are buttons (``Discrete(2)``), the camera (``Box(-180, 180, (2,))``: change of pitch and
yaw in degrees, positive = look down / turn right) and, in MineRL's Obtain and Navigate
tasks, string choices (``Discrete(n)``, index 0 = "none"). This is the action form the
dynamics model's ActionEncoder embeds (one embedding per key, summed). On disk the
``actions`` array is a structured numpy array with one field per key (HDF5 stores it
as a compound type); ``actions_as_dict`` turns it into the dict of arrays the model
takes. As everywhere, actions[t] was taken on frames[t] and led to frames[t+1].

## VPT (``--format vpt``)

OpenAI Video-Pre-Training (github.com/openai/Video-Pre-Training, README "Data format",
data_loader.py, run_inverse_dynamics_model.py): ``<name>.mp4`` (640x360, 20 Hz) beside
``<name>.jsonl``, one JSON object per video frame with ``keyboard`` {``keys``,
``newKeys``, ``chars``}, ``mouse`` {``x``, ``y``, ``dx``, ``dy``, ``buttons``,
``newButtons``, ...}, ``hotbar``, ``isGuiOpen`` and, from recorder 7 on, ``xpos``,
``ypos``, ``zpos``, ``pitch``, ``yaw``. Line i is the action taken on frame i. Mapped
as VPT's loader maps it:

- keys through ``VPT_KEYS`` (w forward, s back, a left, d right, space jump, left shift
  sneak, left control sprint, e inventory, q drop, f swapHands, escape ESC, 1-9
  hotbar.1-9); mouse buttons 0, 1, 2 are attack, use and pickItem;
- camera = (dy, dx) * 360 / 2400 degrees (VPT's ``CAMERA_SCALER``), kept as floats and
  clipped to [-180, 180] (VPT's script truncates them to integers);
- an attack held down from the first frame is dropped until it is pressed anew (a
  recorder glitch VPT's loader removes), and a change of ``hotbar`` (scroll wheel) presses
  that hotbar key;
- every frame is kept (VPT's behavioural cloning skips no-op frames; a world model needs
  them), and the camera is not zeroed while a GUI is open, as in VPT.

Dots are not allowed in the model's module names, so "hotbar.1" is stored as "hotbar_1".
Ground truth where every line has it: ``location`` (xpos, ypos, zpos, pitch, yaw),
``pose`` (x, z, heading; as envs/minerl_env.py), ``hotbar``, ``gui_open``. Rewards are 0;
the episode ends truncated (a segment just stops).

## MineRL v0.4 (``--format minerl``)

The minerl 0.4 dataset (``minerl.data.download``; minerl/data/data_pipeline.py,
minerl/data/pipeline/publish.py at tag v0.4.4): ``MINERL_DATA_ROOT/<MineRLTask-v0>/<stream>/``
with ``recording.mp4``, ``metadata.json`` (``true_video_frame_count``, ``success``, ...)
and ``rendered.npz``: ``reward`` (N,), ``action$<key>`` (N, ...) and
``observation$<path>`` (N+1, ...) arrays, nested keys joined by "$"
(``observation$inventory$log``, ``observation$compass$angle``,
``observation$equipped_items$mainhand$type``). As minerl's loader does, the video's
first ``true_video_frame_count - (N+1)`` frames are skipped and the last frame is
replaced by the one before it. The action space is the task's (envs.minerl_env, the
same Dict as ``worldsim/MineRL-<Task>-v0``), known from the action keys; the ground truth
is the env's (inventory, compass_angle, mainhand). The episode ends terminated when
``metadata.json`` says ``success``, else truncated. SRC may be the data root, one task's
directory or one stream; one import takes one task family (Treechop, Navigate*, Obtain*).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import gymnasium as gym
import numpy as np

from worldsim.dataset import DatasetError, DatasetWriter, Episode
from worldsim.spaces import space_to_dict
from worldsim.video_import import read_frames

FORMATS = ("vpt", "minerl")

VPT_KEYS = {
    "key.keyboard.escape": "ESC", "key.keyboard.s": "back", "key.keyboard.q": "drop", "key.keyboard.w": "forward",
    **{f"key.keyboard.{i}": f"hotbar_{i}" for i in range(1, 10)},
    "key.keyboard.e": "inventory", "key.keyboard.space": "jump", "key.keyboard.a": "left", "key.keyboard.d": "right",
    "key.keyboard.left.shift": "sneak", "key.keyboard.left.control": "sprint", "key.keyboard.f": "swapHands",
}
VPT_MOUSE = {0: "attack", 1: "use", 2: "pickItem"}
CAMERA_SCALER = 360.0 / 2400.0
LOCATION_KEYS = ("xpos", "ypos", "zpos", "pitch", "yaw")


# ------------------------------------------------------------------ Dict actions on disk
def vpt_action_space() -> gym.spaces.Dict:
    """The VPT / minerl 1.0 human action space (keys sorted, dots as underscores)."""
    spaces = {k: gym.spaces.Discrete(2) for k in (*VPT_KEYS.values(), *VPT_MOUSE.values())}
    spaces["camera"] = gym.spaces.Box(-180.0, 180.0, (2,), np.float32)
    return gym.spaces.Dict({k: spaces[k] for k in sorted(spaces)})


def action_dtype(space: gym.spaces.Dict) -> np.dtype:
    """One field per key of a Dict of Discrete and Box spaces: int64, or float32 of the box's shape."""
    fields = []
    for key, sub in space.spaces.items():
        if isinstance(sub, gym.spaces.Discrete):
            fields.append((key, np.int64))
        elif isinstance(sub, gym.spaces.Box):
            fields.append((key, np.float32, sub.shape))
        else:
            raise TypeError(f"action key {key!r}: {sub} is not stored; expected Discrete or Box")
    return np.dtype(fields)


def actions_as_dict(actions: np.ndarray) -> dict[str, np.ndarray]:
    """A structured actions array (as stored) -> {key: array}, the form ActionEncoder takes
    for a Dict space (``torch.from_numpy`` each value)."""
    if actions.dtype.names is None:
        raise ValueError(f"expected a structured array of Dict actions, got dtype {actions.dtype}")
    return {k: np.ascontiguousarray(actions[k]) for k in actions.dtype.names}


def _structured(columns: dict[str, np.ndarray], space: gym.spaces.Dict, length: int) -> np.ndarray:
    out = np.zeros(length, action_dtype(space))
    for key in space.spaces:
        out[key] = columns[key]
    return out


# ------------------------------------------------------------------ VPT
def read_jsonl(path: Path) -> list[dict]:
    lines = []
    for n, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{n}: not JSON ({e}); expected one VPT action object per line") from e
        if not (isinstance(line, dict) and all(isinstance(line.get(k), dict) for k in ("keyboard", "mouse"))):
            got = sorted(line) if isinstance(line, dict) else line
            raise DatasetError(f"{path}:{n}: expected a VPT action object with 'keyboard' {{'keys': [...]}} and "
                               f"'mouse' {{'dx', 'dy', 'buttons'}}, got keys {got!r}")
        lines.append(line)
    return lines


def vpt_actions(lines: list[dict]) -> dict[str, np.ndarray]:
    """Per-line actions of a VPT recording as {key: (len(lines), ...) array}."""
    space = vpt_action_space()
    cols = {k: np.zeros(len(lines), np.int64) for k in space.spaces if k != "camera"}
    cols["camera"] = np.zeros((len(lines), 2), np.float32)
    attack_stuck, last_hotbar = False, 0
    for i, line in enumerate(lines):
        mouse = line["mouse"]
        buttons = list(mouse.get("buttons", []))
        new_buttons = list(mouse.get("newButtons", []))
        if i == 0:
            attack_stuck = new_buttons == [0]
        elif attack_stuck and 0 in new_buttons:
            attack_stuck = False
        if attack_stuck:
            buttons = [b for b in buttons if b != 0]
        for key in line["keyboard"].get("keys", []):
            if key in VPT_KEYS:
                cols[VPT_KEYS[key]][i] = 1
        for button in buttons:
            if button in VPT_MOUSE:
                cols[VPT_MOUSE[button]][i] = 1
        cols["camera"][i] = np.clip([mouse.get("dy", 0.0) * CAMERA_SCALER, mouse.get("dx", 0.0) * CAMERA_SCALER],
                                    -180.0, 180.0)
        hotbar = int(line.get("hotbar", last_hotbar))
        if hotbar != last_hotbar:
            cols[f"hotbar_{hotbar + 1}"][i] = 1
        last_hotbar = hotbar
    return cols


def vpt_gt(lines: list[dict]) -> dict[str, np.ndarray]:
    from envs.minerl_env import observation_gt

    gt = {}
    if all(all(k in line for k in LOCATION_KEYS) for line in lines):
        per_frame = [observation_gt({"location_stats": line}, {}) for line in lines]
        gt = {k: np.stack([g[k] for g in per_frame]) for k in ("location", "pose")}
    if all("hotbar" in line for line in lines):
        gt["hotbar"] = np.array([line["hotbar"] for line in lines], np.int32)
    if all("isGuiOpen" in line for line in lines):
        gt["gui_open"] = np.array([bool(line["isGuiOpen"]) for line in lines])
    return gt


def read_vpt(video: Path, size: int) -> Episode:
    jsonl = video.with_suffix(".jsonl")
    if not jsonl.exists():
        raise DatasetError(f"{video}: no {jsonl.name} beside it; expected VPT's pair <name>.mp4 + <name>.jsonl")
    lines = read_jsonl(jsonl)
    frames, fps = read_frames(video, size)
    counts = {"video_frames": len(frames), "jsonl_lines": len(lines)}
    n = min(len(frames), len(lines))  # VPT's loader pairs line i with frame i while both last
    if n < 2:
        raise DatasetError(f"{video}: {len(frames)} frames and {len(lines)} action lines; expected at least 2 of each")
    lines, frames = lines[:n], frames[:n]
    space = vpt_action_space()
    actions = _structured({k: v[:n - 1] for k, v in vpt_actions(lines).items()}, space, n - 1)
    truncated = np.zeros(n - 1, bool)
    truncated[-1] = True
    attrs = {"source": video.name, "format": "vpt", "fps": fps, **counts}
    return Episode(frames, actions, np.zeros(n - 1, np.float32), np.zeros(n - 1, bool), truncated, vpt_gt(lines), attrs)


# ------------------------------------------------------------------ MineRL v0.4
def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree = {}
    for key, value in flat.items():
        *path, leaf = key.split("$")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _slice(tree, i):
    return {k: _slice(v, i) for k, v in tree.items()} if isinstance(tree, dict) else tree[i]


def minerl_family(action_keys: set[str], where: str) -> str:
    from envs.minerl_env import action_space

    for task in ("Treechop", "Navigate", "ObtainDiamond"):
        if set(action_space(task).spaces) == action_keys:
            return task
    raise DatasetError(f"{where}: action keys {sorted(action_keys)} match no MineRL v0.4 task; expected those of "
                       f"Treechop ({sorted(action_space('Treechop').spaces)}), Navigate or ObtainDiamond")


def task_name(stream: Path) -> str | None:
    """The MineRL task a stream's path names (``.../MineRLTreechop-v0/...``), if any."""
    from envs.minerl_env import TASKS

    for part in reversed(stream.parts):
        m = re.fullmatch(r"MineRL(\w+)-v0", part)
        if m and m.group(1) in TASKS:
            return m.group(1)
    return None


def _minerl_actions(acts: dict[str, np.ndarray], task: str, steps: int, where: Path) -> np.ndarray:
    """rendered.npz's action arrays -> the structured Dict actions (Enum strings as indices, "none" = 0)."""
    from envs.minerl_env import ENUM_ACTIONS, action_space, task_family

    columns = {}
    for key, values in ENUM_ACTIONS[task_family(task)].items():
        index = {v: i for i, v in enumerate(values)}
        bad = sorted({str(v) for v in acts[key]} - set(index))
        if bad:
            raise DatasetError(f"{where}: action${key} has {bad}; expected one of {values}")
        columns[key] = np.array([index[str(v)] for v in acts[key]], np.int64)
    space = action_space(task)
    for key in space.spaces:
        if key not in columns:
            columns[key] = np.asarray(acts[key], np.float32 if key == "camera" else np.int64)
    return _structured(columns, space, steps)


def read_minerl(stream: Path, size: int) -> tuple[Episode, str]:
    """One stream directory -> (episode, task family's base task)."""
    from envs.minerl_env import MAINHAND_ITEMS, observation_gt

    paths = {name: stream / name for name in ("recording.mp4", "rendered.npz", "metadata.json")}
    missing = [name for name, p in paths.items() if not p.exists() and name != "metadata.json"]
    if missing:
        raise DatasetError(f"{stream}: missing {missing}; expected a MineRL v0.4 stream directory with "
                           "recording.mp4, rendered.npz and metadata.json")
    meta = json.loads(paths["metadata.json"].read_text()) if paths["metadata.json"].exists() else {}
    try:
        with np.load(paths["rendered.npz"], allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except ValueError as e:
        raise DatasetError(f"{paths['rendered.npz']}: {e}; expected minerl's rendered.npz of plain arrays") from e
    if "reward" not in data:
        raise DatasetError(f"{paths['rendered.npz']}: no 'reward' array; it has {sorted(data)}")
    steps = len(data["reward"])
    if steps < 1:
        raise DatasetError(f"{paths['rendered.npz']}: no steps (empty 'reward'); expected a recorded episode")
    acts = {k.split("$", 1)[1]: v for k, v in data.items() if k.startswith("action$")}
    obs = {k.split("$", 1)[1]: v for k, v in data.items() if k.startswith("observation$")}
    task = minerl_family(set(acts), str(paths["rendered.npz"]))
    for name, arrays, want in (("action", acts, steps), ("observation", obs, steps + 1)):
        wrong = {k: len(v) for k, v in arrays.items() if len(v) != want}
        if wrong:
            per = "one per step" if name == "action" else "one per state, steps + 1"
            raise DatasetError(f"{paths['rendered.npz']}: {name} arrays of lengths {wrong}; expected {want} "
                               f"({per}; {steps} rewards)")
    actions = _minerl_actions(acts, task, steps, paths["rendered.npz"])
    frames, fps = read_frames(paths["recording.mp4"], size)
    states = steps + 1
    skip = int(meta.get("true_video_frame_count", len(frames))) - states
    if skip < 0 or skip + states > len(frames):
        raise DatasetError(f"{paths['recording.mp4']}: {len(frames)} frames decoded, metadata says "
                           f"{meta.get('true_video_frame_count')}; expected at least {states} (one per state of "
                           "rendered.npz) after the leading frames minerl skips")
    frames = frames[skip:skip + states].copy()
    frames[-1] = frames[-2]  # as minerl's DataPipeline: the video's last frame is not used
    tree = _unflatten(obs)
    names = {"inventory": tuple(sorted(tree.get("inventory", {}))), "mainhand": MAINHAND_ITEMS}
    per_frame = [observation_gt(_slice(tree, i), names) for i in range(states)]
    gt = {k: np.stack([g[k] for g in per_frame]) for k in per_frame[0]}
    ended = np.zeros(steps, bool)
    terminated, truncated = ended.copy(), ended.copy()
    (terminated if meta.get("success") else truncated)[-1] = True
    attrs = {"source": str(stream.name), "format": "minerl-v0.4", "fps": fps, "skipped_video_frames": skip,
             "inventory_items": json.dumps(names["inventory"]), **{f"minerl_{k}": v for k, v in meta.items()
                                                                   if isinstance(v, (bool, int, float, str))}}
    episode = Episode(frames, actions, np.asarray(data["reward"], np.float32),
                      terminated, truncated, gt, attrs)
    return episode, task


def minerl_streams(src: Path) -> list[Path]:
    return sorted(p.parent for p in src.rglob("rendered.npz")) if src.is_dir() else []


# ------------------------------------------------------------------ both
def import_minecraft(src: str, out: str, format: str = "vpt", size: int = 64, progress: bool = True) -> dict:
    """Import every recording under `src` into the dataset `out`; recordings that fail are
    reported in the summary, the rest are kept."""
    from tqdm import tqdm

    from envs.minerl_env import action_space

    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {FORMATS}")
    root = Path(src)
    if not root.exists():
        raise DatasetError(f"{src}: no such file or directory")
    if format == "vpt":
        items = sorted(root.rglob("*.mp4")) if root.is_dir() else [root]
        layout = "<name>.mp4 beside <name>.jsonl (OpenAI VPT contractor data)"
    else:
        items = minerl_streams(root)
        layout = "stream directories holding recording.mp4, rendered.npz, metadata.json (MineRL v0.4 data)"
    if not items:
        raise DatasetError(f"{src}: no recordings found; expected {layout}")
    episodes, failed, writer, task, frames_total = 0, [], None, None, 0
    for item in tqdm(items, desc=f"import {format}", unit="recording", disable=not progress):
        try:
            if format == "vpt":
                episode, meta = read_vpt(item, size), {"env_id": None, "source": "vpt"}
            else:
                episode, family = read_minerl(item, size)
                named = task_name(item)
                if task is not None and family != task:
                    raise DatasetError(f"{item}: a {family} stream among {task} streams; expected one task family "
                                       "per dataset (import SRC/MineRL<Task>-v0 into its own --out)")
                task = family
                meta = {"env_id": f"worldsim/MineRL-{named or family}-v0", "source": "minerl-v0.4"}
        except DatasetError as e:
            failed.append(str(e))
            continue
        if writer is None:
            space = vpt_action_space() if format == "vpt" else action_space(task)
            writer = DatasetWriter(out, {**meta, "action_space": space_to_dict(space),
                                         "frame_shape": [size, size, 3], "fps": episode.attrs["fps"]})
        writer.write(episode)
        episodes += 1
        frames_total += len(episode.frames)
    if not episodes:
        raise DatasetError(f"no recording under {src} could be imported:\n  " + "\n  ".join(failed))
    return {"format": format, "recordings": len(items), "episodes_written": episodes, "frames": frames_total,
            "failed": failed, "out": out}
