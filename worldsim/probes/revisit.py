"""Revisit: an object seen, left, and come back to from a new pose (a few steps off, another
angle), beside the exact return; PSNR of the object's region and of the whole frame at
the return, and what memory adds (memory on against off, script by script).
"""

from __future__ import annotations

import copy

import numpy as np

from worldsim.probes.common import Probe, ProbeSetup, Scenario, action_index, first_env_seed, masked_psnr, replay
from worldsim.probes.objects import object_recalled, sight_and_leave
from worldsim.tokenizer import psnr


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
    noop, n = action_index("NOOP"), env.turn_steps
    scripts, s = [], first_env_seed(seed)
    while len(scripts) < count:
        s += 1
        if s >= first_env_seed(seed + 1):  # stay inside this probe seed's env seeds
            raise RuntimeError(f"found only {len(scripts)} of {count} revisit scripts in probe seed {seed}'s env seeds")
        rng = np.random.default_rng(s)
        sight = sight_and_leave(env, s, rng, context, min_pixels)
        if sight is None:
            continue
        targets, turn, back, m = sight
        target = targets[int(rng.integers(len(targets)))]
        walk = list(WALK_BACK)[int(rng.integers(len(WALK_BACK)))]
        k = int(rng.integers(2, 5))
        aim = int(rng.integers(-1, 2))  # face the object, or one turn step beside it
        lead = [noop] * (context - 1 - m) + [turn] * m + [turn] * extra + [action_index(walk)] * k
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
        ways = {"new_pose": [action_index("TURN_LEFT" if face > 0 else "TURN_RIGHT")] * abs(face),
                "exact": [action_index(WALK_BACK[walk])] * k + [back] * (m + extra)}
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


GOAL_DB = 5.0  # memory should bring a returned object's region back at least this far above memory off


def revisit_headline(score: dict) -> str:
    new, exact = score["new_pose"], score.get("exact")
    text = (f"new pose: object region {new['object_psnr_db']:.2f} ± {new['object_psnr_db_stderr']:.2f} dB, "
            f"whole frame {new['frame_psnr_db']:.2f} dB, recall {new['recall']:.2f} of {new['scripts']}")
    if exact:
        text += (f"; exact return: object region {exact['object_psnr_db']:.2f} dB, "
                 f"whole frame {exact['frame_psnr_db']:.2f} dB, recall {exact['recall']:.2f}")
    return text


def memory_summary(entry: dict, setup: ProbeSetup) -> dict:
    """What memory adds, script by script, where the dream ran with memory on and off (and
    with memory re-rendered from new poses, where it ran so)."""
    if not {"dream_memory_on", "dream_memory_off"} <= entry.keys():
        return {}
    out = {}
    for name, key in (("dream_memory_on", "memory_gain"), ("dream_rerender", "rerender_gain")):
        if name not in entry:
            continue
        gain = revisit_memory_gain(entry[name], entry["dream_memory_off"])
        line = "; ".join(f"{v.replace('_', ' ')}: object region {g['object_psnr_db']:+.2f} ± "
                         f"{g['object_psnr_db_stderr']:.2f} dB, whole frame {g['frame_psnr_db']:+.2f} ± "
                         f"{g['frame_psnr_db_stderr']:.2f} dB" for v, g in gain.items())
        if setup.progress:
            print(f"probe revisit  {name.removeprefix('dream_').replace('_', ' ')} - memory off  {line} "
                  f"(goal: new pose object region +{GOAL_DB:g} dB)", flush=True)
        out[key] = {**gain, "goal_object_db": GOAL_DB}
    return out


def revisit_plot(cases, views: dict, scores: dict, path, count: int = 8):
    """The first `count` new-pose revisits: the real first sight, the real return (the
    object's mask outlined), and every predictor's return frame with its object-region PSNR."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(views)
    picks = [i for i, c in enumerate(cases) if c.meta["variant"] == "new_pose"][:count]
    if not picks:
        return
    fig, axes = plt.subplots(2 + len(names), len(picks), figsize=(1.5 * len(picks), 1.55 * (2 + len(names))),
                             squeeze=False)
    for j, i in enumerate(picks):
        case = cases[i]
        r = case.meta["return"]
        mask = case.gt["object_ids"][r] == case.meta["object"]
        panels = [("first sight", case.frames[case.meta["first"]], case.gt["object_ids"][case.meta["first"]]
                   == case.meta["object"], ""), ("real return", case.frames[r], mask, "")]
        panels += [(n, views[n][i][r - case.context], mask, f"{scores[n]['scenarios'][i]['object_psnr_db']:.1f} dB")
                   for n in names]
        for k, (label, image, outline, note) in enumerate(panels):
            ax = axes[k, j]
            ax.imshow(image, interpolation="nearest")
            ax.contour(outline.astype(float), levels=[0.5], colors="white", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if note:
                ax.set_xlabel(note, fontsize=7, labelpad=1)
            if j == 0:
                ax.set_ylabel(label.replace("_", "\n"), fontsize=7)
        axes[0, j].set_title(f"moved {case.meta['translation']:.2f} cells\nturned {case.meta['yaw_change_deg']:+.0f} deg, "
                             f"gap {case.meta['gap']}", fontsize=7)
    fig.suptitle("back to an object from a new pose (object outlined; object-region PSNR under each)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


PROBE = Probe("revisit", lambda setup: revisit_scenarios(setup.rooms, setup.count, setup.context, setup.seed),
              lambda cases, predictions, reference, setup: score_revisit(cases, predictions), revisit_headline,
              rooms_only=True, summary=memory_summary, figure=revisit_plot,
              figure_file="revisit_views.png")
