"""Object persistence: an object seen in the context leaves the view for N steps and comes
back; recalled if, inside its ground-truth mask, the prediction has the object's colour
rather than its surroundings'.
"""

from __future__ import annotations

import copy

import numpy as np

from worldsim.probes.common import Probe, Scenario, action_index, first_env_seed, replay


def sight_and_leave(env, s: int, rng, context: int, min_pixels: int):
    """Reset `env` with seed `s` (pose A, the first sight) and plan how the view leaves the
    objects seen there: the objects of at least `min_pixels` pixels (targets), a turn
    direction drawn from `rng` and its reverse, and m, the turns until every target is out
    of view. None when nothing is in view or the view cannot leave within the context.
    `env` is left at the reset."""
    left, right = action_index("TURN_LEFT"), action_index("TURN_RIGHT")
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
    noop = action_index("NOOP")
    out, s = [], first_env_seed(seed)
    for gap in gaps:
        found = 0
        while found < per_gap:
            s += 1
            rng = np.random.default_rng(s)
            sight = sight_and_leave(env, s, rng, context, min_pixels)
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


def objects_headline(score: dict) -> str:
    gaps = ", ".join(f"{g}:{r:.2f}" for g, r in score["recall_all_by_gap"].items())
    sizes = ", ".join(f"{b}: {r:.2f} of {score['objects_by_size'][b]}" for b, r in score["recall_all_by_size"].items())
    return (f"recall {score['recall_all']:.2f} ± {score['recall_all_stderr']:.2f} of all {score['objects_all']} "
            f"objects (by gap {gaps}; by size {sizes}); "
            f"{score['recall']:.2f} of the {score['objects']} the tokenizer shows")


def objects_plot(cases, views: dict, scores: dict, path, count: int = 16, half: int = 8):
    """The `count` smallest objects of the objects probe: crops around each in the real
    returned view and in every predictor's, framed green where it counts as recalled and
    red where it does not (the small ones are where recall is won or lost)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(views)
    rows = sorted(scores[names[0]]["scenarios"], key=lambda r: r["pixels"])[:count]
    if not rows:
        return
    recalled = {n: {(r["scenario"], r["object"]): r["recalled"] for r in scores[n]["scenarios"]} for n in names}
    fig, axes = plt.subplots(1 + len(names), len(rows), figsize=(1.1 * len(rows), 1.3 * (1 + len(names))),
                             squeeze=False)
    for j, row in enumerate(rows):
        case = cases[row["scenario"]]
        ys, xs = np.nonzero(case.gt["object_ids"][-1] == row["object"])
        h, w = case.frames.shape[1:3]
        y0 = int(np.clip(ys.mean() - half, 0, h - 2 * half))
        x0 = int(np.clip(xs.mean() - half, 0, w - 2 * half))
        crop = lambda frame: frame[y0:y0 + 2 * half, x0:x0 + 2 * half]  # noqa: E731
        key = (row["scenario"], row["object"])
        panels = [("real", crop(case.frames[-1]), None)] + [(n, crop(views[n][row["scenario"]][-1]), recalled[n][key])
                                                          for n in names]
        for i, (label, image, hit) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if hit is not None:
                for spine in ax.spines.values():
                    spine.set_edgecolor("tab:green" if hit else "tab:red")
                    spine.set_linewidth(2.5)
            if j == 0:
                ax.set_ylabel(label.replace("_", "\n"), fontsize=7)
        axes[0, j].set_title(f"{row['pixels']} px\ngap {row['gap']}", fontsize=7)
    fig.suptitle(f"the {len(rows)} smallest objects, back in view (green: recalled, red: missed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


PROBE = Probe("objects", lambda setup: object_scenarios(setup.rooms, setup.object_gaps, setup.count, setup.context,
                                                        setup.seed),
              lambda cases, predictions, reference, setup: score_objects(cases, predictions, reference),
              objects_headline, rooms_only=True, figure=objects_plot,
              figure_file="objects_smallest.png")
