"""A pixel world model on one GPU in one command: collect real play, continue the
campaign's pixel world model for the time budget, export it, and score it on held-out
episodes.

    python -m training.gpu_pixel --out OUT [--minutes 10] [--seed S]

It collects as training/gpu_recipe.py does (the game's policy, collects side by side;
TakeCover by default), times a step of `worldsim train pixel` on the device, trains as many
steps as fit 90% of `--minutes` from `--init` (the campaign's model; a new `--seed` per
chunk draws other batches), and exports `OUT/GAME_pixel.safetensors` (fp16, its ends
calibrated in the dream on the val split: `worldsim export --calibrate-ends`). `OUT` also
gets `metrics.csv`, `scores.json` (the reward/end network as a detector on the test split)
and `figures.json`: dream PSNR by horizon on held-out windows beside copy-last-frame, and
the compute spent. Every option is a field of PixelRecipeConfig (the run's own options keep
their flags: `--batch-size`, `--lr`, `--init`, ...). tests/test_gpu_recipe.py runs it on CPU
with a tiny network.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from training.gpu_recipe import GAMES, collect_side_by_side
from training.train_pixel import PixelNets, TrainConfig, Transitions, network_config, step_functions, train, window
from worldsim.options import add_fields, from_args, nested

CAMPAIGN = Path(__file__).resolve().parents[1] / "worldsim" / "checkpoints" / "campaign" / "takecover_pixel.safetensors"


@dataclass
class PixelRecipeConfig:
    out: str  # the world model, its figures and its training log land here
    game: str = "takecover"  # a game of training/gpu_recipe.py's GAMES
    work: str = "/tmp/worldsim_pixel"  # the dataset and the run directory
    minutes: float = 10.0  # training budget, wall-clock
    collect_steps: int = 300_000  # real transitions
    num_envs: int = 16  # sub-envs, over all collectors
    collectors: int = 8  # collects side by side into one dataset
    eval_windows: int = 64  # held-out windows the dream is scored on
    horizons: str = "1,4,16,64"  # dreamed steps the replay PSNR is reported at
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(data="", out="", batch_size=128, lr=3e-4, loader_workers=12,
                                            init=str(CAMPAIGN) if CAMPAIGN.exists() else None),
        metadata=nested("", set_here=("data", "out", "steps", "warmup")))


def seconds_per_step(cfg: TrainConfig, data: Transitions, device: torch.device, trials: int = 3) -> float:
    """Measured time of one optimizer step of a run with `cfg` on `device` (training/loop.py)."""
    from training import loop

    batch_at, loss_of = step_functions(cfg, data)
    return loop.seconds_per_step(PixelNets(network_config(cfg, data.meta)), lambda k: batch_at(k, 0), loss_of, device,
                                 cfg.loader_workers, trials)


def recipe(cfg: PixelRecipeConfig, progress: bool = True) -> dict:
    from training.loop import pick_device
    from worldsim.export import export_pixel_world_model
    from worldsim.pixel_world_model import PixelWorldModel
    from worldsim.replay import replay_scores

    if cfg.game not in GAMES:
        raise ValueError(f"unknown game {cfg.game!r}; expected one of {', '.join(GAMES)}")
    say = print if progress else (lambda *a, **k: None)
    out, work = Path(cfg.out), Path(cfg.work)
    out.mkdir(parents=True, exist_ok=True)
    frames, run_dir, model_path = work / cfg.game, work / f"{cfg.game}_pixel_run", out / f"{cfg.game}_pixel.safetensors"
    device = pick_device(cfg.train.device)
    t_start = time.perf_counter()
    if not (frames / "dataset.json").exists():
        say(f"[pixel] collect {cfg.collect_steps} {GAMES[cfg.game]['env_id']} steps, {cfg.collectors} collects side by side")
        collect_side_by_side(cfg, frames, progress)
    run_cfg = replace(cfg.train, data=str(frames), out=str(run_dir))
    data = Transitions(frames, "train", window(run_cfg), run_cfg.max_frames)
    per_step = seconds_per_step(run_cfg, data, device)
    del data  # the run loads its own
    steps = max(1, int(0.9 * cfg.minutes * 60 / per_step))
    say(f"[pixel] {per_step:.3f} s/step -> {steps} steps in {cfg.minutes:g} min on {device}")
    t_train = time.perf_counter()
    result = train(replace(run_cfg, steps=steps, warmup=min(100, max(1, steps // 10))), progress=progress)
    train_minutes = (time.perf_counter() - t_train) / 60
    # Ends calibrated in the dream: its end network learnt from real frames, and reads a dreamed hit as less deadly.
    exported = export_pixel_world_model(str(run_dir / "latest.safetensors"), str(model_path),
                                        calibrate_ends=str(frames), device=str(device))
    for name in ("metrics.csv", "scores.json"):
        shutil.copy(run_dir / name, out / name)
    model = PixelWorldModel.load(model_path, device=device)
    horizons = [int(h) for h in cfg.horizons.split(",")]
    figures = {"recipe": asdict(cfg), "steps": steps, "seconds_per_step": per_step,
               "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "train_minutes": round(train_minutes, 2), "frames_seen": steps * run_cfg.batch_size,
               "held_out": replay_scores(model, str(frames), model.dynamics.cfg.context, horizons, cfg.eval_windows, "test"),
               "heads": result["scores"], "end_calibration": exported["end_calibration"], "total_minutes": round((time.perf_counter() - t_start) / 60, 2)}
    (out / "figures.json").write_text(json.dumps(figures, indent=2))
    say(json.dumps({k: figures[k] for k in ("steps", "train_minutes", "device")}))
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fields(parser, PixelRecipeConfig)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    recipe(from_args(args, PixelRecipeConfig), progress=not args.quiet)


if __name__ == "__main__":
    main()
