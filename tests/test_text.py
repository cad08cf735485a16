"""Text conditioning: caption embeddings in training, text guidance, and worlds started
from a prompt through the Gymnasium API."""

import gymnasium as gym
import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def text_world(pipeline, tmp_path_factory):
    from training.train_dynamics import TrainConfig, train
    from worldsim.export import export_world_model

    root, _, _ = pipeline
    out = tmp_path_factory.mktemp("text")
    cfg = TrainConfig(data=str(root / "latents"), out=str(out / "dyn"), config="tiny", text=True, steps=12,
                      batch_size=4, warmup=2, ckpt_every=12, init=str(root / "dyn" / "latest.safetensors"))
    summary = train(cfg, progress=False)
    export_world_model(str(out / "dyn" / "latest.safetensors"), str(out / "world.safetensors"))
    return out / "world.safetensors", summary


def test_sentence_embeddings_are_offline_unit_vectors_that_tell_captions_apart():
    from envs.rooms_captions import rewrite_prompt
    from worldsim.text import TEXT_DIM, embed_texts

    texts = [rewrite_prompt(p, seed=0)[1] for p in ("a teal room with a red ball", "a teal room with a red ball",
                                                    "an umber room with a blue cone on the left")]
    e = embed_texts(texts)
    assert e.shape == (3, TEXT_DIM) and e.dtype == np.float32 and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)
    assert np.allclose(e[0], e[1]) and e[0] @ e[2] < 0.99


def test_training_with_captions_feeds_each_window_its_caption(pipeline):
    from training.train_dynamics import LatentWindows, WindowCaptions
    from worldsim.dataset import episode_paths

    root, _, _ = pipeline
    captions = WindowCaptions(episode_paths(root / "latents", "train"), dropout=0.5)
    batch = LatentWindows(str(root / "latents"), 4, 0, captions=captions).batch(64, 0, 0)
    text = batch["text"].numpy()
    dropped = np.abs(text).sum(1) == 0
    assert text.shape == (64, 384) and 0.25 < dropped.mean() < 0.75  # the null text, for guidance
    assert np.allclose(np.linalg.norm(text[~dropped], axis=1), 1, atol=1e-4)
    # Each kept row is the caption of its own window's start, drawn as the batch drew them.
    from envs.rooms_captions import GT_KEYS, caption, clip_attributes
    from worldsim.dataset import open_episode, read_array
    from worldsim.text import embed_texts

    windows = LatentWindows(str(root / "latents"), 4, 0).windows
    idx = np.random.default_rng([0, 0, 0]).integers(len(windows), size=64)
    for i in np.nonzero(~dropped)[0][:6]:
        e, t = windows.index[int(idx[i])]
        with open_episode(windows.paths[e]) as f:  # a latent episode: latents in place of frames
            gt = {k: read_array(f, f"gt/{k}") for k in GT_KEYS}
        expected = embed_texts([caption(clip_attributes(gt, t, min(8, len(gt["pose"]) - 1 - t)))])[0]
        assert np.allclose(text[i], expected, atol=1e-5)


def test_a_prompt_starts_a_world_that_then_steps(text_world):
    path, summary = text_world
    assert summary["step"] == 12
    env = gym.make("worldsim/Dream-v0", checkpoint=str(path))
    obs, info = env.reset(seed=0, options={"prompt": "a teal room with a red ball on the left"})
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert info["prompt"] == "a teal room with a red ball on the left"
    assert info["caption"].startswith("A first-person view inside a teal room") and "red ball" in info["caption"]
    obs2, *_ = env.step(3)
    assert obs2.shape == obs.shape
    # The text is part of the state: the same prompt and seed give the same world.
    again, _ = env.reset(seed=0, options={"prompt": "a teal room with a red ball on the left"})
    assert np.array_equal(again, obs)
    assert env.unwrapped.core.text.abs().sum() > 0  # the prompt conditions every step
    _, info = env.reset(seed=0)  # a start frame: no prompt, the null text
    assert "caption" not in info and env.unwrapped.core.text.abs().sum() == 0


def test_text_guidance_moves_the_sample_with_the_text(text_world):
    from worldsim.world_model import WorldModel

    path, _ = text_world
    model = WorldModel.load(path)
    layer = model.dynamics.text
    torch.nn.init.normal_(layer.weight, std=0.5)  # a short run leaves the zero-initialised text layer small
    text = torch.nn.functional.normalize(torch.randn(384), dim=0).numpy()
    plain = model.frame_from_text(text, torch.Generator().manual_seed(0), steps=2)
    assert np.array_equal(plain, model.frame_from_text(text, torch.Generator().manual_seed(0), steps=2))
    model.dynamics.cfg.text_guidance = 3.0
    guided = model.frame_from_text(text, torch.Generator().manual_seed(0), steps=2)
    assert np.abs(guided.astype(int) - plain).mean() > 1  # guidance pushes the frame further along the text


def test_models_without_text_refuse_prompts(memory_world):
    path, _ = memory_world
    env = gym.make("worldsim/Dream-v0", checkpoint=str(path))
    with pytest.raises(ValueError, match="no text conditioning"):
        env.reset(options={"prompt": "a red room"})


def test_dream_cli_writes_a_world_from_a_prompt(text_world, tmp_path):
    import json
    import subprocess
    import sys

    import cv2

    path, _ = text_world
    out = tmp_path / "w.mp4"
    result = subprocess.run([sys.executable, "-m", "worldsim.cli", "dream", "--checkpoint", str(path), "--prompt",
                             "an umber room with a yellow pillar", "--steps", "30", "--out", str(out)],
                            capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    assert report["steps"] == 30 and "umber room" in report["caption"] and "yellow pillar" in report["caption"]
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 31
    assert cv2.imread(report["first_frame"]).shape == (256, 256, 3)
    failed = subprocess.run([sys.executable, "-m", "worldsim.cli", "dream", "--out", str(out)], capture_output=True,
                            text=True)
    assert failed.returncode != 0 and "--episode" in failed.stderr and "--prompt" in failed.stderr


def test_vector_env_worlds_from_prompts_say_their_captions(text_world):
    path, _ = text_world
    envs = gym.make_vec("worldsim/Dream-v0", num_envs=2, vectorization_mode="vector_entry_point", checkpoint=str(path))
    obs, info = envs.reset(seed=1, options={"prompt": "a sage room with a blue cone"})
    assert obs.shape == (2, 64, 64, 3) and all("inside a sage room" in c and "blue cone" in c for c in info["caption"])
    obs, *_ = envs.step(np.array([1, 3]))
    assert obs.shape == (2, 64, 64, 3)


def test_export_refuses_guidance_a_run_never_learnt(pipeline, text_world, tmp_path):
    from worldsim.checkpoint import CheckpointError
    from worldsim.export import export_world_model
    from worldsim.world_model import WorldModel

    root, _, _ = pipeline
    plain = str(root / "dyn" / "latest.safetensors")
    with pytest.raises(CheckpointError, match="--action-dropout"):
        export_world_model(plain, str(tmp_path / "a.safetensors"), action_guidance=1.0)
    with pytest.raises(CheckpointError, match="--text"):
        export_world_model(plain, str(tmp_path / "t.safetensors"), text_guidance=2.0)
    path, _ = text_world
    export_world_model(str(path.parent / "dyn" / "latest.safetensors"), str(tmp_path / "t.safetensors"),
                       text_guidance=2.0)
    assert WorldModel.load(tmp_path / "t.safetensors").dynamics.cfg.text_guidance == 2.0


def test_continuing_a_text_model_without_text_says_to_pass_it(text_world):
    from training.train_dynamics import init_from
    from worldsim.checkpoint import CheckpointError
    from worldsim.dynamics import Dynamics
    from worldsim.world_model import WorldModel

    path, _ = text_world
    cfg = WorldModel.load(path).dynamics.cfg
    plain = Dynamics(type(cfg)(**{**cfg.__dict__, "text_dim": 0}))
    with pytest.raises(CheckpointError, match="pass --text"):
        init_from(plain, str(path))
    init_from(Dynamics(cfg), str(path))  # with its text layer it continues


def test_object_share_draws_windows_that_start_on_an_object(pipeline):
    from envs import env_pose_model
    from training.train_dynamics import MemoryWindows, WindowCaptions
    from worldsim.dataset import episode_paths

    root, _, _ = pipeline
    captions = WindowCaptions(episode_paths(root / "latents", "train"), dropout=0.0)
    assert 0 < captions.objects.mean() < 0.5  # objects are in view at some starts, not most
    data = MemoryWindows(str(root / "latents"), 4, 0, 2, env_pose_model("worldsim/Rooms-v0", {}), captions=captions,
                         object_share=1.0)
    rng = np.random.default_rng(0)
    starts = [data.item(rng, False, False, True)["start"] for _ in range(20)]
    assert all(captions.shows_object(path, s) for path, s in starts)


def test_plain_windows_draw_their_object_share_from_starts_with_an_object(pipeline):
    from training.train_dynamics import LatentWindows, WindowCaptions
    from worldsim.dataset import episode_paths

    root, _, _ = pipeline
    captions = WindowCaptions(episode_paths(root / "latents", "train"), dropout=0.0)
    data = LatentWindows(str(root / "latents"), 1, 0, captions=captions, object_share=0.5)
    assert data.showing and all(captions.shows_object(data.windows.paths[e], t)
                                for e, t in (data.windows.index[i] for i in data.showing))
    batch = data.batch(16, 3, 0)
    assert batch["z"].shape[:2] == (16, 1) and batch["actions"].shape == (16, 0)
    # Each window's text is its start's caption: the first half name an object in view.
    with_object = captions.table[np.unique(captions.index[captions.objects])]
    text = batch["text"].numpy()
    names_object = [np.isclose(with_object @ row, 1, atol=1e-5).any() for row in text]
    assert all(names_object[:8]) and np.mean(captions.objects) < 0.5


def test_a_first_frame_network_makes_the_worlds_start_and_ships_inside_the_world_model(pipeline, memory_world,
                                                                                       text_world, tmp_path):
    from training.train_dynamics import TrainConfig, train
    from worldsim.checkpoint import CheckpointError
    from worldsim.export import export_world_model
    from worldsim.world_model import WorldModel

    root, _, _ = pipeline
    text_path, _ = text_world
    # Single frames with their captions, from a model with memory: its memory layers are left out.
    cfg = TrainConfig(data=str(root / "latents"), out=str(tmp_path / "first"), config="tiny", text=True, window=1,
                      object_share=0.5, steps=6, batch_size=8, warmup=2, ckpt_every=6,
                      init=str(memory_world[0]))
    summary = train(cfg, progress=False)
    assert summary["step"] == 6 and np.isfinite(summary["last_batch"]["denoise_mse"])
    first = str(tmp_path / "first" / "latest.safetensors")
    run = str(text_path.parent / "dyn" / "latest.safetensors")
    export_world_model(run, str(tmp_path / "w.safetensors"), first_frame=first, text_guidance=2.0)
    model = WorldModel.load(tmp_path / "w.safetensors")
    assert model.first_frame is not None and model.first_frame.cfg.text_guidance == 2.0
    assert model.first_frame.cfg.memory == 0 and model.dynamics.cfg.memory == 0
    plain = WorldModel.load(text_path)
    assert all(torch.equal(a, b) for a, b in zip(model.dynamics.state_dict().values(),
                                                 plain.dynamics.state_dict().values()))
    for layer in (model.first_frame.text, model.dynamics.text):  # a short run leaves the text layers near zero
        torch.nn.init.normal_(layer.weight, std=0.5)
    text = torch.nn.functional.normalize(torch.randn(384), dim=0).numpy()
    made = model.frame_from_text(text, torch.Generator().manual_seed(0), steps=2)
    assert np.array_equal(made, model.frame_from_text(text, torch.Generator().manual_seed(0), steps=2))
    by_first = model.first_frame
    model.first_frame = None
    assert not np.array_equal(made, model.frame_from_text(text, torch.Generator().manual_seed(0), steps=2))
    model.first_frame = by_first
    # The env starts its world from the first-frame network's frame, then steps it.
    model.save(tmp_path / "w2.safetensors")
    env = gym.make("worldsim/Dream-v0", checkpoint=str(tmp_path / "w2.safetensors"))
    calls = []
    for name, net in (("first", env.unwrapped.model.first_frame), ("dynamics", env.unwrapped.model.dynamics)):
        net.register_forward_hook(lambda *_, name=name: calls.append(name))
    obs, info = env.reset(seed=0, options={"prompt": "a red room with a green box"})
    assert obs.shape == model.frame_shape and "caption" in info
    first_calls = calls.count("first")
    assert first_calls >= 2 and calls[:first_calls] == ["first"] * first_calls  # the first frame is made by it; the
    # dynamics only reads it after (into its cache)
    assert env.step(1)[0].shape == obs.shape and calls[-1] == "dynamics"  # the dynamics steps the world on
    # A world model's first-frame network serves a later export as its run would, record and all.
    export_world_model(run, str(tmp_path / "again.safetensors"), first_frame=str(tmp_path / "w.safetensors"),
                       text_guidance=2.0)
    again = WorldModel.load(tmp_path / "again.safetensors")
    carried = WorldModel.load(tmp_path / "w.safetensors").first_frame.state_dict()
    assert again.first_frame.state_dict().keys() == carried.keys()
    assert all(torch.equal(v, carried[k]) for k, v in again.first_frame.state_dict().items())
    assert again.info["first_frame_train"] == model.info["first_frame_train"] and again.first_frame.cfg == by_first.cfg
    with pytest.raises(CheckpointError, match="without a first-frame network"):
        export_world_model(run, str(tmp_path / "z.safetensors"), first_frame=str(text_path))
    with pytest.raises(CheckpointError, match="--text"):
        export_world_model(run, str(tmp_path / "x.safetensors"), first_frame=str(root / "dyn" / "latest.safetensors"))
    with pytest.raises(CheckpointError, match="was not trained with --text"):  # a dynamics that cannot go on from text
        export_world_model(str(root / "dyn" / "latest.safetensors"), str(tmp_path / "y.safetensors"), first_frame=first)


def test_whitened_captions_make_a_side_as_loud_as_a_room(pipeline, tmp_path):
    from envs.rooms_captions import Attributes, caption
    from training.train_dynamics import TrainConfig, train
    from worldsim.text import embed_texts, whitening
    from worldsim.world_model import WorldModel

    rng = np.random.default_rng(0)
    table = embed_texts([caption(Attributes(int(rng.integers(9)), {int(rng.integers(6)): (int(rng.integers(3)), 0)}, 0))
                         for _ in range(400)])
    mean, matrix = whitening(table)
    left, right, other_room = embed_texts([caption(Attributes(3, {0: (0, 0)}, 0)), caption(Attributes(3, {0: (2, 0)}, 0)),
                                           caption(Attributes(5, {0: (0, 0)}, 0))])
    raw = np.linalg.norm(left - right) / np.linalg.norm(left - other_room)
    white = lambda e: (e - mean) @ matrix  # noqa: E731
    whitened = np.linalg.norm(white(left) - white(right)) / np.linalg.norm(white(left) - white(other_room))
    assert raw < 0.05 and whitened > 0.3  # ten times louder beside the room
    assert 0.2 < np.linalg.norm(white(table), axis=1).mean() < 2  # about the raw embeddings' unit length
    # A run fits the statistics of its captions, keeps the null text at zero, and ships them.
    root, _, _ = pipeline
    with pytest.raises(ValueError, match="needs --text"):
        train(TrainConfig(data=str(root / "latents"), out=str(tmp_path / "bad"), config="tiny", text_whiten=True,
                          steps=1), progress=False)
    train(TrainConfig(data=str(root / "latents"), out=str(tmp_path / "w"), config="tiny", text=True, text_whiten=True,
                      window=1, steps=3, batch_size=4, warmup=1, ckpt_every=3), progress=False)
    from worldsim.export import export_world_model
    export_world_model(str(tmp_path / "w" / "latest.safetensors"), str(tmp_path / "w.safetensors"))
    dyn = WorldModel.load(tmp_path / "w.safetensors").dynamics
    assert dyn.text_mean.abs().sum() > 0 and not torch.equal(dyn.text_whitening, torch.eye(384))
    from worldsim.checkpoint import CheckpointError, MODEL, load_checkpoint, with_prefix
    run = with_prefix(load_checkpoint(tmp_path / "w" / "latest.safetensors")[0], MODEL)
    assert torch.equal(dyn.text_whitening, run["text_whitening"])  # shipped at full precision, not float16
    # Continuing it keeps its whitening (not refitted); without --text-whiten it says to pass it.
    train(TrainConfig(data=str(root / "latents"), out=str(tmp_path / "w2"), config="tiny", text=True, text_whiten=True,
                      window=1, steps=1, batch_size=4, warmup=1, ckpt_every=1, init=str(tmp_path / "w.safetensors")),
          progress=False)
    again = with_prefix(load_checkpoint(tmp_path / "w2" / "latest.safetensors")[0], MODEL)
    assert torch.equal(again["text_whitening"], run["text_whitening"])
    with pytest.raises(CheckpointError, match="pass it"):
        train(TrainConfig(data=str(root / "latents"), out=str(tmp_path / "w3"), config="tiny", text=True, window=1,
                          steps=1, init=str(tmp_path / "w.safetensors")), progress=False)
    zero = torch.zeros(2, 384)
    tau, act = torch.zeros(2, 1), torch.zeros(2, 1, dtype=torch.long)
    has = torch.zeros(2, 1, dtype=torch.bool)
    torch.nn.init.normal_(dyn.text.weight)
    null = dyn.conditioning(tau, act, has, zero) - dyn.conditioning(tau, act, has, None)
    assert torch.allclose(null, dyn.text.bias.expand_as(null), atol=1e-6)  # zeros in, zeros whitened: the bias alone
