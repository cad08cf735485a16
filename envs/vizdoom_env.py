"""ViZDoom as a gameplay source, with the ground truth the engine gives.

The raw env exposes the scenario's buttons as MultiBinary and RGB frames at 160x120;
the registered ids add the shared wrappers (discrete action table, frame-skip, resize).
Ground truth per frame, in ``info["gt"]``: the player's pose (x, y, angle in radians),
the depth buffer, the label buffer, and up to MAX_LABELS labelled objects with their map
position, their screen box in fractions of the frame (so it survives resizing) and what
they are (an OBJECT_CLASSES index: envs/vizdoom_captions.py describes them in words).
"""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np

from envs.wrappers import check_action, check_can_step

MAX_LABELS = 16
# The Doom actors the ground truth names (engine object names); index 0 is any other.
OBJECT_CLASSES = ("other", "DoomPlayer", "DoomImp", "DoomImpBall", "Zombieman", "ShotgunGuy", "ChaingunGuy",
                  "Demon", "Spectre", "Cacodemon", "CacodemonBall", "LostSoul", "HellKnight", "BaronOfHell",
                  "BaronBall", "Revenant", "RevenantTracer", "Fatso", "FatShot", "Arachnotron", "ArachnotronPlasma",
                  "Rocket", "PlasmaBall", "Medikit", "CustomMedikit", "Stimpack", "HealthBonus", "ArmorBonus",
                  "GreenArmor", "BlueArmor", "Clip", "ClipBox", "Shell", "ShellBox", "RocketAmmo", "Cell", "Shotgun",
                  "Chaingun", "RocketLauncher", "PlasmaRifle", "Chainsaw", "BFG9000", "Poison")
_CLASS_INDEX = {name: i for i, name in enumerate(OBJECT_CLASSES)}

# Our names for scenarios: (config file, buttons to override the config's, or None).
SCENARIOS = {
    "take_cover": ("take_cover.cfg", None),
    "defend_the_center": ("defend_the_center.cfg", None),
    "my_way_home": ("my_way_home.cfg", None),
    "health_gathering": ("health_gathering.cfg", None),
    "freedoom": ("freedoom2.cfg", ["ATTACK", "USE", "MOVE_FORWARD", "MOVE_BACKWARD", "TURN_LEFT", "TURN_RIGHT",
                                   "MOVE_LEFT", "MOVE_RIGHT"]),
}


class VizdoomEnv(gym.Env):
    """One ViZDoom scenario. The engine starts on the first reset (cheap to construct)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 35}

    def __init__(self, scenario: str = "take_cover", episode_timeout: int | None = None, render_mode: str | None = None):
        import vizdoom as vzd  # optional dependency: pip install 'worldsim[games]'

        if scenario not in SCENARIOS:
            raise ValueError(f"unknown ViZDoom scenario {scenario!r}; expected one of {sorted(SCENARIOS)}")
        self.vzd, self.scenario, self.render_mode = vzd, scenario, render_mode
        config, buttons = SCENARIOS[scenario]
        game = vzd.DoomGame()
        game.load_config(os.path.join(vzd.scenarios_path, config))
        if buttons is not None:
            game.set_available_buttons([getattr(vzd.Button, b) for b in buttons])
            game.set_render_hud(False)
            game.set_episode_timeout(2100)  # one minute at 35 tics/s
        if episode_timeout is not None:
            game.set_episode_timeout(episode_timeout)
        game.set_window_visible(False)
        game.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_depth_buffer_enabled(True)
        game.set_labels_buffer_enabled(True)
        game.set_audio_buffer_enabled(False)
        game.set_automap_buffer_enabled(False)
        game.set_mode(vzd.Mode.PLAYER)
        self.extra_variables = list(game.get_available_game_variables())
        game.set_available_game_variables(
            [vzd.GameVariable.POSITION_X, vzd.GameVariable.POSITION_Y, vzd.GameVariable.ANGLE, *self.extra_variables])
        self.game = game
        self.button_names = tuple(b.name for b in game.get_available_buttons())
        self.action_space = gym.spaces.MultiBinary(len(self.button_names))
        self.observation_space = gym.spaces.Box(0, 255, (120, 160, 3), np.uint8)
        self._started = False
        self._last = None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if not self._started:
            self.game.init()
            self._started = True
        # The engine has its own RNG: seed it from ours so a reset seed fixes the episode.
        self.game.set_seed(int(self.np_random.integers(2**31 - 1)))
        self.game.new_episode()
        self._last = self._observe(self.game.get_state())
        return self._last

    def step(self, action):
        started = self._last is not None
        check_can_step("VizdoomEnv", started, started and self.game.is_episode_finished())
        check_action(self.action_space, np.asarray(action, dtype=np.int8), f"VizdoomEnv({self.scenario})")
        reward = self.game.make_action([float(a) for a in np.asarray(action)])
        finished = self.game.is_episode_finished()
        if finished:
            # No new state at an episode's end: the last frame stands.
            obs, info = self._last
            timed_out = self.game.get_episode_time() >= self.game.get_episode_timeout() > 0
            return obs, float(reward), not timed_out, timed_out, info
        self._last = self._observe(self.game.get_state())
        obs, info = self._last
        return obs, float(reward), False, False, info

    def _observe(self, state):
        frame = np.ascontiguousarray(state.screen_buffer)
        h, w = frame.shape[:2]
        variables = np.asarray(state.game_variables, dtype=np.float32)
        # Per label: valid, object id, map x, map y, screen box x, y, width, height (fractions),
        # class (OBJECT_CLASSES index).
        objects = np.zeros((MAX_LABELS, 9), dtype=np.float32)
        for i, label in enumerate(state.labels[:MAX_LABELS]):
            objects[i] = (1, label.object_id, label.object_position_x, label.object_position_y,
                          label.x / w, label.y / h, label.width / w, label.height / h,
                          _CLASS_INDEX.get(label.object_name, 0))
        gt = {
            "pose": np.array([variables[0], variables[1], np.radians(variables[2])], dtype=np.float32),
            "depth": np.ascontiguousarray(state.depth_buffer),
            "labels": np.ascontiguousarray(state.labels_buffer),
            "objects": objects,
            "game_variables": variables[3:],
        }
        return frame, {"gt": gt}

    def render(self):
        return None if self._last is None else self._last[0].copy()

    def close(self):
        if self._started:
            self.game.close()
            self._started = False
