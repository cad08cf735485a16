"""Export: a trained dynamics run (the checkpoint `worldsim train dynamics` writes, its
weights under checkpoint.MODEL) bundled with its tokenizer and real start frames into the world
model file the dream env loads (`WorldModel.save`), ends calibrated before it is written;
a pixel run (`worldsim train pixel`) with its dataset's start frames into a pixel world
model (`PixelWorldModel.save`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worldsim.checkpoint import MODEL, CheckpointError, load_checkpoint, network_of, with_prefix
from worldsim.dataset import episode_paths, read_episode
from worldsim.depth import load_depth_run
from worldsim.dynamics import Dynamics, DynamicsConfig
from worldsim.replay import calibrate_ends as calibrate
from worldsim.tokenizer import Tokenizer
from worldsim.world_model import WorldModel


def training_compute(config: dict) -> dict:
    """What a dynamics run cost (steps, windows, wall-clock, device), with the compute of
    the world model it started from (`--init`) when that file still says."""
    train = config.get("train") or {}
    own = {"steps": config.get("step"), "batch_size": train.get("batch_size"), "config": train.get("config"),
           "train_seconds": round(config["train_seconds"], 1) if "train_seconds" in config else None,
           "device": config.get("device"), "processes": config.get("world_size")}
    init = train.get("init")
    if init and Path(init).exists():
        try:
            before = load_checkpoint(init)[1].get("compute")
        except CheckpointError:
            before = None
        own["init"] = {"path": str(init), "compute": before}
    return own


def export_world_model(dynamics_ckpt: str, out: str, tokenizer_ckpt: str | None = None, start_frames: int = 16,
                       half: bool = True, memory_guidance: float | None = None,
                       action_guidance: float | None = None, text_guidance: float | None = None,
                       calibrate_ends: str | None = None, first_frame: str | None = None, depth: str | None = None,
                       device: str = "cpu", sample_steps: int | None = None) -> dict:
    """Bundle a trained dynamics run with its tokenizer and real start frames;
    `memory_guidance`, `action_guidance` and `text_guidance` set the model's default
    guidance weights, `sample_steps` its default denoising steps a frame (a dream that must
    draw what is uncertain, TakeCover's fireballs, needs more than the run's).
    `calibrate_ends` (a frames dataset) shifts the termination head before the file is written, on `device`
    (worldsim/replay.py `calibrate_ends`), so the file never holds an uncalibrated model.
    `first_frame`: a dynamics run trained with --text on single frames (`--window 1`) that
    the world model then makes its worlds' first frames from prompts with (`text_guidance`,
    when given, is its default too). `depth`: a depth run (`worldsim train depth`) on frames
    of the same env, with which the dream re-renders memory from new poses. Either may be a
    world model that carries one (the shipped model's, once its run is gone)."""
    tensors, config = load_checkpoint(dynamics_ckpt)
    if config.get("kind") != "dynamics":
        raise CheckpointError(f"{dynamics_ckpt} is a {config.get('kind')!r} checkpoint; expected a dynamics run")
    meta = config["dataset"]
    tokenizer_ckpt = tokenizer_ckpt or meta.get("tokenizer")
    if not tokenizer_ckpt or not Path(tokenizer_ckpt).exists():
        raise CheckpointError(f"tokenizer {tokenizer_ckpt!r} not found; pass --tokenizer")
    tokenizer = Tokenizer.load(tokenizer_ckpt)
    train = config.get("train") or {}
    if action_guidance and not train.get("action_dropout"):
        raise CheckpointError(f"{dynamics_ckpt} was trained without --action-dropout: it never learnt the action-free "
                              "prediction that action guidance contrasts")
    if text_guidance and not (train.get("text") and train.get("text_dropout")):
        raise CheckpointError(f"{dynamics_ckpt} was not trained with --text and a --text-dropout above 0: it never "
                              "learnt the null-text prediction that text guidance contrasts")
    overrides = {k: float(v) for k, v in (("memory_guidance", memory_guidance), ("action_guidance", action_guidance),
                                          ("text_guidance", text_guidance)) if v is not None}
    if sample_steps is not None:
        if sample_steps < 1:
            raise ValueError(f"--sample-steps is the denoising steps a frame, at least 1; got {sample_steps}")
        overrides["sample_steps"] = int(sample_steps)
    dynamics = Dynamics(DynamicsConfig(**{**config["dynamics"], **overrides}))
    dynamics.load_state_dict(with_prefix(tensors, MODEL))
    first = first_record = None
    if first_frame:
        first_tensors, first_config = load_checkpoint(first_frame)
        if not train.get("text"):
            raise CheckpointError(f"{dynamics_ckpt} was not trained with --text: a first-frame network starts worlds "
                                  "from prompts, which only a text-conditioned dynamics can go on from")
        if first_config.get("kind") == "world_model":  # reuse a world model's own, its run record with it
            first_tensors, first_config = network_of(first_frame, first_tensors, first_config, "first_frame")
        first_train = first_config.get("train") or {}
        if first_config.get("kind") != "dynamics" or not first_train.get("text"):
            raise CheckpointError(f"--first-frame {first_frame} is not a dynamics run trained with --text")
        if text_guidance and not first_train.get("text_dropout"):
            raise CheckpointError(f"--first-frame {first_frame} was trained with no --text-dropout: it never learnt "
                                  "the null-text prediction that text guidance contrasts")
        if first_config["dataset"].get("latent_shape") != meta.get("latent_shape"):
            raise CheckpointError(f"--first-frame {first_frame} makes latents of shape "
                                  f"{first_config['dataset'].get('latent_shape')}; {dynamics_ckpt}'s are "
                                  f"{meta.get('latent_shape')}: train both on latents of the same tokenizer")
        guidance = {"text_guidance": overrides["text_guidance"]} if "text_guidance" in overrides else {}
        first = Dynamics(DynamicsConfig(**{**first_config["dynamics"], **guidance}))
        first.load_state_dict(with_prefix(first_tensors, MODEL))
        first_record = first_config.get("record") or {"train": first_train, "compute": training_compute(first_config)}
    depth_net = None
    if depth:
        depth_net, depth_config = load_depth_run(depth, meta.get("env_id"), (meta.get("pose_model") or {}).get("fov_deg"),
                                                 f"{dynamics_ckpt}'s dream")
    firsts = []
    frames_dataset = meta.get("frames_dataset")
    if frames_dataset and Path(frames_dataset).exists():
        for path in episode_paths(frames_dataset, "train")[:start_frames]:
            firsts.append(read_episode(path).frames[0])
    info = {"env_id": meta.get("env_id"), "env_kwargs": meta.get("env_kwargs", {}),
            "action_space": meta["action_space"], "action_meanings": meta.get("action_meanings"),
            "frame_shape": meta["frame_shape"], "trained_steps": config.get("step"), "pose_model": meta.get("pose_model"),
            "compute": training_compute(config),
            "memory_key": meta.get("memory_key", "pose"),
            "train": config.get("train")}
    if first is not None:
        info["first_frame_train"] = first_record
    if depth_net is not None:
        info["depth_train"] = depth_config.get("record") or {"train": depth_config.get("train"),
                                                              "compute": training_compute(depth_config)}
    model = WorldModel(tokenizer, dynamics, info, np.stack(firsts) if firsts else None, first, depth_net)
    calibration = {}
    if calibrate_ends:
        if half:  # calibrate the weights that ship: rounded to float16, as a reload would give them
            model.half().float()
        model.to(device).eval()
        model.info["end_calibration"] = calibration["end_calibration"] = calibrate(model, calibrate_ends)
    model.save(out, half=half)
    return {"out": out, "bytes": Path(out).stat().st_size, "start_frames": len(firsts), **calibration,
            "parameters": sum(p.numel() for p in model.parameters())}


def export_pixel_world_model(run_ckpt: str, out: str, start_frames: int = 16, half: bool = True,
                             sample_steps: int | None = None, calibrate_ends: str | None = None,
                             device: str = "cpu", action_guidance: float | None = None) -> dict:
    """A pixel run (`worldsim train pixel`) -> a pixel world model: its two networks, the
    env facts, and the first frames of the train split's episodes to start dreams from.
    `sample_steps` and `action_guidance` set the model's defaults; `calibrate_ends` as
    for `export_world_model`."""
    from worldsim.pixel_dynamics import PixelDynamics, PixelDynamicsConfig, RewardEndNet
    from worldsim.pixel_world_model import PixelWorldModel

    tensors, config = load_checkpoint(run_ckpt)
    if config.get("kind") != "pixel":
        raise CheckpointError(f"{run_ckpt} is a {config.get('kind')!r} checkpoint; expected a pixel run")
    settings = dict(config["pixel"])
    if sample_steps is not None:
        if sample_steps < 1:
            raise ValueError(f"--sample-steps is the denoising steps a frame, at least 1; got {sample_steps}")
        settings["sample_steps"] = int(sample_steps)
    if action_guidance is not None:
        if action_guidance and not (config.get("train") or {}).get("action_dropout"):
            raise CheckpointError(f"{run_ckpt} was trained without --action-dropout: it never learnt the action-free "
                                  "prediction that action guidance contrasts")
        settings["action_guidance"] = float(action_guidance)
    cfg = PixelDynamicsConfig(**settings)
    dynamics, heads = PixelDynamics(cfg), RewardEndNet(cfg)
    nets = with_prefix(tensors, MODEL)
    dynamics.load_state_dict(with_prefix(nets, "dynamics."))
    heads.load_state_dict(with_prefix(nets, "heads."))
    meta, data = config["dataset"], (config.get("train") or {}).get("data")
    if not data or not Path(data).exists():
        raise CheckpointError(f"{run_ckpt} was trained on {data!r}, which is not here: its first frames are the "
                              "dreams' default starts")
    firsts = np.stack([read_episode(path).frames[0] for path in episode_paths(data, "train")[:start_frames]])
    info = {"env_id": meta.get("env_id"), "env_kwargs": meta.get("env_kwargs", {}), "action_space": meta["action_space"],
            "action_meanings": meta.get("action_meanings"), "frame_shape": meta["frame_shape"],
            "trained_steps": config.get("step"), "compute": training_compute(config), "train": config.get("train")}
    model = PixelWorldModel(dynamics, heads, info, firsts)
    calibration = {}
    if calibrate_ends:
        if half:  # calibrate the weights that ship
            model.half().float()
        model.to(device).eval()
        model.info["end_calibration"] = calibration["end_calibration"] = calibrate(model, calibrate_ends)
    model.save(out, half=half)
    return {"out": out, "bytes": Path(out).stat().st_size, "start_frames": len(firsts), **calibration,
            "parameters": sum(p.numel() for p in model.parameters())}
