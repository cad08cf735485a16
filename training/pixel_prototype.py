"""A prototype, not yet part of worldsim: does a small pixel-space U-Net (DIAMOND's
design: EDM, past frames stacked as channels, action by adaptive group norm) keep
TakeCover's fireballs, where the latent transformer draws them fainter than copying the
last frame? RESULTS.md, "One step from the real frames", has what it measured.

    python training/pixel_prototype.py train --minutes 35 --out runs/pixel.safetensors
    python training/pixel_prototype.py train --minutes 30 --resume runs/pixel.safetensors --seed 1 --frames 240000 --out runs/pixel_65.safetensors
    python training/pixel_prototype.py eval --ckpt runs/pixel_65.safetensors --picture pixel.png   # fireballs, one step and dreamed
    python training/pixel_prototype.py dodge --ckpt runs/pixel_65.safetensors                      # fireballs.py --dodge's moments

The 65-minute weights (fp16) are `worldsim/checkpoints/campaign/takecover_pixel_proto.safetensors`;
continue with `--resume` (a fresh optimizer, 100 warm-up steps; the measured first run
had no warm-up). It reads `data/takecover_big` (RESULTS, "How the shipped checkpoints
were made"). To become a world model's dynamics it needs the reward and end heads, export
as a world model and the dream env's interface.
"""
import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parents[1] / "bench" / "diag"))
CTX = 4
SIGMA_DATA, P_MEAN, P_STD = 0.5, -0.4, 1.2
SIGMA_MIN, SIGMA_MAX, RHO = 2e-3, 5.0, 7


class AdaGroupNorm(nn.Module):
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
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, c):
        h = self.c1(F.silu(self.n1(x, c)))
        h = self.c2(F.silu(self.n2(h, c)))
        return self.skip(x) + h


class UNet(nn.Module):
    def __init__(self, actions=3, ch=(32, 64, 64), cond=128):
        super().__init__()
        self.noise = nn.Sequential(nn.Linear(64, cond), nn.SiLU(), nn.Linear(cond, cond))
        self.act = nn.Embedding(actions, cond)
        self.inp = nn.Conv2d(3 * (CTX + 1), ch[0], 3, padding=1)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        c = ch[0]
        skips = []
        for i, co in enumerate(ch):
            self.down.append(nn.ModuleList([ResBlock(c, co, cond), ResBlock(co, co, cond)]))
            skips.append(co)
            c = co
        self.mid = nn.ModuleList([ResBlock(c, c, cond), ResBlock(c, c, cond)])
        for i, co in reversed(list(enumerate(ch))):
            self.up.append(nn.ModuleList([ResBlock(c + skips[i], co, cond), ResBlock(co, co, cond)]))
            c = co
        self.out_norm = nn.GroupNorm(max(c // 16, 1), c)
        self.out = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, ctx, c_noise, action):
        f = torch.exp(-math.log(1000) * torch.arange(32, device=x.device) / 32)
        e = c_noise[:, None] * 1000 * f
        c = self.noise(torch.cat([e.sin(), e.cos()], 1)) + self.act(action)
        h = self.inp(torch.cat([x, ctx], 1))
        hs = []
        for i, (a, b) in enumerate(self.down):
            h = b(a(h, c), c)
            hs.append(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2)
        for blk in self.mid:
            h = blk(h, c)
        for i, (a, b) in enumerate(self.up):
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = b(a(torch.cat([h, hs.pop()], 1), c), c)
        return self.out(F.silu(self.out_norm(h)))


def denoise(net, x, sigma, ctx, action):
    """EDM preconditioning: the clean frame's estimate from x at noise sigma."""
    s = sigma[:, None, None, None]
    c_skip = SIGMA_DATA ** 2 / (s ** 2 + SIGMA_DATA ** 2)
    c_out = s * SIGMA_DATA / (s ** 2 + SIGMA_DATA ** 2).sqrt()
    c_in = 1 / (s ** 2 + SIGMA_DATA ** 2).sqrt()
    return c_skip * x + c_out * net(c_in * x, ctx, sigma.log() / 4, action)


@torch.no_grad()
def sample(net, ctx, action, steps=3, generator=None):
    """Euler steps on Karras' schedule from pure noise (deterministic after the first draw)."""
    i = torch.arange(steps)
    sigmas = (SIGMA_MAX ** (1 / RHO) + i / (steps - 1 if steps > 1 else 1) * (SIGMA_MIN ** (1 / RHO) - SIGMA_MAX ** (1 / RHO))) ** RHO
    sigmas = torch.cat([sigmas, torch.zeros(1)])
    x = torch.randn(ctx.shape[0], 3, *ctx.shape[-2:], generator=generator) * sigmas[0]
    for k in range(steps):
        d = denoise(net, x, sigmas[k].expand(len(x)), ctx, action)
        x = d if sigmas[k + 1] == 0 else x + (x - d) / sigmas[k] * (sigmas[k + 1] - sigmas[k])
    return x.clamp(-1, 1)


@torch.no_grad()
def rollout(net, context: np.ndarray, actions: np.ndarray, steps: int, generator) -> np.ndarray:
    """Dream len(actions[0]) frames (N, L, H, W, 3) uint8 from CTX real frames (N, CTX, H, W, 3),
    each step reading the frames before it as pixels, the way a dream shows them."""
    ctx, dream = to_unit(context), []
    for a in actions.T:
        dream.append(to_uint8(sample(net, ctx.flatten(1, 2), torch.from_numpy(a).long(), steps, generator)))
        ctx = torch.cat([ctx[:, 1:], to_unit(dream[-1])[:, None]], 1)
    return np.stack(dream, 1)


def load_net(path: str) -> UNet:
    net = UNet()
    net.load_state_dict(load_file(path))
    return net.eval()


def to_unit(frames):  # uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]
    return torch.from_numpy(frames).float().div(127.5).sub(1).movedim(-1, -3)


def to_uint8(x):
    return x.movedim(-3, -1).add(1).mul(127.5).round().clamp(0, 255).byte().numpy()


def load(split, max_frames):
    from worldsim.dataset import episode_paths, read_episode
    frames, actions, starts = [], [], []
    n = 0
    for p in episode_paths("data/takecover_big", split):
        e = read_episode(p)
        frames.append(e.frames)
        actions.append(np.append(e.actions, 0))
        starts += [n + t for t in range(CTX, len(e))]  # targets with CTX real frames before them in the episode
        n += len(e.frames)
        if n >= max_frames:
            break
    return np.concatenate(frames), np.concatenate(actions), np.array(starts)


def save(net, path):
    """Weights as safetensors, written whole or not at all."""
    save_file(net.state_dict(), path + ".tmp")
    os.replace(path + ".tmp", path)


def train(args):
    torch.manual_seed(0)
    torch.set_num_threads(2)
    frames, actions, targets = load("train", args.frames)
    print(f"{len(frames)} frames, {len(targets)} targets", flush=True)
    net = UNet()
    if args.resume:
        net.load_state_dict(load_file(args.resume))
    print(f"{sum(p.numel() for p in net.parameters()):,} parameters", flush=True)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 100))  # a short warm-up
    rng = np.random.default_rng(args.seed)
    t0, step, losses = time.time(), 0, []
    while time.time() - t0 < args.minutes * 60:
        idx = rng.choice(targets, args.batch)
        ctx = to_unit(np.stack([frames[idx - CTX + k] for k in range(CTX)], 1))  # B, CTX, 3, H, W
        ctx = ctx + 0.1 * torch.rand(len(idx), 1, 1, 1, 1) * torch.randn_like(ctx)  # DIAMOND's context noise augmentation
        y = to_unit(frames[idx])
        a = torch.from_numpy(actions[idx - 1]).long()  # the action that led into the target
        sigma = (torch.randn(len(idx)) * P_STD + P_MEAN).exp()
        x = y + sigma[:, None, None, None] * torch.randn_like(y)
        d = denoise(net, x, sigma, ctx.flatten(1, 2), a)
        w = (sigma ** 2 + SIGMA_DATA ** 2) / (sigma * SIGMA_DATA) ** 2
        loss = (w[:, None, None, None] * (d - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"step {step} {time.time() - t0:.0f}s loss {np.mean(losses[-50:]):.4f}", flush=True)
            save(net, args.out)
    save(net, args.out)
    print(f"done: {step} steps x {args.batch} in {time.time() - t0:.0f}s", flush=True)


def evaluate(args):
    from fireballs import buckets, scores
    from worldsim.replay import replay_windows
    from worldsim.tokenizer import psnr
    torch.set_num_threads(2)
    net = load_net(args.ckpt)
    ws = replay_windows("data/takecover_big", CTX, 16, args.windows)
    frames, actions = np.stack([w[0] for w in ws]), np.stack([w[1] for w in ws])
    real = frames[:, CTX:]
    g = torch.Generator().manual_seed(0)
    one = []  # each frame from the real frames before it
    for h in range(16):
        ctx = to_unit(frames[:, h:h + CTX]).flatten(1, 2)
        one.append(to_uint8(sample(net, ctx, torch.from_numpy(actions[:, h + CTX - 1]).long(), args.steps, g)))
    one = np.stack(one, 1)
    dream = rollout(net, frames[:, :CTX], actions[:, CTX - 1:], args.steps, g)
    print(f"{len(ws)} windows; fireballs by horizon bucket (steps 1 | 2-4 | 5-8 | 9-16)")
    print("pixel U-Net dream       ", buckets(scores(real, dream)))
    print("pixel U-Net one step    ", buckets(scores(real, one)))
    print("copy the real frame before", buckets(scores(real, frames[:, CTX - 1:-1])))
    print("copy-last-frame (dream)  ", buckets(scores(real, np.repeat(frames[:, CTX - 1:CTX], 16, 1))))
    for h in (1, 4, 16):
        print(f"PSNR at {h}: dream {psnr(dream[:, h - 1], real[:, h - 1]).mean():.2f}, one step {psnr(one[:, h - 1], real[:, h - 1]).mean():.2f}, "
              f"copy-last {psnr(frames[:, CTX - 1], real[:, h - 1]).mean():.2f}")
    if args.picture:
        from PIL import Image
        from fireballs import fireball_mask
        shown = np.argsort(-fireball_mask(real).sum(axis=(1, 2, 3)))[:3]
        steps = list(range(0, 16, 2))
        rows = [np.concatenate([p[i, t] for t in steps], 1) for i in shown for p in (real, dream, one)]
        Image.fromarray(np.concatenate(rows, 0)).resize((len(steps) * 128, len(rows) * 128), Image.NEAREST).save(args.picture)


def dodge(args):
    """fireballs.py --dodge for the prototype: on held-out moments with a fireball on its
    way, the share whose next 4 frames show it close, by the first two steps."""
    import fireballs as fb
    torch.set_num_threads(2)
    net = load_net(args.ckpt)
    frames, actions, on_left, hit = fb.dodge_windows("data/takecover_big", CTX, args.dodge)
    after = frames[:, CTX:]
    close = fb.fireball_mask(after).sum(axis=(2, 3)).max(1) >= fb.CLOSE
    classes = np.array([fb.step_class(a[CTX - 1:CTX + 1], left) for a, left in zip(actions, on_left)])
    print(f"{len(frames)} moments; game close / hit by class:",
          {c: (round(float(close[classes == c].mean()), 2), round(float(hit[classes == c].mean()), 2), int((classes == c).sum()))
           for c in (fb.AWAY, fb.TOWARD, fb.STILL)})
    g = torch.Generator().manual_seed(0)
    pics = {}
    for c in (fb.AWAY, fb.TOWARD, fb.STILL):
        acts = actions[:, CTX - 1:].copy()
        acts[:, :2] = np.array([fb.moves(left)[c] for left in on_left])[:, None]
        dream = pics[c] = rollout(net, frames[:, :CTX], acts[:, :fb.AHEAD], args.steps, g)
        print(c, "dream close", round(float((fb.fireball_mask(dream).sum(axis=(2, 3)).max(1) >= fb.CLOSE).mean()), 3), flush=True)
    if args.picture:
        from PIL import Image
        shown = np.arange(0, len(frames), max(len(frames) // 3, 1))[:3]
        rows = []
        for i in shown:
            rows.append(np.concatenate(list(frames[i, CTX - 1:]), 1))
            for c in (fb.AWAY, fb.TOWARD, fb.STILL):
                rows.append(np.concatenate([frames[i, CTX - 1], *pics[c][i]], 1))
        grid = np.concatenate(rows, 0)
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(args.picture)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["train", "eval", "dodge"])
    p.add_argument("--dodge", type=int, default=400)
    p.add_argument("--resume", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--frames", type=int, default=120_000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--out", default="runs/pixel.safetensors")
    p.add_argument("--ckpt", default="runs/pixel.safetensors")
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--picture", default=None)
    args = p.parse_args()
    {"train": train, "eval": evaluate, "dodge": dodge}[args.mode](args)
