"""Crafter: a Minecraft-like open world survival game, as a gameplay source.

Crafter (Hafner 2021, ``pip install crafter``) draws a top-down 9x9 view of a 64x64
world with the inventory below it. The player gathers wood, stone, coal, iron and
diamonds, places tables and furnaces, makes pickaxes and swords, eats, drinks, sleeps
and fights zombies and skeletons; 22 achievements measure how far it gets.

## Action space

``Discrete(17)``, crafter's own actions, named in ``env.action_meanings``:

| num | action | num | action |
|---|---|---|---|
| 0 | noop | 9 | place_furnace |
| 1 | move_left | 10 | place_plant |
| 2 | move_right | 11 | make_wood_pickaxe |
| 3 | move_up | 12 | make_stone_pickaxe |
| 4 | move_down | 13 | make_iron_pickaxe |
| 5 | do (collect, attack, eat, drink) | 14 | make_wood_sword |
| 6 | sleep | 15 | make_stone_sword |
| 7 | place_stone | 16 | make_iron_sword |
| 8 | place_table | | |

## Observation space

``Box(0, 255, (size, size, 3), uint8)``: crafter renders at ``size`` (64 by default).

## Rewards

Crafter's: +1 the first time each achievement is unlocked in an episode, and the change
in health divided by 10 (so -0.1 per health point lost).

## Episode end

Terminated when the player's health reaches 0; truncated after ``length`` steps (10,000,
crafter's default). A step after the end is refused until ``reset()``.

## Ground truth (``info["gt"]``, each frame)

- ``inventory`` (16,) int32: counts in ``INVENTORY`` order (health, food, drink and energy first).
- ``achievements`` (22,) int32: how often each of ``ACHIEVEMENTS`` was done this episode
  (unlocked = count > 0; the Crafter score is the geometric mean of the unlock rates).
- ``player_pos`` (2,) int32: the player's cell (x, y) in the 64x64 world.
- ``facing`` (2,) int32: the direction the player faces, (dx, dy).
- ``semantic`` (64, 64) uint8: the whole world map, one id per cell, named by
  ``SEMANTIC_IDS``: 0 none, the 12 materials, then player, cow, zombie, skeleton, arrow,
  plant; placed blocks
  and gathered resources show here, which a persistence probe needs.
- ``daylight`` () float32: 1 at noon, low at night (night frames darken and get noise).
- ``sleeping`` () bool.

Seeding: ``reset(seed=s)`` fixes the world and everything after it; crafter's world RNG
also draws the night-time noise, so ``render()`` returns the last frame rather than
drawing a new one.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np

from envs.wrappers import check_action, check_can_step


def _constants():
    import crafter  # optional dependency: pip install crafter (in the 'dev' and 'games' extras)

    return crafter, crafter.constants


def _names(key: str) -> tuple[str, ...]:
    try:
        return tuple(getattr(_constants()[1], key))
    except ImportError:
        return ()


ACTIONS = _names("actions")
ACHIEVEMENTS = _names("achievements")
INVENTORY = tuple(_names("items"))
SEMANTIC_IDS = ("none", *_names("materials"), "player", "cow", "zombie", "skeleton", "arrow", "plant")


@functools.cache
def _ordered_world_class():
    import crafter.engine

    class OrderedWorld(crafter.engine.World):
        """crafter's world, with each chunk's creatures in the order of their cells: crafter
        keeps them in sets, whose order follows memory addresses, and spawns and despawns
        by drawing from that order, so the same seed and actions gave other creatures in
        another process."""

        @property
        def chunks(self):
            return {key: sorted(objs, key=lambda obj: tuple(obj.pos)) for key, objs in self._chunks.items()}

    return OrderedWorld


class CrafterEnv(gym.Env):
    """Crafter behind the gymnasium API, with its ground truth in ``info["gt"]``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    gt_names = {"inventory": INVENTORY, "achievements": ACHIEVEMENTS}  # what each entry of those gt vectors is

    def __init__(self, size: int = 64, length: int = 10000, area: int = 64, view: int = 9,
                 render_mode: str | None = None):
        try:
            crafter, constants = _constants()
        except ImportError as e:
            raise ImportError("worldsim/Crafter-v0 needs the crafter package: pip install crafter "
                              "(or pip install 'worldsim[games]')") from e
        if size < 9 or length < 1:
            raise ValueError(f"expected size >= 9 and length >= 1, got size={size}, length={length}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode {render_mode!r}: expected None or one of {self.metadata['render_modes']}")
        self.render_mode, self.length = render_mode, int(length)
        self._game = crafter.Env(area=(area, area), view=(view, view), size=(size, size), length=self.length, seed=0)
        self._game._world.__class__ = _ordered_world_class()
        self.action_meanings = tuple(constants.actions)
        self.action_space = gym.spaces.Discrete(len(self.action_meanings))
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self._frame = None
        self._ended = None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options:
            raise ValueError(f"CrafterEnv.reset: unknown options {sorted(options)}; it takes none")
        # Crafter seeds episode k of an env with hash((seed, k)); start each episode at k = 1
        # of a seed drawn from ours, so reset(seed=s) always gives the same world.
        self._game._seed = int(self.np_random.integers(2**31 - 1))
        self._game._episode = 0
        self._frame = self._game.reset()
        self._ended = None
        return self._frame.copy(), {"gt": self._gt()}

    def step(self, action):
        check_can_step("CrafterEnv", self._frame is not None, self._ended)
        check_action(self.action_space, action, "CrafterEnv")
        self._frame, reward, done, info = self._game.step(int(action))
        terminated = bool(info["discount"] == 0)  # the player died
        truncated = bool(done and not terminated)
        if terminated or truncated:
            self._ended = "the player died" if terminated else f"the {self.length}-step limit was reached"
        return self._frame.copy(), float(reward), terminated, truncated, {"gt": self._gt(info.get("semantic"))}

    def _gt(self, semantic=None) -> dict:
        player = self._game._player
        return {
            "inventory": np.array([player.inventory[k] for k in INVENTORY], np.int32),
            "achievements": np.array([player.achievements[k] for k in ACHIEVEMENTS], np.int32),
            "player_pos": np.asarray(player.pos, np.int32).copy(),
            "facing": np.asarray(player.facing, np.int32),
            "semantic": np.asarray(self._game._sem_view() if semantic is None else semantic, np.uint8),
            "daylight": np.float32(self._game._world.daylight),
            "sleeping": np.bool_(player.sleeping),
        }

    def render(self):
        return None if self._frame is None else self._frame.copy()
