"""DreamEnv speed: frames/s for 1, 16 and 64 envs (pixels and latents), each as a share of
the limit this machine sets (its float32 matmul throughput, measured in the same run,
over the model's FLOPs per frame), one-step latency, 16 envs without memory guidance and
without memory, 1 and 16 envs with memory re-rendered from new poses (a model with a depth network), where a batched step with memory spends its time (retrieval, adding to
memory, decoding), the cost of forking the dream's state, beside the real env's frames/s,
and memory over a long rollout.

    python bench/bench_dream_env.py [--checkpoint C] [--memory-steps 10000] [--against C2 C3 ...]
    python bench/bench_dream_env.py --device cuda     # 1, 16, 256 and 1,024 envs; TF32 matmuls as the ceiling

`--against` measures other world models' frames/s with pixels (1 and 16 envs) in the same
run, each beside this model's measured right before it: absolute frames/s on these
machines move by 2x from day to day, ratios measured side by side do not.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import envs  # noqa: F401
from worldsim.dream_env import DreamEnv, DreamVectorEnv, load_world_model


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def vector_fps(checkpoint, n, obs_type, steps, memory=None, memory_guidance=None, device="cpu",
               rerender=False) -> float:
    envs_ = DreamVectorEnv(n, checkpoint=checkpoint, obs_type=obs_type, max_steps=10**9, memory=memory,
                           memory_guidance=memory_guidance, device=device, rerender=rerender)
    envs_.reset(seed=0)
    actions = np.random.default_rng(0).integers(envs_.single_action_space.n, size=(steps + 2, n))
    envs_.step(actions[0])  # warm-up
    t0 = time.perf_counter()
    for a in actions[1:steps + 1]:
        envs_.step(a)
    return n * steps / (time.perf_counter() - t0)


def step_shares(checkpoint, n: int = 16, steps: int = 30, device="cpu") -> dict:
    """Shares of a batched pixel step spent retrieving memory (DreamCore._recall), adding
    frames to it (MemoryBank.add) and decoding; the rest is the transformer."""
    from worldsim.memory import MemoryBank

    env = DreamVectorEnv(n, checkpoint=checkpoint, obs_type="rgb", max_steps=10**9, device=device)
    env.reset(seed=0)
    spent = {"retrieval": 0.0, "memory_add": 0.0, "decode": 0.0}

    def timed(part, fn):
        def run(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - t
        return run

    env.core._recall, env._decode = timed("retrieval", env.core._recall), timed("decode", env._decode)
    add = MemoryBank.add
    MemoryBank.add = timed("memory_add", add)
    try:
        actions = np.random.default_rng(0).integers(env.single_action_space.n, size=(steps, n))
        t0 = time.perf_counter()
        for a in actions:
            env.step(a)
        total = time.perf_counter() - t0
    finally:
        MemoryBank.add = add
    return {part: 100 * t / total for part, t in spent.items()}


def matmul_gflops(n: int = 1024, repeats: int = 10, device="cpu") -> float:
    """This machine's float32 matmul throughput now: the ceiling every figure is held to."""
    if device != "cpu":  # a GPU needs a larger problem and more repeats to reach its throughput
        n, repeats = 8192, 50
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def flops_per_frame(checkpoint, obs_type, n: int = 16, device="cpu") -> float:
    """FLOPs of one batched step of `n` envs (torch's FlopCounterMode), per frame."""
    from torch.utils.flop_counter import FlopCounterMode

    envs_ = DreamVectorEnv(n, checkpoint=checkpoint, obs_type=obs_type, max_steps=10**9, device=device)
    envs_.reset(seed=0)
    envs_.step(np.zeros(n, np.int64))
    with FlopCounterMode(display=False) as counter:
        envs_.step(np.ones(n, np.int64))
    return counter.get_total_flops() / n


def fork_ms(checkpoint, n: int = 16, steps: int = 20, repeats: int = 10, device="cpu") -> tuple[float, float]:
    """Milliseconds to save and to restore the state of `n` dream envs after `steps`
    steps (a full context and memory): what a planner pays per branch."""
    envs_ = DreamVectorEnv(n, checkpoint=checkpoint, obs_type="latent", max_steps=10**9, device=device)
    envs_.reset(seed=0)
    for k in range(steps):
        envs_.step(np.full(n, k % envs_.single_action_space.n))
    t0 = time.perf_counter()
    for _ in range(repeats):
        state = envs_.get_state()
    sync(device)
    t1 = time.perf_counter()
    for _ in range(repeats):
        envs_.set_state(state)
    sync(device)
    t2 = time.perf_counter()
    return 1000 * (t1 - t0) / repeats, 1000 * (t2 - t1) / repeats


def latency_ms(checkpoint, obs_type, steps=30, device="cpu") -> float:
    env = DreamEnv(checkpoint=checkpoint, obs_type=obs_type, max_steps=10**9, device=device)
    env.reset(seed=0)
    env.step(0)
    times = []
    for k in range(steps):
        t0 = time.perf_counter()
        env.step(k % env.action_space.n)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default=None, help="world model (default: the shipped Rooms model)")
    parser.add_argument("--steps", type=int, default=20, help="vector steps per measurement")
    parser.add_argument("--memory-steps", type=int, default=10_000)
    parser.add_argument("--against", nargs="*", default=[], help="world models to compare with, side by side")
    parser.add_argument("--device", default="cpu", help="where the dream runs: cpu or cuda")
    parser.add_argument("--envs", default=None,
                        help="comma-separated sub-env counts (default 1,16,64 on the CPU, 1,16,256,1024 on a GPU)")
    args = parser.parse_args()
    if args.memory_steps < 100:
        parser.error(f"--memory-steps: at least 100 (memory is read after 100 steps and at the end); got {args.memory_steps}")
    device = args.device
    gpu = torch.device(device).type == "cuda"
    counts = [int(n) for n in (args.envs or ("1,16,256,1024" if gpu else "1,16,64")).split(",")]
    torch.set_num_threads(2)
    if gpu:  # TF32 matmuls: what an inference server on this card would run
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model = load_world_model(args.checkpoint)
    has_memory, can_rerender = model.has_memory, model.can_rerender
    r = {"device": torch.cuda.get_device_name() if gpu else "cpu"}
    print(f"device: {r['device']}")
    print(f"{'figure':<40} {'value':>10}  goal / baseline")

    def report(name, value, goal=""):
        r[name] = value
        print(f"{name:<40} {value:>10.1f}  {goal}", flush=True)

    goals = ({("rgb", 1): "goal >= 60 on an H100", ("latent", max(counts)): "goal >= 10,000 batched on an H100"} if gpu
             else {("rgb", 1): "goal >= 20 (interactive)", ("rgb", 16): "goal >= 200 together"})
    ceiling = "matmul_gflops_tf32" if gpu else "matmul_gflops_float32"
    report(ceiling, matmul_gflops(device=device), "this machine's ceiling, measured in this run")
    for other in args.against:
        for n in (1, 16):
            own = vector_fps(args.checkpoint, n, "rgb", args.steps, device=device)
            fps = vector_fps(other, n, "rgb", args.steps, device=device)
            report(f"against_{Path(other).stem}_fps_{n}_envs_rgb", fps,
                   f"this model {own:.1f} just before: {own / fps:.2f}x")
    for obs_type in ("rgb", "latent"):
        flops = flops_per_frame(args.checkpoint, obs_type, device=device)
        report(f"mflop_per_frame_{obs_type}", flops / 1e6, "FlopCounterMode, 16 envs batched")
        limit = r[ceiling] * 1e9 / flops
        report(f"fps_limit_{obs_type}", limit, "matmul throughput / FLOPs per frame")
        report(f"latency_ms_one_step_{obs_type}", latency_ms(args.checkpoint, obs_type, device=device))
        for n in counts:
            goal = goals.get((obs_type, n), "")
            fps = vector_fps(args.checkpoint, n, obs_type, args.steps, device=device)
            report(f"dream_fps_{n}_envs_{obs_type}", fps, f"{100 * fps / limit:.0f}% of the limit; {goal}".rstrip("; "))
        if has_memory:  # the same with memory but no guidance pass, and with memory switched off
            report(f"dream_fps_16_envs_{obs_type}_guidance_0",
                   vector_fps(args.checkpoint, 16, obs_type, args.steps, memory_guidance=0.0, device=device))
            report(f"dream_fps_16_envs_{obs_type}_memory_off",
                   vector_fps(args.checkpoint, 16, obs_type, args.steps, False, device=device))
        if can_rerender and obs_type == "rgb":  # memory re-rendered from new poses, beside plain memory just measured
            for n in (1, 16):
                report(f"dream_fps_{n}_envs_rgb_rerender", vector_fps(args.checkpoint, n, "rgb", args.steps, device=device,
                                                                       rerender=True),
                       f"plain memory {r[f'dream_fps_{n}_envs_rgb']:.1f}" + (f"; {goals[('rgb', n)]}" if n == 1 else ""))
    if has_memory:
        for part, share in step_shares(args.checkpoint, device=device).items():
            report(f"step_share_percent_{part}_16_envs", share, "of a batched pixel step with memory")
    save, restore = fork_ms(args.checkpoint, device=device)
    report("fork_get_state_ms_16_envs", save, "after 20 steps: cache, memory, clocks; a planner pays it per branch")
    step_ms = 1000 * 16 / r["dream_fps_16_envs_latent_guidance_0"] if has_memory else None
    report("fork_set_state_ms_16_envs", restore,
           f"one batched step of 16 envs without the guidance pass: {step_ms:.1f} ms" if step_ms else "")
    real = gym.make("worldsim/Rooms-v0")
    real.reset(seed=0)
    t0 = time.perf_counter()
    for k in range(2000):
        _, _, terminated, truncated, _ = real.step(k % 7)
        if terminated or truncated:  # Rooms refuses steps after an episode's end
            real.reset()
    report("real_rooms_env_fps_baseline", 2000 / (time.perf_counter() - t0))

    env = DreamEnv(checkpoint=args.checkpoint, obs_type="latent", max_steps=10**9, device=device)
    env.reset(seed=0)
    marks = {}
    t0 = time.perf_counter()
    for k in range(1, args.memory_steps + 1):
        env.step(k % env.action_space.n)
        if k in (100, args.memory_steps // 2, args.memory_steps):
            marks[k] = rss_mb()
    report("rss_mb_after_100_steps", marks[100])
    report(f"rss_mb_after_{args.memory_steps}_steps", marks[args.memory_steps], "flat = no growth over the rollout")
    report("long_rollout_fps_latent_1_env", args.memory_steps / (time.perf_counter() - t0))
    out = Path(__file__).parent / "results" / ("dream_env_gpu.json" if gpu else "dream_env.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
