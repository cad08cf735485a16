"""A world model on one GPU in one command: collect real play, train the largest
dynamics config that fits the time budget, export it, and score it on held-out episodes.

    python -m training.gpu_recipe --out OUT [--game rooms|takecover|crafter] [--minutes 20] [--init worldsim/checkpoints/GAME.safetensors]

The game (`GAMES`) decides the env, the collecting policy, the shipped tokenizer that
encodes the frames (its encoder is shared with every dynamics model of that game, so the
result drops into `worldsim/checkpoints/` beside it), memory and patch size, and how the
termination head is trained: Rooms on procedurally generated maps (held-out episodes are
maps the model never saw), with pose-keyed memory; TakeCover and Crafter from random
play, with calibrated ends (`--end-weight 1`, then `export --calibrate-ends`).

OUT receives the world model (`GAME.safetensors`, fp16), `metrics.csv` of the run,
`figures.json` (replay PSNR/SSIM by horizon on held-out episodes beside copy-last-frame
and the tokenizer ceiling, the heads as detectors, the compute spent) and `replay.png`.
Data and the run directory go to `--work` (large; not meant to come back). Every option
is a field of RecipeConfig; `--salvage` exports the run's last checkpoint when the recipe
was stopped before it exported (training/gpu_chunk.sh does that at its time limit).
tests/test_gpu_recipe.py runs it end to end on CPU with a tiny config, so a session that
gets a GPU spends it training, not debugging.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from training.train_dynamics import TrainConfig
from worldsim.options import add_fields, from_args, nested

CHECKPOINTS = Path(__file__).resolve().parents[1] / "worldsim" / "checkpoints"  # GAME_tokenizer.safetensors
GAMES = {
    # memory: pose-keyed memory frames; patch: latent cells per token side where --patch is not given (16
    # tokens a frame with each game's tokenizer); end_weight 1 and calibrated ends for a dream that draws
    # its ends (--sample-ends).
    "rooms": {"env_id": "worldsim/Rooms-v0", "env_kwargs": {"world_seed": None}, "policy": "explore",
              "memory": 4, "patch": 4, "end_weight": 10.0, "calibrate_ends": False},
    "takecover": {"env_id": "worldsim/Vizdoom-TakeCover-v0", "env_kwargs": {}, "policy": "random",
                  "memory": 0, "patch": 2, "end_weight": 1.0, "calibrate_ends": True},
    # Crafter: explore walks the grid, to terrain that random play near the spawn rarely reaches.
    "crafter": {"env_id": "worldsim/Crafter-v0", "env_kwargs": {}, "policy": "explore",
                "memory": 0, "patch": 4, "end_weight": 1.0, "calibrate_ends": True},
}


@dataclass
class RecipeConfig:
    out: str  # the world model, its figures and its training log land here
    game: str = "rooms"  # rooms | takecover | crafter (GAMES)
    work: str = "/tmp/worldsim_recipe"  # datasets and the run directory
    minutes: float = 20.0  # training budget, wall-clock
    collect_steps: int = 400_000  # real transitions (Rooms: a new map per episode)
    num_envs: int = 16  # sub-envs, over all collectors
    collectors: int = 8  # collects side by side into one dataset: one process steps and writes only ~2,000 frames/s
    configs: str = "B,S,XS"  # candidates, largest first: the first that fits min_steps in the budget is trained
    min_steps: int = 3000  # fewest optimizer steps worth training a config for
    action_guidance: float = 2.0  # exported default, when trained with action dropout: the dream follows the action more often
    text_guidance: float = 3.0  # exported default, when trained with --text
    eval_windows: int = 64  # held-out windows the model is scored on
    horizons: str = "1,4,16,64"  # dreamed steps the replay PSNR is reported at
    # The dynamics run's own options keep their flags (--batch-size, --lr, --text, --init, ...); the recipe sets the
    # rest. It times and trains the diffusion objective, so it takes no --teacher.
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(data="", out="", batch_size=64, lr=3e-4, action_dropout=0.15, loader_workers=12),
        metadata=nested("", set_here=("data", "out", "config", "steps", "window", "memory", "end_weight", "warmup",
                                        "teacher"),
                        help={"patch": "latent cells per token side (default: the game's, GAMES)"}))


def seconds_per_step(cfg: TrainConfig, data, meta: dict, device: torch.device, trials: int = 3) -> float:
    """Measured time of one optimizer step of the run `cfg` on `device` (training/loop.py),
    drawing its batches from `data` (the windows the run draws)."""
    from training import loop
    from training.train_dynamics import build
    from worldsim.objective import diffusion_forcing_loss

    return loop.seconds_per_step(build(cfg, meta), lambda k: data.batch(cfg.batch_size, k, 0),
                                 lambda m, batch: diffusion_forcing_loss(m, **batch), device, cfg.loader_workers, trials)


def collect_side_by_side(cfg: RecipeConfig, out: Path, progress: bool):
    """`cfg.collectors` collect processes into one dataset (concurrent collects claim their
    own seeds and episode numbers), each with its share of steps and sub-envs."""
    game = GAMES[cfg.game]
    n = max(1, min(cfg.collectors, cfg.num_envs))
    envs, steps = cfg.num_envs // n, cfg.collect_steps // n
    procs = [subprocess.Popen([sys.executable, "-m", "worldsim.cli", "collect", "--env", game["env_id"],
                               "--policy", game["policy"], "--steps", str(steps), "--out", str(out),
                               "--num-envs", str(envs), "--seed", str(cfg.train.seed + k * envs),
                               "--env-kwargs", json.dumps(game["env_kwargs"])]
                              + ([] if progress and k == 0 else ["--quiet"]))
             for k in range(n)]
    failed = [k for k, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise RuntimeError(f"collects {failed} of {n} into {out} failed (their messages are above)")


# Options that do not change what --work holds: a rerun with other values resumes the same data and run.
RESUMABLE = {"out", "work", "minutes", "min_steps", "action_guidance", "text_guidance", "eval_windows", "horizons",
             "train.loader_workers", "train.device", "train.stop_at", "train.ckpt_every", "train.log_every"}


def check_work(cfg: RecipeConfig):
    """--work keeps a game's data and run, and a rerun resumes them: refuse options that
    would make other data or another run, rather than silently resume the old one.
    Options added since the record was written count as their defaults."""
    flat = lambda c: {k: v for k, v in asdict(c).items() if k != "train"} | {  # noqa: E731
        f"train.{k}": v for k, v in asdict(c.train).items()}
    made = {k: v for k, v in flat(cfg).items() if k not in RESUMABLE}
    defaults = flat(RecipeConfig(out=""))
    where = paths(cfg)
    record = Path(cfg.work) / f"{cfg.game}_recipe.json"
    if record.exists():
        before = json.loads(record.read_text())
        differ = [f"{k}: {before.get(k, defaults[k])!r} there, {v!r} now" for k, v in made.items()
                  if before.get(k, defaults[k]) != v]
        if differ:
            raise ValueError(f"--work {cfg.work} holds the {cfg.game} data and run of a recipe with other options "
                             f"({'; '.join(differ)}); pass a new --work, or delete it to start over")
    elif any(where[k].exists() for k in ("frames", "latents", "run")):
        raise ValueError(f"--work {cfg.work} holds {cfg.game} data or a run with no record of the options that made "
                         "them; pass a new --work, or delete it to start over")
    else:
        Path(cfg.work).mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(made, indent=2))


def paths(cfg: RecipeConfig) -> dict:
    """Where the recipe keeps what it makes: datasets and run under --work, the model in --out."""
    work = Path(cfg.work)
    return {"frames": work / cfg.game, "latents": work / f"{cfg.game}_latents", "run": work / f"{cfg.game}_run",
            "model": Path(cfg.out) / f"{cfg.game}.safetensors",
            "tokenizer": CHECKPOINTS / f"{cfg.game}_tokenizer.safetensors"}


def export(cfg: RecipeConfig) -> Path:
    """The run's last checkpoint as the game's world model in --out (ends calibrated on the
    val split, on the training device, where the game draws its ends). The model file
    appears only once it is complete: a time limit striking before leaves none."""
    from training.loop import pick_device
    from worldsim.export import export_world_model

    where, game = paths(cfg), GAMES[cfg.game]
    shutil.copy(where["run"] / "metrics.csv", Path(cfg.out) / "metrics.csv")
    export_world_model(str(where["run"] / "latest.safetensors"), str(where["model"]), str(where["tokenizer"]),
                       action_guidance=cfg.action_guidance if cfg.train.action_dropout else None,
                       text_guidance=cfg.text_guidance if cfg.train.text else None,
                       calibrate_ends=str(where["frames"]) if game["calibrate_ends"] else None,
                       device=pick_device(cfg.train.device))
    return where["model"]


def recipe(cfg: RecipeConfig, progress: bool = True, prepare_only: bool = False) -> dict:
    from training.loop import pick_device
    from training.train_dynamics import train, training_windows
    from training.train_tokenizer import encode_dataset
    from worldsim.dataset import load_meta
    from worldsim.dynamics import CONFIGS, DynamicsConfig
    from worldsim.replay import heads_detection, plot_replay, replay_scores
    from worldsim.world_model import WorldModel

    if cfg.game not in GAMES:
        raise ValueError(f"unknown game {cfg.game!r}; expected one of {', '.join(GAMES)}")
    game, where = GAMES[cfg.game], paths(cfg)
    if not where["tokenizer"].exists():
        raise FileNotFoundError(f"{where['tokenizer']} is missing: the recipe encodes {cfg.game} with its shipped tokenizer")
    if cfg.train.text:  # fail before collecting, not after: a device image may lack the sentence encoder
        from worldsim.text import embed_texts
        embed_texts(["a room"])
    say = print if progress else (lambda *a, **k: None)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    check_work(cfg)
    device = pick_device(cfg.train.device)
    t_start = time.perf_counter()
    frames, latents, run_dir = where["frames"], where["latents"], where["run"]

    if not (frames / "dataset.json").exists():
        say(f"[recipe] collect {cfg.collect_steps} {game['env_id']} steps ({game['policy']} policy), "
            f"{cfg.collectors} collects side by side")
        collect_side_by_side(cfg, frames, progress)
    if not (latents / "dataset.json").exists():
        say(f"[recipe] encode with {where['tokenizer'].name}")
        encode_dataset(str(where["tokenizer"]), str(frames), str(latents), progress=progress, device=cfg.train.device,
                       workers=cfg.train.loader_workers)

    if prepare_only:  # the data alone, for runs of its own (training/gpu_ab.sh)
        return {"frames": str(frames), "latents": str(latents)}
    meta = load_meta(latents)
    budget = cfg.minutes * 60
    chosen, timing = None, {}
    candidates = [c.strip() for c in cfg.configs.split(",") if c.strip()]
    for config in candidates:  # time a step of each on the windows it would train on
        run_cfg = replace(cfg.train, data=str(latents), out=str(run_dir), config=config, memory=game["memory"],
                          patch=cfg.train.patch or game["patch"], end_weight=game["end_weight"])
        data = None  # the last candidate's episodes go before the next one's load
        data, _ = training_windows(run_cfg, meta, CONFIGS[config].get("max_frames", DynamicsConfig.max_frames))
        timing[config] = seconds_per_step(run_cfg, data, meta, device)
        steps = int(0.9 * budget / timing[config])
        say(f"[recipe] {config}: {timing[config]:.3f} s/step -> {steps} steps in {cfg.minutes:g} min")
        if steps >= cfg.min_steps or config == candidates[-1]:
            chosen = (run_cfg, max(steps, 1))
            break
    del data  # the run draws its own
    run_cfg, steps = chosen
    config = run_cfg.config
    say(f"[recipe] train {config} for {steps} steps on {device}")
    t_train = time.perf_counter()
    train(replace(run_cfg, steps=steps, warmup=min(200, max(1, steps // 10))), progress=progress)
    train_minutes = (time.perf_counter() - t_train) / 60
    export(cfg)

    held_out = "unseen maps" if cfg.game == "rooms" else "held-out episodes"
    say(f"[recipe] score on {held_out} (the test split)")
    model = WorldModel.load(where["model"], device=device)
    horizons = [int(h) for h in cfg.horizons.split(",")]
    scores = replay_scores(model, str(frames), 4, horizons, cfg.eval_windows, "test")
    figures = {"recipe": asdict(cfg), "config": config, "steps": steps, "seconds_per_step": timing,
               "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "train_minutes": round(train_minutes, 2), "total_minutes": round((time.perf_counter() - t_start) / 60, 2),
               "frames_seen": steps * cfg.train.batch_size * (model.dynamics.cfg.max_frames + game["memory"]),
               "parameters": sum(p.numel() for p in model.dynamics.parameters()),
               "held_out": scores, "heads": heads_detection(model, str(frames), "test"),
               "end_calibration": model.info.get("end_calibration")}
    (out / "figures.json").write_text(json.dumps(figures, indent=2))
    plot_replay(scores, out / "replay.png", f"{game['env_id']}, {held_out}: {config} after {steps} steps")
    say(json.dumps({k: figures[k] for k in ("config", "steps", "train_minutes", "device")}))
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fields(parser, RecipeConfig)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--prepare-only", action="store_true",
                        help="collect and encode the data into --work, then stop (for runs of your own on it)")
    parser.add_argument("--salvage", action="store_true",
                        help="only export the run's last checkpoint (for a recipe stopped before it exported)")
    args = parser.parse_args(argv)
    cfg = from_args(args, RecipeConfig)
    if args.salvage:
        if Path(cfg.work, f"{cfg.game}_recipe.json").exists():
            check_work(cfg)  # export only this recipe's run, not another's left in --work
        if paths(cfg)["model"].exists():
            print(f"gpu_recipe: {paths(cfg)['model']} was exported already; nothing to salvage")
        elif not (paths(cfg)["run"] / "latest.safetensors").exists():
            print(f"gpu_recipe: no run to salvage in {paths(cfg)['run']}")
        else:
            print(f"gpu_recipe: exported the last checkpoint to {export(cfg)}")
        return
    recipe(cfg, progress=not args.quiet, prepare_only=args.prepare_only)


if __name__ == "__main__":
    main()
