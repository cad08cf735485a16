"""Pixel-space dynamics, DIAMOND's design: a U-Net denoises the next frame itself, not a
latent, from the last `context` frames stacked as channels; the action and the noise
level modulate every block through adaptive group norm. EDM preconditioning and
objective (Karras et al. 2022), a few Euler steps to sample.

Where a game's detail is a few pixels (TakeCover's fireballs far away), a latent
tokenizer blurs it before the dynamics ever sees it; here nothing stands between the
model and the pixels (RESULTS.md, "TakeCover world model").

`RewardEndNet` is the separate reward and termination model DIAMOND trains beside its
dynamics: a small CNN on the context frames, the action and the next frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

SIGMA_DATA, P_MEAN, P_STD = 0.5, -0.4, 1.2  # EDM: the data's scale; training noise levels are log-normal
SIGMA_MIN, SIGMA_MAX, RHO = 2e-3, 5.0, 7  # Karras' sampling schedule


def to_unit(frames, device=None) -> torch.Tensor:
    """uint8 frames (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1], what the networks read."""
    return torch.as_tensor(frames, device=device).float().div(127.5).sub(1).movedim(-1, -3)


def as_shown(x: torch.Tensor) -> torch.Tensor:
    """A sampled frame in [-1, 1] rounded to the 8-bit frame a dream shows, read back in [-1, 1]."""
    return x.add(1).mul(127.5).round().clamp(0, 255).div(127.5).sub(1)


@dataclass
class PixelDynamicsConfig:
    actions: int = 3  # a Discrete action space's size
    frame_size: tuple = (64, 64)  # H, W; each divisible by 2 ** (len(channels) - 1)
    context: int = 4  # past frames stacked as input channels
    channels: tuple = (32, 64, 64)  # U-Net widths, one level each
    cond: int = 128  # width of the noise-and-action embedding
    sample_steps: int = 3
    past_actions: int = 0  # actions before the current one that condition the frame, the last ones between the context frames (DIAMOND's): the player's momentum, which sub-pixel shifts in the context show poorly
    action_guidance: float = 0.0  # w_a: x0 += w_a (x0 - x0_no_action) when sampling; for a model trained with action dropout
    context_noise: float = 0.1  # training: context frames get Gaussian noise of up to this level (DIAMOND), so the dream's own frames read as real ones

    # What the dream env and the tools read of any dynamics.
    @property
    def latent_shape(self) -> tuple:
        """A pixel model's state is the frame itself: (3, H, W) in [-1, 1]."""
        return (3, *self.frame_size)

    @property
    def max_frames(self) -> int:
        return self.context + 1

    text_dim, memory, events = 0, 0, ()  # no text, no memory, no counted events

    def __post_init__(self):
        self.frame_size, self.channels = tuple(self.frame_size), tuple(self.channels)
        if any(s % 2 ** (len(self.channels) - 1) for s in self.frame_size):
            raise ValueError(f"frame_size {self.frame_size} must be divisible by {2 ** (len(self.channels) - 1)} "
                             f"for a U-Net of {len(self.channels)} levels")
        if self.actions < 1 or self.context < 1:
            raise ValueError(f"need at least one action and one context frame, got {self.actions} and {self.context}")
        if not 0 <= self.past_actions < self.context:
            raise ValueError(f"past_actions counts actions between the {self.context} context frames: 0 to "
                             f"{self.context - 1}, got {self.past_actions}")


def change_weights(ctx: torch.Tensor, change_weight: float) -> torch.Tensor | float:
    """Each pixel's loss weight (B, 1, H, W) from context frames (B, context, 3, H, W):
    1 + change_weight * the squared change of the context's last step at or beside it, over
    the batch's mean change (1 where nothing moved or change_weight is 0)."""
    if not change_weight or ctx.shape[1] < 2:
        return 1.0
    change = (ctx[:, -1] - ctx[:, -2]).pow(2).mean(1, keepdim=True)
    change = F.max_pool2d(change, 5, stride=1, padding=2)  # a moving thing is a few pixels on in the next frame
    return 1 + change_weight * change / change.mean().clamp(min=1e-8)


class AdaGroupNorm(nn.Module):
    """Group norm whose scale and shift come from the conditioning vector."""

    def __init__(self, ch, cond):
        super().__init__()
        self.norm = nn.GroupNorm(max(ch // 16, 1), ch, affine=False)
        self.lin = nn.Linear(cond, 2 * ch)

    def forward(self, x, c):
        s, b = self.lin(c)[:, :, None, None].chunk(2, 1)
        return self.norm(x) * (1 + s) + b


class ResBlock(nn.Module):
    def __init__(self, cin, cout, cond):
        super().__init__()
        self.n1, self.c1 = AdaGroupNorm(cin, cond), nn.Conv2d(cin, cout, 3, padding=1)
        self.n2, self.c2 = AdaGroupNorm(cout, cond), nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.c2.weight)  # each block starts as the identity
        nn.init.zeros_(self.c2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, c):
        h = self.c1(F.silu(self.n1(x, c)))
        h = self.c2(F.silu(self.n2(h, c)))
        return self.skip(x) + h


class PixelDynamics(nn.Module):
    """The U-Net: (noisy next frame, context frames, noise level, action) -> the network's
    output, which `denoise` turns into the clean frame's estimate."""

    def __init__(self, cfg: PixelDynamicsConfig):
        super().__init__()
        self.cfg = cfg
        ch, cond = cfg.channels, cfg.cond
        self.noise = nn.Sequential(nn.Linear(64, cond), nn.SiLU(), nn.Linear(cond, cond))
        self.act = nn.Embedding(cfg.actions, cond)
        if cfg.past_actions:  # one row per (place in the history, action); zero: a model it grows from is unchanged
            self.past = nn.Embedding(cfg.past_actions * cfg.actions, cond)
            nn.init.zeros_(self.past.weight)
        self.inp = nn.Conv2d(3 * (cfg.context + 1), ch[0], 3, padding=1)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        c = ch[0]
        for co in ch:
            self.down.append(nn.ModuleList([ResBlock(c, co, cond), ResBlock(co, co, cond)]))
            c = co
        self.mid = nn.ModuleList([ResBlock(c, c, cond), ResBlock(c, c, cond)])
        for i, co in reversed(list(enumerate(ch))):
            self.up.append(nn.ModuleList([ResBlock(c + ch[i], co, cond), ResBlock(co, co, cond)]))
            c = co
        self.out_norm = nn.GroupNorm(max(c // 16, 1), c)
        self.out = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, ctx, c_noise, action, has_action=None, past=None):
        """x (B, 3, H, W), ctx (B, context * 3, H, W), c_noise (B,), action (B,) long;
        has_action (B,) bool, False where no action is given (its embedding left out);
        past (B, P) long, the actions between the context frames, oldest first, -1 where
        unknown (before an episode's first frame); the last cfg.past_actions are read."""
        f = torch.exp(-math.log(1000) * torch.arange(32, device=x.device) / 32)
        e = c_noise[:, None] * 1000 * f
        acted = self.act(action)
        if has_action is not None:
            acted = acted * has_action[:, None]
        c = self.noise(torch.cat([e.sin(), e.cos()], 1)) + acted
        if self.cfg.past_actions and past is not None:
            past = past[:, past.shape[1] - self.cfg.past_actions:]
            known = past >= 0
            rows = torch.arange(past.shape[1], device=x.device) * self.cfg.actions + past.clamp(min=0)
            c = c + (self.past(rows) * known[..., None]).sum(1)
        h = self.inp(torch.cat([x, ctx], 1))
        skips = []
        for i, (a, b) in enumerate(self.down):
            h = b(a(h, c), c)
            skips.append(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2)
        for blk in self.mid:
            h = blk(h, c)
        for i, (a, b) in enumerate(self.up):
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = b(a(torch.cat([h, skips.pop()], 1), c), c)
        return self.out(F.silu(self.out_norm(h)))

    def denoise(self, x, sigma, ctx, action, has_action=None, past=None):
        """EDM preconditioning: the clean frame's estimate from x at noise level sigma (B,)."""
        s = sigma[:, None, None, None]
        c_skip = SIGMA_DATA ** 2 / (s ** 2 + SIGMA_DATA ** 2)
        c_out = s * SIGMA_DATA / (s ** 2 + SIGMA_DATA ** 2).sqrt()
        c_in = 1 / (s ** 2 + SIGMA_DATA ** 2).sqrt()
        return c_skip * x + c_out * self(c_in * x, ctx, sigma.log() / 4, action, has_action, past)

    def guided(self, x, sigma, ctx, action, past=None):
        """`denoise`, pushed away from the prediction without the action by cfg.action_guidance
        (one batched pass for both): the dream shows the action's consequence more plainly."""
        w = self.cfg.action_guidance
        if not w:
            return self.denoise(x, sigma, ctx, action, past=past)
        has = torch.arange(2 * len(x), device=x.device) < len(x)
        d, d_null = self.denoise(x.repeat(2, 1, 1, 1), sigma.repeat(2), ctx.repeat(2, 1, 1, 1), action.repeat(2),
                                 has, None if past is None else past.repeat(2, 1)).chunk(2)
        return d + w * (d - d_null)

    def loss(self, ctx, target, action, change_weight: float = 0.0, action_dropout: float = 0.0, past=None):
        """EDM's weighted denoising loss. ctx (B, context, 3, H, W) and target (B, 3, H, W)
        in [-1, 1]; action (B,) the action that led from the last context frame to the target;
        past (B, context - 1) the actions between the context frames (-1: unknown).
        `change_weight`: each pixel's error weighs 1 + change_weight * how much the context's
        last step changed it or a pixel beside it (over the batch's mean), so a small moving
        thing (a fireball) counts beside the still background that fills a squared error.
        The weight reads only the context: one that read the target would teach w(x) p(x).
        `action_dropout`: the share of rows learnt without their action, the prediction
        that action guidance steers away from."""
        b = len(target)
        weight = change_weights(ctx, change_weight)
        ctx = ctx + self.cfg.context_noise * torch.rand(b, 1, 1, 1, 1, device=ctx.device) * torch.randn_like(ctx)
        sigma = (torch.randn(b, device=target.device) * P_STD + P_MEAN).exp()
        x = target + sigma[:, None, None, None] * torch.randn_like(target)
        has = torch.rand(b, device=target.device) >= action_dropout if action_dropout else None
        d = self.denoise(x, sigma, ctx.flatten(1, 2), action, has, past)
        w = (sigma ** 2 + SIGMA_DATA ** 2) / (sigma * SIGMA_DATA) ** 2
        return (w[:, None, None, None] * weight * (d - target) ** 2).mean()

    @torch.no_grad()
    def dreamed_context(self, window, past, rows):
        """The context a dream would hold: window (B, context + K, 3, H, W) real frames and
        past (B, context + K - 1) the actions between them; in `rows` (B,) bool, the last K
        frames are replaced by the model's own samples (each from the frames before it, real
        then dreamed, with the real action, as shown in 8 bits), except frames of the front
        padding, which no action led to. -> (context (B, context, 3, H, W), past (B, context - 1)),
        the window's last `context` frames and the actions between them."""
        c, k = self.cfg.context, window.shape[1] - self.cfg.context
        frames = window.clone()
        for j in range(k):
            into = past[:, c + j - 1]  # the action that led into frame c + j (-1: padding)
            r = torch.nonzero(rows & (into >= 0)).flatten()
            if len(r):
                frames[r, c + j] = as_shown(self.sample(frames[r, j:c + j], into[r], past=past[r, j:c + j - 1]))
        return frames[:, k:], past[:, k:]

    @torch.no_grad()
    def sample(self, ctx, action, steps: int | None = None, generator=None, past=None):
        """The next frame (B, 3, H, W) in [-1, 1] from ctx (B, context, 3, H, W) (and the
        actions between its frames, `past`, as `forward`): Euler steps on Karras' schedule
        from pure noise (the first draw is the only randomness)."""
        steps = steps or self.cfg.sample_steps
        i = torch.arange(steps, device=ctx.device)
        lo, hi = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
        sigmas = (hi + i / max(steps - 1, 1) * (lo - hi)) ** RHO
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
        b, _, _, h, w = ctx.shape
        x = torch.randn(b, 3, h, w, generator=generator, device=ctx.device) * sigmas[0]
        flat = ctx.flatten(1, 2)
        for k in range(steps):
            d = self.guided(x, sigmas[k].expand(b), flat, action, past)
            x = d if k == steps - 1 else x + (x - d) / sigmas[k] * (sigmas[k + 1] - sigmas[k])
        return x.clamp(-1, 1)


class RewardEndNet(nn.Module):
    """Reward and termination from (context frames, action, next frame): a strided CNN on
    the frames stacked as channels, the action added to its features. Returns the reward
    (B,) and the termination logit (B,)."""

    def __init__(self, cfg: PixelDynamicsConfig, width: int = 32):
        super().__init__()
        self.cfg = cfg
        layers, c = [], 3 * (cfg.context + 1)
        for co in (width, 2 * width, 4 * width, 4 * width):  # 64 -> 4 pixels a side
            layers += [nn.Conv2d(c, co, 4, stride=2, padding=1), nn.SiLU()]
            c = co
        self.conv = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.act = nn.Embedding(cfg.actions, 16 * c)
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(16 * c, 128), nn.SiLU(), nn.Linear(128, 2))

    def forward(self, ctx, action, nxt):
        """ctx (B, context, 3, H, W), action (B,), nxt (B, 3, H, W), frames in [-1, 1]."""
        h = self.conv(torch.cat([ctx.flatten(1, 2), nxt], 1)) + self.act(action)
        reward, end = self.head(h).unbind(1)
        return reward, end

    def loss(self, ctx, action, nxt, reward, ended, end_weight: float = 10.0, oversampled: float = 1.0):
        """MSE of the reward plus the termination's cross-entropy, ends weighted up: a
        game ends once in an episode, and a head that never predicts it scores 0.98.
        The weight moves the best logit up by log(end_weight), and batches that hold ends
        at `oversampled` times their odds in the data move it by log(oversampled); the
        loss adds both to the network's logit, so the network itself learns the data's:
        its probabilities are the ends' frequencies, which a dream that draws its ends needs."""
        r, e = self(ctx, action, nxt)
        weight = 1 + (end_weight - 1) * ended
        shifted = e + math.log(end_weight * oversampled)
        return F.mse_loss(r, reward) + F.binary_cross_entropy_with_logits(shifted, ended, weight=weight)
