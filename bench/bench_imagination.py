"""Agents trained only in the dream, scored in the real env, beside a random policy and
PPO trained in the real env on the same number of real steps and on many more.

    python bench/bench_imagination.py --env takecover                 # every agent (hours on two CPU cores)
    python bench/bench_imagination.py --env takecover --agents dream_cmaes random   # some; the others' rows are kept
    python bench/bench_imagination.py --env rooms                     # Rooms: collect objects in 200 steps
    python bench/bench_imagination.py --env crafter                   # Crafter: its score, from achievements

Agents:
  dream_ppo     PPO trained only in the dream (the preset's observations and frame stack)
  dream_ppo_penalised
                the same, each dream reward less --uncertainty-penalty times the dream's
                uncertainty (Dropout's Dream Land): less to exploit where the model is unsure
  dream_cmaes   World Models' linear controller, evolved by CMA-ES only in the dream (latents)
  random        uniform random actions
  ppo_real_same_steps, ppo_real_long
                PPO (CnnPolicy, the same frame stack) in the real env, on the real steps
                behind the world model and on `long_factor` times more

"Real steps" of a dream agent are the real env steps collected to make its world model
(the preset says which); the agent itself never touches the real env until it is scored,
except to be scored along the way (--eval-every), which it does not learn from. Every
agent is scored on the same real episodes (seeds), mean ± standard error. The JSON keeps
each agent's row with the date and settings it was measured with; the plot shows the
returns beside published references and the dream-vs-real return of the dream agents
over training (the exploitation gap). Writes bench/results/imagination_<env>.{json,png}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from tqdm import tqdm  # noqa: E402

from worldsim.dataset import EVAL_SEEDS_START  # noqa: E402
from agents.imagine import (ImagineConfig, agent_actor, evaluate, imagine, new_agent, random_actor,  # noqa: E402
                            real_env, return_curve, scaled_rewards)

ROOT = Path(__file__).parents[1]
AGENTS = ("dream_ppo", "dream_ppo_penalised", "dream_cmaes", "random", "ppo_real_same_steps", "ppo_real_long")
COLORS = dict(zip(AGENTS, ("tab:green", "tab:cyan", "tab:olive", "tab:gray", "tab:orange", "tab:blue")))
PRESETS = {
    # Rooms: 40,000 + 60,000 explore steps on map 0, then 300,000 and 60,000 on new maps behind the shipped
    # model (RESULTS.md, "How the shipped checkpoints were made").
    "rooms": {"env_id": "worldsim/Rooms-v0", "env_kwargs": {"world_seed": None},
              "checkpoint": "worldsim/checkpoints/rooms.safetensors", "real_steps": 460_000, "horizon": 200,
              "long_factor": 4, "obs": "rgb", "frame_stack": 1, "sample_ends": False},
    # TakeCover: 10,000 + 300,000 random steps (4,193 episodes, under World Models' 10,000 rollouts).
    # Ends are drawn from the head's calibrated probability: deaths hang on health the frames do not show.
    "takecover": {"env_id": "worldsim/Vizdoom-TakeCover-v0", "env_kwargs": {},
                  "checkpoint": "worldsim/checkpoints/takecover.safetensors", "real_steps": 310_000, "horizon": 525,
                  "long_factor": 3, "obs": "latent", "frame_stack": 4, "sample_ends": True},
    # Crafter: 200,000 random steps. Scored as Crafter is, by its achievements (the return also counts health);
    # episodes end at death or crafter's own 10,000 steps.
    "crafter": {"env_id": "worldsim/Crafter-v0", "env_kwargs": {},
                "checkpoint": "worldsim/checkpoints/crafter.safetensors", "real_steps": 200_000, "horizon": 10_000,
                "long_factor": 5, "obs": "latent", "frame_stack": 1, "sample_ends": True,
                "metric": "achievement_score"},
}
# Published figures, for reference (not measured here): World Models, Ha & Schmidhuber 2018, table 3.
# Crafter: Hafner 2021 (human experts, random) and DreamerV3 (Hafner et al. 2023), scores at 1M steps.
REFERENCES = {"takecover": {"World Models, agent trained in its dream (published)": 1092,
                            "World Models, random policy (published)": 210,
                            "solved (published threshold)": 750},
              "crafter": {"human experts (published)": 50.5, "DreamerV3, 1M steps (published)": 14.5,
                          "random policy (published)": 1.6}}


def ppo_in_real_env(env_id, env_kwargs, horizon, steps, seed, frame_stack, num_envs=16):
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack, VecMonitor

    venv = VecMonitor(DummyVecEnv([lambda: real_env(env_id, env_kwargs, horizon)] * num_envs))
    if frame_stack > 1:
        venv = VecFrameStack(venv, frame_stack)
    venv = scaled_rewards(venv)
    venv.seed(seed)
    agent = new_agent("ppo", venv, "rgb", seed, steps)
    t0 = time.perf_counter()
    with tqdm(total=steps, desc="PPO in the real env", unit="step", mininterval=1) as bar:
        agent.learn(steps, callback=return_curve(bar))
    return agent, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", choices=sorted(PRESETS), default="takecover")
    p.add_argument("--agents", nargs="+", choices=AGENTS, default=list(AGENTS),
                   help="agents to (re)measure; the other agents' rows already in --out are kept")
    p.add_argument("--checkpoint", default=None, help="world model (default: the shipped one for --env)")
    p.add_argument("--dream-steps", type=int, default=300_000, help="agent steps in the dream")
    p.add_argument("--real-steps", type=int, default=None, help="real steps behind the world model (default: preset)")
    p.add_argument("--long-factor", type=int, default=None, help="the long real-env PPO run gets this many times more")
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--uncertainty-penalty", type=float, default=1.0,
                   help="dream_ppo_penalised: each dream reward less this times the dream's uncertainty")
    p.add_argument("--whole-rewards", action="store_true",
                   help="dream agents: each dream reward rounded to the nearest whole number (games that pay whole "
                        "rewards, as Rooms' objects), so the head's small outputs cannot be farmed")
    p.add_argument("--eval-every", type=int, default=50_000,
                   help="score the dream agents in the real env every this many dream steps (20 episodes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--obs", choices=("rgb", "latent"), default=None,
                   help="dream_ppo's observations (default: the preset's; a pixel world model's latent is its frame)")
    p.add_argument("--device", default="cpu", help="where the dream agents' world model runs (cuda on a GPU)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    run(args.env, args)


def run(env_name, args):
    from worldsim.dream_env import load_world_model

    preset = PRESETS[env_name]
    checkpoint = args.checkpoint or str(ROOT / preset["checkpoint"])
    real_steps = args.real_steps or preset["real_steps"]
    horizon, stack = preset["horizon"], preset["frame_stack"]
    work = ROOT / "runs" / "bench_imagination" / env_name
    out = Path(args.out or ROOT / "bench" / "results" / f"imagination_{env_name}.json")
    env_id, env_kwargs = preset["env_id"], preset["env_kwargs"]
    if any(a.startswith("dream_") for a in args.agents):  # the real-env agents need no world model
        info = load_world_model(checkpoint).info
        if info["env_id"] != env_id:
            raise ValueError(f"{checkpoint} was trained on {info['env_id']}, not the --env {env_name} game {env_id}")
    seed = EVAL_SEEDS_START + args.seed  # the same real episodes for every agent
    episodes = {"seed": args.seed, "horizon": horizon, "eval_episodes": args.eval_episodes}
    stamp = {"measured": datetime.date.today().isoformat(), **episodes}
    rows = {}
    old = json.loads(out.read_text()) if out.exists() else {}
    for name, row in old.get("results", {}).items():  # kept only if scored on the same episodes, for this model
        if name in AGENTS and name not in args.agents:
            same = all(row.get(k) == v for k, v in episodes.items()) and (
                row.get("checkpoint") == checkpoint if name.startswith("dream_")
                else row["real_steps"] == real_steps if name == "ppo_real_same_steps" else True)
            if same:
                rows[name] = row
            else:
                print(f"dropping the {name} row of {out}: measured on other episodes, model or real steps; "
                      f"rerun it with --agents {name}", flush=True)

    for name in [a for a in AGENTS if a in args.agents]:
        print(f"--- {name}", flush=True)
        t0 = time.perf_counter()
        if name.startswith("dream_"):
            algo = name.removeprefix("dream_").removesuffix("_penalised")
            cfg = ImagineConfig(checkpoint=checkpoint, out=str(work / name), algo=algo, steps=args.dream_steps,
                                obs="latent" if algo == "cmaes" else args.obs or preset["obs"], frame_stack=stack,
                                device=args.device,
                                horizon=horizon, eval_episodes=args.eval_episodes, eval_every=args.eval_every,
                                sample_ends=preset["sample_ends"], seed=args.seed, whole_rewards=args.whole_rewards,
                                uncertainty_penalty=args.uncertainty_penalty if name.endswith("_penalised") else 0.0)
            report = imagine(cfg)
            rows[name] = {**report["real"], "real_steps": real_steps, "dream_steps": report["dream_steps"],
                          "dream_return": report["dream_return"],
                          "exploitation_gap": report["exploitation_gap"], "checkpoint": checkpoint,
                          "settings": {k: v for k, v in report["config"].items() if k not in ("checkpoint", "out")}}
        elif name == "random":
            env = real_env(env_id, env_kwargs, horizon)
            rows[name], _ = evaluate(random_actor(env.action_space, args.seed), env, args.eval_episodes, seed)
            rows[name]["real_steps"] = 0
            env.close()
        else:
            steps = real_steps * (args.long_factor or preset["long_factor"] if name == "ppo_real_long" else 1)
            agent, _ = ppo_in_real_env(env_id, env_kwargs, horizon, steps, args.seed, stack)
            env = real_env(env_id, env_kwargs, horizon)
            rows[name], _ = evaluate(agent_actor(agent), env, args.eval_episodes, seed, frame_stack=stack)
            rows[name].update(real_steps=steps, settings={"algo": "ppo", "policy": "CnnPolicy", "frame_stack": stack})
            env.close()
        rows[name].update(stamp, seconds=round(time.perf_counter() - t0))
        print(f"{name}: {_figure(rows[name])}", flush=True)
        _write(out, env_id, horizon, env_name, rows)  # each row as soon as it is measured
    _write(out, env_id, horizon, env_name, rows, show=True)


def _figure(row) -> str:
    """A row's return, and its achievement score where the env counts achievements."""
    text = f"return {row['mean']:8.2f} ± {row['stderr']:6.2f}"
    if "achievement_score" in row:
        text += f"   score {row['achievement_score']:5.2f} ± {row['achievement_score_stderr']:4.2f} %"
    return text


def _write(out, env_id, horizon, env_name, rows, show=False):
    """Write the report (atomically) and its plot; with show, print the table."""
    report = {"env": env_id, "horizon": horizon, "metric": PRESETS[env_name].get("metric", "mean"),
              "references": REFERENCES.get(env_name, {}), "results": {a: rows[a] for a in AGENTS if a in rows}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out)
    _plot(report, out.with_suffix(".png"))
    if not show:
        return
    print(f"\n{env_id}: real-env return (horizon {horizon} steps), mean ± standard error")
    for name, r in report["results"].items():
        dream = f"   dream return {r['dream_return']:.1f}" if r.get("dream_return") is not None else ""
        print(f"  {name:22s} {_figure(r)}  over {r['episodes']:>3} episodes"
              f"   real steps {r['real_steps']:>9,}   measured {r['measured']}{dream}")
    for label, value in report["references"].items():
        print(f"  {label}: {value}")
    print(f"wrote {out}")


def _plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, metric = report["results"], report["metric"]
    names = list(rows)
    fig, (ax, gap) = plt.subplots(1, 2, figsize=(13, 4.5))
    ax.bar(range(len(names)), [rows[n][metric] for n in names],
           yerr=[rows[n]["stderr" if metric == "mean" else f"{metric}_stderr"] for n in names],
           capsize=4, color=[COLORS[n] for n in names])
    ax.set_xticks(range(len(names)), [f"{n}\n{rows[n]['real_steps']:,} real steps" for n in names], fontsize=7)
    for (label, value), style in zip(report["references"].items(), ("--", ":", "-.")):
        ax.axhline(value, ls=style, c="k", lw=1, label=f"{label}: {value}")
    if report["references"]:
        ax.legend(fontsize=7)
    ax.set_ylabel("real-env return (mean ± standard error)" if metric == "mean"
                  else "Crafter score, % (± bootstrap s.e.)")
    ax.set_title(f"{report['env']}: agents trained in the dream vs real-env baselines", fontsize=9)
    for n in names:
        points = rows[n].get("exploitation_gap")
        if points:
            x = [s for s, _, _ in points]
            gap.plot(x, [d if d is not None else float("nan") for _, d, _ in points], "o--", c=COLORS[n],
                     label=f"{n}: dream")
            gap.plot(x, [r for _, _, r in points], "o-", c=COLORS[n], label=f"{n}: real")
    if "random" in rows:
        gap.axhline(rows["random"]["mean"], c="tab:gray", lw=1, label="random policy: real")
    gap.set_xlabel("dream steps")
    gap.set_ylabel("episode return")
    gap.set_title("exploitation gap: the dream agents' return in the dream and in the real env", fontsize=9)
    gap.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
