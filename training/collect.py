"""Collect episodes from a real env into a dataset, through a gymnasium vector env.

Sub-envs autoreset in the same step (gymnasium's SAME_STEP mode): when one ends, its
last frame and ground truth arrive in ``info["final_obs"]`` / ``info["final_info"]``,
and the observation is already the first frame of its next episode. Each finished
episode is written at once, atomically; episodes still running when the step budget is
spent are written too, marked truncated.

Sub-env k is seeded with seed + k. A dataset records the seeds of every collect into it,
and a collect whose seeds were used before moves on to the first free ones (and says so):
the same seed replays the same episodes, and a copy of a train episode in test leaks.
A sub-env process that dies ends the collect with an error; nothing waits on it forever.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from worldsim.dataset import PROBE_SEEDS_START, DatasetError, DatasetWriter, Episode, load_meta
from worldsim.spaces import space_to_dict


class CollectError(DatasetError):
    """Collecting failed part way (a sub-env process died); the finished episodes are kept.
    A DatasetError, so the CLI reports it as a message."""


@dataclass
class _Recording:
    frames: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    rewards: list = field(default_factory=list)
    terminated: list = field(default_factory=list)
    truncated: list = field(default_factory=list)
    gt: list = field(default_factory=list)

    def start(self, frame, gt):
        self.frames.append(frame)
        self.gt.append(gt)

    def add(self, action, reward, terminated, truncated, frame, gt):
        self.actions.append(action)
        self.rewards.append(reward)
        self.terminated.append(terminated)
        self.truncated.append(truncated)
        self.start(frame, gt)

    def episode(self, attrs) -> Episode:
        gt = {k: np.stack([g[k] for g in self.gt]) for k in self.gt[0]} if self.gt and self.gt[0] else {}
        return Episode(np.stack(self.frames), np.asarray(self.actions), np.asarray(self.rewards, np.float32),
                       np.asarray(self.terminated, bool), np.asarray(self.truncated, bool), gt, attrs)


def _row(infos: dict, i: int) -> dict:
    """Sub-env i's ground truth out of a vector env's batched info."""
    gt = infos.get("gt", {})
    return {k: np.asarray(v[i]) for k, v in gt.items() if not k.startswith("_")}


def _fail_dead_worker(env, what: str, written: int, out: str):
    """End the collect after a sub-env process died: stop the others (they would wait for
    it forever) and raise an error naming it."""
    deadline = time.monotonic() + 5  # its pipe can close just before the process is reaped
    while not (dead := [i for i, p in enumerate(env.processes) if not p.is_alive()]) and time.monotonic() < deadline:
        time.sleep(0.05)
    who = ", ".join(f"sub-env {i} (exit code {env.processes[i].exitcode})" for i in dead) or "a sub-env"
    for p in env.processes:
        p.kill()
    for pipe in env.parent_pipes:  # so that env.close(terminate=True) waits on none
        pipe.close()
    raise CollectError(f"the worker process of {who} died during {what}; collect stopped. The {written} "
                       f"episodes finished before are kept in {out}; collect again to add more")


def _await_workers(env, what: str, written: int, out: str):
    """Wait for the answers of an async vector env's sub-env processes, checking that they
    live: a dead worker never answers, and a child process of it (ViZDoom's game) can hold
    its pipe open, so waiting on the pipe alone can last forever."""
    pending = list(range(env.num_envs))
    while pending:
        if not all(p.is_alive() for p in env.processes):
            _fail_dead_worker(env, what, written, out)
        pending = [i for i in pending if not env.parent_pipes[i].poll(0.5)]


def _reset(env, seed: int, out: str):
    if not isinstance(env, gym.vector.AsyncVectorEnv):
        return env.reset(seed=seed)
    env.reset_async(seed=seed)
    _await_workers(env, "reset", 0, out)
    try:
        return env.reset_wait()
    except EOFError:  # a pipe closed by a worker's death
        _fail_dead_worker(env, "reset", 0, out)


def _step(env, actions, written: int, out: str):
    if not isinstance(env, gym.vector.AsyncVectorEnv):
        return env.step(actions)
    env.step_async(actions)
    _await_workers(env, "a step", written, out)
    try:
        return env.step_wait()
    except EOFError:
        _fail_dead_worker(env, "a step", written, out)


def check_env_id(env_id: str) -> str:
    """The registered id behind `env_id` (`module:Id` imports module first); a clear
    ValueError when it names nothing gymnasium can make."""
    import envs

    return envs.resolve_env_id(env_id)


def collect(env_id: str, policy: str, steps: int, out: str, num_envs: int = 2, seed: int = 0,
            env_kwargs: dict | None = None, progress: bool = True) -> dict:
    """Step `num_envs` copies of `env_id` for `steps` transitions in all; returns a summary."""
    from tqdm import tqdm

    from agents.policies import make_policy
    from envs import action_meanings

    check_env_id(env_id)
    if steps < 1 or num_envs < 1:
        raise ValueError(f"expected steps >= 1 and num_envs >= 1, got steps={steps}, num_envs={num_envs}")
    if not 0 <= seed <= PROBE_SEEDS_START - num_envs:
        raise ValueError(f"expected a seed from 0 to {PROBE_SEEDS_START - num_envs:,}, got {seed:,}: seeds from "
                         f"{PROBE_SEEDS_START:,} on are kept for probes, so that they never replay training episodes")
    env_kwargs = dict(env_kwargs or {})
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="async" if num_envs > 1 else "sync",
                       vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}, **env_kwargs)
    failed = True
    try:
        meta = {"env_id": env_id, "env_kwargs": env_kwargs, "source": "collect",
                "action_space": space_to_dict(env.single_action_space),
                "frame_shape": list(env.single_observation_space.shape)}
        if isinstance(env.single_action_space, gym.spaces.Discrete):
            meta["action_meanings"] = list(action_meanings(env))
        writer = DatasetWriter(out, meta)
        unrecorded = writer.count and "collects" not in load_meta(out)  # a dataset from before seeds were kept
        asked = seed
        seed = writer.claim_seeds(seed, num_envs, {"env_kwargs": env_kwargs, "policy": policy})
        if seed != asked:
            print(f"collect: seeds {asked}-{asked + num_envs - 1} were used by an earlier collect into {out} "
                  f"(the same seeds would record the same episodes); using seeds {seed}-{seed + num_envs - 1}",
                  file=sys.stderr)
        if unrecorded:
            print(f"collect: warning: the {writer.count} episode(s) already in {out} were collected before datasets "
                  f"recorded their seeds; if seeds {seed}-{seed + num_envs - 1} made them, they are recorded again "
                  "(pass a --seed they did not use)", file=sys.stderr)
        agent = make_policy(policy, env, seed=seed)
        written, returns, t0 = 0, [], time.perf_counter()
        obs, infos = _reset(env, seed, out)
        recordings = [_Recording() for _ in range(num_envs)]
        for i, rec in enumerate(recordings):
            rec.start(obs[i], _row(infos, i))
        attrs = {"env_id": env_id, "policy": policy}
        bar = tqdm(total=steps, desc=f"collect {env_id}", unit="step", disable=not progress, mininterval=0.5)
        done_steps = 0
        while done_steps < steps:
            actions = agent.act(obs, infos)
            obs, rewards, terminated, truncated, infos = _step(env, actions, written, out)
            for i in range(num_envs):
                ended = terminated[i] or truncated[i]
                frame, gt = (infos["final_obs"][i], _row(infos["final_info"], i)) if ended else (obs[i], _row(infos, i))
                recordings[i].add(actions[i], rewards[i], terminated[i], truncated[i], frame, gt)
                if ended:
                    writer.write(recordings[i].episode(attrs))
                    written += 1
                    returns.append(float(np.sum(recordings[i].rewards)))
                    recordings[i] = _Recording()
                    recordings[i].start(obs[i], _row(infos, i))
                    agent.reset(i)
            done_steps += num_envs
            bar.update(num_envs)
            bar.set_postfix(episodes=written, refresh=False)
        for rec in recordings:  # cut short by the step budget: keep them, marked truncated
            if rec.actions:
                rec.truncated[-1] = True
                writer.write(rec.episode(attrs))
                written += 1
        bar.close()
        failed = False
    finally:
        env.close(terminate=failed)  # after a failure a graceful close would wait on the workers
    seconds = time.perf_counter() - t0
    return {"env_id": env_id, "policy": policy, "seed": seed, "steps": done_steps, "episodes_written": written,
            "finished_episode_return_mean": float(np.mean(returns)) if returns else None,
            "seconds": seconds, "steps_per_second": done_steps / seconds, "out": str(out)}
