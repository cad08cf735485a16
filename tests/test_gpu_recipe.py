"""The one-command GPU recipe, end to end on CPU with a tiny config: what a session that
gets a GPU runs first, so it must work before a GPU is at hand."""

import json
from dataclasses import replace

import gymnasium as gym
import pytest

import training.gpu_recipe as gpu_recipe
import training.train_dynamics as train_dynamics
from training.gpu_recipe import main


def test_gpu_recipe_collects_trains_exports_and_scores_on_unseen_maps(tmp_path, monkeypatch):
    timed, trained = [], []  # the recipe must time the very run it trains: same options, same windows
    time_it, train_it = gpu_recipe.seconds_per_step, train_dynamics.train
    monkeypatch.setattr(gpu_recipe, "seconds_per_step", lambda cfg, data, *a: timed.append((cfg, data)) or time_it(cfg, data, *a))
    monkeypatch.setattr(train_dynamics, "train", lambda cfg, **k: trained.append(cfg) or train_it(cfg, **k))
    out = tmp_path / "out"
    args = ["--out", str(out), "--work", str(tmp_path / "work"), "--collect-steps", "2400", "--num-envs", "2",
            "--collectors", "2", "--configs", "tiny", "--minutes", "0.1", "--min-steps", "1", "--batch-size", "2",
            "--eval-windows", "2", "--horizons", "1,4", "--loader-workers", "2", "--text", "--memory-match", "0.2", "--quiet"]
    main(args)
    (cfg, data), = timed
    assert replace(cfg, steps=trained[0].steps, warmup=trained[0].warmup) == trained[0]
    assert data.match == 0.2 and data.captions is not None and data.window == 8  # tiny's context
    assert trained[0].patch == gpu_recipe.GAMES["rooms"]["patch"]  # the game's, where --patch is not given
    figures = json.loads((out / "figures.json").read_text())
    assert figures["config"] == "tiny" and figures["steps"] >= 1 and figures["seconds_per_step"]["tiny"] > 0
    scores = figures["held_out"]
    assert scores["split"] == "test" and scores["windows"] == 2
    for h in ("1", "4"):  # the shipped tokenizer's reconstruction is far above holding the last frame
        assert scores["tokenizer_ceiling_psnr_db"][h] > scores["copy_last_frame_psnr_db"][h] + 5
    assert {"dream_psnr_db", "dream_memory_off_psnr_db"} <= set(scores)
    assert (out / "replay.png").stat().st_size > 0 and (out / "metrics.csv").read_text().startswith("step,")
    env = gym.make("worldsim/Dream-v0", checkpoint=str(out / "rooms.safetensors"))
    model = env.unwrapped.model
    assert model.info["env_kwargs"] == {"world_seed": None} and model.has_memory
    assert model.dynamics.cfg.text_dim and model.info["train"]["action_dropout"] == 0.15
    assert model.dynamics.cfg.action_guidance == 2.0 and model.dynamics.cfg.text_guidance == 3.0
    env.reset(seed=0)
    env.step(1)
    (out / "rooms.safetensors").unlink()  # as if the time limit struck before the export: --salvage exports the run
    with pytest.raises(ValueError, match="other options"):  # another recipe's run is not salvaged as this one's
        main(["--out", str(out), "--work", str(tmp_path / "work"), "--text", "--salvage"])
    assert not (out / "rooms.safetensors").exists()
    main(args + ["--salvage"])
    assert gym.make("worldsim/Dream-v0", checkpoint=str(out / "rooms.safetensors")).unwrapped.model.has_memory


def test_gpu_recipe_for_crafter_calibrates_the_ends_of_its_walks(tmp_path):
    pytest.importorskip("crafter")
    out = tmp_path / "out"
    main(["--game", "crafter", "--out", str(out), "--work", str(tmp_path / "work"), "--collect-steps", "4000",
          "--num-envs", "2", "--collectors", "2", "--configs", "tiny", "--minutes", "0.05", "--min-steps", "1",
          "--batch-size", "2", "--eval-windows", "2", "--horizons", "1,4", "--loader-workers", "2",
          "--events", "achievements", "--reward-share", "0.25", "--quiet"])  # as the shipped model trains
    figures = json.loads((out / "figures.json").read_text())
    assert figures["held_out"]["windows"] == 2 and figures["held_out"]["split"] == "test"
    assert "unlocks" in figures["heads"] and "reward_rest" in figures["heads"]
    calibration = figures["end_calibration"]
    assert calibration["split"] == "val" and calibration["real_ends"] > 0  # random play dies; the dream is shifted to match
    model = gym.make("worldsim/Dream-v0", checkpoint=str(out / "crafter.safetensors")).unwrapped.model
    assert model.info["env_id"] == "worldsim/Crafter-v0" and not model.has_memory
    assert model.info["train"]["end_weight"] == 1.0 and model.dynamics.cfg.patch == 4
    assert len(model.dynamics.cfg.events) == 22  # Crafter's achievements, counted


def test_gpu_recipe_takes_the_patch_size_from_the_command_line():
    import argparse

    from training.gpu_recipe import RecipeConfig
    from worldsim.options import add_fields, from_args

    parser = argparse.ArgumentParser()
    add_fields(parser, RecipeConfig)
    assert from_args(parser.parse_args(["--out", "o", "--patch", "2"]), RecipeConfig).train.patch == 2
    assert from_args(parser.parse_args(["--out", "o"]), RecipeConfig).train.patch is None  # the game's
    assert "the game's" in parser.format_help()


def test_gpu_recipe_refuses_a_work_folder_made_with_other_options(tmp_path):
    """A second chunk in the same --work must not resume the first chunk's finished run."""
    from training.gpu_recipe import RecipeConfig, check_work

    first = RecipeConfig(out=str(tmp_path / "out"), work=str(tmp_path / "work"))
    first.train.seed = 48
    check_work(first)
    check_work(replace(first, minutes=2.0, out=str(tmp_path / "again")))  # a rerun with another budget resumes
    second = replace(first, train=replace(first.train, seed=64, init="campaign.safetensors"))
    with pytest.raises(ValueError, match=r"train\.seed: 48 there, 64 now.*train\.init.*new --work"):
        check_work(second)
    finer = replace(first, train=replace(first.train, patch=2))  # another token grid is another run
    with pytest.raises(ValueError, match=r"train\.patch: None there, 2 now"):
        check_work(finer)
    check_work(replace(first, game="crafter"))  # each game keeps its own data and run
    record = tmp_path / "work" / "rooms_recipe.json"
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "train.text"}))
    check_work(first)  # an option newer than the record counts as its default
    record.unlink()
    (tmp_path / "work" / "rooms").mkdir()
    with pytest.raises(ValueError, match="no record"):  # data from before records were kept
        check_work(first)


def test_gpu_ab_trains_two_runs_on_one_collect_and_scores_both(tmp_path):
    """training/gpu_ab.sh, tiny on CPU: both runs read the same collect, only B gets B's
    options, and the figures come back in one archive beside the two models."""
    import os
    import subprocess
    import tarfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DEV": "cpu", "COLLECT": "2400", "STEPS": "3", "TRAIN_S": "600", "SEEDS": "0", "COUNT": "4",
           "WINDOWS": "2", "WORK": str(tmp_path / "work"), "PREPARE": "--collectors 2 --num-envs 2 --loader-workers 2",
           "COMMON": "--config tiny --patch 4 --memory 4 --batch-size 2 --action-dropout 0.15"}
    judge = "worldsim/checkpoints/rooms_latent_judge.safetensors"
    proc = subprocess.run(["bash", "training/gpu_ab.sh", str(tmp_path / "out"), "", f"--judge {judge} --judge-target real"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "== A: 3 steps" in proc.stdout and "== B: 3 steps" in proc.stdout
    with tarfile.open(tmp_path / "out" / "figures.tgz") as tar:
        tar.extractall(tmp_path / "figures", filter="data")
    figures = tmp_path / "figures"
    header = {arm: (figures / arm / "metrics.csv").read_text().splitlines()[0] for arm in "AB"}
    assert "judge_ce" in header["B"] and "judge_ce" not in header["A"]
    for arm in "AB":
        report = json.loads((figures / arm / "control_seed0.json").read_text())
        assert report["probes"]["control"]["dream_memory_on"]["steps"] == 4 * 8
        assert json.loads((figures / arm / "replays.json").read_text())["windows"] == 2
        assert gym.make("worldsim/Dream-v0", checkpoint=str(tmp_path / "out" / arm / "rooms.safetensors")).unwrapped.model
    data = json.loads((tmp_path / "work" / "rooms_recipe.json").read_text())
    assert data["collect_steps"] == 2400  # one collect, made by the recipe's --prepare-only


def test_gpu_pixel_recipe_collects_trains_for_its_budget_exports_and_scores(tmp_path):
    from training.gpu_pixel import main as pixel_main
    from worldsim.pixel_world_model import PixelWorldModel

    out = tmp_path / "out"
    pixel_main(["--game", "takecover", "--out", str(out), "--work", str(tmp_path / "work"), "--collect-steps", "1200",
                "--num-envs", "2", "--collectors", "2", "--minutes", "0.05", "--batch-size", "2", "--width", "8",
                "--init", "", "--eval-windows", "2", "--horizons", "1,4", "--eval-transitions", "64", "--loader-workers", "0",
                "--quiet"])
    figures = json.loads((out / "figures.json").read_text())
    assert figures["steps"] >= 1 and figures["seconds_per_step"] > 0
    held = figures["held_out"]
    assert held["windows"] == 2 and set(held["dream_psnr_db"]) == {"1", "4"}
    assert 0 <= figures["heads"]["end_recall"] <= 1
    assert figures["end_calibration"]["split"] == "val" and figures["end_calibration"]["real_ends"] > 0
    model = PixelWorldModel.load(out / "takecover_pixel.safetensors")
    assert model.info["end_calibration"] == figures["end_calibration"]
    assert model.info["env_id"] == "worldsim/Vizdoom-TakeCover-v0" and model.info["trained_steps"] == figures["steps"]
    assert (out / "metrics.csv").read_text().startswith("step,")
