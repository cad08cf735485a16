"""Fault injection on the envs (issue 20, "The env"): every bad input gets a clear error
naming what was expected, and the inputs that work stay working.

Uses the shipped Rooms world model with memory off (fast on CPU). The window tests run
`worldsim play` and gymnasium's checker under a virtual X server (Xvfb), and are skipped
where Xvfb, xwd or xdotool is missing (Debian: apt-get install xvfb x11-apps xdotool).
"""

import json
import os
import shutil
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers worldsim/Rooms-v0)
import worldsim  # noqa: F401  (registers worldsim/Dream-v0)
from envs.rooms import RoomsEnv
from worldsim.dataset import DatasetWriter, Episode
from worldsim.dream_env import DEFAULT_CHECKPOINT, DreamEnv, DreamVectorEnv
from worldsim.world_model import WorldModel

EXPECTED = r"expected an integer in \[0, 7\) \(NOOP, FORWARD"  # what the errors say an action must be
DISABLED, SAME_STEP = gym.vector.AutoresetMode.DISABLED, gym.vector.AutoresetMode.SAME_STEP


@pytest.fixture(scope="module")
def model():
    return WorldModel.load(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="module")
def env(model):
    """One dream env for the module (tests that need a fresh episode reset it)."""
    env = DreamEnv(model, memory=False)
    env.reset(seed=0)
    return env


def vector(model, n=3, **kwargs):
    return DreamVectorEnv(n, checkpoint=model, memory=False, **kwargs)


def context(model, n=3):
    return {"frames": np.repeat(model.start_frames[:1], n, 0), "actions": [1] * (n - 1)}


# ------------------------------------------------------------------ actions
@pytest.mark.parametrize("action", [1.5, np.float32(1), 1.0, "1", np.array([1]), None, 7, -1])
def test_dream_step_refuses_non_integer_actions(env, action):
    with pytest.raises(ValueError, match=EXPECTED):
        env.step(action)


def test_dream_step_accepts_integers_of_any_kind(env):
    env.reset(seed=0)
    for action in [1, np.int8(2), np.uint64(3), np.array(4), np.int64(0)]:
        obs, reward, _, _, _ = env.step(action)
        assert obs.shape == (64, 64, 3) and isinstance(reward, float)


def test_vector_env_refuses_float_and_string_actions(model):
    envs_ = vector(model)
    envs_.reset(seed=0)
    for actions in [np.array([1.5, 1, 1]), np.array([1.0, 2.0, 3.0]), ["1", "2", "3"], np.array([[1, 2, 3]])]:
        with pytest.raises(ValueError, match="batched action space MultiDiscrete.*expected 3 actions, each an integer"):
            envs_.step(actions)
    for actions in [[1, 2, 3], np.array([1, 2, 3], np.uint8), np.array([0, 6, 2], np.int32)]:
        assert envs_.step(actions)[0].shape == (3, 64, 64, 3)


def test_sb3_adapter_refuses_float_actions(model):
    from agents.sb3_vec_env import SB3DreamVecEnv

    venv = SB3DreamVecEnv(num_envs=2, checkpoint=model, memory=False)
    venv.reset()
    with pytest.raises(ValueError, match="each an integer in"):
        venv.step(np.array([1.0, 2.0]))
    obs, rewards, dones, infos = venv.step(np.array([1, 2]))  # what SB3's policies give
    assert obs.shape == (2, 64, 64, 3) and len(infos) == 2


@pytest.mark.parametrize("actions", [[1.0, 2.0], [1.5, 2], ["1", "2"], [9, 1]])
def test_context_actions_must_be_integers_in_the_space(env, model, actions):
    with pytest.raises(ValueError, match="context action .* outside the action space Discrete\\(7\\); " + EXPECTED):
        env.reset(options={"context": {**context(model), "actions": actions}})


# ------------------------------------------------------------------ reset options
def test_valid_context_resets_keep_working(env, model):
    frames = model.start_frames[:3]
    for actions in ([1, 3], np.array([1, 3], np.uint8), (np.int64(1), np.int64(3))):
        obs, info = env.reset(seed=0, options={"context": {"frames": frames, "actions": actions}})
        np.testing.assert_array_equal(obs, frames[-1])
        assert info["context_frames"] == 3
    obs, _ = env.reset(options={"context": {"frames": frames[:1]}})  # one frame needs no actions...
    obs, _ = env.reset(options={"context": {"frames": frames[:1], "actions": None}})  # ...and None is no actions
    np.testing.assert_array_equal(obs, frames[0])
    assert env.step(2)[0].shape == (64, 64, 3)


def test_context_none_and_missing_actions_are_refused_clearly(env, model):
    with pytest.raises(ValueError, match=r"context must be a dict \{'frames': \(T, 64, 64, 3\) uint8"):
        env.reset(options={"context": None})
    with pytest.raises(ValueError, match="needs the 2 actions between its 3 frames .*got none"):
        env.reset(options={"context": {**context(model), "actions": None}})
    with pytest.raises(ValueError, match="needs the 2 actions between its 3 frames .*got 5"):
        env.reset(options={"context": {**context(model), "actions": 5}})
    with pytest.raises(ValueError, match=r"frames must be uint8 \(T, 64, 64, 3\)"):
        env.reset(options={"context": {"actions": []}})


def test_reversed_view_of_context_frames_works(env, model):
    frames = model.start_frames[:3]
    bgr = frames[..., ::-1]  # a view with negative strides, as a BGR -> RGB flip gives
    obs, _ = env.reset(seed=0, options={"context": {"frames": bgr, "actions": [1, 3]}})
    np.testing.assert_array_equal(obs, frames[-1, ..., ::-1])
    assert env.step(1)[0].shape == (64, 64, 3)


@pytest.fixture
def episode_path(model, tmp_path):
    frames = np.repeat(model.start_frames[:1], 6, 0)
    t = len(frames) - 1
    writer = DatasetWriter(tmp_path / "data", {"env_id": "worldsim/Rooms-v0"})
    return writer.write(Episode(frames, np.ones(t, np.int64), np.zeros(t, np.float32), np.zeros(t, bool),
                                np.zeros(t, bool)))


def test_episode_start_outside_the_episode_is_refused(env, episode_path):
    for start in (10**6, 6, -5, 1.5):
        with pytest.raises(ValueError, match=r"episode start .* has 6 frames; expected an integer in \[0, 6\)"):
            env.reset(options={"episode": (str(episode_path), start)})
    with pytest.raises(ValueError, match=r"episode must be a path or \(path, start frame\)"):
        env.reset(options={"episode": (str(episode_path),)})
    obs, info = env.reset(options={"episode": str(episode_path)})  # these work
    assert info["context_frames"] == 6
    obs, info = env.reset(options={"episode": (episode_path, 5)})
    assert info["context_frames"] == 1


def test_misspelt_option_keys_are_refused_with_the_known_keys(env, model):
    with pytest.raises(ValueError, match="unknown reset option 'contxt'; known keys: context, episode, prompt"):
        env.reset(options={"contxt": context(model)})
    with pytest.raises(ValueError, match="give one way to start"):
        env.reset(options={"context": context(model), "episode": "x.h5"})
    with pytest.raises(ValueError, match="reset options must be a dict"):
        env.reset(options="context")
    with pytest.raises(ValueError, match="known keys: context, episode, prompt, reset_mask"):
        vector(model).reset(options={"reset_mask ": np.ones(3, bool)})


# ------------------------------------------------------------------ windows and checkers
def test_opencv_can_open_windows_and_writes_mp4_without_a_display(tmp_path):
    """opencv-python (not -headless): its windows work with a display, and without one
    it still imports and writes mp4."""
    code = ("import cv2, numpy as np; from worldsim.dream_video import write_video; "
            f"write_video({str(tmp_path / 'v.mp4')!r}, np.zeros((5, 16, 16, 3), np.uint8)); "
            "print([l.split(':')[1].strip() for l in cv2.getBuildInformation().splitlines() if 'GUI:' in l][0]); "
            f"print(int(cv2.VideoCapture({str(tmp_path / 'v.mp4')!r}).get(cv2.CAP_PROP_FRAME_COUNT)))")
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    gui, frames = out.stdout.split()
    assert gui != "NONE", "OpenCV without GUI support: opencv-python-headless installed instead of opencv-python?"
    assert frames == "5"


def test_check_env_defaults_pass_without_a_display(monkeypatch):
    from gymnasium.utils.env_checker import check_env

    monkeypatch.delenv("DISPLAY", raising=False)
    for env_id, kwargs in (("worldsim/Rooms-v0", {}), ("worldsim/Dream-v0", {"memory": False})):
        with pytest.warns(UserWarning, match="needs a display"):  # it renders every advertised mode, "human" too
            check_env(gym.make(env_id, **kwargs).unwrapped)


def test_latent_observations_render_the_rgb_frame(model):
    env = DreamEnv(model, obs_type="latent", memory=False, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    assert obs.shape == model.dynamics.cfg.latent_shape and env.render().shape == (64, 64, 3)
    obs, *_ = env.step(1)
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    with torch.no_grad():
        np.testing.assert_array_equal(frame, model.decode(torch.from_numpy(obs)[None, None])[0, 0].numpy())
    envs_ = vector(model, 2, obs_type="latent")
    envs_.reset(seed=0)
    assert envs_.render().shape == (2, 64, 64, 3)


# ------------------------------------------------------------------ vector env
def test_vector_autoreset_disabled_waits_for_reset_mask(model):
    envs_ = vector(model, max_steps=2, autoreset_mode=DISABLED)
    envs_.reset(seed=0)
    envs_.step([1, 2, 3])
    last, _, _, truncated, _ = envs_.step([1, 2, 3])
    assert truncated.all()
    with pytest.raises(RuntimeError, match=r"sub-envs \[0, 1, 2\] ended and autoreset_mode is DISABLED.*reset_mask"):
        envs_.step([1, 2, 3])
    obs, info = envs_.reset(options={"reset_mask": np.array([True, False, False])})
    assert any(np.array_equal(obs[0], f) for f in model.start_frames)  # row 0 starts afresh...
    np.testing.assert_array_equal(obs[1:], last[1:])  # ...the others are left as they were
    np.testing.assert_array_equal(info["_steps"], [True, False, False])
    with pytest.raises(RuntimeError, match=r"sub-envs \[1, 2\] ended"):
        envs_.step([1, 2, 3])
    envs_.reset(options={"reset_mask": np.array([False, True, True])})
    _, _, _, truncated, info = envs_.step([1, 2, 3])
    assert not truncated.any() and info["steps"].tolist() == [1, 1, 1]


def test_reset_mask_resets_only_its_rows_and_is_checked(model):
    envs_ = vector(model, max_steps=10)
    with pytest.raises(RuntimeError, match="call envs.reset\\(\\) without it first"):
        envs_.reset(options={"reset_mask": np.ones(3, bool)})
    envs_.reset(seed=0)
    envs_.step([1, 1, 1])
    ctx = context(model)
    obs, info = envs_.reset(options={"reset_mask": np.array([False, True, False]), "context": ctx})
    np.testing.assert_array_equal(obs[1], ctx["frames"][-1])  # the options reach the reset rows
    _, _, _, _, info = envs_.step([1, 1, 1])
    assert info["steps"].tolist() == [2, 1, 2]
    for bad in ([True, False, False], np.ones(3, int), np.ones(2, bool), np.zeros(3, bool)):
        with pytest.raises(ValueError, match="reset_mask"):
            envs_.reset(options={"reset_mask": bad})
    with pytest.raises(ValueError, match="context must be a dict"):
        envs_.reset(options={"context": None})
    assert envs_.step([1, 1, 1])[4]["steps"].tolist() == [3, 2, 3]  # a refused reset changes nothing


def test_vector_infos_have_gymnasium_masks(model):
    keys = ("denoising_steps", "termination_prob", "context_frames", "steps", "memory_frames")
    envs_ = vector(model, max_steps=2, autoreset_mode=SAME_STEP)
    _, info = envs_.reset(seed=0)
    for key in keys:
        assert info[key].shape == (3,) and info[f"_{key}"].all(), key
    _, _, _, _, info = envs_.step([1, 2, 3])
    for key in keys:
        assert info[key].shape == (3,) and info[f"_{key}"].all(), key
    assert "final_obs" not in info
    _, _, _, truncated, info = envs_.step([1, 2, 3])  # all end: reset at once, the ends in final_*
    assert truncated.all() and info["_final_obs"].all() and info["_final_info"].all()
    assert info["final_info"]["steps"].tolist() == [2, 2, 2] and info["final_info"]["_termination_prob"].all()
    assert info["steps"].tolist() == [0, 0, 0]  # the rows' infos are their resets'


# ------------------------------------------------------------------ after the end, SB3 images
def test_rooms_refuses_steps_after_the_end():
    env = RoomsEnv(max_steps=2)
    env.reset(seed=0)
    env.step(0)
    assert env.step(0)[3]  # truncated
    with pytest.raises(RuntimeError, match="after the episode ended \\(truncated at max_steps=2\\); call env.reset"):
        env.step(0)
    env.reset(seed=0)
    assert env.step(np.int64(1))[0].shape == (64, 64, 3)  # numpy ints keep working
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        env.step(1.5)


def test_sb3_get_images_gives_decoded_frames(model):
    from agents.sb3_vec_env import SB3DreamVecEnv

    venv = SB3DreamVecEnv(num_envs=2, checkpoint=model, memory=False, obs_type="latent", render_mode="rgb_array")
    with pytest.raises(RuntimeError, match="before reset"):
        venv.get_images()
    venv.reset()
    images = venv.get_images()
    assert len(images) == 2 and images[0].shape == (64, 64, 3) and images[0].dtype == np.uint8
    assert venv.render().size == 2 * 64 * 64 * 3  # SB3 tiles them


# ------------------------------------------------------------------ real windows under Xvfb
X_TOOLS = ("Xvfb", "xwd", "xdotool")


@pytest.fixture(scope="module")
def display():
    missing = [tool for tool in X_TOOLS if not shutil.which(tool)]
    if missing:
        pytest.skip(f"needs a virtual X server and tools, missing {', '.join(missing)} "
                    "(Debian: apt-get install xvfb x11-apps xdotool)")
    # -displayfd: Xvfb picks a free display and prints its number once it is ready
    server = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    number = server.stdout.readline().decode().strip()
    assert number, "Xvfb did not start"
    yield f":{number}"
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:  # a loaded machine can keep Xvfb from exiting in time
        server.kill()
        server.wait()


def read_xwd(data: bytes) -> np.ndarray:
    """An xwd screenshot (32 bits a pixel, as Xvfb's 24-bit screens give) -> RGB (H, W, 3)."""
    header = np.frombuffer(data[:100], ">u4")
    size, width, height, byte_order, bits, per_line, colours = header[[0, 4, 5, 7, 11, 12, 19]].astype(int)
    assert bits == 32, f"expected 32 bits a pixel, got {bits}"
    start = size + 12 * colours
    pixels = np.frombuffer(data[start:start + height * per_line], "<u4" if byte_order == 0 else ">u4")
    pixels = pixels.reshape(height, per_line // 4)[:, :width]
    return np.stack([(pixels & m) >> (int(m).bit_length() - 8) for m in header[14:17]], -1).astype(np.uint8)


def windows_named(env: dict, name: str) -> list[str]:
    return subprocess.run(["xdotool", "search", "--name", name], env=env, capture_output=True, text=True).stdout.split()


def window_showing_a_frame(env: dict, name: str) -> str | None:
    """The id of a window of that name whose centre shows a picture, not a flat colour; Qt
    may make more than one window of a name, and paints the image a while after mapping."""
    for window in windows_named(env, name):
        shot = subprocess.run(["xwd", "-id", window, "-silent"], env=env, capture_output=True)
        image = read_xwd(shot.stdout) if shot.returncode == 0 else None
        if image is not None and min(image.shape[:2]) >= 256:
            h, w = image.shape[0] // 2, image.shape[1] // 2
            if len(np.unique(image[h - 100:h + 100, w - 100:w + 100].reshape(-1, 3), axis=0)) > 20:
                return window
    return None


def test_play_shows_the_dream_in_a_window(display):
    env = {**os.environ, "DISPLAY": display}
    play = subprocess.Popen([sys.executable, "-m", "worldsim.cli", "play"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline, window = time.time() + 300, None  # a loaded machine starts slowly
        while window is None and time.time() < deadline and play.poll() is None:
            window = window_showing_a_frame(env, "worldsim play")
            time.sleep(0.5)
        assert play.poll() is None, f"worldsim play ended: {play.communicate()[1][-2000:]}"
        assert window, (f"{len(windows_named(env, 'worldsim play'))} 'worldsim play' windows, none showing a frame "
                        "after 300 s")
        subprocess.run(["xdotool", "windowfocus", window, "key", "Escape"], env=env, check=True)  # Esc quits
        out, err = play.communicate(timeout=60)
    finally:
        if play.poll() is None:
            play.kill()
    assert play.returncode == 0, err[-2000:]
    assert json.loads(out)["steps"] >= 1


def test_human_render_mode_shows_windows_with_a_display(display):
    """gymnasium's checker renders Rooms in every advertised mode, human too; the dream's
    human mode goes through the same window code (its checker run is above)."""
    code = ("import gymnasium as gym, envs, worldsim; from gymnasium.utils.env_checker import check_env; "
            "check_env(gym.make('worldsim/Rooms-v0').unwrapped); "
            "env = gym.make('worldsim/Dream-v0', memory=False, render_mode='human'); env.reset(seed=0); env.step(1); "
            "print('passed')")
    out = subprocess.run([sys.executable, "-W", "error::UserWarning:envs.window", "-c", code],
                         env={**os.environ, "DISPLAY": display}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "passed" in out.stdout, out.stderr[-2000:]
