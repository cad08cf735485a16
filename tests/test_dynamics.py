"""The diffusion transformer: causality, KV cache, conditioning, training, DDP, dreaming."""

import json
from dataclasses import replace
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.dynamics import Dynamics, DynamicsConfig
from worldsim.objective import diffusion_forcing_loss
from worldsim.sampler import prime, sample_next

ROOT = Path(__file__).parents[1]


def tiny_model(space=None, **kw):
    torch.manual_seed(0)
    cfg = DynamicsConfig(latent_shape=(4, 4, 4), d_model=32, n_layers=2, n_heads=2, max_frames=6,
                         **({"action_space": space} if space else {}), **kw)
    model = Dynamics(cfg)
    for p in model.parameters():  # adaLN-Zero starts as the identity: perturb it so every path matters
        p.data += 0.05 * torch.randn_like(p)
    return model.eval()


def window(model, b=2, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, *model.cfg.latent_shape, generator=g)
    tau = torch.rand(b, t, generator=g)
    actions = torch.randint(0, 7, (b, t), generator=g)
    has = torch.ones(b, t, dtype=torch.bool)
    has[:, 0] = False
    return x, tau, actions, has, torch.arange(t).expand(b, t)


def test_block_causal_mask_is_real():
    model = tiny_model()
    x, tau, a, has, pos = window(model)
    out = model(x, tau, a, has, pos)
    x2, a2, tau2 = x.clone(), a.clone(), tau.clone()
    x2[:, 3:] += 1.0
    a2[:, 3:] = (a2[:, 3:] + 1) % 7
    tau2[:, 3:] = 0.5
    out2 = model(x2, tau2, a2, has, pos)
    torch.testing.assert_close(out[:, :3], out2[:, :3])  # the past does not see the future
    assert (out[:, 3:] - out2[:, 3:]).abs().max() > 1e-3  # the changed frames do change


def test_kv_cached_step_equals_uncached():
    model = tiny_model()
    x, tau, a, has, pos = window(model, t=5)
    full = model(x, tau, a, has, pos)
    cache = model.new_cache()
    model(x[:, :3], tau[:, :3], a[:, :3], has[:, :3], pos[:, :3], cache=cache, write_cache=True)  # a block at once
    model(x[:, 3:4], tau[:, 3:4], a[:, 3:4], has[:, 3:4], pos[:, 3:4], cache=cache, write_cache=True)  # one frame
    step = model(x[:, 4:5], tau[:, 4:5], a[:, 4:5], has[:, 4:5], pos[:, 4:5], cache=cache)
    torch.testing.assert_close(step, full[:, 4:5], rtol=1e-4, atol=1e-5)


def test_cache_slides_within_the_context_window():
    model = tiny_model()
    cache = model.new_cache()
    z = torch.randn(1, 2, *model.cfg.latent_shape)
    into, has = model.actions_into_frames(torch.zeros(1, 1, dtype=torch.long), 1, 2, "cpu")
    prime(model, cache, z, into, has, torch.arange(2)[None])
    for k in range(20):
        out = sample_next(model, cache, torch.tensor([k % 7]), torch.tensor([2 + k]), steps=2)
        assert out.shape == (1, *model.cfg.latent_shape) and torch.isfinite(out).all()
        assert cache.frames <= model.cfg.max_frames - 1
    assert cache.get(0)[0].shape[2] == (model.cfg.max_frames - 1) * model.cfg.tokens_per_frame


def test_actions_condition_the_prediction():
    model = tiny_model()
    x, tau, a, has, pos = window(model)
    out = model(x, tau, a, has, pos)
    a2 = a.clone()
    a2[:, 4] = (a2[:, 4] + 3) % 7
    assert (model(x, tau, a2, has, pos)[:, 4] - out[:, 4]).abs().max() > 1e-3


def test_sampled_context_share_puts_the_frames_before_the_last_at_the_samplers_context_level():
    model = tiny_model()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))  # (x, tau, ...)
    z = torch.randn(64, 5, *model.cfg.latent_shape)
    acts, zeros = torch.randint(0, 7, (64, 4)), torch.zeros(64, 4)
    for share in (0.0, 0.5, 1.0):
        diffusion_forcing_loss(model, z, acts, zeros, zeros.bool(), sampled_context_share=share)
        tau = seen[-1]
        as_sampled = (tau[:, :-1] == model.cfg.ctx_noise).all(1)
        assert as_sampled.float().mean() == pytest.approx(share, abs=0.2)
        assert not (tau[:, -1] == model.cfg.ctx_noise).any()  # the last frame keeps its random level
        assert (tau[~as_sampled, :-1] != model.cfg.ctx_noise).all()


def test_a_dreamed_context_is_what_a_dream_draws_from_the_real_frames_before_it():
    from worldsim.objective import dreamed_context

    model = tiny_model(sample_steps=2, action_guidance=1.5)
    z, acts = torch.randn(3, 6, *model.cfg.latent_shape), torch.randint(0, 7, (3, 5))
    torch.manual_seed(4)
    out = dreamed_context(model, z, acts, frames=3)
    torch.manual_seed(4)  # the same dream, stepped by hand: 2 real frames primed, 3 sampled
    cache, into, has = model.new_cache(), *model.actions_into_frames(acts, 3, 6, "cpu")
    index = torch.arange(6).expand(3, 6)
    prime(model, cache, z[:, :2], into[:, :2], has[:, :2], index[:, :2])
    dream = [sample_next(model, cache, into[:, j], index[:, j]) for j in (2, 3, 4)]
    torch.testing.assert_close(out[:, 2:5], torch.stack(dream, 1))
    assert torch.equal(out[:, :2], z[:, :2]) and torch.equal(out[:, 5], z[:, 5])  # the start and the target stay real
    assert (out[:, 2:5] - z[:, 2:5]).abs().mean() > 0.1
    with pytest.raises(ValueError, match="dreams 1 to 4 of them"):
        dreamed_context(model, z, acts, frames=5)


def test_rollout_share_feeds_the_dreamed_context_and_still_learns_the_real_frames():
    """With no context noise the network's input shows which frames were dreamed: with
    rollout_share 1, every row's frames before the last but the real start are samples,
    at the context level; the loss is still the error against the real frames."""
    model = tiny_model(ctx_noise=0.0)
    seen, preds = [], []
    model.register_forward_pre_hook(lambda module, args: seen.append((args[0].clone(), args[1].clone())))
    model.register_forward_hook(lambda module, args, out: preds.append(out.detach()))
    z = torch.randn(4, 6, *model.cfg.latent_shape)
    acts, zeros = torch.randint(0, 7, (4, 5)), torch.zeros(4, 5)
    for share in (0.0, 1.0):
        _, metrics = diffusion_forcing_loss(model, z, acts, zeros, zeros.bool(), rollout_share=share, rollout_frames=3)
        x, tau = seen[-1]
        assert torch.equal(x[:, :2], z[:, :2]) == bool(share)  # real frames at level 0 only when set there
        dreamed = (x[:, 2:5] - z[:, 2:5]).flatten(2).abs().mean(2)
        assert (dreamed > 0.1).all() if share else True
        if share:
            assert (tau[:, :-1] == 0).all() and (tau[:, -1] > 0).all()
            assert "dreamed_last_mse" in metrics
        loss_vs_real = (preds[-1] - z).pow(2).flatten(2).mean(2).mean()
        assert metrics["denoise_mse"] == pytest.approx(loss_vs_real.item(), rel=1e-5)


def test_a_dreamed_window_recalls_its_dreamed_frames_not_the_real_ones():
    """Memory that recalls a window frame the rollout dreamed gets that dream (as a dream's
    bank would hold it), so the real frame cannot come back through memory; memory of a
    real frame (the window's start, or before it) stays as it was."""
    model = tiny_model(ctx_noise=0.0, memory=3)
    recalled, seen = [], []
    encode = model.encode_memory
    model.encode_memory = lambda z, *rest: recalled.append(z.clone()) or encode(z, *rest)
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    z = torch.randn(2, 6, *model.cfg.latent_shape)
    acts, zeros = torch.randint(0, 7, (2, 5)), torch.zeros(2, 5)
    mem_z = torch.randn(2, 3, *model.cfg.latent_shape)
    mem_z[:, 0], mem_z[:, 1] = z[:, 3], z[:, 1]  # a dreamed frame's and a real one's real latents
    memory = (mem_z, torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))
    slot = torch.tensor([[3, 1, -1]] * 2)
    diffusion_forcing_loss(model, z, acts, zeros, zeros.bool(), memory=memory, memory_slot=slot,
                           rollout_share=1.0, rollout_frames=3)
    x = seen[-1]
    torch.testing.assert_close(recalled[-1][:, 0], x[:, 3])  # the dream of frame 3, not the real frame
    assert (recalled[-1][:, 0] - z[:, 3]).abs().mean() > 0.1
    torch.testing.assert_close(recalled[-1][:, 1:], mem_z[:, 1:])


def test_action_balance_weighs_each_frames_error_by_the_action_that_led_into_it():
    model = tiny_model()
    preds = []
    model.register_forward_hook(lambda module, args, out: preds.append(out.detach()))
    z = torch.randn(3, 5, *model.cfg.latent_shape)
    acts, zeros = torch.randint(0, 7, (3, 4)), torch.zeros(3, 4)
    weights = torch.linspace(0.5, 2.0, 7)
    torch.manual_seed(1)
    _, plain = diffusion_forcing_loss(model, z, acts, zeros, zeros.bool())
    torch.manual_seed(1)
    _, ones = diffusion_forcing_loss(model, z, acts, zeros, zeros.bool(), action_weights=torch.ones(7))
    assert ones["denoise_mse"] == pytest.approx(plain["denoise_mse"], rel=1e-6)
    torch.manual_seed(1)
    _, weighted = diffusion_forcing_loss(model, z, acts, zeros, zeros.bool(), action_weights=weights)
    per_frame = (preds[-1] - z).pow(2).flatten(2).mean(2)  # the same noise, so the same prediction
    expected = torch.cat([per_frame[:, :1], per_frame[:, 1:] * weights[acts]], 1).mean()
    assert weighted["denoise_mse"] == pytest.approx(expected.item(), rel=1e-5)
    assert weighted["last_mse"] == pytest.approx((per_frame[:, -1] * weights[acts[:, -1]]).mean().item(), rel=1e-5)
    footage = torch.zeros(3, dtype=torch.bool)  # windows with no action given keep weight 1
    torch.manual_seed(1)
    _, unweighted = diffusion_forcing_loss(model, z, acts, zeros, zeros.bool(), has_action=footage)
    torch.manual_seed(1)
    _, footage_weighted = diffusion_forcing_loss(model, z, acts, zeros, zeros.bool(), has_action=footage,
                                                 action_weights=weights)
    assert footage_weighted["denoise_mse"] == pytest.approx(unweighted["denoise_mse"], rel=1e-6)


def test_change_weight_weighs_each_positions_error_by_how_much_the_real_latent_moved_there_the_step_before():
    model = tiny_model()
    preds = []
    model.register_forward_hook(lambda module, args, out: preds.append(out.detach()))
    z = torch.zeros(2, 4, *model.cfg.latent_shape)
    z[:, 2:, :, 1, 1] = 3.0  # one position changes into frame 2, nothing else ever moves
    acts, zeros = torch.randint(0, 7, (2, 3)), torch.zeros(2, 3)
    torch.manual_seed(1)
    _, weighted = diffusion_forcing_loss(model, z, acts, zeros, zeros.bool(), change_weight=2.0)
    error = (preds[-1] - z).pow(2)  # the same noise as below: the same prediction
    change = torch.zeros(2, 2, 1, *model.cfg.latent_shape[1:])  # the steps before frames 2 and 3
    change[:, 1, :, 1, 1] = 9.0  # the step into frame 2 weighs frame 3
    weight = torch.cat([torch.ones(2, 2, 1, *change.shape[-2:]), 1 + 2.0 * change / change.mean()], 1)
    assert weighted["denoise_mse"] == pytest.approx((error * weight).flatten(2).mean(2).mean().item(), rel=1e-5)
    torch.manual_seed(1)
    _, plain = diffusion_forcing_loss(model, z, acts, zeros, zeros.bool())
    assert plain["denoise_mse"] == pytest.approx(error.mean().item(), rel=1e-5)
    assert weighted["denoise_mse"] > plain["denoise_mse"]  # the moved position's error counts many times over


def test_change_weight_never_reads_the_frame_it_weighs():
    """A weight that grew with the frame's own change would teach the model that big changes are
    more likely than they are: here only the last frame changes, so nothing weighs more."""
    model = tiny_model()
    z = torch.zeros(2, 4, *model.cfg.latent_shape)
    z[:, 3, :, 1, 1] = 3.0
    acts, zeros = torch.randint(0, 7, (2, 3)), torch.zeros(2, 3)
    torch.manual_seed(1)
    _, weighted = diffusion_forcing_loss(model, z, acts, zeros, zeros.bool(), change_weight=2.0)
    torch.manual_seed(1)
    _, plain = diffusion_forcing_loss(model, z, acts, zeros, zeros.bool())
    assert weighted["denoise_mse"] == pytest.approx(plain["denoise_mse"], rel=1e-6)


def test_action_weights_give_every_action_the_same_total_weight(rooms_dataset):
    from training.train_dynamics import action_weights
    from worldsim.dataset import episode_paths, load_meta, read_episode

    paths = episode_paths(rooms_dataset, "train")
    counts = np.bincount(np.concatenate([read_episode(p).actions for p in paths]), minlength=7)
    freq = counts / counts.sum()
    full = action_weights(paths, load_meta(rooms_dataset), 1.0).numpy()
    assert (freq * full).sum() == pytest.approx(1.0)  # frames weigh 1 on average
    seen = freq > 0
    assert np.allclose(freq[seen] * full[seen], 1 / seen.sum()) and (full[~seen] == 0).all()
    assert np.allclose(action_weights(paths, load_meta(rooms_dataset), 0.0).numpy()[seen], 1.0)
    with pytest.raises(ValueError, match="weighs discrete actions"):
        action_weights(paths, {"env_id": "x", "action_space": {"type": "Dict"}}, 1.0)


def test_action_dropout_trains_the_action_free_prediction_that_guidance_steers_from():
    model = tiny_model()
    z = torch.randn(2, 5, *model.cfg.latent_shape)
    acts, zeros = torch.randint(0, 7, (2, 4)), torch.zeros(2, 4)
    torch.manual_seed(1)
    _, dropped = diffusion_forcing_loss(model, z, acts, zeros, zeros.bool(), action_dropout=1.0)
    torch.manual_seed(1)
    _, no_actions = diffusion_forcing_loss(model, z, acts, zeros, zeros.bool(), has_action=torch.zeros(2, dtype=torch.bool))
    torch.manual_seed(1)
    _, kept = diffusion_forcing_loss(model, z, acts, zeros, zeros.bool())
    assert dropped["denoise_mse"] == pytest.approx(no_actions["denoise_mse"], rel=1e-6)
    assert dropped["denoise_mse"] != pytest.approx(kept["denoise_mse"], rel=1e-4)

    def sample(action, w):
        cache = model.new_cache()
        prime(model, cache, z[:, :3], *model.actions_into_frames(acts[:, :2], 2, 3, "cpu"), torch.arange(3).expand(2, 3))
        return sample_next(model, cache, action, torch.full((2,), 3), 2, torch.Generator().manual_seed(0),
                                 action_guidance=w)
    a, b = torch.zeros(2, dtype=torch.long), torch.full((2,), 3)
    # Guidance moves the sample along (with action - without action): the gap between two
    # actions' samples grows by the factor 1 + w.
    gap0, gap2 = (sample(a, 0.0) - sample(b, 0.0)).norm(), (sample(a, 2.0) - sample(b, 2.0)).norm()
    assert torch.isfinite(gap2) and gap2 > 1.5 * gap0


@pytest.mark.parametrize("rows", [1, 2])
def test_guidance_terms_equal_their_separate_passes(rows):
    """One denoising step with memory, action and text guidance at once gives x0 = c +
    wm (c - no memory) + wa (c - no action) + wt (c - null text), each prediction made by
    its own pass here, whether the sampler stacks the terms as rows of one pass (one row,
    or on a GPU) or runs a pass per term. Row 1 recalled no memory frame, so its memory
    term is zero."""
    model = tiny_model(text_dim=8, memory=2)
    g = torch.Generator().manual_seed(3)
    ctx, acts = torch.randn(2, 3, *model.cfg.latent_shape, generator=g), torch.randint(0, 7, (2, 2), generator=g)
    text, noise = torch.randn(2, 8, generator=g), torch.randn(2, *model.cfg.latent_shape, generator=g)
    recalled = (torch.randn(2, 2, *model.cfg.latent_shape, generator=g), torch.randn(2, 2, 4, generator=g),
                torch.tensor([[True, False], [False, False]]))
    ctx, acts, text, noise = ctx[:rows], acts[:rows], text[:rows], noise[:rows]
    recalled = tuple(r[:rows] for r in recalled)

    def primed():
        cache = model.new_cache()
        prime(model, cache, ctx, *model.actions_into_frames(acts, rows, 3, "cpu"), torch.arange(3).expand(rows, 3),
              torch.Generator().manual_seed(4), text)  # the same context noise in every pass
        return cache

    action, index = torch.tensor([1, 4])[:rows], torch.full((rows,), 3)
    got = sample_next(model, primed(), action, index, 1, text=text, memory=recalled, guidance=1.5,
                      action_guidance=2.0, text_guidance=3.0, write_cache=False, noise=noise)
    x, tau, has, pos = noise[:, None], torch.ones(rows, 1), torch.ones(rows, 1, dtype=torch.bool), index[:, None]
    with torch.no_grad():
        memory = model.encode_memory(*recalled, index)
        cond = model(x, tau, action[:, None], has, pos, text, primed(), memory=memory)
        no_memory = model(x, tau, action[:, None], has, pos, text, primed())
        no_action = model(x, tau, action[:, None], ~has, pos, text, primed(), memory=memory)
        null_text = model(x, tau, action[:, None], has, pos, torch.zeros_like(text), primed(), memory=memory)
    for other in (no_memory[:1], no_action, null_text):
        assert (cond[:len(other)] - other).abs().max() > 1e-3
    if rows == 2:
        torch.testing.assert_close(cond[1], no_memory[1], rtol=1e-4, atol=1e-5)
    expected = cond + 1.5 * (cond - no_memory) + 2.0 * (cond - no_action) + 3.0 * (cond - null_text)
    torch.testing.assert_close(got, expected[:, 0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("space,make", [
    ({"type": "MultiDiscrete", "nvec": [3, 4]}, lambda b, t: torch.stack([torch.randint(0, 3, (b, t)), torch.randint(0, 4, (b, t))], -1)),
    ({"type": "Box", "low": [-1.0, -1.0], "high": [1.0, 1.0], "dtype": "float32"}, lambda b, t: torch.rand(b, t, 2)),
    ({"type": "MultiBinary", "n": 5}, lambda b, t: torch.randint(0, 2, (b, t, 5))),
    ({"type": "Dict", "spaces": {"move": {"type": "Discrete", "n": 4, "start": 0},
                                 "look": {"type": "Box", "low": [-1.0], "high": [1.0], "dtype": "float32"}}},
     lambda b, t: {"move": torch.randint(0, 4, (b, t)), "look": torch.rand(b, t, 1)}),
])
def test_action_spaces(space, make):
    model = tiny_model(space)
    z = torch.randn(2, 4, *model.cfg.latent_shape)
    loss, stats = diffusion_forcing_loss(model, z, make(2, 3), torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert np.isfinite(stats["loss"])


def test_text_slot_conditions_every_frame():
    model = tiny_model(text_dim=8)
    x, tau, a, has, pos = window(model)
    t1, t2 = torch.randn(2, 8), torch.randn(2, 8)
    assert (model(x, tau, a, has, pos, text=t1) - model(x, tau, a, has, pos, text=t2)).abs().max() > 1e-4


def test_loss_falls_and_heads_learn_rewards():
    """On a toy world (the latent shifts by the action; reward when action 1), the loss falls."""
    torch.manual_seed(0)
    model = Dynamics(DynamicsConfig(latent_shape=(4, 4, 4), d_model=48, n_layers=2, n_heads=2, max_frames=6))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def batch(b=16, t=6):
        a = torch.randint(0, 3, (b, t - 1))
        z = [torch.randn(b, 4, 4, 4)]
        for j in range(t - 1):
            z.append(torch.roll(z[-1], shifts=int(1), dims=3) * (a[:, j] != 2).float()[:, None, None, None]
                     + z[-1] * (a[:, j] == 2).float()[:, None, None, None])
        return torch.stack(z, 1), a, (a == 1).float(), torch.zeros(b, t - 1, dtype=torch.bool)

    history = []
    for step in range(150):
        loss, stats = diffusion_forcing_loss(model, *batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(stats)
    first = np.mean([h["denoise_mse"] for h in history[:10]])
    last = np.mean([h["denoise_mse"] for h in history[-10:]])
    assert last < 0.6 * first
    assert np.mean([h["reward_mse"] for h in history[-10:]]) < 0.5 * np.mean([h["reward_mse"] for h in history[:10]])


def test_nan_loss_stops_training_with_last_checkpoint_intact(tmp_path):
    from training.loop import LoopConfig, run

    model = torch.nn.Linear(2, 1)
    calls = {"n": 0}

    def loss_of(m, batch):
        calls["n"] += 1
        out = m(batch).mean()
        return (out * float("nan") if calls["n"] > 3 else out), {"loss": out.item()}

    cfg = LoopConfig(out=str(tmp_path), steps=10, lr=1e-3, warmup=1, ckpt_every=2, log_every=1)
    with pytest.raises(FloatingPointError, match="step 3.*latest.safetensors"):
        run(model, cfg, "toy", {"kind": "toy", "toy": {}}, lambda s, r: torch.ones(4, 2), loss_of, lambda b: 4,
            progress=False)
    from worldsim.checkpoint import load_checkpoint
    tensors, meta = load_checkpoint(tmp_path / "latest.safetensors")
    assert meta["step"] == 2 and all(torch.isfinite(v).all() for v in tensors.values())


def test_dynamics_training_logs_checkpoints_and_resumes(pipeline):
    from training.train_dynamics import train as train_dyn

    root, dyn, summary = pipeline
    rows = np.genfromtxt(root / "dyn" / "metrics.csv", delimiter=",", names=True)
    assert rows["step"][-1] == 40 and rows["loss"][-1] < rows["loss"][0]
    dyn.steps = 50
    assert train_dyn(dyn, progress=False)["step"] == 50  # resumed from step 40


def test_a_run_saved_before_a_setting_was_added_resumes(pipeline, tmp_path):
    """A run whose checkpoint lacks a setting added to DynamicsConfig since (at its
    default, the same model) resumes; one that differs in a setting it has is refused."""
    import shutil

    from training.train_dynamics import train as train_dyn
    from worldsim.checkpoint import load_checkpoint, save_checkpoint

    root, dyn, _ = pipeline
    old = tmp_path / "old"
    shutil.copytree(root / "dyn", old)
    tensors, config = load_checkpoint(old / "latest.safetensors")
    del config["dynamics"]["memory_fov_deg"]  # as written before that setting existed
    save_checkpoint(old / "latest.safetensors", tensors, config)
    cfg = replace(dyn, out=str(old), steps=config["step"] + 2)
    assert train_dyn(cfg, progress=False)["step"] == config["step"] + 2
    with pytest.raises(ValueError, match="use another --out or the same settings"):
        train_dyn(replace(cfg, steps=cfg.steps + 2, config="XS"), progress=False)


def test_world_model_dreams_and_refuses_mismatches(pipeline, rooms_dataset, tmp_path):
    from worldsim.checkpoint import CheckpointError
    from worldsim.dataset import episode_paths
    from worldsim.dream_video import dream_episode
    from worldsim.world_model import WorldModel

    root, _, _ = pipeline
    model = WorldModel.load(root / "world.safetensors")
    assert model.info["env_id"] == "worldsim/Rooms-v0" and model.info["action_space"]["n"] == 7
    assert model.start_frames.shape[1:] == (64, 64, 3) and model.start_frames.any()
    ep = episode_paths(rooms_dataset, "test")[0]
    result = dream_episode(str(root / "world.safetensors"), str(ep), 6, str(tmp_path / "d.mp4"), context=3)
    assert result["steps"] == 6 and (tmp_path / "d.mp4").stat().st_size > 1000
    import cv2
    cap = cv2.VideoCapture(str(tmp_path / "d.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 9 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 4 * (2 * 64 + 2)
    with pytest.raises(CheckpointError, match="expected a world model"):
        WorldModel.load(root / "tok" / "latest.safetensors")


def test_ddp_two_processes_end_with_identical_weights(pipeline, tmp_path):
    root, _, _ = pipeline
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "worldsim.cli", "train", "dynamics", "--data", str(root / "latents"), "--out", str(out),
           "--config", "tiny", "--steps", "6", "--batch-size", "2", "--ckpt-every", "3", "--quiet"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(s) for s in _json_objects(proc.stdout)]
    assert len(summaries) == 2 and all(s["world_size"] == 2 and s["ddp_weights_identical"] for s in summaries)
    assert (out / "latest.safetensors").exists()


def _json_objects(text):
    """The JSON summaries the two ranks printed (each a top-level {...} block)."""
    blocks, depth, start = [], 0, None
    for i, ch in enumerate(text):
        if ch == "{":
            start = i if depth == 0 else start
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                blocks.append(text[start:i + 1])
    return blocks


def test_footage_windows_train_without_actions_and_leave_the_heads_to_the_labelled(pipeline, tmp_path):
    """--footage: a share of each batch is action-free footage (has_action False, null
    actions, rewards and ends); the heads learn only from the labelled windows."""
    from training.train_dynamics import FootageWindows, LatentWindows, TrainConfig, train

    root, _, _ = pipeline
    latents = str(root / "latents")
    data = FootageWindows(LatentWindows(latents, 4, seed=0), latents, 4, seed=0, share=0.25)
    batch = data.batch(8, step=3, rank=0)
    assert batch["has_action"].tolist() == [True] * 6 + [False] * 2
    assert batch["z"].shape[:2] == (8, 4) and not batch["actions"][6:].any() and not batch["rewards"][6:].any()
    assert torch.equal(data.batch(8, 3, 0)["z"], batch["z"])  # the draw depends only on (seed, step, rank)
    assert data.batch(2, 0, 0)["has_action"].tolist() == [True, False]  # both kinds, however small the batch
    with pytest.raises(ValueError, match="at least 2 windows"):
        data.batch(1, 0, 0)

    model = tiny_model()
    z, acts = torch.randn(2, 4, *model.cfg.latent_shape), torch.randint(0, 7, (2, 3))
    rewards, ends, has = torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool), torch.tensor([True, False])
    torch.manual_seed(0)
    _, base = diffusion_forcing_loss(model, z, acts, rewards, ends, has_action=has)
    torch.manual_seed(0)
    _, footage_paid = diffusion_forcing_loss(model, z, acts, rewards + torch.tensor([[0.0], [5.0]]), ends, has_action=has)
    torch.manual_seed(0)
    _, labelled_paid = diffusion_forcing_loss(model, z, acts, rewards + torch.tensor([[5.0], [0.0]]), ends, has_action=has)
    assert footage_paid["reward_mse"] == base["reward_mse"] < labelled_paid["reward_mse"]

    summary = train(TrainConfig(data=latents, out=str(tmp_path / "f"), config="tiny", steps=3, batch_size=4, warmup=1,
                                footage=latents, footage_share=0.5), progress=False)
    assert summary["step"] == 3
    with pytest.raises(ValueError, match="do not combine"):
        train(TrainConfig(data=latents, out=str(tmp_path / "g"), config="tiny", steps=1, batch_size=2, memory=2,
                          footage=latents), progress=False)


def test_training_options_that_cannot_work_say_why(pipeline, tmp_path):
    from training.train_dynamics import TrainConfig, train

    root, _, _ = pipeline
    base = dict(data=str(root / "latents"), config="tiny", steps=1, batch_size=2)
    with pytest.raises(ValueError, match="terminated is nonzero"):  # these short explore episodes never end
        train(TrainConfig(out=str(tmp_path / "a"), end_share=0.25, **base), progress=False)
    with pytest.raises(ValueError, match="do not combine"):
        train(TrainConfig(out=str(tmp_path / "b"), end_share=0.25, memory=2, **base), progress=False)
    from worldsim.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="takes a world model or a dynamics run"):
        train(TrainConfig(out=str(tmp_path / "c"), init=str(root / "tok" / "latest.safetensors"), **base), progress=False)
    with pytest.raises(ValueError, match="--rollout-frames 20: a window of .* frames dreams 1 to"):
        train(TrainConfig(out=str(tmp_path / "d"), rollout_share=0.5, rollout_frames=20, **base), progress=False)
    train(TrainConfig(out=str(tmp_path / "e"), rollout_share=1.0, rollout_frames=2, **base), progress=False)
    assert "dreamed_last_mse" in (tmp_path / "e" / "metrics.csv").read_text().splitlines()[0]  # the option reached the loss


def test_init_carries_the_transformer_body_to_another_latent_shape(pipeline):
    from training.train_dynamics import init_from
    from worldsim.checkpoint import CheckpointError, load_checkpoint

    root, _, _ = pipeline
    path = str(root / "dyn" / "latest.safetensors")
    tensors, config = load_checkpoint(path)
    old = DynamicsConfig(**config["dynamics"])
    # A 4x tokenizer's latent (4, 16, 16) in patches of 4 keeps the same 4x4 token grid.
    model = Dynamics(DynamicsConfig(**{**config["dynamics"], "latent_shape": (4, 2 * old.latent_shape[1],
                                                                              2 * old.latent_shape[2]), "patch": 4}))
    fresh = init_from(model, path)
    assert fresh == ["embed.weight", "final.bias", "final.weight", "heads.conv.0.weight"]
    body = "blocks.0.attn.qkv.weight"
    assert torch.equal(model.state_dict()[body], tensors[f"model/{body}"].float())
    # Finer patches (4x the tokens a frame): the body carries over, screen positions are resampled.
    finer = Dynamics(DynamicsConfig(**{**config["dynamics"], "patch": old.patch // 2}))
    assert init_from(finer, path) == ["embed.weight", "final.bias", "final.weight"]
    assert torch.equal(finer.state_dict()[body], tensors[f"model/{body}"].float())
    assert finer.space_pos.shape == (4 * old.tokens_per_frame, old.d_model)
    wider = Dynamics(DynamicsConfig(**{**config["dynamics"], "d_model": 2 * old.d_model}))
    with pytest.raises(CheckpointError, match="do not fit"):
        init_from(wider, path)


def test_screen_positions_resampled_to_a_finer_grid_keep_their_places():
    from training.train_dynamics import resized_positions

    rows, cols = 3, 4
    one_hot = torch.eye(rows * cols, 16)  # token r * cols + c holds only its own index (d = 16 wide)
    finer = resized_positions(one_hot, (rows, cols), (2 * rows, 2 * cols)).reshape(2 * rows, 2 * cols, -1)
    for r in range(2 * rows):
        for c in range(2 * cols):  # each new token's position is mostly the old token it lies in
            assert int(finer[r, c].argmax()) == (r // 2) * cols + c // 2


def test_the_next_batch_is_drawn_while_this_one_trains():
    import threading

    from training.loop import Prefetch

    drawing = []
    prefetch = Prefetch(lambda step, rank: drawing.append((step, threading.current_thread().name)) or step, 0)
    assert prefetch.batch(0, 5) == 0
    prefetch.pending[0].result()  # step 1 was asked for before step 0 was handed over
    assert [s for s, _ in drawing] == [0, 1] and all(name != "MainThread" for _, name in drawing)
    assert [prefetch.batch(s, 5) for s in range(1, 5)] == [1, 2, 3, 4] and not prefetch.pending
    prefetch.close()


def test_loader_processes_train_the_same_weights_as_one_thread(pipeline, tmp_path):
    """Batches depend only on (seed, step, rank): drawing them in forked processes (what a
    GPU needs to be fed memory windows) must not change what is trained."""
    from training.loop import weights_digest
    from training.train_dynamics import TrainConfig, build, train
    from worldsim.checkpoint import load_checkpoint, with_prefix

    root, _, _ = pipeline
    digests = []
    for workers in (0, 2):
        cfg = TrainConfig(data=str(root / "latents"), out=str(tmp_path / f"w{workers}"), config="tiny", memory=2,
                          steps=6, batch_size=3, warmup=2, ckpt_every=6, loader_workers=workers)
        assert train(cfg, progress=False)["step"] == 6
        tensors, meta = load_checkpoint(tmp_path / f"w{workers}" / "latest.safetensors")
        model = build(cfg, meta["dataset"])
        model.load_state_dict(with_prefix(tensors, "model/"))
        digests.append(weights_digest(model))
    assert digests[0] == digests[1]


def test_calibrated_end_head_ends_dreamed_replays_as_often_as_the_data(pipeline, rooms_dataset, tmp_path):
    from worldsim.dataset import DatasetWriter, episode_paths, load_meta, read_episode
    from worldsim.replay import calibrate_ends
    from worldsim.world_model import WorldModel

    model = WorldModel.load(pipeline[0] / "world.safetensors")
    with pytest.raises(ValueError, match="no episode end"):  # Rooms episodes are cut by time, never ended
        calibrate_ends(model, rooms_dataset, split="train")
    ended = DatasetWriter(tmp_path / "ended", load_meta(rooms_dataset))
    for path in episode_paths(rooms_dataset):  # the same footage, each episode ended at its last step
        e = read_episode(path)
        e.terminated[-1], e.truncated[-1] = True, False
        ended.write(e)
    bias = float(model.dynamics.heads.out[-1].bias[1])
    report = calibrate_ends(model, tmp_path / "ended", split="train", seed=3)
    episodes = [read_episode(p) for p in episode_paths(tmp_path / "ended", "train")]
    assert report["real_ends"] == len(episodes) and report["dreamed_steps"] == sum(len(e) for e in episodes)
    assert float(model.dynamics.heads.out[-1].bias[1]) == pytest.approx(bias + report["logit_shift"], abs=1e-5)
    # Replayed again in the dream (same seed, same samples), the shifted head ends as often as the data.
    again = calibrate_ends(model, tmp_path / "ended", split="train", seed=3)
    assert again["dream_ends_per_step_before"] == pytest.approx(report["real_ends_per_step"], rel=0.01)
    assert abs(again["logit_shift"]) < 0.01 and abs(report["logit_shift"]) > 0.1


def test_one_step_distillation_learns_the_teachers_guided_sample():
    """The student starts as the teacher: its one-pass prediction from the noise misses
    what the teacher's 3 guided steps make of it; training on the same batch closes most
    of that gap, and the loss is exactly the gap to the teacher's sample."""
    import copy

    from worldsim.objective import distillation_loss

    teacher = tiny_model(sample_steps=3, action_guidance=2.0)
    student = copy.deepcopy(teacher).train()
    z, acts = torch.randn(4, 5, *teacher.cfg.latent_shape), torch.randint(0, 7, (4, 4))
    zeros = torch.zeros(4, 4)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        torch.manual_seed(0)  # the same noise: the same target
        loss, metrics = distillation_loss(student, teacher, z, acts, rewards=zeros, terminated=zeros.bool())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(metrics["distill_mse"])
    assert losses[0] > 0 and losses[-1] < 0.2 * losses[0]
    # The target is the teacher's sample from the same noise and context.
    torch.manual_seed(0)
    into, has = teacher.actions_into_frames(acts, 4, 5, "cpu")
    eps = torch.randn_like(z[:, -1])
    cache = teacher.new_cache()
    prime(teacher, cache, z[:, :-1], into[:, :-1], has[:, :-1], torch.arange(4).expand(4, 4))  # the same context noise
    target = sample_next(teacher, cache, into[:, -1], torch.full((4,), 4), noise=eps, write_cache=False)
    torch.manual_seed(0)
    _, again = distillation_loss(student, teacher, z, acts)
    assert again["target_vs_real_mse"] == pytest.approx(((target - z[:, -1]) ** 2).mean().item(), rel=1e-5)


def test_a_distilled_run_samples_in_one_step_without_guidance(pipeline, memory_world, tmp_path):
    import gymnasium as gym

    from training.train_dynamics import TrainConfig, train
    from worldsim.checkpoint import CheckpointError
    from worldsim.export import export_world_model

    root, _, _ = pipeline
    world, _ = memory_world
    train(TrainConfig(data=str(root / "latents"), out=str(tmp_path / "dyn"), config="tiny", memory=2, steps=3,
                      batch_size=2, warmup=1, ckpt_every=3, log_every=1, teacher=str(world)), progress=False)
    assert "distill_mse" in (tmp_path / "dyn" / "metrics.csv").read_text().splitlines()[0]
    export_world_model(str(tmp_path / "dyn" / "latest.safetensors"), str(tmp_path / "one_step.safetensors"))
    env = gym.make("worldsim/Dream-v0", checkpoint=str(tmp_path / "one_step.safetensors"))
    student, teacher = env.unwrapped.model.dynamics, gym.make("worldsim/Dream-v0", checkpoint=str(world)).unwrapped.model.dynamics
    for (name, a), b in zip(student.heads.state_dict().items(), teacher.heads.state_dict().values()):
        assert torch.equal(a, b), name  # the heads are the teacher's
    assert any(not torch.equal(a, b) for a, b in zip(student.blocks.parameters(), teacher.blocks.parameters()))
    cfg = student.cfg
    assert (cfg.sample_steps, cfg.memory_guidance, cfg.action_guidance, cfg.text_guidance) == (1, 0.0, 0.0, 0.0)
    env.reset(seed=0)
    assert env.step(1)[0].shape == (64, 64, 3)
    for option in ({"action_dropout": 0.1}, {"sampled_context_share": 0.5}, {"action_balance": 1.0},
                   {"rollout_share": 0.5}):
        with pytest.raises(ValueError, match="drop --footage, --action-dropout .* and --sampled-context-share"):
            train(TrainConfig(data=str(root / "latents"), out=str(tmp_path / "other"), config="tiny", memory=2, steps=1,
                              teacher=str(world), **option), progress=False)
    with pytest.raises(CheckpointError, match="pass --memory 2"):  # a student without the teacher's memory
        train(TrainConfig(data=str(root / "latents"), out=str(tmp_path / "other2"), config="tiny", memory=0, steps=1,
                          teacher=str(world)), progress=False)
    with pytest.raises(CheckpointError, match="do not fit this model's config"):  # the teacher's weights, another size
        train(TrainConfig(data=str(root / "latents"), out=str(tmp_path / "other3"), config="XS", memory=2, steps=1,
                          teacher=str(world)), progress=False)


def test_pickup_detection_counts_the_pickups_whose_object_was_in_view(pipeline, rooms_dataset, tmp_path):
    from worldsim.dataset import DatasetWriter, Episode, episode_paths, load_meta
    from worldsim.replay import heads_detection
    from worldsim.world_model import WorldModel

    class PaysForForward(torch.nn.Module):  # a head that pays 1 for FORWARD (action 1), never ends
        def forward(self, z_prev, z_next, actions):
            return (actions == 1).float(), torch.full((len(actions),), -20.0), torch.zeros(len(actions), 0)

    model = WorldModel.load(pipeline[0] / "world.safetensors")
    model.dynamics.heads = PaysForForward()
    steps, rng = 8, np.random.default_rng(0)
    actions = np.array([0, 1, 2, 1, 1, 0, 3, 0])  # pickups at steps 1 (FORWARD), 2 (BACK), 4 (FORWARD)
    rewards = np.zeros(steps, np.float32)
    rewards[[1, 2, 4]] = 1.0
    alive = np.ones((steps + 1, 3), bool)
    alive[2:, 0] = alive[3:, 1] = alive[5:, 2] = False  # object k gone after its pickup
    in_view = np.zeros((steps + 1, 3), bool)
    in_view[:2, 0] = in_view[:3, 1] = True  # objects 0 and 1 seen before they were reached; object 2 never
    writer = DatasetWriter(tmp_path / "data", load_meta(rooms_dataset))
    shape = load_meta(rooms_dataset)["frame_shape"]
    writer.write(Episode(frames=rng.integers(0, 256, (steps + 1, *shape), dtype=np.uint8), actions=actions,
                         rewards=rewards, terminated=np.zeros(steps, bool), truncated=np.eye(1, steps, steps - 1, dtype=bool)[0],
                         gt={"objects_alive": alive, "objects_in_view": in_view}))
    (split,) = {p.parent.name for p in episode_paths(tmp_path / "data")}
    pickups = heads_detection(model, str(tmp_path / "data"), split)["pickups"]
    # Paid at the three FORWARD steps: two pickups found (one in view, one not) and one false alarm.
    assert pickups["events"] == 3 and pickups["predicted"] == 3
    assert pickups["precision"] == pytest.approx(2 / 3) and pickups["recall"] == pytest.approx(2 / 3)
    assert pickups["in_view_before"] == 2 and pickups["recall_in_view_before"] == pytest.approx(0.5)


def test_reward_share_draws_windows_whose_last_step_pays(pipeline, tmp_path):
    import shutil

    import h5py

    from training.train_dynamics import LatentWindows, MemoryWindows, dataset_pose_model
    from worldsim.dataset import episode_paths, load_meta

    root, _, _ = pipeline
    data = tmp_path / "latents"
    shutil.copytree(root / "latents", data)
    for path in episode_paths(data, "train"):  # a reward every 7th step, rare as pickups are
        with h5py.File(path, "r+") as f:
            rewards = np.zeros(len(f["rewards"]), np.float32)
            rewards[3::7] = 1.0
            f["rewards"][...] = rewards
    plain = LatentWindows(str(data), 4, seed=0).batch(32, 0, 0)
    batch = LatentWindows(str(data), 4, seed=0, reward_share=0.5).batch(32, 0, 0)
    assert (batch["rewards"][:16, -1] == 1).all()  # the drawn half ends on a step that pays
    assert plain["rewards"][:, -1].mean() < 0.5 and torch.equal(batch["z"][16:], plain["z"][16:])
    memory = MemoryWindows(str(data), 4, 0, 2, dataset_pose_model(load_meta(data)), reward_share=1.0).batch(8, 0, 0)
    assert (memory["rewards"][:, -1] == 1).all() and memory["memory"][0].shape[:2] == (8, 2)
    for path in episode_paths(data, "train"):
        with h5py.File(path, "r+") as f:
            f["rewards"][...] = 0.0
    with pytest.raises(ValueError, match="rewards is nonzero"):  # nothing pays: nothing to draw
        LatentWindows(str(data), 4, seed=0, reward_share=0.25)
    with pytest.raises(ValueError, match="rewards is nonzero"):
        MemoryWindows(str(data), 4, 0, 2, dataset_pose_model(load_meta(data)), reward_share=0.25)
