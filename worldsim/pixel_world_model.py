"""A world model in pixel space: the U-Net dynamics and the reward/end network of
worldsim/pixel_dynamics.py as one checkpoint, with the env facts and real start frames a
latent `WorldModel` keeps. The dream env, `rollout` and the tools take either kind
(`worldsim.dream_env.load_world_model` reads which one a file holds).

Its "latent" is the frame itself, (3, H, W) in [-1, 1]: `encode` and `decode` only change
the scale, and `obs_type="latent"` gives an agent the frame as floats. It has no memory
and no text; its context is the last `cfg.context` frames, nothing older.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
import torch.nn as nn

from worldsim.checkpoint import (DYNAMICS, REWARD_END, CheckpointError, config_from, load_checkpoint, prefixed,
                                 save_checkpoint, with_prefix)
from worldsim.pixel_dynamics import PixelDynamics, PixelDynamicsConfig, RewardEndNet, as_shown, to_unit
from worldsim.world_model import DreamCore, WorldModel

KIND = "pixel_world_model"


class PixelWorldModel(nn.Module):
    def __init__(self, dynamics: PixelDynamics, heads: RewardEndNet, info: dict, start_frames: np.ndarray):
        super().__init__()
        self.dynamics, self.heads, self.info = dynamics, heads, dict(info)
        if heads.cfg != dynamics.cfg:
            raise ValueError("the reward/end network reads the dynamics' frames and actions: their configs must match")
        start_frames = np.asarray(start_frames, dtype=np.uint8)
        if start_frames.ndim != 4 or start_frames.shape[1:] != self.frame_shape or not len(start_frames):
            raise ValueError(f"start_frames must be uint8 (N, {', '.join(map(str, self.frame_shape))}), N >= 1; "
                             f"got {start_frames.shape}")
        self.start_frames = start_frames
        space = self.info.get("action_space") or {}
        if space.get("type") != "Discrete" or space.get("n") != dynamics.cfg.actions:
            raise ValueError(f"a pixel world model acts on Discrete({dynamics.cfg.actions}); the env's action space "
                             f"is {space!r}")

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (*self.dynamics.cfg.frame_size, 3)

    @property
    def device(self):
        return self.dynamics.out.weight.device

    # No memory, no depth network: the switches accept only "off".
    memory_key, has_memory, can_rerender = None, False, False

    def use_memory(self, memory: bool | None) -> bool:
        if memory:
            raise ValueError("a pixel world model has no memory; its context is its last frames")
        return False

    def use_rerender(self, rerender: bool, memory: bool) -> bool:
        if rerender:
            raise ValueError("a pixel world model has no memory to re-render")
        return False

    def encode(self, frames) -> torch.Tensor:
        """uint8 frames (..., H, W, 3) -> (..., 3, H, W) in [-1, 1]."""
        return to_unit(np.asarray(frames), self.device)

    def decode(self, x) -> torch.Tensor:
        """(..., 3, H, W) in [-1, 1] -> uint8 frames (..., H, W, 3)."""
        return x.movedim(-3, -1).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)

    @torch.no_grad()
    def shift_end_logit(self, shift: float):
        """Add `shift` to the end network's logit (worldsim/replay.py `calibrate_ends`)."""
        self.heads.head[-1].bias[1] += shift

    def new_core(self, num_rows: int, sample_steps: int | None = None, memory: bool | None = None,
                 memory_guidance: float | None = None, uncertainty: bool = False, rerender: bool = False):
        self.use_rerender(rerender, self.use_memory(memory))
        if memory_guidance:
            raise ValueError("a pixel world model has no memory to guide by")
        return PixelDreamCore(self, num_rows, sample_steps, uncertainty)

    rollout = WorldModel.rollout  # the same dream as a latent model's, from this model's core

    # -------------------------------------------------------------- files
    def save(self, path, half: bool = True):
        """One safetensors file; `half` stores weights as float16 (loaded back as float32)."""
        tensors = prefixed(self.dynamics.state_dict(), DYNAMICS) | prefixed(self.heads.state_dict(), REWARD_END)
        if half:
            tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        tensors["start_frames"] = torch.from_numpy(self.start_frames)
        save_checkpoint(path, tensors, {"kind": KIND, "pixel_dynamics": asdict(self.dynamics.cfg), **self.info})

    @classmethod
    def load(cls, path, device="cpu") -> "PixelWorldModel":
        tensors, config = load_checkpoint(path)
        if config.get("kind") != KIND:
            raise CheckpointError(f"{path} is a {config.get('kind', 'unknown')!r} checkpoint; expected a {KIND}")
        cfg = config_from(PixelDynamicsConfig, config, "pixel_dynamics", path)
        info = {k: v for k, v in config.items() if k not in ("kind", "pixel_dynamics")}
        dynamics, heads = PixelDynamics(cfg), RewardEndNet(cfg)
        try:
            dynamics.load_state_dict({k: v.float() for k, v in with_prefix(tensors, DYNAMICS).items()})
            heads.load_state_dict({k: v.float() for k, v in with_prefix(tensors, REWARD_END).items()})
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not match its own config ({e})") from e
        start = tensors.get("start_frames")
        if start is None or start.dtype != torch.uint8:
            raise CheckpointError(f"{path}: no uint8 start_frames; expected the real frames the dream starts from")
        try:
            model = cls(dynamics, heads, info, start.numpy())
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from e
        return model.to(device).eval()


class PixelDreamCore:
    """Batched dream state of a pixel world model: each row's last `cfg.context` frames.

    A row that resets from fewer frames is padded at the front with its first frame (a
    start frame reads as a player who stood still). Each step samples every row's next
    frame in one batched pass, rounds it to the 8-bit frame it is shown as, and reads it
    back as context: the dream sees what the agent sees. uncertainty=True samples each
    frame a second time, from its own noise, and keeps the RMS difference over sqrt(2) in
    `self.spread`, as DreamCore does."""

    def __init__(self, model: PixelWorldModel, num_rows: int, sample_steps: int | None = None,
                 uncertainty: bool = False):
        self.model, self.dyn, self.n = model, model.dynamics, num_rows
        cfg = self.dyn.cfg
        self.sample_steps = sample_steps or cfg.sample_steps
        self.device = model.device
        self.context = torch.zeros(num_rows, cfg.context, *cfg.latent_shape, device=self.device)
        self.past = torch.full((num_rows, cfg.context - 1), -1, dtype=torch.long, device=self.device)  # actions between them
        self.clock = torch.zeros(num_rows, dtype=torch.long, device=self.device)
        self.memory = self.rerender = False
        self.retrieved = np.zeros(num_rows, dtype=np.int64)  # no memory: always 0
        self.happened = np.zeros((num_rows, 0), dtype=bool)  # no counted events
        self.uncertainty = uncertainty
        self.spread = np.zeros(num_rows, dtype=np.float32)
        self.spread_generator = None

    STATE = ("context", "past", "clock", "spread", "spread_generator")

    @property
    def last(self) -> torch.Tensor:
        return self.context[:, -1]

    @property
    def context_frames(self) -> int:
        return self.dyn.cfg.context

    get_state, set_state = DreamCore.get_state, DreamCore.set_state  # copies of STATE, as a latent dream's

    def reset_rows(self, rows, contexts, generator):
        """contexts: for each row, (frames (T, H, W, 3) uint8, actions (T-1,), ...); only
        the last `cfg.context` frames and the actions between them are read (a padded
        front has no actions: -1)."""
        k = self.dyn.cfg.context
        for row, (frames, actions, *_) in zip(rows, contexts):
            x = self.model.encode(np.asarray(frames)[-k:])
            self.context[row] = torch.cat([x[:1].expand(k - len(x), *x.shape[1:]), x])
            between = np.asarray([] if actions is None else actions, dtype=np.int64).reshape(-1)[len(frames) - len(x):]
            self.past[row] = -1
            if len(between):
                self.past[row, k - 1 - len(between):] = torch.as_tensor(between, device=self.device)
            self.clock[row] = k - 1
            self.spread[row] = 0.0

    def step(self, actions, generator):
        """actions (N,) -> next frames (N, 3, H, W) in [-1, 1], rewards (N,), termination probabilities (N,)."""
        with torch.no_grad():
            a = torch.as_tensor(np.asarray(actions), device=self.device).long()
            nxt = as_shown(self.dyn.sample(self.context, a, self.sample_steps, generator, self.past))
            if self.uncertainty:
                if self.spread_generator is None:
                    self.spread_generator = torch.Generator(device=self.device).manual_seed(generator.initial_seed() + 1)
                other = as_shown(self.dyn.sample(self.context, a, self.sample_steps, self.spread_generator, self.past))
                self.spread = ((nxt - other).pow(2).mean(dim=(1, 2, 3)) / 2).sqrt().cpu().numpy()
            reward, end = self.model.heads(self.context, a, nxt)
            self.context = torch.cat([self.context[:, 1:], nxt[:, None]], 1)
            self.past = torch.cat([self.past[:, 1:], a[:, None]], 1)
            self.clock += 1
        return nxt, reward.cpu().numpy(), torch.sigmoid(end).cpu().numpy()
