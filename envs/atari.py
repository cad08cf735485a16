"""Atari through ale-py, with the console RAM as ground truth.

The raw ALE env runs at frameskip 1 with sticky actions off; the shared wrappers add
frame-skip and resize, exactly as for the other sources.
"""

from __future__ import annotations

import gymnasium as gym

GAMES = ("Pong", "Breakout", "Boxing", "MsPacman", "Freeway", "SpaceInvaders")


class AtariRAM(gym.Wrapper):
    """Put the 128 bytes of console RAM in info["gt"]["ram"], and the action names on the env."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.action_meanings = tuple(env.unwrapped.get_action_meanings())

    def _info(self, info):
        return dict(info, gt={"ram": self.env.unwrapped.ale.getRAM().copy()})

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, self._info(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, self._info(info)


def make_atari(game: str = "Pong", render_mode: str | None = None, max_episode_steps: int = 27000) -> gym.Env:
    import ale_py  # optional dependency: pip install 'worldsim[games]'

    if game not in GAMES:
        raise ValueError(f"unknown Atari game {game!r}; expected one of {GAMES}")
    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.0, render_mode=render_mode,
                   max_episode_steps=max_episode_steps)
    return AtariRAM(env)
