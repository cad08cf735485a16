"""Episodes on disk, the collector, the window loader and the video importer."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from envs.rooms import ACTIONS
from training.collect import collect
from worldsim.dataset import (DatasetError, DatasetWriter, Episode, WindowDataset, episode_paths, load_meta,
                              read_episode)
from worldsim.dream_video import write_video
from worldsim.video_import import import_videos


def make_episode(rng, steps=10, size=16):
    return Episode(
        frames=rng.integers(0, 256, (steps + 1, size, size, 3), dtype=np.uint8),
        actions=rng.integers(0, 7, steps), rewards=rng.random(steps).astype(np.float32),
        terminated=np.eye(1, steps, steps - 1, dtype=bool)[0], truncated=np.zeros(steps, bool),
        gt={"pose": rng.random((steps + 1, 3)).astype(np.float32)}, attrs={"caption": "a test"})


def test_round_trip_and_splits(tmp_path, rng):
    writer = DatasetWriter(tmp_path, {"env_id": "test", "frame_shape": [16, 16, 3]})
    originals = [make_episode(rng, steps=5 + i) for i in range(3)]
    paths = [writer.write(e) for e in originals]
    assert [p.parent.name for p in paths] == ["train", "val", "test"]
    for path, original in zip(paths, originals):
        back = read_episode(path)
        for name in ("frames", "actions", "rewards", "terminated", "truncated"):
            np.testing.assert_array_equal(getattr(back, name), getattr(original, name))
        np.testing.assert_array_equal(back.gt["pose"], original.gt["pose"])
        assert back.attrs["caption"] == "a test"
    # Reopening appends after what is there, never overwrites.
    again = DatasetWriter(tmp_path, {"env_id": "test", "frame_shape": [16, 16, 3]})
    assert again.write(make_episode(rng)).name == "ep_000003.h5"
    assert len(episode_paths(tmp_path)) == 4
    with pytest.raises(DatasetError, match="env_id"):
        DatasetWriter(tmp_path, {"env_id": "another", "frame_shape": [16, 16, 3]})


def test_inconsistent_episode_is_refused(tmp_path, rng):
    writer = DatasetWriter(tmp_path, {})
    bad = make_episode(rng)
    bad.frames = bad.frames[:-1]
    with pytest.raises(DatasetError, match="T\\+1 frames"):
        writer.write(bad)
    assert episode_paths(tmp_path) == []


def test_corrupt_and_truncated_files_give_clear_errors(tmp_path, rng):
    writer = DatasetWriter(tmp_path, {})
    path = writer.write(make_episode(rng, steps=40, size=32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=f"{path.name}.*expected an HDF5 episode"):
        read_episode(path)
    path.write_bytes(b"not an episode")
    with pytest.raises(DatasetError, match="expected an HDF5 episode"):
        WindowDataset(tmp_path, split="train", context=2)
    with pytest.raises(DatasetError, match="dataset.json"):
        episode_paths(tmp_path / "nowhere")


def test_unwritable_output_is_reported(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(DatasetError, match="cannot write a dataset"):
        DatasetWriter(blocker / "data", {})


def test_collect_writes_all_splits_with_ground_truth(rooms_dataset):
    meta = load_meta(rooms_dataset)
    assert meta["env_id"] == "worldsim/Rooms-v0" and meta["action_meanings"][1] == "FORWARD"
    paths = episode_paths(rooms_dataset)
    assert {p.parent.name for p in paths} == {"train", "val", "test"}
    steps = 0
    for p in paths:
        e = read_episode(p)
        steps += len(e)
        assert e.frames.shape[1:] == (64, 64, 3)
        assert e.terminated[-1] or e.truncated[-1]  # every episode ends in an end flag
        assert set(e.gt) >= {"pose", "objects_in_view", "objects_column", "depth", "object_ids"}
    assert steps == 1200


def test_loader_windows_line_up_frames_with_their_actions(rooms_dataset):
    """actions[j] is what turned window frame j into frame j+1: check it on the ground-truth pose."""
    ds = WindowDataset(rooms_dataset, split="train", context=3, horizon=2, stride=3, gt_keys=("pose",))
    turn = 2 * np.pi / 24
    seen = {name: 0 for name in ACTIONS}
    for i in range(len(ds)):
        item = ds[i]
        assert item["context"].shape == (3, 64, 64, 3) and item["target"].shape == (2, 64, 64, 3)
        assert item["actions"].shape == (4,) and item["gt/pose"].shape == (5, 3)
        pose = item["gt/pose"]
        for j, a in enumerate(item["actions"]):
            name = ACTIONS[a]
            seen[name] += 1
            dyaw = (pose[j + 1, 2] - pose[j, 2] + np.pi) % (2 * np.pi) - np.pi
            move = pose[j + 1, :2] - pose[j, :2]
            heading = np.array([np.cos(pose[j, 2]), np.sin(pose[j, 2])])
            if name == "TURN_LEFT":
                assert dyaw == pytest.approx(turn, abs=1e-4)
            elif name == "TURN_RIGHT":
                assert dyaw == pytest.approx(-turn, abs=1e-4)
            else:
                assert dyaw == pytest.approx(0, abs=1e-6)
            if name == "NOOP":
                assert np.allclose(move, 0)
            if name == "FORWARD":
                assert move @ heading >= -1e-6  # forward, or blocked by a wall
            if name == "BACK":
                assert move @ heading <= 1e-6
        # The window's frames are the episode's frames from its start, in order.
        e, t = ds.index[i]
        if i % 25 == 0:
            episode = read_episode(ds.paths[e])
            np.testing.assert_array_equal(np.concatenate([item["context"], item["target"]]), episode.frames[t:t + 5])
            np.testing.assert_array_equal(item["actions"], episode.actions[t:t + 4])
    assert seen["TURN_LEFT"] + seen["TURN_RIGHT"] > 20 and seen["FORWARD"] > 20


def test_explore_policy_turns_full_circles_and_comes_back(rooms_dataset):
    """The explore data holds full turns (24 same-direction turns), looks away and back (k
    turns one way, a wait, k turns back) and returns to earlier places."""
    import re

    longest_turn, returns, look_backs = 0, 0, 0
    for p in episode_paths(rooms_dataset):
        e = read_episode(p)
        letters = "".join({"TURN_LEFT": "L", "TURN_RIGHT": "R", "NOOP": "."}.get(ACTIONS[a], "x") for a in e.actions)
        look_backs += sum(len(m[0]) >= 3 and m[1] == m[0].translate(str.maketrans("LR", "RL"))
                          for m in re.findall(r"(?=(L+|R+)\.*(R+|L+))", letters))
        run = 0
        for a in e.actions:
            run = run + 1 if ACTIONS[a] in ("TURN_LEFT", "TURN_RIGHT") else 0
            longest_turn = max(longest_turn, run)
        xy = e.gt["pose"][:, :2]
        far = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
        t = np.arange(len(xy))
        # Back within a quarter cell of a place left more than 10 steps earlier, after going over 1 cell away.
        for i in range(0, len(xy), 5):
            later = t > i + 10
            went_away = (far[i] > 1.0) & later
            if went_away.any() and (far[i, t > np.argmax(went_away)] < 0.25).any():
                returns += 1
    assert longest_turn >= 24
    assert returns > 0
    assert look_backs > 0


def test_killed_collector_leaves_finished_episodes_readable(tmp_path):
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "worldsim.cli", "collect", "--env", "worldsim/Rooms-v0", "--steps", "1000000",
           "--num-envs", "1", "--out", str(out), "--env-kwargs", '{"max_steps": 30}', "--quiet"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while len(list(out.glob("*/ep_*.h5"))) < 5:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "collector wrote no episodes in time"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    paths = episode_paths(out)
    assert len(paths) >= 5
    for p in paths:
        e = read_episode(p)
        assert len(e) == 30 and e.truncated[-1]
    # Restarting cleans any half-written temporary file and continues the numbering.
    (out / "train" / ".ep_999999.h5.tmp").write_bytes(b"partial")
    writer = DatasetWriter(out, load_meta(out))
    assert not list(out.glob("*/.ep_*.tmp"))
    assert writer.count == len(paths)


def test_collect_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown env id 'worldsim/Nope-v0' .*worldsim registers: .*Rooms-v0"):
        collect("worldsim/Nope-v0", "random", 10, str(tmp_path / "x"))
    with pytest.raises(ValueError, match="unknown policy"):
        collect("worldsim/Rooms-v0", "clever", 10, str(tmp_path / "y"), num_envs=1)


def test_collect_with_a_saved_agent(tmp_path):
    from stable_baselines3 import PPO

    import gymnasium as gym
    from agents.policies import load_agent, save_agent

    model = PPO("CnnPolicy", gym.make("worldsim/Rooms-v0"), n_steps=32, batch_size=32, n_epochs=1, seed=0)
    save_agent(model, tmp_path / "agent")
    obs = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    expected, _ = model.predict(obs, deterministic=True)
    got, _ = load_agent(tmp_path / "agent").predict(obs, deterministic=True)
    np.testing.assert_array_equal(got, expected)
    summary = collect("worldsim/Rooms-v0", str(tmp_path / "agent"), 64, str(tmp_path / "data"), num_envs=1,
                      progress=False)
    assert summary["steps"] == 64 and len(episode_paths(tmp_path / "data")) == 1


def test_import_video_makes_an_action_free_dataset(tmp_path, rooms_dataset):
    frames = read_episode(episode_paths(rooms_dataset, "train")[0]).frames[:40]
    big = np.stack([cv2.resize(f, (96, 72)) for f in frames])  # not square: centre-cropped
    src = tmp_path / "videos"
    src.mkdir()
    write_video(src / "walk.mp4", big, scale=1)
    (src / "walk.txt").write_text("a first-person walk through coloured rooms")
    (src / "broken.mp4").write_bytes(os.urandom(2000))
    summary = import_videos(str(src), str(tmp_path / "footage"), size=32, clip_frames=16, progress=False)
    assert summary["episodes_written"] == 3 and len(summary["failed"]) == 1 and "broken.mp4" in summary["failed"][0]
    episodes = [read_episode(p) for p in episode_paths(tmp_path / "footage")]
    assert sum(len(e) for e in episodes) == 39  # clips share their boundary frame
    e = episodes[0]
    assert e.actions is None and e.frames.shape[1:] == (32, 32, 3)
    assert e.attrs["caption"] == "a first-person walk through coloured rooms"
    # The decoded footage looks like the frames that went in (lossy codec, centre crop).
    expected = cv2.resize(big[0][:, 12:84], (32, 32), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(e.frames[0].astype(float) - expected).mean() < 20
    window = WindowDataset(tmp_path / "footage", split="train", context=2, horizon=1)[0]
    assert "actions" not in window and window["context"].shape == (2, 32, 32, 3)


def test_import_video_with_nothing_decodable_fails_clearly(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(DatasetError, match="bad.mp4.*decode"):
        import_videos(str(tmp_path), str(tmp_path / "out"), progress=False)
