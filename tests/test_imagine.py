"""Agents trained inside the dream and scored in the real env; the full loop, tiny."""

import numpy as np
import torch

from agents.dream_loop import LoopConfig, run_loop
from agents.imagine import ImagineConfig, imagine
from worldsim.dataset import episode_paths, open_episode


def test_real_score_comes_from_the_real_env_not_the_dream(pipeline, tmp_path):
    from worldsim.world_model import WorldModel

    model = WorldModel.load(pipeline[0] / "world.safetensors")
    head = model.dynamics.heads.out[-1]
    with torch.no_grad():  # a dream that pays 50 per step, whatever happens
        head.weight.zero_()
        head.bias.copy_(torch.tensor([50.0, -20.0]))
    model.save(tmp_path / "generous.safetensors")
    report = imagine(ImagineConfig(checkpoint=str(tmp_path / "generous.safetensors"), out=str(tmp_path / "run"),
                                   steps=64, num_envs=2, horizon=10, eval_episodes=2), progress=False)
    assert report["dream_return_last_20"] > 400  # the dream's own accounting
    assert 0 <= report["real"]["mean"] <= 6  # Rooms pays at most one per object, six objects
    assert len(report["real"]["returns"]) == 2 and report["real"]["length_mean"] == 10
    assert (tmp_path / "run" / "agent.safetensors").exists() and (tmp_path / "run" / "real_episodes.mp4").exists()
    assert (tmp_path / "run" / "dream_curve.png").stat().st_size > 10_000


def test_loop_runs_end_to_end_and_resumes(tmp_path):
    cfg = LoopConfig(out=str(tmp_path / "loop"), real_steps=400, iterations=2, env_kwargs={"max_steps": 60},
                     tokenizer_config="tiny", tokenizer_steps=20, config="tiny", dynamics_steps=20, batch_size=4,
                     agent_steps=64, num_envs=2, horizon=12, eval_episodes=2)
    result = run_loop(cfg, progress=False)
    history = result["history"]
    assert [h["real_steps"] for h in history] == [200, 400] and [h["iteration"] for h in history] == [1, 2]
    assert history[1]["agent_steps"] > history[0]["agent_steps"] > 0
    assert all(np.isfinite(h["real_return"]) and h["dream_return"] is not None for h in history)
    collected = []
    for path in episode_paths(tmp_path / "loop" / "data"):
        with open_episode(path) as f:
            collected.append(f.attrs["policy"])
    assert "explore" in collected and any(p.endswith("agent") for p in collected)  # the agent collected iteration 2
    assert (tmp_path / "loop" / "curves.png").stat().st_size > 10_000
    again = run_loop(cfg, progress=False)  # everything done: nothing reruns
    assert again["history"] == history
