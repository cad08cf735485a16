"""`worldsim probe`: run the probes on a world model, memory on beside memory off, with
the baselines, and write report.json, a summary plot and side-by-side videos.

    worldsim probe --checkpoint worldsim/checkpoints/rooms.safetensors --out probes/

DIR/report.json    every score, per probe and predictor (and per scenario)
DIR/summary.png    loop closure, object recall by gap, action agreement, drift curves, and
                   the revisit probe's object-region PSNR (memory on against off per script)
DIR/control_confusion.png   given action against the action the dream's frame shows
DIR/objects_smallest.png     the smallest objects, real beside each predictor's returned view
DIR/revisit_views.png        revisits from a new pose: first sight, real return, each predictor's
DIR/<probe>.mp4    real | dream with memory | dream without memory, one scenario each
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from worldsim import probes as P
from worldsim.dataset import _atomic_write_bytes

PROBES = ("loop", "objects", "revisit", "control", "drift", "lookback", "walkback")
ROOMS_ONLY = ("loop", "objects", "revisit", "control")
REVISIT_GOAL_DB = 5.0  # memory should bring a returned object's region back at least this far above memory off


def run_probes(checkpoint=None, out="probes", env_id: str | None = None, probes=None, count: int = 24,
               object_gaps=None, drift_episodes: int = 4, drift_steps: int = 1000, seed: int = 0,
               sample_steps: int | None = None, memory_guidance: float | None = None, progress: bool = True,
               env_kwargs: dict | None = None) -> dict:
    """`env_kwargs` go to the real env over the model's own, e.g. {"world_seed": None}: a
    new map per script, drawn from the script's env seed (so from the probe seed), maps the
    model never saw; {"world_seed": 7}: that map. The report records the maps run on."""
    from worldsim.dream_env import load_world_model

    model = load_world_model(checkpoint, env_id)
    env_id = env_id or model.info.get("env_id")
    names = list(model.info.get("action_meanings") or [])
    if not names and model.info["action_space"]["type"] == "Discrete":
        names = [f"ACTION_{i}" for i in range(model.info["action_space"]["n"])]
    if probes is None:  # lookback repeats what loop measures on Rooms; grid worlds walk instead of turning
        probes = ([p for p in PROBES if p not in ("lookback", "walkback")] if env_id == P.ROOMS_ID
                  else ["drift", "walkback" if set(P.GRID_MOVES) <= set(names) else "lookback"])
    unknown = set(probes) - set(PROBES)
    if unknown:
        raise ValueError(f"unknown probes {sorted(unknown)}; expected some of {PROBES}")
    if env_id != P.ROOMS_ID and set(probes) & set(ROOMS_ONLY):
        raise ValueError(f"the {'/'.join(ROOMS_ONLY)} probes need {P.ROOMS_ID}'s exact ground truth (object masks, "
                         f"a state that can be copied); for {env_id} run --probes drift and lookback or walkback")
    context = model.dynamics.cfg.max_frames - 1
    object_gaps = object_gaps or [context // 2, context, 2 * context, 4 * context]
    has_memory = model.has_memory
    predictors = {}
    if has_memory:
        predictors["dream_memory_on"] = P.dream(model, True, seed, sample_steps=sample_steps,
                                                memory_guidance=memory_guidance)
    predictors["dream_memory_off"] = P.dream(model, False, seed, sample_steps=sample_steps)
    predictors["copy_last"] = P.copy_last
    predictors["tokenizer_ceiling"] = P.tokenizer_ceiling(model)

    real_kwargs = {**(model.info.get("env_kwargs") or {}), **(env_kwargs or {})}
    rooms = P.make_rooms(real_kwargs, collectible=False) if env_id == P.ROOMS_ID else None
    scenarios = {
        "loop": lambda: P.loop_scenarios(rooms, count, context, seed),
        "objects": lambda: P.object_scenarios(rooms, object_gaps, count, context, seed),
        "revisit": lambda: P.revisit_scenarios(rooms, count, context, seed),
        "control": lambda: P.control_scenarios(rooms, count, context, seed=seed),
        "drift": lambda: P.drift_scenarios(env_id, real_kwargs, drift_episodes, context, drift_steps, seed),
        "lookback": lambda: P.lookback_scenarios(env_id, real_kwargs, count, context, seed),
        "walkback": lambda: P.walkback_scenarios(env_id, real_kwargs, count, context, seed),
    }
    scorers = {"loop": P.score_loop, "lookback": P.score_loop, "walkback": P.score_walkback, "revisit": P.score_revisit,
               "control": lambda s, p: P.score_control(s, p, names), "drift": P.score_drift}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": str(checkpoint or "shipped Rooms model"), "env_id": env_id, "env_kwargs": real_kwargs,
              "context_frames": context,
              "memory": has_memory, "predictors": list(predictors), "probes": {},
              "sample_steps": sample_steps or model.dynamics.cfg.sample_steps,
              "memory_guidance": None if not has_memory else
              model.dynamics.cfg.memory_guidance if memory_guidance is None else memory_guidance,
              "action_guidance": model.dynamics.cfg.action_guidance}
    object_views, revisit_views = {}, {}
    for probe in probes:
        t0 = time.perf_counter()
        cases = scenarios[probe]()
        report["probes"][probe] = {"scenarios": len(cases)}
        if probe == "drift":
            reached = min(len(c.target) for c in cases)
            report["probes"][probe]["steps_asked"] = drift_steps
            if reached < drift_steps:  # the env ends its episodes sooner than asked and its limit cannot be lifted
                print(f"probe drift: {env_id} ended an episode after {reached} of the {drift_steps} steps asked; "
                      f"drift is scored over {reached} steps", file=sys.stderr, flush=True)
        shown = {}
        reference = predictors["tokenizer_ceiling"](cases) if probe == "objects" else None
        for name, predict in predictors.items():
            predictions = reference if name == "tokenizer_ceiling" and reference is not None else predict(cases)
            report["probes"][probe][name] = (P.score_objects(cases, predictions, reference) if probe == "objects"
                                             else scorers[probe](cases, predictions))
            shown[name] = predictions[0]
            if probe == "objects":
                object_views[name] = predictions
            if probe == "revisit":
                revisit_views[name] = predictions
            if progress:
                print(f"probe {probe:8s} {name:18s} {_headline(probe, report['probes'][probe][name])}", flush=True)
        if rooms is not None:
            report["probes"][probe]["maps"] = P.maps_of(rooms, cases)
        if probe == "revisit" and {"dream_memory_on", "dream_memory_off"} <= set(predictors):
            gain = P.revisit_memory_gain(report["probes"][probe]["dream_memory_on"],
                                         report["probes"][probe]["dream_memory_off"])
            report["probes"][probe]["memory_gain"] = {**gain, "goal_object_db": REVISIT_GOAL_DB}
            if progress:
                print(f"probe revisit  memory on - off  {_gain_line(gain)}", flush=True)
        report["probes"][probe]["seconds"] = round(time.perf_counter() - t0, 1)
        _video(out / f"{probe}.mp4", cases[0], shown)
        if probe == "objects":
            _objects_plot(cases, object_views, report["probes"]["objects"], out / "objects_smallest.png")
        if probe == "revisit":
            _revisit_plot(cases, revisit_views, report["probes"]["revisit"], out / "revisit_views.png")
    _summary_plot(report, out / "summary.png")
    if "control" in report["probes"]:
        _confusion_plot(report["probes"]["control"], out / "control_confusion.png")
    _atomic_write_bytes(out / "report.json", json.dumps(report, indent=1).encode())
    return {"out": str(out), **{p: {k: _headline(p, v) for k, v in r.items() if k in predictors}
                                for p, r in report["probes"].items()}}


def _gain_line(gain: dict) -> str:
    parts = [f"{v.replace('_', ' ')}: object region {g['object_psnr_db']:+.2f} ± {g['object_psnr_db_stderr']:.2f} dB, "
             f"whole frame {g['frame_psnr_db']:+.2f} ± {g['frame_psnr_db_stderr']:.2f} dB" for v, g in gain.items()]
    return "; ".join(parts) + f" (goal: new pose object region +{REVISIT_GOAL_DB:g} dB)"


def _headline(probe: str, score: dict) -> str:
    if probe in ("loop", "lookback", "walkback"):
        text = f"returned view {score['psnr_vs_real_db']:.2f} dB vs real ({score['psnr_vs_own_start_db']:.2f} vs own start)"
        if probe == "walkback":
            kinds = ", ".join(f"{k} {v:.2f}" for k, v in score["returned_cells_by_kind"].items())
            text += (f"; cells that left and came back {score['returned_cells_psnr_db']:.2f} ± "
                     f"{score['returned_cells_psnr_db_stderr']:.2f} dB ({kinds})")
        return text
    if probe == "objects":
        gaps = ", ".join(f"{g}:{r:.2f}" for g, r in score["recall_all_by_gap"].items())
        sizes = ", ".join(f"{b}: {r:.2f} of {score['objects_by_size'][b]}" for b, r in score["recall_all_by_size"].items())
        return (f"recall {score['recall_all']:.2f} ± {score['recall_all_stderr']:.2f} of all {score['objects_all']} "
                f"objects (by gap {gaps}; by size {sizes}); "
                f"{score['recall']:.2f} of the {score['objects']} the tokenizer shows")
    if probe == "revisit":
        new, exact = score["new_pose"], score.get("exact")
        text = (f"new pose: object region {new['object_psnr_db']:.2f} ± {new['object_psnr_db_stderr']:.2f} dB, "
                f"whole frame {new['frame_psnr_db']:.2f} dB, recall {new['recall']:.2f} of {new['scripts']}")
        if exact:
            text += (f"; exact return: object region {exact['object_psnr_db']:.2f} dB, "
                     f"whole frame {exact['frame_psnr_db']:.2f} dB, recall {exact['recall']:.2f}")
        return text
    if probe == "control":
        return f"action agreement {score['agreement']:.2f} over {score['steps']} steps (chance {score['chance']:.2f})"
    at = ", ".join(f"{h}:{v:.2f}" for h, v in score["psnr_db_at"].items())
    return f"PSNR dB at step {at}; mean {score['psnr_db_mean']:.2f}"


def _video(path, scenario, shown: dict, max_frames: int = 300):
    """Real | dream with memory | dream without memory (the dreams that exist), context
    frames included so the video starts from what the model saw; at most `max_frames`."""
    from worldsim.dream_video import side_by_side, write_video

    context = scenario.frames[:scenario.context]
    clip = scenario.frames
    for name in ("dream_memory_on", "dream_memory_off"):
        if name in shown:
            clip = side_by_side(clip, np.concatenate([context, shown[name]]))
    write_video(path, clip[:max_frames], fps=8)


def _summary_plot(report: dict, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, context = report["probes"], report["context_frames"]
    colours = {"dream_memory_on": "tab:green", "dream_memory_off": "tab:red", "copy_last": "tab:gray",
               "tokenizer_ceiling": "tab:blue"}
    fig, axes = plt.subplots(2, 3, figsize=(17.5, 8.5))
    ax = axes[0, 0]
    loop = next((p for p in ("loop", "lookback", "walkback") if p in results), "loop")  # loop closure, for each kind of env
    by_kind = "returned_cells_by_kind" if loop == "walkback" else "by_kind"  # a walk scores the cells that came back
    if loop in results:
        kinds = sorted(results[loop][report["predictors"][0]][by_kind])
        names = [n for n in report["predictors"] if n in results[loop]]
        for i, name in enumerate(names):
            vals = [results[loop][name][by_kind][k] for k in kinds]
            ax.bar(np.arange(len(kinds)) + (i - len(names) / 2 + 0.5) * 0.8 / len(names), vals, 0.8 / len(names),
                   label=name, color=colours[name])
        if loop != "walkback":  # the loop-closure goal; the walk has none of its own
            ax.axhline(25, ls="--", c="k", lw=1, label="goal 25 dB")
        ax.set_xticks(range(len(kinds)), kinds)
        ax.set_ylabel("returned cells PSNR vs real (dB)" if loop == "walkback" else "returned view PSNR vs real (dB)")
        ax.legend(fontsize=8)
    ax.set_title({"loop": "loop closure (gap > context window)", "lookback": "lookback (gap > context window)",
                  "walkback": "walk out and back: the cells that left the view"}[loop])
    ax = axes[0, 1]
    if "objects" in results:
        for name in report["predictors"]:
            r = results["objects"][name]
            ax.plot(list(r["gap_steps_by_gap"].values()), list(r["recall_all_by_gap"].values()), "o-", label=name,
                    color=colours[name])
        ax.axvline(context, ls=":", c="k", lw=1, label=f"context window ({context})")
        ax.axhline(0.9, ls="--", c="k", lw=1, label="goal 0.9")
        ax.set_xlabel("steps out of view")
        ax.set_ylabel("objects recalled at the right place (all)")
        ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=8)
        best = results["objects"][report["predictors"][0]]
        sizes = ", ".join(f"{b} {r:.2f}" for b, r in best["recall_all_by_size"].items())
        ax.set_title(f"object persistence\n{report['predictors'][0]}: {best['recall_all']:.2f} ± "
                     f"{best['recall_all_stderr']:.2f} of {best['objects_all']}\nby size: {sizes}", fontsize=8)
    else:
        ax.set_title("object persistence")
    ax = axes[1, 0]
    if "control" in results:
        names = report["predictors"]
        ax.bar(range(len(names)), [results["control"][n]["agreement"] for n in names], color=[colours[n] for n in names])
        ax.axhline(results["control"][names[0]]["chance"], ls="--", c="k", lw=1, label="chance")
        ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
        ax.set_ylabel("frames nearest the given action's real render")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
    ax.set_title("action control")
    ax = axes[1, 1]
    if "drift" in results:
        for name in report["predictors"]:
            curve = np.array(results["drift"][name]["psnr_curve"])
            steps = np.arange(1, len(curve) + 1)
            ax.plot(steps, curve, color=colours[name], lw=0.5, alpha=0.3)
            k = min(15, len(curve))  # a running mean: single frames jump by several dB
            ax.plot(steps[k - 1:], np.convolve(curve, np.ones(k) / k, "valid"), label=f"{name} (mean of {k})",
                    color=colours[name], lw=1.5)
        ax.set_xscale("log")
        ax.set_xlabel("steps after the context")
        ax.set_ylabel("PSNR vs real replay (dB)")
        ax.legend(fontsize=8)
    ax.set_title("drift")
    _revisit_panels(report, axes[0, 2], axes[1, 2], colours)
    for ax in axes.flat:
        if not ax.has_data():
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set_xticks([]), ax.set_yticks([])
    guidance = "" if report["memory_guidance"] is None else f", memory guidance {report['memory_guidance']}"
    if report.get("action_guidance"):
        guidance += f", action guidance {report['action_guidance']}"
    maps = ""
    if report["env_id"] == P.ROOMS_ID:
        world_seed = report.get("env_kwargs", {}).get("world_seed", 0)
        maps = (", a new map per script (world_seed None)" if world_seed is None
                else f", map world_seed {world_seed}")
    fig.suptitle(f"{report['env_id']} probes: {report['checkpoint']} ({report['sample_steps']} denoising steps{guidance}"
                 f"{maps})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _revisit_panels(report: dict, bars, scatter, colours: dict):
    """Revisit: object-region and whole-frame PSNR per predictor, from a new pose and at
    the exact return; and per script, memory on against memory off on the object region."""
    results = report["probes"].get("revisit")
    bars.set_title("revisit: back to an object from a new pose")
    scatter.set_title("revisit: object region per script")
    if not results:
        return
    names = report["predictors"]
    variants = [v for v in ("new_pose", "exact") if v in results[names[0]]]
    groups = [(v, key) for key in ("object_psnr_db", "frame_psnr_db") for v in variants]
    for i, name in enumerate(names):
        r = results[name]
        bars.bar(np.arange(len(groups)) + (i - len(names) / 2 + 0.5) * 0.8 / len(names),
                 [r[v][key] for v, key in groups], 0.8 / len(names), label=name, color=colours[name],
                 yerr=[r[v][key + "_stderr"] if key + "_stderr" in r[v] else 0 for v, key in groups], capsize=2)
    bars.set_xticks(range(len(groups)), [f"{'object' if key.startswith('object') else 'frame'}\n{v.replace('_', ' ')}"
                                         for v, key in groups], fontsize=8)
    bars.set_ylabel("PSNR vs real at the return (dB)")
    bars.legend(fontsize=8)
    gain = results.get("memory_gain")
    if gain:
        lines = [f"{v.replace('_', ' ')} {g['object_psnr_db']:+.2f} ± {g['object_psnr_db_stderr']:.2f} dB"
                 for v, g in gain.items() if isinstance(g, dict)]
        bars.set_title("revisit: back to an object from a new pose\nmemory on - off, object region: "
                       + ", ".join(lines) + f"\n(goal: new pose +{gain['goal_object_db']:g} dB)", fontsize=8)
    if "dream_memory_on" in results and "dream_memory_off" in results:
        on, off = results["dream_memory_on"]["scenarios"], results["dream_memory_off"]["scenarios"]
        for v, marker in (("new_pose", "o"), ("exact", "x")):
            xy = np.array([(b["object_psnr_db"], a["object_psnr_db"]) for a, b in zip(on, off) if a["variant"] == v])
            if len(xy):
                scatter.scatter(xy[:, 0], xy[:, 1], marker=marker, s=18, label=v.replace("_", " "),
                                color="tab:green" if v == "new_pose" else "tab:olive")
        lo, hi = scatter.get_xlim()[0], max(scatter.get_xlim()[1], scatter.get_ylim()[1])
        scatter.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="memory on = off")
        scatter.plot([lo, hi], [lo + REVISIT_GOAL_DB, hi + REVISIT_GOAL_DB], "k--", lw=0.8,
                     label=f"+{REVISIT_GOAL_DB:g} dB (goal)")
        scatter.set_xlabel("memory off: object region PSNR (dB)")
        scatter.set_ylabel("memory on: object region PSNR (dB)")
        scatter.legend(fontsize=8)


def _revisit_plot(cases, views: dict, scores: dict, path, count: int = 8):
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


def _objects_plot(cases, views: dict, scores: dict, path, count: int = 16, half: int = 8):
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


def _confusion_plot(control: dict, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dreams = [n for n in ("dream_memory_on", "dream_memory_off") if n in control]
    fig, axes = plt.subplots(1, len(dreams), figsize=(5.5 * len(dreams), 5), squeeze=False)
    for ax, name in zip(axes[0], dreams):
        m = np.array(control[name]["confusion"], float)
        labels = control[name]["action_names"]
        ax.imshow(m / np.maximum(m.sum(1, keepdims=True), 1), cmap="Greens", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("action whose real render is nearest the dream")
        ax.set_ylabel("action given")
        ax.set_title(f"{name}: agreement {control[name]['agreement']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
