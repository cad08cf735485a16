"""README's "Your own env" walk, run with a tiny env this test defines, and the pieces it
rests on: module:Id env names, the explore policy on any env, memory without a pose model."""

import json
import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch

from worldsim.cli import main
from worldsim.memory import MemoryBank, fit_pose_model, latent_keys

# A third-party env as a researcher would write it: nothing of worldsim imported. A
# walker in a walled 12x12 yard of coloured cells sees the 4x4 cells ahead of it.
WALKER = textwrap.dedent('''
    import gymnasium as gym
    import numpy as np

    MOVES = [(0, -1), (1, 0), (0, 1), (-1, 0)]

    class Walker(gym.Env):
        metadata = {"render_modes": ["rgb_array"]}
        action_meanings = ("NOOP", "FORWARD", "TURN_LEFT", "TURN_RIGHT")
        turn_steps = 4

        def __init__(self, render_mode=None, with_pose=True):
            self.observation_space = gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)
            self.action_space = gym.spaces.Discrete(4)
            self.with_pose = with_pose
            yard = np.random.default_rng(0).integers(40, 255, (12, 12, 3)).astype(np.uint8)
            self.yard = np.pad(yard, ((4, 4), (4, 4), (0, 0)))

        def _obs(self):
            g = np.rot90(self.yard, k=self.h)
            y, x, n = self.y + 4, self.x + 4, 20
            for _ in range(self.h):
                y, x = n - 1 - x, y
            return np.ascontiguousarray(np.repeat(np.repeat(g[y - 3:y + 1, x - 2:x + 2], 8, 0), 8, 1))

        def _info(self):
            dx, dy = MOVES[self.h]
            return {"gt": {"pose": np.array([self.x, self.y, np.arctan2(dy, dx)], np.float32)}} if self.with_pose else {}

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.x, self.y = (int(v) for v in self.np_random.integers(12, size=2))
            self.h, self.t = int(self.np_random.integers(4)), 0
            return self._obs(), self._info()

        def step(self, a):
            if a == 1:
                dx, dy = MOVES[self.h]
                self.x, self.y = min(max(self.x + dx, 0), 11), min(max(self.y + dy, 0), 11)
            elif a in (2, 3):
                self.h = (self.h + (1 if a == 3 else -1)) % 4
            self.t += 1
            return self._obs(), float(a == 1), False, self.t >= 60, self._info()

    gym.register("Walker-v0", entry_point=Walker)
    gym.register("BlindWalker-v0", entry_point=Walker, kwargs={"with_pose": False})
''')


def run(*argv) -> dict:
    """A worldsim command, in-process; its JSON result (it must succeed)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main([*argv, "--quiet"] if argv[0] not in ("export", "dream") else list(argv))
    assert rc == 0, f"worldsim {' '.join(argv)} failed"
    return json.loads(out.getvalue())


@pytest.fixture
def walker_dir(tmp_path, monkeypatch):
    (tmp_path / "my_walker.py").write_text(WALKER)
    monkeypatch.chdir(tmp_path)  # the user runs worldsim where their module is
    return tmp_path


def test_readme_walk_from_a_gymnasium_env_to_a_dream_a_probe_and_an_agent(walker_dir):
    env = "my_walker:Walker-v0"
    got = run("collect", "--env", env, "--steps", "1600", "--out", "data")
    assert got["episodes_written"] >= 20 and got["env_id"] == env
    run("train", "tokenizer", "--data", "data", "--out", "runs/tok", "--config", "tiny", "--steps", "30")
    run("encode", "--checkpoint", "runs/tok/latest.safetensors", "--data", "data", "--out", "latents")
    run("train", "dynamics", "--data", "latents", "--out", "runs/dyn", "--config", "tiny", "--memory", "2",
        "--steps", "20", "--batch-size", "4")
    run("export", "--checkpoint", "runs/dyn/latest.safetensors", "--out", "world.safetensors")

    from worldsim.world_model import WorldModel
    model = WorldModel.load("world.safetensors")
    assert model.has_memory and model.memory_key == "pose" and model.info["env_id"] == env
    compute = model.info["compute"]  # what made it, for a results table against compute
    assert compute["steps"] == 20 and compute["batch_size"] == 4 and compute["device"] == "cpu"
    assert 0 < compute["train_seconds"] < 3600
    motion = np.array(model.info["pose_model"]["motion"])  # fitted from the recorded poses
    np.testing.assert_allclose(motion, [[0, 0, 0], [1, 0, 0], [0, 0, -np.pi / 2], [0, 0, np.pi / 2]], atol=1e-5)

    episode = sorted((walker_dir / "data" / "test").glob("*.h5"))[0]
    dream = run("dream", "--checkpoint", "world.safetensors", "--episode", str(episode), "--steps", "8",
                "--out", "dream.mp4")
    assert (walker_dir / "dream.mp4").stat().st_size > 0 and np.isfinite(dream["psnr_db_mean"])
    import cv2
    sheet = cv2.imread(str(walker_dir / "dream.png"))  # real above, dream below, 8 steps
    assert dream["contact_sheet"] == "dream.png" and sheet.shape[0] > 2 * 32 and sheet.shape[1] > 8 * 32
    probe = run("probe", "--checkpoint", "world.safetensors", "--probes", "drift", "--drift-episodes", "1",
                "--drift-steps", "20", "--out", "probe")
    report = json.loads((walker_dir / "probe" / "report.json").read_text())
    assert "drift" in report["probes"] and report["env_id"] == env, probe
    assert {"dream_memory_on", "dream_memory_off", "copy_last"} <= set(report["predictors"])
    agent = run("imagine", "--checkpoint", "world.safetensors", "--obs", "latent", "--steps", "64", "--num-envs", "2",
                "--horizon", "20", "--eval-episodes", "1", "--out", "agent")
    assert agent["env_id"] == env and agent["real"]["episodes"] == 1
    assert (walker_dir / "agent" / "agent.safetensors").exists()


def test_an_env_without_a_pose_gets_memory_keyed_by_latents(walker_dir):
    run("collect", "--env", "my_walker:BlindWalker-v0", "--steps", "800", "--out", "data")
    run("train", "tokenizer", "--data", "data", "--out", "runs/tok", "--config", "tiny", "--steps", "10")
    run("encode", "--checkpoint", "runs/tok/latest.safetensors", "--data", "data", "--out", "latents")
    run("train", "dynamics", "--data", "latents", "--out", "runs/dyn", "--config", "tiny", "--memory", "2",
        "--steps", "4", "--batch-size", "2")
    run("export", "--checkpoint", "runs/dyn/latest.safetensors", "--out", "world.safetensors")
    env = gym.make("worldsim/Dream-v0", checkpoint="world.safetensors")
    assert env.unwrapped.model.memory_key == "latent" and env.unwrapped.model.has_memory
    env.reset(seed=0)
    for t in range(12):
        _, _, terminated, truncated, info = env.step(t % 4)
        assert "memory_frames" in info
        if terminated or truncated:  # an untrained head may end the dream early
            env.reset()


def test_latent_keyed_memory_brings_back_a_frame_from_before_the_window():
    torch.manual_seed(0)
    frames = torch.randn(6, 4, 8, 8)
    memory = MemoryBank(1, (4, 8, 8), key="latent")
    for step, z in enumerate(frames):
        memory.add(z[None], None, [step])
    query = frames[1] + 0.05 * torch.randn(4, 8, 8)  # the view of step 1, seen again
    z, feats, valid = memory.retrieve(query[None], k=2, before_step=[3])
    assert valid[0, 0] and torch.equal(z[0, 0], frames[1])
    assert not feats.any()  # no relative pose without poses
    z, _, valid = memory.retrieve(query[None], k=2, before_step=[1])  # step 1 is inside the window now
    assert not any(torch.equal(z[0, i], frames[1]) for i in range(2) if valid[0, i])
    same = latent_keys(frames[:1])
    assert np.isclose(float(same[0] @ same[0]), 1.0, atol=1e-5)


def test_fitted_pose_model_matches_rooms_own():
    import envs  # noqa: F401
    from agents.policies import ExplorePolicy

    env = gym.make("worldsim/Rooms-v0")
    own = env.unwrapped.pose_model()
    policy = ExplorePolicy(envs.action_meanings(env), 1, seed=0)
    frame, info = env.reset(seed=0)
    poses, actions = [info["gt"]["pose"]], []
    for _ in range(600):
        a = int(policy.act(frame[None], {"gt": {"pose": info["gt"]["pose"][None]}})[0])
        frame, _, term, trunc, info = env.step(a)
        poses.append(info["gt"]["pose"])
        actions.append(a)
        if term or trunc:
            break
    fitted = fit_pose_model([np.array(poses)], [np.array(actions)], 7, own["fov_deg"], own["reach"])
    seen = sorted(set(actions))
    np.testing.assert_allclose(np.array(fitted["motion"])[seen], np.array(own["motion"])[seen], atol=0.02)


def test_unknown_module_or_id_is_named_before_any_work(walker_dir, capsys):
    assert main(["collect", "--env", "no_such_module:Walker-v0", "--steps", "10", "--out", "d"]) == 2
    assert "cannot import module 'no_such_module'" in capsys.readouterr().err
    assert main(["collect", "--env", "my_walker:Nope-v0", "--steps", "10", "--out", "d"]) == 2
    assert "'Nope-v0'" in capsys.readouterr().err
    assert not (walker_dir / "d").exists()


def test_explore_runs_on_an_env_without_walking_actions_in_worker_processes(tmp_path):
    got = run("collect", "--env", "worldsim/Atari-Pong-v0", "--steps", "40", "--num-envs", "2",
              "--out", str(tmp_path / "pong"))
    assert got["steps"] >= 40


def test_explore_judges_blocked_against_its_own_stride():
    from agents.policies import ExplorePolicy

    policy = ExplorePolicy(("NOOP", "FORWARD", "TURN_LEFT", "TURN_RIGHT"), 1, turn_steps=4)
    policy.last_action[0], policy.last_pose[0] = policy.forward, np.zeros(3)
    for _ in range(5):  # normal strides of 0.5
        assert not policy._blocked(0, np.array([0.5, 0, 0]), None)
    assert policy._blocked(0, np.array([0.05, 0, 0]), None)  # creeping along a wall: a tenth of a stride
    frame = np.zeros((8, 8, 3), np.uint8)
    policy.last_pose[0], policy.last_frame[0] = None, frame.astype(np.float32)
    assert policy._blocked(0, None, frame) and not policy._blocked(0, None, frame + 40)


def test_lookback_probe_scripts_exact_returns_on_any_turning_env(walker_dir, monkeypatch):
    from worldsim import probes as P

    monkeypatch.syspath_prepend(str(walker_dir))

    cases = P.lookback_scenarios("my_walker:Walker-v0", {}, 3, 5, seed=0)
    for c in cases:
        start, ret = c.meta["start"], c.meta["return"]
        assert np.array_equal(c.frames[start], c.frames[ret])  # the view returns exactly
        assert not np.array_equal(c.frames[start], c.frames[c.context - 1])  # and is not a context frame
        assert ret - start > c.context  # it left the context window on the way
    with pytest.raises(ValueError, match="turns in place"):
        P.lookback_scenarios("worldsim/Atari-Pong-v0", {}, 1, 5)


def test_sticky_holds_each_action_for_runs_up_to_its_longest_hold_and_restarts_at_resets():
    import gymnasium as gym

    from agents.policies import StickyPolicy, make_policy

    policy = StickyPolicy(gym.spaces.Discrete(3), num_envs=2, seed=0, max_hold=32)
    actions = np.stack([policy.act(None, {}) for _ in range(3000)])
    for row in actions.T:
        changes = np.flatnonzero(np.diff(row)) + 1
        runs = np.diff(np.concatenate([[0], changes, [len(row)]]))
        assert runs.max() > 20 and set(np.unique(row)) == {0, 1, 2}  # long holds of every action
        assert np.mean(runs == 1) > 0.05  # and many short ones (log-uniform)
    policy.left[0] = 5
    policy.reset(0)
    assert policy.left[0] == 0  # a new episode draws a new action and hold
    env = gym.make_vec("worldsim/Rooms-v0", 2, vectorization_mode="sync")
    assert isinstance(make_policy("sticky", env), StickyPolicy)
