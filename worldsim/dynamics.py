"""The dynamics network: an action-conditioned diffusion transformer over spacetime
latent patches.

Read top to bottom: action and noise-level embeddings, adaLN-Zero transformer blocks
with block-causal attention over frames (a frame's tokens see their own frame and the
past), rotary time positions so a sliding KV cache stays valid, the KV cache, the
reward/termination head and the network, which predicts the clean latents of a window
of noisy ones. How it is trained is worldsim/objective.py; how frames are sampled from
it, with guidance, worldsim/sampler.py.

With `memory` > 0, the frame being generated also attends to retrieved memory frames,
each conditioned on its pose relative to that frame (worldsim/memory.py). Memory frames
enter clean, see only themselves (one pass gives their keys and values for every
denoising step) and are seen only by the newest frame, so the KV cache never depends on
what was retrieved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsim.memory import turned_columns
from worldsim.patches import patchify, unpatchify


@dataclass
class DynamicsConfig:
    latent_shape: tuple[int, int, int] = (8, 8, 8)  # (C, h, w) of one latent frame
    action_space: dict = field(default_factory=lambda: {"type": "Discrete", "n": 7, "start": 0})
    patch: int = 2
    d_model: int = 192
    n_layers: int = 6
    n_heads: int = 6
    max_frames: int = 16  # the context window: frames attention can see
    text_dim: int = 0  # > 0: a text embedding of this size joins each frame's conditioning
    text_whiten: bool = False  # texts enter centred and whitened by the training captions' statistics (worldsim/text.py whitening)
    ctx_noise: float = 0.1  # noise level of context frames when sampling
    sample_steps: int = 3
    memory: int = 0  # > 0: memory frames (worldsim/memory.py) the generated frame can attend to
    text_guidance: float = 0.0  # w_t: x0 += w_t (x0 - x0_null_text) when a text is given (zeros are the null text)
    action_guidance: float = 0.0  # w_a: x0 += w_a (x0 - x0_no_action); for a model trained with action dropout
    memory_guidance: float = 1.0  # w: x0 = x0_mem + w (x0_mem - x0_no_mem) with memory; 0 turns it off
    memory_fov_deg: float = 0.0  # > 0: a memory token takes the screen position its bearing has in the new view (a camera of this horizontal field of view; turns only)
    events: tuple[str, ...] = ()  # names of counted events the heads detect (Crafter's achievements): each pays 1 the first time it happens in an episode, and the reward head learns the rest of the reward

    def __post_init__(self):
        self.latent_shape = tuple(self.latent_shape)
        self.events = tuple(self.events)
        c, h, w = self.latent_shape
        if h % self.patch or w % self.patch:
            raise ValueError(f"latent {h}x{w} is not divisible by patch {self.patch}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model {self.d_model} must split into {self.n_heads} heads of even size")

    @property
    def token_grid(self) -> tuple[int, int]:
        """(rows, cols) of a frame's tokens."""
        return self.latent_shape[1] // self.patch, self.latent_shape[2] // self.patch

    @property
    def tokens_per_frame(self) -> int:
        rows, cols = self.token_grid
        return rows * cols


CONFIGS = {
    "tiny": dict(d_model=64, n_layers=2, n_heads=2, max_frames=8),
    "XS": dict(d_model=128, n_layers=4, n_heads=4, max_frames=12),  # CPU-trainable
    "S": dict(d_model=192, n_layers=6, n_heads=6),
    "B": dict(d_model=384, n_layers=12, n_heads=6, max_frames=32),
    "L": dict(d_model=768, n_layers=16, n_heads=12, max_frames=32),
}


# ------------------------------------------------------------------ conditioning
class ActionEncoder(nn.Module):
    """Embeds one action per frame for Discrete, MultiDiscrete, MultiBinary, Box and Dict
    spaces; frames with no action (a window's first frame, action-free footage) get a
    learned null embedding."""

    def __init__(self, space: dict, d: int, with_null: bool = True):
        super().__init__()
        self.kind = space["type"]
        if self.kind == "Discrete":
            self.embed = nn.Embedding(space["n"], d)
            self.start = space.get("start", 0)
        elif self.kind == "MultiDiscrete":
            self.embed = nn.ModuleList(nn.Embedding(n, d) for n in space["nvec"])
        elif self.kind == "MultiBinary":
            self.embed = nn.Linear(int(np.prod(space["n"])), d)
        elif self.kind == "Box":
            self.embed = nn.Linear(int(np.prod(np.shape(space["low"]))), d)
        elif self.kind == "Dict":  # a list, not a ModuleDict: action names such as "forward" clash with Module's
            self.keys = list(space["spaces"])
            self.embed = nn.ModuleList(ActionEncoder(space["spaces"][k], d, with_null=False) for k in self.keys)
        else:
            raise ValueError(f"unsupported action space {space}")
        self.null = nn.Parameter(torch.zeros(d)) if with_null else None

    def encode(self, actions, batch_shape):
        if self.kind == "Discrete":
            return self.embed(actions.long() - self.start)
        if self.kind == "MultiDiscrete":
            return sum(e(actions[..., i].long()) for i, e in enumerate(self.embed))
        if self.kind in ("MultiBinary", "Box"):
            return self.embed(actions.float().reshape(*batch_shape, -1))
        return sum(enc.encode(actions[k], batch_shape) for k, enc in zip(self.keys, self.embed))

    def forward(self, actions, has_action: torch.Tensor) -> torch.Tensor:
        """actions (B, T, ...) (or a dict of them), has_action (B, T) bool -> (B, T, d)."""
        emb = self.encode(actions, has_action.shape)
        return torch.where(has_action[..., None], emb, self.null.to(emb.dtype))


def noise_embedding(tau: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the noise level tau in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=tau.device) / half)
    angles = (tau.float()[..., None] * 1000.0) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def pose_embedding(feats: torch.Tensor) -> torch.Tensor:
    """Relative pose features (..., 4) with Fourier features of 4 octaves: (..., 36)."""
    angles = feats.float()[..., None] * (math.pi * 2.0 ** torch.arange(4, device=feats.device))
    return torch.cat([feats.float(), angles.sin().flatten(-2), angles.cos().flatten(-2)], -1)


def rotary(pos: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary angles of frame indices pos (B, L): cos and sin (B, 1, L, head_dim / 2), made
    once per forward pass and shared by every layer's queries and keys."""
    d = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(d, device=pos.device, dtype=torch.float32) / d))
    angles = pos.float()[:, None, :, None] * freqs
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary embedding: x (B, H, L, D) turned by `rotary`'s angles."""
    d = x.shape[-1] // 2
    cos, sin = rope[0].to(x.dtype), rope[1].to(x.dtype)
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


# ------------------------------------------------------------------ transformer
def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x, rope, mask=None, cache=None):
        """x (B, L, d); rope: `rotary` of each token's frame index. With a cache (keys and
        values of earlier tokens), the new tokens also attend to all of them."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = rotate(q, rope), rotate(k, rope)
        new_kv = (k, v)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d)), new_kv


class Block(nn.Module):
    """DiT block with adaLN-Zero: the frame's conditioning sets shift, scale and a gate
    (zero at init, so each block starts as the identity)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, heads)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x, cond, rope, mask=None, cache=None):
        s1, c1, g1, s2, c2, g2 = self.ada(cond).chunk(6, dim=-1)
        h, new_kv = self.attn(modulate(self.norm1(x), s1, c1), rope, mask, cache)
        x = x + g1 * h
        x = x + g2 * self.mlp(modulate(self.norm2(x), s2, c2))
        return x, new_kv


class KVCache:
    """Keys and values of past frames, per layer, trimmed to the last `max_frames - 1`
    frames so the newest frame always fits in the context window."""

    def __init__(self, n_layers: int, tokens_per_frame: int, max_frames: int):
        self.layers = [None] * n_layers
        self.tokens_per_frame, self.max_frames = tokens_per_frame, max_frames
        self.frames = 0  # frames held

    def get(self, i):
        return self.layers[i]

    def fill_empty(self, batch: int, frames: int, n_heads: int, head_dim: int, device):
        """Zero keys and values for `frames` frames of `batch` rows, to be overwritten row by
        row (`write_rows`) when rows start from contexts of different lengths."""
        shape = (batch, n_heads, frames * self.tokens_per_frame, head_dim)
        self.layers = [(torch.zeros(shape, device=device),) * 2 for _ in self.layers]
        self.frames = frames

    def write_rows(self, rows: torch.Tensor, other: "KVCache"):
        """Rows `rows` of this cache become `other`'s rows, in order (same frames held)."""
        self.layers = [(k.index_copy(0, rows, k1), v.index_copy(0, rows, v1))
                       for (k, v), (k1, v1) in zip(self.layers, other.layers)]

    def repeat_rows(self, times: int) -> "KVCache":
        """A copy whose batch is this one's rows `times` times over (rows of guidance passes)."""
        other = KVCache(len(self.layers), self.tokens_per_frame, self.max_frames)
        other.layers = [None if kv is None else (kv[0].repeat(times, 1, 1, 1), kv[1].repeat(times, 1, 1, 1))
                        for kv in self.layers]
        other.frames = self.frames
        return other

    def append(self, i, kv):
        old = self.layers[i]
        self.layers[i] = kv if old is None else (torch.cat([old[0], kv[0]], 2), torch.cat([old[1], kv[1]], 2))

    def commit(self, frames: int):
        self.frames += frames
        keep = (self.max_frames - 1) * self.tokens_per_frame
        if self.frames > self.max_frames - 1:
            self.layers = [(k[:, :, -keep:], v[:, :, -keep:]) for k, v in self.layers]
            self.frames = self.max_frames - 1


def event_rises(counts):
    """Per-frame event counts (..., T + 1, E), numpy or torch -> (..., T, E) bool: the events
    that happened in each step (their count rose)."""
    return counts[..., 1:, :] > counts[..., :-1, :]


def first_rises(counts):
    """The events of each step (as `event_rises`) that are new to the episode: what Crafter pays."""
    return event_rises(counts) & (counts[..., :-1, :] == 0)


class RewardEndHead(nn.Module):
    """Reward, termination and events of the step (z_prev, action) -> z_next, from clean latents.

    With `cfg.events` the head also says which counted events happened in the step (a
    logit each). A pair of frames cannot tell whether an achievement is new to the
    episode, and Crafter pays only the first; so the reward head learns the reward less
    those first payments, and whoever steps the dream keeps what each episode has
    unlocked and pays the rest (`paid`)."""

    def __init__(self, cfg: DynamicsConfig, width: int = 64):
        super().__init__()
        c = cfg.latent_shape[0]
        self.conv = nn.Sequential(nn.Conv2d(2 * c, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU())
        self.action = ActionEncoder(cfg.action_space, width, with_null=False)  # every step has its action
        self.out = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2 + len(cfg.events)))

    def forward(self, z_prev, z_next, actions):
        """(N, C, h, w) x2, actions (N, ...) -> reward (N,), termination logit (N,), event logits (N, E)."""
        h = self.conv(torch.cat([z_prev, z_next], dim=1)).mean(dim=(2, 3))
        h = h + self.action.encode(actions, (len(h),))
        out = self.out(h)
        return out[:, 0], out[:, 1], out[:, 2:]

    @staticmethod
    def paid(reward, event_logits, unlocked):
        """The step's reward with each detected event (logit > 0) paying 1 unless `unlocked`
        (N, E) says the episode had it already; returns (reward (N,), unlocked after the step)."""
        happened = event_logits > 0
        return reward + (happened & ~unlocked).sum(-1).to(reward.dtype), unlocked | happened


class Dynamics(nn.Module):
    def __init__(self, cfg: DynamicsConfig):
        super().__init__()
        self.cfg = cfg
        c, h, w = cfg.latent_shape
        p, d = cfg.patch, cfg.d_model
        self.embed = nn.Linear(c * p * p, d)
        self.space_pos = nn.Parameter(torch.randn(cfg.tokens_per_frame, d) * 0.02)
        self.action = ActionEncoder(cfg.action_space, d)
        self.noise = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.text = nn.Linear(cfg.text_dim, d) if cfg.text_dim else None
        if self.text is not None:  # zero: text added to a trained model starts by changing nothing
            nn.init.zeros_(self.text.weight)
            nn.init.zeros_(self.text.bias)
        if self.text is not None and cfg.text_whiten:  # set by set_text_whitening before training
            self.register_buffer("text_mean", torch.zeros(cfg.text_dim))
            self.register_buffer("text_whitening", torch.eye(cfg.text_dim))
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.final = nn.Linear(d, c * p * p)
        for layer in (self.final_ada[1], self.final):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.heads = RewardEndHead(cfg)
        self.memory_pose = nn.Sequential(nn.Linear(36, d), nn.SiLU(), nn.Linear(d, d)) if cfg.memory else None
        # Where a turned memory token falls outside the new view.
        self.memory_offscreen = nn.Parameter(torch.zeros(d)) if cfg.memory and cfg.memory_fov_deg else None

    def conditioning(self, tau, actions, has_action, text=None):
        cond = self.noise(noise_embedding(tau, self.cfg.d_model)) + self.action(actions, has_action)
        if self.text is not None and text is not None:
            if self.cfg.text_whiten:  # in float32 (the matrix amplifies rare directions); the null text stays zero
                with torch.autocast(text.device.type, enabled=False):
                    text = text.float()
                    text = torch.where(text.abs().sum(-1, keepdim=True) > 0,
                                       (text - self.text_mean) @ self.text_whitening, 0.0)
            cond = cond + self.text(text)[:, None]
        return cond

    def set_text_whitening(self, mean, matrix):
        self.text_mean.copy_(torch.as_tensor(mean))
        self.text_whitening.copy_(torch.as_tensor(matrix))

    def forward(self, x, tau, actions, has_action, frame_index, text=None, cache: KVCache | None = None,
                write_cache: bool = False, memory=None):
        """Predict clean latents.

        x (B, T, C, h, w) noisy latents; tau (B, T) their noise levels; actions (B, T, ...)
        the action that led into each frame, valid where has_action (B, T); frame_index
        (B, T) the frames' positions in time. Without a cache, attention is block-causal
        over the T frames. With a cache, the T new frames also see every cached frame; if
        write_cache, their keys and values are added to it. memory: from `encode_memory`,
        frames the last of the T frames also attends to.
        """
        b, t = x.shape[:2]
        n, p = self.cfg.tokens_per_frame, self.cfg.patch
        if memory is not None and write_cache:
            raise ValueError("memory conditions only the frame being generated; write the cache without it")
        tokens, _ = patchify(x, (1, p, p))
        hid = self.embed(tokens) + self.space_pos.repeat(t, 1)
        cond = self.conditioning(tau, actions, has_action, text).repeat_interleave(n, dim=1)  # per token
        rope = rotary(frame_index.repeat_interleave(n, dim=1), self.cfg.d_model // self.cfg.n_heads)
        cached = 0 if cache is None or cache.get(0) is None else cache.get(0)[0].shape[2]
        mask = self._mask(t, cached, None if memory is None else memory[1], x.device)
        for i, block in enumerate(self.blocks):
            extra = None if cache is None else cache.get(i)
            if memory is not None:  # keys: [cache, memory, new frames]
                extra = memory[0][i] if extra is None else tuple(torch.cat(kv, 2) for kv in zip(extra, memory[0][i]))
            hid, kv = block(hid, cond, rope, mask, extra)
            if write_cache:
                cache.append(i, kv)
        if write_cache:
            cache.commit(t)
        shift, scale = self.final_ada(cond).chunk(2, dim=-1)
        out = self.final(modulate(self.final_norm(hid), shift, scale))
        return unpatchify(out, (t, *self.cfg.latent_shape), (1, p, p))

    def encode_memory(self, z, feats, valid, frame_index):
        """Keys and values, per layer, of memory frames z (B, K, C, h, w), conditioned on
        their pose features (B, K, 4); valid (B, K) bool. A memory frame attends only to
        itself, so one pass serves every denoising step; it sits at the time position
        frame_index (B,) of the frame that will see it (no time distance: its pose says
        where it is). Memory frames enter clean, unlike context frames: a recalled view is
        to be copied, and the context noise blurred small objects away (objects under 30
        pixels came back 18% of the time with it, 36% without: same weights and scripts).
        Their noise-level embedding stays ctx_noise's, as the memory was first trained.
        Returns (keys and values per layer, valid)."""
        b, k = z.shape[:2]
        n, p = self.cfg.tokens_per_frame, self.cfg.patch
        tokens, _ = patchify(z, (1, p, p))
        hid = self.embed(tokens) + self.memory_positions(feats)
        tau = torch.full((b, k), self.cfg.ctx_noise, device=z.device)
        cond = (self.noise(noise_embedding(tau, self.cfg.d_model)) + self.memory_pose(pose_embedding(feats)))
        cond = cond.repeat_interleave(n, dim=1)
        rope = rotary(frame_index[:, None].expand(b, k * n), self.cfg.d_model // self.cfg.n_heads)
        slot = torch.arange(k, device=z.device).repeat_interleave(n)
        mask = slot[None, :] == slot[:, None]
        kvs = []
        for block in self.blocks:
            hid, kv = block(hid, cond, rope, mask)
            kvs.append(kv)
        return kvs, valid

    def memory_positions(self, feats):
        """Screen-position embeddings of memory tokens (B, K * tokens, d). With
        memory_fov_deg, a token takes the (interpolated) column where its bearing lands on
        the new frame's screen, turned by the memory frame's relative yaw (feats[..., 2:4]
        = cos, sin): a wall column seen from another heading gets the position it has
        now. Tokens turned off screen share one embedding. Otherwise every frame uses the
        same table."""
        b, k = feats.shape[:2]
        if not self.cfg.memory_fov_deg:
            return self.space_pos.repeat(k, 1)
        rows, cols = self.cfg.token_grid
        column, on_screen = turned_columns(torch.atan2(feats[..., 3].float(), feats[..., 2].float()), cols,
                                           self.cfg.memory_fov_deg)  # B, K, cols
        lo = column.floor().long()
        hi = (lo + 1).clamp(max=cols - 1)
        frac = (column - lo)[..., None, :, None]
        table = self.space_pos.view(rows, cols, -1)
        pos = table[:, lo].permute(1, 2, 0, 3, 4) * (1 - frac) + table[:, hi].permute(1, 2, 0, 3, 4) * frac  # B, K, rows, cols, d
        pos = torch.where(on_screen[..., None, :, None], pos, self.memory_offscreen)
        return pos.reshape(b, k * rows * cols, -1)

    def _mask(self, t: int, cached: int, memory_valid, device):
        """Which keys each new frame's tokens see: [cache, memory, new frames]. None means
        everything (one new frame, no memory)."""
        n = self.cfg.tokens_per_frame
        frame = torch.arange(t, device=device).repeat_interleave(n)
        causal = frame[None, :] <= frame[:, None]  # block-causal over the new frames
        if memory_valid is None:
            if t == 1:
                return None
            return torch.cat([torch.ones(t * n, cached, dtype=torch.bool, device=device), causal], 1)
        b = memory_valid.shape[0]
        sees_memory = (frame == t - 1)[None, :, None] & memory_valid.repeat_interleave(n, dim=1)[:, None, :]
        return torch.cat([torch.ones(b, t * n, cached, dtype=torch.bool, device=device), sees_memory,
                          causal.expand(b, -1, -1)], 2)[:, None]  # B, 1 (heads), queries, keys

    @staticmethod
    def actions_into_frames(actions, b, t, device, has_action=None):
        """Shift step actions (B, T-1, ...) to per-frame 'action that led here' (B, T, ...)."""
        def shift(a):
            return torch.cat([a.new_zeros((a.shape[0], 1, *a.shape[2:])), a], dim=1)
        into = {k: shift(v) for k, v in actions.items()} if isinstance(actions, dict) else shift(actions)
        has = torch.ones(b, t, dtype=torch.bool, device=device)
        has[:, 0] = False
        if has_action is not None:
            has &= has_action[:, None]
        return into, has

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.n_layers, self.cfg.tokens_per_frame, self.cfg.max_frames)
