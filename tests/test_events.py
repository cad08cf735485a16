"""Counted events (Crafter's achievements): the heads detect them, the dream pays each once an episode."""

import shutil

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worldsim.dynamics import Dynamics, DynamicsConfig, RewardEndHead
from worldsim.objective import heads_loss


def test_the_reward_head_learns_the_reward_less_the_events_new_to_the_episode():
    torch.manual_seed(0)
    model = Dynamics(DynamicsConfig(latent_shape=(4, 4, 4), d_model=32, n_layers=2, n_heads=2, max_frames=6,
                                    events=("a", "b")))
    z, actions = torch.randn(2, 4, 4, 4, 4), torch.randint(0, 7, (2, 3))
    # Row 0: a rises at step 1 (new: it pays 1) and again at step 2 (had already: pays nothing).
    # Row 1: b was had before the window and rises at step 0 (not new), a is new at step 2.
    counts = torch.tensor([[[0, 0], [0, 0], [1, 0], [2, 0]],
                           [[0, 1], [0, 2], [0, 2], [1, 2]]])
    rewards = torch.tensor([[0.0, 1.0, 0.0], [-0.1, 0.0, 1.2]])
    terminated = torch.zeros(2, 3, dtype=torch.bool)
    total, metrics = heads_loss(model, z, actions, rewards, terminated, events=counts)
    weighted, _ = heads_loss(model, z, actions, rewards, terminated, events=counts, reward_weight=10.0)
    assert (weighted - total).item() == pytest.approx(9 * metrics["reward_mse"], rel=1e-4)
    reward, _, logits = model.heads(z[:, :-1].flatten(0, 1), z[:, 1:].flatten(0, 1), actions.flatten())
    target = torch.tensor([0.0, 0.0, 0.0, -0.1, 0.0, 0.2])
    assert metrics["reward_mse"] == pytest.approx(F.mse_loss(reward, target).item(), rel=1e-5)
    rose = torch.tensor([[0, 0], [1, 0], [1, 0], [0, 1], [0, 0], [1, 0]], dtype=torch.float32)
    bce = F.binary_cross_entropy_with_logits(logits, rose, reduction="none").sum(1).mean()
    assert metrics["event_bce"] == pytest.approx(bce.item(), rel=1e-5)
    with pytest.raises(ValueError, match="detect 2 events; the batch gives None"):
        heads_loss(model, z, actions, rewards, terminated)


def test_an_event_pays_once_per_row():
    unlocked = torch.tensor([[False, False], [True, False]])
    logits = torch.tensor([[3.0, -3.0], [3.0, 3.0]])  # both rows detect a; row 1 also b
    reward, unlocked = RewardEndHead.paid(torch.tensor([0.5, 0.0]), logits, unlocked)
    assert reward.tolist() == [1.5, 1.0] and unlocked.tolist() == [[True, False], [True, True]]
    reward, unlocked = RewardEndHead.paid(torch.zeros(2), logits, unlocked)
    assert reward.tolist() == [0.0, 0.0]


def with_counts(pipeline, tmp_path):
    """The pipeline's latents with two counted events: the first rises on each FORWARD
    (action 1), the second never; rewards as Crafter pays them (1 at a first rise)."""
    from worldsim.dataset import episode_paths

    data = tmp_path / "latents"
    shutil.copytree(pipeline[0] / "latents", data)
    for path in episode_paths(data):
        with h5py.File(path, "r+") as f:
            rose = f["actions"][()] == 1
            counts = np.zeros((len(rose) + 1, 2), np.int32)
            counts[1:, 0] = np.cumsum(rose)
            f["gt/achievements"] = counts
            f["rewards"][...] = ((counts[1:, 0] == 1) & (counts[:-1, 0] == 0)).astype(np.float32)
    return data


def test_heads_only_training_adds_event_heads_and_leaves_the_transformer(pipeline, tmp_path):
    from training.train_dynamics import TrainConfig, build, train
    from worldsim.checkpoint import load_checkpoint, with_prefix
    from worldsim.dataset import load_meta

    root, _, _ = pipeline
    data = with_counts(pipeline, tmp_path)
    init = str(root / "dyn" / "latest.safetensors")
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "heads"), config="tiny", init=init, events="achievements",
                      heads_only=True, steps=30, batch_size=8, lr=3e-3, warmup=2, ckpt_every=30, log_every=5)
    before = build(cfg, load_meta(data))
    source = with_prefix(load_checkpoint(init)[0], "model/")
    assert before.cfg.events == ("achievements[0]", "achievements[1]")  # the Rooms env names none
    assert torch.equal(before.heads.out[2].weight[:2], source["heads.out.2.weight"].float())  # reward and end carry over
    train(cfg, progress=False)
    after = with_prefix(load_checkpoint(tmp_path / "heads" / "latest.safetensors")[0], "model/")
    for name, value in source.items():
        if not name.startswith("heads."):
            assert torch.equal(after[name], value), name
    assert not torch.equal(after["heads.conv.0.weight"], source["heads.conv.0.weight"])
    lines = (tmp_path / "heads" / "metrics.csv").read_text().splitlines()
    assert "event_bce" in lines[0] and "denoise_mse" not in lines[0]

    base = dict(data=str(data), config="tiny", steps=1, batch_size=2)
    with pytest.raises(ValueError, match="no gt/inventory; they have"):
        train(TrainConfig(out=str(tmp_path / "a"), events="inventory", **base), progress=False)
    with pytest.raises(ValueError, match="needs --init"):
        train(TrainConfig(out=str(tmp_path / "b"), heads_only=True, **base), progress=False)
    with pytest.raises(ValueError, match="--events does not combine with --memory"):
        train(TrainConfig(out=str(tmp_path / "c"), events="achievements", memory=2, **base), progress=False)
    from worldsim.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match=r"counts events \(2 of them\): pass --events"):
        train(TrainConfig(out=str(tmp_path / "d"), init=str(tmp_path / "heads" / "latest.safetensors"), **base),
              progress=False)


@pytest.fixture
def event_world(pipeline, tmp_path):
    """The heads-only run exported, its heads rigged to detect both events on every step and
    pay nothing else."""
    from training.train_dynamics import TrainConfig, train
    from worldsim.export import export_world_model
    from worldsim.world_model import WorldModel

    data = with_counts(pipeline, tmp_path)
    train(TrainConfig(data=str(data), out=str(tmp_path / "heads"), config="tiny", events="achievements",
                      heads_only=True, init=str(pipeline[0] / "dyn" / "latest.safetensors"), steps=2, batch_size=2),
          progress=False)
    export_world_model(str(tmp_path / "heads" / "latest.safetensors"), str(tmp_path / "world.safetensors"))
    model = WorldModel.load(tmp_path / "world.safetensors")
    with torch.no_grad():
        out = model.dynamics.heads.out[2]
        out.weight.zero_()
        out.bias.copy_(torch.tensor([0.0, -20.0, 20.0, 20.0]))
    return model, data


def test_the_dream_pays_each_event_once_an_episode_and_forks_with_it(event_world):
    from worldsim.dream_env import DreamEnv, DreamVectorEnv

    model, _ = event_world
    env = DreamEnv(checkpoint=model)
    env.reset(seed=0)
    _, reward, *_, info = env.step(0)
    assert reward == 2.0 and info["events"].tolist() == [True, True]
    state = env.get_state()
    assert [env.step(0)[1] for _ in range(2)] == [0.0, 0.0]
    env.set_state(state)
    assert env.step(0)[1] == 0.0  # the fork remembers what its episode had
    env.reset(seed=1)
    assert env.step(0)[1] == 2.0  # a new episode has had nothing
    vec = DreamVectorEnv(num_envs=2, checkpoint=model)
    vec.reset(seed=0)
    assert vec.step(np.zeros(2, np.int64))[1].tolist() == [2.0, 2.0]
    vec.reset(options={"reset_mask": np.array([True, False])})
    assert vec.step(np.zeros(2, np.int64))[1].tolist() == [2.0, 0.0]


def test_head_detection_scores_the_events_and_the_paid_returns(event_world, rooms_dataset, tmp_path):
    from worldsim.dataset import DatasetWriter, Episode, episode_paths, load_meta
    from worldsim.replay import heads_detection

    model, _ = event_world
    with torch.no_grad():  # detect the first event on every step, never the second
        model.dynamics.heads.out[2].bias[3] = -20.0
    shape = load_meta(rooms_dataset)["frame_shape"]
    rng = np.random.default_rng(0)
    counts = np.array([[0, 0], [0, 0], [1, 0], [2, 0], [2, 0]], np.int32)  # the first rises at steps 1 and 2
    writer = DatasetWriter(tmp_path / "frames", load_meta(rooms_dataset))
    writer.write(Episode(frames=rng.integers(0, 256, (5, *shape), dtype=np.uint8), actions=np.zeros(4, np.int64),
                         rewards=np.array([0, 1, -0.1, 0], np.float32), terminated=np.zeros(4, bool),
                         truncated=np.array([0, 0, 0, 1], bool), gt={"achievements": counts}))
    (split,) = {p.parent.name for p in episode_paths(tmp_path / "frames")}
    result = heads_detection(model, str(tmp_path / "frames"), split)
    assert result["events"] == {"events": 2, "predicted": 4, "precision": 0.5, "recall": 1.0}
    assert result["unlocks"] == {"events": 1, "predicted": 1, "precision": 0.0, "recall": 0.0}  # paid at step 0, not 1
    assert result["returns"] == {"episodes": 1, "paid": 1.0, "real": pytest.approx(0.9)}
    rest = result["reward_rest"]  # the head pays 0 besides events; the rest is the health-like -0.1
    assert rest["corr"] is None and rest["mse"] == pytest.approx(0.01 / 4)
    assert rest["mse_of_the_mean"] == pytest.approx(np.var([0, 0, -0.1, 0]))


def test_reward_share_with_events_draws_windows_whose_last_step_has_an_event(pipeline, tmp_path):
    from training.train_dynamics import LatentWindows

    data = with_counts(pipeline, tmp_path)
    batch = LatentWindows(str(data), 4, seed=0, reward_share=0.5, events="achievements").batch(16, 0, 0)
    counts = batch["events"]
    assert (counts[:8, -1] > counts[:8, -2]).any(-1).all()  # the drawn half ends on a step with an event
    assert (batch["rewards"][:8, -1] == 0).any()  # an event the episode had already: drawn, though it paid nothing
