"""The training objectives of the dynamics network.

Diffusion forcing on a rectified-flow path: every frame of a window gets its own noise
level tau ~ U(0, 1), x_tau = (1 - tau) x0 + tau * eps, and the network predicts the clean
x0 of every frame from the noisy window, so one network learns both to denoise the
newest frame and to read past frames at any noise level (worldsim/sampler.py keeps them
at `ctx_noise`). The reward/termination head learns beside it, on clean latents.

Dreamed context (scheduled sampling for a video model): in a share of the windows the
frames just before the last are the model's own samples, drawn as a dream draws them
from the real frames before, with the real actions; the last frame is still learnt
towards the real one. A dream reads its own frames after its first step, so this is the
context it must predict from. (After a dream that drifted, the real next frame may not be
predictable from it, and a squared error then rewards a blur.)

Distillation into one step: a student learns to predict, in one pass from pure noise,
the frame a teacher samples from the same noise in its several guided passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worldsim.dynamics import Dynamics, event_rises, first_rises
from worldsim.sampler import noisy_context, prime, sample_next


def _rows(a, i):
    """Frames (or rows) i of actions, which may be a dict of tensors."""
    return a[i] if not isinstance(a, dict) else {k: v[i] for k, v in a.items()}


def first_dreamed(t: int, frames: int) -> int:
    """The first dreamed frame of a window of t frames whose `frames` before the last are
    dreamed: at least one real frame before them to start from, and the last one real."""
    if not 1 <= frames <= t - 2:
        raise ValueError(f"--rollout-frames {frames}: a window of {t} frames dreams 1 to {t - 2} of them (at least "
                         "one real frame to start from and the real last frame to learn)")
    return t - 1 - frames


@torch.no_grad()
def dreamed_context(model: Dynamics, z, actions, frames: int, text=None):
    """z (B, T, C, h, w) with frames T-1-frames .. T-2 replaced by the model's samples:
    the frames before them primed into a cache at the context noise level, then each one
    sampled (the model's sampler and guidance, without memory) with the real action that
    led into it, as a dream steps. The frames before them and the last frame stay real."""
    b, t = z.shape[:2]
    start = first_dreamed(t, frames)
    into, has = model.actions_into_frames(actions, b, t, z.device)
    index = torch.arange(t, device=z.device).expand(b, t)
    before = slice(0, start)
    cache = model.new_cache()
    prime(model, cache, z[:, before], _rows(into, (slice(None), before)), has[:, before], index[:, before], text=text)
    out = z.clone()
    for j in range(start, t - 1):
        out[:, j] = sample_next(model, cache, _rows(into, (slice(None), j)), index[:, j], text=text)
    return out


def diffusion_forcing_loss(model: Dynamics, z, actions, rewards, terminated, has_action=None, text=None,
                           end_weight: float = 10.0, reward_weight: float = 1.0, memory=None,
                           action_dropout: float = 0.0,
                           sampled_context_share: float = 0.0, action_weights: torch.Tensor | None = None,
                           judge=None, judge_weight: float = 0.0, judge_target: str = "action",
                           rollout_share: float = 0.0, rollout_frames: int = 4, memory_slot=None, events=None,
                           change_weight: float = 0.0):
    """Diffusion-forcing loss on a window of clean latents z (B, T, C, h, w).

    actions[:, j] led from frame j to j+1 (T-1 of them); rewards and terminated
    likewise. memory = (clean z (B, K, C, h, w), pose features (B, K, 4), valid (B, K))
    retrieved for the last frame, whose error then counts twice; with a text (B, text_dim),
    the first frame's error counts twice. `has_action` (B,) False marks action-free windows
    (footage): no action conditions them, and the heads learn only from the others.
    `action_dropout` hides
    each frame's action with this probability, teaching the model the action-free
    prediction that action guidance steers away from. `sampled_context_share` of the
    windows have every frame before the last at the sampler's context level (ctx_noise):
    the last frame is then learnt as the dream predicts it, from a context it can read.
    `action_weights` (A,), discrete actions: each frame's denoising error weighs as much as
    the action that led into it (the first frame's, and action-free windows', weigh 1).
    `judge` (a frozen InverseDynamics of latents): each predicted x0 whose action was given
    is read beside the clean frame before it, and the judge's cross-entropy adds
    `judge_weight` times its mean: which action a frame shows becomes part of the
    objective, where a squared error weighs a strafe drawn as a turn as little. Its target,
    `judge_target`: "action", the action given; "real", the judge's reading of the real
    pair (soft), so a step the real world did not show (a walk into a wall) is not drawn
    as a move.
    `rollout_share` of the windows read a dreamed context (`dreamed_context`, its last
    `rollout_frames` before the last frame), every frame before the last at the context
    level as the dream holds them; every frame is still learnt towards the real one.
    `memory_slot` (B, K): where in the window each memory frame sits (-1: before it); a
    dreamed window's memory of a dreamed frame is that dream, as a dream's bank holds it.
    `events`: each frame's event counts, for the heads (`heads_loss`).
    `change_weight`: each latent position's error weighs 1 + change_weight * how much the
    real latent changed there in the step before (squared, over the batch's mean change):
    small moving things (a fireball) count beside the still background that otherwise
    fills a squared error. The weight reads only frames before the one it weighs: a
    weight that read the frame itself would tilt the model towards outcomes that change a
    lot (it learns w(x) p(x), not p(x)).
    Returns (loss, metrics)."""
    b, t = z.shape[:2]
    tau = torch.rand(b, t, device=z.device)
    before_last = torch.arange(t, device=z.device) < t - 1
    if sampled_context_share:
        as_sampled = torch.rand(b, 1, device=z.device) < sampled_context_share
        tau = torch.where(as_sampled & before_last, model.cfg.ctx_noise, tau)
    z_in = z
    if rollout_share:
        dreamed = torch.rand(b, device=z.device) < rollout_share
        if dreamed.any():
            z_in = z.clone()
            z_in[dreamed] = dreamed_context(model, z[dreamed], _rows(actions, dreamed), rollout_frames,
                                            None if text is None else text[dreamed]).to(z.dtype)
        tau = torch.where(dreamed[:, None] & before_last, model.cfg.ctx_noise, tau)
        if memory is not None and memory_slot is not None:  # the real frame must not come back through memory
            start = first_dreamed(t, rollout_frames)
            swap = dreamed[:, None] & (memory_slot >= start) & (memory_slot < t - 1)
            recalled = z_in[torch.arange(b, device=z.device)[:, None], memory_slot.clamp(0, t - 1)]
            memory = (torch.where(swap[..., None, None, None], recalled, memory[0]), *memory[1:])
    eps = torch.randn_like(z)
    x = (1 - tau[..., None, None, None]) * z_in + tau[..., None, None, None] * eps
    into, has = model.actions_into_frames(actions, b, t, z.device, has_action)
    if action_dropout:
        has = has & (torch.rand(b, t, device=z.device) >= action_dropout)
    if memory is not None:
        memory = model.encode_memory(memory[0], memory[1], memory[2], torch.full((b,), t - 1, device=z.device))
    pred = model(x, tau, into, has, torch.arange(t, device=z.device).expand(b, t), text, memory=memory)
    error = (pred.float() - z.float()).pow(2)  # (B, T, C, h, w)
    if change_weight and t > 2:
        change = (z[:, 1:-1].float() - z[:, :-2].float()).pow(2).mean(2, keepdim=True)  # (B, T-2, 1, h, w)
        weight = 1 + change_weight * change / change.mean().clamp(min=1e-8)  # frame j's: the step j-2 -> j-1
        error = torch.cat([error[:, :2], error[:, 2:] * weight], 1)
    per_frame = error.flatten(2).mean(2)  # (B, T)
    dreamed_metrics = {}
    if rollout_share and dreamed.any():  # how far the last frame lands from the world after a dreamed context
        dreamed_metrics = {"dreamed_last_mse": per_frame[dreamed, -1].mean().item()}
    if action_weights is not None:  # footage windows (no action given) keep weight 1
        weights = action_weights[actions.long()]
        if has_action is not None:
            weights = torch.where(has_action[:, None], weights, torch.ones_like(weights))
        per_frame = per_frame * torch.cat([torch.ones_like(per_frame[:, :1]), weights], 1)
    denoise, last = per_frame.mean(), per_frame[:, -1].mean()
    if memory is not None:
        denoise = denoise + last
    if text is not None and t > 1:  # the first frame has only the text to go on: a world's start from a prompt
        denoise = denoise + per_frame[:, 0].mean()
    if t == 1:  # a single frame (a world's start from its caption): no step for the heads to learn
        return denoise, {"loss": denoise.item(), "denoise_mse": denoise.item(), "last_mse": last.item()}
    heads, head_metrics = heads_loss(model, z, actions, rewards, terminated, has_action, end_weight, reward_weight,
                                     events)
    judge_term, judged = 0.0, {}
    if judge is not None:
        before = z[:, :-1].flatten(0, 1)
        logits = judge(before, pred[:, 1:].flatten(0, 1)).float()
        given = has[:, 1:].flatten().float()  # not hidden by action dropout, not footage
        if judge_target == "real":
            with torch.no_grad():
                target = judge(before, z[:, 1:].flatten(0, 1)).float().softmax(1)
        elif judge_target == "action":
            target = actions.flatten().long()
        else:
            raise ValueError(f"--judge-target is action or real; got {judge_target!r}")
        ce = F.cross_entropy(logits, target, reduction="none")
        judge_ce = (ce * given).sum() / given.sum().clamp(min=1)
        judge_term = judge_weight * judge_ce
        shown = ((logits.argmax(1) == actions.flatten()).float() * given).sum() / given.sum().clamp(min=1)
        judged = {"judge_ce": judge_ce.item(), "judge_shown": shown.item()}
    total = denoise + heads + judge_term
    return total, {"loss": total.item(), "denoise_mse": denoise.item(), **head_metrics, "last_mse": last.item(),
                   **judged, **dreamed_metrics}


def heads_loss(model: Dynamics, z, actions, rewards, terminated, has_action=None, end_weight: float = 10.0,
               reward_weight: float = 1.0, events=None, **_):
    """The reward, termination and event heads on each step (z_j, a_j) -> z_{j+1} of a
    window of clean latents z (B, T, C, h, w); action-free windows (`has_action` False)
    teach them nothing. `events` (B, T, E), with a model that has `cfg.events`: each
    frame's event counts so far in its episode. An event happened where its count rose;
    the reward head learns the reward less the events new to the episode, which the dream
    pays itself (RewardEndHead.paid). Returns (loss, metrics)."""
    b, t = z.shape[:2]
    flat = lambda a: a.flatten(0, 1) if not isinstance(a, dict) else {k: v.flatten(0, 1) for k, v in a.items()}  # noqa: E731
    reward, end, event_logits = model.heads(z[:, :-1].flatten(0, 1).float(), z[:, 1:].flatten(0, 1).float(),
                                            flat(actions))
    target = rewards.flatten().float()
    n_events = len(model.cfg.events)
    if n_events:
        if events is None or events.shape[-1] != n_events:
            raise ValueError(f"the model's heads detect {n_events} events; the batch gives "
                             f"{None if events is None else events.shape[-1]} event counts per frame")
        rose = event_rises(events).flatten(0, 1).float()
        target = target - first_rises(events).flatten(0, 1).sum(-1)
    reduction = "mean" if has_action is None else "none"
    losses = {"reward_mse": F.mse_loss(reward, target, reduction=reduction),
              "end_bce": F.binary_cross_entropy_with_logits(end, terminated.flatten().float(), reduction=reduction,
                                                            pos_weight=torch.tensor(end_weight, device=z.device))}
    if n_events:
        losses["event_bce"] = F.binary_cross_entropy_with_logits(event_logits, rose, reduction="none").sum(-1)
        if has_action is None:
            losses["event_bce"] = losses["event_bce"].mean()
    if has_action is not None:  # a mean over the labelled steps only
        labelled = has_action[:, None].float().expand(b, t - 1).flatten()
        labelled = labelled / labelled.sum().clamp(min=1)
        losses = {k: (v * labelled).sum() for k, v in losses.items()}
    total = reward_weight * losses["reward_mse"] + 0.1 * losses["end_bce"] + losses.get("event_bce", 0.0)
    return total, {k: v.item() for k, v in losses.items()}


def distillation_loss(model: Dynamics, teacher: Dynamics, z, actions, text=None, memory=None, **_):
    """One-step distillation on a window of clean latents z (B, T, C, h, w): the teacher,
    with the T-1 context frames (noised to the context level) in its cache, samples the
    last frame (its sample_steps and guidance) from noise eps; the model reads the same
    noised context and eps at tau = 1, and predicts that frame in one pass. The reward
    and termination heads are not trained. Returns (loss, metrics)."""
    b, t = z.shape[:2]
    into, has = model.actions_into_frames(actions, b, t, z.device, None)
    frames = torch.arange(t, device=z.device).expand(b, t)
    pick = lambda a, i: _rows(a, (slice(None), i))  # noqa: E731
    eps = torch.randn_like(z[:, -1])
    context = noisy_context(model, z[:, :-1])  # both read the same noised context
    tau = torch.full((b, t), model.cfg.ctx_noise, device=z.device)
    with torch.no_grad():
        cache = teacher.new_cache()
        teacher(context, tau[:, :-1], pick(into, slice(0, -1)), has[:, :-1], frames[:, :-1], text, cache,
                write_cache=True)
        target = sample_next(teacher, cache, pick(into, -1), frames[:, -1], text=text, memory=memory, noise=eps,
                             write_cache=False)
    x = torch.cat([context, eps[:, None]], 1)
    tau[:, -1] = 1.0
    if memory is not None:
        memory = model.encode_memory(memory[0], memory[1], memory[2], frames[:, -1])
    pred = model(x, tau, into, has, frames, text, memory=memory)[:, -1]
    loss = F.mse_loss(pred.float(), target.float())
    return loss, {"loss": loss.item(), "distill_mse": loss.item(),
                  "target_vs_real_mse": F.mse_loss(target.float(), z[:, -1].float()).item()}
