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
                 lambda seed: P.control_scenarios(rooms, 4, CONTEXT, seed=seed)):
        first, second = ({s.meta["seed"] for s in make(seed)} for seed in (0, 1))
        assert first and second and not first & second


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
    for probe in ("loop", "objects", "control", "drift"):
        for name in report["predictors"]:
            assert name in report["probes"][probe]
        assert (tmp_path / "p" / f"{probe}.mp4").stat().st_size > 1000
    assert report["probes"]["control"]["dream_memory_on"]["steps"] == 2 * 8
    assert report["probes"]["drift"]["copy_last"]["steps"] == 30
    for plot in ("summary.png", "control_confusion.png", "objects_smallest.png"):
        assert (tmp_path / "p" / plot).stat().st_size > 10_000
    assert "probe loop" in capsys.readouterr().out


def test_probe_refuses_what_it_cannot_score(memory_world, tmp_path):
    from worldsim.checkpoint import CheckpointError
    from worldsim.probe_report import run_probes

    world, _ = memory_world
    with pytest.raises(ValueError, match="unknown probes"):
        run_probes(world, tmp_path, probes=["loops"])
    with pytest.raises(CheckpointError, match="trained on"):
        run_probes(world, tmp_path, env_id="worldsim/Vizdoom-TakeCover-v0", probes=["drift"])
