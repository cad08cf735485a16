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
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from envs import GRID_MOVES
from worldsim.dataset import atomic_write_bytes
from worldsim.dream_env import load_world_model
from worldsim.dream_video import side_by_side, write_video
from worldsim.inverse_dynamics import find_judge, load_inverse_dynamics
from worldsim.probes import PROBES
from worldsim.probes.common import ROOMS_ID, ProbeSetup, copy_last, dream, make_rooms, maps_of, tokenizer_ceiling
from worldsim.probes.revisit import GOAL_DB
from worldsim.world_model import RERENDER_MEMORY_GUIDANCE

ROOMS_ONLY = tuple(name for name, probe in PROBES.items() if probe.rooms_only)


def default_probes(env_id: str, action_names) -> list[str]:
    """Rooms: the probes made for it (loop measures there what lookback and walkback do);
    grid worlds: drift and walkback, and placed where the agent can plant; any other env:
    drift and lookback."""
    if env_id == ROOMS_ID:
        return [p for p in PROBES if p not in ("lookback", "walkback", "placed")]
    if not set(GRID_MOVES) <= set(action_names):
        return ["drift", "lookback"]
    return ["drift", "walkback"] + (["placed"] if {"do", "place_plant"} <= set(action_names) else [])


@dataclass(kw_only=True)
class ProbeConfig:
    out: str  # directory for report.json, summary.png and videos
    checkpoint: str | None = None  # world model (default: the shipped Rooms model)
    env: str | None = None  # the real env to score against (default: the model's)
    probes: str = ""  # comma-separated names (worldsim/probes/: loop, objects, revisit, control, drift, lookback, walkback, placed); empty: loop, objects, revisit, control and drift on Rooms, drift,walkback,placed on Crafter, drift,lookback on other envs
    count: int = 24  # scripts per probe (objects: per gap)
    env_kwargs: dict = field(default_factory=dict)  # JSON keyword arguments for the real env over the model's, e.g. '{"world_seed": null}' (a new map per script: unseen maps) or '{"world_seed": 7}'
    drift_episodes: int = 4  # real replays the drift probe scores
    drift_steps: int = 1000  # steps of each drift replay
    sample_steps: int | None = None  # denoising steps per frame (default: the model's)
    memory_guidance: float | None = None  # memory guidance weight w, 0 for none (default: the model's)
    rerender: bool = False  # also score the dream with memory re-rendered from new poses (`dream_rerender`; a model with a depth network)
    seed: int = 0  # scripts and sampling noise; each seed scripts episodes no other seed does
    device: str = "cpu"  # where the world model dreams: cpu or cuda (the real env and the judge stay on the CPU)
    inverse_dynamics: str | None = None  # the judge of the control probe's second reading (`worldsim train inverse-dynamics`); default on Rooms: the shipped one, "none" for no judge


def run_probes(cfg: ProbeConfig, progress: bool = True) -> dict:
    """Every probe asked for, on the world model, memory on beside memory off, with the
    baselines. `cfg.env_kwargs` go to the real env over the model's own, e.g.
    {"world_seed": None}: a new map per script, drawn from the script's env seed (so from
    the probe seed), maps the model never saw. The report records the maps run on."""
    model = load_world_model(cfg.checkpoint, cfg.env, device=cfg.device)
    env_id = cfg.env or model.info.get("env_id")
    names = list(model.info.get("action_meanings") or [])
    if not names and model.info["action_space"]["type"] == "Discrete":
        names = [f"ACTION_{i}" for i in range(model.info["action_space"]["n"])]
    model.use_rerender(cfg.rerender, model.has_memory)  # fails before any probe runs
    probes = [p for p in cfg.probes.split(",") if p] or default_probes(env_id, names)
    unknown = set(probes) - set(PROBES)
    if unknown:
        raise ValueError(f"unknown probes {sorted(unknown)}; expected some of {tuple(PROBES)}")
    if env_id != ROOMS_ID and set(probes) & set(ROOMS_ONLY):
        raise ValueError(f"the {'/'.join(ROOMS_ONLY)} probes need {ROOMS_ID}'s exact ground truth (object masks, "
                         f"a state that can be copied); for {env_id} run --probes drift and lookback, or walkback and placed")
    context = model.dynamics.cfg.max_frames - 1
    predictors = {}
    if model.has_memory:
        predictors["dream_memory_on"] = dream(model, True, cfg.seed, sample_steps=cfg.sample_steps,
                                              memory_guidance=cfg.memory_guidance)
    if cfg.rerender:  # what re-rendering recalled views from the new pose adds to memory
        predictors["dream_rerender"] = dream(model, True, cfg.seed, sample_steps=cfg.sample_steps,
                                             memory_guidance=cfg.memory_guidance, rerender=True)
    predictors["dream_memory_off"] = dream(model, False, cfg.seed, sample_steps=cfg.sample_steps)
    predictors["copy_last"] = copy_last
    predictors["tokenizer_ceiling"] = tokenizer_ceiling(model)

    judge_path = find_judge(cfg.inverse_dynamics, env_id) if "control" in probes else None
    judge = None if judge_path is None else load_inverse_dynamics(judge_path, env_id)
    real_kwargs = {**(model.info.get("env_kwargs") or {}), **cfg.env_kwargs}
    rooms = make_rooms(real_kwargs, collectible=False) if env_id == ROOMS_ID else None
    setup = ProbeSetup(env_id, real_kwargs, rooms, names, cfg.count, context, cfg.seed,
                       [context // 2, context, 2 * context, 4 * context], cfg.drift_episodes, cfg.drift_steps, progress,
                       judge)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": str(cfg.checkpoint or "shipped Rooms model"), "env_id": env_id, "env_kwargs": real_kwargs,
              "context_frames": context,
              "memory": model.has_memory, "predictors": list(predictors), "probes": {},
              "sample_steps": cfg.sample_steps or model.dynamics.cfg.sample_steps,
              "memory_guidance": None if not model.has_memory else
              model.dynamics.cfg.memory_guidance if cfg.memory_guidance is None else cfg.memory_guidance,
              "action_guidance": model.dynamics.cfg.action_guidance,
              "inverse_dynamics": None if judge_path is None else str(judge_path)}
    if cfg.rerender:  # re-rendering runs without memory guidance unless given (DreamCore)
        report["rerender_memory_guidance"] = (RERENDER_MEMORY_GUIDANCE if cfg.memory_guidance is None
                                              else cfg.memory_guidance)
    for name in probes:
        probe, t0 = PROBES[name], time.perf_counter()
        cases = probe.scenarios(setup)
        entry = report["probes"][name] = {"scenarios": len(cases)}
        reference = predictors["tokenizer_ceiling"](cases)  # the objects probe scores against what it shows
        views = {}
        for predictor, predict in predictors.items():
            views[predictor] = reference if predictor == "tokenizer_ceiling" else predict(cases)
            entry[predictor] = probe.score(cases, views[predictor], reference, setup)
            if progress:
                print(f"probe {name:8s} {predictor:18s} {probe.headline(entry[predictor])}", flush=True)
        if rooms is not None:
            entry["maps"] = maps_of(rooms, cases)
        if probe.summary is not None:
            entry.update(probe.summary(entry, setup))
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        _video(out / f"{name}.mp4", cases[0], {k: v[0] for k, v in views.items()})
        if probe.figure is not None:
            probe.figure(cases, views, entry, out / probe.figure_file)
    _summary_plot(report, out / "summary.png")
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=1).encode())
    return {"out": str(out), **{p: {k: PROBES[p].headline(v) for k, v in r.items() if k in predictors}
                                for p, r in report["probes"].items()}}


def _video(path, scenario, shown: dict, max_frames: int = 300):
    """Real | dream with memory | re-rendered | without memory (the dreams that exist), context
    frames included so the video starts from what the model saw; at most `max_frames`."""
    context = scenario.frames[:scenario.context]
    clip = scenario.frames
    for name in ("dream_memory_on", "dream_rerender", "dream_memory_off"):
        if name in shown:
            clip = side_by_side(clip, np.concatenate([context, shown[name]]))
    write_video(path, clip[:max_frames], fps=8)


def _summary_plot(report: dict, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, context = report["probes"], report["context_frames"]
    colours = {"dream_memory_on": "tab:green", "dream_rerender": "tab:olive", "dream_memory_off": "tab:red",
               "copy_last": "tab:gray", "tokenizer_ceiling": "tab:blue"}
    fig, axes = plt.subplots(2, 3, figsize=(17.5, 8.5))
    ax = axes[0, 0]
    loop = next((p for p in ("loop", "lookback", "walkback") if p in results), "loop")  # loop closure, for each kind of env
    by_kind = "returned_cells_by_kind" if loop == "walkback" else "by_kind"  # a walk scores the cells that came back
    if loop in results:
        _bars_by_kind(ax, results[loop], by_kind, report["predictors"], colours)
        if loop != "walkback":  # the loop-closure goal; the walk has none of its own
            ax.axhline(25, ls="--", c="k", lw=1, label="goal 25 dB")
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
    elif "placed" in results:  # grid worlds: what the agent placed, seen again from another cell
        _bars_by_kind(ax, results["placed"], "plant_cell_by_kind", report["predictors"], colours)
        ax.set_ylabel("the planted cell's PSNR vs real (dB)")
        ax.legend(fontsize=8)
        ax.set_title("placed: a planted sapling seen again from another cell")
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
    if report["env_id"] == ROOMS_ID:
        world_seed = report.get("env_kwargs", {}).get("world_seed", 0)
        maps = (", a new map per script (world_seed None)" if world_seed is None
                else f", map world_seed {world_seed}")
    fig.suptitle(f"{report['env_id']} probes: {report['checkpoint']} ({report['sample_steps']} denoising steps{guidance}"
                 f"{maps})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _bars_by_kind(ax, entry: dict, key: str, predictors, colours: dict):
    """One group of bars per script kind (within / beyond the context window...), one bar
    per predictor: `entry[predictor][key][kind]`."""
    names = [n for n in predictors if n in entry]
    kinds = sorted(entry[names[0]][key])
    for i, name in enumerate(names):
        ax.bar(np.arange(len(kinds)) + (i - len(names) / 2 + 0.5) * 0.8 / len(names),
               [entry[name][key][k] for k in kinds], 0.8 / len(names), label=name, color=colours[name])
    ax.set_xticks(range(len(kinds)), kinds)


def _revisit_panels(report: dict, bars, scatter, colours: dict):
    """Revisit: object-region and whole-frame PSNR per predictor, from a new pose and at
    the exact return; and per script, memory on (and re-rendered) against memory off on the object region."""
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
        off = results["dream_memory_off"]["scenarios"]
        for name in ("dream_memory_on", "dream_rerender"):  # each dream with memory, against memory off
            if name not in results:
                continue
            for v, marker in (("new_pose", "o"), ("exact", "x")):
                xy = np.array([(b["object_psnr_db"], a["object_psnr_db"])
                               for a, b in zip(results[name]["scenarios"], off) if a["variant"] == v])
                if len(xy):
                    scatter.scatter(xy[:, 0], xy[:, 1], marker=marker, s=18, color=colours[name],
                                    label=f"{name.removeprefix('dream_').replace('_', ' ')}, {v.replace('_', ' ')}")
        lo, hi = scatter.get_xlim()[0], max(scatter.get_xlim()[1], scatter.get_ylim()[1])
        scatter.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="memory on = off")
        scatter.plot([lo, hi], [lo + GOAL_DB, hi + GOAL_DB], "k--", lw=0.8,
                     label=f"+{GOAL_DB:g} dB (goal)")
        scatter.set_xlabel("memory off: object region PSNR (dB)")
        scatter.set_ylabel("memory on: object region PSNR (dB)")
        scatter.legend(fontsize=8)


