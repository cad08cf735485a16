"""Wrappers shared by every gameplay source: frame-skip, resize, discrete action tables.

Ground truth travels in ``info["gt"]``, a flat dict of fixed-shape arrays. Maps that
are aligned with the frame (depth, labels) are resized together with it, so a pixel
of ground truth always sits under the pixel it describes.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import gymnasium as gym
import numpy as np


def check_action(space: gym.Space, action, owner: str):
    """Raise a ValueError that names the expected space when `action` is outside it."""
    if not space.contains(action):
        raise ValueError(f"{owner}: action {action!r} is outside the action space {space}")


def check_can_step(owner: str, started: bool, ended):
    """Raise a RuntimeError when an env is stepped before reset() or after its episode
    ended; `ended` may be the reason (a string), shown in the message."""
    if not started:
        raise RuntimeError(f"{owner}.step() called before reset(); call env.reset() first")
    if ended:
        reason = f" ({ended})" if isinstance(ended, str) else ""
        raise RuntimeError(f"{owner}.step() called after the episode ended{reason}; call env.reset() first")


class FrameSkip(gym.Wrapper):
    """Repeat each action `skip` times, summing rewards; stops early at an episode end."""

    def __init__(self, env: gym.Env, skip: int):
        if skip < 1:
            raise ValueError(f"skip must be >= 1, got {skip}")
        super().__init__(env)
        self.skip = skip

    def step(self, action):
        total = 0.0
        for _ in range(self.skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


class ResizeFrame(gym.Wrapper):
    """Resize RGB frames to (height, width) with area filtering; frame-aligned ground
    truth maps in info["gt"] follow with nearest-neighbour sampling."""

    def __init__(self, env: gym.Env, size: int | Sequence[int]):
        super().__init__(env)
        self.size = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
        src = env.observation_space
        if not (isinstance(src, gym.spaces.Box) and src.dtype == np.uint8 and len(src.shape) == 3 and src.shape[2] == 3):
            raise ValueError(f"ResizeFrame expects uint8 RGB frames (H, W, 3), got observation space {src}")
        self.source_hw = src.shape[:2]
        self.observation_space = gym.spaces.Box(0, 255, (*self.size, 3), np.uint8)

    def _frame(self, frame):
        if frame.shape[:2] == self.size:
            return frame
        return cv2.resize(frame, self.size[::-1], interpolation=cv2.INTER_AREA)

    def _info(self, info):
        gt = info.get("gt")
        if gt:
            info = dict(info, gt={k: self._map(v) for k, v in gt.items()})
        return info

    def _map(self, value):
        if isinstance(value, np.ndarray) and value.ndim >= 2 and value.shape[:2] == self.source_hw != self.size:
            return cv2.resize(value, self.size[::-1], interpolation=cv2.INTER_NEAREST)
        return value

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._frame(obs), self._info(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._frame(obs), reward, terminated, truncated, self._info(info)

    def render(self):
        frame = self.env.render()
        return self._frame(frame) if isinstance(frame, np.ndarray) else frame


class DiscreteActions(gym.ActionWrapper):
    """Expose a table of underlying actions as Discrete(len(table)), with names."""

    def __init__(self, env: gym.Env, table: Sequence, meanings: Sequence[str]):
        super().__init__(env)
        if len(table) != len(meanings):
            raise ValueError(f"{len(table)} actions but {len(meanings)} names")
        self.table = [np.asarray(a) for a in table]
        for a in self.table:
            check_action(env.action_space, a.astype(env.action_space.dtype), "DiscreteActions table")
        self.action_meanings = tuple(meanings)
        self.action_space = gym.spaces.Discrete(len(table))

    def action(self, action):
        check_action(self.action_space, action, type(self.env.unwrapped).__name__)
        return self.table[int(action)]
