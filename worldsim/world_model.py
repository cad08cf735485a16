"""The world model: tokenizer + diffusion transformer + reward/termination head, as one
checkpoint that remembers the env, action space and frame size it was trained on and
holds a few real start frames (the DreamEnv's default reset). A text-conditioned model
may carry a first-frame network beside its dynamics: a diffusion transformer trained on
single frames and their captions that makes a world's start from a prompt, as Emu Video
factorises text-to-video into text-to-image, then the video from that image. A model
with pose-keyed memory may carry a depth network (worldsim/depth.py), with which the
dream re-renders what memory holds from the pose it now stands at (worldsim/reproject.py).
"""

from __future__ import annotations

import copy
from dataclasses import asdict

import numpy as np
import torch
import torch.nn as nn

from worldsim.checkpoint import (DEPTH, DYNAMICS, FIRST_FRAME, TOKENIZER, CheckpointError, config_from, load_checkpoint,
                                 prefixed, save_checkpoint, with_prefix)
from worldsim.depth import DepthConfig, DepthNet
from worldsim.dynamics import Dynamics, DynamicsConfig, RewardEndHead
from worldsim.memory import MEMORY_CAPACITY, SEEN_HERE, MemoryBank, PoseTracker, relative_poses_batched
from worldsim.reproject import rerender
from worldsim.sampler import prime, sample_next
from worldsim.tokenizer import Tokenizer, TokenizerConfig


KEEP_FLOAT32 = ("text_mean", "text_whitening")  # tensors `save(half=True)` keeps at full precision
# Memory guidance with re-rendered memory, unless given: the view already stands at the new
# pose, and guidance would push its errors twice as far (with 1: 1.7 dB of loop closure and
# 0.6 at 64 steps lost).
RERENDER_MEMORY_GUIDANCE = 0.0


class WorldModel(nn.Module):
    def __init__(self, tokenizer: Tokenizer, dynamics: Dynamics, info: dict, start_frames: np.ndarray | None = None,
                 first_frame: Dynamics | None = None, depth: DepthNet | None = None):
        super().__init__()
        self.tokenizer, self.dynamics, self.info = tokenizer, dynamics, dict(info)
        if first_frame is not None and (not first_frame.cfg.text_dim or
                                        tuple(first_frame.cfg.latent_shape) != tuple(dynamics.cfg.latent_shape)):
            raise ValueError(f"a first-frame network makes frames from text in the dynamics' latents "
                             f"{tuple(dynamics.cfg.latent_shape)}; got text_dim {first_frame.cfg.text_dim}, latents "
                             f"{tuple(first_frame.cfg.latent_shape)}")
        self.first_frame = first_frame
        if depth is not None and (dynamics.cfg.memory == 0 or self.memory_key != "pose"):
            raise ValueError("a depth network re-renders memory from new poses: it needs a model with memory keyed by "
                             "pose")
        self.depth = depth
        h, w = tokenizer.cfg.frame_size
        self.start_frames = (np.zeros((1, h, w, 3), np.uint8) if start_frames is None
                             else np.asarray(start_frames, dtype=np.uint8))

    @property
    def memory_key(self) -> str:
        """What the memory is keyed by: "pose" (dead-reckoned with the pose model) or "latent"."""
        return self.info.get("memory_key") or "pose"

    @property
    def has_memory(self) -> bool:
        """Trained with latent memory, and keyed by latents or by the pose model it came with."""
        return bool(self.dynamics.cfg.memory) and (self.memory_key == "latent" or self.info.get("pose_model") is not None)

    def use_memory(self, memory: bool | None) -> bool:
        """The memory switch resolved: None means on when the model has memory; asking
        for memory the model lacks is an error."""
        if memory and not self.has_memory:
            raise ValueError("this world model has no memory (trained without --memory)")
        return self.has_memory if memory is None else bool(memory)

    @property
    def can_rerender(self) -> bool:
        """Carries a depth network, to re-render memory from the dream's new poses."""
        return self.depth is not None and self.has_memory

    def use_rerender(self, rerender: bool, memory: bool) -> bool:
        """The re-render switch checked: asking for it with memory off, or of a model
        without a depth network, is an error."""
        if rerender and not (memory and self.can_rerender):
            raise ValueError("re-rendering memory from new poses needs memory on and a world model with a depth network "
                             "(`worldsim export --depth`)")
        return bool(rerender)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (*self.tokenizer.cfg.frame_size, 3)

    # -------------------------------------------------------------- files
    def save(self, path, half: bool = True):
        """One safetensors file; `half` stores weights as float16 (loaded back as float32)."""
        tensors = prefixed(self.tokenizer.state_dict(), TOKENIZER) | prefixed(self.dynamics.state_dict(), DYNAMICS)
        networks = {}  # the configs of the networks beside the dynamics
        if self.first_frame is not None:
            tensors |= prefixed(self.first_frame.state_dict(), FIRST_FRAME)
            networks["first_frame"] = asdict(self.first_frame.cfg)
        if self.depth is not None:
            tensors |= prefixed(self.depth.state_dict(), DEPTH)
            networks["depth"] = asdict(self.depth.cfg)
        if half:  # caption whitening stays float32: it amplifies directions float16 would round away
            tensors = {k: v.half() if v.is_floating_point() and not k.endswith(KEEP_FLOAT32) else v
                       for k, v in tensors.items()}
        tensors["start_frames"] = torch.from_numpy(self.start_frames)
        save_checkpoint(path, tensors, {"kind": "world_model", "tokenizer": asdict(self.tokenizer.cfg),
                                        "dynamics": asdict(self.dynamics.cfg), **networks, **self.info})

    @classmethod
    def load(cls, path, device="cpu") -> "WorldModel":
        tensors, config = load_checkpoint(path)
        if config.get("kind") != "world_model":
            raise CheckpointError(f"{path} is a {config.get('kind', 'unknown')!r} checkpoint; expected a world model "
                                  "(make one with `worldsim export --checkpoint DYNAMICS_RUN/latest.safetensors`)")
        tok_cfg = config_from(TokenizerConfig, config, "tokenizer", path)
        dyn_cfg = config_from(DynamicsConfig, config, "dynamics", path)
        first_cfg = config_from(DynamicsConfig, config, "first_frame", path) if "first_frame" in config else None
        depth_cfg = config_from(DepthConfig, config, "depth", path) if "depth" in config else None
        try:
            tokenizer, dynamics = Tokenizer(tok_cfg), Dynamics(dyn_cfg)
            first_frame = Dynamics(first_cfg) if first_cfg else None
            depth = DepthNet(depth_cfg) if depth_cfg else None
        except (KeyError, TypeError, ValueError) as e:  # e.g. an action space the encoder cannot embed
            raise CheckpointError(f"{path}: cannot build the model its config describes ({e!r})") from e
        try:
            tokenizer.load_state_dict({k: v.float() for k, v in with_prefix(tensors, TOKENIZER).items()})
            dynamics.load_state_dict({k: v.float() for k, v in with_prefix(tensors, DYNAMICS).items()})
            if first_frame is not None:
                first_frame.load_state_dict({k: v.float() for k, v in with_prefix(tensors, FIRST_FRAME).items()})
            if depth is not None:
                depth.load_state_dict({k: v.float() for k, v in with_prefix(tensors, DEPTH).items()})
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not match its own config ({e})") from e
        info = {k: v for k, v in config.items() if k not in ("kind", "tokenizer", "dynamics", "first_frame", "depth")}
        # The env exposes info's action space; the weights embed the dynamics config's.
        if info.get("action_space") != dyn_cfg.action_space:
            raise CheckpointError(f"{path}: action_space {info.get('action_space')!r} is not the one its weights were "
                                  f"trained on; expected {dyn_cfg.action_space!r}")
        h, w = tok_cfg.frame_size
        start = tensors.get("start_frames")
        if start is None or start.dtype != torch.uint8 or start.shape[1:] != (h, w, 3) or not len(start):
            got = "none" if start is None else f"{start.dtype} {tuple(start.shape)}"
            raise CheckpointError(f"{path}: start_frames are {got}; expected uint8 (N, {h}, {w}, 3) real frames, "
                                  "N >= 1, the dream's default reset")
        try:
            model = cls(tokenizer, dynamics, info, start.numpy(), first_frame, depth)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from e
        return model.to(device).eval()

    # -------------------------------------------------------------- use
    @property
    def device(self):
        return self.tokenizer.latent_shift.device

    def encode(self, frames) -> torch.Tensor:
        return self.tokenizer.encode(torch.as_tensor(frames).to(self.device))

    def decode(self, z) -> torch.Tensor:
        return self.tokenizer.decode(z)

    @torch.no_grad()
    def shift_end_logit(self, shift: float):
        """Add `shift` to the termination head's logit (worldsim/replay.py `calibrate_ends`)."""
        self.dynamics.heads.out[-1].bias[1] += shift

    def new_core(self, num_rows: int, sample_steps: int | None = None, memory: bool | None = None,
                 memory_guidance: float | None = None, uncertainty: bool = False, rerender: bool = False):
        """A batched dream of `num_rows` rows (DreamCore): what the dream envs and `rollout` step."""
        return DreamCore(self, num_rows, sample_steps, memory, memory_guidance=memory_guidance,
                         uncertainty=uncertainty, rerender=rerender)

    @torch.no_grad()
    def rollout(self, context_frames, context_actions, actions, steps: int | None = None, seed: int = 0,
                memory: bool | None = None, memory_guidance: float | None = None, rerender: bool = False):
        """Dream forward from real context, as the DreamEnv does.

        context_frames (B, T, H, W, 3) uint8; context_actions (B, T-1) the actions between
        them; actions (B, N) the actions to take from the last context frame on; memory,
        memory_guidance and rerender as DreamCore's. Returns frames (B, N, H, W, 3) uint8:
        frame k is the result of actions[:, k] - and the predicted rewards (B, N) and
        termination probabilities (B, N).
        """
        generator = torch.Generator(device=self.device).manual_seed(seed)
        context_frames, context_actions = np.asarray(context_frames), np.asarray(context_actions)
        actions = np.asarray(actions)
        core = self.new_core(len(context_frames), steps, memory, memory_guidance=memory_guidance, rerender=rerender)
        core.reset_rows(range(len(context_frames)), list(zip(context_frames, context_actions)), generator)
        frames, rewards, ends = [], [], []
        for k in range(actions.shape[1]):
            nxt, reward, end = core.step(actions[:, k], generator)
            frames.append(self.decode(nxt[:, None])[:, 0].cpu().numpy())
            rewards.append(reward)
            ends.append(end)
        return np.stack(frames, 1), np.stack(rewards, 1), np.stack(ends, 1)


    @torch.no_grad()
    def frame_from_text(self, text, generator=None, steps: int = 16, guidance: float | None = None) -> np.ndarray:
        """A world's first frame (H, W, 3) uint8 from a text embedding (worldsim/text.py):
        the first-frame network's sample where the model has one, else the frame the
        dynamics predicts with nothing before it, guided by the text; more denoising
        steps than a step of the dream, as it starts from pure noise. `guidance`: the text
        guidance weight (default: the network's)."""
        dyn = self.first_frame if self.first_frame is not None else self.dynamics
        if not dyn.cfg.text_dim:
            raise ValueError("this world model has no text conditioning (text_dim=0); train one with --text")
        text = torch.as_tensor(np.asarray(text), dtype=torch.float32, device=self.device).reshape(1, -1)
        zero = torch.zeros(1, dtype=torch.long, device=self.device)
        z = sample_next(dyn, dyn.new_cache(), zero, zero, steps, generator, text=text, text_guidance=guidance,
                        has_action=False)
        return self.decode(z[:, None])[0, 0].cpu().numpy()


class DreamCore:
    """Batched dream state: one KV cache for all rows, each row with its own clock, and,
    when the model has memory, its own pose and latent memory.

    A row that resets gets its new context written into its slice of the cache, padded
    at the front (by repeating its first frame, with no action) to the cache's length,
    so every row always holds the same number of frames. Attention uses rotary time
    positions, so rows at different absolute times share one forward pass.

    Memory (worldsim/memory.py): every frame goes into the row's memory keyed by its
    dead-reckoned pose; each new frame attends to the `cfg.memory` earlier frames whose
    views overlap its own most, kept for as long as the bounded memory holds them, far
    beyond the context window. A model keyed by latents (an env without a pose) retrieves
    the frames from before the context window most like the newest frame instead. All
    rows' memories are one `MemoryBank` on the model's device, so a step adds and
    retrieves for every row at once. memory=False turns it off (ablation);
    memory_guidance overrides the model's guidance weight (worldsim/sampler.py; 0 turns it off).

    rerender=True (a model that carries a depth network): what memory recalls,
    and the row's last frame (their frames and depth kept since they were added), are
    re-rendered from the pose the new frame is seen from and fused, each pixel from the
    least moved source that shows it (worldsim/reproject.py); the network then sees that one view as a memory from its own pose, the case it
    restores best, instead of frames from other poses, which it cannot move. Where no
    source saw a pixel, the last frame fills it as it was. Memory guidance is off with it
    unless given.

    uncertainty=True samples every frame twice, from two noises, and keeps in
    `self.spread` each row's disagreement: the RMS difference of the two samples' latents
    over sqrt(2), an estimate of the spread of what the model would dream there. It is
    large where the model does not know what comes next (what an agent that exploits the
    dream seeks out), at the cost of a second sample per step.
    """

    def __init__(self, model, num_rows: int, sample_steps: int | None = None, memory: bool | None = None,
                 memory_guidance: float | None = None, uncertainty: bool = False, rerender: bool = False):
        self.model, self.dyn, self.n = model, model.dynamics, num_rows
        self.memory_guidance = memory_guidance
        self.sample_steps = sample_steps or self.dyn.cfg.sample_steps
        self.cache = None
        self.device = model.device
        self.clock = torch.zeros(num_rows, dtype=torch.long, device=self.device)  # frame index of each row's last frame
        self.last = torch.zeros(num_rows, *self.dyn.cfg.latent_shape, device=self.device)
        self.memory = model.use_memory(memory)
        self.by_pose = model.memory_key == "pose"
        if self.memory:
            self.memory_args = dict(latent_shape=self.dyn.cfg.latent_shape, capacity=MEMORY_CAPACITY,
                                    key=model.memory_key)
            if self.by_pose:
                pose_model = model.info["pose_model"]
                self.tracker = PoseTracker(pose_model["motion"])
                self.memory_args |= dict(fov_deg=pose_model["fov_deg"], reach=pose_model["reach"])
                self.poses = np.zeros((num_rows, 3))
        self.rerender = model.use_rerender(rerender, self.memory)
        if self.rerender and memory_guidance is None:
            self.memory_guidance = RERENDER_MEMORY_GUIDANCE
        if self.memory:
            if self.rerender:  # entries keep their frames and depth; so does each row's last frame
                self.memory_args["view_shape"] = tuple(model.frame_shape[:2])
                self.last_pixels = torch.zeros(num_rows, *model.frame_shape, dtype=torch.uint8, device=self.device)
                self.last_inverse = torch.zeros(num_rows, *model.frame_shape[:2], device=self.device)
            self.memories = MemoryBank(num_rows, **self.memory_args, device=self.device)
        self.retrieved = np.zeros(num_rows, dtype=np.int64)  # memory frames the last step attended to
        # Events (cfg.events) each row's episode has had, paid once each; and those of the last step.
        self.unlocked = torch.zeros(num_rows, len(self.dyn.cfg.events), dtype=torch.bool, device=self.device)
        self.happened = np.zeros((num_rows, len(self.dyn.cfg.events)), dtype=bool)
        self.uncertainty = uncertainty
        self.spread = np.zeros(num_rows, dtype=np.float32)  # the last step's sample disagreement (uncertainty=True)
        self.spread_generator = None  # the second sample's own noise: the dream itself is the same with or without it
        # Each row's text (a prompt's embedding); zeros, the null text, for rows started otherwise.
        text_dim = self.dyn.cfg.text_dim
        self.text = torch.zeros(num_rows, text_dim, device=self.device) if text_dim else None

    @property
    def context_frames(self) -> int:
        """Frames each row's context holds (its KV cache's length)."""
        return self.cache.frames

    # What a step reads and writes; the network and the settings are not part of a state.
    STATE = ("cache", "clock", "last", "last_pixels", "last_inverse", "poses", "memories", "retrieved", "spread",
             "spread_generator", "text", "unlocked", "happened")

    def get_state(self) -> dict:
        """A copy of the dream's state: KV cache, clocks, last latents, poses, memories,
        text, the second sample's noise (uncertainty), the events each episode has had."""
        return copy.deepcopy({"rows": self.n, **{k: getattr(self, k) for k in self.STATE if hasattr(self, k)}})

    def set_state(self, state: dict):
        """Continue from a `get_state()` of a core with the same model and rows (copied:
        the state can be restored again)."""
        if state.get("rows") != self.n:
            raise ValueError(f"this dream state holds {state.get('rows')} rows; this dream has {self.n}")
        for k, v in copy.deepcopy(state).items():
            if k in self.STATE:
                setattr(self, k, v)

    def _context_cache(self, z, actions, frames_held: int, generator, text=None):
        """A one-row cache holding `frames_held` frames: the context, front-padded."""
        dyn = self.dyn
        t = z.shape[1]
        into, has = dyn.actions_into_frames(actions, 1, t, z.device)
        if t < frames_held:
            pad = frames_held - t
            z = torch.cat([z[:, :1].expand(1, pad, *z.shape[2:]), z], 1)
            into = torch.cat([into[:, :1].expand(1, pad, *into.shape[2:]), into], 1)
            has = torch.cat([torch.zeros(1, pad, dtype=torch.bool, device=z.device), has], 1)
        z, into, has = z[:, -frames_held:], into[:, -frames_held:], has[:, -frames_held:]
        cache = dyn.new_cache()
        prime(dyn, cache, z, into, has, torch.arange(frames_held, device=z.device)[None], generator, text)
        return cache

    def reset_rows(self, rows, contexts, generator):
        """contexts: for each row, (frames (T, H, W, 3) uint8, actions (T-1,)), or with a
        third item, the text embedding the row is conditioned on from then on (items after
        it are the caller's)."""
        max_hold = self.dyn.cfg.max_frames - 1
        if self.cache is None:  # first reset: all rows at once, the longest context decides the length
            hold = min(max(len(context[0]) for context in contexts), max_hold)
            self.cache = self.dyn.new_cache()
            self.cache.fill_empty(self.n, hold, self.dyn.cfg.n_heads, self.dyn.cfg.d_model // self.dyn.cfg.n_heads,
                                  self.device)
        hold = self.cache.frames
        with torch.no_grad():
            for row, (frames, actions, *text) in zip(rows, contexts):
                if self.text is not None:
                    self.text[row] = torch.as_tensor(text[0], device=self.device) if text and text[0] is not None else 0
                z = self.model.encode(frames[None])
                acts = torch.as_tensor(np.asarray(actions)).reshape(1, len(frames) - 1, *np.shape(actions)[1:])
                acts = acts.to(self.device)
                at = torch.tensor([row], device=self.device)
                one = self._context_cache(z, acts, hold, generator,
                                          None if self.text is None else self.text[row:row + 1])
                self.cache.write_rows(at, one)
                self.clock[row] = hold - 1
                self.last[row] = z[0, -1]
                if self.memory:  # the whole context goes to memory
                    poses = self.tracker.path(actions) if self.by_pose else [None] * len(frames)
                    self.memories.clear([row])
                    if self.rerender:
                        pixels = torch.as_tensor(np.asarray(frames), device=self.device)
                        inverse = self.model.depth.predict(pixels)
                        self.last_pixels[row], self.last_inverse[row] = pixels[-1], inverse[-1]
                    for i in range(len(frames)):
                        self.memories.add(z[0, i:i + 1], None if poses[i] is None else poses[i][None],
                                          [hold - len(frames) + i], rows=[row],
                                          views=(pixels[i:i + 1], inverse[i:i + 1]) if self.rerender else None)
                    if self.by_pose:
                        self.poses[row] = poses[-1]
                self.retrieved[row] = 0
                self.unlocked[row], self.happened[row] = False, False  # a context's own events are not known

    def _recall(self, actions):
        """Move each row's pose by its action and fetch its memory for the next frame."""
        if self.by_pose:
            before = self.poses
            self.poses = self.tracker.step(self.poses, actions)
            # Every earlier frame is a candidate, those still in the context window too: the
            # pose-matched copy is what restores a view, whether or not attention still holds it.
            recalled = self.memories.retrieve(self.poses, self.dyn.cfg.memory, self.clock + 1, views=self.rerender)
        else:  # as in training: frames from before the context window, like the newest frame
            recalled = self.memories.retrieve(self.last, self.dyn.cfg.memory, self.clock - self.cache.frames + 1)
        valid = recalled[2]
        self.retrieved = valid.sum(1).cpu().numpy()
        if not self.retrieved.any():
            return None
        if self.rerender:
            return self._rerendered(*recalled, before)
        return recalled

    def _rerendered(self, z, feats, valid, pixels, inverse, before):
        """Memory as one view from each row's new pose: the last frame (seen from `before`)
        and the recalled entries (their frames and inverse depths, poses relative to the
        new one in `feats`) re-rendered there and fused (`reproject.rerender`)."""
        reach, fov = self.memories.reach, self.memories.fov_deg
        rows = valid.any(1)
        rel_last = relative_poses_batched(torch.as_tensor(self.poses, device=self.device),
                                          torch.as_tensor(before, device=self.device)[:, None])[:, 0]
        # Sources per row: the last frame, then the entries; poses in the frame of the new
        # view, which looks along +x from the origin.
        entry_poses = torch.stack([feats[..., 0] * reach, feats[..., 1] * reach,
                                   torch.atan2(feats[..., 3], feats[..., 2])], -1)
        poses = torch.cat([rel_last[:, None].float(), entry_poses], 1)[rows]
        frames = torch.cat([self.last_pixels[:, None], pixels], 1)[rows]  # (R, S, H, W, 3)
        depth = torch.cat([self.last_inverse[:, None], inverse], 1)[rows]
        shown = torch.cat([torch.ones_like(valid[:, :1]), valid], 1)[rows]
        view = rerender(frames, depth, poses, shown, fov)
        out_z = torch.zeros(self.n, 1, *self.dyn.cfg.latent_shape, device=self.device)
        out_z[rows] = self.model.encode(view[:, None])
        out_feats = torch.tensor(SEEN_HERE, device=self.device).repeat(self.n, 1, 1)
        return out_z, out_feats, rows[:, None]

    def step(self, actions, generator):
        """actions (N, ...) -> next latents (N, C, h, w), rewards (N,), termination probabilities (N,)."""
        with torch.no_grad():
            a = torch.as_tensor(np.asarray(actions)).to(self.device)
            memory = self._recall(np.asarray(actions)) if self.memory else None
            self.clock += 1
            sample = lambda noise, write: sample_next(  # noqa: E731
                self.dyn, self.cache, a, self.clock.clone(), self.sample_steps, noise, text=self.text, memory=memory,
                guidance=self.memory_guidance, write_cache=write)
            if self.uncertainty:  # the same step from its own noise, first, as it leaves the cache as it was
                if self.spread_generator is None:
                    self.spread_generator = torch.Generator(device=self.device).manual_seed(generator.initial_seed() + 1)
                other = sample(self.spread_generator, False)
            nxt = sample(generator, True)
            if self.uncertainty:
                self.spread = ((nxt - other).pow(2).mean(dim=(1, 2, 3)) / 2).sqrt().float().cpu().numpy()
            reward, end, events = self.dyn.heads(self.last, nxt, a)
            reward, self.unlocked = RewardEndHead.paid(reward.float(), events, self.unlocked)
            self.happened = (events > 0).cpu().numpy()
            self.last = nxt
            if self.memory:
                views = None
                if self.rerender:
                    self.last_pixels = self.model.decode(nxt[:, None])[:, 0]
                    self.last_inverse = self.model.depth.predict(self.last_pixels)
                    views = (self.last_pixels, self.last_inverse)
                self.memories.add(nxt, self.poses if self.by_pose else None, self.clock, views=views)
        return nxt, reward.float().cpu().numpy(), torch.sigmoid(end).float().cpu().numpy()
