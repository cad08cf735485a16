"""The probes tell a good model from a broken one: the real frames score top, copy-last-
frame and shuffled frames score low; `worldsim probe` writes its report, plots and videos."""

import json

import numpy as np
import pytest

from worldsim import probes as P

CONTEXT = 11


@pytest.fixture(scope="module")
def rooms():
    return P.make_rooms(collectible=False)


def scores(score, scenarios, **kw):
    return {name: score(scenarios, predict(scenarios), **kw)
            for name, predict in [("truth", P.ground_truth), ("copy", P.copy_last), ("shuffled", P.shuffled)]}


def test_loop_closure(rooms):
    cases = P.loop_scenarios(rooms, 6, CONTEXT)
    for s in cases:  # the start view really returns, after more steps than the context holds
        assert np.array_equal(s.frames[s.meta["start"]], s.frames[s.meta["return"]]) and s.meta["gap"] > CONTEXT
    assert {s.meta["kind"] for s in cases} == {"turn_360", "out_and_back"}
    r = scores(P.score_loop, cases)
    assert r["truth"]["psnr_vs_real_db"] == 99.0
    assert r["copy"]["psnr_vs_real_db"] < 25 and r["shuffled"]["psnr_vs_real_db"] < 25


def test_object_persistence(rooms):
    cases = P.object_scenarios(rooms, [5, 11, 22, 44], 3, CONTEXT)
    for s in cases:
        assert abs(s.meta["gap"] - s.meta["gap_asked"]) <= 3
        assert not np.isin(s.gt["object_ids"][CONTEXT - 1], s.meta["objects"]).any()  # gone when the dream starts
    r = scores(P.score_objects, cases)
    assert r["truth"]["recall"] == 1.0 and r["truth"]["objects"] >= 10
    assert set(r["truth"]["recall_all_by_size"].values()) == {1.0} and r["truth"]["recall_all_stderr"] == 0.0
    assert sum(r["truth"]["objects_by_size"].values()) == r["truth"]["objects_all"]
    assert r["copy"]["recall"] == 0.0 and r["shuffled"]["recall"] < 0.3


def test_revisit_from_a_new_pose(rooms):
    from worldsim.dream_env import load_world_model

    cases = P.revisit_scenarios(rooms, 3, CONTEXT)
    new = [s for s in cases if s.meta["variant"] == "new_pose"]
    exact = [s for s in cases if s.meta["variant"] == "exact"]
    assert len(new) == len(exact) == 3 and len({len(s.frames) for s in cases}) == 1  # one rollout length
    for s in cases:
        o, j = s.meta["object"], s.meta["return"]
        for t in (0, j):  # the object is in view at the first sight and at the return
            assert s.gt["objects_in_view"][t, o] and (s.gt["object_ids"][t] == o).sum() >= 20
        assert not np.isin(s.gt["object_ids"][CONTEXT - 1], o).any()  # gone when the dream starts
        assert s.meta["gap"] >= CONTEXT and CONTEXT <= j < len(s.frames)
        moved = np.linalg.norm(s.gt["pose"][j, :2] - s.gt["pose"][0, :2])
        assert moved == pytest.approx(s.meta["translation"])
        if s.meta["variant"] == "new_pose":  # another place and angle: at least one step off, the object seen anew
            assert moved >= rooms.move_step - 1e-6 and abs(s.meta["yaw_change_deg"]) >= 360 / rooms.turn_steps - 1e-3
            assert not np.array_equal(s.gt["object_ids"][j] == o, s.gt["object_ids"][0] == o)
        else:  # the same script, back at the first sight's pose
            assert moved < 1e-6 and np.array_equal(s.frames[j], s.frames[0])
    for a, b in zip(new, exact):  # twins share the way out
        assert a.meta["script"] == b.meta["script"] and np.array_equal(a.frames[:CONTEXT + 2], b.frames[:CONTEXT + 2])

    ceiling = P.tokenizer_ceiling(load_world_model(None))  # the shipped Rooms tokenizer
    r = {name: P.score_revisit(cases, predict(cases)) for name, predict in
         [("truth", P.ground_truth), ("copy", P.copy_last), ("ceiling", ceiling)]}
    for name, score in r.items():
        for row in score["scenarios"]:
            assert np.isfinite(row["object_psnr_db"]) and np.isfinite(row["frame_psnr_db"])
    for v in ("new_pose", "exact"):
        assert r["truth"][v]["object_psnr_db"] == 99.0 and r["truth"][v]["recall"] == 1.0
        assert r["copy"][v]["recall"] == 0.0 and r["copy"][v]["object_psnr_db"] < 15
        assert r["ceiling"][v]["object_psnr_db"] > r["copy"][v]["object_psnr_db"] + 5
        assert r["ceiling"][v]["frame_psnr_db"] > r["copy"][v]["frame_psnr_db"]
    gain = P.revisit_memory_gain(r["ceiling"], r["copy"])
    assert gain["new_pose"]["object_psnr_db"] == pytest.approx(
        r["ceiling"]["new_pose"]["object_psnr_db"] - r["copy"]["new_pose"]["object_psnr_db"])


def test_probes_run_on_other_maps():
    # world_seed None: a new map per script, drawn from the script's env seed (so from the probe seed).
    fresh = P.make_rooms(world_seed=None, collectible=False)
    cases = P.revisit_scenarios(fresh, 2, CONTEXT, seed=1)
    maps = P.maps_of(fresh, cases)
    assert maps["world_seed"] is None and maps["maps"] == 2
    assert maps["env_seeds"] == sorted({s.meta["seed"] for s in cases})
    assert P.map_fingerprint(P.make_rooms()) not in maps["fingerprints"]  # not the single training map
    assert P.maps_of(P.make_rooms(world_seed=3), cases) == {
        "world_seed": 3, "maps": 1, "fingerprints": [P.map_fingerprint(P.make_rooms(world_seed=3))]}


def test_action_control(rooms):
    cases = P.control_scenarios(rooms, 4, CONTEXT)
    r = scores(P.score_control, cases, names=list(range(7)))
    assert r["truth"]["agreement"] == 1.0
    assert r["copy"]["agreement"] < 0.4 and r["shuffled"]["agreement"] < 0.4
    assert np.array(r["truth"]["confusion"]).sum() == 4 * 8


def test_probe_seeds_script_disjoint_episodes(rooms):
    # A second seed is an independent check only if it scripts other episodes.
    for make in (lambda seed: P.loop_scenarios(rooms, 4, CONTEXT, seed),
                 lambda seed: P.object_scenarios(rooms, [5], 3, CONTEXT, seed),
                 lambda seed: P.revisit_scenarios(rooms, 2, CONTEXT, seed),
                 lambda seed: P.control_scenarios(rooms, 4, CONTEXT, seed=seed)):
        first, second = ({s.meta["seed"] for s in make(seed)} for seed in (0, 1))
        assert first and second and not first & second


def test_probe_scripts_never_use_a_seed_collect_can_take(rooms, tmp_path):
    from training.collect import collect
    from worldsim.dataset import PROBE_SEEDS_START

    seeds = {s.meta["seed"] for s in P.loop_scenarios(rooms, 2, CONTEXT, 0)}
    assert min(seeds) >= PROBE_SEEDS_START
    with pytest.raises(ValueError, match="kept for probes"):
        collect(P.ROOMS_ID, "random", 4, str(tmp_path / "d"), num_envs=2, seed=PROBE_SEEDS_START - 1, progress=False)


def test_drift_lifts_a_registered_step_limit():
    import gymnasium as gym

    gym.register("ShortRooms-v0", entry_point="envs:make_rooms", max_episode_steps=20, kwargs={"max_steps": 10_000})
    try:
        cases = P.drift_scenarios("ShortRooms-v0", {}, 1, CONTEXT, 40)
    finally:
        del gym.registry["ShortRooms-v0"]
    assert len(cases[0].target) == 40  # not cut at the registered 20


def test_drift():
    cases = P.drift_scenarios(P.ROOMS_ID, {}, 2, CONTEXT, 60)
    r = scores(P.score_drift, cases)
    assert r["truth"]["psnr_db_mean"] == 99.0 and r["truth"]["ssim_at"][10] == pytest.approx(1.0)
    assert r["copy"]["psnr_db_mean"] < 25 and r["shuffled"]["psnr_db_mean"] < 25


def test_probe_command_writes_report_plots_and_videos(memory_world, tmp_path, capsys):
    from worldsim.cli import main

    world, _ = memory_world
    main(["probe", "--checkpoint", str(world), "--out", str(tmp_path / "p"), "--count", "2", "--drift-episodes", "2",
          "--drift-steps", "30"])
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["memory"] and report["predictors"][:2] == ["dream_memory_on", "dream_memory_off"]
    for probe in ("loop", "objects", "revisit", "control", "drift"):
        for name in report["predictors"]:
            assert name in report["probes"][probe]
        assert (tmp_path / "p" / f"{probe}.mp4").stat().st_size > 1000
        assert report["probes"][probe]["maps"]["world_seed"] == 0  # the model's map, recorded
    revisit = report["probes"]["revisit"]
    assert revisit["dream_memory_on"]["new_pose"]["scripts"] == 2 and np.isfinite(
        revisit["memory_gain"]["new_pose"]["object_psnr_db"])
    assert report["probes"]["control"]["dream_memory_on"]["steps"] == 2 * 8
    assert report["probes"]["drift"]["copy_last"]["steps"] == 30
    for plot in ("summary.png", "control_confusion.png", "objects_smallest.png", "revisit_views.png"):
        assert (tmp_path / "p" / plot).stat().st_size > 10_000
    assert "probe loop" in capsys.readouterr().out


def test_probe_env_kwargs_choose_the_maps(memory_world, tmp_path):
    from worldsim.probes.report import ProbeConfig, run_probes

    world, _ = memory_world
    run_probes(ProbeConfig(checkpoint=str(world), out=str(tmp_path), probes="revisit", count=1,
                           env_kwargs={"world_seed": None}, seed=2), progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["env_kwargs"]["world_seed"] is None
    maps = report["probes"]["revisit"]["maps"]
    assert maps["world_seed"] is None and maps["maps"] == 1 and maps["env_seeds"][0] >= P.first_env_seed(2)


def test_probe_refuses_what_it_cannot_score(memory_world, tmp_path):
    from worldsim.checkpoint import CheckpointError
    from worldsim.probes.report import ProbeConfig, run_probes

    world, _ = memory_world
    with pytest.raises(ValueError, match="unknown probes"):
        run_probes(ProbeConfig(checkpoint=str(world), out=str(tmp_path), probes="loops"))
    with pytest.raises(CheckpointError, match="trained on"):
        run_probes(ProbeConfig(checkpoint=str(world), out=str(tmp_path), env="worldsim/Vizdoom-TakeCover-v0", probes="drift"))
    for probe, expected in (("walkback", "walks a grid"), ("placed", "plants a sapling")):  # Rooms turns, plants nothing
        with pytest.raises(ValueError, match=expected):
            run_probes(ProbeConfig(checkpoint=str(world), out=str(tmp_path), probes=probe))
