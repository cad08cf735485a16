"""Spacetime patches and the video compression network."""

import numpy as np
import pytest
import torch

from training.train_tokenizer import TrainConfig, encode_dataset, train
from worldsim.checkpoint import CheckpointError, load_checkpoint
from worldsim.dataset import episode_paths, read_episode
from worldsim.patches import patch_positions, patchify, unpatchify
from worldsim.tokenizer import CONFIGS, Tokenizer, TokenizerConfig, psnr, ssim


@pytest.mark.parametrize("shape,patch", [((2, 4, 8, 8, 8), (1, 2, 2)), ((1, 6, 4, 16, 12), (2, 4, 2)),
                                         ((3, 1, 16, 8, 8), (1, 1, 1)), ((1, 3, 3, 6, 10), (3, 3, 5))])
def test_patch_round_trip_is_exact(shape, patch):
    x = torch.randn(shape)
    tokens, pos = patchify(x, patch)
    b, t, c, h, w = shape
    n = (t // patch[0]) * (h // patch[1]) * (w // patch[2])
    assert tokens.shape == (b, n, c * patch[0] * patch[1] * patch[2]) and pos.shape == (n, 3)
    assert torch.equal(unpatchify(tokens, (t, c, h, w), patch), x)
    # A token holds exactly the values of its patch, at its (t, h, w) position.
    k = n // 2
    pt, ph, pw = (pos[k] * torch.tensor(patch)).tolist()
    block = x[0, pt:pt + patch[0], :, ph:ph + patch[1], pw:pw + patch[2]]
    assert torch.equal(tokens[0, k].sort().values, block.flatten().sort().values)


def test_patch_positions_are_frame_major_and_errors_name_the_shape():
    pos = patch_positions((2, 4, 4), (1, 2, 2))
    assert pos[:4].tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]] and pos[4].tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match=r"\(2, 5, 4\).*patch \(1, 2, 2\)"):
        patchify(torch.zeros(1, 2, 3, 5, 4), (1, 2, 2))


@pytest.mark.parametrize("down,channels", [(8, 8), (4, 4), (8, 16)])
def test_latent_shapes_and_compression(down, channels):
    stages = {8: (8, 16, 16), 4: (8, 16)}[down]
    model = Tokenizer(TokenizerConfig(latent_channels=channels, downsample=down, channels=stages, stem_channels=8))
    frames = torch.randint(0, 256, (2, 4, 64, 64, 3), dtype=torch.uint8)
    z = model.encode(frames)
    assert z.shape == (2, 4, channels, 64 // down, 64 // down)
    assert model.decode(z).shape == frames.shape


def test_a_retired_setting_loads_at_its_one_value_and_is_refused_at_any_other(tmp_path):
    from worldsim.checkpoint import CheckpointError, config_from

    cfg = {"tokenizer": {"latent_channels": 4, "downsample": 4, "channels": [8, 16], "temporal": 1}}
    assert config_from(TokenizerConfig, cfg, "tokenizer", "old.safetensors").latent_shape == (4, 16, 16)
    cfg["tokenizer"]["temporal"] = 2
    with pytest.raises(CheckpointError, match=r"old.safetensors.*temporal=2.*no longer reads"):
        config_from(TokenizerConfig, cfg, "tokenizer", "old.safetensors")


def test_bad_frames_give_clear_errors():
    model = Tokenizer(TokenizerConfig(channels=(8, 8, 8), stem_channels=8))
    with pytest.raises(ValueError, match=r"uint8 frames \(B, T, 64, 64, 3\).*\(1, 1, 32, 32, 3\)"):
        model.encode(torch.zeros(1, 1, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        model.encode(torch.zeros(1, 1, 64, 64, 3))
    with pytest.raises(ValueError, match="divisible by downsample"):
        TokenizerConfig(frame_size=(60, 64))


def test_metrics_rank_reconstructions():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    noisy = np.clip(a + rng.normal(0, 10, a.shape), 0, 255).astype(np.uint8)
    assert np.all(psnr(a, a) > 90) and np.allclose(ssim(a, a), 1)
    assert np.all(psnr(a, noisy) < 30) and np.all(ssim(a, noisy) < ssim(a, a))


def tiny(data, out, steps, **kw):
    return TrainConfig(data=str(data), out=str(out), config="tiny", steps=steps, batch_size=8, warmup=5,
                       ckpt_every=steps, log_every=5, **kw)


def test_tiny_tokenizer_loss_falls_on_rooms(rooms_dataset, tmp_path):
    train(tiny(rooms_dataset, tmp_path / "run", 80, lr=2e-3), progress=False)
    rows = np.genfromtxt(tmp_path / "run" / "metrics.csv", delimiter=",", names=True)
    assert rows["loss"][-3:].mean() < 0.5 * rows["loss"][:2].mean()
    assert rows["psnr"][-1] > rows["psnr"][0] + 3


def test_resume_equals_an_uninterrupted_run_and_load_reproduces(rooms_dataset, tmp_path):
    train(tiny(rooms_dataset, tmp_path / "straight", 12), progress=False)
    cfg = tiny(rooms_dataset, tmp_path / "resumed", 12, stop_at=6)
    train(cfg, progress=False)  # stopped after 6 steps: its checkpoint is all that is left
    cfg.stop_at = None
    train(cfg, progress=False)
    a, meta_a = load_checkpoint(tmp_path / "straight" / "latest.safetensors")
    b, meta_b = load_checkpoint(tmp_path / "resumed" / "latest.safetensors")
    assert meta_a["step"] == meta_b["step"] == 12
    for key in a:
        if key.startswith("model/"):
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # Loading gives the same encoder and decoder outputs as the trained model had.
    model = Tokenizer.load(tmp_path / "straight" / "latest.safetensors")
    frames = torch.from_numpy(read_episode(episode_paths(rooms_dataset, "val")[0]).frames[:4][None])
    again = Tokenizer.load(tmp_path / "straight" / "latest.safetensors")
    with torch.no_grad():
        assert torch.equal(model.encode(frames), again.encode(frames))
        z = model.encode(frames)
        assert torch.equal(model.decode(z), again.decode(z))
    # Latents are normalised by the stats stored with the checkpoint.
    assert not torch.allclose(model.latent_scale, torch.ones_like(model.latent_scale))


def test_checkpoint_errors(rooms_dataset, tmp_path):
    train(tiny(rooms_dataset, tmp_path / "run", 2), progress=False)
    path = tmp_path / "run" / "latest.safetensors"
    with pytest.raises(CheckpointError, match="64x64 frames; expected one for 96x96"):
        Tokenizer.load(path, frame_size=(96, 96))
    short = tmp_path / "short.safetensors"
    short.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        Tokenizer.load(short)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Tokenizer.load(tmp_path / "missing.safetensors")


def test_encode_dataset_keeps_actions_and_shapes(rooms_dataset, tmp_path, monkeypatch):
    train(tiny(rooms_dataset, tmp_path / "run", 2), progress=False)
    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # the bar redraws at every episode (it once skipped those it drew at)
    summary = encode_dataset(str(tmp_path / "run" / "latest.safetensors"), str(rooms_dataset), str(tmp_path / "lat"),
                             progress=True)
    assert [p.name for p in episode_paths(tmp_path / "lat")] == [p.name for p in episode_paths(rooms_dataset)]
    assert summary["frames"] == sum(len(read_episode(p)) + 1 for p in episode_paths(rooms_dataset))
    import h5py
    src = episode_paths(rooms_dataset)[0]
    with h5py.File(tmp_path / "lat" / src.parent.name / src.name) as f:
        episode = read_episode(src)
        assert f["latents"].shape == (len(episode) + 1, 8, 8, 8)
        np.testing.assert_array_equal(f["actions"][()], episode.actions)
    assert summary["episodes"] == len(episode_paths(rooms_dataset))


def test_a_4x_tokenizer_trains_from_the_size_presets(rooms_dataset, tmp_path):
    # The presets list widths for 8x; a 4x tokenizer takes the first two.
    train(tiny(rooms_dataset, tmp_path / "run", 2, downsample=4, latent_channels=4), progress=False)
    model = Tokenizer.load(tmp_path / "run" / "latest.safetensors")
    assert model.cfg.latent_shape == (4, 16, 16) and model.cfg.channels == CONFIGS["tiny"]["channels"][:2]


def test_decoder_only_fine_tune_keeps_the_latents(rooms_dataset, tmp_path):
    train(tiny(rooms_dataset, tmp_path / "base", 20, lr=2e-3), progress=False)
    base = tmp_path / "base" / "latest.safetensors"
    with pytest.raises(ValueError, match="pass it with --init"):
        train(tiny(rooms_dataset, tmp_path / "bad", 2, decoder_only=True), progress=False)
    with pytest.raises(ValueError, match="cannot become {'downsample': 4}"):
        train(tiny(rooms_dataset, tmp_path / "bad", 2, init=str(base), downsample=4), progress=False)
    train(tiny(rooms_dataset, tmp_path / "dec", 40, lr=2e-3, init=str(base), decoder_only=True, detail_weight=20.0),
          progress=False)
    before, after = Tokenizer.load(base), Tokenizer.load(tmp_path / "dec" / "latest.safetensors")
    frames = torch.from_numpy(read_episode(episode_paths(rooms_dataset, "val")[0]).frames[:8][None])
    with torch.no_grad():
        z = before.encode(frames)
        assert torch.equal(z, after.encode(frames))  # encoder and latent stats untouched
        error = [((m.decode(z).float() - frames.float()) ** 2).mean() for m in (before, after)]
    assert error[1] < 0.8 * error[0]  # the decoder alone learnt to reconstruct better


def test_a_narrower_decoder_learns_the_same_latents_for_fewer_flops(rooms_dataset, tmp_path):
    from torch.utils.flop_counter import FlopCounterMode

    train(tiny(rooms_dataset, tmp_path / "base", 20, lr=2e-3), progress=False)
    base = tmp_path / "base" / "latest.safetensors"
    with pytest.raises(ValueError, match="--decoder-only"):
        train(tiny(rooms_dataset, tmp_path / "bad", 2, init=str(base), decoder_width=0.5), progress=False)
    train(tiny(rooms_dataset, tmp_path / "narrow", 40, lr=2e-3, init=str(base), decoder_only=True, decoder_width=0.5),
          progress=False)
    before, after = Tokenizer.load(base), Tokenizer.load(tmp_path / "narrow" / "latest.safetensors")
    assert after.cfg.decoder_width == 0.5 and after.cfg.channels == before.cfg.channels
    frames = torch.from_numpy(read_episode(episode_paths(rooms_dataset, "val")[0]).frames[:8][None])

    def flops(model, z):
        with FlopCounterMode(display=False) as counter:
            model.decode(z)
        return counter.get_total_flops()

    with torch.no_grad():
        z = before.encode(frames)
        assert torch.equal(z, after.encode(frames))  # the same encoder and latent stats: latents stay valid
        assert flops(after, z) < 0.5 * flops(before, z)
        fresh = Tokenizer(after.cfg)  # the same narrow decoder untrained
        fresh.load_state_dict({k: v for k, v in after.state_dict().items() if not k.startswith("decoder.")}, strict=False)
        error = [((m.decode(z).float() - frames.float()) ** 2).mean() for m in (fresh, after)]
    assert error[1] < 0.5 * error[0]  # it learnt to decode these latents


def test_detail_weights_favour_small_objects():
    from worldsim.tokenizer import detail_weights

    flat = torch.zeros(1, 3, 16, 16)
    assert torch.allclose(detail_weights(flat, 20.0), torch.ones(1, 1, 16, 16))
    dot = flat.clone()
    dot[:, :, 8, 8] = 1.0
    w = detail_weights(dot, 20.0)
    assert torch.isclose(w.mean(), torch.tensor(1.0)) and w[0, 0, 8, 8] > 3 * w[0, 0, 0, 0]
