"""The batched dream as a stable-baselines3 VecEnv: one forward pass steps every sub-env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv


class SB3DreamVecEnv(VecEnv):
    """Adapts a DreamVectorEnv (same-step autoreset) to SB3's VecEnv API: terminal
    observations go to info["terminal_observation"], time-limit ends are flagged. With
    `uncertainty_penalty` w > 0 each reward is lowered by w times the step's uncertainty
    (info["uncertainty"], the spread of two samples of the frame), and the raw reward is
    kept in info["dream_reward"]. With `whole_rewards` each reward is rounded to the
    nearest whole number first, for games that pay whole rewards (a Rooms object is worth
    1): a reward head's small outputs on steps it is unsure of then pay nothing, where
    an agent could otherwise farm them step after step."""

    def __init__(self, num_envs: int = 8, uncertainty_penalty: float = 0.0, whole_rewards: bool = False,
                 **dream_kwargs):
        from worldsim.dream_env import DreamVectorEnv

        if uncertainty_penalty < 0:
            raise ValueError(f"uncertainty_penalty must be >= 0, got {uncertainty_penalty}")
        self.penalty, self.whole_rewards = uncertainty_penalty, whole_rewards
        self.venv = DreamVectorEnv(num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
                                   uncertainty=uncertainty_penalty > 0, **dream_kwargs)
        super().__init__(num_envs, self.venv.single_observation_space, self.venv.single_action_space)
        self._actions = None
        self._seed = None

    def reset(self):
        obs, _ = self.venv.reset(seed=self._seed)
        self._seed = None
        return obs

    def step_async(self, actions):
        self._actions = actions

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        dones = terminated | truncated
        infos = [{} for _ in range(self.num_envs)]
        if self.penalty or self.whole_rewards:
            for i in range(self.num_envs):
                infos[i]["dream_reward"] = float(rewards[i])
        if self.whole_rewards:
            rewards = np.round(rewards)
        if self.penalty:
            rewards = rewards - self.penalty * info["uncertainty"]
        for i in np.nonzero(dones)[0]:
            infos[i]["terminal_observation"] = info["final_obs"][i]
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, rewards.astype(np.float32), dones, infos

    def seed(self, seed=None):
        self._seed = seed
        return [seed] * self.num_envs

    def close(self):
        pass

    def get_attr(self, attr_name, indices=None):
        return [getattr(self.venv, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name, value, indices=None):
        setattr(self.venv, attr_name, value)

    def get_images(self):
        """The sub-envs' current frames, decoded to RGB (also with latent observations)."""
        frames = self.venv.render()
        if frames is None:
            raise RuntimeError("SB3DreamVecEnv.get_images() called before reset(); call reset() first")
        return list(frames)

    def env_method(self, method_name, *args, indices=None, **kwargs):
        raise NotImplementedError("the sub-envs of a batched dream share one model; call methods on .venv")

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * len(self._indices(indices))

    def _indices(self, indices):
        return range(self.num_envs) if indices is None else ([indices] if isinstance(indices, int) else indices)
