"""Gameplay sources and collection: env frames/s, collection throughput, bytes on disk.

    python bench/bench_envs.py [--quick]

Prints one line per figure with its goal where the issue sets one, and writes the
figures as JSON (bench/results/envs.json).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import gymnasium as gym

import envs  # noqa: F401
from training.collect import collect
from worldsim.dataset import episode_paths, open_episode


def env_fps(env_id: str, steps: int) -> float:
    env = gym.make(env_id)
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(steps)]
    t0 = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    fps = steps / (time.perf_counter() - t0)
    env.close()
    return fps


def disk_per_1000_frames(root) -> tuple[float, float]:
    """(all bytes, bytes of the frames alone) per 1,000 frames."""
    total = frames_bytes = frames = 0
    for p in episode_paths(root):
        total += p.stat().st_size
        with open_episode(p) as f:
            frames += len(f["frames"])
            frames_bytes += f["frames"].id.get_storage_size()
    return 1000 * total / frames, 1000 * frames_bytes / frames


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    args = parser.parse_args()
    n = 1000 if args.quick else 5000
    results, lines = {}, []

    def report(name, value, unit, goal=""):
        results[name] = value
        lines.append(f"{name:<44} {value:>12,.0f} {unit:<14} {goal}")
        print(lines[-1], flush=True)

    print(f"{'figure':<44} {'value':>12} {'unit':<14} goal / baseline")
    report("rooms_64x64_env_fps_one_core", env_fps("worldsim/Rooms-v0", n), "frames/s", "goal >= 2,000")
    report("vizdoom_takecover_64x64_env_fps", env_fps("worldsim/Vizdoom-TakeCover-v0", n), "frames/s",
           "(frame-skip 4: 4 engine tics per frame)")
    report("atari_pong_64x64_env_fps", env_fps("worldsim/Atari-Pong-v0", n), "frames/s", "(frame-skip 4)")
    with tempfile.TemporaryDirectory() as tmp:
        for env_id, policy, name in [("worldsim/Rooms-v0", "explore", "rooms"),
                                     ("worldsim/Vizdoom-TakeCover-v0", "random", "vizdoom_takecover")]:
            for num_envs in (1, 2):
                out = Path(tmp) / f"{name}-{num_envs}"
                s = collect(env_id, policy, 2 * n, str(out), num_envs=num_envs, progress=False)
                report(f"{name}_collect_{num_envs}env", s["steps_per_second"], "steps/s",
                       "(stepping + policy + compressed atomic writes)")
            total, frames_only = disk_per_1000_frames(out)
            report(f"{name}_bytes_per_1000_frames", total, "bytes", f"(raw uint8: {1000 * 64 * 64 * 3:,})")
            report(f"{name}_frame_bytes_per_1000_frames", frames_only, "bytes", "(frames alone, no ground truth)")
    out = Path(__file__).parent / "results" / "envs.json"
    out.parent.mkdir(exist_ok=True)
    results["cpu_count"] = os.cpu_count()
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
