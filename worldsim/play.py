"""Play the dream with the keyboard, or, with no display, record a session to mp4.

Keys: w/s forward/back, a/d turn, q/e strafe, space no-op, r reset, Esc quit; digits pick
an action by index for envs with other action names.
"""

from __future__ import annotations

import os
import time

import numpy as np

from worldsim.dream_env import DreamEnv

KEYS = {"w": ("FORWARD", "MOVE_FORWARD"), "s": ("BACK", "MOVE_BACKWARD"), "a": ("TURN_LEFT",),
        "d": ("TURN_RIGHT",), "q": ("STRAFE_LEFT", "MOVE_LEFT"), "e": ("STRAFE_RIGHT", "MOVE_RIGHT"), " ": ("NOOP",)}


def key_actions(meanings) -> dict[int, int]:
    """Key code -> action index, from the model's action names."""
    table = {ord(str(i)): i for i in range(min(len(meanings) or 10, 10))}
    for key, names in KEYS.items():
        for name in names:
            if name in meanings:
                table[ord(key)] = meanings.index(name)
                break
    return table


def _show(frame, fps, scale=6):
    import cv2

    big = cv2.resize(frame[..., ::-1], None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    cv2.putText(big, f"{fps:5.1f} fps", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
    return big


def play(checkpoint=None, out: str | None = None, steps: int = 300, seed: int = 0) -> dict:
    env = DreamEnv(checkpoint=checkpoint, max_steps=10**9)
    meanings = list(env.action_meanings)
    frame, _ = env.reset(seed=seed)
    if out is None and os.environ.get("DISPLAY"):
        return _interactive(env, frame, key_actions(meanings))
    return _record(env, frame, out or "play.mp4", steps, seed)


def _interactive(env, frame, table) -> dict:
    import cv2

    from envs.window import imshow

    shown, t0, fps = 0, time.perf_counter(), 0.0
    while True:
        imshow("worldsim play (Esc quits)", _show(frame, fps))
        key = cv2.waitKey(1) & 0xFF
        if key == 27:
            break
        if key == ord("r"):
            frame, _ = env.reset()
            continue
        frame, _, terminated, truncated, _ = env.step(table.get(key, table.get(ord(" "), 0)))
        shown += 1
        fps = shown / (time.perf_counter() - t0)
        if terminated or truncated:
            frame, _ = env.reset()
    cv2.destroyAllWindows()
    return {"steps": shown, "frames_per_s": fps}


def _record(env, frame, out, steps, seed) -> dict:
    """No display: a scripted session (sticky random actions), recorded with its frame rate."""
    from worldsim.dream_video import write_video

    rng = np.random.default_rng(seed)
    frames, action, t0, returns = [_show(frame, 0.0, scale=4)[..., ::-1]], 0, time.perf_counter(), 0.0
    for k in range(steps):
        if k % 6 == 0:
            action = env.action_space.sample() if rng.random() < 0.5 else action
        frame, reward, terminated, truncated, _ = env.step(action)
        returns += reward
        frames.append(_show(frame, (k + 1) / (time.perf_counter() - t0), scale=4)[..., ::-1])
        if terminated or truncated:
            frame, _ = env.reset()
    fps = steps / (time.perf_counter() - t0)
    write_video(out, np.stack(frames), scale=1)
    return {"out": out, "steps": steps, "frames_per_s": fps, "predicted_return": returns,
            "note": "no display: recorded a scripted session (set DISPLAY to play with the keyboard)"}
