"""Loop closure: turn through 360 degrees, or walk out and back, so the start view returns
after more steps than the context window holds; PSNR of the returned view against the
real frame and against the dream's own start view.
"""

from __future__ import annotations

import numpy as np

from worldsim.probes.common import Probe, Scenario, action_index, context_walk, first_env_seed, replay
from worldsim.tokenizer import psnr


def loop_scenarios(env, count: int, context: int, seed: int = 0) -> list[Scenario]:
    """Half turn in place through a full circle, half walk out, turn back, walk back and
    turn again; both start after two forward steps, so the start view is not a context
    frame. Only scripts whose real path returns to the exact start pose are kept."""
    fwd, left, right = action_index("FORWARD"), action_index("TURN_LEFT"), action_index("TURN_RIGHT")
    out, s = [], first_env_seed(seed)
    while len(out) < count:
        rng = np.random.default_rng(s)
        kind = "turn_360" if len(out) % 2 == 0 else "out_and_back"
        turn = left if rng.random() < 0.5 else right
        half = env.turn_steps // 2
        if kind == "turn_360":
            loop = [turn] * env.turn_steps
        else:
            k = int(rng.integers(3, 7))
            loop = [fwd] * k + [turn] * half + [fwd] * k + [turn] * half
        actions = context_walk(rng, context - 1) + [fwd, fwd] + loop
        frames, gt, _ = replay(env, s, actions)
        start, back = context + 1, len(actions)
        moved = np.abs(frames[start].astype(int) - frames[context - 1]).mean() > 2
        s += 1
        if moved and np.allclose(gt["pose"][start], gt["pose"][back], atol=1e-5) and np.array_equal(frames[start], frames[back]):
            out.append(Scenario("loop", frames, np.array(actions), gt, context,
                                {"kind": kind, "start": start, "return": back, "gap": back - start, "seed": s - 1}))
    return out


def score_loop(scenarios, predictions) -> dict:
    """PSNR of the returned view: against the real frame, and against the predictor's
    own start view (self-consistency)."""
    real, own, rows = [], [], []
    for s, p in zip(scenarios, predictions):
        i, j = s.meta["start"] - s.context, s.meta["return"] - s.context
        real.append(float(np.minimum(psnr(p[j], s.frames[s.meta["return"]]), 99.0)))
        own.append(float(np.minimum(psnr(p[j], p[i]), 99.0)))
        rows.append({"kind": s.meta["kind"], "gap": s.meta["gap"], "psnr_vs_real_db": real[-1], "psnr_vs_own_start_db": own[-1]})
    kinds = sorted({r["kind"] for r in rows})
    return {"psnr_vs_real_db": float(np.mean(real)), "psnr_vs_own_start_db": float(np.mean(own)),
            "by_kind": {k: float(np.mean([r["psnr_vs_real_db"] for r in rows if r["kind"] == k])) for k in kinds},
            "scenarios": rows}


def loop_headline(score: dict) -> str:
    return f"returned view {score['psnr_vs_real_db']:.2f} dB vs real ({score['psnr_vs_own_start_db']:.2f} vs own start)"


PROBE = Probe("loop", lambda setup: loop_scenarios(setup.rooms, setup.count, setup.context, setup.seed),
              lambda cases, predictions, reference, setup: score_loop(cases, predictions), loop_headline,
              rooms_only=True)
