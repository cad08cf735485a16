"""The README demo episode dreamed from 5, 6 and 7 real frames, 8 steps, memory on and off:
PSNR per step, and a sheet (rows: real, memory on, memory off, per context). Shows whether
memory pastes back a view the agent has turned away from (RESULTS.md, "Memory that
recalls from the window").

    worldsim collect --steps 2000 --out data/demo     # README's demo data
    python bench/diag/demo_memory.py [CHECKPOINT|""] OUT.png
"""
import sys, numpy as np
from PIL import Image
from worldsim.dream_env import load_world_model
from worldsim.dataset import read_episode
ck = (sys.argv[1] if len(sys.argv) > 1 else "") or None  # "": the shipped model
m = load_world_model(ck)
ep = read_episode("data/demo/test/ep_000002.h5")
rows = []
for k in (5, 6, 7):
    real = ep.frames[k:k + 8]
    rows.append(np.concatenate(list(real), 1))
    for mem in (True, False):
        d, _, _ = m.rollout(ep.frames[None, :k], ep.actions[None, :k - 1], ep.actions[None, k - 1:k + 7], memory=mem)
        rows.append(np.concatenate(list(d[0]), 1))
        err = ((d[0].astype(float) - real) ** 2).mean(axis=(1, 2, 3))
        print(k, "memory" if mem else "no memory", "PSNR", np.round(10 * np.log10(255 ** 2 / err), 1).tolist())
Image.fromarray(np.concatenate(rows, 0)).save(sys.argv[2] if len(sys.argv) > 2 else "/tmp/memdiag.png")
