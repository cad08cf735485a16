"""worldsim/Dream-v0: the world model behind the Gymnasium API, checked by real clients."""

import gymnasium as gym
import numpy as np
import pytest

import worldsim  # noqa: F401  (registers worldsim/Dream-v0)
from worldsim.checkpoint import CheckpointError
from worldsim.dataset import episode_paths, read_episode
from worldsim.dream_env import DreamEnv, DreamVectorEnv


@pytest.fixture(scope="module")
def world(pipeline):
    return str(pipeline[0] / "world.safetensors")


def test_checkers_pass(world):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    check_env(DreamEnv(checkpoint=world, max_steps=20), skip_render_check=True)
    sb3_check_env(DreamEnv(checkpoint=world, max_steps=20))
    env = gym.make("worldsim/Dream-v0", checkpoint=world)
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert info["denoising_steps"] == 3 and info["context_frames"] == 1


def test_same_seed_same_rollout_and_latent_observations(world):
    def run(seed, obs_type="rgb"):
        env = DreamEnv(checkpoint=world, obs_type=obs_type)
        frames = [env.reset(seed=seed)[0]]
        frames += [env.step(a)[0] for a in [1, 1, 3, 3, 0, 2]]
        return np.stack(frames)

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3)[1:], run(4)[1:])
    latents = run(3, "latent")
    assert latents.shape == (7, 8, 8, 8) and latents.dtype == np.float32


def test_context_reset_continues_after_the_last_given_frame(world, rooms_dataset):
    episode = read_episode(episode_paths(rooms_dataset, "test")[0])
    env = DreamEnv(checkpoint=world)
    ctx = {"frames": episode.frames[:5], "actions": episode.actions[:4]}
    obs, info = env.reset(seed=0, options={"context": ctx})
    np.testing.assert_array_equal(obs, episode.frames[4])  # the observation is the last given frame
    assert info["context_frames"] == 5
    obs, reward, terminated, truncated, info = env.step(int(episode.actions[4]))
    assert obs.shape == (64, 64, 3) and isinstance(reward, float)
    assert info["context_frames"] == 6
    obs, info = env.reset(seed=0, options={"episode": (str(episode_paths(rooms_dataset, "test")[0]), 2)})
    np.testing.assert_array_equal(obs, episode.frames[2 + 6])  # up to max_frames - 1 = 7 frames from frame 2


def test_bad_input_errors(world, pipeline, tmp_path):
    env = DreamEnv(checkpoint=world, max_steps=1)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside the action space Discrete\\(7\\)"):
        env.step(9)
    env.step(0)  # truncated at max_steps=1
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(0)
    frames = np.zeros((3, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="2 actions between its 3 frames"):
        env.reset(options={"context": {"frames": frames, "actions": [0]}})
    with pytest.raises(ValueError, match=r"uint8 \(T, 64, 64, 3\)"):
        env.reset(options={"context": {"frames": frames[..., :1], "actions": [0, 0]}})
    with pytest.raises(ValueError, match="no text conditioning"):
        env.reset(options={"prompt": "a red ball"})
    with pytest.raises(CheckpointError, match="no world model"):
        DreamEnv(checkpoint=tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="trained on 'worldsim/Rooms-v0', not 'worldsim/Vizdoom-TakeCover-v0'"):
        DreamEnv(checkpoint=world, env_id="worldsim/Vizdoom-TakeCover-v0")
    data = open(world, "rb").read()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        DreamEnv(checkpoint=tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError, match="expected a world model"):
        DreamEnv(checkpoint=pipeline[0] / "tok" / "latest.safetensors")


def test_gymnasium_wrappers(world, tmp_path):
    from gymnasium.wrappers import FrameStackObservation, GrayscaleObservation, RecordVideo, ResizeObservation

    env = DreamEnv(checkpoint=world, max_steps=6, render_mode="rgb_array")
    env = RecordVideo(env, str(tmp_path / "videos"), episode_trigger=lambda e: True, disable_logger=True)
    env = ResizeObservation(GrayscaleObservation(env), (32, 32))
    env = FrameStackObservation(env, 4)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 32, 32)
    done = False
    while not done:
        obs, _, terminated, truncated, _ = env.step(1)
        done = terminated or truncated
    env.close()
    assert obs.shape == (4, 32, 32) and list((tmp_path / "videos").glob("*.mp4"))


def test_vector_env_batches_and_autoresets(world):
    envs = gym.make_vec("worldsim/Dream-v0", num_envs=4, vectorization_mode="vector_entry_point", checkpoint=world,
                        max_steps=3)
    obs, info = envs.reset(seed=0)
    assert obs.shape == (4, 64, 64, 3)
    since_reset, was_done = np.zeros(4, int), np.zeros(4, bool)
    for t in range(12):
        obs, rewards, terminated, truncated, info = envs.step(np.array([1, 2, 3, 4]))
        assert obs.shape == (4, 64, 64, 3)
        # NEXT_STEP: the step after an end is the reset (reward 0, not done)...
        assert (rewards[was_done] == 0).all() and not (terminated | truncated)[was_done].any()
        since_reset = np.where(was_done, 0, since_reset + 1)
        # ...and an episode that does not terminate is truncated exactly at max_steps.
        np.testing.assert_array_equal(truncated, ~terminated & (since_reset == 3))
        was_done = terminated | truncated
    same = DreamVectorEnv(4, checkpoint=world, max_steps=2, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    same.reset(seed=0)
    same.step(np.zeros(4, int))
    obs, _, _, truncated, info = same.step(np.zeros(4, int))
    assert truncated.all() and info["final_obs"].shape == (4,) and info["final_obs"][0].shape == (64, 64, 3)
    assert info["final_obs"][0].dtype == np.uint8  # an array per env, even when all end together
    with pytest.raises(ValueError, match="batched action space"):
        same.step(np.array([0, 0, 0, 9]))
    # SAME_STEP: the observation returned with an end is already the next episode's start frame.
    starts = same.model.start_frames
    assert all(any(np.array_equal(o, s) for s in starts) for o in obs)
    assert not all(any(np.array_equal(f, s) for s in starts) for f in info["final_obs"])


def test_ppo_learns_on_the_batched_dream(world):
    import torch
    from stable_baselines3 import PPO

    from agents.sb3_vec_env import SB3DreamVecEnv
    from worldsim.world_model import WorldModel

    class PaysForForward(torch.nn.Module):  # a dream that pays 1 for FORWARD (action 1) and never ends
        def forward(self, z_prev, z_next, actions):
            return (actions == 1).float(), torch.full((len(actions),), -20.0), torch.zeros(len(actions), 0)

    model = WorldModel.load(world)
    model.dynamics.heads = PaysForForward()
    venv = SB3DreamVecEnv(num_envs=16, checkpoint=model, obs_type="latent", max_steps=50)
    agent = PPO("MlpPolicy", venv, n_steps=32, batch_size=128, n_epochs=4, learning_rate=1e-3, seed=0, verbose=0)
    before = (agent.predict(venv.reset())[0] == 1).mean()
    agent.learn(total_timesteps=3072)
    assert agent.num_timesteps >= 3072
    after = np.mean([(agent.predict(venv.reset())[0] == 1).mean() for _ in range(4)])
    best = np.mean([(agent.predict(venv.reset(), deterministic=True)[0] == 1).mean() for _ in range(4)])
    assert before < 0.4 and after > 0.5 and best > 0.9  # from about one in seven to its most likely action


def test_play_without_display_records_a_session(world, tmp_path, monkeypatch):
    import cv2

    from worldsim.play import key_actions, play

    monkeypatch.delenv("DISPLAY", raising=False)
    result = play(world, steps=12, out=str(tmp_path / "play.mp4"))
    assert result["steps"] == 12 and result["frames_per_s"] > 0
    cap = cv2.VideoCapture(str(tmp_path / "play.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 13
    table = key_actions(["NOOP", "FORWARD", "BACK", "TURN_LEFT", "TURN_RIGHT", "STRAFE_LEFT", "STRAFE_RIGHT"])
    assert table[ord("w")] == 1 and table[ord("d")] == 4 and table[ord(" ")] == 0


def test_sample_ends_draws_terminations_from_the_head(pipeline, tmp_path):
    import torch

    from worldsim.world_model import WorldModel

    model = WorldModel.load(pipeline[0] / "world.safetensors")
    head = model.dynamics.heads.out[-1]
    with torch.no_grad():  # the head says: this step ends the episode with probability 0.3
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, float(np.log(0.3 / 0.7))]))
    model.save(tmp_path / "risky.safetensors")
    lengths = {}
    for sample in (False, True):
        env = DreamEnv(str(tmp_path / "risky.safetensors"), max_steps=40, sample_ends=sample)
        env.reset(seed=0)
        steps, terminated, truncated = 0, False, False
        while not (terminated or truncated):
            _, _, terminated, truncated, info = env.step(0)
            steps += 1
        assert info["termination_prob"] == pytest.approx(0.3, abs=1e-3)
        lengths[sample] = (steps, terminated)
    assert lengths[False] == (40, False)  # below the 0.5 threshold: never ends
    assert lengths[True][1] and lengths[True][0] < 40  # drawn: ends early (0.7 ** 40 < 1e-6)


def test_a_forked_state_replays_the_same_frames(memory_world):
    """get_state / set_state: the KV cache, memory, clocks and random state all come back,
    in the env that saved them and in a fresh one; the vector env draws its ends,
    autoresets and samples twice for its uncertainty on the way."""
    import torch
    from worldsim.world_model import WorldModel

    model = WorldModel.load(memory_world[0])
    with torch.no_grad():  # a single env's episode must outlast the plan: this model never ends one
        model.dynamics.heads.out[-1].bias[1] = -30.0

    def run(env, actions):
        out = [env.step(a) for a in actions]
        return ([np.stack([o[i] for o in out]) for i in range(4)] + [[o[4]["memory_frames"] for o in out]]
                + [np.array([o[4].get("uncertainty", 0.0) for o in out])])

    for make, rows in ((lambda: DreamEnv(checkpoint=model, max_steps=50), None),
                       (lambda: DreamVectorEnv(3, checkpoint=memory_world[0], max_steps=4, sample_ends=True,
                                               uncertainty=True), 3)):
        env = make()
        env.reset(seed=1)
        plan = [t % 4 if rows is None else np.array([t % 4, (t + 1) % 4, 2]) for t in range(8)]
        other = [3 - a for a in plan]
        run(env, plan[:3])
        state = env.get_state()
        first = run(env, plan)
        assert np.max(first[4]) > 0  # memory was recalled along the way
        env.set_state(state)
        diverged = run(env, other)
        env.set_state(state)
        again = run(env, plan)
        fresh = make()
        fresh.set_state(state)
        for a, b, c in zip(first, again, run(fresh, plan)):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)
        assert not np.array_equal(diverged[0], first[0])  # from the same state other actions differ: equality is not trivial
    assert first[2].any() and first[3].any()  # the vector env ended episodes (drawn and at max_steps) and went on
    with pytest.raises(ValueError, match="holds 3 rows"):
        DreamEnv(checkpoint=model).set_state(state)
    with pytest.raises(RuntimeError, match="reset"):
        DreamEnv(checkpoint=model).get_state()


def test_uncertainty_reports_sample_disagreement(world, pipeline, rooms_dataset):
    import torch
    from worldsim.replay import uncertainty_vs_error
    from worldsim.world_model import WorldModel

    model = WorldModel.load(world)
    with torch.no_grad():  # an episode that outlasts the test: this model never ends one
        model.dynamics.heads.out[-1].bias[1] = -30.0
    env = DreamEnv(checkpoint=model, uncertainty=True)
    _, info = env.reset(seed=0)
    assert info["uncertainty"] == 0.0  # nothing dreamed yet
    spreads = [env.step(a)[4]["uncertainty"] for a in (1, 2, 3)]
    assert all(s > 0 for s in spreads)
    assert env.core.cache.frames == 4  # the second sample left the cache as it was
    plain = DreamEnv(checkpoint=model)
    plain.reset(seed=0)
    same = DreamEnv(checkpoint=model, uncertainty=True)
    same.reset(seed=0)
    for a in (1, 2, 3):  # the second sample has its own noise: the dream is the same with or without it
        np.testing.assert_array_equal(plain.step(a)[0], same.step(a)[0])
    assert "uncertainty" not in DreamEnv(checkpoint=model).reset(seed=0)[1]
    vec = DreamVectorEnv(2, checkpoint=model, uncertainty=True)
    vec.reset(seed=0)
    assert (vec.step(np.array([1, 2]))[4]["uncertainty"] > 0).all()
    u = uncertainty_vs_error(model, str(rooms_dataset), context=2, length=3, count=4)
    assert u["windows"] == 4 and -1 <= u["spearman_within_step"] <= 1 and 0 <= u["worst_quarter_caught"] <= 1
    assert u["spread_mean"] > 0 and u["error_mean"] > 0


def test_export_sets_the_denoising_steps_a_dream_takes(pipeline, tmp_path):
    from worldsim.export import export_world_model
    from worldsim.world_model import WorldModel

    root, _, _ = pipeline
    run = str(root / "dyn" / "latest.safetensors")
    export_world_model(run, str(tmp_path / "s.safetensors"), sample_steps=7)
    assert WorldModel.load(tmp_path / "s.safetensors").dynamics.cfg.sample_steps == 7
    assert WorldModel.load(root / "world.safetensors").dynamics.cfg.sample_steps != 7
    with pytest.raises(ValueError, match="at least 1"):
        export_world_model(run, str(tmp_path / "z.safetensors"), sample_steps=0)
