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
  revisit            an object seen, left, and come back to from a new pose (a few steps
                     off, another angle), beside the exact return: PSNR of the object's
                     region and of the whole frame at the return.
  action control     at each step, the real env renders what every action would have
                     shown from the real state; the dream agrees when its frame is nearest
                     the render of the action it was given.
  drift              PSNR and SSIM against a long real replay (exploration policy).

A predictor maps scenarios to predicted frames. Besides the dream (memory on or off),
`ground_truth`, `copy_last`, `shuffled` and `tokenizer_ceiling` give the reference points:
a probe that cannot tell the first from the next two is broken (tests/test_probes.py).
The loop, object, revisit and control probes need the Rooms world's exact ground truth
(object masks, cloneable state); drift runs on any gameplay env. With the env kwarg
world_seed=None each script runs on its own map, drawn from its env seed (`maps_of`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from envs import GRID_MOVES
from worldsim.dataset import PROBE_SEEDS_START
from worldsim.tokenizer import psnr, ssim

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


def map_fingerprint(env) -> str:
    """A short hash of a Rooms map (walls and object homes): equal maps, equal prints."""
    import hashlib

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


def _sight_and_leave(env, s: int, rng, context: int, min_pixels: int):
    """Reset `env` with seed `s` (pose A, the first sight) and plan how the view leaves the
    objects seen there: the objects of at least `min_pixels` pixels (targets), a turn
    direction drawn from `rng` and its reverse, and m, the turns until every target is out
    of view. None when nothing is in view or the view cannot leave within the context.
    `env` is left at the reset."""
    left, right = _action("TURN_LEFT"), _action("TURN_RIGHT")
    _, info = env.reset(seed=s)
    ids = info["gt"]["object_ids"]
    targets = [int(o) for o in np.unique(ids[ids >= 0]) if (ids == o).sum() >= min_pixels]
    if not targets:
        return None
    turn, back = (left, right) if rng.random() < 0.5 else (right, left)
    twin, m = copy.deepcopy(env), 0
    while m < context - 1:  # turns until every target is out of view
        m += 1
        seen = twin.step(turn)[4]["gt"]["object_ids"]
        if not np.isin(seen, targets).any():
            break
    if m >= context - 1:
        return None
    return targets, turn, back, m


def object_scenarios(env, gaps, per_gap: int, context: int, seed: int = 0, min_pixels: int = 20) -> list[Scenario]:
    """An object in full view at pose A; the context ends after turning until it is out
    of view; the agent turns further, waits, and turns back to A. The object is out of
    view for about `gap` steps (the exact count is in meta)."""
    noop = _action("NOOP")
    out, s = [], first_env_seed(seed)
    for gap in gaps:
        found = 0
        while found < per_gap:
            s += 1
            rng = np.random.default_rng(s)
            sight = _sight_and_leave(env, s, rng, context, min_pixels)
            if sight is None:
                continue
            targets, turn, back, m = sight
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


# Walks that leave the first-sight position in the revisit probe, and the walk that undoes each.
WALK_BACK = {"FORWARD": "BACK", "BACK": "FORWARD", "STRAFE_LEFT": "STRAFE_RIGHT", "STRAFE_RIGHT": "STRAFE_LEFT"}


def _out_of_view(gt, target: int, context: int):
    """Steps `target` is out of view between its last sight in the context and its first
    sight after it, and the frame where it is back; None when it is not back."""
    visible = np.array([(ids == target).any() for ids in gt["object_ids"]])
    seen = np.nonzero(visible[:context])[0]
    back = np.nonzero(visible[context:])[0]
    if not len(seen) or not len(back):
        return None
    back_at = context + int(back.min())
    return back_at - int(seen.max()) - 1, back_at


def revisit_scenarios(env, count: int, context: int, seed: int = 0, gap: int | None = None, min_pixels: int = 20,
                      extra: int = 2) -> list[Scenario]:
    """3D consistency from a new viewpoint: an object in view at pose A (the first sight);
    the context ends after turning until it is out of view; the agent turns `extra` steps
    further, walks 2 to 4 steps (forward, back or sideways: 0.5 to 1 cell), waits, and
    turns to face the object from there, so it comes back from pose B, another position
    and angle, at another size and screen place (`new_pose`). The same script with the
    walk undone and the turns reversed returns to A exactly (`exact`), the case the loop
    and object probes test. Both are out of view for at least `gap` steps (default: the
    context, so the first sight has left the model's window by the return).

    Returns `count` new-pose scenarios, then their `count` exact twins (meta `script`
    pairs them). A script is kept only when the walk is unblocked (so a pose dead-reckoned
    from the actions is right), the object is in view with at least `min_pixels` pixels at
    A and at both returns, and the exact return is A's pose and frame. Every scenario is
    padded with NOOPs to the longest script's length (one rollout length for the whole
    probe); the score is at meta["return"], the last frame before the padding."""
    gap = context if gap is None else gap
    noop, n = _action("NOOP"), env.turn_steps
    scripts, s = [], first_env_seed(seed)
    while len(scripts) < count:
        s += 1
        if s >= first_env_seed(seed + 1):  # stay inside this probe seed's env seeds
            raise RuntimeError(f"found only {len(scripts)} of {count} revisit scripts in probe seed {seed}'s env seeds")
        rng = np.random.default_rng(s)
        sight = _sight_and_leave(env, s, rng, context, min_pixels)
        if sight is None:
            continue
        targets, turn, back, m = sight
        target = targets[int(rng.integers(len(targets)))]
        walk = list(WALK_BACK)[int(rng.integers(len(WALK_BACK)))]
        k = int(rng.integers(2, 5))
        aim = int(rng.integers(-1, 2))  # face the object, or one turn step beside it
        lead = [noop] * (context - 1 - m) + [turn] * m + [turn] * extra + [_action(walk)] * k
        twin = copy.deepcopy(env)
        pose_a = np.array([*twin.pos, twin.yaw_index], float)
        for a in lead:
            twin.step(a)
        if not np.isclose(np.linalg.norm(twin.pos - pose_a[:2]), k * env.move_step, atol=1e-6):
            continue  # a wall stopped the walk
        bearing = np.arctan2(*(twin.objects[target] - twin.pos)[::-1])
        face = (int(np.round(bearing / (2 * np.pi / n))) + aim - twin.yaw_index) % n
        face = face - n if face > n // 2 else face
        if (twin.yaw_index + face) % n == pose_a[2]:  # come back at another angle too
            face += 1 if aim >= 0 else -1
        ways = {"new_pose": [_action("TURN_LEFT" if face > 0 else "TURN_RIGHT")] * abs(face),
                "exact": [_action(WALK_BACK[walk])] * k + [back] * (m + extra)}
        script = {}
        for variant, way in ways.items():
            actions, wait = None, 0
            for _ in range(2):  # measure the gap without waiting, then wait for the rest
                actions = lead + [noop] * wait + way
                frames, gt, _ = replay(env, s, actions)
                seen = _out_of_view(gt, target, context)
                if seen is None or seen[0] >= gap:
                    break
                wait += gap - seen[0]
            if seen is None or seen[0] < gap or (gt["object_ids"][-1] == target).sum() < min_pixels:
                break
            script[variant] = (actions, frames, gt, seen)
        if len(script) < 2:
            continue
        _, frames_x, gt_x, _ = script["exact"]
        if not (np.allclose(gt_x["pose"][-1], gt_x["pose"][0], atol=1e-5) and np.array_equal(frames_x[-1], frames_x[0])):
            continue
        scripts.append({"seed": s, "target": target, "walk": walk, "walk_steps": k, "turns_away": m + extra,
                        "script": len(scripts), **script})
    length = max(len(sc[v][0]) for sc in scripts for v in ("new_pose", "exact"))
    out = []
    for variant in ("new_pose", "exact"):
        for sc in scripts:
            actions, _, _, (gap_steps, back_at) = sc[variant]
            padded = actions + [noop] * (length - len(actions))
            frames, gt, _ = replay(env, sc["seed"], padded)
            j, target = len(actions), sc["target"]
            first, last = gt["object_ids"][0] == target, gt["object_ids"][j] == target
            turn_deg = (gt["pose"][j, 2] - gt["pose"][0, 2] + np.pi) % (2 * np.pi) - np.pi
            out.append(Scenario("revisit", frames, np.array(padded), gt, context, {
                "variant": variant, "script": sc["script"], "seed": sc["seed"], "object": target,
                "first": 0, "return": j, "gap": int(gap_steps), "back_in_view": int(back_at),
                "walk": sc["walk"], "walk_steps": sc["walk_steps"], "turns_away": sc["turns_away"],
                "translation": float(np.linalg.norm(gt["pose"][j, :2] - gt["pose"][0, :2])),
                "yaw_change_deg": float(np.degrees(turn_deg)),
                "pixels_first": int(first.sum()), "pixels_return": int(last.sum()),
                "column_first": float(np.nonzero(first)[1].mean()), "column_return": float(np.nonzero(last)[1].mean())}))
    return out


def masked_psnr(pred: np.ndarray, real: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB over the pixels of `mask` (capped at 99 like the other scores)."""
    mse = ((pred[mask].astype(np.float64) - real[mask].astype(np.float64)) ** 2).mean()
    return float(min(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)), 99.0))


def score_revisit(scenarios, predictions) -> dict:
    """At the return frame: PSNR of the object's region (its ground-truth mask there) and of
    the whole frame against the real render, and whether the object is recalled (as the
    object probe judges it); by variant (`new_pose`, `exact`), with per-script rows."""
    rows = []
    for s, p in zip(scenarios, predictions):
        j = s.meta["return"]
        real, pred = s.frames[j], p[j - s.context]
        mask = s.gt["object_ids"][j] == s.meta["object"]
        rows.append({k: s.meta[k] for k in ("variant", "script", "object", "gap", "translation", "yaw_change_deg",
                                            "pixels_first", "pixels_return")}
                    | {"object_psnr_db": masked_psnr(pred, real, mask),
                       "frame_psnr_db": float(np.minimum(psnr(pred, real), 99.0)),
                       "recalled": object_recalled(pred, real, mask)})
    out = {}
    for variant in ("new_pose", "exact"):
        of = [r for r in rows if r["variant"] == variant]
        if not of:
            continue
        obj = np.array([r["object_psnr_db"] for r in of])
        judged = [r["recalled"] for r in of if r["recalled"] is not None]
        out[variant] = {"object_psnr_db": float(obj.mean()),
                        "object_psnr_db_stderr": float(obj.std(ddof=1) / np.sqrt(len(obj))) if len(obj) > 1 else float("nan"),
                        "frame_psnr_db": float(np.mean([r["frame_psnr_db"] for r in of])),
                        "recall": float(np.mean(judged)) if judged else float("nan"), "scripts": len(of),
                        "translation_mean": float(np.mean([r["translation"] for r in of])),
                        "gap_mean": float(np.mean([r["gap"] for r in of]))}
    out["scenarios"] = rows
    return out


def revisit_memory_gain(on: dict, off: dict) -> dict:
    """Memory on minus memory off, paired per script: mean and standard error of the
    object-region and whole-frame PSNR differences, by variant."""
    out = {}
    for variant in ("new_pose", "exact"):
        pairs = [(a, b) for a, b in zip(on["scenarios"], off["scenarios"]) if a["variant"] == variant]
        if not pairs:
            continue
        out[variant] = {}
        for key in ("object_psnr_db", "frame_psnr_db"):
            d = np.array([a[key] - b[key] for a, b in pairs])
            out[variant][key] = float(d.mean())
            out[variant][key + "_stderr"] = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return out


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
    hits = []  # (steps dreamed, agreed)
    for s, p in zip(scenarios, predictions):
        cands = s.meta["candidates"]
        for t in range(len(cands)):
            given = int(s.actions[s.context - 1 + t])
            err = ((cands[t].astype(float) - p[t].astype(float)) ** 2).mean(axis=(1, 2, 3))
            nearest = int(err.argmin())
            hits.append((t, err[given] <= err[nearest] + 1e-9 or np.array_equal(cands[t][given], cands[t][nearest])))
            confusion[given, nearest] += 1
    steps, agreed = np.array(hits, float).T
    # The first step starts from the real state; later ones from the dream's own, so
    # they measure control and drift together.
    return {"agreement": float(agreed.mean()), "steps": len(hits), "chance": 1.0 / n,
            "agreement_by_step": [float(agreed[steps == t].mean()) for t in range(int(steps.max()) + 1)],
            "confusion": confusion.tolist(), "action_names": list(names)}


def drift_scenarios(env_id: str, env_kwargs: dict, count: int, context: int, steps: int, seed: int = 0) -> list[Scenario]:
    """Long real replays of the exploration policy (any gameplay env)."""
    import envs  # noqa: F401  (registers the gameplay ids)
    from envs import action_meanings, optional_attr

    length = context + steps + 1  # lift the env's step limit where it can be lifted
    env = (gym.make(env_id, **{**env_kwargs, "max_steps": length}) if env_id == ROOMS_ID
           else gym.make(env_id, max_episode_steps=length, **env_kwargs))
    names, turn_steps = action_meanings(env), optional_attr(env, "turn_steps", 24)
    out = []
    for s in range(first_env_seed(seed), first_env_seed(seed) + count):
        frames, actions, _ = explore_replay(env, s, [None] * (context - 1 + steps), names, turn_steps)
        out.append(Scenario("drift", frames, actions, {}, context, {"seed": s}))
    env.close()
    return out


def explore_replay(env, seed: int, plan, names, turn_steps: int):
    """Reset with `seed` and take the actions of `plan`, None standing for the explore
    policy's choice; stops at an episode end. Frames (T+1, ...), actions (T,), and
    whether the episode ended (terminated or truncated) on the way."""
    from agents.policies import ExplorePolicy

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


def lookback_scenarios(env_id: str, env_kwargs: dict, count: int, context: int, seed: int = 0) -> list[Scenario]:
    """Any env that can turn in place (TURN_LEFT, TURN_RIGHT and NOOP in its
    `action_meanings`): after a context walk of the explore policy, two FORWARD steps (one
    turn without FORWARD), so the view to come back to is not a context frame; then turn
    half a circle, wait until that view has left the context window, and turn back. Kept
    only where the real view returns exactly; scored as loop closure (`score_loop`)."""
    import envs  # noqa: F401  (registers the gameplay ids)
    from envs import action_meanings, optional_attr

    env = gym.make(env_id, **env_kwargs)
    names = action_meanings(env)
    if not {"TURN_LEFT", "TURN_RIGHT", "NOOP"} <= set(names):
        env.close()
        raise ValueError(f"the lookback probe turns in place: {env_id} has actions {names}, expected TURN_LEFT, "
                         "TURN_RIGHT and NOOP among them")
    half = max(1, optional_attr(env, "turn_steps", 24) // 2)
    out, s = [], first_env_seed(seed)
    for _ in range(count * 20):  # tries: an episode may end, or the view may not return exactly
        if len(out) == count:
            break
        rng = np.random.default_rng(s)
        turn, back = (names.index("TURN_LEFT"), names.index("TURN_RIGHT"))[::1 if rng.random() < 0.5 else -1]
        pre = [names.index("FORWARD")] * 2 if "FORWARD" in names else [turn]
        plan = [None] * (context - 1) + pre + [turn] * half + [names.index("NOOP")] * context + [back] * half
        frames, actions, ended = explore_replay(env, s, plan, names, 2 * half)
        start, ret = context - 1 + len(pre), len(plan)
        moved = not ended and np.abs(frames[start].astype(int) - frames[context - 1]).mean() > 2
        if moved and np.array_equal(frames[start], frames[ret]):
            out.append(Scenario("lookback", frames, actions, {}, context,
                                {"kind": "look_back", "start": start, "return": ret, "gap": ret - start, "seed": s}))
        s += 1
    env.close()
    if len(out) < count:
        raise ValueError(f"lookback: only {len(out)} of {count} scripts in {env_id} returned to the exact view "
                         f"(an env whose turns do not undo each other cannot be probed this way)")
    return out


BACK = {"move_left": "move_right", "move_right": "move_left", "move_up": "move_down", "move_down": "move_up"}


def walkback_scenarios(env_id: str, env_kwargs: dict, count: int, context: int, seed: int = 0, steps: int = 4,
                       view=(9, 7), min_change: float = 10.0, max_scan: int = 300) -> list[Scenario]:
    """Top-down grid worlds (Crafter: move_left/right/up/down, info["gt"]["player_pos"], a
    `view` of cells around the player in the frame's top rows, drawn as crafter draws
    them): random play (as the data was collected) until a walk would show something (at
    most `max_scan` steps), its last frames the context; two cells one way (so that the
    start view is no context frame, and copying the last one does not restore it); walk
    `steps` cells further, wait (half the scripts no steps, half a context window of
    noops), and walk back to the start. Cells at the far edge of the start view leave it
    and return: the scenario's gt["returned"] masks them in the returned frame (the
    player's own cell aside: it is drawn facing the way it last moved). The kind says
    whether the return comes within the context window or beyond. The way is one whose
    path the world map (gt["semantic"]) shows open and whose leaving cells differ from
    what replaces them (`_open_ways`); kept only where the real walk moved every step and
    came back to its start cell, and where the cells that left held something the far view
    does not show in their place (a walk over open grass would test nothing). Scored by
    `score_walkback`."""
    import envs  # noqa: F401  (registers the gameplay ids)
    from envs import action_meanings

    env = gym.make(env_id, **env_kwargs)
    names = list(action_meanings(env))
    if not set(GRID_MOVES) | {"noop"} <= set(names):
        env.close()
        raise ValueError(f"the walkback probe walks a grid: {env_id} has actions {names}, expected "
                         f"{', '.join(GRID_MOVES)} and noop among them")
    out, s = [], first_env_seed(seed)
    for _ in range(count * 20):  # tries: a walk may be blocked, cross open grass, or the episode may end
        if len(out) == count:
            break
        rng = np.random.default_rng(s)
        s += 1
        wait = 0 if len(out) % 2 == 0 else context
        walk, ways = _GridWalk(env, s - 1), []
        while not ways and len(walk.actions) < max_scan:  # random play until a walk would show something
            if not walk.take([int(rng.integers(len(names)))]):
                break
            ways = _open_ways(walk.gt, steps, view, lead=2) if len(walk.actions) >= context - 1 else []
        if not ways:
            continue
        way, first = str(rng.choice(ways)), len(walk.actions) - (context - 1)  # the context: the last frames before
        if not walk.take([names.index(way)] * (2 + steps) + [names.index("noop")] * wait
                         + [names.index(BACK[way])] * steps):
            continue
        frames, actions, pos = (np.stack(x[first:]) for x in (walk.frames, walk.actions, walk.positions))
        start, far = context + 1, context + 1 + steps
        if not (np.array_equal(pos[start] - pos[context - 1], np.multiply(GRID_MOVES[way], 2))
                and np.array_equal(pos[far] - pos[start], np.multiply(GRID_MOVES[way], steps))
                and np.array_equal(pos[-1], pos[start])):
            continue
        mask = _returned_cells(way, steps, view, frames.shape[1:3])
        if np.abs(frames[far][mask].astype(int) - frames[start][mask]).mean() < min_change:
            continue
        gap = len(actions) - start
        out.append(Scenario("walkback", frames, actions, {"returned": mask}, context,
                            {"kind": "within context" if gap < context else "beyond context", "start": start,
                             "return": len(actions), "gap": gap, "way": way, "seed": s - 1, "from_step": first}))
    env.close()
    if len(out) < count:
        raise ValueError(f"walkback: only {len(out)} of {count} scripts in {env_id} walked out and back unblocked "
                         "past something to remember (it reads the world map from info['gt']['semantic'])")
    return out


class _GridWalk:
    """A real episode stepped a plan at a time: its frames, actions, player positions."""

    def __init__(self, env, seed: int):
        self.env = env
        frame, info = env.reset(seed=seed)
        self.frames, self.actions, self.gt = [frame], [], info["gt"]
        self.positions = [info["gt"]["player_pos"]]

    def take(self, actions) -> bool:
        """Step `actions`; False if the episode ended on the way."""
        for a in actions:
            frame, _, terminated, truncated, info = self.env.step(a)
            self.frames.append(frame)
            self.actions.append(a)
            self.gt = info["gt"]
            self.positions.append(info["gt"]["player_pos"])
            if terminated or truncated:
                return False
        return True


def _open_ways(gt: dict, steps: int, view, lead: int = 0) -> list[str]:
    """The ways whose next `lead + steps` cells the world map shows walkable (Crafter's
    semantic map, indexed [x, y]: grass, sand or path, no creature) and along which, from
    `lead` cells on, the cells that leave the view differ from those that take their place
    on screen in at least a quarter of them (else a walk would show nothing to remember);
    [] without a map."""
    from envs.crafter_env import SEMANTIC_IDS

    if "semantic" not in gt:
        return []
    world, (x, y) = gt["semantic"], gt["player_pos"]
    cols, rows = view
    inside = lambda cx, cy: 0 <= cx < world.shape[0] and 0 <= cy < world.shape[1]  # noqa: E731
    walkable = [SEMANTIC_IDS.index(n) for n in ("grass", "sand", "path")]
    ways = []
    for way, (dx, dy) in GRID_MOVES.items():
        path = [(x + dx * k, y + dy * k) for k in range(1, lead + steps + 1)]
        if not all(inside(cx, cy) and world[cx, cy] in walkable for cx, cy in path):
            continue
        cells = np.argwhere(_returned_cells(way, steps, view, (rows, cols)))  # one pixel per cell: (row, col)
        leaving = [(x + dx * lead + c - cols // 2, y + dy * lead + r - rows // 2) for r, c in cells]
        pairs = [(a, (a[0] + dx * steps, a[1] + dy * steps)) for a in leaving]
        pairs = [(a, b) for a, b in pairs if inside(*a) and inside(*b)]
        if pairs and np.mean([world[a] != world[b] for a, b in pairs]) >= 0.25:
            ways.append(way)
    return ways


def _returned_cells(way: str, steps: int, view, frame_hw) -> np.ndarray:
    """Pixels of the start view's cells that leave it on a walk of `steps` cells `way`
    (the view's far edge) and come back when the walk returns."""
    cols, rows = view
    unit = frame_hw[1] // cols  # square cells, centred in the frame as crafter draws them (a border at sizes
    border = (frame_hw[1] - unit * cols) // 2  # that are not a multiple of the columns)
    cells = np.zeros((rows, cols), bool)
    dx, dy = GRID_MOVES[way]
    if dx:
        cells[:, slice(cols - steps, cols) if dx < 0 else slice(0, steps)] = True
    else:
        cells[slice(rows - steps, rows) if dy < 0 else slice(0, steps)] = True
    cells[rows // 2, cols // 2] = False  # the player's cell
    mask = np.zeros(frame_hw, bool)
    mask[border:border + rows * unit, border:border + cols * unit] = np.kron(cells, np.ones((unit, unit), bool))
    return mask


def score_walkback(scenarios, predictions) -> dict:
    """Loop closure of the returned view (`score_loop`), plus the PSNR of the cells that
    left the view and came back, by kind (within or beyond the context window)."""
    out = score_loop(scenarios, predictions)
    for s, p, row in zip(scenarios, predictions, out["scenarios"]):
        j = s.meta["return"] - s.context
        row["returned_cells_psnr_db"] = masked_psnr(p[j], s.frames[s.meta["return"]], s.gt["returned"])
    region = [r["returned_cells_psnr_db"] for r in out["scenarios"]]
    out["returned_cells_psnr_db"] = float(np.mean(region))
    out["returned_cells_psnr_db_stderr"] = float(np.std(region) / np.sqrt(len(region)))
    out["returned_cells_by_kind"] = {k: float(np.mean([r["returned_cells_psnr_db"] for r in out["scenarios"]
                                                       if r["kind"] == k])) for k in out["by_kind"]}
    return out


def score_drift(scenarios, predictions, horizons=(1, 10, 100, 1000)) -> dict:
    """Mean PSNR and SSIM per step after the context, and at the given horizons, over the
    steps every replay reached (an env may end its episodes sooner than asked: `steps`
    says how many were scored)."""
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
