"""bench/diag: the TakeCover fixed-policy ranking (does the dream pay what the game pays)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "bench" / "diag"))

import policy_ranks  # noqa: E402

YELLOW = (230, 180, 40)  # an imp's fireball (fireballs.fireball_mask)


def frame_with_fireball(x0: int, size: int) -> np.ndarray:
    frame = np.full((64, 64, 3), 60, np.uint8)
    frame[30:30 + size, x0:x0 + size] = YELLOW
    return frame


def test_dodge_steps_away_from_the_biggest_fireball_and_ignores_specks():
    assert policy_ranks.dodge(frame_with_fireball(5, 6)) == policy_ranks.RIGHT
    assert policy_ranks.dodge(frame_with_fireball(50, 6)) == policy_ranks.LEFT
    assert policy_ranks.dodge(np.full((64, 64, 3), 60, np.uint8)) == policy_ranks.NOOP
    assert policy_ranks.dodge(frame_with_fireball(5, 1)) == policy_ranks.NOOP  # one pixel: not a fireball yet
    two = frame_with_fireball(50, 3)
    two[30:38, 2:10] = YELLOW  # the bigger one, on the left, is the one to avoid
    assert policy_ranks.dodge(two) == policy_ranks.RIGHT


class FixedLengthEpisodes:
    """A NEXT_STEP-autoreset vector env (gymnasium's default): row i's episodes last
    lengths[i] steps, each step pays 1, and the step after an end is the reset (pays 0)."""

    def __init__(self, lengths):
        self.lengths, self.num_envs = np.asarray(lengths), len(lengths)

    def reset(self, seed=None):
        self.t, self.restart = np.zeros(self.num_envs, int), np.zeros(self.num_envs, bool)
        return np.zeros((self.num_envs, 64, 64, 3), np.uint8), {}

    def step(self, actions):
        assert len(actions) == self.num_envs
        self.t = np.where(self.restart, 0, self.t + 1)
        rewards = np.where(self.restart, 0.0, 1.0)
        terminated = ~self.restart & (self.t == self.lengths)
        self.restart = terminated
        return np.zeros((self.num_envs, 64, 64, 3), np.uint8), rewards, terminated, np.zeros_like(terminated), {}


def test_dream_returns_keep_each_rows_first_episodes_whole():
    env = FixedLengthEpisodes([2, 7, 3])
    returns = policy_ranks.dream_returns(env, policy_ranks.policies()["random"], episodes_per_row=3, seed=0)
    # the long row sets the pace; the short rows' later episodes are left out, so short ones are not favoured
    assert sorted(returns) == [2.0] * 3 + [3.0] * 3 + [7.0] * 3


def test_policy_ranks_scores_each_policy_in_the_game_and_the_dream(tmp_path):
    pytest.importorskip("vizdoom")
    out = tmp_path / "ranks.json"
    policy_ranks.main(["worldsim/checkpoints/takecover.safetensors", "--episodes", "2", "--dream-envs", "2",
                       "--episodes-per-row", "1", "--horizon", "3", "--json", str(out)])
    result = json.loads(out.read_text())
    assert set(result["returns"]) == {"game", "worldsim/checkpoints/takecover.safetensors"}
    for where, row in result["returns"].items():
        assert set(row) == {"stand still", "wall", "random", "dodge"}
        for name, score in row.items():
            assert score["episodes"] == 2, (where, name)
            # at most 3 steps of 4 tics: the game pays each tic alive, the dream's reward head about as much
            assert 0 < score["mean"] <= 15, (where, name, score)
    policy_ranks.main(["--episodes", "2", "--horizon", "3", "--policies", "wall", "--json", str(out)])
    assert set(json.loads(out.read_text())["returns"]["game"]) == {"wall"}


def test_fireball_sides_and_the_steps_that_dodge_them():
    import fireballs

    frame = frame_with_fireball(5, 3)
    frame[30:36, 40:46] = YELLOW  # the bigger one, right of centre
    pixels, column = fireballs.biggest_fireball(frame)
    assert (pixels, column) == (36, 42.5)
    assert fireballs.biggest_fireball(np.full((64, 64, 3), 60, np.uint8)) == (0, None)
    # one on the left is dodged by stepping right (2), met by stepping left (1)
    assert fireballs.step_class(np.array([2, 2]), on_left=True) == fireballs.AWAY
    assert fireballs.step_class(np.array([1, 1]), on_left=True) == fireballs.TOWARD
    assert fireballs.step_class(np.array([1, 1]), on_left=False) == fireballs.AWAY
    assert fireballs.step_class(np.array([0, 0]), on_left=False) == fireballs.STILL
    assert fireballs.step_class(np.array([0, 2]), on_left=False) is None  # mixed steps belong to no class


class LastFrameModel:
    """A stand-in world model whose dream repeats, at every step, the last frame, with the
    number of context actions it was given in the red channel and the action into the
    step in the blue one."""

    def rollout(self, frames, context_actions, actions, steps=None, seed=0, memory=None, rerender=False):
        out = np.repeat(frames[:, -1:], actions.shape[1], 1).copy()
        out[..., 0] = context_actions.shape[1]
        out[..., 2] = actions[:, :, None, None]
        return out, None, None


def test_one_step_predictions_start_each_frame_from_the_real_frames_just_before_it():
    import fireballs

    frames = np.arange(2 * 9, dtype=np.uint8).reshape(2, 9, 1, 1, 1).repeat(3, -1)  # frame i of row r: 9r + i
    actions = 10 + np.arange(2 * 8).reshape(2, 8)  # actions[:, j] leads from frame j to j + 1
    out = fireballs.one_step_predictions(LastFrameModel(), frames, actions, context=4)
    assert out.shape == (2, 5, 1, 1, 3)
    np.testing.assert_array_equal(out[..., 1], frames[:, 3:8, ..., 1])  # each from the real frame before it
    assert (out[..., 0] == 3).all()  # with the 3 actions between its 4 context frames
    np.testing.assert_array_equal(out[..., 0, 0, 2], actions[:, 3:8])  # and the real action into it


def test_close_calls_count_close_fireballs_and_the_ends_that_follow_them():
    close, far = frame_with_fireball(20, 8), frame_with_fireball(20, 2)  # 64 pixels about to hit; 4, far off
    calls = policy_ranks.CloseCalls(envs=2)
    no, yes = np.array([False, False]), np.array([True, False])
    calls.add(np.stack([close, far]), no, no, no, end_prob=np.array([0.3, 0.9]))
    calls.add(np.stack([far, far]), yes, no, no)  # row 0 ends a step after its close fireball
    calls.add(np.stack([far, far]), no, no, np.array([True, False]))  # row 0's autoreset frame is not a step
    calls.add(np.stack([far, far]), np.array([False, True]), no, no)  # row 1 ends with no fireball near
    s = calls.summary()
    assert s["frames"] == 7 and s["close_share"] == 1 / 7
    assert s["ends_per_close_frame"] == 1.0 and s["ends_after_close"] == 0.5
    assert s["end_prob_on_close"] == 0.3


class ShiftingDynamics:
    """A stand-in pixel dynamics: action a draws the last context frame shifted a - 1 columns."""

    class cfg:
        actions, action_guidance = 3, 0.0

    def __init__(self, follows_action=True):
        self.follows_action = follows_action

    def sample(self, ctx, action, generator=None, past=None):
        import torch

        shift = int(action[0]) - 1 if self.follows_action else 0
        return torch.roll(ctx[:, -1], shift, dims=-1)


class ShiftedTransitions:
    """Transitions whose next frame is the last context frame shifted by the taken action - 1."""

    def __init__(self, n=60, seed=0):
        rng = np.random.default_rng(seed)
        self.frames = rng.uniform(-1, 1, (n, 1, 3, 8, 8)).astype(np.float32)
        self.actions = rng.integers(3, size=n)
        self.context_rows = np.stack([np.arange(n), np.arange(n) + 1], 1)  # never an episode's padded start

    def batch(self, idx):
        import torch

        ctx = torch.from_numpy(np.concatenate([self.frames[idx], self.frames[idx]], 1))
        target = torch.stack([torch.roll(c[-1], int(a) - 1, dims=-1) for c, a in zip(ctx, self.actions[idx])])
        none = torch.zeros(len(idx))
        return ctx, target, torch.from_numpy(self.actions[idx]), none, none, torch.full((len(idx), 1), -1)


def test_moves_finds_the_taken_move_only_in_a_dream_that_draws_it():
    import types

    import moves

    data = ShiftedTransitions()
    follows = moves.action_scores(types.SimpleNamespace(dynamics=ShiftingDynamics()), data, count=40, batch=16)
    assert follows["taken_nearest"] == 1.0 and follows["chance"] == pytest.approx(1 / 3)
    assert follows["mse_taken"] == 0.0 and follows["mse_between_actions"] > 0.1
    ignores = moves.action_scores(types.SimpleNamespace(dynamics=ShiftingDynamics(False)), data, count=40,
                                          batch=16)
    assert ignores["mse_between_actions"] == 0.0 and ignores["taken_nearest"] < 0.6  # ties go to action 0 alone


def test_view_shift_reads_a_sideways_move_from_the_far_wall():
    import moves

    rng = np.random.default_rng(0)
    wall = np.repeat(rng.integers(0, 255, (1, 80, 3)), 64, 0).astype(np.uint8)  # columns of random colour
    frames = np.stack([wall[:, 8 - k:72 - k] for k in range(6)])  # the view moves right a pixel a step
    assert moves.view_shift(frames[0], frames[1]) == 1.0
    assert moves.view_shift(frames[3], frames[1]) == -2.0
    assert moves.total_shift(frames) == 5.0 and moves.total_shift(frames[[2, 2, 2]]) == 0.0
