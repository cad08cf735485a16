"""Train an agent inside the dream and score it in the real env (World Models, DIAMOND).

    worldsim imagine --checkpoint worldsim/checkpoints/rooms.safetensors --algo ppo --steps 50000 --out runs/imagine

The agent (stable-baselines3 PPO or A2C, or World Models' linear controller evolved by
CMA-ES, agents/controller.py) sees only the batched dream: pixels decoded from the world
model (CnnPolicy) or its latents (MlpPolicy, controller), stacked over the last few steps
if asked, rewards and ends from the model's heads. It is then scored over K episodes of
the real env, which the dream never touches: the real env's own rewards are summed. With
latent observations, real frames are encoded by the world model's tokenizer, so the
agent sees the same kind of input in both.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from worldsim.dataset import EVAL_SEEDS_START

ALGOS = ("ppo", "a2c", "cmaes")


@dataclass
class ImagineConfig:
    checkpoint: str | None = None  # world model (default: the shipped Rooms model)
    out: str = "runs/imagine"  # report.json, the agent, plots and videos
    algo: str = "ppo"  # ppo | a2c (stable-baselines3) | cmaes (World Models' linear controller, agents/controller.py)
    steps: int = 50_000  # agent steps in the dream
    obs: str = "rgb"  # rgb (CnnPolicy on decoded frames) | latent (MlpPolicy or controller on latents)
    frame_stack: int = 1  # observations stacked over this many steps (SB3's VecFrameStack): the agent sees motion
    num_envs: int = 16  # ppo/a2c: dream envs stepped together
    population: int = 32  # cmaes: candidate controllers per generation
    rollouts: int = 2  # cmaes: dream episodes each candidate is scored on
    horizon: int = 200  # episode length limit, in the dream and in the real env
    eval_episodes: int = 10  # real episodes the agent is scored on
    eval_every: int = 0  # also score it in the real env every this many dream steps, the exploitation gap (0: only at the end)
    seed: int = 0
    device: str = "cpu"  # where the world model dreams (cuda on a GPU); the agent learns on the CPU
    memory: bool | None = None  # the dream's latent memory on or off (neither: on when the model has one)
    sample_ends: bool = False  # draw dream terminations from the head's probability (see dream_env)
    whole_rewards: bool = False  # round each dream reward to the nearest whole number (games that pay whole rewards, as Rooms' objects): the head's small outputs where it is unsure pay nothing, so they cannot be farmed
    uncertainty_penalty: float = 0.0  # subtract this times the dream's uncertainty from each dream reward (Dropout's Dream Land): less to gain where the model does not know what comes next; 0 = off


class LatentObservation(gym.ObservationWrapper):
    """Real frames -> the world model's latents, so a latent agent runs in the real env."""

    def __init__(self, env, model):
        super().__init__(env)
        self.model = model
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, model.dynamics.cfg.latent_shape, np.float32)

    def observation(self, frame):
        self.last_frame = frame  # what a person watching the episode sees
        with torch.no_grad():
            return self.model.encode(frame[None, None])[0, 0].cpu().numpy().astype(np.float32)


def real_env(env_id: str, env_kwargs: dict, horizon: int, obs: str = "rgb", model=None):
    """The real env the dream imitates, with the same episode limit and observations."""
    import envs  # noqa: F401  (registers the gameplay ids)

    env = gym.make(env_id, **env_kwargs)
    env = gym.wrappers.TimeLimit(env, horizon)
    return LatentObservation(env, model) if obs == "latent" else env


def new_agent(algo: str, env, obs: str, seed: int, steps: int = 50_000, verbose: int = 0):
    """PPO (rollouts of up to 128 steps per env, fewer for short runs) or A2C."""
    from stable_baselines3 import A2C, PPO

    if algo not in ("ppo", "a2c"):
        raise ValueError(f"unknown stable-baselines3 algo {algo!r}; expected 'ppo' or 'a2c'")
    policy = "CnnPolicy" if obs == "rgb" else "MlpPolicy"
    if algo == "ppo":
        n_steps = int(np.clip(steps // (4 * env.num_envs), 8, 128))
        return PPO(policy, env, n_steps=n_steps, batch_size=min(256, n_steps * env.num_envs), n_epochs=4,
                   learning_rate=2.5e-4, ent_coef=0.01, clip_range=0.1, seed=seed, verbose=verbose, device="cpu")
    return A2C(policy, env, n_steps=8, ent_coef=0.01, seed=seed, verbose=verbose, device="cpu")


def scaled_rewards(venv):
    """PPO and A2C learn from rewards divided by a running spread of the discounted return
    (SB3's VecNormalize, rewards only; observations and the returns reported stay raw).
    TakeCover pays 4 tics a step: unscaled, value targets in the hundreds swamp the CNN
    the value and the policy share, and PPO settles on one action."""
    from stable_baselines3.common.vec_env import VecNormalize

    return VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=0.99)


def return_curve(bar=None, every: int = 0, on_every=None):
    """An SB3 callback keeping (timestep, episode return) of finished episodes (from
    VecMonitor) in `.points`, and showing the recent mean on a tqdm bar; calls
    `on_every(timesteps, recent dream return, agent)` each time `every` more steps are done."""
    from stable_baselines3.common.callbacks import BaseCallback

    class ReturnCurve(BaseCallback):
        def __init__(self):
            super().__init__()
            self.points = []
            self.next_call = every

        def _on_training_start(self):
            self.next_call = self.num_timesteps + every  # a continued agent counts from where it is

        def _on_rollout_end(self):
            if every and on_every is not None and self.num_timesteps >= self.next_call:
                self.next_call += every
                recent = [r for _, r in self.points[-20:]]
                on_every(int(self.num_timesteps), float(np.mean(recent)) if recent else None, self.model)

        def _on_step(self):
            for info in self.locals.get("infos", []):
                if "episode" in info:
                    self.points.append((int(self.num_timesteps), float(info["episode"]["r"])))
            if bar is not None:
                bar.n = int(self.num_timesteps)
                recent = [r for _, r in self.points[-20:]]
                bar.set_postfix(episode_return=f"{np.mean(recent):.2f}" if recent else "-", refresh=False)
                bar.update(0)
            return True
    return ReturnCurve()


def train_in_dream(model, cfg: ImagineConfig, agent=None, progress: bool = True, init_policy=None, on_every=None):
    """PPO/A2C on the batched dream for cfg.steps steps; returns (agent, curve points).
    Continues `agent` when given; a new agent may start from saved policy weights.
    `on_every(dream steps, recent dream return, agent)` runs every cfg.eval_every steps."""
    from stable_baselines3.common.vec_env import VecFrameStack, VecMonitor
    from tqdm import tqdm

    from agents.sb3_vec_env import SB3DreamVecEnv

    venv = VecMonitor(SB3DreamVecEnv(cfg.num_envs, checkpoint=model, obs_type=cfg.obs, max_steps=cfg.horizon,
                                     memory=cfg.memory, sample_ends=cfg.sample_ends,
                                     uncertainty_penalty=cfg.uncertainty_penalty, whole_rewards=cfg.whole_rewards))
    if cfg.frame_stack > 1:
        venv = VecFrameStack(venv, cfg.frame_stack)
    venv = scaled_rewards(venv)
    venv.seed(cfg.seed)
    if agent is None:
        agent = new_agent(cfg.algo, venv, cfg.obs, cfg.seed, cfg.steps)
        if init_policy is not None:
            from agents.policies import load_agent
            agent.policy.load_state_dict(load_agent(init_policy).state_dict())
    else:
        agent.set_env(venv)
    start = agent.num_timesteps
    with tqdm(total=start + cfg.steps, initial=start, desc="agent in the dream", unit="step",
              disable=not progress, mininterval=1) as bar:
        curve = return_curve(bar, cfg.eval_every, on_every)
        agent.learn(cfg.steps, callback=curve, reset_num_timesteps=False, progress_bar=False)
    return agent, curve.points


def evaluate(act, env, episodes: int, seed: int = 0, record: int = 0, frame_stack: int = 1):
    """Returns of `act(obs) -> action` over real episodes; frames of the first `record`.
    With frame_stack > 1, `act` sees the last observations stacked as in training."""
    stack = None
    if frame_stack > 1:
        from stable_baselines3.common.vec_env.stacked_observations import StackedObservations

        stack = StackedObservations(1, frame_stack, env.observation_space)
    returns, lengths, frames, unlocked = [], [], [], []
    for k in range(episodes):
        obs, info = env.reset(seed=seed + k)
        view = stack.reset(obs[None])[0] if stack else obs
        done, total, n = False, 0.0, 0
        while not done:
            if k < record:
                frames.append(env.last_frame if isinstance(env, LatentObservation) else obs)
            obs, reward, terminated, truncated, info = env.step(act(view))
            total, n, done = total + float(reward), n + 1, terminated or truncated
            view = stack.update(obs[None], np.array([False]), [{}])[0][0] if stack else obs
        returns.append(total)
        lengths.append(n)
        if "achievements" in info.get("gt", {}):
            unlocked.append(np.asarray(info["gt"]["achievements"]) > 0)
    report = summary(returns) | {"length_mean": float(np.mean(lengths))}
    return (report | achievement_score(unlocked) if unlocked else report), frames


def achievement_score(unlocked) -> dict:
    """For envs whose ground truth counts achievements (Crafter): each one's success rate
    (the share of episodes that unlocked it, in percent) and Crafter's score (Hafner
    2021), their geometric mean with 1 added to each so that one never unlocked does not
    zero it: exp(mean(ln(1 + rate))) - 1; its standard error by bootstrap over episodes."""
    from envs.crafter_env import ACHIEVEMENTS

    unlocked = np.asarray(unlocked, bool)

    def score(episodes):
        return float(np.exp(np.log1p(100 * episodes.mean(0)).mean()) - 1)

    rng = np.random.default_rng(0)  # its standard error: the spread of the score over resampled episodes
    resampled = [score(unlocked[rng.integers(len(unlocked), size=len(unlocked))]) for _ in range(1000)]
    return {"achievement_score": score(unlocked), "achievement_score_stderr": float(np.std(resampled)),
            "success_rates": dict(zip(ACHIEVEMENTS, (100 * unlocked.mean(0)).round(2).tolist()))}


def summary(returns) -> dict:
    """Mean, spread and standard error of episode returns."""
    returns = [float(r) for r in returns]
    std = float(np.std(returns))
    return {"returns": returns, "mean": float(np.mean(returns)), "std": std,
            "stderr": std / np.sqrt(len(returns) - 1) if len(returns) > 1 else None, "episodes": len(returns)}


def agent_actor(agent, deterministic: bool = False):
    return lambda obs: int(agent.predict(obs, deterministic=deterministic)[0])


def random_actor(space, seed: int = 0):
    space.seed(seed)
    return lambda obs: space.sample()


def imagine(cfg: ImagineConfig, progress: bool = True) -> dict:
    """Train in the dream, score in the real env; writes the agent, report and videos to cfg.out."""
    from worldsim.dream_env import load_world_model
    from worldsim.dream_video import write_video

    if cfg.obs not in ("rgb", "latent"):
        raise ValueError(f"obs must be 'rgb' or 'latent', got {cfg.obs!r}")
    if cfg.algo not in ALGOS:
        raise ValueError(f"unknown algo {cfg.algo!r}; expected one of {ALGOS}")
    if cfg.frame_stack < 1:
        raise ValueError(f"frame_stack must be at least 1, got {cfg.frame_stack}")
    model = load_world_model(cfg.checkpoint, device=cfg.device)
    env_id, env_kwargs = model.info.get("env_id"), model.info.get("env_kwargs") or {}
    if not env_id:
        raise ValueError("the world model names no real env (info['env_id']); it was trained on footage without one")
    import envs

    envs.resolve_env_id(env_id)  # the real env must exist before the agent trains for it
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    env = real_env(env_id, env_kwargs, cfg.horizon, cfg.obs, model)
    seed = EVAL_SEEDS_START + cfg.seed
    gap = []  # (dream steps, dream return, real return): the exploitation gap over training

    def score_now(steps, dream_return, act):  # along the way: a cheaper estimate, on at most 20 episodes
        real = evaluate(act, env, min(cfg.eval_episodes, 20), seed, frame_stack=cfg.frame_stack)[0]["mean"]
        gap.append((steps, dream_return, real))

    t0 = time.perf_counter()
    if cfg.algo == "cmaes":
        from agents.controller import train_cmaes

        last = [0]

        def on_generation(generation, steps, controller, mean_in_dream):
            if cfg.eval_every and steps - last[0] >= cfg.eval_every:
                last[0] = steps
                score_now(steps, mean_in_dream(), controller)
        agent, curve, mean_in_dream = train_cmaes(model, cfg, progress, on_generation)
        act, dream_steps, dream_return = agent, curve[-1][0] if curve else 0, mean_in_dream()
        agent.save(out / "agent")
    else:
        from agents.policies import save_agent

        agent, curve = train_in_dream(model, cfg, progress=progress,
                                      on_every=lambda steps, dream, agent: score_now(steps, dream, agent_actor(agent)))
        act, dream_steps = agent_actor(agent), agent.num_timesteps
        dream_return = float(np.mean([r for _, r in curve[-20:]])) if curve else None  # its last training episodes
        save_agent(agent, out / "agent", frame_stack=cfg.frame_stack)
    dream_seconds = time.perf_counter() - t0
    real, frames = evaluate(act, env, cfg.eval_episodes, seed=seed, record=2, frame_stack=cfg.frame_stack)
    rand, _ = evaluate(random_actor(env.action_space, cfg.seed), env, cfg.eval_episodes, seed=seed)
    env.close()
    gap.append((int(dream_steps), dream_return, real["mean"]))
    if frames:
        write_video(out / "real_episodes.mp4", np.stack(frames))
    plot_curves(out / "dream_curve.png",
                {"dream return (per episode)" if cfg.algo != "cmaes" else "dream return (generation mean)": curve,
                 "real return of the agent so far": [(s, r) for s, _, r in gap]},
                title=f"agent in the dream: {env_id}",
                hlines={"real return of the agent": real["mean"], "real return of a random policy": rand["mean"]})
    report = {"config": asdict(cfg), "env_id": env_id, "dream_steps": int(dream_steps),
              "dream_seconds": round(dream_seconds, 1), "dream_return": dream_return,
              "real": real, "random_policy_real": rand, "exploitation_gap": gap, "dream_curve": curve}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return {k: v for k, v in report.items() if k != "dream_curve"}


def plot_curves(path, curves: dict, title: str, hlines: dict | None = None, xlabel: str = "agent steps"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, points in curves.items():
        if points:
            x, y = np.array(points, float).T
            ax.plot(x, y, ".", alpha=0.25, ms=3)
            k = max(1, len(y) // 20)
            ax.plot(x[k - 1:], np.convolve(y, np.ones(k) / k, "valid"), "o-" if len(y) < 20 else "-",
                    label=label + (f" (mean of {k})" if k > 1 else ""))
    for (label, value), style in zip((hlines or {}).items(), ("--", ":", "-.")):
        ax.axhline(value, ls=style, c="k", lw=1, label=f"{label}: {value:.2f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
