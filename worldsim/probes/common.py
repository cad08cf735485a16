"""What every probe shares: the scripted real episode (`Scenario`), the predictors scored
on it (the dream with memory on or off, and the references `ground_truth`, `copy_last`,
`shuffled`, `tokenizer_ceiling`), probe seeds disjoint from every collect seed, and the
real Rooms env replayed with its state copied for counterfactual renders.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from agents.policies import ExplorePolicy
from envs.rooms import ACTIONS, RoomsEnv
from worldsim.dataset import PROBE_SEEDS_START
from worldsim.inverse_dynamics import InverseDynamics

ROOMS_ID = "worldsim/Rooms-v0"
SEEDS_PER_PROBE_SEED = 100_000  # env seeds a probe seed owns: seeds k and k+1 script disjoint episodes


def first_env_seed(seed: int) -> int:
    """The first env seed the scripts of probe seed `seed` draw from: above every seed
    `collect` takes, so a probe never replays an episode (or a map) a model trained on."""
    return PROBE_SEEDS_START + seed * SEEDS_PER_PROBE_SEED


@dataclass
class Scenario:
    """A scripted real episode: frames (T+1, H, W, 3), actions (T,) (actions[i] led from
    frame i to i+1), ground truth per frame, and `context` leading frames given to the
    model. Predictions cover frames[context:]."""

    probe: str
    frames: np.ndarray
    actions: np.ndarray
    gt: dict
    context: int
    meta: dict = field(default_factory=dict)

    @property
    def target(self) -> np.ndarray:
        return self.frames[self.context:]


@dataclass
class ProbeSetup:
    """What every probe's scripts are made from; the report fills it from the model and
    its flags."""

    env_id: str
    env_kwargs: dict  # for the real env, over the model's own
    rooms: RoomsEnv | None  # the unwrapped Rooms env, for the probes that need its exact ground truth
    names: list[str]  # the model's action names
    count: int  # scripts per probe
    context: int  # frames given to the model before it predicts
    seed: int = 0  # probe seed: env seeds from first_env_seed(seed) on
    object_gaps: list[int] = field(default_factory=list)  # steps out of view, for the objects probe
    drift_episodes: int = 4
    drift_steps: int = 1000
    progress: bool = True  # print each score as it comes
    judge: InverseDynamics | None = None  # the control probe's second reading (worldsim/inverse_dynamics.py)


@dataclass(frozen=True)
class Probe:
    """A probe as the report runs it: its scripts, its score of one predictor's frames (the
    tokenizer ceiling's frames given as a reference), and one line that says a score."""

    name: str
    scenarios: Callable[[ProbeSetup], list]
    score: Callable[[list, list, list, ProbeSetup], dict]  # (scenarios, predictions, reference, setup)
    headline: Callable[[dict], str]
    rooms_only: bool = False  # needs Rooms' object masks and a state that can be copied
    summary: Callable[[dict, ProbeSetup], dict] | None = None  # more fields from the whole entry (all predictors)
    figure: Callable | None = None  # (scenarios, predictions by predictor, entry, path): a PNG of its own
    figure_file: str = ""  # the PNG's name in the report's folder


def ground_truth(scenarios):
    return [s.target for s in scenarios]


def copy_last(scenarios):
    return [np.repeat(s.frames[s.context - 1:s.context], len(s.target), 0) for s in scenarios]


def shuffled(scenarios, seed: int = 0):
    """The real frames in a random order with no frame left in its place."""
    rng = np.random.default_rng(seed)
    out = []
    for s in scenarios:
        n = len(s.target)
        order = np.roll(np.arange(n), 1) if n > 1 else np.arange(n)
        for _ in range(100):
            perm = rng.permutation(n)
            if n < 2 or not (perm == np.arange(n)).any():
                order = perm
                break
        out.append(s.target[order])
    return out


def tokenizer_ceiling(model):
    """The real frames through the tokenizer: the best a dream decoded by it can do."""
    def predict(scenarios):
        with torch.no_grad():
            return [np.concatenate([model.decode(model.encode(s.target[i:i + 256][None]))[0].cpu().numpy()
                                    for i in range(0, len(s.target), 256)]) for s in scenarios]
    return predict


def dream(model, memory: bool | None, seed: int = 0, batch: int = 16, sample_steps: int | None = None,
          memory_guidance: float | None = None, rerender: bool = False):
    """The world model's rollout from each scenario's context, its actions replayed."""
    def predict(scenarios):
        out = [None] * len(scenarios)
        groups = {}
        for i, s in enumerate(scenarios):
            groups.setdefault((s.context, len(s.actions)), []).append(i)
        for (ctx, _), idx in groups.items():
            for j in range(0, len(idx), batch):
                part = [scenarios[i] for i in idx[j:j + batch]]
                frames, _, _ = model.rollout(np.stack([s.frames[:ctx] for s in part]),
                                             np.stack([s.actions[:ctx - 1] for s in part]),
                                             np.stack([s.actions[ctx - 1:] for s in part]),
                                             steps=sample_steps, seed=seed, memory=memory,
                                             memory_guidance=memory_guidance, rerender=rerender)
                for i, f in zip(idx[j:j + batch], frames):
                    out[i] = f
        return out
    return predict


def make_rooms(env_kwargs: dict | None = None, **overrides):
    """The unwrapped Rooms env (its state can be copied for counterfactual renders)."""
    return RoomsEnv(**{**(env_kwargs or {}), **overrides})


def map_fingerprint(env) -> str:
    """A short hash of a Rooms map (walls and object homes): equal maps, equal prints."""
    env = getattr(env, "unwrapped", env)
    return hashlib.sha1(np.ascontiguousarray(env.walls).tobytes()
                        + np.ascontiguousarray(env.objects_home).tobytes()).hexdigest()[:12]


def maps_of(env, scenarios) -> dict:
    """Which Rooms maps `scenarios` ran on: the fixed `world_seed`, or, with world_seed
    None (a new map per reset), the env seeds the maps were drawn from; with the maps'
    fingerprints either way, to check them against the maps a model was trained on."""
    env = getattr(env, "unwrapped", env)
    if env.world_seed is not None:
        return {"world_seed": int(env.world_seed), "maps": 1, "fingerprints": [map_fingerprint(env)]}
    seeds = sorted({int(s.meta["seed"]) for s in scenarios})
    prints = []
    for s in seeds:
        env.reset(seed=s)
        prints.append(map_fingerprint(env))
    return {"world_seed": None, "maps": len(set(prints)), "env_seeds": seeds, "fingerprints": prints}


def replay(env, seed: int, actions, counterfactual_from: int | None = None):
    """Reset with `seed` and take `actions`; frames (T+1, ...) and stacked ground truth.
    From step `counterfactual_from` on, also renders what every action would have shown
    (candidates (T - counterfactual_from, A, H, W, 3))."""
    frame, info = env.reset(seed=seed)
    frames, gts, candidates = [frame], [info["gt"]], []
    for t, a in enumerate(actions):
        if counterfactual_from is not None and t >= counterfactual_from:
            options = []
            for b in range(env.action_space.n):
                twin = copy.deepcopy(env)
                options.append(twin.step(b)[0])
            candidates.append(np.stack(options))
        frame, _, _, _, info = env.step(int(a))
        frames.append(frame)
        gts.append(info["gt"])
    gt = {k: np.stack([g[k] for g in gts]) for k in gts[0]}
    return np.stack(frames), gt, (np.stack(candidates) if candidates else None)


def action_index(name: str) -> int:
    return ACTIONS.index(name)


def context_walk(rng, n: int) -> list[int]:
    """Actions of a short real walk that gives the model its context."""
    return [int(a) for a in rng.choice([action_index("FORWARD"), action_index("TURN_LEFT"), action_index("TURN_RIGHT")], size=n)]


def masked_psnr(pred: np.ndarray, real: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB over the pixels of `mask` (capped at 99 like the other scores)."""
    mse = ((pred[mask].astype(np.float64) - real[mask].astype(np.float64)) ** 2).mean()
    return float(min(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)), 99.0))


def explore_replay(env, seed: int, plan, names, turn_steps: int):
    """Reset with `seed` and take the actions of `plan`, None standing for the explore
    policy's choice; stops at an episode end. Frames (T+1, ...), actions (T,), and
    whether the episode ended (terminated or truncated) on the way."""
    policy = ExplorePolicy(names, 1, turn_steps=turn_steps, seed=seed)
    frame, info = env.reset(seed=seed)
    frames, actions = [frame], []
    for step in plan:
        gt = {k: np.asarray(v)[None] for k, v in info.get("gt", {}).items()}
        a = int(policy.act(frame[None], {"gt": gt})[0]) if step is None else step
        frame, _, terminated, truncated, info = env.step(a)
        frames.append(frame)
        actions.append(a)
        if terminated or truncated:
            return np.stack(frames), np.array(actions), True
    return np.stack(frames), np.array(actions), False

