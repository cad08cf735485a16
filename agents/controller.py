"""World Models' controller: a linear map from the world model's latents to action
scores, evolved by CMA-ES entirely inside the dream (Ha & Schmidhuber 2018, sec. 2.3, 4).

    worldsim imagine --checkpoint worldsim/checkpoints/takecover.safetensors --algo cmaes --obs latent --frame-stack 2 --steps 200000

A controller this small (one weight per latent number and action) has little room to
exploit flaws of the model that a deep policy finds. It acts on the last `frame_stack`
latents, stacked as stable-baselines3's VecFrameStack stacks them, so it sees motion.
Each generation scores `population` candidates on `rollouts` dream episodes each, all
in one batched dream; the fitness is the mean return of those episodes. The controller
kept is CMA-ES's mean, the estimate it trusts most.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np


class LinearController:
    """action = argmax(W @ features / sqrt(D) + b) over the D flattened, stacked latents
    (the scale puts the biases on a par with the features, whatever D is)."""

    def __init__(self, obs_shape, n_actions: int, params: np.ndarray | None = None):
        self.obs_shape, self.n_actions = tuple(obs_shape), int(n_actions)
        self.obs_dim = int(np.prod(self.obs_shape))
        self.params = np.zeros(self.size, np.float32) if params is None else np.asarray(params, np.float32)
        if self.params.shape != (self.size,):
            raise ValueError(f"a controller for {self.obs_shape} and {n_actions} actions has {self.size} parameters, "
                             f"got {self.params.shape}")

    @property
    def size(self) -> int:
        return (self.obs_dim + 1) * self.n_actions

    def act(self, obs) -> np.ndarray:
        """obs (N, *obs_shape) -> actions (N,)."""
        return batched_actions(self.params[None], np.asarray(obs, np.float32).reshape(1, -1, self.obs_dim))[0]

    def __call__(self, obs) -> int:
        """One observation -> one action (the form evaluate() takes)."""
        return int(self.act(np.asarray(obs)[None])[0])

    def save(self, path):
        """PATH.safetensors (the weights) and PATH.json (what they act on)."""
        from safetensors.numpy import save_file

        path = Path(path).with_suffix("")
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({"params": self.params}, str(tmp))
        tmp.replace(path.with_suffix(".safetensors"))
        path.with_suffix(".json").write_text(json.dumps({"algo": "cmaes", "policy": "LinearController",
                                                         "obs_shape": list(self.obs_shape),
                                                         "n_actions": self.n_actions}, indent=2))

    @classmethod
    def load(cls, path) -> LinearController:
        from safetensors.numpy import load_file

        path = Path(path).with_suffix("")
        desc = json.loads(path.with_suffix(".json").read_text())
        if desc.get("policy") != "LinearController":
            raise ValueError(f"{path}.json describes a {desc.get('policy')!r}, not a LinearController")
        return cls(desc["obs_shape"], desc["n_actions"], load_file(str(path.with_suffix(".safetensors")))["params"])


def batched_actions(params: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """params (P, (D+1)*A) of P controllers, feats (P, M, D) -> actions (P, M)."""
    p, _, d = feats.shape
    w = params.reshape(p, -1, d + 1)  # (P, A, D+1): weights and bias per action
    scores = np.einsum("pmd,pad->pma", feats, w[:, :, :d]) / np.sqrt(d) + w[:, None, :, d]
    return scores.argmax(-1)


def train_cmaes(model, cfg, progress: bool = True, on_generation=None):
    """Evolve a LinearController in the dream until cfg.steps dream steps are spent.
    Dream steps count the steps the candidates' episodes lived (as an SB3 agent's count
    its transitions). Returns (controller, curve of (dream steps, mean fitness of the
    generation), mean_in_dream), where mean_in_dream() is the controller's mean return on
    as many dream episodes as a generation has. `on_generation(generation, dream steps,
    controller, mean_in_dream)` is called after each generation."""
    import cma
    from stable_baselines3.common.vec_env.stacked_observations import StackedObservations
    from tqdm import tqdm

    from worldsim.dream_env import DreamVectorEnv

    if cfg.obs != "latent":
        raise ValueError("--algo cmaes acts on latents: pass --obs latent")
    rows = cfg.population * cfg.rollouts
    env = DreamVectorEnv(rows, checkpoint=model, obs_type="latent", max_steps=cfg.horizon, memory=cfg.memory,
                         sample_ends=cfg.sample_ends, uncertainty=cfg.uncertainty_penalty > 0)
    if not isinstance(env.single_action_space, gym.spaces.Discrete):
        raise ValueError(f"the linear controller picks one of n actions; the model's action space is "
                         f"{env.single_action_space}")
    stack = StackedObservations(rows, cfg.frame_stack, env.single_observation_space)
    obs_shape = stack.stacked_observation_space.shape
    controller = LinearController(obs_shape, env.single_action_space.n)
    # Diagonal covariance (sep-CMA-ES): thousands of parameters, where the full matrix is slow.
    es = cma.CMAEvolutionStrategy(np.zeros(controller.size), 0.1,
                                  {"popsize": cfg.population, "seed": cfg.seed + 1, "CMA_diagonal": True,
                                   "verbose": -9})
    curve, steps, generation = [], 0, 0

    def mean_in_dream() -> float:  # the kept controller (CMA-ES's mean) on as many dream episodes
        fitness, _ = _score(env, stack, np.repeat(controller.params[None], cfg.population, 0), cfg,
                               seed=cfg.seed * 100_003 + 50_000 + generation)  # episodes no generation drew
        return float(fitness.mean())

    with tqdm(total=cfg.steps, desc="CMA-ES in the dream", unit="step", disable=not progress, mininterval=1) as bar:
        while steps < cfg.steps:
            asked = es.ask()
            fitness, lived = _score(env, stack, np.asarray(asked, np.float32), cfg,
                                    seed=cfg.seed * 100_003 + generation)
            es.tell(asked, (-fitness).tolist())  # CMA-ES minimises
            steps, generation = steps + lived, generation + 1
            curve.append((steps, float(fitness.mean())))
            controller.params = np.asarray(es.result.xfavorite, np.float32)
            bar.update(min(lived, cfg.steps - bar.n))
            bar.set_postfix(generation=generation, fitness=f"{fitness.mean():.1f}", best=f"{fitness.max():.1f}",
                            refresh=False)
            if on_generation is not None:
                on_generation(generation, steps, controller, mean_in_dream)
    return controller, curve, mean_in_dream


def _score(env, stack, candidates: np.ndarray, cfg, seed: int):
    """Mean dream return of each candidate over cfg.rollouts episodes (the first episode
    of each of its rows). Returns (fitness (P,), steps the episodes lived); the batch
    steps on until its longest episode ends, so it computes more steps than that."""
    p, m = len(candidates), cfg.rollouts
    obs, _ = env.reset(seed=seed)
    feats = stack.reset(obs)
    returns = np.zeros(p * m)
    alive = np.ones(p * m, dtype=bool)
    lived = 0
    while alive.any():
        actions = batched_actions(candidates, feats.reshape(p, m, -1)).reshape(-1)
        obs, rewards, terminated, truncated, info = env.step(actions)
        if cfg.uncertainty_penalty:  # as the SB3 agents' dream pays (agents/sb3_vec_env.py)
            rewards = rewards - cfg.uncertainty_penalty * info["uncertainty"]
        returns += rewards * alive
        lived += int(alive.sum())
        alive &= ~(terminated | truncated)
        # Rows whose episode ended are masked from here on: their stacks need no reset.
        feats, _ = stack.update(obs, np.zeros(len(obs), bool), [{} for _ in range(len(obs))])
    return returns.reshape(p, m).mean(1), lived
