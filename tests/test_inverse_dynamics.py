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


def test_shown_judges_each_step_of_a_rollout_from_the_frame_before_it(judge_run):
    from worldsim.dataset import episode_paths, read_episode

    root, _ = judge_run
    judge = load_inverse_dynamics(root / "run" / "latest.safetensors", "worldsim/Rooms-v0")
    ep = read_episode(episode_paths(root / "data", "test")[0])
    frames, actions = ep.frames[:21], ep.actions[:20].astype(int)
    shown = judge.shown(frames[None, 0], frames[None, 1:], actions[None])
    direct = judge.predict(torch.from_numpy(frames[:-1]), torch.from_numpy(frames[1:])).numpy() == actions
    assert shown.shape == (1, 20) and (shown[0] == direct).all()


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
