"""Agents trained inside the dream and scored in the real env; the full loop, tiny."""

import numpy as np
import pytest
import torch

from agents.dream_loop import DreamLoopConfig, run_loop
from agents.imagine import ImagineConfig, imagine
from training.train_dynamics import TrainConfig as DynamicsTrainConfig
from training.train_tokenizer import TrainConfig as TokenizerTrainConfig
from worldsim.dataset import episode_paths, open_episode


def test_real_score_comes_from_the_real_env_not_the_dream(pipeline, tmp_path):
    from worldsim.world_model import WorldModel

    model = WorldModel.load(pipeline[0] / "world.safetensors")
    head = model.dynamics.heads.out[-1]
    with torch.no_grad():  # a dream that pays 50 per step, whatever happens
        head.weight.zero_()
        head.bias.copy_(torch.tensor([50.0, -20.0]))
    model.save(tmp_path / "generous.safetensors")
    report = imagine(ImagineConfig(checkpoint=str(tmp_path / "generous.safetensors"), out=str(tmp_path / "run"),
                                   steps=64, num_envs=2, horizon=10, eval_episodes=2), progress=False)
    assert report["dream_return"] > 400  # the dream's own accounting
    assert 0 <= report["real"]["mean"] <= 6  # Rooms pays at most one per object, six objects
    assert len(report["real"]["returns"]) == 2 and report["real"]["length_mean"] == 10
    assert (tmp_path / "run" / "agent.safetensors").exists() and (tmp_path / "run" / "real_episodes.mp4").exists()
    assert (tmp_path / "run" / "dream_curve.png").stat().st_size > 10_000


def test_agents_learn_from_scaled_rewards_and_report_raw_ones(pipeline, tmp_path):
    from agents.imagine import train_in_dream
    from worldsim.world_model import WorldModel

    model = WorldModel.load(pipeline[0] / "world.safetensors")
    head = model.dynamics.heads.out[-1]
    with torch.no_grad():  # a dream that pays 50 per step
        head.weight.zero_()
        head.bias.copy_(torch.tensor([50.0, -20.0]))
    agent, points = train_in_dream(model, ImagineConfig(steps=64, num_envs=2, horizon=10), progress=False)
    assert points and all(r > 400 for _, r in points)  # episodes of 10 steps, reported as the dream pays them
    learnt = agent.rollout_buffer.rewards
    assert 0 < learnt.max() < 20 and learnt.std() < 5  # what PPO's value net fits: scaled near 1, not 50 a step


def test_loop_runs_end_to_end_and_resumes(tmp_path):
    cfg = DreamLoopConfig(out=str(tmp_path / "loop"), real_steps=400, iterations=2, env_kwargs={"max_steps": 60},
                          tokenizer_training=TokenizerTrainConfig(data="", out="", config="tiny", steps=20),
                          dynamics=DynamicsTrainConfig(data="", out="", config="tiny", steps=20, batch_size=4),
                          agent=ImagineConfig(steps=64, num_envs=2, horizon=12, eval_episodes=2))
    result = run_loop(cfg, progress=False)
    history = result["history"]
    assert [h["real_steps"] for h in history] == [200, 400] and [h["iteration"] for h in history] == [1, 2]
    assert history[1]["agent_steps"] > history[0]["agent_steps"] > 0
    assert all(np.isfinite(h["real_return"]) and h["dream_return"] is not None for h in history)
    collected = []
    for path in episode_paths(tmp_path / "loop" / "data"):
        with open_episode(path) as f:
            collected.append(f.attrs["policy"])
    assert "explore" in collected and any(p.endswith("agent") for p in collected)  # the agent collected iteration 2
    assert (tmp_path / "loop" / "curves.png").stat().st_size > 10_000
    again = run_loop(cfg, progress=False)  # everything done: nothing reruns
    assert again["history"] == history


class _PaysForAction(torch.nn.Module):
    """A reward head that pays 1 for `action` and nothing else, and never ends an episode."""

    def __init__(self, action):
        super().__init__()
        self.action = action

    def forward(self, z_prev, z_next, actions):
        return (actions == self.action).float(), torch.full((len(actions),), -20.0), torch.zeros(len(actions), 0)


def test_cmaes_controller_learns_what_the_dream_pays(pipeline, tmp_path):
    from agents.controller import LinearController, train_cmaes
    from worldsim.world_model import WorldModel

    model = WorldModel.load(pipeline[0] / "world.safetensors")
    model.dynamics.heads = _PaysForAction(2)
    cfg = ImagineConfig(algo="cmaes", obs="latent", frame_stack=2, population=8, rollouts=1, horizon=8, steps=8 * 8 * 12)
    controller, curve, mean_in_dream = train_cmaes(model, cfg, progress=False)
    assert len(curve) == 12 and curve[-1][0] == cfg.steps
    assert curve[-1][1] > curve[0][1] and curve[-1][1] >= 7  # of 8 steps, nearly all paid
    assert mean_in_dream() >= 7  # the controller kept (CMA-ES's mean) too
    stacked = (*model.dynamics.cfg.latent_shape[:2], 2 * model.dynamics.cfg.latent_shape[2])
    assert controller.obs_shape == stacked
    obs = np.random.default_rng(0).normal(size=(32, *stacked)).astype(np.float32)
    controller.save(tmp_path / "c")
    again = LinearController.load(tmp_path / "c")
    assert np.array_equal(again.act(obs), controller.act(obs))


def test_frame_stacked_agents_see_the_last_observations_in_the_real_env():
    from agents.imagine import evaluate, real_env

    env = real_env("worldsim/Rooms-v0", {"max_steps": 20}, horizon=5)
    views = []
    result, _ = evaluate(lambda view: views.append(view) or 2, env, episodes=2, seed=0, frame_stack=3)
    assert result["episodes"] == 2 and len(views) == 10 and views[0].shape == (64, 64, 9)
    assert not views[0][..., :6].any() and views[0][..., 6:].any()  # an episode starts with zeros before its frame
    assert np.array_equal(views[1][..., 3:6], views[0][..., 6:])  # the stack moves back by one frame per step
    assert not views[5][..., :6].any()  # the second episode starts afresh
    assert result["stderr"] == result["std"] / 1.0  # two episodes: the standard error is std / sqrt(1)


def test_imagine_with_cmaes_reports_the_exploitation_gap(pipeline, tmp_path):
    import pytest

    import gymnasium as gym

    from agents.policies import make_policy

    cfg = ImagineConfig(checkpoint=str(pipeline[0] / "world.safetensors"), out=str(tmp_path / "run"), algo="cmaes",
                        obs="latent", frame_stack=2, population=4, rollouts=1, horizon=6, steps=4 * 6 * 4,
                        eval_every=40, eval_episodes=2)
    report = imagine(cfg, progress=False)
    gap = report["exploitation_gap"]
    steps = [s for s, _, _ in gap]
    assert len(gap) >= 2 and steps[-1] == report["dream_steps"] >= cfg.steps  # whole generations, then the final score
    assert all(b - a >= 40 for a, b in zip(steps[:-2], steps[1:-1])) and steps[-2] <= steps[-1]  # every 40 steps
    assert all(np.isfinite(r) for _, _, r in gap) and gap[-1][2] == report["real"]["mean"]
    assert (tmp_path / "run" / "agent.safetensors").exists() and (tmp_path / "run" / "agent.json").exists()
    with pytest.raises(ValueError, match="cmaes.*latent"):
        imagine(ImagineConfig(checkpoint=cfg.checkpoint, algo="cmaes", obs="rgb"), progress=False)
    with pytest.raises(ValueError, match="collect plays only single-frame pixel agents"):
        make_policy(str(tmp_path / "run" / "agent"), gym.make_vec("worldsim/Rooms-v0", 1, vectorization_mode="sync"))


def test_uncertainty_penalty_lowers_each_dream_reward_by_the_dreams_doubt(pipeline):
    """The same seed and actions with and without the penalty: the same dream, and each
    reward lower by w times that step's uncertainty, the raw reward kept in the info."""
    from agents.sb3_vec_env import SB3DreamVecEnv

    world = str(pipeline[0] / "world.safetensors")
    runs = {}
    for w in (0.0, 5.0):
        venv = SB3DreamVecEnv(3, checkpoint=world, uncertainty_penalty=w)  # the second sample leaves the dream as it was
        venv.seed(4)
        venv.reset()
        rows = []
        for k in range(4):
            venv.step_async(np.array([k % 7, 1, 2]))
            obs, rewards, dones, infos = venv.step_wait()
            rows.append((obs, rewards, infos))
        runs[w] = (rows, venv)
    (plain, _), (penalised, _) = runs[0.0], runs[5.0]
    spread_seen = 0.0
    for (obs0, r0, _), (obs1, r1, infos1) in zip(plain, penalised):
        assert np.array_equal(obs0, obs1)
        raw = np.array([i["dream_reward"] for i in infos1])
        np.testing.assert_allclose(raw, r0, rtol=1e-6)
        spread = (raw - r1) / 5.0
        assert (spread >= 0).all()
        spread_seen += spread.sum()
    assert spread_seen > 0  # the dream was unsure somewhere, and it cost the agent
    with pytest.raises(ValueError, match="uncertainty_penalty"):
        SB3DreamVecEnv(2, checkpoint=world, uncertainty_penalty=-1.0)


def test_whole_rewards_pay_what_the_head_is_sure_of(pipeline):
    """Rounded to whole numbers, a head's 0.2 on every step pays nothing and its 0.9 pays 1;
    the raw reward stays in the info."""
    import torch

    from agents.sb3_vec_env import SB3DreamVecEnv
    from worldsim.world_model import WorldModel

    class UnsureHead(torch.nn.Module):  # 0.9 for FORWARD (action 1), 0.2 otherwise; never ends
        def forward(self, z_prev, z_next, actions):
            return 0.2 + 0.7 * (actions == 1).float(), torch.full((len(actions),), -20.0), torch.zeros(len(actions), 0)

    model = WorldModel.load(pipeline[0] / "world.safetensors")
    model.dynamics.heads = UnsureHead()
    for whole, paid in ((False, [0.2, 0.9, 0.2]), (True, [0.0, 1.0, 0.0])):
        venv = SB3DreamVecEnv(3, checkpoint=model, whole_rewards=whole)
        venv.reset()
        venv.step_async(np.array([0, 1, 2]))
        _, rewards, _, infos = venv.step_wait()
        np.testing.assert_allclose(rewards, paid, atol=1e-6)
        if whole:
            np.testing.assert_allclose([i["dream_reward"] for i in infos], [0.2, 0.9, 0.2], atol=1e-6)
