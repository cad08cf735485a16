"""Train a pixel world model (worldsim/pixel_dynamics.py): the U-Net dynamics and the
reward/end network, on a frames dataset; no tokenizer.

    worldsim train pixel --data DIR --out RUN [--steps 6000]
    worldsim train pixel --data DIR --out RUN2 --init WORLD_MODEL --heads-only --steps 1500
    worldsim export --checkpoint RUN/latest.safetensors --out world.safetensors

Each batch holds frames of the train split with the `context` frames before each in its
episode (an episode's first frames pad their context with the episode's first frame, as
the dream pads a reset from one start frame), the action that led to it, its reward and
whether the episode ended there. Both networks learn from every batch; `--heads-only`
trains the reward/end network alone, the dynamics as `--init` left it, and with
`--on-dreams` it reads each next frame as the dynamics draws it: the real outcome, as a
dream shows it (a dreamed hit looks softer than a real one). At the end
`scores.json` holds the heads as detectors on the test split's transitions: precision and
recall of episode ends, the reward's mean error, beside always predicting "alive" and the
mean reward (on dreamed next frames for an `--on-dreams` run). Checkpoints, logs, resume,
the moving average of the weights (`--ema`) and GPU: training/loop.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from training.loop import RunConfig, pick_device, run
from worldsim.checkpoint import DYNAMICS, MODEL, REWARD_END, CheckpointError, load_checkpoint, with_prefix
from worldsim.dataset import DatasetError, episode_paths, load_meta, read_episode
from worldsim.pixel_dynamics import PixelDynamics, PixelDynamicsConfig, RewardEndNet, as_shown, to_unit


@dataclass(kw_only=True)
class TrainConfig(RunConfig):  # data: a frames dataset from `worldsim collect`
    steps: int = 6000
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    ema: float = 0.999  # one step's weights draw noisy frames; the average of the last thousand steps does not
    context: int = 4  # past frames the dynamics reads (PixelDynamicsConfig)
    width: int = 32  # U-Net channels at full resolution; its three levels have 1, 2 and 2 times as many
    sample_steps: int = 3  # denoising steps a dream frame takes (the model's default)
    past_actions: int = 0  # actions before the current one the dynamics reads (at most context - 1; 0: only the current one)
    max_frames: int = 0  # read at most this many train frames (0: the whole split)
    end_weight: float = 10.0  # termination cross-entropy weight of an episode's end against a step that goes on
    end_share: float = 0.0  # share of each batch drawn from the episodes' ends (0: drawn like the rest); the loss undoes the bias
    init: str | None = None  # start from this pixel world model's or pixel run's weights
    heads_only: bool = False  # train only the reward/end network (the dynamics as --init left it)
    on_dreams: bool = False  # with --heads-only: the reward/end network reads the next frame as the dynamics samples it, the frame a dream shows
    action_dropout: float = 0.0  # share of frames learnt without their action: the prediction that action guidance (`worldsim export --action-guidance`) steers away from
    change_weight: float = 0.0  # each pixel's denoising error weighs 1 + this times how much the context's last step changed it (over the batch's mean): small moving things (fireballs) count beside the still background
    rollout_share: float = 0.0  # share of rows whose last --rollout-frames context frames are the model's own samples (real actions, as a dream draws them), the next frame still learnt towards the real one: a dream reads its own frames, not real ones
    rollout_frames: int = 2  # context frames dreamed in those rows (at most --context)
    eval_transitions: int = 20_000  # held-out transitions the heads are scored on at the end


class PixelNets(nn.Module):
    """The two networks a pixel world model holds, trained side by side."""

    def __init__(self, cfg: PixelDynamicsConfig):
        super().__init__()
        self.cfg = cfg
        self.dynamics, self.heads = PixelDynamics(cfg), RewardEndNet(cfg)

    def loss(self, batch, end_weight: float, heads_only: bool, on_dreams: bool = False, oversampled: float = 1.0,
             change_weight: float = 0.0, action_dropout: float = 0.0, rollout_share: float = 0.0):
        """batch: Transitions.batch's; with `rollout_share`, its context holds the frames
        before the dynamics' context too, the ones a share of rows dream theirs from (the
        reward/end network reads the real context)."""
        ctx, target, action, reward, ended, past = batch
        dyn_ctx, dyn_past = ctx, past
        extra = ctx.shape[1] - self.cfg.context
        if extra:
            dreamed = torch.rand(len(ctx), device=ctx.device) < rollout_share
            dyn_ctx, dyn_past = self.dynamics.dreamed_context(ctx, past, dreamed)
            ctx, past = ctx[:, extra:], past[:, extra:]
        if on_dreams:  # the real outcome, read from the frame the dream draws for it (8-bit, as shown)
            target = as_shown(self.dynamics.sample(ctx, action, past=past))
        head = self.heads.loss(ctx, action, target, reward, ended, end_weight, oversampled)
        if heads_only:
            return head, {"heads": head.item()}
        dyn = self.dynamics.loss(dyn_ctx, target, action, change_weight, action_dropout, dyn_past)
        return dyn + head, {"denoise": dyn.item(), "heads": head.item()}


class Transitions:
    """A split's frames in memory, and every transition into a frame after an episode's
    first: the context before it (front-padded in the episode), its action, reward, end,
    and the actions between the context frames (-1 between padded ones)."""

    def __init__(self, root, split: str, context: int, max_frames: int = 0):
        meta = load_meta(root)
        if meta.get("action_space", {}).get("type") != "Discrete":
            raise DatasetError(f"{root}: a pixel world model acts on a Discrete action space, the dataset's is "
                               f"{meta.get('action_space')!r}")
        frames, rows, actions, rewards, ends, taken = [], [], [], [], [], []
        n = 0
        for path in episode_paths(root, split):
            e = read_episode(path)
            if e.actions is None or e.rewards is None:
                raise DatasetError(f"{path} has no actions or rewards; a world model learns from gameplay episodes")
            t = np.arange(1, len(e.frames))
            # Row t: indices of the context frames before frame t, the episode's first repeated before its start.
            rows.append(n + np.maximum(t[:, None] - context + np.arange(context), 0))
            frames.append(e.frames)
            actions.append(e.actions)
            taken.append(np.append(e.actions, -1))  # by frame: the action taken there (none after the last)
            rewards.append(e.rewards)
            ends.append(e.terminated if e.terminated is not None else np.zeros(len(t), bool))
            n += len(e.frames)
            if max_frames and n >= max_frames:
                break
        if not frames:
            raise DatasetError(f"{root} has no {split} episodes")
        self.meta, self.frames = meta, np.concatenate(frames)
        self.context_rows = np.concatenate(rows)
        self.targets = self.context_rows[:, -1] + 1  # the frame after the last context frame
        # Between context frames j and j+1: the action taken at frame j, unless the front padding repeats it.
        before, after = self.context_rows[:, :-1], self.context_rows[:, 1:]
        self.past = np.where(after > before, np.concatenate(taken).astype(np.int64)[before], -1)
        self.actions, self.rewards = np.concatenate(actions).astype(np.int64), np.concatenate(rewards).astype(np.float32)
        self.ends = np.concatenate(ends).astype(np.float32)
        self.end_rows = np.flatnonzero(self.ends)  # the transitions that end an episode (--end-share draws them)

    def __len__(self):
        return len(self.targets)

    def draw(self, rng: np.random.Generator, size: int, end_share: float = 0.0) -> np.ndarray:
        """Indices of a batch: round(size * end_share) of them episodes' ends, the rest
        uniform over every transition."""
        ends = round(size * end_share)
        if not ends:
            return rng.integers(len(self), size=size)
        if not len(self.end_rows):
            raise DatasetError("--end-share draws episodes' ends, and this split has none")
        return np.concatenate([rng.choice(self.end_rows, ends), rng.integers(len(self), size=size - ends)])

    def oversampled(self, size: int, end_share: float) -> float:
        """How many times the odds of an end are higher in batches from `draw` than in the data."""
        p = float(self.ends.mean())
        share = round(size * end_share) / size
        q = share + (1 - share) * p
        return (q / (1 - q)) / (p / (1 - p)) if 0 < p < 1 else 1.0

    def batch(self, idx):
        return (to_unit(self.frames[self.context_rows[idx]]), to_unit(self.frames[self.targets[idx]]),
                torch.from_numpy(self.actions[idx]), torch.from_numpy(self.rewards[idx]),
                torch.from_numpy(self.ends[idx]), torch.from_numpy(self.past[idx]))


def init_from(nets: PixelNets, path: str):
    """The weights of a pixel world model (`worldsim export`) or of a pixel run."""
    tensors, config = load_checkpoint(path)
    kind = config.get("kind")
    if kind == "pixel_world_model":
        dyn, heads = with_prefix(tensors, DYNAMICS), with_prefix(tensors, REWARD_END)
    elif kind == "pixel":
        model = with_prefix(tensors, MODEL)
        dyn, heads = with_prefix(model, "dynamics."), with_prefix(model, "heads.")
    else:
        raise CheckpointError(f"{path} is a {kind!r} checkpoint; --init takes a pixel world model or a pixel run")
    try:
        missing, unexpected = nets.dynamics.load_state_dict({k: v.float() for k, v in dyn.items()}, strict=False)
        if unexpected or set(missing) - {"past.weight"}:  # a model grows past actions from zero: it starts as it was
            raise RuntimeError(f"missing {missing}, unexpected {unexpected}")
        nets.heads.load_state_dict({k: v.float() for k, v in heads.items()})
    except RuntimeError as e:
        raise CheckpointError(f"--init {path}: its networks are not the ones these settings build ({e})") from e


@torch.no_grad()
def head_scores(heads: RewardEndNet, data: Transitions, count: int, mean_reward: float, seed: int = 0,
                dynamics: PixelDynamics | None = None) -> dict:
    """The reward/end network on real held-out transitions: ends as a detector (threshold
    0.5), the sum of its end probabilities beside the count of ends (calibration: a dream
    that draws its ends ends as often as the game where they match), and the reward's mean
    absolute error beside always predicting `mean_reward` (the train split's). With
    `dynamics`, the network reads the next frame as it samples it, not the real one."""
    idx = np.sort(np.random.default_rng(seed).choice(len(data), min(count, len(data)), replace=False))
    reward, prob = [], []
    for i in range(0, len(idx), 256):
        ctx, nxt, a, _, _, past = data.batch(idx[i:i + 256])
        if dynamics is not None:
            nxt = as_shown(dynamics.sample(ctx, a, generator=torch.Generator().manual_seed(seed + i), past=past))
        r, e = heads(ctx, a, nxt)
        reward.append(r.numpy())
        prob.append(torch.sigmoid(e).numpy())
    reward, prob = np.concatenate(reward), np.concatenate(prob)
    called = prob > 0.5
    true_r, ended = data.rewards[idx], data.ends[idx] > 0.5
    hits = int((called & ended).sum())
    return {"transitions": len(idx), "ends": int(ended.sum()), "end_probability_sum": float(prob.sum()),
            "end_precision": hits / max(int(called.sum()), 1), "end_recall": hits / max(int(ended.sum()), 1),
            "always_alive_accuracy": float(1 - ended.mean()), "accuracy": float((called == ended).mean()),
            "reward_mae": float(np.abs(reward - true_r).mean()),
            "mean_reward_mae": float(np.abs(mean_reward - true_r).mean())}


def network_config(cfg: TrainConfig, meta: dict) -> PixelDynamicsConfig:
    """The networks a run with `cfg` builds for a dataset with `meta`."""
    h, w, _ = meta["frame_shape"]
    return PixelDynamicsConfig(actions=int(meta["action_space"]["n"]), frame_size=(h, w), context=cfg.context,
                               channels=(cfg.width, 2 * cfg.width, 2 * cfg.width), sample_steps=cfg.sample_steps,
                               past_actions=cfg.past_actions)


def step_functions(cfg: TrainConfig, data: Transitions):
    """A run's batch_at(step, rank) and loss_of(nets, batch), as training/loop.py's `run` takes them."""
    oversampled = data.oversampled(cfg.batch_size, cfg.end_share)

    def batch_at(step, rank):
        return data.batch(data.draw(np.random.default_rng([cfg.seed, step, rank]), cfg.batch_size, cfg.end_share))

    def loss_of(nets, batch):
        return nets.loss(batch, cfg.end_weight, cfg.heads_only, cfg.on_dreams, oversampled, cfg.change_weight,
                         cfg.action_dropout, cfg.rollout_share)

    return batch_at, loss_of


def window(cfg: TrainConfig) -> int:
    """Context frames a training row holds: the dynamics' context, and the frames its
    dreamed ones are drawn from (--rollout-share)."""
    if not 0 <= cfg.rollout_share <= 1:
        raise ValueError(f"--rollout-share is a share of the rows, in [0, 1]; got {cfg.rollout_share}")
    if cfg.rollout_share and not 1 <= cfg.rollout_frames <= cfg.context:
        raise ValueError(f"--rollout-frames dreams some of the {cfg.context} context frames: 1 to {cfg.context}, "
                         f"got {cfg.rollout_frames}")
    if cfg.rollout_share and cfg.heads_only:
        raise ValueError("--rollout-share trains the dynamics on its own frames; --heads-only leaves the dynamics as it is")
    return cfg.context + (cfg.rollout_frames if cfg.rollout_share else 0)


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    data = Transitions(cfg.data, "train", window(cfg), cfg.max_frames)
    net_cfg = network_config(cfg, data.meta)
    torch.manual_seed(cfg.seed)
    nets = PixelNets(net_cfg)
    if cfg.init:
        init_from(nets, cfg.init)
    elif cfg.heads_only:
        raise ValueError("--heads-only trains the reward/end network beside a trained dynamics: give --init")
    if cfg.on_dreams and not cfg.heads_only:
        raise ValueError("--on-dreams trains the reward/end network on a trained dynamics' frames: add --heads-only")
    if cfg.heads_only:
        nets.dynamics.requires_grad_(False)
    if progress:
        print(f"{len(data.frames):,} frames, {len(data):,} transitions; "
              f"{sum(p.numel() for p in nets.parameters()):,} parameters", flush=True)
    config = {"kind": "pixel", "pixel": asdict(net_cfg), "train": asdict(cfg), "dataset": data.meta}
    batch_at, loss_of = step_functions(cfg, data)
    result = run(nets, cfg, "pixel", config, batch_at, loss_of, items_per_batch=lambda batch: len(batch[0]),
                 device=pick_device(cfg.device), progress=progress)
    nets.eval().cpu()
    scores = head_scores(nets.heads, Transitions(cfg.data, "test", cfg.context), cfg.eval_transitions,
                         float(data.rewards.mean()), dynamics=nets.dynamics if cfg.on_dreams else None)
    (Path(cfg.out) / "scores.json").write_text(json.dumps(scores, indent=2))
    if progress:
        print(json.dumps(scores, indent=2))
    return {**result, "scores": scores}
