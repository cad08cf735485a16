"""The `worldsim` command line. Each subcommand imports only what it needs."""

from __future__ import annotations

import argparse
import json
import os
import sys

from worldsim.options import add_fields, from_args, json_object
from worldsim.probes.report import ProbeConfig, run_probes


def cmd_collect(args):
    from training.collect import collect

    return collect(args.env, args.policy, args.steps, args.out, num_envs=args.num_envs, seed=args.seed,
                   env_kwargs=args.env_kwargs, progress=not args.quiet)


def cmd_import_video(args):
    from worldsim.video_import import import_videos

    return import_videos(args.src, args.out, size=args.size, fps=args.fps, clip_frames=args.clip_frames,
                         progress=not args.quiet)


def cmd_import_minecraft(args):
    from worldsim.minecraft_import import import_minecraft

    return import_minecraft(args.src, args.out, format=args.format, size=args.size, progress=not args.quiet)


def cmd_dataset(args):
    from worldsim.dataset import summarize

    return summarize(args.dir)


def cmd_train(args):
    return args.module.train(from_args(args, args.module.TrainConfig), progress=not args.quiet)


def cmd_probe(args):
    return run_probes(from_args(args, ProbeConfig), progress=not args.quiet)


def cmd_imagine(args):
    from agents.imagine import ImagineConfig, imagine

    return imagine(from_args(args, ImagineConfig), progress=not args.quiet)


def cmd_loop(args):
    from agents.dream_loop import DreamLoopConfig, run_loop

    return run_loop(from_args(args, DreamLoopConfig), progress=not args.quiet)


def cmd_encode(args):
    from training.train_tokenizer import encode_dataset

    return encode_dataset(args.checkpoint, args.data, args.out, progress=not args.quiet)


def cmd_caption(args):
    from worldsim.recaptioner import caption_dataset

    return caption_dataset(args.data, args.out, args.recaptioner, args.clip, args.every, progress=not args.quiet)


def cmd_rewrite(args):
    from envs.rooms_captions import rewrite_prompt

    attrs, text = rewrite_prompt(args.prompt, args.seed)
    return {"prompt": args.prompt, "caption": text}


def cmd_export(args):
    """A training run's checkpoint -> the file to ship: weights and config, no optimizer.
    A dynamics run becomes a world model (with its tokenizer and real start frames), a
    pixel run a pixel world model (with its real start frames)."""
    from worldsim.checkpoint import load_checkpoint
    from worldsim.tokenizer import Tokenizer
    from worldsim.export import export_pixel_world_model, export_world_model

    _, config = load_checkpoint(args.checkpoint)
    if config.get("kind") == "pixel":
        if args.first_frame or args.depth or args.tokenizer or any(
                w is not None for w in (args.memory_guidance, args.text_guidance)):
            raise SystemExit("a pixel run exports with --sample-steps, --action-guidance and --calibrate-ends "
                             "alone: it has no tokenizer, memory, text or depth")
        return export_pixel_world_model(args.checkpoint, args.out, sample_steps=args.sample_steps,
                                        calibrate_ends=args.calibrate_ends, action_guidance=args.action_guidance)
    if config.get("kind") == "dynamics":
        return export_world_model(args.checkpoint, args.out, tokenizer_ckpt=args.tokenizer,
                                  memory_guidance=args.memory_guidance, action_guidance=args.action_guidance,
                                  text_guidance=args.text_guidance, calibrate_ends=args.calibrate_ends,
                                  first_frame=args.first_frame, depth=args.depth, sample_steps=args.sample_steps)
    if args.calibrate_ends or args.first_frame or args.depth or args.sample_steps:
        raise SystemExit("--calibrate-ends, --first-frame, --depth and --sample-steps go with a dynamics run's checkpoint")
    if config.get("kind") not in ("tokenizer", "inverse_dynamics"):
        raise ValueError(f"{args.checkpoint} is a {config.get('kind')!r} checkpoint; expected a tokenizer, "
                         "dynamics, pixel or inverse-dynamics run")
    if any(w is not None for w in (args.memory_guidance, args.action_guidance, args.text_guidance)):
        raise ValueError("guidance weights are for a dynamics run; this checkpoint has none")
    if config["kind"] == "inverse_dynamics":
        from worldsim.inverse_dynamics import export_inverse_dynamics

        return export_inverse_dynamics(args.checkpoint, args.out)
    model = Tokenizer.load(args.checkpoint)
    model.save(args.out, extra={k: config[k] for k in ("step", "train", "dataset") if k in config})
    return {"out": args.out, "step": config.get("step"), "parameters": sum(p.numel() for p in model.parameters())}


def cmd_dream(args):
    from worldsim.dream_video import dream_episode, dream_prompt

    if (args.episode is None) == (args.prompt is None):
        raise ValueError("dream needs one of --episode (replay a real episode's actions) or --prompt (a world from text)")
    if args.rerender and args.prompt is not None:
        raise ValueError("--rerender is for --episode replays")
    if args.prompt is not None:
        return dream_prompt(args.checkpoint, args.prompt, args.steps, args.out, seed=args.seed,
                            sample_steps=args.sample_steps)
    return dream_episode(args.checkpoint, args.episode, args.steps, args.out, context=args.context,
                         sample_steps=args.sample_steps, seed=args.seed, rerender=args.rerender)


def cmd_play(args):
    from worldsim.play import play

    return play(args.checkpoint, out=args.out, steps=args.steps, seed=args.seed)


def cmd_envs(args):
    import envs

    return {"envs": envs.gameplay_ids()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worldsim", description="A generative world model behind the Gymnasium API.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="collect episodes from a real env into a dataset")
    p.add_argument("--env", default="worldsim/Rooms-v0", help="gymnasium id (see `worldsim envs`)")
    p.add_argument("--policy", default="explore", help="random | sticky | explore | PATH of an agent saved by worldsim")
    p.add_argument("--steps", type=int, default=10_000, help="transitions to collect, over all sub-envs")
    p.add_argument("--out", required=True, help="dataset directory (created; appended to if it exists)")
    p.add_argument("--num-envs", type=int, default=2, help="sub-envs stepped together (processes when > 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--env-kwargs", type=json_object, default={}, help="JSON keyword arguments for the env")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("import-video", help="turn a directory of videos into an action-free dataset")
    p.add_argument("src", help="a video file or a directory searched recursively")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=64, help="square frame size after centre crop")
    p.add_argument("--fps", type=float, default=None, help="subsample to about this frame rate")
    p.add_argument("--clip-frames", type=int, default=256, help="longest episode, in steps")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_import_video)

    p = sub.add_parser("import-minecraft", help="import Minecraft play (OpenAI VPT or MineRL v0.4 data) with its actions")
    p.add_argument("src", help="VPT: a directory of <name>.mp4 + <name>.jsonl (or one .mp4); minerl: MINERL_DATA_ROOT, "
                               "a task directory or a stream directory")
    p.add_argument("--format", required=True, choices=["vpt", "minerl"])
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=64, help="square frame size after centre crop")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_import_minecraft)

    p = sub.add_parser("dataset", help="summarise a dataset directory")
    p.add_argument("dir")
    p.set_defaults(func=cmd_dataset)

    import agents.dream_loop
    import agents.imagine
    import training.train_depth
    import training.train_dynamics
    import training.train_inverse_dynamics
    import training.train_pixel
    import training.train_recaptioner
    import training.train_tokenizer

    p = sub.add_parser("train", help="train a model (every option is a field of the module's TrainConfig)")
    models = p.add_subparsers(dest="model", required=True)
    for name, module, text in (
            ("tokenizer", training.train_tokenizer, "the video compression network (frames <-> latents)"),
            ("dynamics", training.train_dynamics, "the action-conditioned diffusion transformer, on encoded latents"),
            ("recaptioner", training.train_recaptioner, "the video-to-caption network, on exact Rooms captions"),
            ("depth", training.train_depth, "the depth network that lets memory re-render views from new poses, on Rooms frames"),
            ("pixel", training.train_pixel, "a pixel world model: a U-Net over frames (no tokenizer) and its reward/end "
                                            "network, on a frames dataset"),
            ("inverse-dynamics", training.train_inverse_dynamics,
             "the judge of which action led from one frame to the next (the control probe's second reading)")):
        t = models.add_parser(name, help=text)
        add_fields(t, module.TrainConfig)
        t.add_argument("--quiet", action="store_true", help="no progress bar")
        t.set_defaults(func=cmd_train, module=module)

    p = sub.add_parser("dream", help="replay a real episode's actions in the dream (writes real | dream side by side), "
                                     "or dream a world from a text prompt")
    p.add_argument("--checkpoint", default=None, help="world model from `worldsim export` (default: the shipped Rooms model)")
    p.add_argument("--episode", default=None, help="an episode file (DIR/test/ep_000002.h5)")
    p.add_argument("--prompt", default=None, help='a world from text, e.g. "a teal room with a red ball on the left" '
                                                  "(a text-conditioned model: --checkpoint)")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--context", type=int, default=4, help="real frames given before dreaming")
    p.add_argument("--sample-steps", type=int, default=None, help="denoising steps per frame (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rerender", action="store_true",
                   help="memory re-rendered from the dream's new poses (a model with a depth network, as the shipped Rooms one)")
    p.add_argument("--out", required=True, help="video file (.mp4)")
    p.set_defaults(func=cmd_dream)

    p = sub.add_parser("play", help="play the dream with the keyboard (records an mp4 when there is no display)")
    p.add_argument("--checkpoint", default=None, help="world model (default: the shipped Rooms model)")
    p.add_argument("--out", default=None, help="record to this mp4 instead of opening a window")
    p.add_argument("--steps", type=int, default=300, help="length of a recorded session")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_play)

    p = sub.add_parser("probe", help="3D consistency, object persistence, action control and drift against the real env")
    add_fields(p, ProbeConfig)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("imagine", help="train an agent inside the dream, then score it in the real env")
    add_fields(p, agents.imagine.ImagineConfig)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_imagine)

    p = sub.add_parser("loop", help="collect -> update the world model -> train the agent in the dream, on a real-step budget")
    add_fields(p, agents.dream_loop.DreamLoopConfig)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_loop)

    p = sub.add_parser("encode", help="pre-encode a dataset's frames to latents with a tokenizer")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("export", help="a run's checkpoint -> a file to ship (tokenizer, or world model from dynamics)")
    p.add_argument("--checkpoint", required=True, help="a run's latest.safetensors (tokenizer, dynamics or inverse-dynamics)")
    p.add_argument("--tokenizer", default=None, help="for a dynamics run: its tokenizer (default: the one its data names)")
    p.add_argument("--memory-guidance", type=float, default=None,
                   help="for a dynamics run with memory: the world model's default guidance weight (default: the run's)")
    p.add_argument("--action-guidance", type=float, default=None,
                   help="for a dynamics run trained with --action-dropout: the default action guidance weight (default 0)")
    p.add_argument("--calibrate-ends", default=None, metavar="DATA",
                   help="shift the termination head so that the val episodes of this frames dataset, replayed in "
                        "the dream with their own actions, end as often per step as they did (for dreams that draw "
                        "their ends, --sample-ends)")
    p.add_argument("--text-guidance", type=float, default=None,
                   help="for a dynamics run trained with --text: the default text guidance weight (default 0)")
    p.add_argument("--sample-steps", type=int, default=None,
                   help="for a dynamics run: the world model's default denoising steps a frame (default: the run's); "
                        "more draw what is uncertain (a fireball) where few average it away, at that many passes a frame")
    p.add_argument("--first-frame", default=None, metavar="RUN_CHECKPOINT",
                   help="for a dynamics run trained with --text: a run trained with --text --window 1 that makes "
                        "the worlds' first frames from prompts, or a world model that carries one")
    p.add_argument("--depth", default=None, metavar="RUN_CHECKPOINT",
                   help="for a dynamics run with memory keyed by pose: a `worldsim train depth` run, with which the "
                        "dream re-renders what memory holds from its new poses, or a world model that carries one")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("caption", help="descriptive captions of a dataset's clips (exact from Rooms ground truth, "
                                       "else from a trained recaptioner)")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="JSON-lines file: episode, first frame, caption, source")
    p.add_argument("--recaptioner", default=None, help="a recaptioner checkpoint, for footage without ground truth")
    p.add_argument("--clip", type=int, default=8, help="actions per clip (a recaptioner's own clip length wins)")
    p.add_argument("--every", type=int, default=8, help="frames between the starts of captioned clips")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("rewrite", help="rewrite a short prompt into the detailed caption style the model was trained on")
    p.add_argument("prompt")
    p.add_argument("--seed", type=int, default=0, help="draws what the prompt leaves open")
    p.set_defaults(func=cmd_rewrite)

    p = sub.add_parser("envs", help="list the gameplay env ids")
    p.set_defaults(func=cmd_envs)
    return parser


def main(argv=None) -> int:
    from worldsim.checkpoint import CheckpointError
    from worldsim.dataset import DatasetError

    args = build_parser().parse_args(argv)
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # `--env mymodule:MyEnv-v0` finds mymodule where the user runs, as `python -m` does
    try:
        result = args.func(args)
    except (DatasetError, CheckpointError, ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"worldsim {args.command}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
