"""The walkback probe's returned cells read as cells: of the start view's far-edge cells
that left and came back, the share each world model draws as the real frame has them,
beside copy-last-frame and the tokenizer ceiling, within and beyond the context window.
With --probe placed, the planted sapling's cell seen again from another cell.

    python bench/diag/walkback_cells.py worldsim/checkpoints/crafter.safetensors worldsim/checkpoints/campaign/crafter_p2.safetensors --data data/crafter

The probe's own scripts (`worldsim probe --probes walkback`, probe seed 0, the real env
as the models were trained on it: they must share it); cells read by the reader of
`bench_dynamics.py --cells`, fitted on `--data`'s train split.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from worldsim.cells import cell_patches, fit_for_model
from worldsim.probes.common import copy_last, dream, tokenizer_ceiling
from worldsim.probes.placed import placed_scenarios
from worldsim.probes.walkback import walkback_scenarios
from worldsim.world_model import WorldModel

SCRIPTS = {"walkback": (walkback_scenarios, "returned"), "placed": (placed_scenarios, "plant")}  # and the cells they score


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", default="data/crafter")
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--probe", choices=sorted(SCRIPTS), default="walkback")
    args = parser.parse_args()
    torch.set_num_threads(2)
    models = {path: WorldModel.load(path) for path in args.checkpoints}
    first = models[args.checkpoints[0]]
    env_kwargs = first.info.get("env_kwargs") or {}
    if any((m.info.get("env_kwargs") or {}) != env_kwargs for m in models.values()):
        raise ValueError("the models were trained on the env with other settings (env_kwargs): score them apart")
    reader, _ = fit_for_model(first, args.data)
    context = first.dynamics.cfg.max_frames - 1  # as the probe gives it
    scripts, cells = SCRIPTS[args.probe]
    scenarios = scripts(first.info["env_id"], env_kwargs, args.count, context)
    predictions = {**{path: dream(m, None)(scenarios) for path, m in models.items()},
                   "copy-last-frame": copy_last(scenarios), "tokenizer ceiling": tokenizer_ceiling(first)(scenarios)}
    # per script: the returned frame's index, its returned cells, and what the reader sees there in the real frame
    returns = []
    for s in scenarios:
        returned = cell_patches(np.repeat(s.gt[cells][..., None], 3, -1)).all(axis=(-3, -2, -1))
        returns.append((s.meta["return"] - s.context, returned, reader.read(s.frames[s.meta["return"]])[returned]))
    for name, predicted in predictions.items():
        agree = {}
        for s, p, (j, returned, real) in zip(scenarios, predicted, returns):
            agree.setdefault(s.meta["kind"], []).append(np.mean(reader.read(p[j])[returned] == real))
        print(f"{name}: {args.probe}, returned cells drawn as the real frame has them {np.mean(sum(agree.values(), [])):.3f} ("
              + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in agree.items()) + ")")

if __name__ == "__main__":
    main()
