"""World-model quality and speed on held-out episodes, replayed with their real actions.

    python bench/bench_dynamics.py --checkpoint worldsim/checkpoints/rooms.safetensors --data data/rooms

Replays windows of a split in the dream and scores them at each horizon beside
copy-last-frame and the tokenizer ceiling (worldsim/replay.py); the reward and
termination heads as detectors (precision and recall); training tokens/s and sampling
frames/s on this machine. Where the env has a judge (an inverse dynamics model,
worldsim/inverse_dynamics.py; shipped for Rooms), also how often each dreamed step shows
its real action, read from the frame before it. Writes JSON and a plot to bench/results/.

For a multi-map dataset (`--env-kwargs '{"world_seed": null}'`), the test split's maps
are ones the model never saw; `--split train` scores its training maps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from worldsim.cells import fit_for_model
from worldsim.inverse_dynamics import find_judge, load_inverse_dynamics
from worldsim.replay import heads_detection, plot_replay, replay_scores, uncertainty_vs_error
from worldsim.objective import diffusion_forcing_loss
from worldsim.sampler import prime, sample_next
from worldsim.world_model import WorldModel


def sampling_fps(model: WorldModel, batch: int, steps: int = 16, pixels: bool = True) -> float:
    dyn = model.dynamics
    frames = np.repeat(model.start_frames[:1][None], batch, 0)
    z = model.encode(frames)
    cache = dyn.new_cache()
    into, has = dyn.actions_into_frames(torch.zeros(batch, 0, dtype=torch.long), batch, 1, "cpu")
    prime(dyn, cache, z, into, has, torch.zeros(batch, 1, dtype=torch.long))
    a = torch.zeros(batch, dtype=torch.long)
    with torch.no_grad():
        t0 = time.perf_counter()
        for k in range(steps):
            nxt = sample_next(dyn, cache, a, torch.full((batch,), 1 + k))
            dyn.heads(z[:, 0], nxt, a)
            if pixels:
                model.decode(nxt[:, None])
    return batch * steps / (time.perf_counter() - t0)


def training_tokens_per_s(model: WorldModel, batch: int = 8, steps: int = 3) -> float:
    dyn = model.dynamics
    dyn.train()
    t = dyn.cfg.max_frames
    z = torch.randn(batch, t, *dyn.cfg.latent_shape)
    a = torch.zeros(batch, t - 1, dtype=torch.long)
    opt = torch.optim.AdamW(dyn.parameters(), lr=0.0)
    window = dict(rewards=torch.zeros(batch, t - 1), terminated=torch.zeros(batch, t - 1, dtype=torch.bool),
                  events=torch.zeros(batch, t, len(dyn.cfg.events)))
    diffusion_forcing_loss(dyn, z, a, **window)[0].backward()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss, _ = diffusion_forcing_loss(dyn, z, a, **window)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dyn.eval()
    return batch * t * dyn.cfg.tokens_per_frame * steps / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default="worldsim/checkpoints/rooms.safetensors")
    parser.add_argument("--data", default="data/rooms", help="frames dataset; its --split is scored")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"],
                        help="test: episodes the model never saw (unseen maps for a multi-map dataset)")
    parser.add_argument("--context", type=int, default=4)
    parser.add_argument("--horizons", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--sample-steps", type=int, default=None)
    parser.add_argument("--rerender", action="store_true",
                        help="the replays' memory re-rendered from new poses (a model with a depth network); the "
                             "heads and speed figures stay the plain model's")
    parser.add_argument("--inverse-dynamics", default=None,
                        help="the judge that reads each dreamed step's action (default: the env's shipped one; none: no judge)")
    parser.add_argument("--name", default=None)
    parser.add_argument("--device", default="cpu", help="where the world model dreams: cpu or cuda")
    parser.add_argument("--no-speed", action="store_true",
                        help="skip the CPU sampling and training speed figures (a minute or two; meaningless while "
                             "other jobs share the cores)")
    parser.add_argument("--cells", action="store_true",
                        help="also read what each prediction draws in the view's cells (a grid world: Crafter), with a "
                             "cell reader fitted on the data's train split; scores what PSNR cannot: a dream of grass")
    parser.add_argument("--uncertainty", action="store_true",
                        help="also score the dream's sample disagreement as a predictor of its error (2x the replays)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = WorldModel.load(args.checkpoint, device=args.device)
    env_id = model.info.get("env_id")
    judge_path = find_judge(args.inverse_dynamics, env_id)
    judge = None if judge_path is None else load_inverse_dynamics(judge_path, env_id)
    cells = None
    if args.cells:
        cells, reader_accuracy = fit_for_model(model, args.data)
        print(f"cell reader: reads {reader_accuracy['real']:.3f} of the val split's real cells right, "
              f"{reader_accuracy['reconstructed']:.3f} of their reconstructions")
    result = {"checkpoint": args.checkpoint, "env_id": model.info.get("env_id"), "rerender": args.rerender,
              "trained_on": {"env_kwargs": model.info.get("env_kwargs"), "steps": model.info.get("trained_steps")},
              **replay_scores(model, args.data, args.context, args.horizons, args.windows, args.split,
                              args.sample_steps, rerender=args.rerender, judge=judge, cells=cells)}
    if args.cells:
        result["cell_reader_accuracy"] = reader_accuracy
    result["dream_beats_copy_last_frame_at_every_horizon"] = all(v > 0 for v in result["dream_minus_copy_last_frame_db"].values())
    result["heads"] = heads_detection(model, args.data, args.split)
    if args.uncertainty:
        result["uncertainty"] = uncertainty_vs_error(model, args.data, args.context, 16, args.windows, args.split)
    if args.device == "cpu" and not args.no_speed:  # the speed figures are the CPU's (bench_dream_env.py measures a GPU's)
        for b in (1, 16):
            result[f"cpu_sampling_fps_pixels_batch{b}"] = sampling_fps(model, b)
            result[f"cpu_sampling_fps_latents_batch{b}"] = sampling_fps(model, b, pixels=False)
        result["cpu_training_tokens_per_s"] = training_tokens_per_s(model)

    print(f"{args.checkpoint} on {args.data} ({args.split} split, {result['windows']} windows)")
    print(f"{'horizon':>8} | {'dream PSNR':>10} {'mem off':>10} {'copy-last':>10} {'ceiling':>10} | {'dream SSIM':>10} {'copy-last':>10} {'ceiling':>10}")
    for h in args.horizons:
        k = str(h)
        off = result.get("dream_memory_off_psnr_db", {}).get(k, float("nan"))
        print(f"{h:>8} | {result['dream_psnr_db'][k]:>10.2f} {off:>10.2f} {result['copy_last_frame_psnr_db'][k]:>10.2f} "
              f"{result['tokenizer_ceiling_psnr_db'][k]:>10.2f} | {result['dream_ssim'][k]:>10.3f} "
              f"{result['copy_last_frame_ssim'][k]:>10.3f} {result['tokenizer_ceiling_ssim'][k]:>10.3f}")
    for name in ("dream", "dream_memory_off", "copy_last_frame", "tokenizer_ceiling"):
        if f"{name}_shown" in result:
            print(f"{name}: its real action shown (judge), steps " +
                  ", ".join(f"{k}: {v:.2f}" for k, v in result[f"{name}_shown"].items()))
    if args.cells:
        print(f"{'cells':>18} | " + " | ".join(f"{'agree':>6} {'mix':>5} {'!grass':>6}  @{h:<3}" for h in args.horizons))
        for name in ("dream", "dream_memory_off", "copy_last_frame", "tokenizer_ceiling", "grass_only"):
            if f"{name}_cells" in result:
                print(f"{name:>18} | " + " | ".join(
                    f"{c['agree']:>6.3f} {c['mix_distance']:>5.3f} {c['not_grass']:>6.3f}     "
                    for c in result[f"{name}_cells"].values()))
        print(f"{'real frames':>18} | " + " | ".join(f"{'':>6} {'':>5} {c['real_not_grass']:>6.3f}     "
                                                    for c in result["dream_cells"].values()))
    heads = result["heads"]
    for event in ("pickups", "ends", "events", "unlocks"):
        if event not in heads:  # events and unlocks: a model with counted events (Crafter's achievements)
            continue
        d = heads[event]
        print(f"{event} head as a detector: {d['events']} real, {d['predicted']} predicted, "
              f"precision {d['precision']}, recall {d['recall']}"
              + (f"; {d['expected']:.1f} expected (sum of probabilities), R-precision {d['r_precision']}"
                 if "expected" in d else "")
              + (f"; of the {d['in_view_before']} whose object was in view the frame before, recall "
                 f"{d['recall_in_view_before']}" if "in_view_before" in d else ""))
    paid = heads["returns"]
    print(f"return per real episode as the heads pay it: {paid['paid']:.2f} (the game paid {paid['real']:.2f}; "
          f"{paid['episodes']} episodes)")
    if "reward_rest" in heads:
        rest = heads["reward_rest"]
        print(f"reward head on the reward less the first payments: correlation {rest['corr']}, squared error "
              f"{rest['mse']:.2e} (always its mean: {rest['mse_of_the_mean']:.2e})")
    if args.uncertainty:
        u = result["uncertainty"]
        print(f"uncertainty (sample disagreement) against error, {u['windows']} windows x {u['steps']} steps: "
              f"Spearman {u['spearman_within_step']:.3f} within a step, {u['spearman_pooled']:.3f} pooled; "
              f"the most uncertain quarter holds {u['worst_quarter_caught']:.2f} of the worst quarter (chance 0.25)")
    for k, v in result.items():
        if not isinstance(v, (dict, list)):
            print(f"{k:<44} {v:.4g}" if isinstance(v, float) else f"{k:<44} {v}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    name = args.name or Path(args.data).name + ("_rerender" if args.rerender else "")
    (out / f"dynamics_{name}.json").write_text(json.dumps(result, indent=2))
    plot_replay(result, out / f"dynamics_{name}.png", f"{result['env_id']}: dream vs real")
    print(f"wrote {out / f'dynamics_{name}.json'} and .png")


if __name__ == "__main__":
    main()
