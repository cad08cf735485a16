"""The inverse dynamics model learns which action led from one real frame to the next, and
the control probe's second reading asks it about each dreamed step."""

import json

import numpy as np
import pytest
import torch

from training.collect import collect
from worldsim import probes as P
from worldsim.checkpoint import CheckpointError
from worldsim.inverse_dynamics import InverseDynamics, InverseDynamicsConfig, export_inverse_dynamics, load_inverse_dynamics

CONTEXT = 11


@pytest.fixture(scope="module")
def judge_run(tmp_path_factory):
    """A small judge trained on a random policy's Rooms play (every action in its share)."""
    from training.train_inverse_dynamics import TrainConfig, train

    root = tmp_path_factory.mktemp("judge")
    collect("worldsim/Rooms-v0", "random", steps=2000, out=str(root / "data"), num_envs=2, seed=0,
            env_kwargs={"max_steps": 100, "world_seed": None}, progress=False)
    summary = train(TrainConfig(data=str(root / "data"), out=str(root / "run"), steps=150, batch_size=64, width=16,
                                warmup=10, ckpt_every=150, eval_pairs=512), progress=False)
    return root, summary


def test_the_judge_reads_actions_from_real_pairs_far_above_guessing(judge_run):
    root, summary = judge_run
    scores = json.loads((root / "run" / "scores.json").read_text())
    assert 100 <= scores["pairs"] <= 512 and np.array(scores["confusion"]).sum() == scores["pairs"]
    assert scores["most_common_action"] < 0.3  # random play: no action to lean on
    assert scores["accuracy"] > 2 * scores["most_common_action"]
    assert summary["scores"]["accuracy"] == scores["accuracy"]


def test_an_exported_judge_is_the_run_in_half_precision(judge_run, tmp_path):
    root, _ = judge_run
    run = load_inverse_dynamics(root / "run" / "latest.safetensors", "worldsim/Rooms-v0")
    info = export_inverse_dynamics(root / "run" / "latest.safetensors", tmp_path / "judge.safetensors")
    shipped = load_inverse_dynamics(tmp_path / "judge.safetensors", "worldsim/Rooms-v0")
    assert info["parameters"] == sum(p.numel() for p in run.parameters())
    for k, v in run.state_dict().items():
        assert torch.allclose(shipped.state_dict()[k], v.half().float())
    with pytest.raises(CheckpointError, match="judges actions in worldsim/Rooms-v0"):
        load_inverse_dynamics(tmp_path / "judge.safetensors", "worldsim/Vizdoom-TakeCover-v0")
    with pytest.raises(CheckpointError, match="expected an inverse dynamics model"):
        load_inverse_dynamics(_tokenizer_like(tmp_path), None)


def _tokenizer_like(tmp_path):
    from worldsim.checkpoint import save_checkpoint

    path = tmp_path / "other.safetensors"
    save_checkpoint(path, {"model/w": torch.zeros(1)}, {"kind": "tokenizer"})
    return path


def test_the_second_reading_judges_each_step_from_the_dreams_own_previous_frame(judge_run):
    rooms = P.make_rooms(collectible=False)
    cases = P.control_scenarios(rooms, 3, CONTEXT)
    seen = []

    class Recorder(InverseDynamics):  # the real network, its inputs kept
        def predict(self, before, after, batch=512):
            seen.append((before.numpy(), after.numpy()))
            return super().predict(before, after, batch)

    judge = Recorder(InverseDynamicsConfig(n_actions=7))
    preds = [s.target[::-1].copy() for s in cases]  # any frames: what matters is which pairs are judged
    P.score_control(cases, preds, list(range(7)), judge)
    before, after = seen[0]
    horizon = len(cases[0].meta["candidates"])
    assert np.array_equal(before[0], cases[0].frames[CONTEXT - 1])  # the first step: from the last real frame
    assert np.array_equal(before[1:horizon], preds[0][:horizon - 1])  # later: from the dream's own frame
    assert np.array_equal(after[:horizon], preds[0][:horizon])


def test_the_judge_sees_the_real_steps_and_not_a_still_frame(judge_run):
    root, _ = judge_run
    judge = load_inverse_dynamics(root / "run" / "latest.safetensors", "worldsim/Rooms-v0")
    cases = P.control_scenarios(P.make_rooms(collectible=False, world_seed=None), 12, CONTEXT)
    truth = P.score_control(cases, P.ground_truth(cases), list(range(7)), judge)
    still = P.score_control(cases, P.copy_last(cases), list(range(7)), judge)
    assert truth["shown"] > still["shown"] + 0.2
    assert len(truth["shown_by_step"]) == 8 and np.array(truth["shown_confusion"]).sum() == truth["steps"]
    assert "shown by its own step" in P.PROBES["control"].headline(truth)


def test_the_judge_reads_each_step_of_a_rollout_beside_the_frame_before_it(judge_run):
    from worldsim.dataset import episode_paths, read_episode

    root, _ = judge_run
    judge = load_inverse_dynamics(root / "run" / "latest.safetensors", "worldsim/Rooms-v0")
    ep = read_episode(episode_paths(root / "data", "test")[0])
    frames, actions = ep.frames[:21], ep.actions[:20].astype(int)
    judged = judge.read_steps(frames[None, 0], frames[None, 1:])
    direct = judge.predict(torch.from_numpy(frames[:-1]), torch.from_numpy(frames[1:])).numpy()
    assert judged.shape == (1, 20) and (judged[0] == direct).all() and (direct == actions).mean() > 0.3


def test_replays_report_the_judges_reading_between_horizons(judge_run, pipeline, rooms_dataset):
    from worldsim.replay import replay_scores
    from worldsim.world_model import WorldModel

    root, _ = judge_run
    judge = load_inverse_dynamics(root / "run" / "latest.safetensors", "worldsim/Rooms-v0")
    model = WorldModel.load(pipeline[0] / "world.safetensors")
    result = replay_scores(model, str(rooms_dataset), context=4, horizons=(1, 4), count=2, judge=judge)
    for name in ("dream", "copy_last_frame", "tokenizer_ceiling"):
        assert set(result[f"{name}_shown"]) == {"1", "2-4"}
        assert all(0 <= v <= 1 for v in result[f"{name}_shown"].values())
    assert "dream_shown" not in replay_scores(model, str(rooms_dataset), context=4, horizons=(1,), count=1)


@pytest.fixture(scope="module")
def latent_judge_run(judge_run, pipeline):
    """A small judge of latents: the random play above, encoded by the pipeline's tokenizer."""
    from training.train_inverse_dynamics import TrainConfig, train
    from training.train_tokenizer import encode_dataset

    root, _ = judge_run
    encode_dataset(str(pipeline[0] / "tok" / "latest.safetensors"), str(root / "data"), str(root / "latents"),
                   progress=False)
    summary = train(TrainConfig(data=str(root / "latents"), out=str(root / "latent_run"), steps=150, batch_size=64,
                                width=16, warmup=10, ckpt_every=150, eval_pairs=512), progress=False)
    return root / "latent_run" / "latest.safetensors", summary


def test_a_judge_of_latents_reads_actions_from_encoded_pairs(latent_judge_run, judge_run):
    from worldsim.dataset import load_meta

    path, summary = latent_judge_run
    judge = load_inverse_dynamics(path, "worldsim/Rooms-v0", latents=True)
    shape = load_meta(path.parent.parent / "latents")["latent_shape"]
    assert judge.cfg.latents and judge.cfg.channels == shape[0]
    assert summary["scores"]["accuracy"] > 2 * summary["scores"]["most_common_action"]
    with pytest.raises(CheckpointError, match="judges latent frames; expected a judge of frames"):
        load_inverse_dynamics(path, "worldsim/Rooms-v0")
    with pytest.raises(CheckpointError, match="judges pixel frames; expected a judge of latents"):
        load_inverse_dynamics(judge_run[0] / "run" / "latest.safetensors", "worldsim/Rooms-v0", latents=True)


def test_the_judge_loss_is_the_judges_cross_entropy_on_each_predicted_frame_whose_action_was_given(latent_judge_run,
                                                                                                  pipeline):
    import torch.nn.functional as F

    from training.train_dynamics import latent_judge
    from worldsim.dataset import load_meta
    from worldsim.dynamics import Dynamics, DynamicsConfig
    from worldsim.objective import diffusion_forcing_loss

    meta = load_meta(pipeline[0] / "latents")
    judge = latent_judge(latent_judge_run[0], meta)
    model = Dynamics(DynamicsConfig(latent_shape=tuple(meta["latent_shape"]), action_space=meta["action_space"],
                                    d_model=32, n_layers=1, n_heads=2, max_frames=5))
    preds = []
    model.register_forward_hook(lambda module, args, out: preds.append(out))
    z = torch.randn(3, 5, *meta["latent_shape"])
    acts, zeros = torch.randint(0, 7, (3, 4)), torch.zeros(3, 4)
    torch.manual_seed(1)
    loss, m = diffusion_forcing_loss(model, z, acts, zeros, zeros.bool(), judge=judge, judge_weight=0.5)
    expected = F.cross_entropy(judge(z[:, :-1].flatten(0, 1), preds[-1][:, 1:].flatten(0, 1)), acts.flatten())
    assert m["judge_ce"] == pytest.approx(expected.item(), rel=1e-5)
    torch.manual_seed(1)
    plain, _ = diffusion_forcing_loss(model, z, acts, zeros, zeros.bool())
    assert loss.item() == pytest.approx(plain.item() + 0.5 * expected.item(), rel=1e-5)
    loss.backward()  # the judge is frozen: only the world model learns from it
    assert all(p.grad is None for p in judge.parameters()) and model.final.weight.grad.abs().sum() > 0
    torch.manual_seed(1)  # against what the judge reads from the real pair: a blocked step is not drawn as a move
    _, real = diffusion_forcing_loss(model, z, acts, zeros, zeros.bool(), judge=judge, judge_target="real")
    before = z[:, :-1].flatten(0, 1)
    shown = judge(before, z[:, 1:].flatten(0, 1)).softmax(1)
    assert real["judge_ce"] == pytest.approx(F.cross_entropy(judge(before, preds[-1][:, 1:].flatten(0, 1)), shown).item(),
                                             rel=1e-5)
    torch.manual_seed(1)
    _, hidden = diffusion_forcing_loss(model, z, acts, zeros, zeros.bool(), judge=judge, action_dropout=1.0)
    assert hidden["judge_ce"] == 0.0  # no step was given its action: nothing for the judge to ask of it
    with pytest.raises(ValueError, match="reads latents"):
        latent_judge(latent_judge_run[0], {**meta, "latent_shape": [1, 2, 3]})


def test_training_with_a_judge_logs_its_reading(latent_judge_run, judge_run, pipeline, tmp_path):
    from training.train_dynamics import TrainConfig, train

    latents = str(pipeline[0] / "latents")
    train(TrainConfig(data=latents, out=str(tmp_path / "dyn"), config="tiny", steps=3, batch_size=2, warmup=1,
                      ckpt_every=3, log_every=1, judge=str(latent_judge_run[0])), progress=False)
    header, *rows = (tmp_path / "dyn" / "metrics.csv").read_text().splitlines()
    assert {"judge_ce", "judge_shown"} <= set(header.split(",")) and len(rows) == 3
    with pytest.raises(CheckpointError, match="judges pixel frames"):
        train(TrainConfig(data=latents, out=str(tmp_path / "other"), config="tiny", steps=1,
                          judge=str(judge_run[0] / "run" / "latest.safetensors")), progress=False)
