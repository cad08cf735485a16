"""Does the TakeCover dream pay what the game pays? Fixed policies, scored in the real
game and in each dream: standing still, walking left into the wall and staying there
(what dream-trained agents keep learning), random moves, and dodging (step away from the
biggest fireball in view). In the game, dodging outlives random play, and random play
outlives the wall and standing still. A dream that ranks them otherwise cannot teach an
agent to dodge, however long the agent trains in it: check this before spending hours there.

    python bench/diag/policy_ranks.py worldsim/checkpoints/takecover.safetensors --episodes 100
    python bench/diag/policy_ranks.py CKPT --policies wall random   # some of them

The game is scored on the real episodes the agents are (bench_imagination.py's seeds);
each dream on `--dream-envs` rows of `--episodes-per-row` episodes each (a row's first
episodes, so that short ones are not favoured), ends drawn from the head, returns summed
from the reward head: what an agent trained there would be paid. Below each row, why: how
often each policy sees a fireball about to hit, and how often such a frame ends the episode
(a dream can be calm because it draws too few, or because it does not end on them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[2]))
sys.path.insert(0, str(Path(__file__).parent))

from agents.imagine import summary  # noqa: E402
from fireballs import CLOSE, LEFT, NOOP, RIGHT, biggest_fireball, close_fireball  # noqa: E402

SEEN = 4  # fireball pixels (of 64 x 64) before the dodger reacts: fewer are specks of the imps' sprites
RECENT = 3  # an end this many frames after a close fireball is that fireball's doing


class CloseCalls:
    """How often a policy's frames show a fireball about to hit (CLOSE pixels), and how many
    of those end the episode (an end with a close fireball in its last RECENT frames), on
    each env of a batch. A dream calm where the game is deadly draws the fireballs too
    rarely (close share) or does not end on them (ends per close frame)."""

    def __init__(self, envs: int):
        self.recent = [[] for _ in range(envs)]
        self.frames = self.close = self.ends = self.ends_after_close = 0
        self.end_probs = []  # the dream's end chance on each close frame

    def add(self, frames: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, skip: np.ndarray, end_prob=None):
        """One step's frames (N, H, W, 3) and ends (N,); `skip`: rows whose frame is an
        autoreset's first frame (no step was taken)."""
        close = close_fireball(frames)
        for i in np.nonzero(~skip)[0]:
            self.frames, self.close = self.frames + 1, self.close + int(close[i])
            self.recent[i] = (self.recent[i] + [bool(close[i])])[-RECENT:]
            if close[i] and end_prob is not None:
                self.end_probs.append(float(end_prob[i]))
            if terminated[i]:
                self.ends, self.ends_after_close = self.ends + 1, self.ends_after_close + any(self.recent[i])
            if terminated[i] or truncated[i]:
                self.recent[i] = []

    def summary(self) -> dict:
        return {"frames": self.frames, "close_share": self.close / max(self.frames, 1),
                "ends_per_close_frame": self.ends_after_close / max(self.close, 1),
                "ends_after_close": self.ends_after_close / max(self.ends, 1),
                "end_prob_on_close": float(np.mean(self.end_probs)) if self.end_probs else None}


def dodge(frame: np.ndarray) -> int:
    """Step away from the biggest fireball in view (the closest), else stand still."""
    pixels, column = biggest_fireball(frame)
    if pixels < SEEN:
        return NOOP
    return RIGHT if column < frame.shape[1] / 2 else LEFT


def policies(seed: int = 0) -> dict:
    """name -> act(frames (N, H, W, 3)) -> actions (N,)."""
    rng = np.random.default_rng(seed)
    return {"stand still": lambda frames: np.full(len(frames), NOOP),
            "wall": lambda frames: np.full(len(frames), LEFT),
            "random": lambda frames: rng.integers(3, size=len(frames)),
            "dodge": lambda frames: np.array([dodge(f) for f in frames])}


def game_returns(act, episodes: int, seed: int, horizon: int, calls: CloseCalls | None = None) -> list[float]:
    from agents.imagine import real_env

    env = real_env("worldsim/Vizdoom-TakeCover-v0", {}, horizon)
    returns = []
    for k in range(episodes):
        frame, _ = env.reset(seed=seed + k)
        done, total = False, 0.0
        while not done:
            frame, reward, terminated, truncated, _ = env.step(int(act(frame[None])[0]))
            total, done = total + float(reward), terminated or truncated
            if calls:
                calls.add(frame[None], np.array([terminated]), np.array([truncated]), np.array([False]))
        returns.append(total)
    env.close()
    return returns


def dream_returns(env, act, episodes_per_row: int, seed: int, calls: CloseCalls | None = None,
                  name: str = "dream") -> list[float]:
    """The first `episodes_per_row` episodes of each row of a NEXT_STEP-autoreset vector dream."""
    from tqdm import tqdm

    rows = env.num_envs
    frames, _ = env.reset(seed=seed)
    totals, done, restart = np.zeros(rows), [[] for _ in range(rows)], np.zeros(rows, bool)
    bar = tqdm(total=rows * episodes_per_row, desc=name, unit="episode", leave=False)
    steps = 0
    while min(len(d) for d in done) < episodes_per_row:
        frames, rewards, terminated, truncated, info = env.step(act(frames))
        steps += 1
        bar.set_postfix(batched_steps=steps, refresh=steps % 25 == 0)
        totals += np.where(restart, 0.0, rewards)  # an autoreset step takes no action and pays nothing
        ended = (terminated | truncated) & ~restart
        if calls:
            calls.add(frames, terminated, truncated, restart, info.get("termination_prob"))
        for i in np.nonzero(ended)[0]:
            bar.update(len(done[i]) < episodes_per_row)
            done[i].append(float(totals[i]))
        totals[restart | ended] = 0.0
        restart = terminated | truncated
    bar.close()
    return [r for d in done for r in d[:episodes_per_row]]


def main(argv=None):
    import gymnasium as gym

    import envs  # noqa: F401  (registers the game)
    import worldsim  # noqa: F401  (registers the dream)
    from worldsim.dataset import EVAL_SEEDS_START

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="*", help="TakeCover world models (none: the game only)")
    p.add_argument("--episodes", type=int, default=100, help="real episodes per policy")
    p.add_argument("--dream-envs", type=int, default=16)
    p.add_argument("--episodes-per-row", type=int, default=4)
    p.add_argument("--horizon", type=int, default=525, help="steps an episode may last (bench_imagination's 2,100 tics)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policies", nargs="+", choices=list(policies()), default=list(policies()))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.episodes < 2 or args.dream_envs * args.episodes_per_row < 2:
        p.error("a standard error needs at least 2 episodes: --episodes and --dream-envs x --episodes-per-row")
    torch.set_num_threads(2)
    names = args.policies
    result = {"episodes": args.episodes, "dream_episodes": args.dream_envs * args.episodes_per_row,
              "returns": {}, "close_calls": {}}
    print(f"mean return ± standard error; the game on {args.episodes} episodes a policy, each dream on "
          f"{result['dream_episodes']}; below each row, the share of frames with a fireball about to hit "
          f"({CLOSE}+ pixels) / ends within {RECENT} frames of one, per such frame")
    print(f"{'':>48} | " + " | ".join(f"{n:>14}" for n in names)
          + (" | dodge - random" if {"dodge", "random"} <= set(names) else ""), flush=True)
    for where in ("game", *args.checkpoints):
        t0, returns, calls = time.perf_counter(), {}, {}
        if where != "game":
            env = gym.make_vec("worldsim/Dream-v0", num_envs=args.dream_envs, vectorization_mode="vector_entry_point",
                               checkpoint=where, obs_type="rgb", sample_ends=True, max_steps=args.horizon)
        for name in names:
            act = policies(args.seed)[name]
            tally = CloseCalls(1 if where == "game" else args.dream_envs)
            returns[name] = summary(game_returns(act, args.episodes, EVAL_SEEDS_START + args.seed, args.horizon, tally)
                                    if where == "game" else dream_returns(env, act, args.episodes_per_row, args.seed, tally, name))
            calls[name] = tally.summary()
        if where != "game":
            env.close()
        result["returns"][where], result["close_calls"][where] = returns, calls
        _row(where, returns, calls, names, time.perf_counter() - t0)
        _save(result, args.json)  # each row as it comes: a dream can take many minutes


def _save(result: dict, path: str | None):
    if path:
        Path(path).write_text(json.dumps(result, indent=1))


def _row(where: str, row: dict, calls: dict, names: list, seconds: float):
    premium = ""
    if "dodge" in row and "random" in row:
        premium = f" | {row['dodge']['mean'] - row['random']['mean']:+6.1f} ± " \
                  f"{np.hypot(row['dodge']['stderr'], row['random']['stderr']):4.1f}"
    print(f"{where[-48:]:>48} | " + " | ".join(f"{row[n]['mean']:6.1f} ± {row[n]['stderr']:5.1f}" for n in names)
          + f"{premium}   ({seconds:.0f} s)")
    print(f"{'close fireballs':>48} | " + " | ".join(
        f"{calls[n]['close_share']:6.3f} / {calls[n]['ends_per_close_frame']:5.3f}" for n in names), flush=True)


if __name__ == "__main__":
    main()
