"""The shared training loop (training/loop.py): the moving average of the weights."""

import pytest
import torch

from training.loop import LoopConfig, run
from worldsim.checkpoint import MODEL, TRAINED, load_checkpoint, with_prefix

TARGET = torch.tensor([1.0, -2.0, 0.5])


def _noisy_run(out, ema, steps=400, stop_at=None):
    """Fits TARGET from batches that hold it plus unit noise: at this learning rate the
    last weights jitter around it. Returns the model as the run leaves it."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    cfg = LoopConfig(out=str(out), steps=steps, lr=0.3, warmup=1, ckpt_every=50, log_every=50, ema=ema,
                     stop_at=stop_at)
    run(model, cfg, "toy", {"kind": "toy", "toy": {"in": 3}},
        batch_at=lambda step, rank: TARGET + torch.randn(3, generator=torch.Generator().manual_seed(step)),
        loss_of=lambda m, target: (((m.weight[0] - target) ** 2).sum() / 2, {}), items_per_batch=lambda t: 1,
        progress=False)
    return model


def test_the_average_of_the_weights_is_nearer_the_optimum_than_the_last_weights(tmp_path):
    model = _noisy_run(tmp_path / "ema", ema=0.98, steps=2000, stop_at=300)  # stopped at full learning rate
    tensors, _ = load_checkpoint(tmp_path / "ema" / "latest.safetensors")
    average, trained = with_prefix(tensors, MODEL)["weight"][0], with_prefix(tensors, TRAINED)["weight"][0]
    assert torch.equal(model.weight[0].detach(), average)  # the run leaves the model holding what it ships
    assert (average - TARGET).norm() < (trained - TARGET).norm() / 2
    plain = _noisy_run(tmp_path / "plain", ema=0.0, steps=2000, stop_at=300)
    tensors, _ = load_checkpoint(tmp_path / "plain" / "latest.safetensors")
    assert not with_prefix(tensors, TRAINED) and torch.equal(with_prefix(tensors, MODEL)["weight"][0], plain.weight[0])
    assert torch.equal(with_prefix(tensors, MODEL)["weight"][0], trained)  # the same steps, without the average


def test_a_resumed_run_continues_the_average_and_the_trained_weights(tmp_path):
    _noisy_run(tmp_path / "whole", ema=0.98, steps=120)
    _noisy_run(tmp_path / "halves", ema=0.98, steps=120, stop_at=50)
    _noisy_run(tmp_path / "halves", ema=0.98, steps=120)
    whole, _ = load_checkpoint(tmp_path / "whole" / "latest.safetensors")
    halves, _ = load_checkpoint(tmp_path / "halves" / "latest.safetensors")
    for prefix in (MODEL, TRAINED):
        assert torch.allclose(with_prefix(whole, prefix)["weight"], with_prefix(halves, prefix)["weight"], atol=1e-6)


def test_a_decay_outside_zero_to_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="ema is a decay"):
        _noisy_run(tmp_path, ema=1.5, steps=2)
