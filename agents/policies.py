"""Batched behaviour policies for data collection: random, sticky, explore, or a trained agent.

A policy acts on a whole vector env at once: ``act(obs, infos) -> actions`` with one
row per sub-env, and ``reset(i)`` when sub-env i starts a new episode.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np

from envs import GRID_MOVES


class RandomPolicy:
    """Uniform random actions from the single-env action space."""

    def __init__(self, action_space: gym.Space, num_envs: int, seed: int = 0):
        self.space, self.num_envs = action_space, num_envs
        self.space.seed(seed)

    def reset(self, i: int):
        pass

    def act(self, obs, infos):
        return np.array([self.space.sample() for _ in range(self.num_envs)])


class StickyPolicy:
    """Random actions, each held for a random number of steps, log-uniform from 1 to
    `max_hold`: a world model sees standing still, moving at full speed and pressing
    against a wall for as long as an agent will, which uniform random play (a new action
    every step) almost never shows."""

    def __init__(self, action_space: gym.Space, num_envs: int, seed: int = 0, max_hold: int = 32):
        self.space, self.num_envs, self.max_hold = action_space, num_envs, max_hold
        self.space.seed(seed)
        self.rng = np.random.default_rng(seed)
        self.action, self.left = [None] * num_envs, np.zeros(num_envs, int)

    def reset(self, i: int):
        self.left[i] = 0

    def act(self, obs, infos):
        for i in range(self.num_envs):
            if self.left[i] <= 0:
                self.action[i] = self.space.sample()
                self.left[i] = int(np.exp(self.rng.uniform(0, np.log(self.max_hold + 1))))
            self.left[i] -= 1
        return np.array(self.action)


class ExplorePolicy:
    """Scripted exploration that shows a world model the 3D structure of the world.

    Each sub-env runs a sequence of routines, drawn at random:
      circle       turn in place through one to one and a half circles (views that must
                   line up again)
      look_back    turn away, wait, turn back: a view returns after it left the context
                   window, which is what teaches the memory to bring it back
      corridor     walk forward until blocked, then turn
      out_and_back walk out, turn half a circle, walk back, turn again (leave and return)
      wander       sticky random actions, including strafes and back-steps

    In a top-down grid world (move_left/right/up/down among the actions, as Crafter) the
    routines walk cells instead, so the data crosses terrain that random play near the
    spawn rarely reaches:
      stride       walk three to twelve cells one way
      out_and_back walk out, wait up to a dozen noops (or none), walk the same cells back
      work         step to face a neighbour cell, then act on it ("do") a few times
      wander       sticky random actions (all of them: crafting, placing, sleeping)

    What it uses of the env, each optional (any Gymnasium env with Discrete actions works):
      action_meanings  names of the actions (attribute, through wrappers); the walking
                       routines need FORWARD (or MOVE_FORWARD), TURN_LEFT and TURN_RIGHT,
                       and NOOP for waits. Without them: sticky random actions.
      turn_steps       turns in a full circle (attribute); default 24.
      info["gt"]["pose"]  (x, y, yaw) per step. Blocked means a FORWARD step moved the
                       pose less than a quarter of the median FORWARD step seen so far
                       (in any units, so physics envs that creep along walls count as
                       blocked), or, without a pose, changed the frame by less than 1/255
                       on average.
    """

    def __init__(self, action_meanings, num_envs: int, turn_steps: int = 24, seed: int = 0):
        self.names = {n: i for i, n in enumerate(action_meanings)}
        self.n_actions = len(action_meanings)
        self.forward = self._first("FORWARD", "MOVE_FORWARD")
        self.left, self.right = self._first("TURN_LEFT"), self._first("TURN_RIGHT")
        self.can_walk = None not in (self.forward, self.left, self.right)
        self.grid = [self.names[n] for n in GRID_MOVES if n in self.names]
        self.grid = self.grid if len(self.grid) == len(GRID_MOVES) else None
        self.turn_steps, self.num_envs = turn_steps, num_envs
        self.rng = np.random.default_rng(seed)
        self.plans = [[] for _ in range(num_envs)]
        self.last_pose = [None] * num_envs
        self.last_frame = [None] * num_envs
        self.last_action = [None] * num_envs
        self.strides = []  # distances of recent FORWARD steps: the scale that "blocked" is judged on

    def _first(self, *names):
        return next((self.names[n] for n in names if n in self.names), None)

    def reset(self, i: int):
        self.plans[i], self.last_pose[i], self.last_frame[i], self.last_action[i] = [], None, None, None

    def _routine(self) -> list:
        rng, half = self.rng, max(1, self.turn_steps // 2)
        sticky = lambda n: [int(a) for a in rng.integers(self.n_actions, size=n // 3 + 1) for _ in range(3)][:n]  # noqa: E731
        if self.grid:
            return self._grid_routine(sticky)
        if not self.can_walk:
            return [int(rng.integers(self.n_actions))] * int(rng.integers(2, 9))
        kind = rng.choice(["circle", "look_back", "corridor", "out_and_back", "wander"], p=[0.2, 0.15, 0.3, 0.2, 0.15])
        turn, back = (self.left, self.right) if rng.random() < 0.5 else (self.right, self.left)
        if kind == "circle":
            return [turn] * int(rng.integers(self.turn_steps, self.turn_steps * 3 // 2 + 1))
        if kind == "look_back":
            k = int(rng.integers(min(3, half), half + 1))
            wait = [self.names["NOOP"]] * int(rng.integers(0, 13)) if "NOOP" in self.names else []
            return [turn] * k + wait + [back] * k
        if kind == "corridor":
            return ["until_blocked"] * 40 + [turn] * int(rng.integers(min(2, half), half + 1))
        if kind == "out_and_back":
            k = int(rng.integers(4, 13))
            return [self.forward] * k + [turn] * half + [self.forward] * k + [turn] * half
        return sticky(int(rng.integers(5, 16)))

    def _grid_routine(self, sticky) -> list:
        rng = self.rng
        kind = rng.choice(["stride", "out_and_back", "work", "wander"], p=[0.35, 0.25, 0.2, 0.2])
        way = int(rng.integers(4))
        there, back = self.grid[way], self.grid[way ^ 1]  # GRID_MOVES pairs opposites: left/right, up/down
        if kind == "stride":
            return [there] * int(rng.integers(3, 13))
        if kind == "out_and_back":
            k, noop = int(rng.integers(2, 9)), self.names.get("noop", self.names.get("NOOP"))
            wait = [noop] * int(rng.integers(0, 13)) if noop is not None and rng.random() < 0.5 else []
            return [there] * k + wait + [back] * k
        if kind == "work" and "do" in self.names:
            return [there] * int(rng.integers(1, 4)) + [self.names["do"]] * int(rng.integers(2, 7))
        return sticky(int(rng.integers(5, 16)))

    def _blocked(self, i: int, pose, frame) -> bool:
        if self.last_action[i] != self.forward:
            return False
        if pose is not None and self.last_pose[i] is not None:
            moved = float(np.linalg.norm(pose[:2] - self.last_pose[i][:2]))
            self.strides = (self.strides + [moved])[-200:]
            return moved < 0.25 * float(np.median(self.strides)) or moved < 1e-9
        if frame is not None and self.last_frame[i] is not None:
            return float(np.abs(frame.astype(np.float32) - self.last_frame[i]).mean()) < 1.0
        return False

    def _next(self, i: int, pose, frame) -> int:
        plan = self.plans[i]
        if plan and plan[0] == "until_blocked" and self._blocked(i, pose, frame):
            while plan and plan[0] == "until_blocked":
                plan.pop(0)
        if not plan:
            plan.extend(self._routine())
        step = plan.pop(0)
        return self.forward if step == "until_blocked" else step

    def act(self, obs, infos):
        poses = infos.get("gt", {}).get("pose") if isinstance(infos.get("gt"), dict) else None
        actions = np.zeros(self.num_envs, dtype=np.int64)
        for i in range(self.num_envs):
            pose = None if poses is None else np.asarray(poses[i], dtype=np.float64)
            frame = np.asarray(obs[i]) if np.ndim(obs[i]) == 3 else None
            actions[i] = self._next(i, pose, frame)
            self.last_pose[i], self.last_action[i] = pose, actions[i]
            self.last_frame[i] = None if frame is None else frame.astype(np.float32)
        return actions


class AgentPolicy:
    """A stable-baselines3 policy loaded from weights (see save_agent)."""

    def __init__(self, policy, num_envs: int, deterministic: bool = False):
        self.policy, self.num_envs, self.deterministic = policy, num_envs, deterministic

    def reset(self, i: int):
        pass

    def act(self, obs, infos):
        actions, _ = self.policy.predict(obs, deterministic=self.deterministic)
        return actions


_SB3_POLICIES = ("CnnPolicy", "MlpPolicy")


def save_agent(model, path: str | Path, frame_stack: int = 1):
    """Save an SB3 model's policy as safetensors weights plus a JSON description (with
    how many observations it sees stacked).

    SB3's own zip unpickles objects on load; this pair never runs code from a file.
    """
    from safetensors.torch import save_model

    from worldsim.spaces import space_to_dict

    path = Path(path).with_suffix("")
    policy_name = {"ActorCriticCnnPolicy": "CnnPolicy", "ActorCriticPolicy": "MlpPolicy"}.get(
        type(model.policy).__name__)
    if policy_name is None:
        raise ValueError(f"save_agent supports {_SB3_POLICIES}, got {type(model.policy).__name__}")
    obs = model.observation_space
    desc = {"algo": type(model).__name__, "policy": policy_name, "frame_stack": frame_stack,
            "action_space": space_to_dict(model.action_space),
            "observation_space": {"shape": list(obs.shape), "dtype": str(obs.dtype),
                                  "low": float(np.min(obs.low)), "high": float(np.max(obs.high))}}
    tmp = path.with_name(f".{path.name}.tmp")
    save_model(model.policy, str(tmp))  # handles the feature extractor shared by actor and critic
    tmp.replace(path.with_suffix(".safetensors"))
    path.with_suffix(".json").write_text(json.dumps(desc, indent=2))


def load_agent(path: str | Path):
    """Rebuild an SB3 actor-critic policy from save_agent's files (weights only)."""
    from safetensors.torch import load_model
    from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy

    from worldsim.spaces import space_from_dict

    path = Path(path).with_suffix("")
    weights, desc_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not weights.exists() or not desc_path.exists():
        raise FileNotFoundError(f"expected an agent saved by worldsim: {weights} and {desc_path}")
    desc = json.loads(desc_path.read_text())
    o = desc["observation_space"]
    obs_space = gym.spaces.Box(o["low"], o["high"], tuple(o["shape"]), np.dtype(o["dtype"]))
    cls = {"CnnPolicy": ActorCriticCnnPolicy, "MlpPolicy": ActorCriticPolicy}[desc["policy"]]
    policy = cls(obs_space, space_from_dict(desc["action_space"]), lr_schedule=lambda _: 0.0)
    load_model(policy, str(weights))
    policy.set_training_mode(False)
    return policy


def make_policy(spec: str, env: gym.vector.VectorEnv, seed: int = 0):
    """'random', 'sticky', 'explore', or the path of an agent saved with save_agent."""
    if spec == "random":
        return RandomPolicy(env.single_action_space, env.num_envs, seed)
    if spec == "sticky":
        return StickyPolicy(env.single_action_space, env.num_envs, seed)
    if spec == "explore":
        from envs import action_meanings, optional_attr

        if not isinstance(env.single_action_space, gym.spaces.Discrete):
            raise ValueError(f"the explore policy needs a Discrete action space, got {env.single_action_space}; "
                             "use --policy random")
        return ExplorePolicy(action_meanings(env), env.num_envs, turn_steps=optional_attr(env, "turn_steps", 24), seed=seed)
    if Path(spec).with_suffix(".safetensors").exists():
        desc_path = Path(spec).with_suffix(".json")
        desc = json.loads(desc_path.read_text()) if desc_path.exists() else {}
        seen = tuple(desc.get("observation_space", {}).get("shape", ()))
        frames = env.single_observation_space.shape
        channels_first = (frames[-1], *frames[:-1])  # how SB3's CnnPolicy sees images
        if desc.get("policy") == "LinearController" or seen not in (frames, channels_first):
            raise ValueError(f"{spec} acts on observations of shape {seen or tuple(desc.get('obs_shape', ()))} "
                             f"(frame stack {desc.get('frame_stack', 1)}), not the env's frames "
                             f"{env.single_observation_space.shape}; collect plays only single-frame pixel agents "
                             "(--obs rgb --frame-stack 1, algo ppo or a2c), 'random' or 'explore'")
        return AgentPolicy(load_agent(spec), env.num_envs)
    raise ValueError(f"unknown policy {spec!r}; expected 'random', 'sticky', 'explore' or the path of an agent saved by worldsim "
                     f"(PATH.safetensors with PATH.json)")
