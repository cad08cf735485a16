"""The pixel world model: U-Net dynamics and reward/end network (worldsim/pixel_dynamics.py),
trained by `worldsim train pixel` on real TakeCover frames, exported, and stepped as the
dream env."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import worldsim  # noqa: F401  (registers worldsim/Dream-v0)
from training.collect import collect
from training.train_pixel import Transitions, TrainConfig, head_scores, train
from worldsim.checkpoint import CheckpointError, load_checkpoint
from worldsim.dream_env import load_world_model
from worldsim.export import export_pixel_world_model
from worldsim.pixel_dynamics import PixelDynamics, PixelDynamicsConfig, RewardEndNet, as_shown, change_weights
from worldsim.pixel_world_model import PixelWorldModel

TINY = dict(steps=12, batch_size=4, width=8, warmup=2, ckpt_every=6, log_every=3, eval_transitions=64)


@pytest.fixture(scope="module")
def takecover(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixel")
    collect("worldsim/Vizdoom-TakeCover-v0", "random", steps=300, out=str(root / "data"), num_envs=1, seed=3,
            progress=False)
    summary = train(TrainConfig(data=str(root / "data"), out=str(root / "run"), **TINY), progress=False)
    export_pixel_world_model(str(root / "run" / "latest.safetensors"), str(root / "world.safetensors"))
    return root, summary


def test_transitions_pad_an_episodes_start_and_pair_each_frame_with_the_action_before_it(takecover):
    from worldsim.dataset import episode_paths, read_episode

    root, _ = takecover
    data = Transitions(root / "data", "train", context=4)
    first = read_episode(episode_paths(root / "data", "train")[0])
    ctx, target, action, reward, ended, past = data.batch(np.array([0, 5]))
    unit = lambda f: torch.from_numpy(f).float().div(127.5).sub(1).movedim(-1, -3)  # noqa: E731
    # Frame 1's context is frame 0 four times; frame 6's is frames 2..5.
    assert torch.equal(ctx[0], unit(first.frames[[0, 0, 0, 0]]))
    assert torch.equal(ctx[1], unit(first.frames[2:6])) and torch.equal(target[1], unit(first.frames[6]))
    assert action.tolist() == [first.actions[0], first.actions[5]]
    assert reward.tolist() == [first.rewards[0], first.rewards[5]]
    # The actions between the context frames: none between frame 0's repeats; frames 2..5 had actions 2..4 between them.
    assert past[0].tolist() == [-1, -1, -1] and past[1].tolist() == first.actions[2:5].tolist()
    assert len(data) == sum(len(read_episode(p).frames) - 1 for p in episode_paths(root / "data", "train"))
    assert data.ends.sum() == sum(read_episode(p).terminated.sum() for p in episode_paths(root / "data", "train"))


def test_training_writes_a_resumable_run_and_scores_the_heads_on_held_out_ends(takecover):
    root, summary = takecover
    assert summary["step"] == TINY["steps"] and np.isfinite(summary["last_batch"]["denoise"])
    scores = summary["scores"]
    assert scores["ends"] >= 1 and 0 <= scores["end_recall"] <= 1 and scores["always_alive_accuracy"] < 1
    _, config = load_checkpoint(root / "run" / "latest.safetensors")
    assert config["kind"] == "pixel" and config["pixel"]["channels"] == [8, 16, 16]
    # Asking for more steps continues the run from its checkpoint.
    more = train(TrainConfig(data=str(root / "data"), out=str(root / "run"), **{**TINY, "steps": 15}), progress=False)
    assert more["step"] == 15


def test_heads_only_leaves_the_dynamics_as_init_gave_it(takecover, tmp_path):
    root, _ = takecover
    world = str(root / "world.safetensors")
    before = PixelWorldModel.load(world)
    train(TrainConfig(data=str(root / "data"), out=str(tmp_path / "heads"), init=world, heads_only=True,
                      **{**TINY, "steps": 5}), progress=False)
    export_pixel_world_model(str(tmp_path / "heads" / "latest.safetensors"), str(tmp_path / "w.safetensors"))
    after = PixelWorldModel.load(tmp_path / "w.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(before.dynamics.state_dict().values(),
                                                  after.dynamics.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(before.heads.state_dict().values(),
                                                      after.heads.state_dict().values()))
    with pytest.raises(ValueError, match="give --init"):
        train(TrainConfig(data=str(root / "data"), out=str(tmp_path / "x"), heads_only=True, **TINY), progress=False)


def test_heads_on_dreams_read_the_frame_the_dynamics_draws(takecover, tmp_path):
    from training.train_pixel import PixelNets, init_from, network_config

    root, _ = takecover
    data = Transitions(root / "data", "train", context=4)
    nets = PixelNets(network_config(TrainConfig(data="", out="", **TINY), data.meta))
    init_from(nets, str(root / "world.safetensors"))
    ctx, target, action, reward, ended, past = batch = data.batch(np.arange(6))
    torch.manual_seed(0)
    on_dreams, _ = nets.loss(batch, 10.0, heads_only=True, on_dreams=True)
    torch.manual_seed(0)
    dreamed = nets.dynamics.sample(ctx, action)
    assert torch.equal(on_dreams, nets.heads.loss(ctx, action, as_shown(dreamed), reward, ended, 10.0))
    assert not torch.equal(on_dreams, nets.heads.loss(ctx, action, target, reward, ended, 10.0))
    summary = train(TrainConfig(data=str(root / "data"), out=str(tmp_path / "dreams"), init=str(root / "world.safetensors"),
                                heads_only=True, on_dreams=True, **{**TINY, "steps": 3}), progress=False)
    test = len(Transitions(root / "data", "test", context=4))
    assert summary["step"] == 3 and summary["scores"]["transitions"] == min(test, TINY["eval_transitions"])
    with pytest.raises(ValueError, match="add --heads-only"):
        train(TrainConfig(data=str(root / "data"), out=str(tmp_path / "x"), on_dreams=True, **TINY), progress=False)


def test_rollout_rows_learn_from_a_context_the_model_dreamed_from_the_real_frames_before_it(takecover, tmp_path):
    from training.train_pixel import PixelNets, init_from, network_config

    root, _ = takecover
    nets = PixelNets(network_config(TrainConfig(data="", out="", **TINY), Transitions(root / "data", "train", 4).meta))
    init_from(nets, str(root / "world.safetensors"))
    wide = Transitions(root / "data", "train", context=6)  # 4 context frames and the 2 they are dreamed from
    window, _, _, _, _, past = wide.batch(np.array([0, 10, 11]))  # an episode's first transition (all padding), two deep ones
    torch.manual_seed(0)
    ctx, ctx_past = nets.dynamics.dreamed_context(window, past, torch.tensor([True, True, False]))
    torch.manual_seed(0)  # the first dreamed frame of row 1: sampled from the 4 real frames before it, with its real action
    first = as_shown(nets.dynamics.sample(window[1:2, 0:4], past[1:2, 3], past=past[1:2, 0:3]))
    assert ctx.shape == (3, 4, 3, 64, 64) and torch.equal(ctx_past, past[:, 2:])
    assert torch.equal(ctx[0], window[0, 2:]) and torch.equal(ctx[2], window[2, 2:])  # padding, and a row not drawn
    assert torch.equal(ctx[1, :2], window[1, 2:4]) and torch.equal(ctx[1, 2], first[0])
    assert not torch.equal(ctx[1, 3], window[1, 5])
    summary = train(TrainConfig(data=str(root / "data"), out=str(tmp_path / "roll"), init=str(root / "world.safetensors"),
                                rollout_share=0.5, **{**TINY, "steps": 3}), progress=False)
    assert summary["step"] == 3 and np.isfinite(summary["last_batch"]["denoise"])
    for bad, match in (({"rollout_share": 1.5}, "share of the rows"), ({"rollout_share": 0.5, "rollout_frames": 5}, "1 to 4"),
                       ({"rollout_share": 0.5, "heads_only": True, "init": str(root / "world.safetensors")}, "--heads-only")):
        with pytest.raises(ValueError, match=match):
            train(TrainConfig(data=str(root / "data"), out=str(tmp_path / "x"), **{**TINY, **bad}), progress=False)


def test_the_dream_env_steps_a_pixel_world_model_and_forks_exactly(takecover):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    root, _ = takecover
    world = str(root / "world.safetensors")
    assert isinstance(load_world_model(world), PixelWorldModel)
    env = gym.make("worldsim/Dream-v0", checkpoint=world, env_id="worldsim/Vizdoom-TakeCover-v0")
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped)
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and info["context_frames"] == 4 and info["memory_frames"] == 0
    state = env.unwrapped.get_state()

    def play():  # up to 4 steps: a tiny model's end head may end the episode sooner
        shown = []
        for a in (0, 1, 2, 2):
            obs, reward, terminated, truncated, _ = env.step(a)
            shown.append((obs, reward, terminated))
            if terminated or truncated:
                break
        return shown

    first = play()
    env.unwrapped.set_state(state)
    again = play()
    assert len(first) == len(again) and all(np.array_equal(a[0], b[0]) and a[1:] == b[1:] for a, b in zip(first, again))
    env.reset(seed=1)
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(3)
    with pytest.raises(ValueError, match="no memory"):
        gym.make("worldsim/Dream-v0", checkpoint=world, memory=True)
    envs = gym.make_vec("worldsim/Dream-v0", num_envs=3, vectorization_mode="vector_entry_point", checkpoint=world,
                        obs_type="latent", uncertainty=True)
    obs, _ = envs.reset(seed=0)
    obs, rewards, terminated, truncated, infos = envs.step(np.array([0, 1, 2]))
    assert obs.shape == (3, 3, 64, 64) and obs.min() >= -1 and obs.max() <= 1
    assert rewards.shape == (3,) and (infos["uncertainty"] > 0).all()


def test_a_dream_reads_back_the_frames_it_shows(takecover):
    """Each dreamed frame, rounded to 8 bits as shown, is the context of the next step:
    rolling out two steps equals one step, then one step from the shown frames."""
    root, _ = takecover
    model = load_world_model(str(root / "world.safetensors"))
    frames = np.stack([model.start_frames[:1].repeat(4, 0)] * 2)
    two, _, _ = model.rollout(frames, np.zeros((2, 3), int), np.array([[1, 2], [0, 0]]), seed=5)
    core = model.new_core(2)
    core.reset_rows([0, 1], [(f, None) for f in frames], None)
    g = torch.Generator().manual_seed(5)
    core.step(np.array([1, 0]), g)
    assert np.array_equal(model.decode(core.last).numpy(), two[:, 0])
    ctx = np.concatenate([frames[:, 1:], two[:, :1]], 1)
    core.reset_rows([0, 1], [(f, None) for f in ctx], None)
    core.step(np.array([2, 0]), g)
    assert np.array_equal(model.decode(core.last).numpy(), two[:, 1])


def test_head_scores_count_ends_as_a_detector():
    class Called(torch.nn.Module):  # calls an end where the next frame is bright
        def forward(self, ctx, action, nxt):
            return torch.zeros(len(nxt)), (nxt.mean(dim=(1, 2, 3)) > 0).float() * 20 - 10

    class Data:
        frames = np.zeros((6, 4, 4, 3), np.uint8)
        frames[[2, 3]] = 255
        rewards, ends = np.ones(5, np.float32), np.array([0, 1, 0, 1, 0], np.float32)

        def __len__(self):
            return 5

        def batch(self, idx):
            unit = lambda a: torch.from_numpy(a).float().div(127.5).sub(1).movedim(-1, -3)  # noqa: E731
            return unit(self.frames[idx][:, None]), unit(self.frames[idx + 1]), torch.zeros(len(idx), dtype=torch.long), None, None, None

    # Called at transitions 1 and 2 (into frames 2, 3); true ends at 1 and 3.
    s = head_scores(Called(), Data(), 5, mean_reward=1.5)
    assert (s["end_precision"], s["end_recall"], s["ends"]) == (0.5, 0.5, 2)
    assert s["reward_mae"] == 1.0 and s["mean_reward_mae"] == 0.5 and s["always_alive_accuracy"] == pytest.approx(0.6)


def test_the_denoiser_learns_and_samples_frames_in_range():
    torch.manual_seed(0)
    net = PixelDynamics(PixelDynamicsConfig(frame_size=(16, 16), channels=(8, 16), cond=16))
    ctx = torch.rand(4, 4, 3, 16, 16) * 2 - 1
    target = ctx[:, -1].clone()  # the next frame repeats the last: learnable in a few steps
    action = torch.zeros(4, dtype=torch.long)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sigma, noise = torch.full((4,), 1.0), torch.randn_like(target)
    first = None
    for _ in range(60):
        loss = (net.denoise(target + noise, sigma, ctx.flatten(1, 2), action) - target).pow(2).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    frames = net.sample(ctx, action, steps=3, generator=torch.Generator().manual_seed(0))
    assert frames.shape == (4, 3, 16, 16) and frames.abs().max() <= 1


def test_change_weights_favour_what_the_context_saw_move_and_never_read_the_target():
    ctx = torch.zeros(2, 4, 3, 32, 32)
    ctx[0, -2, :, 4:6, 4:6] = 1.0  # a small thing in row 0 ...
    ctx[0, -1, :, 4:6, 6:8] = 1.0  # ... moves two pixels right in the context's last step
    w = change_weights(ctx, 4.0)
    assert w.shape == (2, 1, 32, 32)
    assert w[0, 0, 5, 9] > 10 and w[0, 0, 5, 11] == 1  # two pixels past it still counts; five do not
    assert torch.all(w[1] == 1) and torch.all(w[0, 0, 20:, 20:] == 1)
    assert change_weights(ctx, 0.0) == 1.0 and change_weights(ctx[:, -1:], 4.0) == 1.0  # off, or no step to read
    # The loss weighs an error where things moved above the same error on still ground,
    # and the target never moves the weights: only its error does.
    torch.manual_seed(0)
    net = PixelDynamics(PixelDynamicsConfig(frame_size=(32, 32), channels=(8, 16), cond=16, context=4))
    action = torch.zeros(2, dtype=torch.long)
    target_moved, target_still = ctx[:, -1].clone(), ctx[:, -1].clone()
    target_moved[0, :, 4:6, 8:10] += 0.5
    target_still[0, :, 24:26, 24:26] += 0.5

    def loss(target, weight):
        torch.manual_seed(1)
        return net.loss(ctx, target, action, change_weight=weight).item()

    assert loss(target_moved, 4.0) - loss(ctx[:, -1], 4.0) > 2 * (loss(target_still, 4.0) - loss(ctx[:, -1], 4.0))
    assert loss(target_moved, 0.0) == pytest.approx(loss(target_still, 0.0), rel=0.05)


def test_action_guidance_steers_away_from_the_prediction_without_the_action():
    torch.manual_seed(0)
    cfg = PixelDynamicsConfig(frame_size=(16, 16), channels=(8, 16), cond=16)
    net = PixelDynamics(cfg)
    for p in net.parameters():  # off the identity start, so that the action changes the output
        torch.nn.init.normal_(p, std=0.1)
    x, ctx = torch.randn(3, 3, 16, 16), torch.randn(3, 12, 16, 16)
    sigma, action = torch.full((3,), 0.7), torch.tensor([0, 1, 2])
    with torch.no_grad():
        d = net.denoise(x, sigma, ctx, action)
        d_null = net.denoise(x, sigma, ctx, action, has_action=torch.zeros(3, dtype=torch.bool))
        assert torch.equal(net.guided(x, sigma, ctx, action), d)  # no guidance by default
        assert not torch.allclose(d, d_null)
        net.cfg.action_guidance = 1.5
        torch.testing.assert_close(net.guided(x, sigma, ctx, action), d + 1.5 * (d - d_null), rtol=1e-4, atol=1e-5)
        # Without the action, the action's embedding is left out: any action gives the same output.
        none = torch.zeros(3, dtype=torch.bool)
        torch.testing.assert_close(net.denoise(x, sigma, ctx, torch.tensor([2, 0, 1]), none), d_null)


def test_action_dropout_trains_and_export_sets_guidance_only_where_it_was_learnt(takecover, tmp_path):
    root, _ = takecover
    with pytest.raises(CheckpointError, match="action-dropout"):  # the run learnt no action-free prediction
        export_pixel_world_model(str(root / "run" / "latest.safetensors"), str(tmp_path / "w.safetensors"), action_guidance=1.0)
    train(TrainConfig(data=str(root / "data"), out=str(tmp_path / "run"), action_dropout=0.5,
                      init=str(root / "run" / "latest.safetensors"), **{**TINY, "steps": 3}), progress=False)
    export_pixel_world_model(str(tmp_path / "run" / "latest.safetensors"), str(tmp_path / "w.safetensors"),
                             action_guidance=1.0)
    model = PixelWorldModel.load(tmp_path / "w.safetensors")
    assert model.dynamics.cfg.action_guidance == 1.0
    frames = model.dynamics.sample(torch.zeros(2, 4, 3, 64, 64), torch.tensor([0, 2]), steps=2)
    assert frames.shape == (2, 3, 64, 64) and frames.abs().max() <= 1


def test_past_actions_condition_the_frame_and_the_dream_keeps_them(takecover, tmp_path):
    root, _ = takecover
    # A run that reads past actions grows from one that did not: their embedding starts at zero, so at first it draws
    # exactly what the model it grew from draws.
    run = train(TrainConfig(data=str(root / "data"), out=str(tmp_path / "run"), init=str(root / "world.safetensors"),
                            past_actions=3, **{**TINY, "steps": 1, "lr": 0.0}), progress=False)
    assert run["step"] == 1
    export_pixel_world_model(str(tmp_path / "run" / "latest.safetensors"), str(tmp_path / "grown.safetensors"))
    grown, before = (PixelWorldModel.load(p) for p in (tmp_path / "grown.safetensors", root / "world.safetensors"))
    assert grown.dynamics.cfg.past_actions == 3 and torch.all(grown.dynamics.past.weight == 0)
    ctx, action, past = torch.rand(2, 4, 3, 64, 64) * 2 - 1, torch.tensor([1, 2]), torch.tensor([[0, 1, 2], [-1, 2, 2]])
    same = lambda m, p: m.dynamics.sample(ctx, action, generator=torch.Generator().manual_seed(0), past=p)  # noqa: E731
    assert torch.equal(same(grown, past), same(before, None))
    with torch.no_grad():
        torch.nn.init.normal_(grown.dynamics.past.weight)
    assert not torch.equal(same(grown, past), same(grown, torch.full_like(past, -1)))  # they are read
    assert torch.equal(same(grown, torch.tensor([[-1, -1, -1], [-1, -1, -1]])), same(grown, None))  # unknown: left out
    # The dream keeps the actions between its context frames: from a reset's context, then each step's.
    core = grown.new_core(2)
    frames = np.zeros((3, 64, 64, 3), np.uint8)
    core.reset_rows([0, 1], [(frames, np.array([2, 1])), (frames[:1], np.zeros(0, np.int64))], torch.Generator())
    assert core.past.tolist() == [[-1, 2, 1], [-1, -1, -1]]
    core.step(np.array([0, 1]), torch.Generator().manual_seed(0))
    assert core.past.tolist() == [[2, 1, 0], [-1, -1, 1]]
    with pytest.raises(ValueError, match="past_actions"):
        PixelDynamicsConfig(context=4, past_actions=4)


def test_bad_files_and_configs_are_refused(takecover, tmp_path):
    root, _ = takecover
    with pytest.raises(ValueError, match="divisible by 4"):
        PixelDynamicsConfig(frame_size=(30, 30))
    with pytest.raises(CheckpointError, match="expected a pixel run"):
        export_pixel_world_model(str(root / "world.safetensors"), str(tmp_path / "x.safetensors"))
    with pytest.raises(CheckpointError, match="expected a pixel_world_model"):
        PixelWorldModel.load(root / "run" / "latest.safetensors")


def test_the_end_loss_weighs_ends_up_yet_learns_their_frequency():
    """Ends weighted 10x, the network's own probability still settles on the share of ends."""
    class Constant(RewardEndNet):
        def forward(self, ctx, action, nxt):
            return torch.zeros(len(nxt)), self.logit.expand(len(nxt))

    net = Constant(PixelDynamicsConfig(frame_size=(8, 8), channels=(8, 8)))
    net.logit = torch.nn.Parameter(torch.zeros(1))
    ended = (torch.arange(100) < 10).float()  # 10% of the transitions end
    opt = torch.optim.Adam([net.logit], lr=0.05)
    for _ in range(400):
        loss = net.loss(None, None, torch.zeros(100, 3, 8, 8), torch.zeros(100), ended, end_weight=10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.sigmoid(net.logit).item() == pytest.approx(0.10, abs=0.01)


def test_batches_rich_in_ends_still_teach_the_ends_frequency(takecover):
    """--end-share draws that share of each batch from episodes' ends; the loss undoes the
    bias, so a network that sees ends in half its batch still learns their rate."""
    root, _ = takecover
    data = Transitions(root / "data", "train", context=4)
    idx = data.draw(np.random.default_rng(0), 8, end_share=0.25)
    assert len(idx) == 8 and data.ends[idx[:2]].all()
    p = float(data.ends.mean())
    assert data.oversampled(8, 0.25) == pytest.approx((0.25 + 0.75 * p) / (0.75 - 0.75 * p) * (1 - p) / p)
    assert data.oversampled(8, 0.0) == pytest.approx(1.0)

    class Constant(RewardEndNet):
        def forward(self, ctx, action, nxt):
            return torch.zeros(len(nxt)), self.logit.expand(len(nxt))

    net = Constant(PixelDynamicsConfig(frame_size=(8, 8), channels=(8, 8)))
    net.logit = torch.nn.Parameter(torch.zeros(1))
    ended = (torch.arange(100) < 50).float()  # half of each batch ends, where a tenth of the data does
    opt = torch.optim.Adam([net.logit], lr=0.05)
    for _ in range(400):
        loss = net.loss(None, None, torch.zeros(100, 3, 8, 8), torch.zeros(100), ended, end_weight=1.0,
                        oversampled=(0.5 / 0.5) / (0.1 / 0.9))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.sigmoid(net.logit).item() == pytest.approx(0.10, abs=0.01)


def test_calibrated_ends_make_replayed_episodes_end_as_often_as_they_did(takecover):
    """Rows replay the split's episodes two at a time, a row taking the next episode when
    its own is over; after the shift the same replay ends as often per step as the data."""
    from worldsim.dataset import episode_paths, read_episode
    from worldsim.replay import calibrate_ends

    root, _ = takecover
    model = PixelWorldModel.load(root / "world.safetensors")
    episodes = [read_episode(p) for p in episode_paths(root / "data", "train")]
    assert len(episodes) > 2  # more episodes than rows: rows are refilled
    bias = model.heads.head[-1].bias[1].item()
    report = calibrate_ends(model, root / "data", split="train", batch=2, seed=3)
    assert report["dreamed_steps"] == sum(len(e) for e in episodes)
    assert report["real_ends"] == sum(int(e.terminated.sum()) for e in episodes) > 0
    assert model.heads.head[-1].bias[1].item() == pytest.approx(bias + report["logit_shift"], abs=1e-5)
    again = calibrate_ends(model, root / "data", split="train", batch=2, seed=3)
    assert again["dream_ends_per_step_before"] == pytest.approx(report["real_ends_per_step"], rel=0.01)
    assert abs(again["logit_shift"]) < 0.01 and abs(report["logit_shift"]) > 0.1


def test_an_agent_trains_in_a_pixel_dream_and_is_scored_in_the_real_game(takecover, tmp_path):
    from agents.imagine import ImagineConfig, imagine

    root, _ = takecover
    report = imagine(ImagineConfig(checkpoint=str(root / "world.safetensors"), out=str(tmp_path / "run"), steps=64,
                                   num_envs=2, horizon=10, frame_stack=2, eval_episodes=2), progress=False)
    assert report["env_id"] == "worldsim/Vizdoom-TakeCover-v0" and report["dream_steps"] >= 64
    # TakeCover pays 4 a step (frame skip 4) for each step alive, at most 10 steps here.
    assert len(report["real"]["returns"]) == 2 and 0 < report["real"]["mean"] <= 40
