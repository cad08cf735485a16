import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from envs.rooms import ACTIONS, OBJECT_COLOURS, RoomsEnv


def test_passes_gymnasium_and_sb3_checkers():
    check_env(RoomsEnv())
    from stable_baselines3.common.env_checker import check_env as sb3_check_env
    sb3_check_env(RoomsEnv(), warn=True)
    env = gym.make("worldsim/Rooms-v0")
    assert env.observation_space.shape == (64, 64, 3)
    assert env.action_space.n == len(ACTIONS) == 7


def rollout(env, seed, actions):
    frames = [env.reset(seed=seed)[0]]
    frames += [env.step(a)[0] for a in actions]
    return np.stack(frames)


def test_same_seed_same_frames_and_new_seed_new_start():
    actions = np.random.default_rng(1).integers(7, size=60)
    a = rollout(RoomsEnv(), 5, actions)
    b = rollout(RoomsEnv(), 5, actions)
    c = rollout(RoomsEnv(), 6, actions)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_random_worlds_differ_by_seed_and_fixed_world_does_not():
    fresh = RoomsEnv(world_seed=None)
    fresh.reset(seed=1)
    walls1 = fresh.walls.copy()
    fresh.reset(seed=2)
    assert not np.array_equal(walls1, fresh.walls)
    fixed = RoomsEnv(world_seed=3)
    fixed.reset(seed=1)
    walls1 = fixed.walls.copy()
    fixed.reset(seed=2)
    np.testing.assert_array_equal(walls1, fixed.walls)


@pytest.mark.parametrize("turn", ["TURN_LEFT", "TURN_RIGHT"])
def test_full_turn_returns_first_frame_exactly(turn):
    env = RoomsEnv()
    first, _ = env.reset(seed=3)
    frames = [env.step(ACTIONS.index(turn))[0] for _ in range(env.turn_steps)]
    np.testing.assert_array_equal(frames[-1], first)
    assert not np.array_equal(frames[env.turn_steps // 2], first)


def test_objects_in_view_show_their_colour_at_their_column():
    env = RoomsEnv(collectible=False)
    rng = np.random.default_rng(0)
    checked = 0
    for seed in range(4):
        frame, info = env.reset(seed=seed)
        for _ in range(120):
            gt = info["gt"]
            for i in np.nonzero(gt["objects_in_view"])[0]:
                c = gt["objects_column"][i]
                band = frame[:, max(c - 2, 0):c + 3].reshape(-1, 3)
                assert (band == OBJECT_COLOURS[i]).all(axis=1).any(), f"object {i} not drawn near column {c}"
                assert (gt["object_ids"][:, max(c - 2, 0):c + 3] == i).any()
                checked += 1
            # An object out of view leaves no pixel of its id in the mask.
            for i in np.nonzero(~gt["objects_in_view"])[0]:
                assert not (gt["object_ids"] == i).any()
            frame, _, _, _, info = env.step(int(rng.choice([1, 3, 3, 4])))
    assert checked > 50


def test_depth_agrees_with_motion():
    """Walking one step forward brings the wall straight ahead one step closer."""
    env = RoomsEnv()
    _, info = env.reset(seed=0)
    centre = slice(env.width // 2 - 1, env.width // 2 + 1)  # the two columns around the view axis
    falls = []
    for _ in range(300):
        before = info["gt"]
        _, _, _, _, info = env.step(ACTIONS.index("FORWARD"))
        after = info["gt"]
        if np.linalg.norm(after["pose"][:2] - before["pose"][:2]) > 0.2499:  # walked freely
            falls.append(before["depth"][centre].mean() - after["depth"][centre].mean())
        else:
            env.step(ACTIONS.index("TURN_LEFT"))
            _, _, _, _, info = env.step(ACTIONS.index("TURN_LEFT"))
    falls = np.array(falls)
    assert len(falls) > 50
    assert np.mean(np.abs(falls - 0.25) < 0.01) > 0.9, falls


def test_collecting_every_object_pays_and_terminates():
    env = RoomsEnv(n_objects=2)
    env.reset(seed=0)
    for i in range(2):
        # Stand 0.6 east of object i, facing west: one step forward reaches it.
        env.pos = env.objects[i] + np.array([0.6, 0.0])
        env.yaw_index = env.turn_steps // 2
        _, reward, terminated, _, info = env.step(ACTIONS.index("FORWARD"))
        assert reward == 1.0
        assert not info["gt"]["objects_alive"][i] and not info["gt"]["objects_in_view"][i]
        assert terminated == (i == 1)
    with pytest.raises(RuntimeError, match="after the episode ended \\(terminated: every object collected\\)"):
        env.step(ACTIONS.index("BACK"))


def test_step_limit_truncates():
    env = RoomsEnv(max_steps=5)
    env.reset(seed=0)
    flags = [env.step(0)[3] for _ in range(5)]
    assert flags == [False] * 4 + [True]


def test_bad_input_errors():
    env = RoomsEnv()
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        env.step(7)
    with pytest.raises(ValueError, match="size"):
        RoomsEnv(size=(4, 4))
    with pytest.raises(gym.error.Error):
        gym.make("worldsim/NoSuchWorld-v0")
