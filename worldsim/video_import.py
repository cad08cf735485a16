"""Import real footage: a directory of video files becomes an action-free dataset.

Each video is centre-cropped to a square, resized to `size`, optionally subsampled to
`fps`, and cut into episodes of at most `clip_frames` frames. A caption sidecar beside
a video (``clip.txt``, or ``clip.json`` with a "caption" key) is kept as the episode's
caption, for recaptioning and text conditioning later.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from worldsim.dataset import DatasetError, DatasetWriter, Episode

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")


def read_caption(video: Path) -> str | None:
    txt, js = video.with_suffix(".txt"), video.with_suffix(".json")
    if txt.exists():
        return txt.read_text().strip()
    if js.exists():
        return str(json.loads(js.read_text()).get("caption", "")).strip() or None
    return None


def read_frames(video: Path, size: int, fps: float | None = None) -> tuple[np.ndarray, float]:
    """Decode a video to (T, size, size, 3) uint8 RGB; raises DatasetError if it cannot."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise DatasetError(f"{video}: cannot open; expected a video file OpenCV/FFmpeg can decode ({', '.join(VIDEO_SUFFIXES)})")
    src_fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    every = max(1.0, src_fps / fps) if fps else 1.0
    frames, n, next_keep = [], 0, 0.0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if n >= next_keep:
            h, w = bgr.shape[:2]
            s = min(h, w)
            crop = bgr[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
            frames.append(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)[..., ::-1])
            next_keep += every
        n += 1
    cap.release()
    if len(frames) < 2:
        raise DatasetError(f"{video}: decoded {len(frames)} frame(s); expected a video of at least 2 frames "
                           f"that OpenCV/FFmpeg can decode")
    return np.ascontiguousarray(np.stack(frames)), src_fps / every


def import_videos(src: str, out: str, size: int = 64, fps: float | None = None, clip_frames: int = 256,
                  progress: bool = True) -> dict:
    """Import every video under `src`; videos that fail are reported, the rest are kept."""
    from tqdm import tqdm

    root = Path(src)
    if root.is_file() and root.suffix.lower() not in VIDEO_SUFFIXES:  # FFmpeg would "decode" a text file as video
        raise DatasetError(f"{src}: not a video file (suffix {root.suffix or 'none'!r}); expected a video "
                           f"({', '.join(VIDEO_SUFFIXES)}) or a directory of them")
    videos = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES) if root.is_dir() else [root]
    if not videos or not videos[0].exists():
        raise DatasetError(f"{src}: no video files found; expected a directory of {', '.join(VIDEO_SUFFIXES)} files")
    writer = DatasetWriter(out, {"env_id": None, "source": "video", "action_space": None,
                                 "frame_shape": [size, size, 3]})
    failed, episodes, frames_total = [], 0, 0
    for video in tqdm(videos, desc="import videos", unit="video", disable=not progress):
        try:
            frames, kept_fps = read_frames(video, size, fps)
        except DatasetError as e:
            failed.append(str(e))
            continue
        caption = read_caption(video)
        for start in range(0, len(frames) - 1, clip_frames):
            clip = frames[start:start + clip_frames + 1]
            if len(clip) < 2:
                break
            t = len(clip) - 1
            attrs = {"source": str(video.name), "start_frame": start, "fps": kept_fps}
            if caption:
                attrs["caption"] = caption
            truncated = np.zeros(t, bool)
            truncated[-1] = True  # footage just stops: a cut, not an ending
            writer.write(Episode(clip, None, np.zeros(t, np.float32), np.zeros(t, bool), truncated, {}, attrs))
            episodes += 1
            frames_total += len(clip)
    summary = {"videos": len(videos), "episodes_written": episodes, "frames": frames_total, "failed": failed, "out": out}
    if failed and not episodes:
        raise DatasetError("no video could be imported:\n  " + "\n  ".join(failed))
    return summary
