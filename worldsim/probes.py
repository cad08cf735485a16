"""Probes: does the world model keep the world consistent? Scored against a real env.

Each probe scripts real episodes (`Scenario`: real frames, the actions, ground truth, and
how many leading frames are given as context), asks a predictor for the frames after the
context, and scores them against the real ones:

  loop closure       turn through 360 degrees, or walk out and back, so the start view
                     returns after more steps than the context window holds; PSNR of the
                     returned view against the real frame and against the dream's own
                     start view.
  object persistence an object seen in the context leaves the view for N steps and comes
                     back; recalled if, inside its ground-truth mask, the prediction has
                     the object's colour rather than its surroundings'.
  action control     at each step, the real env renders what every action would have
                     shown from the real state; the dream agrees when its frame is nearest
                     the render of the action it was given.
  drift              PSNR and SSIM against a long real replay (exploration policy).

A predictor maps scenarios to predicted frames. Besides the dream (memory on or off),
`ground_truth`, `copy_last`, `shuffled` and `tokenizer_ceiling` give the reference points:
a probe that cannot tell the first from the next two is broken (tests/test_probes.py).
The loop, object and control probes need the Rooms world's exact ground truth (object
masks, cloneable state); drift runs on any gameplay env.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from worldsim.tokenizer import psnr, ssim

ROOMS_ID = "worldsim/Rooms-v0"
SEEDS_PER_PROBE_SEED = 100_000  # env seeds a probe seed owns: seeds k and k+1 script disjoint episodes


def first_env_seed(seed: int) -> int:
    """The first env seed the scripts of probe seed `seed` draw from (seed 0: env seed 0)."""
    return seed * SEEDS_PER_PROBE_SEED


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


# ------------------------------------------------------------------ predictors
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
    import torch

    def predict(scenarios):
        with torch.no_grad():
            return [np.concatenate([model.decode(model.encode(s.target[i:i + 256][None]))[0].cpu().numpy()
                                    for i in range(0, len(s.target), 256)]) for s in scenarios]
    return predict


def dream(model, memory: bool | None, seed: int = 0, batch: int = 16, sample_steps: int | None = None,
          memory_guidance: float | None = None):
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
                                             memory_guidance=memory_guidance)
                for i, f in zip(idx[j:j + batch], frames):
                    out[i] = f
        return out
    return predict


# ------------------------------------------------------------------ real episodes
def make_rooms(env_kwargs: dict | None = None, **overrides):
    """The unwrapped Rooms env (its state can be copied for counterfactual renders)."""
    from envs.rooms import RoomsEnv

    return RoomsEnv(**{**(env_kwargs or {}), **overrides})


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


def _action(name: str) -> int:
    from envs.rooms import ACTIONS
    return ACTIONS.index(name)


def _context_walk(rng, n: int) -> list[int]:
    """Actions of a short real walk that gives the model its context."""
    return [int(a) for a in rng.choice([_action("FORWARD"), _action("TURN_LEFT"), _action("TURN_RIGHT")], size=n)]


def loop_scenarios(env, count: int, context: int, seed: int = 0) -> list[Scenario]:
    """Half turn in place through a full circle, half walk out, turn back, walk back and
    turn again; both start after two forward steps, so the start view is not a context
    frame. Only scripts whose real path returns to the exact start pose are kept."""
    fwd, left, right = _action("FORWARD"), _action("TURN_LEFT"), _action("TURN_RIGHT")
    out, s = [], first_env_seed(seed)
    while len(out) < count:
        rng = np.random.default_rng(s)
        kind = "turn_360" if len(out) % 2 == 0 else "out_and_back"
        turn = left if rng.random() < 0.5 else right
        half = env.turn_steps // 2
        if kind == "turn_360":
            loop = [turn] * env.turn_steps
        else:
            k = int(rng.integers(3, 7))
            loop = [fwd] * k + [turn] * half + [fwd] * k + [turn] * half
        actions = _context_walk(rng, context - 1) + [fwd, fwd] + loop
        frames, gt, _ = replay(env, s, actions)
        start, back = context + 1, len(actions)
        moved = np.abs(frames[start].astype(int) - frames[context - 1]).mean() > 2
        s += 1
        if moved and np.allclose(gt["pose"][start], gt["pose"][back], atol=1e-5) and np.array_equal(frames[start], frames[back]):
            out.append(Scenario("loop", frames, np.array(actions), gt, context,
                                {"kind": kind, "start": start, "return": back, "gap": back - start, "seed": s - 1}))
    return out


def score_loop(scenarios, predictions) -> dict:
    """PSNR of the returned view: against the real frame, and against the predictor's
    own start view (self-consistency)."""
    real, own, rows = [], [], []
    for s, p in zip(scenarios, predictions):
        i, j = s.meta["start"] - s.context, s.meta["return"] - s.context
        real.append(float(np.minimum(psnr(p[j], s.frames[s.meta["return"]]), 99.0)))
        own.append(float(np.minimum(psnr(p[j], p[i]), 99.0)))
        rows.append({"kind": s.meta["kind"], "gap": s.meta["gap"], "psnr_vs_real_db": real[-1], "psnr_vs_own_start_db": own[-1]})
    kinds = sorted({r["kind"] for r in rows})
    return {"psnr_vs_real_db": float(np.mean(real)), "psnr_vs_own_start_db": float(np.mean(own)),
            "by_kind": {k: float(np.mean([r["psnr_vs_real_db"] for r in rows if r["kind"] == k])) for k in kinds},
            "scenarios": rows}


def object_scenarios(env, gaps, per_gap: int, context: int, seed: int = 0, min_pixels: int = 20) -> list[Scenario]:
    """An object in full view at pose A; the context ends after turning until it is out
    of view; the agent turns further, waits, and turns back to A. The object is out of
    view for about `gap` steps (the exact count is in meta)."""
    noop, left, right = _action("NOOP"), _action("TURN_LEFT"), _action("TURN_RIGHT")
    out, s = [], first_env_seed(seed)
    for gap in gaps:
        found = 0
        while found < per_gap:
            s += 1
            rng = np.random.default_rng(s)
            frame, info = env.reset(seed=s)
            ids = info["gt"]["object_ids"]
            targets = [int(o) for o in np.unique(ids[ids >= 0]) if (ids == o).sum() >= min_pixels]
            if not targets:
                continue
            turn, back = (left, right) if rng.random() < 0.5 else (right, left)
            twin, m = copy.deepcopy(env), 0
            while m < context - 1:  # turns until every target is out of view
                m += 1
                seen = twin.step(turn)[4]["gt"]["object_ids"]
                if not np.isin(seen, targets).any():
                    break
            if m >= context - 1:
                continue
            extra = 2
            hidden = m + 2 * extra - 1  # frames without the objects when nothing waits
            wait = max(0, gap - hidden)
            actions = [noop] * (context - 1 - m) + [turn] * m + [turn] * extra + [noop] * wait + [back] * (m + extra)
            frames, gt, _ = replay(env, s, actions)
            end_ids = gt["object_ids"][-1]
            if not all((end_ids == o).sum() >= min_pixels for o in targets):
                continue
            visible = np.array([np.isin(f, targets).any() for f in gt["object_ids"]])
            last_seen = int(np.nonzero(visible[:context])[0].max())
            back_at = context + int(np.nonzero(visible[context:])[0].min())
            out_of_view = back_at - last_seen - 1  # steps the objects were out of view
            out.append(Scenario("objects", frames, np.array(actions), gt, context,
                                {"objects": targets, "gap": out_of_view, "gap_asked": gap, "seed": s}))
            found += 1
    return out


def object_recalled(pred: np.ndarray, real: np.ndarray, mask: np.ndarray, ring: int = 3) -> bool | None:
    """Whether `pred` shows the object of `mask` in `real`: the mean colour inside the mask
    is nearer the object's than half-way to its surroundings'. None when the object's
    colour is too close to its surroundings to tell."""
    import cv2

    around = cv2.dilate(mask.astype(np.uint8), np.ones((2 * ring + 1, 2 * ring + 1), np.uint8)).astype(bool) & ~mask
    if not around.any():
        return None
    obj = real[mask].astype(float).mean(0) / 255
    background = real[around].astype(float).mean(0) / 255
    contrast = np.linalg.norm(obj - background)
    if contrast < 0.15:
        return None
    return bool(np.linalg.norm(pred[mask].astype(float).mean(0) / 255 - obj) < 0.5 * contrast)


SIZE_BINS = ("under 30 px", "30-99 px", "100 px or more")


def size_bin(pixels: int) -> str:
    """Objects by how many pixels they cover in the returned view (64x64 frames): the
    smallest are a few pixels across, and the tokenizer already blurs them."""
    return SIZE_BINS[0] if pixels < 30 else SIZE_BINS[1] if pixels < 100 else SIZE_BINS[2]


def score_objects(scenarios, predictions, reference=None) -> dict:
    """Share of objects recalled in the final frame (back at pose A): `recall_all` (the
    headline, with its standard error), by gap and by object size.

    With `reference` (the tokenizer ceiling's predictions), `recall` counts only the
    objects the reference itself shows: what the video compression network loses (small,
    distant objects), no latent dynamics model can remember."""
    rows = []
    for i, (s, p) in enumerate(zip(scenarios, predictions)):
        ids = s.gt["object_ids"][-1]
        for o in s.meta["objects"]:
            hit = object_recalled(p[-1], s.frames[-1], ids == o)
            if hit is None:
                continue
            shown = True if reference is None else bool(object_recalled(reference[i][-1], s.frames[-1], ids == o))
            rows.append({"scenario": i, "gap": s.meta["gap"], "gap_asked": s.meta["gap_asked"], "object": o, "recalled": hit,
                         "representable": shown, "pixels": int((ids == o).sum())})
    kept = [r for r in rows if r["representable"]]
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731

    def by_gap(of, key):
        groups = {}
        for r in of:
            groups.setdefault(r["gap_asked"], []).append(r[key])
        return {int(g): mean(v) for g, v in sorted(groups.items())}
    recall_all = mean([r["recalled"] for r in rows])
    sizes = [size_bin(r["pixels"]) for r in rows]
    return {"recall": mean([r["recalled"] for r in kept]), "objects": len(kept),
            "recall_all": recall_all, "objects_all": len(rows),
            # binomial standard error: how far other scripts could move the headline
            "recall_all_stderr": float(np.sqrt(recall_all * (1 - recall_all) / len(rows))) if rows else float("nan"),
            "recall_by_gap": by_gap(kept, "recalled"), "recall_all_by_gap": by_gap(rows, "recalled"),
            "gap_steps_by_gap": by_gap(rows, "gap"),
            "recall_all_by_size": {b: mean([r["recalled"] for r, s in zip(rows, sizes) if s == b])
                                   for b in SIZE_BINS if b in sizes},
            "objects_by_size": {b: sizes.count(b) for b in SIZE_BINS if b in sizes}, "scenarios": rows}


def control_scenarios(env, count: int, context: int, horizon: int = 8, seed: int = 0) -> list[Scenario]:
    """Uniformly random actions after a context walk, with the counterfactual renders of
    every action from each real state."""
    out = []
    for s in range(first_env_seed(seed), first_env_seed(seed) + count):
        rng = np.random.default_rng(s)
        actions = _context_walk(rng, context - 1) + [int(a) for a in rng.integers(env.action_space.n, size=horizon)]
        frames, gt, candidates = replay(env, s, actions, counterfactual_from=context - 1)
        out.append(Scenario("control", frames, np.array(actions), gt, context, {"candidates": candidates, "seed": s}))
    return out


def score_control(scenarios, predictions, names) -> dict:
    """Agreement: the predicted frame is nearest the real render of the given action (ties
    between actions with the same render count as agreement). Also a confusion matrix."""
    n = len(names)
    confusion = np.zeros((n, n), int)
    hits = []
    for s, p in zip(scenarios, predictions):
        cands = s.meta["candidates"]
        for t in range(len(cands)):
            given = int(s.actions[s.context - 1 + t])
            err = ((cands[t].astype(float) - p[t].astype(float)) ** 2).mean(axis=(1, 2, 3))
            nearest = int(err.argmin())
            hits.append(bool(err[given] <= err[nearest] + 1e-9 or np.array_equal(cands[t][given], cands[t][nearest])))
            confusion[given, nearest] += 1
    return {"agreement": float(np.mean(hits)), "steps": len(hits), "chance": 1.0 / n,
            "confusion": confusion.tolist(), "action_names": list(names)}


def drift_scenarios(env_id: str, env_kwargs: dict, count: int, context: int, steps: int, seed: int = 0) -> list[Scenario]:
    """Long real replays of the exploration policy (any gameplay env)."""
    import envs  # noqa: F401  (registers the gameplay ids)
    from agents.policies import ExplorePolicy
    from envs import action_meanings

    env = gym.make(env_id, **{**env_kwargs, "max_steps": context + steps + 1} if env_id == ROOMS_ID else env_kwargs)
    out = []
    for s in range(first_env_seed(seed), first_env_seed(seed) + count):
        policy = ExplorePolicy(action_meanings(env), 1, seed=s)
        frame, info = env.reset(seed=s)
        frames, actions = [frame], []
        while len(actions) < context - 1 + steps:
            a = int(policy.act(frame[None], {"gt": {k: np.asarray(v)[None] for k, v in info.get("gt", {}).items()}})[0])
            frame, _, terminated, truncated, info = env.step(a)
            frames.append(frame)
            actions.append(a)
            if terminated or truncated:
                break
        out.append(Scenario("drift", np.stack(frames), np.array(actions), {}, context, {"seed": s}))
    env.close()
    return out


def score_drift(scenarios, predictions, horizons=(1, 10, 100, 1000)) -> dict:
    """Mean PSNR and SSIM per step after the context, and at the given horizons."""
    n = min(len(p) for p in predictions)
    real = np.stack([s.target[:n] for s in scenarios])
    pred = np.stack([p[:n] for p in predictions])
    p_curve = np.minimum(psnr(pred, real), 99.0).mean(0)
    s_curve = np.stack([ssim(pred[:, t], real[:, t]) for t in range(n)], 1).mean(0)
    at = [h for h in horizons if h <= n]
    return {"steps": n, "psnr_db_at": {h: float(p_curve[h - 1]) for h in at},
            "ssim_at": {h: float(s_curve[h - 1]) for h in at},
            "psnr_db_mean": float(p_curve.mean()), "psnr_curve": p_curve.round(3).tolist(),
            "ssim_curve": s_curve.round(4).tolist()}
