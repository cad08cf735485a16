"""Minecraft: the Crafter env, the MineRL adapter (against tests/minerl_standin, a stand-in
for minerl 0.4.4's spaces and API), and the VPT and MineRL data importers (on tiny files
written here in exactly those formats)."""

import json
import math
import sys
from pathlib import Path

import cv2
import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs
from envs.minerl_env import ENUM_ACTIONS, MAINHAND_ITEMS, MINERL_MISSING, action_space, observation_gt
from worldsim.cli import main as cli
from worldsim.dataset import DatasetError, episode_paths, load_meta, read_episode
from worldsim.dynamics import ActionEncoder
from worldsim.minecraft_import import CAMERA_SCALER, actions_as_dict, import_minecraft, vpt_action_space
from worldsim.spaces import space_from_dict, space_to_dict

STANDIN = Path(__file__).parent / "minerl_standin"


def _forget_minerl():
    for name in [n for n in sys.modules if n == "minerl" or n.startswith("minerl.")]:
        del sys.modules[name]


@pytest.fixture
def minerl(monkeypatch):
    """The stand-in minerl on sys.path for one test."""
    _forget_minerl()
    monkeypatch.syspath_prepend(str(STANDIN))
    import minerl

    assert minerl.STANDIN
    yield minerl
    _forget_minerl()


def write_mp4(path: Path, frames):
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20, (w, h))
    for f in frames:
        out.write(np.ascontiguousarray(f[..., ::-1]))
    out.release()


def colour(i: int) -> np.ndarray:
    """A solid colour per frame index, far apart from its neighbours (survives mp4 compression)."""
    return np.array([(i * 67) % 200 + 30, (i * 151) % 200 + 30, (i * 29) % 200 + 30], np.float64)


def frame_index(frame) -> int:
    """Which colour(i) a decoded frame shows (for frame-order checks)."""
    mean = frame.reshape(-1, 3).mean(0)
    return int(np.argmin([np.abs(mean - colour(i)).sum() for i in range(64)]))


# ------------------------------------------------------------------ Crafter
@pytest.fixture
def crafter():
    return pytest.importorskip("crafter")


def test_crafter_env_passes_check_env_and_reports_ground_truth(crafter):
    env = gym.make("worldsim/Crafter-v0")
    check_env(env.unwrapped)
    assert envs.action_meanings(env) == tuple(crafter.constants.actions) and env.action_space.n == 17
    obs, info = env.reset(seed=5)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    gt = info["gt"]
    assert gt["inventory"].shape == (16,) and gt["achievements"].shape == (22,) and gt["semantic"].shape == (64, 64)
    assert gt["inventory"][0] == 9 and not gt["achievements"].any()  # full health, nothing done yet
    from envs.crafter_env import SEMANTIC_IDS
    x, y = gt["player_pos"]
    assert SEMANTIC_IDS[gt["semantic"][x, y]] == "player"  # position and map agree
    again, _ = env.reset(seed=5)
    assert np.array_equal(obs, again)
    names = envs.action_meanings(env)
    obs2, _, _, _, info = env.step(names.index("move_left"))
    assert tuple(info["gt"]["facing"]) == (-1, 0)
    x2, y2 = info["gt"]["player_pos"]
    assert (x2, y2) in ((x, y), (x - 1, y))  # moved left, unless blocked
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(17)


def test_crafter_truncates_at_its_length_and_refuses_a_step_after(crafter):
    env = gym.make("worldsim/Crafter-v0", length=3)
    env.reset(seed=0)
    ends = [env.step(0)[2:4] for _ in range(3)]
    assert ends == [(False, False), (False, False), (False, True)]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_crafter_collect_writes_its_ground_truth(crafter, tmp_path):
    out = tmp_path / "crafter"
    assert cli(["collect", "--env", "worldsim/Crafter-v0", "--steps", "40", "--num-envs", "1", "--out", str(out),
                "--quiet"]) == 0
    meta = load_meta(out)
    assert meta["action_meanings"] == list(crafter.constants.actions)
    ep = read_episode(episode_paths(out)[0])
    assert ep.frames.shape[1:] == (64, 64, 3) and len(ep.gt["inventory"]) == len(ep.frames)
    assert ep.actions.max() < 17


def test_explore_walks_crafter_cells_farther_than_random_play(crafter):
    """On a grid the explore policy walks strides and out-and-back walks, so its data
    reaches cells random play near the spawn never does."""
    from agents.policies import make_policy

    def cells_visited(policy: str) -> int:
        env = gym.make_vec("worldsim/Crafter-v0", num_envs=1, vectorization_mode="sync")
        obs, info = env.reset(seed=3)
        agent, seen = make_policy(policy, env, seed=0), set()
        for _ in range(400):
            obs, _, term, trunc, info = env.step(agent.act(obs, info))
            seen.add(tuple(info["gt"]["player_pos"][0]))
            if term[0] or trunc[0]:
                break
        env.close()
        return len(seen)

    walked, random = cells_visited("explore"), cells_visited("random")
    assert walked > 2 * random, (walked, random)
    policy = make_policy("explore", gym.make_vec("worldsim/Crafter-v0", num_envs=1, vectorization_mode="sync"))
    moves = {policy.names[n]: np.array(d) for n, d in envs.GRID_MOVES.items()}
    for _ in range(50):  # every out-and-back walk ends where it started
        plan = policy._grid_routine(lambda n: [0] * n)
        if len(set(plan) & set(moves)) == 2:
            assert not np.any(sum(moves[a] for a in plan if a in moves))


# ------------------------------------------------------------------ MineRL adapter
def test_without_minerl_import_works_and_make_says_how_to_install(monkeypatch):
    _forget_minerl()
    monkeypatch.setitem(sys.modules, "minerl", None)  # `import minerl` fails, installed or not
    assert "worldsim/MineRL-Treechop-v0" in envs.gameplay_ids()
    with pytest.raises(ImportError) as err:
        gym.make("worldsim/MineRL-Treechop-v0")
    message = str(err.value)
    for needed in ("minerl", "not installed", "Java 8", "gradle", "pip install minerl==0.4.4", "MineRLTreechop-v0"):
        assert needed in message
    assert MINERL_MISSING.split("{")[0] in message


@pytest.mark.filterwarnings("ignore:.*symmetric and normalized space")  # minerl's camera is in degrees
@pytest.mark.parametrize("task", ["Treechop", "Navigate", "ObtainDiamond", "ObtainIronPickaxeDense"])
@pytest.mark.parametrize("actions", ["dict", "discrete"])
def test_minerl_adapter_passes_check_env(minerl, task, actions):
    env = gym.make(f"worldsim/MineRL-{task}-v0", actions=actions)
    check_env(env.unwrapped)
    assert env.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    if actions == "dict":
        # The adapter, reading minerl's spaces, gives the table the importer uses: one action space for both.
        assert env.action_space == action_space(task)
        assert env.unwrapped.enum_values == ENUM_ACTIONS[envs.minerl_env.task_family(task)]
    else:
        assert env.action_space.n == len(envs.action_meanings(env))
    env.close()


def test_minerl_dict_actions_reach_minerl_as_its_own_values(minerl):
    env = gym.make("worldsim/MineRL-ObtainDiamond-v0")
    env.reset(seed=1)
    raw = env.unwrapped._env
    noop = {k: (np.zeros(2, np.float32) if k == "camera" else 0) for k in env.action_space.spaces}
    env.step(noop)
    sent = raw.received[-1]
    assert {k: v for k, v in sent.items() if k != "camera"} == {
        "attack": 0, "back": 0, "forward": 0, "jump": 0, "left": 0, "right": 0, "sneak": 0, "sprint": 0,
        "place": "none", "equip": "none", "craft": "none", "nearbyCraft": "none", "nearbySmelt": "none"}
    values = env.unwrapped.enum_values
    env.step({**noop, "forward": 1, "camera": np.array([-5.0, 12.5], np.float32),
              "place": values["place"].index("dirt"), "craft": values["craft"].index("planks"), "nearbySmelt": values["nearbySmelt"].index("iron_ingot")})
    sent = raw.received[-1]
    assert sent["forward"] == 1 and sent["back"] == 0
    assert sent["place"] == "dirt" and sent["craft"] == "planks" and sent["nearbySmelt"] == "iron_ingot"
    assert sent["camera"].dtype == np.float32 and sent["camera"].tolist() == [-5.0, 12.5]
    with pytest.raises(ValueError, match="keys"):
        env.step({"forward": 1})
    with pytest.raises(ValueError, match="place"):
        env.step({**noop, "place": 7})


def test_minerl_discrete_table_sends_the_named_actions(minerl):
    env = gym.make("worldsim/MineRL-ObtainDiamond-v0", actions="discrete", camera_step=15.0)
    names = envs.action_meanings(env)
    env.reset(seed=0)
    raw = env.unwrapped._env
    expect = {"forward": ("forward", 1), "attack": ("attack", 1), "sneak": ("sneak", 1),
              "look_up": ("camera", [-15.0, 0.0]), "look_down": ("camera", [15.0, 0.0]),
              "look_left": ("camera", [0.0, -15.0]), "look_right": ("camera", [0.0, 15.0]),
              "craft:planks": ("craft", "planks"), "equip:stone_pickaxe": ("equip", "stone_pickaxe"),
              "nearbyCraft:furnace": ("nearbyCraft", "furnace"), "place:torch": ("place", "torch")}
    for name, (key, value) in expect.items():
        env.step(names.index(name))
        sent = raw.received[-1]
        got = sent[key].tolist() if key == "camera" else sent[key]
        assert got == value, name
        others = [k for k, v in sent.items() if k != key and (np.any(v) if k == "camera" else v not in (0, "none"))]
        assert not others, f"{name} also sent {others}"
    env.step(names.index("forward+jump"))
    assert raw.received[-1]["forward"] == raw.received[-1]["jump"] == 1


def test_minerl_frames_ground_truth_and_episode_ends(minerl):
    env = gym.make("worldsim/MineRL-ObtainDiamond-v0")
    obs, info = env.reset(seed=2)
    assert tuple(obs[0, 0]) == (0, 0, 7)  # the stand-in's tick 0
    names = env.unwrapped.inventory_items
    assert names == tuple(sorted(names)) and len(names) == 18 and env.unwrapped.mainhand_items == MAINHAND_ITEMS
    noop = {k: (np.zeros(2, np.float32) if k == "camera" else 0) for k in env.action_space.spaces}
    for tick in range(1, 4):
        obs, reward, terminated, truncated, info = env.step({**noop, "attack": 1})
        assert tuple(obs[0, 0]) == (tick, 0, 7)  # frames in order
        assert info["gt"]["inventory"][names.index("log")] == tick
        assert reward == (1.0 if tick == 1 else 0.0)  # ObtainDiamond rewards an item once
    env.step({**noop, "equip": env.unwrapped.enum_values["equip"].index("stone_pickaxe")})
    _, _, _, _, info = env.step(noop)
    assert MAINHAND_ITEMS[info["gt"]["mainhand"][0]] == "stone_pickaxe"

    nav = gym.make("worldsim/MineRL-Navigate-v0")
    _, info = nav.reset(seed=3)
    assert info["gt"]["compass_angle"].shape == () and -180 <= info["gt"]["compass_angle"] <= 180

    minerl.herobraine.envs.MINERL_TREECHOP_V0.max_episode_steps = 4  # the server's time limit, seen by both
    try:
        chop = gym.make("worldsim/MineRL-Treechop-v0", actions="discrete")
        chop.reset(seed=0)
        ends = [chop.step(0)[2:4] for _ in range(4)]
    finally:
        minerl.herobraine.envs.MINERL_TREECHOP_V0.max_episode_steps = 8000
    assert ends[-1] == (False, True) and not any(any(e) for e in ends[:-1])
    with pytest.raises(RuntimeError, match="reset"):
        chop.step(0)
    chop = gym.make("worldsim/MineRL-Treechop-v0", actions="discrete")
    chop.reset(seed=0)
    attack = envs.action_meanings(chop).index("attack")
    results = [chop.step(attack) for _ in range(64)]  # 64 logs: the task's goal
    assert results[-1][2:4] == (True, False) and sum(r[1] for r in results) == 64


def test_minerl_resize_and_frame_skip(minerl):
    env = gym.make("worldsim/MineRL-Treechop-v0", size=32, frame_skip=2, actions="discrete")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (32, 32, 3)
    env.step(0)
    assert len(env.unwrapped._env.received) == 2


def test_location_stats_give_a_pose_heading_along_the_facing_direction():
    for yaw, heading in ((0.0, math.pi / 2), (90.0, math.pi), (-90.0, 0.0), (180.0, -math.pi / 2)):
        stats = {"xpos": 1.0, "ypos": 64.0, "zpos": -3.0, "pitch": 10.0, "yaw": yaw}
        gt = observation_gt({"location_stats": stats}, {})
        x, z, h = gt["pose"]
        assert (x, z) == (1.0, -3.0)
        # Minecraft faces (-sin yaw, cos yaw) in (x, z): the heading points there.
        facing = (-math.sin(math.radians(yaw)), math.cos(math.radians(yaw)))
        assert np.allclose((math.cos(h), math.sin(h)), facing, atol=1e-6)
        assert math.isclose(abs(math.remainder(h - heading, 2 * math.pi)), 0.0, abs_tol=1e-6)


# ------------------------------------------------------------------ VPT import
def vpt_line(keys=(), dx=0.0, dy=0.0, buttons=(), new_buttons=(), hotbar=0, gui=False, i=0):
    return {"mouse": {"x": 640.0, "y": 360.0, "dx": dx, "dy": dy, "scaledX": 0.0, "scaledY": 0.0, "dwheel": 0.0,
                      "buttons": list(buttons), "newButtons": list(new_buttons)},
            "keyboard": {"keys": list(keys), "newKeys": [], "chars": ""},
            "isGuiOpen": gui, "isGuiInventory": False, "hotbar": hotbar, "yaw": 30.0 * i, "pitch": 1.0 * i,
            "xpos": 100.0 + i, "ypos": 64.0, "zpos": -5.0 - i, "tick": i, "milli": 1649575088006 + 50 * i,
            "inventory": [], "serverTick": 6001 + i, "serverTickDurationMs": 36.3, "stats": {}}


VPT_LINES = [
    vpt_line(["key.keyboard.w"], buttons=[0], new_buttons=[0], i=0),  # attack down from the start: stuck
    vpt_line(["key.keyboard.a", "key.keyboard.space"], dx=10.0, dy=-20.0, buttons=[0], i=1),  # still stuck
    vpt_line(["key.keyboard.left.shift", "key.keyboard.e", "key.keyboard.x"], buttons=[0, 1], new_buttons=[0],
             hotbar=2, i=2),  # attack pressed anew; scroll to hotbar slot 3
    vpt_line(["key.keyboard.escape", "key.keyboard.9", "key.keyboard.left.control"], dx=3000.0, buttons=[2],
             hotbar=2, gui=True, i=3),
    vpt_line(["key.keyboard.d"], i=4),  # the last line: its action leads nowhere, dropped
]


def write_vpt(root: Path, name="cheeky-cornflower-setter-74ae6c2eae2e-20220315-122354"):
    root.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(len(VPT_LINES)):  # 16:9 frames, a solid square in the middle, white at the sides
        f = np.full((72, 128, 3), 255, np.uint8)
        f[:, 28:100] = colour(i)
        frames.append(f)
    write_mp4(root / f"{name}.mp4", frames)
    (root / f"{name}.jsonl").write_text("\n".join(json.dumps(line) for line in VPT_LINES) + "\n")


def test_vpt_import_maps_keys_mouse_and_frames_as_vpt(tmp_path):
    write_vpt(tmp_path / "vpt")
    summary = import_minecraft(str(tmp_path / "vpt"), str(tmp_path / "out"), format="vpt", progress=False)
    assert summary["episodes_written"] == 1 and not summary["failed"]
    meta = load_meta(tmp_path / "out")
    assert space_from_dict(meta["action_space"]) == vpt_action_space() and meta["fps"] == pytest.approx(20)
    ep = read_episode(episode_paths(tmp_path / "out")[0])
    assert [frame_index(f) for f in ep.frames] == [0, 1, 2, 3, 4]  # order kept, the white sides cropped away
    a = actions_as_dict(ep.actions)
    assert len(ep.actions) == 4
    pressed = [sorted(k for k, v in a.items() if k != "camera" and v[t]) for t in range(4)]
    assert pressed == [["forward"], ["jump", "left"], ["attack", "hotbar_3", "inventory", "sneak", "use"],
                       ["ESC", "hotbar_9", "pickItem", "sprint"]]
    assert np.allclose(a["camera"], [[0, 0], [-20 * CAMERA_SCALER, 10 * CAMERA_SCALER], [0, 0], [0, 180]])
    assert a["camera"][1].tolist() == [-3.0, 1.5]  # (pitch, yaw) = (dy, dx) * 360 / 2400, not truncated
    assert np.allclose(ep.gt["location"][:, 0], [100, 101, 102, 103, 104])
    assert np.allclose(ep.gt["pose"][:, :2], [[100 + i, -5 - i] for i in range(5)])
    assert ep.gt["hotbar"].tolist() == [0, 0, 2, 2, 0] and ep.gt["gui_open"].tolist() == [0, 0, 0, 1, 0]
    assert ep.truncated.tolist() == [False, False, False, True] and not ep.terminated.any()


def test_vpt_import_reports_a_video_without_its_jsonl_and_keeps_the_rest(tmp_path):
    write_vpt(tmp_path / "vpt")
    write_mp4(tmp_path / "vpt" / "lonely.mp4", [np.zeros((72, 128, 3), np.uint8)] * 3)
    summary = import_minecraft(str(tmp_path / "vpt"), str(tmp_path / "out"), format="vpt", progress=False)
    assert summary["episodes_written"] == 1 and "lonely.jsonl" in summary["failed"][0]
    (tmp_path / "bad").mkdir()
    write_mp4(tmp_path / "bad" / "x.mp4", [np.zeros((72, 128, 3), np.uint8)] * 3)
    (tmp_path / "bad" / "x.jsonl").write_text('{"keyboard": {"keys": []}}\n')
    assert cli(["import-minecraft", str(tmp_path / "bad"), "--format", "vpt", "--out", str(tmp_path / "o2"),
                "--quiet"]) == 2


# ------------------------------------------------------------------ MineRL v0.4 import
OBTAIN_ITEMS = ("coal", "cobblestone", "crafting_table", "dirt", "furnace", "iron_axe", "iron_ingot", "iron_ore",
                "iron_pickaxe", "log", "planks", "stick", "stone", "stone_axe", "stone_pickaxe", "torch",
                "wooden_axe", "wooden_pickaxe")


def write_minerl_stream(root: Path, task="MineRLObtainDiamond-v0", steps=5, lead=2, success=True):
    """A stream as minerl 0.4's publish.py writes one: `lead` video frames before the first state."""
    stream = root / task / "v3_absolute_grape_changeling-6_37339-46767"
    stream.mkdir(parents=True)
    frames = [np.full((64, 64, 3), colour(i), np.uint8) for i in range(lead + steps + 1)]
    write_mp4(stream / "recording.mp4", frames)
    rng = np.random.default_rng(0)
    data = {"reward": np.arange(steps, dtype=np.float32)}
    for key in ("forward", "back", "left", "right", "jump", "sneak", "sprint", "attack"):
        data[f"action${key}"] = rng.integers(0, 2, steps)
    data["action$camera"] = rng.uniform(-30, 30, (steps, 2)).astype(np.float32)
    if "Navigate" in task:
        data["action$place"] = np.array(["none", "dirt", "none", "dirt", "none"][:steps])
        data["observation$compass$angle"] = np.linspace(-170, 170, steps + 1).astype(np.float32)
        data["observation$inventory$dirt"] = np.arange(steps + 1)[::-1]
    elif "Obtain" in task:
        data["action$place"] = np.array(["none", "dirt", "torch", "none", "furnace"][:steps])
        data["action$equip"] = np.array(["none", "none", "stone_pickaxe", "air", "none"][:steps])
        data["action$craft"] = np.array(["planks", "none", "stick", "none", "crafting_table"][:steps])
        data["action$nearbyCraft"] = np.array(["none", "wooden_pickaxe", "none", "none", "furnace"][:steps])
        data["action$nearbySmelt"] = np.array(["none", "none", "none", "iron_ingot", "coal"][:steps])
        for j, item in enumerate(OBTAIN_ITEMS):
            data[f"observation$inventory${item}"] = np.arange(steps + 1) * (j + 1)
        data["observation$equipped_items$mainhand$type"] = np.array(["air", "air", "wooden_pickaxe", "stone_pickaxe",
                                                                      "other", "air"][:steps + 1])
        data["observation$equipped_items$mainhand$damage"] = np.arange(steps + 1)
        data["observation$equipped_items$mainhand$maxDamage"] = np.full(steps + 1, 59)
    np.savez_compressed(stream / "rendered.npz", **data)
    (stream / "metadata.json").write_text(json.dumps({
        "success": success, "duration_ms": steps * 50, "duration_steps": steps,
        "total_reward": float(data["reward"].sum()),
        "stream_name": stream.name, "true_video_frame_count": lead + steps + 1}))
    return stream, data


def test_minerl_import_aligns_video_states_and_actions_as_minerls_loader(tmp_path, minerl):
    _, data = write_minerl_stream(tmp_path / "data")
    summary = import_minecraft(str(tmp_path / "data"), str(tmp_path / "out"), format="minerl", progress=False)
    assert summary["episodes_written"] == 1, summary["failed"]
    meta = load_meta(tmp_path / "out")
    assert meta["env_id"] == "worldsim/MineRL-ObtainDiamond-v0"
    env = gym.make("worldsim/MineRL-ObtainDiamond-v0")
    assert space_from_dict(meta["action_space"]) == env.action_space  # the env's own Dict
    ep = read_episode(episode_paths(tmp_path / "out")[0])
    # The first 2 video frames come before the first state; the last frame repeats the one before.
    assert [frame_index(f) for f in ep.frames] == [2, 3, 4, 5, 6, 6]
    assert ep.rewards.tolist() == [0, 1, 2, 3, 4] and ep.terminated.tolist() == [False] * 4 + [True]
    a = actions_as_dict(ep.actions)
    for key in ("forward", "attack", "sneak"):
        assert a[key].tolist() == data[f"action${key}"].tolist()
    assert np.array_equal(a["camera"], data["action$camera"])
    # Replayed through the adapter, each stored action is the minerl action the player took.
    for t in range(5):
        sent = env.unwrapped.minerl_action({k: v[t] for k, v in a.items()})
        for key in ("place", "equip", "craft", "nearbyCraft", "nearbySmelt"):
            assert sent[key] == data[f"action${key}"][t], (t, key)
    names = json.loads(ep.attrs["inventory_items"])
    assert names == list(OBTAIN_ITEMS) and ep.gt["inventory"][:, names.index("log")].tolist() == [0, 10, 20, 30, 40, 50]
    assert [MAINHAND_ITEMS[i] for i in ep.gt["mainhand"][:, 0]] == ["air", "air", "wooden_pickaxe", "stone_pickaxe",
                                                                     "other", "air"]


def test_minerl_import_navigate_and_refuses_mixed_tasks(tmp_path):
    _, data = write_minerl_stream(tmp_path / "nav", task="MineRLNavigateDense-v0", success=False)
    import_minecraft(str(tmp_path / "nav"), str(tmp_path / "out"), format="minerl", progress=False)
    ep = read_episode(episode_paths(tmp_path / "out")[0])
    assert load_meta(tmp_path / "out")["env_id"] == "worldsim/MineRL-NavigateDense-v0"
    assert np.allclose(ep.gt["compass_angle"], data["observation$compass$angle"])
    assert actions_as_dict(ep.actions)["place"].tolist() == [0, 1, 0, 1, 0]  # none, dirt
    assert ep.truncated[-1] and not ep.terminated.any()
    write_minerl_stream(tmp_path / "nav", task="MineRLTreechop-v0")
    summary = import_minecraft(str(tmp_path / "nav"), str(tmp_path / "out2"), format="minerl", progress=False)
    assert summary["episodes_written"] == 1 and "one task family" in summary["failed"][0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="rendered.npz"):
        import_minecraft(str(tmp_path / "empty"), str(tmp_path / "o3"), format="minerl", progress=False)


def test_minerl_import_names_a_bad_enum_value(tmp_path):
    stream, data = write_minerl_stream(tmp_path / "d")
    data["action$place"] = np.array(["none", "diamond_block", "none", "none", "none"])
    np.savez_compressed(stream / "rendered.npz", **data)
    assert cli(["import-minecraft", str(tmp_path / "d"), "--format", "minerl", "--out", str(tmp_path / "o"),
                "--quiet"]) == 2


# ------------------------------------------------------------------ the model takes them
def imported(tmp_path, fmt):
    if fmt == "vpt":
        write_vpt(tmp_path / "src")
    else:
        write_minerl_stream(tmp_path / "src")
    assert cli(["import-minecraft", str(tmp_path / "src"), "--format", fmt, "--out", str(tmp_path / "out"),
                "--quiet"]) == 0
    space = load_meta(tmp_path / "out")["action_space"]
    return space, actions_as_dict(read_episode(episode_paths(tmp_path / "out")[0]).actions)


@pytest.mark.parametrize("fmt", ["vpt", "minerl"])
def test_imported_dict_actions_are_samples_of_their_space(tmp_path, fmt):
    space, actions = imported(tmp_path, fmt)
    assert space["type"] == "Dict" and space_to_dict(space_from_dict(space)) == space
    gym_space = space_from_dict(space)
    assert list(actions) == list(gym_space.spaces)
    for t in range(len(actions["camera"])):
        assert gym_space.contains({k: (v[t] if k == "camera" else np.int64(v[t])) for k, v in actions.items()})


@pytest.mark.parametrize("fmt", ["vpt", "minerl"])
def test_imported_dict_actions_condition_the_action_encoder(tmp_path, fmt):
    space, actions = imported(tmp_path, fmt)
    encoder = ActionEncoder(space, 16)
    actions = {k: torch.from_numpy(v)[None] for k, v in actions.items()}
    has = torch.ones(1, len(actions["camera"][0]), dtype=torch.bool)
    emb = encoder(actions, has)
    assert emb.shape == (1, has.shape[1], 16) and torch.isfinite(emb).all()
    turned = dict(actions, camera=actions["camera"] + 10.0)
    assert (encoder(turned, has) - emb).abs().max() > 1e-4


def test_a_world_model_trains_on_imported_minecraft_data(tmp_path):
    imported(tmp_path, "vpt")
    for argv in (["train", "tokenizer", "--data", str(tmp_path / "out"), "--out", str(tmp_path / "tok"),
                  "--config", "tiny", "--steps", "2"],
                 ["encode", "--checkpoint", str(tmp_path / "tok" / "latest.safetensors"), "--data",
                  str(tmp_path / "out"), "--out", str(tmp_path / "lat")],
                 ["train", "dynamics", "--data", str(tmp_path / "lat"), "--out", str(tmp_path / "dyn"),
                  "--config", "tiny", "--window", "3", "--steps", "2", "--batch-size", "2"]):
        assert cli([*argv, "--quiet"]) == 0, argv
    assert (tmp_path / "dyn" / "latest.safetensors").exists()


def test_crafter_walkback_probe_scripts_real_returns_and_scores_the_cells_that_came_back(crafter):
    from worldsim import probes as P
    from worldsim.probes.walkback import returned_cells

    scenarios = P.walkback_scenarios("worldsim/Crafter-v0", {}, count=4, context=10)
    assert [s.meta["kind"] for s in scenarios] == ["within context", "beyond context"] * 2  # gaps 8 and 18
    for s in scenarios:
        ret, start = s.meta["return"], s.meta["start"]
        assert start == s.context + 1 and len(s.frames) == ret + 1 and s.meta["gap"] == ret - start
        cells = 4 * 7 if s.meta["way"] in ("move_left", "move_right") else 4 * 9 - 1  # columns, or rows less the player
        assert s.gt["returned"].sum() == cells * 7 * 7  # 7x7 px each
        m = s.gt["returned"]  # those cells held something the far view does not show in their place
        assert np.abs(s.frames[start + 4][m].astype(int) - s.frames[start][m]).mean() >= 10
    left = returned_cells("move_left", 4, (9, 7), (64, 64))
    assert left[:49, 35:63].all() and left.sum() == 28 * 49  # moving left, the right-hand cells leave the view
    down = returned_cells("move_down", 2, (9, 7), (64, 64))
    assert down[:14, :63].sum() == 14 * 63 - 0 and down.sum() == 14 * 63  # rows 0-1: the player (row 3) is not in them
    up = returned_cells("move_up", 4, (9, 7), (64, 64))
    assert not up[21:28, 28:35].any() and up[21:28, :28].all()  # the player's cell, row 3 column 4, is left out
    big = returned_cells("move_right", 1, (9, 7), (96, 96))  # at 96 px crafter draws 10 px cells inside a 3 px border
    assert big[3:73, 3:13].all() and big.sum() == 70 * 10
    real = P.score_walkback(scenarios, P.ground_truth(scenarios))
    last = P.score_walkback(scenarios, P.copy_last(scenarios))
    assert real["returned_cells_psnr_db"] == 99.0 and last["returned_cells_psnr_db"] < 40
    assert set(last["returned_cells_by_kind"]) == {"within context", "beyond context"}


def test_crafter_placed_probe_plants_walks_away_and_scores_the_plant_from_a_new_cell(crafter):
    from envs import GRID_MOVES
    from worldsim import probes as P
    from worldsim.probes.placed import RETURN_DISTANCE
    from worldsim.probes.walkback import BACK, cells_to_pixels

    scenarios = P.placed_scenarios("worldsim/Crafter-v0", {}, count=2, context=10)
    assert [s.meta["kind"] for s in scenarios] == ["within context", "beyond context"]
    for s in scenarios:
        dx, dy = GRID_MOVES[BACK[s.meta["way"]]]  # the plant lies against the walk away
        seen = np.zeros((7, 9), bool)
        seen[3 + 2 * dy, 4 + 2 * dx] = True  # two cells off in the last context frame
        seen = cells_to_pixels(seen, (64, 64))
        ret, last = s.frames[s.meta["return"]].astype(int), s.frames[s.context - 1].astype(int)
        assert s.gt["plant"].sum() == 49 and not (s.gt["plant"] & seen).any()
        assert np.abs(ret[s.gt["plant"]] - last[seen]).mean() < 12  # the same plant, drawn RETURN_DISTANCE cells off
        assert np.abs(ret[s.gt["plant"]] - last[s.gt["plant"]]).mean() > 10  # where holding the last frame has none
        assert RETURN_DISTANCE == 3 and len(s.frames) == s.meta["return"] + 1
    real = P.score_placed(scenarios, P.ground_truth(scenarios))
    last = P.score_placed(scenarios, P.copy_last(scenarios))
    assert real["plant_cell_psnr_db"] == 99.0 and last["plant_cell_psnr_db"] < 25
    assert set(last["plant_cell_by_kind"]) == {"within context", "beyond context"}


def test_crafter_agents_are_scored_by_achievements(crafter):
    from agents.imagine import achievement_score, evaluate, random_actor, real_env

    unlocked = np.zeros((2, 22), bool)
    unlocked[0, 3] = True  # one achievement, in one of two episodes: 50%
    score = achievement_score(unlocked)
    assert score["achievement_score"] == pytest.approx(np.exp(np.log(51) / 22) - 1)
    assert list(score["success_rates"].values()).count(50.0) == 1 and score["achievement_score_stderr"] > 0
    env = real_env("worldsim/Crafter-v0", {}, horizon=10_000)
    report, _ = evaluate(random_actor(env.action_space, 0), env, episodes=2, seed=0)
    assert 0 <= report["achievement_score"] <= 100 and len(report["success_rates"]) == 22
    assert max(report["success_rates"].values()) > 0  # a random player unlocks something (collect_sapling, wake_up...)


def test_crafter_replays_the_same_in_another_process(crafter):
    """Same seed and actions, same frames, in separate processes (crafter alone draws its
    creatures in an order set by memory addresses)."""
    import subprocess
    import sys

    script = ("import hashlib, gymnasium as gym, envs\n"
              "e = gym.make('worldsim/Crafter-v0'); h = hashlib.md5()\n"
              "for s in (5, 7):\n"
              "    o, _ = e.reset(seed=s)\n"
              "    for a in [1, 2, 3, 4, 5, 0, 0, 0, 1, 1] * 20:\n"
              "        o, r, t, tr, _ = e.step(a); h.update(o.tobytes())\n"
              "        if t or tr: break\n"
              "print(h.hexdigest())\n")
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0].strip()) == 32
