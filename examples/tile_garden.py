"""A minimal third-party Gymnasium env, to bring to worldsim (README, "Your own env").

A walker on a walled 32x32 garden of coloured tiles sees the 8x8 tiles ahead of it,
rotated so that it always looks up the frame. Nothing here imports worldsim: this is the kind of env
a researcher already has. What worldsim can use, and finds by itself:

- ``action_meanings``: names with FORWARD, TURN_LEFT, TURN_RIGHT (and NOOP) let the
  ``explore`` policy walk and look around instead of acting at random;
- ``turn_steps``: turns in a full circle (4 here);
- ``info["gt"]["pose"]``: (x, y, yaw) after each step, facing (cos yaw, sin yaw); with
  it, latent memory keys frames by where they were seen from (worldsim fits what each
  action does to the pose from the data); ``fov_deg`` and ``view_reach`` say how much of
  the world a frame shows.

    worldsim collect --env examples.tile_garden:TileGarden-v0 --steps 20000 --out data/garden
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

ACTIONS = ("NOOP", "FORWARD", "TURN_LEFT", "TURN_RIGHT")
MOVES = [(0, -1), (1, 0), (0, 1), (-1, 0)]  # heading 0, 1, 2, 3 (one right turn each): up, right, down, left


class TileGarden(gym.Env):
    """Walk a walled garden of coloured tiles; +1 for each gold tile stepped on.

    Observation: (64, 64, 3) uint8, the 8x8 tiles ahead (8 pixels each). Actions:
    Discrete(4), ``ACTIONS``. The episode is truncated after ``max_steps``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}
    action_meanings = ACTIONS
    turn_steps = 4
    fov_deg, view_reach = 90.0, 8.0

    def __init__(self, size: int = 32, max_steps: int = 200, render_mode: str | None = None):
        self.size, self.max_steps, self.render_mode = size, max_steps, render_mode
        self.observation_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(len(ACTIONS))
        palette = np.array([[70, 140, 60], [90, 160, 70], [150, 120, 80], [60, 90, 170], [230, 200, 40]], np.uint8)
        tiles = np.random.default_rng(0).choice(len(palette), (size, size), p=[0.4, 0.3, 0.15, 0.1, 0.05])
        self.garden = palette[tiles]  # one fixed garden, like a game level
        self.gold = tiles == len(palette) - 1
        self.garden = np.pad(self.garden, ((8, 8), (8, 8), (0, 0)))  # black beyond the wall

    def _view(self) -> np.ndarray:
        g = np.rot90(self.garden, k=self.heading)  # turn the garden so that the walker looks up it
        y, x = self._rotated_position()
        view = g[y - 7:y + 1, x - 4:x + 4]  # the 8 rows ahead, the walker on the bottom row
        frame = np.repeat(np.repeat(view, 8, 0), 8, 1)
        frame[-6:-2, 30:34] = 255  # the walker's own mark
        return np.ascontiguousarray(frame)

    def _rotated_position(self):
        """The walker's (row, column) in the padded garden turned by `heading` quarter turns."""
        y, x, n = self.y + 8, self.x + 8, self.size + 16
        for _ in range(self.heading):  # np.rot90 by one quarter maps (y, x) to (n - 1 - x, y)
            y, x = n - 1 - x, y
        return y, x

    def _info(self) -> dict:
        dx, dy = MOVES[self.heading]
        return {"gt": {"pose": np.array([self.x, self.y, np.arctan2(dy, dx)], np.float32)}}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.y = (int(v) for v in self.np_random.integers(self.size, size=2))
        self.heading, self.t = int(self.np_random.integers(4)), 0
        return self._view(), self._info()

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"expected an action in {self.action_space}, got {action!r}")
        name = ACTIONS[int(action)]
        if name == "FORWARD":
            dx, dy = MOVES[self.heading]
            self.x, self.y = min(max(self.x + dx, 0), self.size - 1), min(max(self.y + dy, 0), self.size - 1)
        elif name == "TURN_LEFT":
            self.heading = (self.heading - 1) % 4
        elif name == "TURN_RIGHT":
            self.heading = (self.heading + 1) % 4
        reward = float(self.gold[self.y, self.x] and name == "FORWARD")
        self.t += 1
        return self._view(), reward, False, self.t >= self.max_steps, self._info()

    def render(self):
        return self._view()


gym.register("TileGarden-v0", entry_point=TileGarden)
