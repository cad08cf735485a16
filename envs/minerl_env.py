"""MineRL (Minecraft) tasks as gameplay sources, where minerl 0.4 is installed.

``worldsim/MineRL-<Task>-v0`` wraps minerl's ``MineRL<Task>-v0`` (Treechop, Navigate,
NavigateDense, NavigateExtreme, NavigateExtremeDense, ObtainDiamond, ObtainDiamondDense,
ObtainIronPickaxe, ObtainIronPickaxeDense): the tasks of minerl 0.4, which minerl 1.0
dropped. minerl runs Minecraft through the Malmo mod, which its install builds with
gradle: that needs Java 8 (JDK 8 exactly) and downloads Minecraft, so on a machine
without them ``import envs`` still works and ``gym.make`` says how to install it
(``MINERL_MISSING``).

The spaces below are minerl 0.4.4's, read from its source (github.com/minerllabs/minerl,
tag v0.4.4): ``minerl/herobraine/env_specs/{simple_embodiment,treechop_specs,
navigate_specs,obtain_specs}.py`` name each task's handlers, and
``minerl/herobraine/hero/handlers/agent/{actions,observations}/*.py`` give each
handler's space; ``env_spec.py`` puts them in a Dict with sorted keys.

## Action space

minerl's Dict, kept as a gymnasium Dict (``actions="dict"``, the default):

- keyboard commands ``forward, back, left, right, jump, sneak, sprint, attack``:
  ``Discrete(2)`` each (1 = held this tick);
- ``camera``: ``Box(-180, 180, (2,), float32)``, the change of (pitch, yaw) in degrees
  this tick; positive pitch looks down, positive yaw turns right;
- Navigate adds ``place`` (none, dirt); ObtainDiamond and ObtainIronPickaxe add
  ``place, equip, craft, nearbyCraft, nearbySmelt``. minerl takes these as strings (an
  ``Enum``); here each is ``Discrete(n)`` whose index 0 is the no-op "none" and the rest
  follow in minerl's (sorted) order, named in ``env.enum_values[key]``. So the all-zero
  action is minerl's no-op.

``actions="discrete"`` flattens it for agents into ``Discrete(n)`` with names in
``env.action_meanings``: noop; each keyboard command alone; forward+jump; look_up,
look_down, look_left, look_right (``camera_step`` degrees, 10 by default); and one
action per Enum value ("place:dirt", "craft:planks", ...).

## Observation space

minerl's ``pov``: ``Box(0, 255, (64, 64, 3), uint8)``, resized to ``size`` if another.

## Ground truth (``info["gt"]``, from minerl's other observations)

- ``inventory`` (n,) int32: item counts in ``env.inventory_items`` order (minerl's,
  sorted): Navigate observes dirt, Obtain* the 18 items of ``OBTAIN_INVENTORY``.
- ``compass_angle`` () float32: Navigate's compass, degrees to the goal in [-180, 180].
- ``mainhand`` (3,) int32: the held item (index into ``env.mainhand_items``), its damage
  and max damage (Obtain*).
- ``location`` (5,) float32 (xpos, ypos, zpos, pitch, yaw) and ``pose`` (3,) float32 (x, z,
  heading in radians in the x-z plane, atan2 of the facing direction) where a task
  observes ``location_stats`` (none of the 0.4 tasks does; minerl 1.0's do).

## Rewards and episode end

minerl's reward. minerl's old gym API (``reset() -> obs``, ``step -> obs, reward, done,
info``) becomes gymnasium's: ``done`` at the task's step limit (8,000 for Treechop,
6,000 for Navigate and ObtainIronPickaxe, 18,000 for ObtainDiamond) is truncated,
any other ``done`` (goal reached, death) terminated. ``reset(seed=s)`` calls minerl's
``env.seed(s)``, which fixes the world of the next episode.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np

from envs.wrappers import check_action, check_can_step

TASKS = ("Treechop", "Navigate", "NavigateDense", "NavigateExtreme", "NavigateExtremeDense",
         "ObtainDiamond", "ObtainDiamondDense", "ObtainIronPickaxe", "ObtainIronPickaxeDense")

KEYBOARD = ("forward", "back", "left", "right", "jump", "sneak", "sprint", "attack")

OBTAIN_INVENTORY = ("coal", "cobblestone", "crafting_table", "dirt", "furnace", "iron_axe", "iron_ingot",
                    "iron_ore", "iron_pickaxe", "log", "planks", "stick", "stone", "stone_axe", "stone_pickaxe",
                    "torch", "wooden_axe", "wooden_pickaxe")

# The string-valued (Enum) actions of each task family, "none" first then minerl's sorted order.
_OBTAIN_ENUMS = {
    "place": ("none", "cobblestone", "crafting_table", "dirt", "furnace", "stone", "torch"),
    "equip": ("none", "air", "iron_axe", "iron_pickaxe", "stone_axe", "stone_pickaxe", "wooden_axe", "wooden_pickaxe"),
    "craft": ("none", "crafting_table", "planks", "stick", "torch"),
    "nearbyCraft": ("none", "furnace", "iron_axe", "iron_pickaxe", "stone_axe", "stone_pickaxe", "wooden_axe",
                    "wooden_pickaxe"),
    "nearbySmelt": ("none", "coal", "iron_ingot"),
}
ENUM_ACTIONS = {"Treechop": {}, "Navigate": {"place": ("none", "dirt")}, "Obtain": _OBTAIN_ENUMS}

# Obtain*'s held-item observation (an Enum whose default is "air"), in the order gt["mainhand"] indexes.
MAINHAND_ITEMS = ("air", "iron_axe", "iron_pickaxe", "none", "other", "stone_axe", "stone_pickaxe", "wooden_axe",
                  "wooden_pickaxe")

MINERL_MISSING = (
    "{id} needs the minerl package (version 0.4.x, which has the {task} task), and it is not installed "
    "({error}). minerl runs Minecraft through the Malmo mod, which `pip install minerl` builds with gradle: "
    "that needs Java 8 (JDK 8 exactly, with JAVA_HOME pointing at it; newer JDKs fail the build) and "
    "downloads Minecraft and its libraries, so it cannot be built on a machine without JDK 8 and network access. "
    "To install it: `sudo apt-get install openjdk-8-jdk` (or any JDK 8), `export JAVA_HOME=/usr/lib/jvm/"
    "java-8-openjdk-amd64`, then `pip install minerl==0.4.4` (it pins gym<0.20; a Python that gym 0.19 installs "
    "on). See https://minerl.readthedocs.io/en/v0.4.4/. Without minerl, Minecraft data still "
    "imports: `worldsim import-minecraft SRC --format minerl|vpt --out DIR`; and worldsim/Crafter-v0 is a "
    "Minecraft-like world that runs here.")


def task_family(task: str) -> str:
    """'Treechop', 'Navigate' or 'Obtain': tasks of one family share their action space."""
    for family in ("Treechop", "Navigate", "Obtain"):
        if task.startswith(family):
            return family
    raise ValueError(f"unknown MineRL task {task!r}; expected one of {TASKS}")


def action_space(task: str) -> gym.spaces.Dict:
    """The gymnasium form of a task's minerl action space (Enums as Discrete, "none" = 0)."""
    spaces = {k: gym.spaces.Discrete(2) for k in KEYBOARD}
    spaces["camera"] = gym.spaces.Box(-180.0, 180.0, (2,), np.float32)
    spaces.update({k: gym.spaces.Discrete(len(v)) for k, v in ENUM_ACTIONS[task_family(task)].items()})
    return gym.spaces.Dict({k: spaces[k] for k in sorted(spaces)})


def _make_minerl_env(task: str):
    """minerl's env for MineRL<task>-v0, through its env spec (minerl 0.4: no gym registry needed)."""
    import minerl  # noqa: F401  (the optional dependency; see MINERL_MISSING)
    from minerl.herobraine import envs as specs

    name = f"MineRL{task}-v0"
    found = getattr(specs, "ENV_SPEC_MAPPINGS", {}).get(name) or next(
        (s for s in getattr(specs, "ENV_SPECS", []) if getattr(s, "name", None) == name), None)
    if found is None:
        raise ImportError(f"the installed minerl has no {name} (minerl 1.0 dropped the 0.4 tasks)")
    return found, found.make()


def _space_kind(space) -> str:
    """Old gym / minerl spaces by what they hold (minerl's Enum is a Discrete with values)."""
    if hasattr(space, "spaces"):
        return "dict"
    if hasattr(space, "values") and hasattr(space, "n"):
        return "enum"
    if hasattr(space, "n"):
        return "discrete"
    if hasattr(space, "low"):
        return "box"
    raise TypeError(f"unsupported minerl space {space!r}; expected Dict, Enum, Discrete or Box")


def enum_values(space) -> tuple[str, ...]:
    """A minerl Enum's values, its default (the no-op, "none" for actions) first."""
    values = [str(v) for v in space.values]
    default = str(getattr(space, "default", None) or values[0])
    return (default, *[v for v in values if v != default])


def observation_gt(obs: dict, names: dict) -> dict:
    """Ground truth from one minerl observation (all but ``pov``); `names` orders the
    inventory and the held item: {"inventory": items, "mainhand": item types}."""
    gt = {}
    if "inventory" in obs:
        gt["inventory"] = np.array([int(np.asarray(obs["inventory"][k])) for k in names["inventory"]], np.int32)
    if "compass" in obs or "compassAngle" in obs:  # minerl 0.4 / 0.3
        angle = obs["compass"]["angle"] if "compass" in obs else obs["compassAngle"]
        gt["compass_angle"] = np.float32(np.asarray(angle))
    if "equipped_items" in obs:
        hand = obs["equipped_items"]["mainhand"]
        kind = str(np.asarray(hand["type"]))
        index = names["mainhand"].index(kind) if kind in names["mainhand"] else -1
        damage, max_damage = int(np.asarray(hand["damage"])), int(np.asarray(hand["maxDamage"]))
        gt["mainhand"] = np.array([index, damage, max_damage], np.int32)
    if "location_stats" in obs:
        stats = obs["location_stats"]
        loc = np.array([float(np.asarray(stats[k])) for k in ("xpos", "ypos", "zpos", "pitch", "yaw")], np.float32)
        gt["location"] = loc
        # Minecraft faces (-sin yaw, cos yaw) in (x, z): its heading there is yaw + 90 degrees.
        heading = math.remainder(math.radians(float(loc[4]) + 90.0), 2 * math.pi)
        gt["pose"] = np.array([loc[0], loc[2], heading], np.float32)
    return gt


class MineRLEnv(gym.Env):
    """A minerl 0.4 task behind the gymnasium API (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, task: str = "Treechop", actions: str = "dict", camera_step: float = 10.0,
                 render_mode: str | None = None):
        if task not in TASKS:
            raise ValueError(f"unknown MineRL task {task!r}; expected one of {TASKS}")
        if actions not in ("dict", "discrete"):
            raise ValueError(f"actions={actions!r}: expected 'dict' (minerl's Dict) or 'discrete' (a table)")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode {render_mode!r}: expected None or one of {self.metadata['render_modes']}")
        self.task, self.render_mode = task, render_mode
        try:
            spec, self._env = _make_minerl_env(task)
        except ImportError as e:
            raise ImportError(MINERL_MISSING.format(id=f"worldsim/MineRL-{task}-v0", task=f"MineRL{task}-v0",
                                                    error=e)) from e
        self.max_episode_steps = getattr(spec, "max_episode_steps", None)
        self._init_spaces(self._env.action_space, self._env.observation_space, actions, camera_step)
        self._frame = None
        self._ended = None
        self._steps = 0

    def _init_spaces(self, act, obs, actions, camera_step):
        self._kinds = {k: _space_kind(s) for k, s in act.spaces.items()}
        self.enum_values = {k: enum_values(s) for k, s in act.spaces.items() if self._kinds[k] == "enum"}
        spaces = {}
        for key, space in act.spaces.items():
            kind = self._kinds[key]
            if kind == "box":
                spaces[key] = gym.spaces.Box(np.asarray(space.low, np.float32), np.asarray(space.high, np.float32),
                                             dtype=np.float32)
            else:
                spaces[key] = gym.spaces.Discrete(len(self.enum_values[key]) if kind == "enum" else int(space.n))
        self.dict_space = gym.spaces.Dict({k: spaces[k] for k in sorted(spaces)})
        self.table = None
        if actions == "discrete":
            self.table, self.action_meanings = self._discrete_table(camera_step)
            self.action_space = gym.spaces.Discrete(len(self.table))
        else:
            self.action_space = self.dict_space
        pov = obs.spaces["pov"]
        self.observation_space = gym.spaces.Box(0, 255, tuple(pov.shape), np.uint8)
        self.gt_names = {"inventory": tuple(obs.spaces["inventory"].spaces) if "inventory" in obs.spaces else ()}
        hand = obs.spaces.get("equipped_items")
        self.gt_names["mainhand"] = enum_values(hand.spaces["mainhand"].spaces["type"]) if hand is not None else ()
        self.inventory_items, self.mainhand_items = self.gt_names["inventory"], self.gt_names["mainhand"]

    def _discrete_table(self, step: float):
        noop = {k: (np.zeros(2, np.float32) if k == "camera" else 0) for k in self.dict_space.spaces}
        table, names = [noop], ["noop"]

        def add(name, **changes):
            table.append({**noop, **changes})
            names.append(name)

        for key in KEYBOARD:
            if key in noop:
                add(key, **{key: 1})
        if "forward" in noop and "jump" in noop:
            add("forward+jump", forward=1, jump=1)
        for name, delta in (("look_up", (-step, 0)), ("look_down", (step, 0)),
                            ("look_left", (0, -step)), ("look_right", (0, step))):
            add(name, camera=np.array(delta, np.float32))
        for key, values in self.enum_values.items():
            for i, value in enumerate(values[1:], 1):
                add(f"{key}:{value}", **{key: i})
        return table, tuple(names)

    def minerl_action(self, action) -> dict:
        """The action as minerl takes it: ints for keys, a float32 (pitch, yaw) camera, Enum strings."""
        if self.table is not None:
            check_action(self.action_space, action, f"MineRLEnv({self.task})")
            action = self.table[int(action)]
        elif not (isinstance(action, dict) and set(action) == set(self.dict_space.spaces)):
            raise ValueError(f"MineRLEnv({self.task}): action {action!r} is not a dict with the keys "
                             f"{sorted(self.dict_space.spaces)}; expected a sample of {self.dict_space}")
        out = {}
        for key, value in action.items():
            if self._kinds[key] == "box":
                value = np.asarray(value, np.float32)
            elif not np.issubdtype(np.asarray(value).dtype, np.integer):
                raise ValueError(f"MineRLEnv({self.task}): action[{key!r}] = {value!r} is not an integer; "
                                 f"expected an integer of {self.dict_space[key]}")
            check_action(self.dict_space[key], value if self._kinds[key] == "box" else np.int64(value),
                         f"MineRLEnv({self.task}) action[{key!r}]")
            if self._kinds[key] == "enum":
                out[key] = self.enum_values[key][int(value)]
            elif self._kinds[key] == "box":
                out[key] = value
            else:
                out[key] = int(value)
        return out

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options:
            raise ValueError(f"MineRLEnv.reset: unknown options {sorted(options)}; it takes none")
        if seed is not None and hasattr(self._env, "seed"):
            self._env.seed(int(seed))
        obs = self._env.reset()
        self._steps, self._ended = 0, None
        return self._observe(obs)

    def step(self, action):
        check_can_step("MineRLEnv", self._frame is not None, self._ended)
        obs, reward, done, info = self._env.step(self.minerl_action(action))
        self._steps += 1
        limit = self.max_episode_steps is not None and self._steps >= self.max_episode_steps
        truncated = bool(done and (limit or (info or {}).get("TimeLimit.truncated", False)))
        terminated = bool(done and not truncated)
        if done:
            self._ended = "truncated at the step limit" if truncated else "terminated"
        frame, out = self._observe(obs)
        return frame, float(reward), terminated, truncated, out

    def _observe(self, obs):
        self._frame = np.ascontiguousarray(obs["pov"], dtype=np.uint8)
        return self._frame.copy(), {"gt": observation_gt(obs, self.gt_names)}

    def render(self):
        return None if self._frame is None else self._frame.copy()

    def close(self):
        if getattr(self, "_env", None) is not None:
            self._env.close()
            self._env = None
