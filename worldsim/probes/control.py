"""Action control: at each step the real env renders what every action would have shown
from the real state; the dream agrees when its frame is nearest the render of the action
it was given. After the first step that also counts drift: a dream that showed a strafe
as a turn faces elsewhere from then on, and its later steps are compared with renders
from a state it is no longer in.

A second reading, with an inverse dynamics model (worldsim/inverse_dynamics.py) as the
judge: the dream shows the action when the judge reads it from the pair (the dream's
previous frame, its frame), the step as the dream itself took it.
"""

from __future__ import annotations

import numpy as np

from worldsim.probes.common import Probe, Scenario, context_walk, first_env_seed, replay


def control_scenarios(env, count: int, context: int, horizon: int = 8, seed: int = 0) -> list[Scenario]:
    """Uniformly random actions after a context walk, with the counterfactual renders of
    every action from each real state."""
    out = []
    for s in range(first_env_seed(seed), first_env_seed(seed) + count):
        rng = np.random.default_rng(s)
        actions = context_walk(rng, context - 1) + [int(a) for a in rng.integers(env.action_space.n, size=horizon)]
        frames, gt, candidates = replay(env, s, actions, counterfactual_from=context - 1)
        out.append(Scenario("control", frames, np.array(actions), gt, context, {"candidates": candidates, "seed": s}))
    return out


def score_control(scenarios, predictions, names, judge=None) -> dict:
    """Agreement: the predicted frame is nearest the real render of the given action (ties
    between actions with the same render count as agreement). Also a confusion matrix.
    With `judge` (an InverseDynamics), also `shown`: the share of steps whose pair (the
    previous frame, the last context frame for the first, and the predicted one) it reads
    as the given action, by step and as a confusion matrix."""
    n = len(names)
    confusion = np.zeros((n, n), int)
    hits = []  # (steps dreamed, agreed)
    for s, p in zip(scenarios, predictions):
        cands = s.meta["candidates"]
        for t in range(len(cands)):
            given = int(s.actions[s.context - 1 + t])
            err = ((cands[t].astype(float) - p[t].astype(float)) ** 2).mean(axis=(1, 2, 3))
            nearest = int(err.argmin())
            hits.append((t, err[given] <= err[nearest] + 1e-9 or np.array_equal(cands[t][given], cands[t][nearest])))
            confusion[given, nearest] += 1
    steps, agreed = np.array(hits, float).T
    # The first step starts from the real state; later ones from the dream's own, so
    # they measure control and drift together.
    out = {"agreement": float(agreed.mean()), "steps": len(hits), "chance": 1.0 / n,
           "agreement_by_step": [float(agreed[steps == t].mean()) for t in range(int(steps.max()) + 1)],
           "confusion": confusion.tolist(), "action_names": list(names)}
    if judge is not None:
        out.update(judged_control(scenarios, predictions, judge, n))
    return out


def judged_control(scenarios, predictions, judge, n: int) -> dict:
    """How often `judge` reads each predicted step as the action given (see score_control)."""
    given, judged = [], []
    for s, p in zip(scenarios, predictions):
        horizon = len(s.meta["candidates"])
        judged.append(judge.read_steps(s.frames[None, s.context - 1], p[None, :horizon])[0])
        given.append(s.actions[s.context - 1:s.context - 1 + horizon].astype(int))
    steps = np.concatenate([np.arange(len(g)) for g in given])
    given, judged = np.concatenate(given), np.concatenate(judged)
    confusion = np.zeros((n, n), int)
    np.add.at(confusion, (given, judged), 1)
    shown = judged == given
    return {"shown": float(shown.mean()), "shown_by_step": [float(shown[steps == t].mean()) for t in range(steps.max() + 1)],
            "shown_confusion": confusion.tolist()}


def control_headline(score: dict) -> str:
    line = f"action agreement {score['agreement']:.2f} over {score['steps']} steps (chance {score['chance']:.2f})"
    return line + (f"; shown by its own step {score['shown']:.2f} (judge)" if "shown" in score else "")


def confusion_plot(cases, views: dict, control: dict, path):
    """Given action against the action whose real render the dream's frame is nearest; with
    a judge, a second row: given action against the action the judge reads from the step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dreams = [n for n in ("dream_memory_on", "dream_memory_off") if n in control]
    readings = [("confusion", "agreement", "action whose real render is nearest the dream")]
    if "shown_confusion" in control[dreams[0]]:
        readings.append(("shown_confusion", "shown", "action the judge reads from the dream's step"))
    fig, axes = plt.subplots(len(readings), len(dreams), figsize=(5.5 * len(dreams), 5 * len(readings)), squeeze=False)
    for row, (key, figure, xlabel) in zip(axes, readings):
        for ax, name in zip(row, dreams):
            m = np.array(control[name][key], float)
            labels = control[name]["action_names"]
            ax.imshow(m / np.maximum(m.sum(1, keepdims=True), 1), cmap="Greens", vmin=0, vmax=1)
            ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("action given")
            ax.set_title(f"{name}: {figure} {control[name][figure]:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


PROBE = Probe("control", lambda setup: control_scenarios(setup.rooms, setup.count, setup.context, seed=setup.seed),
              lambda cases, predictions, reference, setup: score_control(cases, predictions, setup.names, setup.judge),
              control_headline, rooms_only=True, figure=confusion_plot,
              figure_file="control_confusion.png")
