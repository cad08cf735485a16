"""Latent memory: pose keys, view-overlap retrieval, the bounded bank, attention that
reaches only the newest frame, training with memory, and the switch in the dream env."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from envs.rooms import ACTIONS, RoomsEnv
from worldsim.memory import MemoryBank, PoseTracker, latent_keys, pose_features, relative_poses, view_overlap, view_points_seen
from worldsim.sampler import prime, sample_next


def test_view_overlap_is_one_for_the_same_view_and_zero_for_disjoint_ones():
    q = np.array([1.0, 2.0, 0.3])
    poses = np.array([[1, 2, 0.3], [1, 2, 0.3 + np.pi], [1.3, 2.1, 0.3 + np.radians(15)], [30, 30, 0.3]])
    o = view_overlap(q, poses, 60, 5)
    assert o[0] == 1.0 and o[1] == 0.0 and o[3] == 0.0
    assert 0.3 < o[2] < 1.0


def test_dead_reckoning_follows_the_real_pose_on_a_free_path():
    env = RoomsEnv(collectible=False)
    tracker = PoseTracker(env.pose_model()["motion"])
    names = ["TURN_LEFT"] * 5 + ["FORWARD"] * 2 + ["STRAFE_LEFT", "TURN_RIGHT", "BACK"]
    acts = [ACTIONS.index(n) for n in names]
    moves = [i for i, n in enumerate(names) if n in ("FORWARD", "STRAFE_LEFT", "BACK")]
    for seed in range(50):  # a start where no wall blocks any move
        _, info = env.reset(seed=seed)
        real = [info["gt"]["pose"]] + [env.step(a)[4]["gt"]["pose"] for a in acts]
        real = np.array(real, float)
        if np.allclose(np.linalg.norm(np.diff(real[:, :2], axis=0), axis=1)[moves], env.move_step):
            break
    else:
        pytest.fail("no free start found")
    dead = tracker.path(acts, real[0])
    np.testing.assert_allclose(dead[:, :2], real[:, :2], atol=1e-5)
    np.testing.assert_allclose(np.angle(np.exp(1j * (dead[:, 2] - real[:, 2]))), 0, atol=1e-5)
    turns = tracker.path([ACTIONS.index("TURN_LEFT")] * env.turn_steps)
    assert np.isclose(np.cos(turns[-1, 2]), 1) and np.allclose(turns[-1, :2], 0)


def test_memory_is_bounded_refreshes_a_view_and_retrieves_the_best_old_view():
    mem = MemoryBank(1, (2, 2, 2), capacity=3, fov_deg=60, reach=5)
    for i, yaw in enumerate([0.0, 1.5, 3.0]):
        mem.add(torch.full((1, 2, 2, 2), float(i)), [(0, 0, yaw)], [i])
    mem.add(torch.full((1, 2, 2, 2), 9.0), [(0, 0, 0)], [3])  # the same view as step 0: replaces it
    assert mem.entries(0) == 3 and sorted(mem.steps[mem.used].tolist()) == [1, 2, 3]
    mem.add(torch.full((1, 2, 2, 2), 10.0), [(0, 0, 4.5)], [4])  # a new view, memory full: the oldest goes
    assert mem.entries(0) == 3 and sorted(mem.steps[mem.used].tolist()) == [2, 3, 4]
    z, feats, valid = mem.retrieve(np.array([(0, 0, 0.1)]), k=2, before_step=[4])  # step 4 is still in context
    assert valid[0].tolist() == [True, False]  # the yaw-3.0 view does not overlap
    assert (z[0, 0] == 9).all() and (z[0, 1] == 0).all()
    np.testing.assert_allclose(feats[0, 0], pose_features(relative_poses(np.array([0, 0, 0.1]), np.zeros((1, 3))), 5)[0],
                               rtol=1e-6)


class ListMemory:
    """The memory rules written plainly, one row as a list: what MemoryBank must do for
    every row at once."""

    def __init__(self, likeness, capacity, same, least):
        self.likeness, self.capacity, self.same, self.least = likeness, capacity, same, least
        self.entries = []  # (latent, key, step), oldest added first

    def add(self, latent, key, step):
        alike = [self.likeness(key, e[1]) for e in self.entries]
        if alike and max(alike) >= self.same:  # the same view again: the newer frame replaces it
            del self.entries[alike.index(max(alike))]
        elif len(self.entries) >= self.capacity:  # full: the oldest step goes
            steps = [e[2] for e in self.entries]
            del self.entries[steps.index(min(steps))]
        self.entries.append((latent, key, step))

    def retrieve(self, query, k, before):
        old = [(self.likeness(query, e[1]), i) for i, e in enumerate(self.entries) if e[2] < before]
        best = sorted(old, key=lambda a: (-a[0], a[1]))[:k]  # ties: the entry added first
        return [self.entries[i][0] for a, i in best if a >= self.least]


@pytest.mark.parametrize("key", ["pose", "latent"])
def test_a_bank_of_many_rows_keeps_and_recalls_by_the_memory_rules(key):
    """Rows add and retrieve together, each row's memory its own; walks on a coarse grid
    of poses (or a few latents seen again) make same views, replacements, full banks and
    tied overlaps; row 1 starts a new episode half-way."""
    rng = np.random.default_rng(0)
    rows, steps, capacity = 3, 120, 12
    bank = MemoryBank(rows, (2, 4, 4), capacity=capacity, fov_deg=60, reach=5, key=key)
    if key == "pose":
        likeness = lambda q, e: float(view_overlap(q, e[None], 60, 5)[0])  # noqa: E731
    else:
        likeness = lambda q, e: float(q @ e)  # noqa: E731
    plain = [ListMemory(likeness, capacity, bank.same_view, bank.min_overlap) for _ in range(rows)]
    poses, seen, recalled = np.zeros((rows, 3)), torch.randn(5, 2, 4, 4), 0
    for t in range(steps):
        if t == steps // 2:
            bank.clear([1])
            plain[1] = ListMemory(likeness, capacity, bank.same_view, bank.min_overlap)
        poses = poses + rng.integers(-1, 2, size=(rows, 3)) * np.array([0.5, 0.5, np.pi / 4])
        latents = (seen[rng.integers(0, 5, rows)] + 0.05 * torch.randn(rows, 2, 4, 4) if key == "latent"
                   else torch.randn(rows, 2, 4, 4))
        queries, before = (poses if key == "pose" else latents), rng.integers(t - 5, t + 2, rows)
        z, _, valid = bank.retrieve(queries, 4, before)
        for r in range(rows):
            query = poses[r] if key == "pose" else latent_keys(latents[r])
            expected = plain[r].retrieve(query, 4, before[r])
            assert valid[r].sum() == len(expected) and all(torch.equal(z[r, i], e) for i, e in enumerate(expected))
            plain[r].add(latents[r], poses[r] if key == "pose" else latent_keys(latents[r]), t)
        recalled += int(valid.sum())
        bank.add(latents, poses if key == "pose" else None, torch.full((rows,), t))
    assert recalled > steps and [bank.entries(r) for r in range(rows)] == [len(p.entries) for p in plain]


def tiny(memory=2):
    from worldsim.dynamics import Dynamics, DynamicsConfig

    torch.manual_seed(0)
    model = Dynamics(DynamicsConfig(latent_shape=(4, 4, 4), d_model=32, n_layers=2, n_heads=2, max_frames=6,
                                    memory=memory))
    for p in model.parameters():  # adaLN-Zero starts as the identity: perturb it so every path matters
        p.data += 0.05 * torch.randn_like(p)
    return model.eval()


def test_memory_reaches_only_the_newest_frame_and_the_cache_agrees():
    model = tiny()
    g = torch.Generator().manual_seed(0)
    b, t = 2, 4
    x, tau = torch.randn(b, t, 4, 4, 4, generator=g), torch.rand(b, t, generator=g)
    a, has, pos = torch.randint(0, 7, (b, t), generator=g), torch.ones(b, t, dtype=torch.bool), torch.arange(t).expand(b, t)
    z_mem, feats = torch.randn(b, 2, 4, 4, 4, generator=g), torch.randn(b, 2, 4, generator=g)
    with torch.no_grad():
        memory = model.encode_memory(z_mem, feats, torch.tensor([[True, True], [True, False]]), pos[:, -1])
        plain = model(x, tau, a, has, pos)
        with_memory = model(x, tau, a, has, pos, memory=memory)
        off = model(x, tau, a, has, pos, memory=model.encode_memory(z_mem, feats, torch.zeros(b, 2, dtype=torch.bool),
                                                                      pos[:, -1]))
        cache = model.new_cache()
        model(x[:, :3], tau[:, :3], a[:, :3], has[:, :3], pos[:, :3], cache=cache, write_cache=True)
        cached = model(x[:, 3:], tau[:, 3:], a[:, 3:], has[:, 3:], pos[:, 3:], cache=cache, memory=memory)
    torch.testing.assert_close(with_memory[:, :-1], plain[:, :-1])  # earlier frames never see memory
    assert (with_memory[:, -1] - plain[:, -1]).abs().max() > 1e-3  # the newest frame does
    torch.testing.assert_close(off, plain)  # invalid slots are ignored
    torch.testing.assert_close(cached, with_memory[:, 3:], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="write the cache without it"):
        model(x[:, 3:], tau[:, 3:], a[:, 3:], has[:, 3:], pos[:, 3:], cache=cache, write_cache=True, memory=memory)


def test_memory_training_retrieves_by_pose_and_learns(pipeline, memory_world):
    from envs import env_pose_model
    from training.train_dynamics import MemoryWindows

    root, _, _ = pipeline
    windows = MemoryWindows(root / "latents", 6, 0, 2, env_pose_model("worldsim/Rooms-v0"))
    rng = np.random.default_rng(0)
    items = [windows.item(rng, want_match=True, drop=False) for _ in range(20)]
    best = []
    for it in items:  # slots, seen from the window's last frame: best overlap first, invalid ones last
        f = it["mem_pose"]
        poses = np.concatenate([f[:, :2] * windows.reach, np.arctan2(f[:, 3:], f[:, 2:3])], 1)
        overlap = np.where(it["mem_valid"], view_overlap(np.zeros(3), poses, windows.fov, windows.reach), -1)
        assert (np.diff(overlap) <= 1e-9).all() and (overlap[it["mem_valid"]] >= 0.1).all()
        best.append(overlap[0])
    assert np.mean(np.array(best) >= 0.9) > 0.5  # windows that need their memory were asked for
    assert not windows.item(rng, want_match=True, drop=True)["mem_valid"].any()  # dropped: no memory
    _, summary = memory_world
    assert summary["step"] == 30 and np.isfinite(summary["last_batch"]["loss"])


def test_memory_from_window_recalls_what_the_dreams_memory_bank_recalls(pipeline):
    """With from_window, a window's memory is what a MemoryBank filled as a dream fills it
    (every frame before the last, the window's own included; near-copies replaced) recalls
    for the last frame, features and all, at the episode's true poses."""
    from envs import env_pose_model
    from training.train_dynamics import MemoryWindows
    from worldsim.memory import MemoryBank

    root, _, _ = pipeline
    windows = MemoryWindows(root / "latents", 6, 0, 2, env_pose_model("worldsim/Rooms-v0"), from_window=True)
    episodes = {ep["path"]: ep for ep in windows.episodes}
    rng = np.random.default_rng(2)
    for k in range(8):
        it = windows.item(rng, want_match=k % 2 == 0, drop=False)
        path, s = it["start"]
        ep, last = episodes[path], s + 5
        track = ep["gt/pose"]
        bank = MemoryBank(1, ep["latents"].shape[1:], fov_deg=windows.fov, reach=windows.reach)
        for t in range(last):
            bank.add(torch.from_numpy(ep["latents"][t:t + 1]).float(), track[t:t + 1], [t])
        z, feats, valid = bank.retrieve(track[last:last + 1], windows.k, [last])
        assert np.array_equal(it["mem_valid"], valid[0].numpy())
        assert torch.equal(torch.as_tensor(it["mem_z"]), z[0])
        np.testing.assert_allclose(it["mem_pose"], feats[0].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="keyed by pose"):
        MemoryWindows(root / "latents", 6, 0, 2, env_pose_model("worldsim/Rooms-v0"), key="latent", from_window=True)


def test_bank_drops_follow_a_bank_filled_frame_by_frame():
    """bank_drops gives, for each frame, the frame whose adding dropped it from a
    MemoryBank (a near-copy of its view, or the oldest of a full bank), on a walk that
    returns to its views and fills a small bank."""
    from worldsim.memory import bank_drops

    env = RoomsEnv(world_seed=3)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    poses = np.array([env.step(int(a))[4]["gt"]["pose"] for a in rng.choice([1, 3, 3, 4, 5], size=120)], np.float64)
    for capacity in (256, 12):
        bank = MemoryBank(1, (1, 1, 1), capacity=capacity, fov_deg=60.0, reach=5.0)
        expected = np.full(len(poses), len(poses))
        for t in range(len(poses)):
            held = set(bank.steps[0][bank.used[0]].tolist())
            bank.add(torch.zeros(1, 1, 1, 1), poses[t:t + 1], [t])
            for gone in held - set(bank.steps[0][bank.used[0]].tolist()):
                expected[gone] = t
        drops = bank_drops(poses, 60.0, 5.0, capacity)
        np.testing.assert_array_equal(drops, expected)
        assert (drops < len(poses)).sum() > 10  # near-copies replaced (and, at 12, the oldest dropped)


def test_memory_match_draws_windows_whose_last_view_only_earlier_frames_show(pipeline):
    """With --memory-match m, a matched window ends on a view of which at least m is
    seen by the frames memory recalls and by no window frame, from any pose; random
    windows rarely are."""
    from envs import env_pose_model
    from training.train_dynamics import MemoryWindows

    root, _, _ = pipeline
    windows = MemoryWindows(root / "latents", 6, 0, 2, env_pose_model("worldsim/Rooms-v0"), match=0.2)
    episodes = {ep["path"]: ep["gt/pose"].astype(np.float64) for ep in windows.episodes}

    def memory_only_share_and_best(it):
        """Share of the last view the recalled frames see and no window frame does, and
        the best recalled overlap; all seen from the last pose."""
        path, s = it["start"]
        poses, last = episodes[path], s + 5
        window = relative_poses(poses[last], poses[s:last])
        f = it["mem_pose"][it["mem_valid"]]
        recalled = np.concatenate([f[:, :2] * windows.reach, np.arctan2(f[:, 3:], f[:, 2:3])], 1)
        in_window = view_points_seen(np.zeros(3), window, windows.fov, windows.reach).any(axis=0)
        in_memory = view_points_seen(np.zeros(3), recalled, windows.fov, windows.reach).any(axis=0)
        return (in_memory & ~in_window).mean(), view_overlap(np.zeros(3), recalled, windows.fov, windows.reach).max(initial=0)

    rng = np.random.default_rng(1)
    matched = np.array([memory_only_share_and_best(windows.item(rng, want_match=True, drop=False)) for _ in range(20)])
    drawn = np.array([memory_only_share_and_best(windows.item(rng, want_match=False, drop=False)) for _ in range(20)])
    assert np.mean(matched[:, 0] >= 0.2) > 0.8  # found within the 100 draws
    assert np.mean(matched[:, 0] >= 0.2) > np.mean(drawn[:, 0] >= 0.2)
    assert np.mean(matched[:, 1] < 0.9) > 0  # some are returns from other poses, not the same view
    with pytest.raises(ValueError, match=r"share of the view, in \[0, 1\)"):
        MemoryWindows(root / "latents", 6, 0, 2, env_pose_model("worldsim/Rooms-v0"), match=1.0)
    with pytest.raises(ValueError, match="needs memory keyed by pose"):
        MemoryWindows(root / "latents", 6, 0, 2, env_pose_model("worldsim/Rooms-v0"), key="latent", match=0.2)


def test_memory_guidance_extrapolates_from_the_prediction_without_memory():
    """One denoising step from the same noise: x0 = x0_mem + w (x0_mem - x0_none); nothing
    retrieved, nothing changes."""
    model = tiny()
    g = torch.Generator().manual_seed(1)
    ctx, actions = torch.randn(1, 3, 4, 4, 4, generator=g), torch.randint(0, 7, (1, 3), generator=g)
    z_mem, feats = torch.randn(1, 2, 4, 4, 4, generator=g), torch.randn(1, 2, 4, generator=g)

    def sample(valid=(True, True), memory=True, guidance=0.0):
        cache = model.new_cache()
        prime(model, cache, ctx, actions, torch.ones(1, 3, dtype=torch.bool), torch.arange(3)[None],
                    torch.Generator().manual_seed(2))
        mem = (z_mem, feats, torch.tensor([valid])) if memory else None
        return sample_next(model, cache, torch.tensor([2]), torch.tensor([3]), steps=1, memory=mem, guidance=guidance,
                                 generator=torch.Generator().manual_seed(0))

    plain, with_memory = sample(memory=False), sample()
    assert (with_memory - plain).abs().max() > 1e-3
    torch.testing.assert_close(sample(guidance=1.5), with_memory + 1.5 * (with_memory - plain), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sample(valid=(False, False), guidance=1.5), sample(valid=(False, False)))


def test_dream_env_memory_switch(memory_world, pipeline):
    from worldsim.dream_env import DreamEnv

    world, _ = memory_world
    turn = ACTIONS.index("TURN_LEFT")
    env = DreamEnv(world)
    env.reset(seed=0)
    retrieved = [env.step(turn)[4]["memory_frames"] for _ in range(24)]
    assert max(retrieved) > 0
    off = DreamEnv(world, memory=False)
    off.reset(seed=0)
    assert all(off.step(turn)[4]["memory_frames"] == 0 for _ in range(24))
    with pytest.raises(ValueError, match="has no memory"):
        DreamEnv(str(pipeline[0] / "world.safetensors"), memory=True)


def test_export_sets_the_memory_guidance_weight(memory_world, tmp_path):
    from worldsim.export import export_world_model
    from worldsim.world_model import WorldModel

    world, _ = memory_world
    run = world.parent / "dyn" / "latest.safetensors"
    default = WorldModel.load(world).dynamics.cfg.memory_guidance
    export_world_model(str(run), str(tmp_path / "w.safetensors"), memory_guidance=default + 0.5)
    assert WorldModel.load(tmp_path / "w.safetensors").dynamics.cfg.memory_guidance == default + 0.5


def test_turned_columns_find_the_same_wall_in_a_real_turned_view():
    """Rooms renders the view two turns to the left; each of its pixel columns that
    turned_columns puts on the current screen shows what the current view shows there."""
    from worldsim.memory import turned_columns

    env = RoomsEnv(world_seed=0)
    errors, unshifted = [], []
    for seed in range(4):
        now, _ = env.reset(seed=seed)
        env.step(ACTIONS.index("TURN_LEFT"))
        turned = env.step(ACTIONS.index("TURN_LEFT"))[0]
        dyaw = torch.tensor(2 * 2 * np.pi / env.turn_steps)
        column, on_screen = turned_columns(dyaw, now.shape[1], env.pose_model()["fov_deg"])
        for u in np.flatnonzero(on_screen.numpy()):
            target = int(round(float(column[u])))
            errors.append(np.abs(turned[:, u].astype(float) - now[:, target]).mean())
            unshifted.append(np.abs(turned[:, u].astype(float) - now[:, u]).mean())
    assert len(errors) > 40  # most of the turned view is still on screen
    assert np.mean(errors) < 0.3 * np.mean(unshifted)


def test_memory_tokens_take_the_screen_position_of_their_turned_bearing():
    from worldsim.dynamics import Dynamics, DynamicsConfig

    model = Dynamics(DynamicsConfig(latent_shape=(4, 16, 16), patch=4, d_model=32, n_layers=1, n_heads=2, memory=2,
                                    memory_fov_deg=60.0))
    with torch.no_grad():  # learnt values: off screen must be this embedding, not zeros
        model.memory_offscreen.normal_()
    yaw = np.radians(30.0)
    feats = torch.tensor([[[0, 0, 1.0, 0], [0, 0, np.cos(yaw), np.sin(yaw)]]], dtype=torch.float32)
    pos = model.memory_positions(feats).view(2, 4, 4, -1)
    table = model.space_pos.view(4, 4, -1)
    assert torch.allclose(pos[0], table)  # the same heading: the same positions
    nearest = [int(torch.cdist(pos[1, 0, c][None], table[0]).argmin()) for c in (2, 3)]
    assert nearest == [0, 1]  # turned 30 degrees left, its right half lands on the new view's left half
    assert torch.equal(pos[1, :, :2], model.memory_offscreen.expand(4, 2, -1))  # its left half is off screen
    unturned = Dynamics(replace(model.cfg, memory_fov_deg=0.0))
    assert torch.equal(unturned.memory_positions(feats), unturned.space_pos.repeat(2, 1))


def test_memory_reproject_fine_tunes_a_memory_model_and_dreams_with_it(pipeline, memory_world, tmp_path):
    """--memory-reproject starts from a memory model (every weight carries over; the
    off-screen embedding is new), takes the env's field of view, and the exported model
    dreams with its memory."""
    import gymnasium as gym

    from training.train_dynamics import TrainConfig, train
    from worldsim.export import export_world_model

    root, _, _ = pipeline
    world, _ = memory_world
    cfg = TrainConfig(data=str(root / "latents"), out=str(tmp_path / "dyn"), config="tiny", memory=2, steps=4, batch_size=4,
                      warmup=1, ckpt_every=4, log_every=2, init=str(world), memory_reproject=True)
    assert np.isfinite(train(cfg, progress=False)["last_batch"]["loss"])
    export_world_model(str(tmp_path / "dyn" / "latest.safetensors"), str(tmp_path / "world.safetensors"))
    env = gym.make("worldsim/Dream-v0", checkpoint=str(tmp_path / "world.safetensors"))
    assert env.unwrapped.model.dynamics.cfg.memory_fov_deg == RoomsEnv().pose_model()["fov_deg"]
    env.reset(seed=0)
    for action in (3, 3, 1, 4, 4):
        obs, *_ = env.step(action)
    assert obs.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="--memory-reproject turns memory views by their pose"):
        train(replace(cfg, out=str(tmp_path / "none"), memory=0, init=None), progress=False)


def test_a_memory_match_no_window_meets_is_refused(pipeline):
    from envs import env_pose_model
    from training.train_dynamics import MemoryWindows

    root, _, _ = pipeline
    with pytest.raises(ValueError, match="--memory-match 0.95: only 0% of 20 tries found"):
        MemoryWindows(root / "latents", 6, 0, 2, env_pose_model("worldsim/Rooms-v0"), match=0.95)
