"""Fault injection on data and checkpoints (issue 20): each bad input or fault gets a clear
error naming the file and what was expected, or correct behaviour; no episode duplicated
or lost. Tiny data throughout."""

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest

from training.collect import collect
from worldsim.dataset import (DatasetError, DatasetWriter, Episode, WindowDataset, episode_paths, load_meta,
                              read_episode, summarize)

ROOT = Path(__file__).parents[1]


def small_episode(rng, steps=8, size=16, attrs=None):
    return Episode(frames=rng.integers(0, 256, (steps + 1, size, size, 3), dtype=np.uint8),
                   actions=rng.integers(0, 3, steps), rewards=np.zeros(steps, np.float32),
                   terminated=np.zeros(steps, bool), truncated=np.eye(1, steps, steps - 1, dtype=bool)[0],
                   attrs=attrs or {})


# ------------------------------------------------------------------ data: collect twice
def test_collect_twice_with_one_seed_records_new_episodes(tmp_path, capsys):
    out = tmp_path / "data"
    kwargs = {"max_steps": 10}
    first = collect("worldsim/Rooms-v0", "random", 20, str(out), num_envs=1, seed=0, env_kwargs=kwargs, progress=False)
    second = collect("worldsim/Rooms-v0", "random", 20, str(out), num_envs=1, seed=0, env_kwargs=kwargs, progress=False)
    assert first["seed"] == 0 and second["seed"] == 1
    assert "seeds 0-0 were used by an earlier collect" in capsys.readouterr().err
    episodes = [read_episode(p) for p in episode_paths(out)]
    assert len(episodes) == 4
    firsts = {e.frames[0].tobytes() for e in episodes}
    assert len({e.frames.tobytes() for e in episodes}) == 4 and len(firsts) == 4  # nothing replayed
    collects = load_meta(out)["collects"]
    assert [(c["seed"], c["num_envs"], c["policy"], c["env_kwargs"]) for c in collects] == \
        [(0, 1, "random", kwargs), (1, 1, "random", kwargs)]


def test_seed_claims_skip_every_seed_used_before(tmp_path):
    writer = DatasetWriter(tmp_path, {"env_id": "test"})
    assert writer.claim_seeds(0, 2, {}) == 0  # seeds 0, 1
    assert writer.claim_seeds(1, 2, {}) == 2  # as the dream loop asks: seed + iteration
    assert writer.claim_seeds(10, 1, {}) == 10
    assert writer.claim_seeds(3, 8, {}) == 11  # 3..10 overlaps 2, 3 and 10
    assert DatasetWriter(tmp_path, {"env_id": "test"}).claim_seeds(0, 1, {}) == 4  # read back from dataset.json


def test_collect_into_a_dataset_without_seed_records_warns(tmp_path, capsys):
    out = tmp_path / "data"
    collect("worldsim/Rooms-v0", "random", 10, str(out), num_envs=1, env_kwargs={"max_steps": 10}, progress=False)
    meta = load_meta(out)
    del meta["collects"]  # as written before datasets kept their seeds
    (out / "dataset.json").write_text(json.dumps(meta))
    capsys.readouterr()
    collect("worldsim/Rooms-v0", "random", 10, str(out), num_envs=1, env_kwargs={"max_steps": 10}, progress=False)
    assert "the 1 episode(s) already in" in capsys.readouterr().err


# ------------------------------------------------------------------ data: concurrent writers
def _writer_process(root, who, n, barrier, claimed):
    rng = np.random.default_rng(who)
    barrier.wait()
    claimed.put(DatasetWriter(root, {"env_id": "test"}).claim_seeds(0, 2, {"who": who}))
    for k in range(n):  # a new writer each time: its start-up cleans stale files while the other writes
        DatasetWriter(root, {"env_id": "test"}).write(small_episode(rng, attrs={"who": who, "k": k}))


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    ctx = mp.get_context("fork")
    barrier, claimed, n = ctx.Barrier(3), ctx.Queue(), 15
    procs = [ctx.Process(target=_writer_process, args=(tmp_path, who, n, barrier, claimed)) for who in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    seeds = sorted(claimed.get(timeout=5) for _ in procs)
    assert seeds == [0, 2, 4]  # each got its own seeds
    paths = episode_paths(tmp_path)
    assert [p.name for p in paths] == [f"ep_{i:06d}.h5" for i in range(3 * n)]  # no gap, no overwrite
    got = sorted((int(e.attrs["who"]), int(e.attrs["k"])) for e in map(read_episode, paths))
    assert got == [(w, k) for w in range(3) for k in range(n)]
    assert not list(tmp_path.glob("**/.*.tmp"))
    assert len(load_meta(tmp_path)["collects"]) == 3


def test_a_live_writers_temporary_file_survives_a_new_writer(tmp_path):
    DatasetWriter(tmp_path, {})
    live = tmp_path / "train" / f".ep_000003.h5.{os.getpid()}-abcd.tmp"
    dead = tmp_path / "train" / ".ep_000007.h5.tmp"  # an older writer's name, no pid: stale
    live.write_bytes(b"being written")
    dead.write_bytes(b"partial")
    DatasetWriter(tmp_path, {})
    assert live.exists() and not dead.exists()


def test_a_gap_in_the_numbering_is_filled_not_overwritten(tmp_path, rng):
    writer = DatasetWriter(tmp_path, {})
    paths = [writer.write(small_episode(rng, attrs={"k": k})) for k in range(3)]
    paths[1].unlink()  # a damaged episode deleted, as the errors advise
    again = DatasetWriter(tmp_path, {})
    again.write(small_episode(rng, attrs={"k": 3}))
    again.write(small_episode(rng, attrs={"k": 4}))
    assert read_episode(paths[2]).attrs["k"] == 2
    assert sorted(int(read_episode(p).attrs["k"]) for p in episode_paths(tmp_path)) == [0, 2, 3, 4]


# ------------------------------------------------------------------ data: a dying worker
class DyingEnv(gym.Env):
    """Episodes of 3 steps; the sub-env seeded odd dies at its 7th step, leaving behind a
    forked child that holds its pipe open, as a game process forked by native code can."""

    observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, pid_file=None):
        self.pid_file, self.t, self.dies = pid_file, 0, False

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None and seed % 2 and not self.dies:
            self.dies = True
            holder = os.fork()
            if holder == 0:  # keeps every fd but stdin/out/err (those would hold up the test's subprocess.run)
                os.closerange(0, 3)
                time.sleep(60)
                os._exit(0)
            Path(self.pid_file).write_text(str(holder))
        return np.zeros((8, 8, 3), np.uint8), {}

    def step(self, action):
        self.t += 1
        if self.dies and self.t == 7:
            os._exit(3)
        return np.full((8, 8, 3), self.t, np.uint8), 0.0, False, self.t % 3 == 0, {}


def test_a_dead_collect_worker_ends_the_collect_with_a_clear_error(tmp_path):
    out, pid_file = tmp_path / "data", tmp_path / "holder.pid"
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "import gymnasium as gym, test_faults_data as t\n"
              "gym.register('faults/Dying-v0', entry_point=t.DyingEnv)\n"
              "from worldsim.cli import main\n"
              f"sys.exit(main(['collect', '--env', 'faults/Dying-v0', '--policy', 'random', '--steps', '200',"
              f" '--out', {str(out)!r}, '--env-kwargs', {json.dumps({'pid_file': str(pid_file)})!r}, '--quiet']))\n")
    try:
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("collect hung on a dead worker")
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert done.returncode == 2, done.stderr
    assert "worker process of sub-env 1 (exit code 3) died" in done.stderr and "Traceback" not in done.stderr
    assert "episodes finished before are kept" in done.stderr
    assert len(episode_paths(out)) >= 2  # two 3-step episodes from each sub-env ended before it died
    for p in episode_paths(out):
        assert len(read_episode(p)) == 3


# ------------------------------------------------------------------ data: a damaged chunk
def _damage_chunk(path, name="frames", chunk=1):
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info(chunk)
    with open(path, "r+b") as f:
        f.seek(info.byte_offset + info.size // 2)
        f.write(b"\xff" * 64)


def test_a_damaged_chunk_is_found_and_named(tmp_path, rng):
    writer = DatasetWriter(tmp_path, {"env_id": "test", "frame_shape": [16, 16, 3]})
    paths = [writer.write(small_episode(rng, steps=40)) for _ in range(3)]
    assert summarize(tmp_path)["splits"]["train"] == {"episodes": 1, "frames": 41, "steps": 40,
                                                      "bytes": paths[0].stat().st_size}
    _damage_chunk(paths[0])  # frames 32-40: opening and lengths still work
    with pytest.raises(DatasetError, match=rf"(?s)1 damaged episode.*{paths[0]}: frames is damaged"):
        summarize(tmp_path)
    with pytest.raises(DatasetError, match=rf"{paths[0]}.*corrupt episode data"):
        read_episode(paths[0])
    windows = WindowDataset(tmp_path, split="train", context=4)
    windows[0]  # undamaged chunk
    with pytest.raises(DatasetError, match=rf"{paths[0]}: cannot read frames 30-34.*damaged"):
        windows[30]


def test_encoding_a_damaged_episode_names_it(tmp_path, rng):
    from training.train_tokenizer import encode_dataset

    writer = DatasetWriter(tmp_path / "data", {"env_id": "test", "frame_shape": [64, 64, 3]})
    path = writer.write(small_episode(rng, steps=40, size=64))
    _damage_chunk(path)
    tokenizer = ROOT / "worldsim" / "checkpoints" / "rooms_tokenizer.safetensors"
    with pytest.raises(DatasetError, match=rf"{path}: frames is damaged"):
        encode_dataset(str(tokenizer), str(tmp_path / "data"), str(tmp_path / "latents"), progress=False)


def test_worldsim_dataset_fails_on_a_damaged_chunk(tmp_path, rng, capsys):
    from worldsim.cli import main

    writer = DatasetWriter(tmp_path, {"env_id": "test", "frame_shape": [16, 16, 3]})
    path = writer.write(small_episode(rng, steps=40))
    _damage_chunk(path)
    assert main(["dataset", str(tmp_path)]) == 2
    assert f"{path}: frames is damaged" in capsys.readouterr().err


# ------------------------------------------------------------------ data: video import
def test_import_video_refuses_what_is_not_a_video(tmp_path, capsys):
    from worldsim.cli import main
    from worldsim.video_import import import_videos

    notes = tmp_path / "notes.txt"
    notes.write_text("a first-person walk through coloured rooms\n" * 20)
    with pytest.raises(DatasetError, match=r"notes.txt: not a video file \(suffix '.txt'\); expected a video \(.mp4"):
        import_videos(str(notes), str(tmp_path / "out"), progress=False)
    assert main(["import-video", str(notes), "--out", str(tmp_path / "out2"), "--quiet"]) == 2
    assert "not a video file" in capsys.readouterr().err
    fake = tmp_path / "fake.mp4"  # text under a video's name: FFmpeg cannot open it
    fake.write_text("not a video\n" * 20)
    with pytest.raises(DatasetError, match="fake.mp4: cannot open; expected a video file"):
        import_videos(str(fake), str(tmp_path / "out3"), progress=False)
    assert not (tmp_path / "out").exists()  # nothing written for a refused input


# ------------------------------------------------------------------ training logs
def _toy_run(out, steps, stop_at=None):
    import torch

    from training.loop import LoopConfig, run

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    cfg = LoopConfig(out=str(out), steps=steps, warmup=1, log_every=1, ckpt_every=1, stop_at=stop_at)
    loss_of = lambda m, batch: ((m(batch) ** 2).mean(), {"loss": 0.0})  # noqa: E731
    return run(model, cfg, "toy", {"kind": "toy", "toy": {"in": 2}}, lambda step, rank: torch.ones(4, 2), loss_of,
               len, progress=False)


def test_metrics_csv_gets_its_header_after_a_run_killed_before_its_first_row(tmp_path):
    import csv

    tmp_path.joinpath("metrics.csv").write_text("")  # killed before the first row was written
    _toy_run(tmp_path, steps=2, stop_at=1)
    _toy_run(tmp_path, steps=2)  # resumed: appends, no second header
    rows = list(csv.reader(tmp_path.joinpath("metrics.csv").open()))
    assert rows[0][:2] == ["step", "loss"] and [r[0] for r in rows[1:]] == ["1", "2"]


# ------------------------------------------------------------------ checkpoints
SEVEN = {"type": "Discrete", "n": 7, "start": 0}


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """A tiny untrained world model for 16x16 frames and 7 actions, saved; returns its path."""
    from worldsim.dynamics import Dynamics, DynamicsConfig
    from worldsim.tokenizer import Tokenizer, TokenizerConfig
    from worldsim.world_model import WorldModel

    tokenizer = Tokenizer(TokenizerConfig(frame_size=(16, 16), latent_channels=4, downsample=4, channels=(8, 8),
                                          stem_channels=8))
    dynamics = Dynamics(DynamicsConfig(latent_shape=(4, 4, 4), action_space=SEVEN, d_model=32, n_layers=1, n_heads=2,
                                       max_frames=4, sample_steps=1))
    start = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("tiny") / "world.safetensors"
    WorldModel(tokenizer, dynamics, {"env_id": "test", "action_space": SEVEN, "frame_shape": [16, 16, 3]},
               start).save(path, half=False)
    return path


def _tampered(good, out, tensors=None, config=None, raw=None):
    """A copy of checkpoint `good` with its tensors or config changed (raw: the metadata text)."""
    from safetensors.torch import save_file

    from worldsim.checkpoint import load_checkpoint

    t, c = load_checkpoint(good)
    t, c = (tensors or (lambda t: t))(t), (config or (lambda c: c))(c)
    save_file(t, str(out), metadata={"worldsim": raw if raw is not None else json.dumps(c)})
    return out


def _set(d, **changes):
    return {**d, **changes}


def _drop(d, key):
    return {k: v for k, v in d.items() if k != key}


def _nan(t, key):
    t = dict(t)
    t[key] = t[key].clone()
    t[key].view(-1)[0] = float("nan")
    return t


CHECKPOINT_FAULTS = {
    "nan weight": (dict(tensors=lambda t: _nan(t, "dynamics/heads.out.2.weight")),
                   r"tensor\(s\) dynamics/heads.out.2.weight hold NaN or infinite values; expected finite weights"),
    "inf weight": (dict(tensors=lambda t: {**t, "tokenizer/latent_scale": t["tokenizer/latent_scale"] * np.inf}),
                   r"tokenizer/latent_scale hold NaN or infinite"),
    "malformed json": (dict(raw='{"kind": "world_model", '), "config is not valid JSON"),
    "json list": (dict(raw='["world_model"]'), "config is a JSON list; expected an object"),
    "unknown key": (dict(config=lambda c: _set(c, dynamics=_set(c["dynamics"], n_head=2))),
                    r"the 'dynamics' config has unknown setting\(s\) \['n_head'\]; expected some of .*'n_heads'"),
    "no dynamics": (dict(config=lambda c: _drop(c, "dynamics")),
                    "no 'dynamics' config section; expected a JSON object of DynamicsConfig settings"),
    "dynamics a list": (dict(config=lambda c: _set(c, dynamics=[1, 2])), "'dynamics' config is a JSON list"),
    "wrong type": (dict(config=lambda c: _set(c, dynamics=_set(c["dynamics"], n_heads="four"))),
                   "'dynamics' config has n_heads='four'; expected int, like the default 6"),
    "wrong tuple": (dict(config=lambda c: _set(c, tokenizer=_set(c["tokenizer"], frame_size=["16", 16]))),
                    r"'tokenizer' config has frame_size=\['16', 16\]; expected tuple"),
    "inconsistent": (dict(config=lambda c: _set(c, dynamics=_set(c["dynamics"], n_heads=3))),
                     "'dynamics' config is inconsistent: d_model 32 must split into 3 heads"),
    "bad action space": (dict(config=lambda c: _set(c, dynamics=_set(c["dynamics"], action_space={"type": "Nope"}))),
                         "cannot build the model its config describes"),
    "no start frames": (dict(tensors=lambda t: _drop(t, "start_frames")),
                        r"start_frames are none; expected uint8 \(N, 16, 16, 3\)"),
    "start frames of another size": (dict(tensors=lambda t: _set(t, start_frames=t["start_frames"][:, :8, :8]
                                                                  .contiguous())),
                                     r"start_frames are torch.uint8 \(2, 8, 8, 3\); expected uint8 \(N, 16, 16, 3\)"),
    "start frames as floats": (dict(tensors=lambda t: _set(t, start_frames=t["start_frames"].float())),
                               "start_frames are torch.float32"),
    "3 actions on 7-way weights": (dict(config=lambda c: _set(c, action_space={**SEVEN, "n": 3})),
                                   r"action_space \{'type': 'Discrete', 'n': 3.*is not the one its weights were "
                                   r"trained on; expected \{'type': 'Discrete', 'n': 7"),
    "no action space": (dict(config=lambda c: _drop(c, "action_space")), "action_space None is not the one"),
}


@pytest.mark.parametrize("fault", CHECKPOINT_FAULTS)
def test_a_bad_world_model_is_refused_at_load_naming_the_file(tiny_world, tmp_path, fault):
    from worldsim.checkpoint import CheckpointError

    change, expected = CHECKPOINT_FAULTS[fault]
    bad = _tampered(tiny_world, tmp_path / "bad.safetensors", **change)
    with pytest.raises(CheckpointError, match=rf"{bad}: .*{expected}"):
        gym.make("worldsim/Dream-v0", checkpoint=str(bad))


def test_the_good_world_model_loads_and_steps(tiny_world):
    env = gym.make("worldsim/Dream-v0", checkpoint=str(tiny_world))
    obs, _ = env.reset(seed=0)
    obs, reward, *_ = env.step(1)
    assert obs.shape == (16, 16, 3) and np.isfinite(reward) and env.action_space == gym.spaces.Discrete(7)


def test_worldsim_dream_reports_a_bad_checkpoint_without_a_traceback(tiny_world, tmp_path, capsys):
    from worldsim.cli import main

    bad = _tampered(tiny_world, tmp_path / "nan.safetensors",
                    tensors=lambda t: _nan(t, "tokenizer/decoder.net.9.weight"))
    assert main(["dream", "--checkpoint", str(bad), "--episode", str(tmp_path / "ep.h5"), "--out",
                 str(tmp_path / "d.mp4")]) == 2
    assert f"worldsim dream: error: {bad}: tensor(s) tokenizer/decoder.net.9.weight hold NaN" in capsys.readouterr().err


def test_a_bad_tokenizer_config_is_refused_naming_the_file(tmp_path):
    from worldsim.checkpoint import CheckpointError
    from worldsim.tokenizer import Tokenizer

    good = Path(__file__).parents[1] / "worldsim" / "checkpoints" / "rooms_tokenizer.safetensors"
    bad = _tampered(good, tmp_path / "tok.safetensors",
                    config=lambda c: _set(c, tokenizer=_set(c["tokenizer"], latent_channels=8.5)))
    with pytest.raises(CheckpointError, match=rf"{bad}: the 'tokenizer' config has latent_channels=8.5; expected int"):
        Tokenizer.load(bad)
