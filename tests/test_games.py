"""The real-game adapters: ViZDoom scenarios and Atari through the shared wrappers."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs

VIZDOOM_IDS = [f"worldsim/Vizdoom-{name}-v0" for name in envs.VIZDOOM_IDS.values()]


def test_vizdoom_take_cover_passes_checker_with_ground_truth():
    pytest.importorskip("vizdoom")
    env = gym.make("worldsim/Vizdoom-TakeCover-v0")
    check_env(env.unwrapped, skip_render_check=True)  # the raw adapter
    check_env(env, skip_render_check=True)  # with the shared wrappers
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    gt = info["gt"]
    assert gt["pose"].shape == (3,)
    assert gt["depth"].shape == (64, 64) and gt["labels"].shape == (64, 64)  # resized with the frame
    assert gt["objects"].shape == (16, 9)
    assert envs.action_meanings(env) == ("NOOP", "MOVE_LEFT", "MOVE_RIGHT")
    # Moving right changes the player's position in the direction the engine reports.
    x0 = gt["pose"][:2].copy()
    for _ in range(5):
        _, _, _, _, info = env.step(2)
    assert not np.allclose(info["gt"]["pose"][:2], x0)
    env.close()


@pytest.mark.parametrize("env_id", VIZDOOM_IDS)
def test_vizdoom_scenarios_run_and_are_seeded(env_id):
    pytest.importorskip("vizdoom")
    runs = []
    for _ in range(2):
        env = gym.make(env_id)
        frames = [env.reset(seed=3)[0]]
        env.action_space.seed(0)
        for _ in range(20):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            frames.append(obs)
            if terminated or truncated:
                break
        env.close()
        runs.append(np.stack(frames))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_vizdoom_bad_action_and_order():
    pytest.importorskip("vizdoom")
    env = gym.make("worldsim/Vizdoom-TakeCover-v0")
    with pytest.raises((RuntimeError, gym.error.ResetNeeded)):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(3)
    env.close()


def test_atari_through_shared_wrappers():
    pytest.importorskip("ale_py")
    env = gym.make("worldsim/Atari-Pong-v0")
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 64, 3)
    assert info["gt"]["ram"].shape == (128,)
    assert envs.action_meanings(env)[0] == "NOOP"
    env.close()
