"""Drift: PSNR and SSIM against a long real replay of the exploration policy, on any
gameplay env.
"""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np

from envs import action_meanings, optional_attr
from worldsim.probes.common import ROOMS_ID, Probe, ProbeSetup, Scenario, explore_replay, first_env_seed
from worldsim.tokenizer import psnr, ssim


def drift_scenarios(env_id: str, env_kwargs: dict, count: int, context: int, steps: int, seed: int = 0) -> list[Scenario]:
    """Long real replays of the exploration policy (any gameplay env)."""
    length = context + steps + 1  # lift the env's step limit where it can be lifted
    env = (gym.make(env_id, **{**env_kwargs, "max_steps": length}) if env_id == ROOMS_ID
           else gym.make(env_id, max_episode_steps=length, **env_kwargs))
    names, turn_steps = action_meanings(env), optional_attr(env, "turn_steps", 24)
    out = []
    for s in range(first_env_seed(seed), first_env_seed(seed) + count):
        frames, actions, _ = explore_replay(env, s, [None] * (context - 1 + steps), names, turn_steps)
        out.append(Scenario("drift", frames, actions, {}, context, {"seed": s}))
    env.close()
    return out


def score_drift(scenarios, predictions, horizons=(1, 10, 100, 1000)) -> dict:
    """Mean PSNR and SSIM per step after the context, and at the given horizons, over the
    steps every replay reached (an env may end its episodes sooner than asked: `steps`
    says how many were scored)."""
    n = min(len(p) for p in predictions)
    real = np.stack([s.target[:n] for s in scenarios])
    pred = np.stack([p[:n] for p in predictions])
    p_curve = np.minimum(psnr(pred, real), 99.0).mean(0)
    s_curve = np.stack([ssim(pred[:, t], real[:, t]) for t in range(n)], 1).mean(0)
    at = [h for h in horizons if h <= n]
    return {"steps": n, "psnr_db_at": {h: float(p_curve[h - 1]) for h in at},
            "ssim_at": {h: float(s_curve[h - 1]) for h in at},
            "psnr_db_mean": float(p_curve.mean()), "psnr_curve": p_curve.round(3).tolist(),
            "ssim_curve": s_curve.round(4).tolist()}


def drift_headline(score: dict) -> str:
    at = ", ".join(f"{h}:{v:.2f}" for h, v in score["psnr_db_at"].items())
    return f"PSNR dB at step {at}; mean {score['psnr_db_mean']:.2f}"


def drift_probe_scenarios(setup: ProbeSetup) -> list[Scenario]:
    cases = drift_scenarios(setup.env_id, setup.env_kwargs, setup.drift_episodes, setup.context, setup.drift_steps,
                            setup.seed)
    reached = min(len(c.target) for c in cases)
    if reached < setup.drift_steps:  # the env ends its episodes sooner than asked and its limit cannot be lifted
        print(f"probe drift: {setup.env_id} ended an episode after {reached} of the {setup.drift_steps} steps asked; "
              f"drift is scored over {reached} steps", file=sys.stderr, flush=True)
    return cases


PROBE = Probe("drift", drift_probe_scenarios, lambda cases, predictions, reference, setup: score_drift(cases, predictions),
              drift_headline, summary=lambda entry, setup: {"steps_asked": setup.drift_steps})
