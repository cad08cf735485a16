"""training/pixel_prototype.py: the U-Net, its EDM denoiser and sampler on tiny inputs."""

import torch

from training.pixel_prototype import CTX, UNet, denoise, sample


def test_the_denoiser_learns_and_the_sampler_draws_frames_in_range():
    torch.manual_seed(0)
    net = UNet(ch=(8, 16), cond=16)
    ctx = torch.rand(4, 3 * CTX, 16, 16) * 2 - 1
    target = ctx[:, -3:].clone()  # the next frame repeats the last: learnable in a few steps
    action = torch.zeros(4, dtype=torch.long)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sigma = torch.full((4,), 1.0)
    noise = torch.randn_like(target)
    first = None
    for _ in range(60):
        loss = (denoise(net, target + sigma[:, None, None, None] * noise, sigma, ctx, action) - target).pow(2).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    frames = sample(net, ctx, action, steps=3, generator=torch.Generator().manual_seed(0))
    assert frames.shape == (4, 3, 16, 16) and frames.abs().max() <= 1
