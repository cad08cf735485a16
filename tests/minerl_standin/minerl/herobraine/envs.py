"""minerl.herobraine.envs with the nine MineRL v0.4 tasks, their spaces built as minerl
0.4.4's handlers build them (env_specs/simple_embodiment.py, treechop_specs.py,
navigate_specs.py, obtain_specs.py; hero/handlers/agent/actions/*.py and
observations/*.py), and a toy deterministic world behind the old gym API."""

import copy

import numpy as np

from minerl.herobraine.hero.spaces import Box, Dict, Discrete, Enum

SIMPLE_KEYBOARD_ACTION = ["forward", "back", "left", "right", "jump", "sneak", "sprint", "attack"]
OBTAIN_ITEMS = ["dirt", "coal", "torch", "log", "planks", "stick", "crafting_table", "wooden_axe", "wooden_pickaxe",
                "stone", "cobblestone", "furnace", "stone_axe", "stone_pickaxe", "iron_ore", "iron_ingot", "iron_axe",
                "iron_pickaxe"]


def item_list_enum(items, _other="none", _default="none"):
    """BaseItemListAction's space: the items, plus _other and _default if missing."""
    items = list(items)
    for extra in (_other, _default):
        if extra not in items:
            items.append(extra)
    return Enum(*items, default=_default)


def flat_inventory(items):
    return Dict({k: Box(0, 2304, (), np.int32) for k in sorted(items)})


def equipped_items(items, _default="air", _other="other"):
    items = list(items)
    for extra in (_other, _default):
        if extra not in items:
            items.append(extra)
    mainhand = Dict([("damage", Box(-1, 1562, (), int)), ("maxDamage", Box(-1, 1562, (), int)),
                     ("type", Enum(*sorted(items), default=_default))])
    return Dict({"mainhand": mainhand})


class EnvSpec:
    def __init__(self, name, max_episode_steps, family, dense=False):
        self.name, self.max_episode_steps, self.family, self.dense = name, max_episode_steps, family, dense
        actions = {k: Discrete(2) for k in SIMPLE_KEYBOARD_ACTION}
        actions["camera"] = Box(-180, 180, [2], np.float32)
        observations = {"pov": Box(0, 255, [64, 64, 3], np.uint8)}
        if family == "Navigate":
            actions["place"] = item_list_enum(["none", "dirt"])
            observations["compass"] = Dict([("angle", Box(-180.0, 180.0, (), np.float32))])
            observations["inventory"] = flat_inventory(["dirt"])
        elif family == "Obtain":
            none = "none"
            actions["place"] = item_list_enum([none, "dirt", "stone", "cobblestone", "crafting_table", "furnace",
                                               "torch"])
            actions["equip"] = item_list_enum([none, "air", "wooden_axe", "wooden_pickaxe", "stone_axe",
                                               "stone_pickaxe", "iron_axe", "iron_pickaxe"])
            actions["craft"] = item_list_enum([none, "torch", "stick", "planks", "crafting_table"])
            actions["nearbyCraft"] = item_list_enum([none, "wooden_axe", "wooden_pickaxe", "stone_axe", "stone_pickaxe",
                                                     "iron_axe", "iron_pickaxe", "furnace"])
            actions["nearbySmelt"] = item_list_enum([none, "iron_ingot", "coal"])
            observations["inventory"] = flat_inventory(OBTAIN_ITEMS)
            observations["equipped_items"] = equipped_items(
                ["air", "wooden_axe", "wooden_pickaxe", "stone_axe", "stone_pickaxe", "iron_axe", "iron_pickaxe", none,
                 "other"])
        self.action_space, self.observation_space = Dict(actions), Dict(observations)

    def make(self, fake=False, **kwargs):
        return _SingleAgentEnv(self)


class _SingleAgentEnv:
    def __init__(self, env_spec):
        self.task = env_spec
        self.action_space, self.observation_space = env_spec.action_space, env_spec.observation_space
        self.received, self.done, self.closed, self._seed = [], True, False, None

    def seed(self, seed=None):
        self._seed = seed

    def reset(self):
        rng = np.random.default_rng(self._seed)
        self.tick, self.pitch, self.yaw, self.pos = 0, 0.0, float(rng.integers(-180, 180)), np.zeros(2)
        self.goal = rng.integers(3, 6, 2).astype(float)
        inv = self.observation_space.spaces.get("inventory")
        self.inventory = {k: 0 for k in (inv.spaces if inv else [])}
        if "dirt" in self.inventory:
            self.inventory["dirt"] = 2
        self.logs, self.mainhand, self.done, self.rewarded = 0, "air", False, set()
        return self._obs()

    def step(self, action):
        if self.done:
            raise RuntimeError("Attempted to step an environment server with done=True")
        for key, value in action.items():
            space = self.action_space.spaces.get(key)
            bad_int = isinstance(value, (bool, np.bool_)) and not isinstance(space, Box)
            if space is None or bad_int or not space.contains(value):
                raise ValueError(f"stand-in minerl: action[{key!r}] = {value!r} is not in {space}")
        self.received.append(copy.deepcopy(action))
        a = {**self.action_space.no_op(), **action}
        self.tick += 1
        self.pitch = float(np.clip(self.pitch + a["camera"][0], -90, 90))
        self.yaw = float((self.yaw + a["camera"][1] + 180) % 360 - 180)
        facing = np.array([-np.sin(np.radians(self.yaw)), np.cos(np.radians(self.yaw))])
        self.pos = self.pos + facing * (a["forward"] - a["back"])
        reward, done = 0.0, False
        if a["attack"]:
            self.logs += 1
            if "log" in self.inventory:
                self.inventory["log"] += 1
            reward += self._reward("log", 1.0)
        if a.get("craft") == "planks" and self.inventory.get("log", 0) > 0:
            self.inventory["log"] -= 1
            self.inventory["planks"] += 4
            reward += self._reward("planks", 2.0)
        if a.get("place") == "dirt" and self.inventory.get("dirt", 0) > 0:
            self.inventory["dirt"] -= 1
        if a.get("equip", "none") != "none":
            self.mainhand = a["equip"]
        if self.task.family == "Treechop":
            done = self.logs >= 64
        if self.task.family == "Navigate" and np.linalg.norm(self.pos - self.goal) < 1.0:
            reward, done = reward + 100.0, True
        self.done = done or self.tick >= self.task.max_episode_steps  # ServerQuitFromTimeUp
        return self._obs(), reward, self.done, {}

    def _reward(self, item, value):
        if self.task.family == "Obtain" and not self.task.dense:  # RewardForCollectingItemsOnce
            if item in self.rewarded:
                return 0.0
            self.rewarded.add(item)
        return value

    def _obs(self):
        pov = np.zeros((64, 64, 3), np.uint8)
        horizon = int(np.clip(32 + self.pitch / 90 * 32, 0, 64))
        hue = int((self.yaw + 180) / 360 * 255)
        pov[:horizon] = (hue, 160, 255)
        pov[horizon:] = (hue, 90, 20)
        pov[0, 0] = (self.tick % 256, self.tick // 256, 7)
        obs = {"pov": pov}
        spaces = self.observation_space.spaces
        if "inventory" in spaces:
            obs["inventory"] = {k: np.array(v) for k, v in self.inventory.items()}
        if "compass" in spaces:
            d = self.goal - self.pos
            to_goal = np.degrees(np.arctan2(-d[0], d[1]))
            obs["compass"] = {"angle": np.array(((to_goal - self.yaw + 180) % 360) - 180, np.float32)}
        if "equipped_items" in spaces:
            damage = 0 if self.mainhand == "air" else 3
            obs["equipped_items"] = {"mainhand": {"type": self.mainhand, "damage": np.array(damage),
                                                  "maxDamage": np.array(0 if self.mainhand == "air" else 59)}}
        return obs

    def close(self):
        self.closed = True


MINERL_TREECHOP_V0 = EnvSpec("MineRLTreechop-v0", 8000, "Treechop")
MINERL_NAVIGATE_V0 = EnvSpec("MineRLNavigate-v0", 6000, "Navigate")
MINERL_NAVIGATE_EXTREME_V0 = EnvSpec("MineRLNavigateExtreme-v0", 6000, "Navigate")
MINERL_NAVIGATE_DENSE_V0 = EnvSpec("MineRLNavigateDense-v0", 6000, "Navigate", dense=True)
MINERL_NAVIGATE_DENSE_EXTREME_V0 = EnvSpec("MineRLNavigateExtremeDense-v0", 6000, "Navigate", dense=True)
MINERL_OBTAIN_DIAMOND_V0 = EnvSpec("MineRLObtainDiamond-v0", 18000, "Obtain")
MINERL_OBTAIN_DIAMOND_DENSE_V0 = EnvSpec("MineRLObtainDiamondDense-v0", 18000, "Obtain", dense=True)
MINERL_OBTAIN_IRON_PICKAXE_V0 = EnvSpec("MineRLObtainIronPickaxe-v0", 6000, "Obtain")
MINERL_OBTAIN_IRON_PICKAXE_DENSE_V0 = EnvSpec("MineRLObtainIronPickaxeDense-v0", 6000, "Obtain", dense=True)

ENV_SPECS = [v for v in list(globals().values()) if isinstance(v, EnvSpec)]
ENV_SPEC_MAPPINGS = {spec.name: spec for spec in ENV_SPECS}
BASIC_ENV_SPECS = list(ENV_SPECS)
