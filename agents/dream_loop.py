"""The full loop on a budget of real env steps (DIAMOND's recipe):

    collect with the current agent -> update the world model -> train the agent in the
    dream -> score it in the real env -> repeat

    worldsim loop --env worldsim/Rooms-v0 --real-steps 40000 --iterations 4 --out runs/loop

The first collection uses a scripted policy (explore); later ones the agent. The
tokenizer is trained once, on the first iteration's data (or given with --tokenizer);
the dynamics run resumes across iterations, on all data collected so far. DIR/loop.json
records every iteration (real steps spent, dream return, real return), DIR/curves.png
plots them, and rerunning the same command resumes after the last finished iteration.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from agents.imagine import ImagineConfig, agent_actor, evaluate, plot_curves, random_actor, real_env, train_in_dream
from agents.policies import save_agent
from training.collect import check_env_id, collect
from training.train_dynamics import TrainConfig as DynamicsTrainConfig, train as train_dynamics
from training.train_tokenizer import TrainConfig as TokenizerTrainConfig, encode_dataset, train as train_tokenizer
from worldsim.dataset import EVAL_SEEDS_START, atomic_write_bytes
from worldsim.dynamics import CONFIGS as DYNAMICS_SIZES
from worldsim.export import export_world_model
from worldsim.options import nested
from worldsim.tokenizer import CONFIGS as TOKENIZER_SIZES, Tokenizer
from worldsim.world_model import WorldModel


@dataclass
class DreamLoopConfig:
    """The loop's own settings, and the configs of what it runs each iteration (flags
    --tokenizer-*, --dynamics-*, --agent-*; the loop fills in their data, folders and seeds)."""

    env: str = "worldsim/Rooms-v0"  # gymnasium id (see `worldsim envs`)
    out: str = "runs/loop"  # loop.json, curves.png, each iteration's data, model and agent
    real_steps: int = 40_000  # real env steps over all iterations
    iterations: int = 4
    env_kwargs: dict = field(default_factory=dict)  # JSON keyword arguments for the env, e.g. '{"max_steps": 200}'
    first_policy: str = "explore"  # random | explore: the first collection, before any agent exists
    tokenizer: str | None = None  # a trained tokenizer; none: train one on the first iteration's data
    init: str | None = None  # start the dynamics from this world model or dynamics run
    seed: int = 0
    tokenizer_training: TokenizerTrainConfig = field(
        default_factory=lambda: TokenizerTrainConfig(data="", out="", steps=2000),
        metadata=nested("tokenizer", set_here=("data", "out", "init", "decoder_only", "seed")))
    dynamics: DynamicsTrainConfig = field(
        default_factory=lambda: DynamicsTrainConfig(data="", out="", steps=2000, batch_size=32),
        metadata=nested("dynamics", set_here=("data", "out", "init", "seed"),
                        help={"steps": "world-model updates per iteration (the run resumes: iteration i trains to i times this)"}))
    agent: ImagineConfig = field(
        default_factory=ImagineConfig,
        metadata=nested("agent", set_here=("checkpoint", "out", "seed", "obs", "frame_stack", "population", "rollouts",
                                           "eval_every"),
                     help={"steps": "agent steps in the dream per iteration"}))


def run_loop(cfg: DreamLoopConfig, progress: bool = True) -> dict:
    check_env_id(cfg.env)
    if cfg.iterations < 1 or cfg.real_steps < cfg.iterations:
        raise ValueError(f"expected iterations >= 1 and real_steps >= iterations, got {cfg.iterations}, {cfg.real_steps}")
    for name, value, allowed in (("first_policy", cfg.first_policy, ("random", "explore")),
                                 ("agent algo", cfg.agent.algo, ("ppo", "a2c")),  # agents that collect the next data
                                 ("dynamics config", cfg.dynamics.config, tuple(DYNAMICS_SIZES)),
                                 ("tokenizer config", cfg.tokenizer_training.config, tuple(TOKENIZER_SIZES))):
        if value not in allowed:  # checked before the first collect, not an iteration later
            raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "loop.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"config": asdict(cfg), "history": []}
    if state["config"] != json.loads(json.dumps(asdict(cfg))):
        raise ValueError(f"{state_path} was started with other settings; use another --out or the same settings")
    per_iteration = cfg.real_steps // cfg.iterations
    tokenizer = cfg.tokenizer or str(out / "tokenizer.safetensors")
    agent = None
    for i in range(len(state["history"]), cfg.iterations):
        say = (lambda msg: print(f"[loop {i + 1}/{cfg.iterations}] {msg}", flush=True)) if progress else (lambda msg: None)
        policy = cfg.first_policy if i == 0 else str(out / "agent")
        say(f"collect {per_iteration} real steps with {'the agent' if i else cfg.first_policy}")
        collect(cfg.env, policy, per_iteration, str(out / "data"), seed=cfg.seed + i, env_kwargs=cfg.env_kwargs,
                progress=progress)
        if not Path(tokenizer).exists():
            say("train the tokenizer")
            train_tokenizer(replace(cfg.tokenizer_training, data=str(out / "data"), out=str(out / "tok"),
                                    seed=cfg.seed), progress=progress)
            Tokenizer.load(out / "tok" / "latest.safetensors").save(tokenizer)
        encode_dataset(tokenizer, str(out / "data"), str(out / "latents"), progress=progress)
        say("update the world model")
        train_dynamics(replace(cfg.dynamics, data=str(out / "latents"), out=str(out / "dyn"), init=cfg.init,
                               steps=(i + 1) * cfg.dynamics.steps, seed=cfg.seed), progress=progress)
        export_world_model(str(out / "dyn" / "latest.safetensors"), str(out / "world.safetensors"), tokenizer)
        model = WorldModel.load(out / "world.safetensors")
        say("train the agent in the dream")
        dream_cfg = replace(cfg.agent, out=str(out), seed=cfg.seed + i)
        resumed = out / "agent" if agent is None and i > 0 else None  # its optimizer starts afresh
        agent, curve = train_in_dream(model, dream_cfg, agent, progress=progress, init_policy=resumed)
        save_agent(agent, out / "agent")
        env = real_env(cfg.env, cfg.env_kwargs, cfg.agent.horizon)
        real, _ = evaluate(agent_actor(agent), env, cfg.agent.eval_episodes, seed=EVAL_SEEDS_START + i)
        rand, _ = evaluate(random_actor(env.action_space, cfg.seed), env, cfg.agent.eval_episodes,
                           seed=EVAL_SEEDS_START + i)
        env.close()
        state["history"].append({
            "iteration": i + 1, "real_steps": (i + 1) * per_iteration, "agent_steps": int(agent.num_timesteps),
            "dream_return": float(np.mean([r for _, r in curve[-20:]])) if curve else None,
            "real_return": real["mean"], "real_return_std": real["std"], "random_real_return": rand["mean"]})
        say(f"dream return {state['history'][-1]['dream_return']}, real return {real['mean']:.2f} ± {real['std']:.2f} "
            f"(random {rand['mean']:.2f})")
        atomic_write_bytes(state_path, json.dumps(state, indent=1).encode())
        _plot(state, out / "curves.png", cfg.env)
    return {"out": str(out), "history": state["history"]}


def _plot(state, path, env_id):
    h = state["history"]
    x = [r["real_steps"] for r in h]
    plot_curves(path, {"real return (agent)": list(zip(x, [r["real_return"] for r in h])),
                       "dream return (agent)": list(zip(x, [r["dream_return"] or 0.0 for r in h])),
                       "real return (random policy)": list(zip(x, [r["random_real_return"] for r in h]))},
                title=f"collect -> world model -> agent in the dream: {env_id}", xlabel="real env steps spent")
