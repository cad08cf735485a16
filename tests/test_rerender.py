"""Memory re-rendered from a new pose: the depth a Rooms frame's ground truth gives, a view
moved to another pose with it, the depth network, and the dream that uses both."""

import json

import numpy as np
import pytest
import torch

from envs.rooms import ACTIONS, RoomsEnv, depth_image
from worldsim.reproject import fuse, reproject


def _walk(env, seed, actions):
    frame, info = env.reset(seed=seed)
    frames, gts = [frame], [info["gt"]]
    for a in actions:
        frame, *_, info = env.step(ACTIONS.index(a))
        frames.append(frame)
        gts.append(info["gt"])
    return np.stack(frames), {k: np.stack([g[k] for g in gts]) for k in gts[0]}


def _inverse(depth):
    return torch.from_numpy(np.where(np.isfinite(depth), 1 / depth, 0.0))


def test_depth_image_is_the_raycasters_depth():
    env = RoomsEnv(world_seed=3)
    frames, gt = _walk(env, 0, ["FORWARD"] * 3 + ["TURN_LEFT"] * 5)
    for t in range(len(frames)):
        d = depth_image(gt, t)
        h = d.shape[0]
        # On the horizon rows every column shows a wall or a billboard in front of it.
        horizon = d[h // 2 - 1:h // 2 + 1]
        assert np.all(horizon <= gt["depth"][t][None] + 1e-9)
        assert np.isinf(d[0]).all() or (gt["depth"][t] < 1).any()  # the top row is ceiling unless a wall is close
        floor = d[-1][~np.isin(np.arange(d.shape[1]), np.nonzero(gt["object_ids"][t][-1] >= 0)[0])]
        assert np.allclose(floor[floor < gt["depth"][t].min()], 0.5 * env.focal / (h / 2 - 0.5))


def test_a_real_view_moved_to_a_new_pose_matches_the_render_there():
    """Frame A with its true depth, re-rendered at poses a few steps away (walks, strafes,
    turns), agrees with what Rooms renders there on the pixels A saw; frame A itself,
    unmoved, does not."""
    env = RoomsEnv(world_seed=5)
    frames, gt = _walk(env, 1, ["FORWARD", "STRAFE_LEFT", "TURN_RIGHT", "FORWARD", "TURN_RIGHT", "BACK"])
    n = len(frames) - 1
    views, inverse = reproject(torch.from_numpy(np.repeat(frames[:1], n, 0)), _inverse(depth_image(gt, 0))[None].expand(n, -1, -1),
                               torch.from_numpy(np.repeat(gt["pose"][:1], n, 0)), torch.from_numpy(gt["pose"][1:]), 60.0)
    for t in range(1, n + 1):
        covered = inverse[t - 1].numpy() >= 0
        assert covered.mean() > 0.6
        err = np.abs(views[t - 1].numpy().astype(int) - frames[t].astype(int)).max(-1)[covered]
        unmoved = np.abs(frames[0].astype(int) - frames[t].astype(int)).max(-1)[covered]
        assert (err <= 12).mean() > 0.85, t
    assert (unmoved <= 12).mean() < (err <= 12).mean() - 0.2  # six steps away, the unmoved view is far off


def test_same_pose_is_the_identity_and_points_at_infinity_only_turn():
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8))
    inverse = torch.zeros(1, 16, 16)  # everything infinitely far
    pose = torch.tensor([[2.0, 3.0, 0.4]])
    same, near = reproject(frames, inverse, pose, pose, 60.0)
    assert torch.equal(same, frames) and (near == 0).all()
    walked, _ = reproject(frames, inverse, pose, pose + torch.tensor([[1.0, -0.5, 0.0]]), 60.0)
    assert torch.equal(walked, frames)  # a sky does not move when the camera walks
    turned, near = reproject(frames, inverse, pose, pose + torch.tensor([[0.0, 0.0, 0.2]]), 60.0)
    assert (near[0, :, :3] < 0).all()  # turned left: the left edge is new
    assert not torch.equal(turned, frames)


def test_fuse_takes_each_pixel_from_the_first_source_that_shows_it():
    frames = torch.stack([torch.zeros(1, 2, 3, 3), torch.ones(1, 2, 3, 3)], 1)
    inverse = torch.tensor([[[[0.5, -1.0, 0.5], [0.2, 0.3, -1.0]],
                             [[0.52, 0.1, 0.9], [0.9, -1.0, -1.0]]]])
    out, near = fuse(frames, inverse)
    assert out[0, :, :, 0].tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    assert torch.allclose(near[0], torch.tensor([[0.5, 0.1, 0.5], [0.2, 0.3, -1.0]]))


@pytest.fixture(scope="module")
def depth_world(memory_world, rooms_dataset, tmp_path_factory):
    """A tiny depth network trained on the test dataset, exported into the memory world."""
    from training.train_depth import TrainConfig, train
    from worldsim.export import export_world_model

    out = tmp_path_factory.mktemp("depth")
    summary = train(TrainConfig(data=str(rooms_dataset), out=str(out / "depth"), width=8, steps=30, batch_size=8,
                                warmup=5, ckpt_every=30, log_every=5, eval_frames=64), progress=False)
    world, _ = memory_world
    export_world_model(str(world.parent / "dyn" / "latest.safetensors"), str(out / "world.safetensors"),
                       depth=str(out / "depth" / "latest.safetensors"))
    return out, summary


def test_an_export_takes_the_depth_network_a_world_model_carries(depth_world, memory_world, tmp_path):
    from worldsim.checkpoint import CheckpointError
    from worldsim.export import export_world_model
    from worldsim.world_model import WorldModel

    out, _ = depth_world
    world, _ = memory_world
    run = str(world.parent / "dyn" / "latest.safetensors")
    export_world_model(run, str(tmp_path / "again.safetensors"), depth=str(out / "world.safetensors"))
    before, again = WorldModel.load(out / "world.safetensors"), WorldModel.load(tmp_path / "again.safetensors")
    carried = before.depth.state_dict()
    assert again.depth.state_dict().keys() == carried.keys()
    assert all(torch.equal(v, carried[k]) for k, v in again.depth.state_dict().items())
    assert again.info["depth_train"] == before.info["depth_train"] and again.can_rerender
    with pytest.raises(CheckpointError, match="without a depth network"):
        export_world_model(run, str(tmp_path / "none.safetensors"), depth=str(world))


def test_depth_training_writes_its_scores_beside_the_mean_depth(depth_world):  # a smoke test: 30 steps learn little
    out, summary = depth_world
    scores = json.loads((out / "depth" / "scores.json").read_text())
    assert scores == summary["scores"]
    for name in ("depth_net", "mean_inverse_depth"):
        assert 0 <= scores[name]["median_relative_depth_error"] < 10
        assert 0 <= scores[name]["within_10_percent"] <= 1


def test_the_dream_rerenders_memory_with_the_depth_network(depth_world, memory_world, rooms_dataset):
    from worldsim.dataset import episode_paths, read_episode
    from worldsim.world_model import DreamCore, WorldModel

    out, _ = depth_world
    model = WorldModel.load(out / "world.safetensors")
    plain = WorldModel.load(memory_world[0])
    assert model.can_rerender and not plain.can_rerender
    ep = read_episode(episode_paths(rooms_dataset, "test")[0])
    ctx, acts = ep.frames[None, :4], ep.actions[None, :3]
    turn = np.full((1, 12), ACTIONS.index("TURN_LEFT"))
    on = model.rollout(ctx, acts, turn, rerender=True)[0]
    off = model.rollout(ctx, acts, turn, rerender=False)[0]
    assert on.shape == off.shape == (1, 12, *model.frame_shape)
    assert not np.array_equal(on, off)  # the network saw another memory
    assert np.array_equal(off, plain.rollout(ctx, acts, turn)[0])  # off: the model as it was
    # The network is given one view, from its own pose.
    core = DreamCore(model, 1, rerender=True)
    core.reset_rows([0], [(ep.frames[:4], ep.actions[:3])], torch.Generator().manual_seed(0))
    z, feats, valid = core._recall(np.array([ACTIONS.index("TURN_LEFT")]))
    assert z.shape[1] == 1 and valid.all() and feats[0, 0].tolist() == [0.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="depth network"):
        DreamCore(plain, 1, rerender=True)
    from worldsim.dream_env import DreamEnv
    with pytest.raises(ValueError, match="depth network"):
        DreamEnv(str(memory_world[0]), rerender=True)  # at construction, not at the first reset
    with pytest.raises(ValueError, match="memory on"):
        DreamEnv(str(out / "world.safetensors"), memory=False, rerender=True)
    assert not DreamCore(model, 1).rerender  # re-rendering is asked for, never assumed


def test_dream_envs_step_with_rerendered_memory_and_show_the_frames_they_dream(depth_world):
    """Pixels come from the decode the re-rendering memory already did: the same frames a
    latent env's render() decodes from the same dream."""
    from worldsim.dream_env import DreamEnv, DreamVectorEnv

    world = str(depth_world[0] / "world.safetensors")
    rgb, latent = DreamEnv(world, rerender=True), DreamEnv(world, obs_type="latent", rerender=True)
    rgb.reset(seed=3)
    latent.reset(seed=3)
    for a in [ACTIONS.index("TURN_LEFT")] * 3 + [ACTIONS.index("FORWARD")] * 2:
        obs = rgb.step(a)[0]
        z = latent.step(a)[0]
        assert np.array_equal(obs, latent.render()) and z.shape == latent.observation_space.shape
    vec = DreamVectorEnv(2, world, rerender=True)
    vec.reset(seed=0)
    obs = vec.step(np.array([ACTIONS.index("TURN_LEFT")] * 2))[0]
    assert obs.shape == (2, *rgb.observation_space.shape) and np.array_equal(obs, vec.render())
    seen = obs.copy()
    vec.reset(options={"reset_mask": np.array([True, False])})
    assert np.array_equal(obs, seen)  # the caller's frames are its own, not the dream's buffers


def test_the_revisit_probe_scores_rerendering_beside_plain_memory(depth_world, tmp_path):
    from worldsim.probes.report import ProbeConfig, run_probes

    out, _ = depth_world
    run_probes(ProbeConfig(checkpoint=str(out / "world.safetensors"), out=str(tmp_path), probes="revisit", count=1,
                           env_kwargs={"world_seed": None}, rerender=True), progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["predictors"][:3] == ["dream_memory_on", "dream_rerender", "dream_memory_off"]
    revisit = report["probes"]["revisit"]
    assert revisit["dream_rerender"]["new_pose"]["scripts"] == 1
    assert set(revisit["rerender_gain"]) >= {"new_pose", "exact"} and "memory_gain" in revisit
    assert report["rerender_memory_guidance"] == 0.0
    assert (tmp_path / "summary.png").stat().st_size > 10_000


def test_memory_keeps_each_entrys_frame_and_depth_for_rerendering():
    from worldsim.memory import MemoryBank

    bank = MemoryBank(2, (2, 4, 4), capacity=4, fov_deg=60, reach=5, view_shape=(8, 8))
    poses = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, np.pi]])
    for step, yaw in enumerate((0.0, np.pi / 2, np.pi)):
        pixels = torch.full((2, 8, 8, 3), 10 * step, dtype=torch.uint8)
        bank.add(torch.full((2, 2, 4, 4), float(step)), poses * 0 + [0, 0, yaw], [step, step],
                 views=(pixels, torch.full((2, 8, 8), 0.5 * step)))
    z, _, valid, pixels, inverse = bank.retrieve(poses, 1, [3, 3], views=True)
    assert valid.all() and z[:, 0, 0, 0, 0].tolist() == [0.0, 2.0]  # each row's own view: yaw 0, yaw pi
    assert pixels[:, 0, 0, 0, 0].tolist() == [0, 20] and inverse[:, 0, 0, 0].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="views"):
        bank.add(torch.zeros(2, 2, 4, 4), poses, [4, 4])


def test_the_view_memory_gives_is_the_last_frame_and_the_entries_moved_to_the_new_pose(depth_world, rooms_dataset):
    """With a depth network that says every pixel is 2 units away: after a turn left, the
    one memory view is the last frame re-rendered a turn to the left (where it covers;
    itself elsewhere); turning back right, the entry seen from exactly there wins, unmoved."""
    from worldsim.dataset import episode_paths, read_episode
    from worldsim.world_model import DreamCore, WorldModel

    class FlatDepth(torch.nn.Module):
        def predict(self, frames):
            return torch.full(frames.shape[:3], 0.5)

    model = WorldModel.load(depth_world[0] / "world.safetensors")
    model.depth = FlatDepth()
    frames = read_episode(episode_paths(rooms_dataset, "test")[0]).frames[:2]
    left, right = ACTIONS.index("TURN_LEFT"), ACTIONS.index("TURN_RIGHT")
    core = DreamCore(model, 1, rerender=True)
    core.reset_rows([0], [(frames, np.array([left]))], torch.Generator().manual_seed(0))
    turn = model.info["pose_model"]["motion"][left][2]
    fov = model.info["pose_model"]["fov_deg"]
    z, _, _ = core._recall(np.array([left]))
    moved, near = reproject(torch.from_numpy(frames[1:]), torch.full((1, *frames.shape[1:3]), 0.5),
                            torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, turn]]), fov)
    expected = torch.where(near[..., None] >= 0, moved, torch.from_numpy(frames[1:]))
    assert 0.5 < (near >= 0).float().mean() < 1  # a turn leaves the new edge unseen
    assert torch.allclose(z[:, 0], model.encode(expected[:, None])[:, 0])
    core.poses[:] = core.tracker.step(core.poses, np.array([right]))  # back where the context's last frame was
    z, _, _ = core._recall(np.array([right]))  # one more turn right: the first context frame's pose
    assert torch.allclose(z[:, 0], model.encode(torch.from_numpy(frames[:1])[:, None])[:, 0])


def test_dream_replays_an_episode_with_rerendered_memory(depth_world, rooms_dataset, tmp_path):
    from worldsim.cli import main
    from worldsim.dataset import episode_paths

    ep = str(episode_paths(rooms_dataset, "test")[0])
    world = str(depth_world[0] / "world.safetensors")
    assert main(["dream", "--checkpoint", world, "--episode", ep, "--steps", "5", "--rerender",
                 "--out", str(tmp_path / "d.mp4")]) == 0
    assert (tmp_path / "d.mp4").stat().st_size > 1000 and (tmp_path / "d.png").exists()
    assert main(["dream", "--prompt", "a teal room", "--rerender", "--out", str(tmp_path / "p.mp4")]) != 0


def _rerender_windows(pipeline, depth_world, share=1.0):
    from training.train_dynamics import MemoryWindows, dataset_pose_model
    from worldsim.dataset import load_meta

    latents = pipeline[0] / "latents"
    return MemoryWindows(latents, 6, 0, 2, dataset_pose_model(load_meta(latents)), "pose", rerender_share=share,
                         depth_run=str(depth_world[0] / "depth" / "latest.safetensors"))


def test_training_recalls_what_the_dreams_memory_bank_recalls(pipeline, depth_world):
    """The re-render sources of a training window are the frame before the last and what
    a MemoryBank filled as a dream fills it (poses dead-reckoned from the actions, near
    copies replaced) recalls for the last frame, with the same poses relative to it."""
    from worldsim.memory import MemoryBank, PoseTracker, pose_features, relative_poses

    data = _rerender_windows(pipeline, depth_world)
    ep = max(data.episodes, key=lambda e: len(e["latents"]))
    track = PoseTracker(data.pose_model["motion"]).path(ep["actions"])
    bank = MemoryBank(1, ep["latents"].shape[1:], fov_deg=data.fov, reach=data.reach)
    recalled = 0
    for last in range(1, len(ep["latents"])):
        bank.add(torch.from_numpy(ep["latents"][last - 1:last]).float(), track[last - 1:last], [last - 1])
        sources, poses = data.dream_recall(ep, last)
        z, feats, valid = bank.retrieve(track[last:last + 1], data.k, [last])
        n = int(valid.sum())
        assert sources[0] == last - 1 and len(sources) == n + 1
        assert np.allclose(poses[0], relative_poses(track[last], track[last - 1:last])[0], atol=1e-5)
        assert torch.equal(z[0, :n], torch.from_numpy(ep["latents"][sources[1:]]).float())
        assert np.allclose(feats[0, :n].numpy(), pose_features(poses[1:], data.reach), atol=1e-5)
        recalled += n
    assert recalled > len(ep["latents"])  # most frames recall something
    assert (ep["dream_poses dropped_at"] < len(ep["latents"])).any()  # and the bank did replace views on the way


def test_training_gives_memory_as_the_dream_rerenders_it(pipeline, depth_world):
    """With --rerender-share the training memory is the dream's one view from the last
    frame's pose: the frame before the last moved there (and, where it does not reach,
    itself). Standing still, that is the frame before the last; turning in place, it is
    that frame turned by the step's turn (depth decides only which of the samples that
    land on one pixel is nearest)."""
    from worldsim.memory import SEEN_HERE

    data = _rerender_windows(pipeline, depth_world)
    tok = data.rerenderer.tokenizer
    noop, left = ACTIONS.index("NOOP"), ACTIONS.index("TURN_LEFT")
    turn = 0.05  # small enough that no earlier frame (episodes of 100) turns a whole circle back nearer
    data.pose_model["motion"] = np.array(data.pose_model["motion"]) * 0 + [[0.0, 0.0, turn if a == left else 0.0]
                                                                           for a in range(len(ACTIONS))]
    for ep in data.episodes:
        ep["actions"][:] = noop
    batch = data.batch(6, 0, 0)
    z, feats, valid = batch["memory"]
    kept = valid[:, 0]
    assert kept.any() and not valid[:, 1:].any()  # one view, in slot 0
    assert torch.equal(feats[kept][:, 0], torch.tensor(SEEN_HERE).expand(int(kept.sum()), 4))
    with torch.no_grad():
        before_last = tok.decode(batch["z"][:, -2:-1])
        assert torch.allclose(z[kept][:, 0], tok.encode(before_last[kept])[:, 0], atol=1e-5)
        for ep in data.episodes:
            ep["actions"][:] = left
            ep.pop("dream_poses", None)  # poses follow the new actions
        batch = data.batch(6, 1, 0)
        z, _, valid = batch["memory"]
        kept = valid[:, 0]  # all but the windows trained without memory
        before_last = tok.decode(batch["z"][kept, -2:-1])[:, 0]
        n = len(before_last)
        moved, near = reproject(before_last, data.rerenderer.depth.predict(before_last),
                                torch.tensor([[0.0, 0.0, -turn]] * n), torch.zeros(n, 3), data.fov)
        expected = torch.where(near[..., None] >= 0, moved, before_last)
        assert 0.5 < (near >= 0).float().mean() < 1  # a turn leaves the new edge unseen
        # Compared as decoded frames: a level's rounding can change which sample is nearest on a pixel.
        off = lambda a, b: (a.int() - b.int()).abs().amax(-1).gt(2).float().mean(dim=(1, 2))  # noqa: E731
        got = tok.decode(z[kept, :1])[:, 0]
        assert n >= 4 and (off(got, tok.decode(tok.encode(expected[:, None]))[:, 0]) < 0.01).all()
        assert (off(expected, before_last) > 0.3).all()  # unturned, it would be far off


def test_training_rerenders_a_share_of_memory_windows_and_decodes_each_frame_once(pipeline, depth_world, tmp_path):
    from training.train_dynamics import TrainConfig, train

    data = _rerender_windows(pipeline, depth_world, share=0.5)
    tok = data.rerenderer.tokenizer
    decoded = []
    decode = tok.decode
    tok.decode = lambda z: decoded.append(z.shape[1]) or decode(z)
    batch = data.batch(64, 0, 0)
    one_view = batch["memory"][2][:, 0] & ~batch["memory"][2][:, 1:].any(1)
    assert 10 < one_view.sum() < 54  # about half; the rest recall as before
    assert decoded and sum(decoded) <= sum(len(e["latents"]) for e in data.episodes)
    made = len(decoded)
    again = data.batch(64, 0, 0)  # the same windows again: nothing more to decode, and the same memory
    assert len(decoded) == made and torch.equal(again["memory"][0], batch["memory"][0])
    root = pipeline[0]
    depth = str(depth_world[0] / "depth" / "latest.safetensors")
    common = dict(data=str(root / "latents"), config="tiny", memory=2, steps=4, batch_size=4, warmup=1, ckpt_every=4,
                  log_every=2, init=str(root / "dyn" / "latest.safetensors"))
    summary = train(TrainConfig(out=str(tmp_path / "run"), rerender_share=0.5, depth=depth, **common), progress=False)
    assert summary["step"] == 4 and np.isfinite(summary["last_batch"]["loss"])
    for bad, match in [(dict(rerender_share=0.5), "--depth"), (dict(depth=depth), "--rerender-share"),
                       (dict(rerender_share=1.5, depth=depth), r"in \[0, 1\]"),
                       (dict(rerender_share=0.5, depth=depth, memory_key="latent"), "keyed by pose"),
                       (dict(rerender_share=0.5, depth=depth, memory=0), "needs --memory")]:
        with pytest.raises(ValueError, match=match):
            train(TrainConfig(out=str(tmp_path / "bad"), **{**common, **bad}), progress=False)
