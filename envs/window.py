"""Frames in a desktop window: render_mode="human" and `worldsim play`.

OpenCV's windows (opencv-python, Qt on X11) need an X display: without one Qt aborts the
whole process, so `show` checks for one first and warns instead.
"""

from __future__ import annotations

import os

import numpy as np


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY"))


def imshow(title: str, bgr: np.ndarray) -> None:
    """cv2.imshow with a clear error where this OpenCV build has no windows."""
    import cv2

    try:
        cv2.imshow(title, bgr)
    except cv2.error as e:
        raise RuntimeError("cannot open a window: this OpenCV has no GUI support (is opencv-python-headless "
                           "installed?); expected opencv-python: pip uninstall -y opencv-python-headless && "
                           "pip install --force-reinstall opencv-python") from e


def show(title: str, frame: np.ndarray, scale: int = 4) -> bool:
    """Show an RGB frame, enlarged; False (with a warning) where there is no display."""
    if not has_display():
        import gymnasium as gym

        gym.logger.warn(f"{title}: render_mode='human' needs a display (DISPLAY is not set); frames are not shown")
        return False
    import cv2

    imshow(title, cv2.resize(frame[..., ::-1], None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST))
    cv2.waitKey(1)
    return True
