"""On windows that end on an exact return (by the true poses), how far poses dead-reckoned
from the actions drift from the true ones, and whether a memory bank filled at those
poses still recalls a frame that truly shows the view (RESULTS.md, "Memory that recalls
from the window").

    python bench/diag/pose_drift.py [LATENT_DATASET]   # a Rooms latent dataset (`worldsim encode`)
"""
import sys
import numpy as np
from training.train_dynamics import MemoryWindows, dataset_pose_model
from worldsim.dataset import load_meta
from worldsim.memory import view_overlap
root = sys.argv[1] if len(sys.argv) > 1 else "data/rooms_s11_lat4"
w = MemoryWindows(root, 12, 0, 4, dataset_pose_model(load_meta(root)), "pose", from_window=True)
rng = np.random.default_rng(0)
true_best, drift = [], []
for _ in range(200):
    ep, s, need = w.draw(rng, True)
    if not need:
        continue
    last = s + 11
    order = w.bank_recall(ep, last, 4)
    gt = ep["gt/pose"]
    ov = view_overlap(gt[last], gt[order], w.fov, w.reach) if len(order) else np.zeros(1)
    true_best.append(ov.max(initial=0))
    drift.append(np.hypot(*(ep["dream_poses"][last, :2] - gt[last, :2])))
true_best = np.array(true_best)
print(f"{len(true_best)} exact-return windows; the dream-pose bank recalls a frame truly showing the view (overlap >= 0.9) in {np.mean(true_best >= 0.9):.2f}; median position drift of dead reckoning {np.median(drift):.2f} (reach {w.reach})")
