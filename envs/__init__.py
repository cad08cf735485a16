"""Real environments: gameplay sources for data and ground truth for the probes.

Importing this package registers the gymnasium ids:

- ``worldsim/Rooms-v0``: the built-in first-person world (numpy only).
- ``worldsim/Vizdoom-<Scenario>-v0``: ViZDoom scenarios (``pip install 'worldsim[games]'``).
- ``worldsim/Atari-<Game>-v0``: Atari games through ale-py.
- ``worldsim/Crafter-v0``: Crafter, the Minecraft-like survival game (``pip install crafter``).
- ``worldsim/MineRL-<Task>-v0``: minerl 0.4's Minecraft tasks, where minerl is installed
  (making one without it says how to install it).

All gameplay ids give 64x64 uint8 RGB frames and Discrete actions with names
(``action_meanings(env)``; MineRL keeps minerl's Dict actions unless ``actions="discrete"``),
and exact ground truth in ``info["gt"]``.
"""

from __future__ import annotations

import contextlib
import importlib

import gymnasium as gym

from envs.atari import GAMES as ATARI_GAMES
from envs.minerl_env import TASKS as MINERL_TASKS
from envs.vizdoom_env import SCENARIOS as VIZDOOM_SCENARIOS

VIZDOOM_IDS = {
    "take_cover": "TakeCover", "defend_the_center": "DefendCenter", "my_way_home": "MyWayHome",
    "health_gathering": "HealthGathering", "freedoom": "Freedoom",
}


def make_rooms(size=64, render_mode=None, **kwargs):
    from envs.rooms import RoomsEnv
    return RoomsEnv(size=size, render_mode=render_mode, **kwargs)


def make_vizdoom(scenario="take_cover", size=64, frame_skip=4, render_mode=None, **kwargs):
    """ViZDoom scenario with a discrete action table: no-op, each button alone, and
    forward while turning where the scenario has both."""
    import numpy as np

    from envs.vizdoom_env import VizdoomEnv
    from envs.wrappers import DiscreteActions, FrameSkip, ResizeFrame

    env = VizdoomEnv(scenario, render_mode=render_mode, **kwargs)
    names = env.button_names
    table, meanings = [np.zeros(len(names), np.int8)], ["NOOP"]
    for i, name in enumerate(names):
        press = np.zeros(len(names), np.int8)
        press[i] = 1
        table.append(press)
        meanings.append(name)
    if "MOVE_FORWARD" in names:
        for turn in ("TURN_LEFT", "TURN_RIGHT"):
            if turn in names:
                press = np.zeros(len(names), np.int8)
                press[[names.index("MOVE_FORWARD"), names.index(turn)]] = 1
                table.append(press)
                meanings.append(f"MOVE_FORWARD+{turn}")
    return ResizeFrame(FrameSkip(DiscreteActions(env, table, meanings), frame_skip), size)


def make_atari(game="Pong", size=64, frame_skip=4, render_mode=None, **kwargs):
    from envs.atari import make_atari as make_raw_atari
    from envs.wrappers import FrameSkip, ResizeFrame

    return ResizeFrame(FrameSkip(make_raw_atari(game, render_mode=render_mode, **kwargs), frame_skip), size)


def make_crafter(size=64, render_mode=None, **kwargs):
    from envs.crafter_env import CrafterEnv

    return CrafterEnv(size=size, render_mode=render_mode, **kwargs)


def make_minerl(task="Treechop", size=64, frame_skip=1, actions="dict", render_mode=None, **kwargs):
    """A minerl 0.4 task (envs/minerl_env.py): minerl's Dict actions, or a named Discrete
    table with actions="discrete"; no frame-skip by default (minerl ticks at 20 Hz, as
    its dataset and the VPT data are recorded)."""
    from envs.minerl_env import MineRLEnv
    from envs.wrappers import FrameSkip, ResizeFrame

    env = MineRLEnv(task, actions=actions, render_mode=render_mode, **kwargs)
    return ResizeFrame(FrameSkip(env, frame_skip) if frame_skip > 1 else env, size)


# Top-down grid worlds (Crafter): each move action steps one cell, (dx, dy) in cells.
GRID_MOVES = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}


def caption_module(env_id: str | None):
    """The module that captions this env's clips exactly from their ground truth (GT_KEYS,
    clip_attributes, caption), or None for an env without one."""
    if env_id == "worldsim/Rooms-v0":
        from envs import rooms_captions

        return rooms_captions
    if env_id and env_id.startswith("worldsim/Vizdoom-"):
        from envs import vizdoom_captions

        return vizdoom_captions
    return None


def action_meanings(env: gym.Env | gym.vector.VectorEnv) -> tuple[str, ...]:
    """Names of a Discrete env's actions ('FORWARD', 'TURN_LEFT', ...), through wrappers."""
    names = optional_attr(env, "action_meanings")
    if names is not None:
        return tuple(names)
    space = env.single_action_space if isinstance(env, gym.vector.VectorEnv) else env.action_space
    return tuple(f"ACTION_{i}" for i in range(space.n))


def optional_attr(env: gym.Env | gym.vector.VectorEnv, name: str, default=None):
    """An attribute the env may offer (through wrappers; sub-env 0's for a vector env),
    else `default`. Asks first: a failed get_attr ends an async worker process."""
    if isinstance(env, gym.vector.VectorEnv):
        return env.get_attr(name)[0] if env.call("has_wrapper_attr", name)[0] else default
    return env.get_wrapper_attr(name) if env.has_wrapper_attr(name) else default


@contextlib.contextmanager
def _made(env_id: str | None, env_kwargs: dict | None = None):
    """The env made from a known id, closed after use; None for an unknown id."""
    try:
        resolve_env_id(env_id)
    except ValueError:
        env = None
    else:
        env = gym.make(env_id, **(env_kwargs or {}))
    try:
        yield env
    finally:
        if env is not None:
            env.close()


def env_pose_model(env_id: str | None, env_kwargs: dict | None = None) -> dict | None:
    """What the env says about its camera, for keying latent memory by pose: its whole
    pose model (motion per action, field of view, reach) when it has a ``pose_model()``
    method, else the view attributes it offers (``fov_deg``, ``view_reach``) for a motion
    model fitted from data (worldsim.memory.fit_pose_model); None for an unknown env."""
    with _made(env_id, env_kwargs) as env:
        if env is None:
            return None
        if hasattr(env.unwrapped, "pose_model"):
            return env.unwrapped.pose_model()
        view = {"fov_deg": optional_attr(env, "fov_deg"), "reach": optional_attr(env, "view_reach")}
        return {k: float(v) for k, v in view.items() if v is not None}


def gt_names(env_id: str | None, key: str, size: int) -> tuple[str, ...]:
    """What each of the `size` entries of the ground-truth vector `key` is (Crafter's
    achievements by name), where the env's ``gt_names`` says; else "key[i]"."""
    with _made(env_id) as env:
        names = None if env is None else (optional_attr(env, "gt_names") or {}).get(key)
    if names is not None and len(names) != size:
        raise ValueError(f"{env_id} names {len(names)} entries of gt/{key}; the data holds {size}")
    return tuple(names) if names is not None else tuple(f"{key}[{i}]" for i in range(size))


def register_envs():
    if "worldsim/Rooms-v0" in gym.registry:
        return
    gym.register("worldsim/Rooms-v0", entry_point="envs:make_rooms", disable_env_checker=True)
    for scenario in VIZDOOM_SCENARIOS:
        gym.register(f"worldsim/Vizdoom-{VIZDOOM_IDS[scenario]}-v0", entry_point="envs:make_vizdoom",
                     kwargs={"scenario": scenario}, disable_env_checker=True)
    for game in ATARI_GAMES:
        gym.register(f"worldsim/Atari-{game}-v0", entry_point="envs:make_atari", kwargs={"game": game},
                     disable_env_checker=True)
    gym.register("worldsim/Crafter-v0", entry_point="envs:make_crafter", disable_env_checker=True)
    for task in MINERL_TASKS:
        gym.register(f"worldsim/MineRL-{task}-v0", entry_point="envs:make_minerl", kwargs={"task": task},
                     disable_env_checker=True)


def resolve_env_id(spec: str) -> str:
    """The registered gymnasium id named by `spec`: a worldsim id, any id already
    registered, or gymnasium's own ``module:Id`` form, which imports `module` first (so
    a user's package registers its envs, as ``gym.make("module:Id")`` does). Raises a
    ValueError naming the module or the id that failed, before any work starts."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"expected an env id such as 'worldsim/Rooms-v0' or 'mymodule:MyEnv-v0', got {spec!r}")
    module, _, env_id = spec.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"env {spec!r}: cannot import module {module!r} ({e}); expected an importable "
                             f"module that registers {env_id!r} with gymnasium.register") from e
    if env_id not in gym.registry:
        hint = (f"module {module!r} was imported but did not register it" if module else
                "to use your own env, name the module that registers it: --env mymodule:MyEnv-v0")
        raise ValueError(f"unknown env id {env_id!r} ({hint}); worldsim registers: {', '.join(gameplay_ids())}")
    return env_id


def gameplay_ids() -> list[str]:
    return sorted(k for k in gym.registry if k.startswith("worldsim/") and k != "worldsim/Dream-v0")


register_envs()
