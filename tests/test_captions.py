"""Descriptive captions from Rooms ground truth, prompt rewriting, and the learned
recaptioner that captions footage without ground truth."""

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from envs.rooms import OBJECT_COLOURS, ROOM_COLOUR_NAMES
from envs.rooms_captions import MIN_PIXELS, SIDES, Attributes, caption, clip_attributes, object_name, rewrite_prompt


def test_exact_captions_say_what_the_frame_shows():
    """Objects are drawn in flat colours: the caption's objects and sides are checked
    against the frame's own pixels, not against the ground truth they were made from."""
    env = gym.make("worldsim/Rooms-v0", world_seed=None, collectible=False)
    described = 0
    for seed in range(6):
        frame, info = env.reset(seed=seed)
        gts, frames = [info["gt"]], [frame]
        for _ in range(40):
            frame, *_, info = env.step(3)  # turn on the spot: objects sweep across the view
            gts.append(info["gt"])
            frames.append(frame)
        gt = {k: np.stack([g[k] for g in gts]) for k in gts[0]}
        for t in range(0, 33, 3):
            attrs = clip_attributes(gt, t, 8)
            text = caption(attrs)
            assert ROOM_COLOUR_NAMES[attrs.room] in text and "turns to the left" in text
            for i, colour in enumerate(OBJECT_COLOURS[:6]):
                ys, xs = np.nonzero((frames[t] == colour).all(-1))
                if i in attrs.objects:
                    side = attrs.objects[i][0]
                    assert len(xs) >= MIN_PIXELS and side == min(int(xs.mean() * 3 // 64), 2)
                    assert f"{object_name(i)}" in text and SIDES[side] in text
                    described += 1
                else:
                    assert len(xs) < MIN_PIXELS and object_name(i) not in text
    env.close()
    assert described >= 5


def test_a_caption_rewrites_to_itself():
    rng = np.random.default_rng(0)
    for n in range(300):
        objects = {int(i): (int(rng.integers(3)), int(rng.integers(2)))
                   for i in rng.choice(6, size=rng.integers(0, 4), replace=False)}
        attrs = Attributes(int(rng.integers(len(ROOM_COLOUR_NAMES))), objects, int(rng.integers(7)))
        assert rewrite_prompt(caption(attrs), seed=n)[0] == attrs


def test_short_prompts_expand_into_the_caption_style():
    attrs, text = rewrite_prompt("a red room with a green ball on the left, near")
    assert ROOM_COLOUR_NAMES[attrs.room] in ("terracotta", "dusty rose")
    assert attrs.objects == {1: (0, 0)} and "green box close by, on the left" in text  # Rooms' green object is a box
    attrs, _ = rewrite_prompt("a blue cone far to the right and a yellow pillar straight ahead; turn right")
    assert attrs.objects == {2: (2, 1), 3: (1, attrs.objects[3][1])} and attrs.motion == 4
    # What the prompt leaves open is drawn from the seed, and says so by varying with it.
    rooms = {rewrite_prompt("a box", seed=s)[0].room for s in range(20)}
    assert len(rooms) > 3
    with pytest.raises(ValueError, match="non-empty text prompt"):
        rewrite_prompt("  ")
    out = subprocess.run([sys.executable, "-m", "worldsim.cli", "rewrite", "a teal room with two crosses"],
                         capture_output=True, text=True, check=True).stdout
    assert "inside a teal room" in json.loads(out)["caption"] and "cyan cross" in out


def test_recaptioner_trains_on_exact_captions_and_captions_footage_without_them(rooms_dataset, tmp_path):
    import h5py

    from training.train_recaptioner import TrainConfig, train
    from worldsim.dataset import episode_paths, read_episode
    from worldsim.recaptioner import Recaptioner, caption_dataset, clip_frames

    summary = train(TrainConfig(data=str(rooms_dataset), out=str(tmp_path / "run"), steps=60, batch_size=16,
                                warmup=5, log_every=10, eval_clips=64), progress=False)
    rows = np.genfromtxt(tmp_path / "run" / "metrics.csv", delimiter=",", names=True)
    assert rows["loss"][-1] < rows["loss"][0]
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert scores["clips"] == 64 and 0 <= scores["accuracy"]["room"] <= 1 and "room" in scores["majority_baseline"]
    assert summary["scores"] == scores
    model = Recaptioner.load(tmp_path / "run" / "recaptioner.safetensors")

    # The same footage without its ground truth: only the recaptioner can caption it.
    bare = tmp_path / "bare"
    subprocess.run(["cp", "-r", str(rooms_dataset), str(bare)], check=True)
    for path in episode_paths(bare):
        with h5py.File(path, "a") as f:
            del f["gt"]
    with pytest.raises(ValueError, match="--recaptioner"):
        caption_dataset(str(bare), str(tmp_path / "c.jsonl"), progress=False)
    result = caption_dataset(str(bare), str(tmp_path / "c.jsonl"), str(tmp_path / "run" / "recaptioner.safetensors"),
                             progress=False)
    lines = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert result["recaptioner"] == len(lines) > 0 and result["exact"] == 0
    assert all(line["caption"].startswith("A first-person view inside") for line in lines)
    first = read_episode(lines[0]["episode"]).frames
    assert lines[0]["caption"] == model.caption(clip_frames(first, lines[0]["t"], model.cfg.clip)[None])[0]


def test_camera_motion_is_the_net_move_in_the_starting_view():
    from envs.rooms_captions import MOTIONS, camera_motion

    facing_y = (2.0, 2.0, np.pi / 2)  # looking along +y: left is -x
    for end, said in [((2.0, 3.0, np.pi / 2), "walks forward"), ((2.0, 1.0, np.pi / 2), "backs up"),
                      ((1.0, 2.0, np.pi / 2), "steps to the left"), ((3.0, 2.0, np.pi / 2), "steps to the right"),
                      ((2.1, 2.1, np.pi / 2), "stands still"), ((2.0, 2.0, np.pi), "turns to the left"),
                      ((2.0, 2.0, 0.1), "turns to the right"), ((2.0, 2.0, -np.pi + 0.2), "turns to the left")]:
        assert MOTIONS[camera_motion(np.array(facing_y), np.array(end))] == said, (end, said)


def test_vizdoom_captions_name_what_the_engine_labels_and_how_the_player_moved():
    """TakeCover, scripted: strafes left, right, and waits, eight steps each. The motion
    in each caption comes from the poses and is checked against the script's actions (the
    player keeps sliding a little after a strafe, so only the opposite direction is wrong);
    the imps and their fireballs, and fireballs closing in, come from the engine's labels."""
    pytest.importorskip("vizdoom")
    import envs
    from envs.vizdoom_captions import caption, clip_attributes

    env = gym.make("worldsim/Vizdoom-TakeCover-v0")
    _, info = env.reset(seed=5)
    left, right, noop = (envs.action_meanings(env).index(n) for n in ("MOVE_LEFT", "MOVE_RIGHT", "NOOP"))
    gts = [info["gt"]]
    for a in ([left] * 8 + [right] * 8 + [noop] * 8) * 4:
        _, _, terminated, truncated, info = env.step(a)
        gts.append(info["gt"])
        if terminated or truncated:
            break
    env.close()
    gt = {k: np.stack([g[k] for g in gts]) for k in ("pose", "objects")}
    texts = {t: caption(clip_attributes(gt, t, 8)) for t in range(0, len(gts) - 8, 8)}
    lefts = [text for t, text in texts.items() if (t // 8) % 3 == 0]
    rights = [text for t, text in texts.items() if (t // 8) % 3 == 1]
    assert not any("strafes to the right" in x for x in lefts) and not any("strafes to the left" in x for x in rights)
    assert any("strafes to the left" in x for x in lefts) and any("strafes to the right" in x for x in rights)
    joined = " ".join(texts.values())
    assert "imp" in joined and "fireball" in joined and "flying at the player" in joined
    old = {"pose": gt["pose"], "objects": gt["objects"][..., :8]}  # recorded before classes were kept
    with pytest.raises(ValueError, match="collect them again"):
        clip_attributes(old, 0, 8)


def test_worldsim_caption_writes_exact_vizdoom_captions(tmp_path):
    pytest.importorskip("vizdoom")
    from training.collect import collect
    from worldsim.recaptioner import caption_dataset

    collect("worldsim/Vizdoom-TakeCover-v0", "random", steps=120, out=str(tmp_path / "tc"), num_envs=1, seed=3,
            progress=False)
    summary = caption_dataset(str(tmp_path / "tc"), str(tmp_path / "c.jsonl"), every=16, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert summary["exact"] == len(lines) > 0 and all(x["caption"].startswith("A first-person view in Doom.")
                                                      for x in lines)
