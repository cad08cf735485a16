"""Agents trained only in the dream, scored in the real env, beside a random policy and
PPO trained in the real env on the same number of real steps and on many more.

    python bench/bench_imagination.py                    # both, about 40 min on two CPU cores
    python bench/bench_imagination.py --env rooms        # Rooms: collect objects in 200 steps
    python bench/bench_imagination.py --env takecover    # ViZDoom TakeCover: survive (2100 tics at most)

"Real steps" of the dream agent are the real env steps collected to make its world model
(the shipped checkpoints: 100,000 explore steps for Rooms, 40,000 then 60,000 that look
away and back; 10,000 random steps for TakeCover); the agent itself never touches the
real env until it is scored. Every agent is scored on the same real episodes (seeds).
Writes bench/results/imagination_<env>.json and a bar plot beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parents[1]))

from worldsim.dataset import EVAL_SEEDS_START  # noqa: E402
from agents.imagine import ImagineConfig, agent_actor, evaluate, imagine, new_agent, real_env  # noqa: E402

ROOT = Path(__file__).parents[1]
PRESETS = {
    "rooms": {"checkpoint": "worldsim/checkpoints/rooms.safetensors", "real_steps": 100_000, "horizon": 200,
              "long_factor": 4},
    "takecover": {"checkpoint": "worldsim/checkpoints/takecover.safetensors", "real_steps": 10_000, "horizon": 525,
                  "long_factor": 10},
}


def ppo_in_real_env(env_id, env_kwargs, horizon, steps, seed, num_envs=16):
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

    venv = VecMonitor(DummyVecEnv([lambda: real_env(env_id, env_kwargs, horizon)] * num_envs))
    venv.seed(seed)
    agent = new_agent("ppo", venv, "rgb", seed, steps)
    t0 = time.perf_counter()
    agent.learn(steps)
    return agent, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", choices=[*sorted(PRESETS), "all"], default="all")
    p.add_argument("--checkpoint", default=None, help="world model (default: the shipped one for --env)")
    p.add_argument("--dream-steps", type=int, default=50_000, help="agent steps in the dream")
    p.add_argument("--real-steps", type=int, default=None, help="real steps behind the world model (default: preset)")
    p.add_argument("--long-factor", type=int, default=None,
                   help="the long real-env PPO run gets this many times more (default: Rooms 4, TakeCover 10)")
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.env == "all" and (args.checkpoint or args.out or args.real_steps):
        p.error("--checkpoint, --out and --real-steps go with one --env")
    for env in sorted(PRESETS) if args.env == "all" else [args.env]:
        run(env, args)


def run(env_name, args):
    preset = PRESETS[env_name]
    checkpoint = args.checkpoint or str(ROOT / preset["checkpoint"])
    real_steps = args.real_steps or preset["real_steps"]
    horizon = preset["horizon"]
    work = ROOT / "runs" / "bench_imagination" / env_name
    out = Path(args.out or ROOT / "bench" / "results" / f"imagination_{env_name}.json")

    t0 = time.perf_counter()
    dream = imagine(ImagineConfig(checkpoint=checkpoint, out=str(work / "dream"), steps=args.dream_steps,
                                  horizon=horizon, eval_episodes=args.eval_episodes, seed=args.seed))
    rows = {"dream_agent": {**dream["real"], "real_steps": real_steps, "dream_steps": dream["dream_steps"],
                            "dream_return": dream["dream_return_last_20"], "seconds": round(time.perf_counter() - t0)}}
    from worldsim.world_model import WorldModel

    info = WorldModel.load(checkpoint).info
    env_id, env_kwargs = info["env_id"], info.get("env_kwargs") or {}
    env = real_env(env_id, env_kwargs, horizon)
    seed = EVAL_SEEDS_START + args.seed  # the episodes `imagine` scored its agent on
    rows["random"] = {**dream["random_policy_real"], "real_steps": 0}  # scored by `imagine` on the same episodes
    long_steps = real_steps * (args.long_factor or preset["long_factor"])
    for name, steps in (("ppo_real_same_steps", real_steps), ("ppo_real_long", long_steps)):
        agent, seconds = ppo_in_real_env(env_id, env_kwargs, horizon, steps, args.seed)
        rows[name], _ = evaluate(agent_actor(agent), env, args.eval_episodes, seed)
        rows[name].update(real_steps=steps, seconds=round(seconds))
        print(f"{name}: {rows[name]['mean']:.2f} ± {rows[name]['std']:.2f}", flush=True)
    env.close()
    report = {"env": env_id, "checkpoint": checkpoint, "horizon": horizon, "eval_episodes": args.eval_episodes,
              "results": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    _plot(report, out.with_suffix(".png"))
    print(f"\n{env_id}: real-env return over {args.eval_episodes} episodes (horizon {horizon} steps)")
    for name, r in rows.items():
        print(f"  {name:22s} {r['mean']:8.2f} ± {r['std']:7.2f}   real steps {r['real_steps']:>8,}")
    print(f"wrote {out}")


def _plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    names = list(rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(range(len(names)), [rows[n]["mean"] for n in names], yerr=[rows[n]["std"] for n in names], capsize=4,
           color=["tab:green", "tab:gray", "tab:orange", "tab:blue"][:len(names)])
    ax.set_xticks(range(len(names)), [f"{n}\n{rows[n]['real_steps']:,} real steps" for n in names], fontsize=8)
    ax.set_ylabel(f"real-env return ({report['eval_episodes']} episodes)")
    ax.set_title(f"{report['env']}: agent trained in the dream vs real-env baselines")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
