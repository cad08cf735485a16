"""The cell reader (worldsim/cells.py): Crafter's view cells labelled from the world map,
a classifier of them trained on real frames, and the scores that fail a dream of grass."""

import numpy as np
import pytest

pytest.importorskip("crafter")

from envs.crafter_env import SEMANTIC_IDS  # noqa: E402
from training.collect import collect  # noqa: E402
from worldsim.cells import (cell_patches, cell_scores, fit_cell_reader, labelled_frames, off_player,  # noqa: E402
                            view_labels)


@pytest.fixture(scope="module")
def crafter_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("crafter") / "data"
    collect("worldsim/Crafter-v0", "random", steps=1500, out=str(out), num_envs=1, seed=5, progress=False)
    return out


@pytest.fixture(scope="module")
def reader(crafter_data):
    frames, labels = labelled_frames(str(crafter_data), "train", 1200)
    return fit_cell_reader(frames, labels, steps=1500)


def test_view_labels_put_the_player_in_the_middle_cell_and_match_the_drawn_cells(crafter_data):
    frames, labels = labelled_frames(str(crafter_data), "train", 300)
    assert labels.shape == (len(frames), 7, 9)
    assert (labels[:, 3, 4] == SEMANTIC_IDS.index("player")).all()
    # within a frame (night and sleep darken whole frames), cells of one label look alike and unlike
    # cells of another: the labels sit on the right pixels
    cells = cell_patches(frames).reshape(len(frames), 7, 9, -1).astype(float)
    grass, tree = SEMANTIC_IDS.index("grass"), SEMANTIC_IDS.index("tree")
    near, far = [], []
    for c, lab in zip(cells, labels):
        if (lab == grass).any() and (lab == tree).any():
            mean_grass = c[lab == grass].mean(0)
            near.append(np.abs(c[lab == grass] - mean_grass).mean())
            far.append(np.abs(c[lab == tree] - mean_grass).mean())
    near, far = np.mean(near), np.mean(far)
    assert near < 0.5 * far, (near, far)


def test_view_labels_are_none_outside_the_world():
    semantic = np.full((1, 64, 64), SEMANTIC_IDS.index("grass"), np.uint8)
    labels = view_labels(semantic, np.array([[0, 63]]))
    assert (labels[0, :, :4] == 0).all() and (labels[0, 4:, :] == 0).all()  # left of x = 0, below y = 63
    assert (labels[0, :4, 4:] == SEMANTIC_IDS.index("grass")).all()


def test_the_reader_reads_held_out_real_cells(crafter_data, reader):
    held_out = [labelled_frames(str(crafter_data), split, 300) for split in ("val", "test")]
    frames, labels = (np.concatenate(x) for x in zip(*held_out))
    keep = off_player()
    read, labels = reader.read(frames)[:, keep], labels[:, keep]
    other = labels != SEMANTIC_IDS.index("grass")
    assert other.sum() > 100
    assert (read == labels).mean() > 0.95 and (read[other] == labels[other]).mean() > 0.8


def test_scores_fail_a_grass_dream_and_a_shifted_one(crafter_data, reader):
    frames, _ = labelled_frames(str(crafter_data), "test", 200)
    real = reader.read(frames)
    same = cell_scores(real, real)
    assert same["agree"] == 1.0 and same["mix_distance"] == 0.0
    grass = cell_scores(np.full_like(real, SEMANTIC_IDS.index("grass")), real)
    assert grass["not_grass"] == 0.0
    assert grass["mix_distance"] == pytest.approx(grass["real_not_grass"])  # all the non-grass mass is missing
    assert grass["agree"] == pytest.approx(1 - grass["real_not_grass"])
    # the real frames one cell to the left: the mix is nearly right, the cells are not
    shifted = reader.read(np.roll(frames, -7, axis=2))
    moved = cell_scores(shifted, real)
    assert moved["agree"] < 0.9 and moved["mix_distance"] < grass["mix_distance"]


def test_replays_score_the_cells_of_every_prediction_beside_a_grass_dream(crafter_data, reader):
    from worldsim.replay import replay_scores
    from worldsim.world_model import WorldModel

    model = WorldModel.load("worldsim/checkpoints/crafter.safetensors")
    result = replay_scores(model, str(crafter_data), context=4, horizons=(1, 2), count=2, cells=reader)
    for name in ("dream", "copy_last_frame", "tokenizer_ceiling", "grass_only"):
        assert set(result[f"{name}_cells"]) == {"1", "2"}
        assert set(result[f"{name}_cells"]["1"]) == {"agree", "mix_distance", "not_grass", "real_not_grass"}
    assert result["grass_only_cells"]["1"]["not_grass"] == 0.0
    assert result["tokenizer_ceiling_cells"]["1"]["agree"] > 0.9
    assert "dream_cells" not in replay_scores(model, str(crafter_data), context=4, horizons=(1,), count=1)
