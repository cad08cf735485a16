"""Replay a real episode's actions in the dream and write real | dream side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worldsim.dataset import read_episode
from worldsim.tokenizer import psnr


def write_video(path, frames: np.ndarray, fps: int = 15, scale: int = 4):
    """uint8 RGB frames (T, H, W, 3) -> an mp4 (written to a temporary name, then renamed)."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1] * scale, frames.shape[2] * scale
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"cannot write video {path}; expected a writable .mp4 path")
    for f in frames:
        writer.write(cv2.resize(f[..., ::-1], (w, h), interpolation=cv2.INTER_NEAREST))
    writer.release()
    tmp.replace(path)


def write_contact_sheet(path, real: np.ndarray, dream: np.ndarray, actions, names=None, columns: int = 8, scale: int = 2):
    """A PNG of `columns` evenly spaced steps: real frames on top, dreamed below, each
    column headed by its step and the action that led into it."""
    import cv2

    picks = np.unique(np.linspace(0, len(real) - 1, min(columns, len(real))).round().astype(int))
    h, w = real.shape[1] * scale, real.shape[2] * scale
    head, gap = 14, 2
    sheet = np.full((head + 2 * h + gap, len(picks) * (w + gap) - gap, 3), 255, np.uint8)
    for j, t in enumerate(picks):
        x = j * (w + gap)
        for row, frames in enumerate((real, dream)):
            y = head + row * (h + gap)
            sheet[y:y + h, x:x + w] = cv2.resize(frames[t], (w, h), interpolation=cv2.INTER_NEAREST)
        a = int(np.asarray(actions[t]).reshape(-1)[0]) if np.asarray(actions[t]).size == 1 else None
        label = f"{t + 1}" + (f" {names[a]}" if names and a is not None and a < len(names) else "")
        cv2.putText(sheet, label[:14], (x + 1, head - 4), cv2.FONT_HERSHEY_PLAIN, 0.7, (0, 0, 0), 1, cv2.LINE_AA)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(f".{Path(path).stem}.tmp.png")
    if not cv2.imwrite(str(tmp), sheet[..., ::-1]):
        raise OSError(f"cannot write {path}; expected a writable .png path")
    tmp.replace(path)


def same_env(a: str, b: str) -> bool:
    """Whether two env specs name the same env (`module:Id` and `Id` do)."""
    return a.rpartition(":")[2] == b.rpartition(":")[2]


def side_by_side(real: np.ndarray, dream: np.ndarray) -> np.ndarray:
    gap = np.full((*real.shape[:2], 2, 3), 255, np.uint8)
    return np.concatenate([real, gap, dream], axis=2)


def dream_episode(checkpoint: str, episode: str, steps: int, out: str, context: int = 4,
                  sample_steps: int | None = None, seed: int = 0, rerender: bool = False) -> dict:
    from worldsim.dream_env import load_world_model

    model = load_world_model(checkpoint)
    ep = read_episode(episode)
    if ep.actions is None:
        raise ValueError(f"{episode} has no actions; dreaming replays an episode's real actions")
    ep_env, model_env = ep.attrs.get("env_id"), model.info.get("env_id")
    if ep_env and model_env and not same_env(ep_env, model_env):
        raise ValueError(f"{episode} was recorded in {ep_env!r} but the world model "
                         f"({checkpoint or 'the shipped Rooms model'}) was trained on {model_env!r}; "
                         "pass --checkpoint with a model of that env")
    if tuple(ep.frames.shape[1:]) != model.frame_shape:
        raise ValueError(f"{episode} has {ep.frames.shape[1:]} frames; the world model expects {model.frame_shape}")
    steps = min(steps, len(ep) - context + 1)
    if steps < 1:
        raise ValueError(f"{episode} has {len(ep)} steps: too short for a context of {context} frames")
    ctx = ep.frames[None, :context]
    dream, rewards, ends = model.rollout(ctx, ep.actions[None, :context - 1], ep.actions[None, context - 1:context - 1 + steps],
                                         steps=sample_steps, seed=seed, rerender=rerender)
    real = ep.frames[context:context + steps]
    write_video(out, side_by_side(np.concatenate([ep.frames[:context], real]),
                                  np.concatenate([ep.frames[:context], dream[0]])))
    sheet = Path(out).with_suffix(".png")
    write_contact_sheet(sheet, real, dream[0], ep.actions[context - 1:context - 1 + steps],
                        model.info.get("action_meanings"))
    scores = psnr(real, dream[0])
    return {"out": out, "contact_sheet": str(sheet), "steps": steps, "context": context, "psnr_db_mean": float(scores.mean()),
            "psnr_db_first": float(scores[0]), "psnr_db_last": float(scores[-1]),
            "copy_last_context_frame_psnr_db_mean": float(psnr(real, np.repeat(ep.frames[context - 1:context], steps, 0)).mean()),
            "predicted_reward_sum": float(rewards.sum()), "real_reward_sum": float(ep.rewards[context - 1:context - 1 + steps].sum())}


def dream_prompt(checkpoint: str, prompt: str, steps: int, out: str, seed: int = 0,
                 sample_steps: int | None = None) -> dict:
    """A world made from a text prompt (a text-conditioned world model), shown by a camera
    that first turns full circle on the spot, then takes random actions; writes the video
    and a PNG of its first frame."""
    import cv2
    import gymnasium as gym

    env = gym.make("worldsim/Dream-v0", checkpoint=checkpoint, max_steps=steps, sample_steps=sample_steps)
    names = list(env.unwrapped.action_meanings)
    circle = env.unwrapped.model.info.get("env_kwargs", {}).get("turn_steps", 24)
    obs, info = env.reset(seed=seed, options={"prompt": prompt})
    rng = np.random.default_rng(seed)
    frames = [obs]
    for k in range(steps):
        action = names.index("TURN_LEFT") if "TURN_LEFT" in names and k < circle else int(rng.integers(len(names)))
        obs, _, terminated, truncated, _ = env.step(action)
        frames.append(obs)
        if terminated or truncated:
            break
    write_video(out, np.stack(frames))
    first = Path(out).with_suffix(".png")
    cv2.imwrite(str(first), cv2.cvtColor(cv2.resize(frames[0], None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST),
                                         cv2.COLOR_RGB2BGR))
    return {"out": out, "first_frame": str(first), "prompt": prompt, "caption": info["caption"],
            "steps": len(frames) - 1}
