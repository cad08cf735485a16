"""Probes: does the world model keep the world consistent? Scored against a real env.

Each probe scripts real episodes (`Scenario`: real frames, the actions, ground truth, and
how many leading frames are given as context), asks a predictor for the frames after the
context, and scores them against the real ones. One module per probe:

  loop       turn through 360 degrees, or walk out and back, so the start view returns
             after more steps than the context window holds (Rooms)
  objects    an object seen in the context leaves the view for N steps and comes back:
             recalled where its mask has its colour (Rooms)
  revisit    an object come back to from a new pose, beside the exact return (Rooms)
  control    does each dreamed frame show the action given? (Rooms: counterfactual renders)
  drift      PSNR and SSIM against a long real replay (any gameplay env)
  lookback   loop closure for any env that turns in place
  walkback   loop closure for top-down grid worlds (Crafter)
  placed     a sapling the agent planted, seen again from another cell after it left
             the view (Crafter)

A predictor maps scenarios to predicted frames. Besides the dream (memory on or off),
`ground_truth`, `copy_last`, `shuffled` and `tokenizer_ceiling` give the reference points:
a probe that cannot tell the first from the next two is broken (tests/test_probes.py).
`worldsim/probes/report.py` runs any of them on a world model and writes the report.
With the env kwarg world_seed=None each Rooms script runs on its own map, drawn from its
env seed (`maps_of`).
"""

from worldsim.probes import control, drift, lookback, loop, objects, placed, revisit, walkback
from worldsim.probes.common import (ROOMS_ID, Probe, ProbeSetup, Scenario, copy_last, dream, first_env_seed,
                                    ground_truth, make_rooms, map_fingerprint, maps_of, shuffled, tokenizer_ceiling)
from worldsim.probes.control import control_scenarios, score_control
from worldsim.probes.drift import drift_scenarios, score_drift
from worldsim.probes.lookback import lookback_scenarios
from worldsim.probes.loop import loop_scenarios, score_loop
from worldsim.probes.objects import object_scenarios, score_objects
from worldsim.probes.placed import placed_scenarios, score_placed
from worldsim.probes.revisit import revisit_memory_gain, revisit_scenarios, score_revisit
from worldsim.probes.walkback import score_walkback, walkback_scenarios

PROBES = {probe.name: probe for probe in (loop.PROBE, objects.PROBE, revisit.PROBE, control.PROBE, drift.PROBE,
                                          lookback.PROBE, walkback.PROBE, placed.PROBE)}

__all__ = ["PROBES", "ROOMS_ID", "Probe", "ProbeSetup", "Scenario", "control_scenarios", "copy_last", "dream",
           "drift_scenarios", "first_env_seed", "ground_truth", "lookback_scenarios", "loop_scenarios", "make_rooms",
           "map_fingerprint", "maps_of", "object_scenarios", "placed_scenarios", "revisit_memory_gain", "revisit_scenarios",
           "score_control", "score_drift", "score_loop", "score_objects", "score_placed", "score_revisit", "score_walkback",
           "shuffled", "tokenizer_ceiling", "walkback_scenarios"]
