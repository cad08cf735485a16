"""Lookback: loop closure for any env that turns in place (ViZDoom, your own): turn away
until the view has left the context window, and back to it.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from envs import action_meanings, optional_attr
from worldsim.probes.common import Probe, Scenario, explore_replay, first_env_seed
from worldsim.probes.loop import loop_headline, score_loop


def lookback_scenarios(env_id: str, env_kwargs: dict, count: int, context: int, seed: int = 0) -> list[Scenario]:
    """Any env that can turn in place (TURN_LEFT, TURN_RIGHT and NOOP in its
    `action_meanings`): after a context walk of the explore policy, two FORWARD steps (one
    turn without FORWARD), so the view to come back to is not a context frame; then turn
    half a circle, wait until that view has left the context window, and turn back. Kept
    only where the real view returns exactly; scored as loop closure (`score_loop`)."""
    env = gym.make(env_id, **env_kwargs)
    names = action_meanings(env)
    if not {"TURN_LEFT", "TURN_RIGHT", "NOOP"} <= set(names):
        env.close()
        raise ValueError(f"the lookback probe turns in place: {env_id} has actions {names}, expected TURN_LEFT, "
                         "TURN_RIGHT and NOOP among them")
    half = max(1, optional_attr(env, "turn_steps", 24) // 2)
    out, s = [], first_env_seed(seed)
    for _ in range(count * 20):  # tries: an episode may end, or the view may not return exactly
        if len(out) == count:
            break
        rng = np.random.default_rng(s)
        turn, back = (names.index("TURN_LEFT"), names.index("TURN_RIGHT"))[::1 if rng.random() < 0.5 else -1]
        pre = [names.index("FORWARD")] * 2 if "FORWARD" in names else [turn]
        plan = [None] * (context - 1) + pre + [turn] * half + [names.index("NOOP")] * context + [back] * half
        frames, actions, ended = explore_replay(env, s, plan, names, 2 * half)
        start, ret = context - 1 + len(pre), len(plan)
        moved = not ended and np.abs(frames[start].astype(int) - frames[context - 1]).mean() > 2
        if moved and np.array_equal(frames[start], frames[ret]):
            out.append(Scenario("lookback", frames, actions, {}, context,
                                {"kind": "look_back", "start": start, "return": ret, "gap": ret - start, "seed": s}))
        s += 1
    env.close()
    if len(out) < count:
        raise ValueError(f"lookback: only {len(out)} of {count} scripts in {env_id} returned to the exact view "
                         f"(an env whose turns do not undo each other cannot be probed this way)")
    return out


PROBE = Probe("lookback", lambda setup: lookback_scenarios(setup.env_id, setup.env_kwargs, setup.count, setup.context,
                                                           setup.seed),
              lambda cases, predictions, reference, setup: score_loop(cases, predictions), loop_headline)
