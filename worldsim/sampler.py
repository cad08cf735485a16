"""Sampling the next frame from the dynamics network, one frame at a time.

Past frames sit in the network's KV cache at a small noise level `ctx_noise` (the noise
level diffusion forcing trained them to be read at), which keeps long rollouts from
drifting. The next frame starts from pure noise and takes 1 to 4 deterministic
(DDIM-like) steps along the straight rectified-flow path.

Guidance, each classifier-free, pushes every denoising step away from a prediction made
without one condition: without memory (memory guidance, as History Guidance does with
past frames: recalled views come back sharp instead of faded towards what the recent
frames suggest), without the action (action guidance: the dream shows the given action
more often) or with the null text (text guidance). Each costs one more forward pass per
step where it applies, or, on a GPU (and for a single row), the batch's rows once more in
one pass.
"""

from __future__ import annotations

import torch

from worldsim.dynamics import Dynamics, KVCache


def noisy_context(model: Dynamics, z, generator=None):
    noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    return (1 - model.cfg.ctx_noise) * z + model.cfg.ctx_noise * noise


@torch.no_grad()
def prime(model: Dynamics, cache: KVCache, z, actions_into, has_action, frame_index, generator=None, text=None):
    """Put context frames z (B, T, C, h, w) into the cache at the context noise level."""
    b, t = z.shape[:2]
    tau = torch.full((b, t), model.cfg.ctx_noise, device=z.device)
    model(noisy_context(model, z, generator), tau, actions_into, has_action, frame_index, text, cache, write_cache=True)


def _rows_of(terms, act, pos, memory, cache) -> tuple[int, dict]:
    """One forward pass's inputs for guidance `terms` (weight, has_action, text, memory
    valid) stacked as rows, the batch once per term: (terms, keyword arguments). A term
    without memory, beside terms with it, has every memory key masked out: the same
    prediction."""
    n = len(terms)
    tile = lambda v: None if v is None else torch.cat([v] * n)  # noqa: E731
    _, has, text, valid = zip(*terms)
    seen = [v for v in valid if v is not None]
    if seen:
        memory = ([(tile(k), tile(v)) for k, v in memory[0]],
                  torch.cat([torch.zeros_like(seen[0]) if v is None else v for v in valid]))
    return n, dict(actions={k: tile(v) for k, v in act.items()} if isinstance(act, dict) else tile(act),
                   has_action=torch.cat(has), frame_index=tile(pos), text=None if text[0] is None else torch.cat(text),
                   cache=cache.repeat_rows(n) if n > 1 else cache, memory=memory if seen else None)


@torch.no_grad()
def sample_next(model: Dynamics, cache: KVCache, action, frame_index, steps: int | None = None, generator=None,
                text=None, memory=None, guidance: float | None = None, action_guidance: float | None = None,
                text_guidance: float | None = None, has_action: bool = True, write_cache: bool = True, noise=None):
    """Sample the next latent frame (B, C, h, w) given the cache, the action (B, ...)
    that leads into it and optional memory (clean latents, pose features, valid; as in
    forward), with memory guidance w = `guidance` (default cfg.memory_guidance; 0 is
    none), action guidance and text guidance (defaults: the config's); then add the frame
    to the cache (unless write_cache=False, which leaves the cache as it was). has_action=False:
    no action led here (a world's first frame). `noise` (B, C, h, w): the pure noise the
    frame starts from (default: drawn)."""
    steps = steps or model.cfg.sample_steps
    guidance = model.cfg.memory_guidance if guidance is None else guidance
    action_guidance = model.cfg.action_guidance if action_guidance is None else action_guidance
    text_guidance = model.cfg.text_guidance if text_guidance is None else text_guidance
    if text is None or not bool(text.any()):  # the null text everywhere: nothing to steer by
        text_guidance = 0.0
    b = frame_index.shape[0]
    shape = (b, 1, *model.cfg.latent_shape)
    device = frame_index.device
    act = action[:, None] if not isinstance(action, dict) else {k: v[:, None] for k, v in action.items()}
    has = torch.full((b, 1), has_action, dtype=torch.bool, device=device)
    if not has_action:
        action_guidance = 0.0
    pos = frame_index[:, None]
    x = torch.randn(shape, generator=generator, device=device) if noise is None else noise[:, None]
    if memory is not None:
        memory = model.encode_memory(memory[0], memory[1], memory[2], frame_index)
    # The conditional prediction and each guidance term's unconditional one: per term, its
    # weight, whether the action is given, the text and which memory frames are seen (None:
    # no memory).
    valid = None if memory is None else memory[1]
    unconditional = ((guidance if memory is not None else 0.0, has, text, None),
                     (action_guidance, ~has, text, valid),
                     (text_guidance, has, None if text is None else torch.zeros_like(text), valid))
    terms = [(1.0, has, text, valid)] + [t for t in unconditional if t[0]]
    # On a GPU every operation costs a launch, so the terms go as rows of one forward pass;
    # on the CPU a batch that large costs more than the operations it saves (16 envs: about
    # 170 ms a step in one pass, 105 in a pass per term), except for a single row.
    per_pass = len(terms) if device.type != "cpu" or b == 1 else 1
    passes = [_rows_of(terms[i:i + per_pass], act, pos, memory, cache) for i in range(0, len(terms), per_pass)]
    taus = torch.linspace(1, 0, steps + 1, device=device)
    for i in range(steps):
        preds = []
        for n, inputs in passes:
            preds += model(torch.cat([x] * n), taus[i].expand(n * b, 1), **inputs).chunk(n)
        cond = preds[0]
        x0 = cond + sum(w * (cond - pred) for (w, *_), pred in zip(terms[1:], preds[1:]))
        if i + 1 < steps:  # DDIM-like step along the straight path
            eps = (x - (1 - taus[i]) * x0) / taus[i]
            x = (1 - taus[i + 1]) * x0 + taus[i + 1] * eps
    if write_cache:
        tau_ctx = torch.full((b, 1), model.cfg.ctx_noise, device=device)
        model(noisy_context(model, x0, generator), tau_ctx, act, has, pos, text, cache, write_cache=True)
    return x0[:, 0]
