"""Train the inverse dynamics model (worldsim/inverse_dynamics.py) on pairs of consecutive
frames and the action between them, and score it on the test split.

    worldsim train inverse-dynamics --data DIR --out RUN [--steps 2000]
    worldsim export --checkpoint RUN/latest.safetensors --out judge.safetensors

DIR is a dataset of frames with discrete actions (`worldsim collect`); a random policy's
data gives every action its share. A latent dataset (`worldsim encode`) trains a judge of
latents, the one `worldsim train dynamics --judge` takes. At the end the run directory
holds `scores.json`: accuracy on the test split's pairs, recall per action and the
confusion matrix, beside always guessing the split's most common action. Some pairs no judge can tell apart (a
step into a wall shows what NOOP shows), so its accuracy on real pairs is the ceiling
that a dream's score under it is read against.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from training.loop import RunConfig, pick_device, run
from worldsim.dataset import DatasetError, WindowDataset, load_meta
from worldsim.inverse_dynamics import InverseDynamics, InverseDynamicsConfig


@dataclass(kw_only=True)
class TrainConfig(RunConfig):  # data: a dataset of frames with discrete actions
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 32  # InverseDynamicsConfig
    eval_pairs: int = 4096  # test-split pairs scored at the end


class FramePairs:
    """Random (frame, next frame, action) triples of a split, latent frames where the
    dataset holds latents. The draw for a step depends only on (seed, step), so a resumed
    run sees the same batches."""

    def __init__(self, root, split: str, seed: int):
        self.latent_shape = load_meta(root).get("latent_shape")
        self.windows = WindowDataset(root, split=split, context=2, horizon=0,
                                     field="latents" if self.latent_shape else "frames")
        space = self.windows.meta.get("action_space", {})
        if not self.windows.has_actions or space.get("type") != "Discrete":
            raise DatasetError(f"{root}: the inverse dynamics model learns discrete actions; this dataset has "
                               f"{'no actions' if not self.windows.has_actions else space.get('type')}")
        self.n_actions, self.seed = int(space["n"]), seed

    def batch(self, n: int, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = np.random.default_rng([self.seed, step]).choice(len(self.windows), size=min(n, len(self.windows)),
                                                              replace=n > len(self.windows))
        items = [self.windows[int(i)] for i in idx]
        frames = torch.from_numpy(np.stack([it["context"] for it in items]))
        return frames[:, 0], frames[:, 1], torch.from_numpy(np.stack([it["actions"][0] for it in items])).long()


def score(model: InverseDynamics, before, after, actions, n_actions: int) -> dict:
    """Accuracy, recall per action and confusion (given action x judged action), beside
    always guessing the most common action."""
    judged = model.predict(before, after).numpy()
    actions = actions.numpy()
    confusion = np.zeros((n_actions, n_actions), int)
    np.add.at(confusion, (actions, judged), 1)
    counts = confusion.sum(1)
    return {"pairs": int(len(actions)), "accuracy": float((judged == actions).mean()),
            "most_common_action": float(counts.max() / counts.sum()),
            "recall": [float(confusion[a, a] / counts[a]) if counts[a] else None for a in range(n_actions)],
            "confusion": confusion.tolist()}


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    data = FramePairs(cfg.data, "train", cfg.seed)
    torch.manual_seed(cfg.seed)
    shape = data.latent_shape or (3, *data.windows.meta["frame_shape"][:2])
    halvings = max(int(np.log2(shape[1] // 4)), 1)  # down to a 4x4 grid, then pooled to 2x2
    model = InverseDynamics(InverseDynamicsConfig(n_actions=data.n_actions, width=cfg.width, channels=shape[0],
                                                  halvings=halvings, latents=bool(data.latent_shape)))
    config = {"kind": "inverse_dynamics", "inverse_dynamics": asdict(model.cfg), "train": asdict(cfg),
              "dataset": data.windows.meta}
    result = run(model, cfg, "inverse_dynamics", config,
                 batch_at=lambda step, rank: data.batch(cfg.batch_size, step + rank * 10**9),
                 loss_of=lambda m, batch: m.loss(*batch), items_per_batch=lambda batch: batch[0].shape[0],
                 device=pick_device(cfg.device), progress=progress)
    model.eval().cpu()
    test = FramePairs(cfg.data, "test", cfg.seed + 1)
    scores = {**score(model, *test.batch(cfg.eval_pairs, 0), data.n_actions),
              "action_names": data.windows.meta.get("action_meanings")}
    (Path(cfg.out) / "scores.json").write_text(json.dumps(scores, indent=2))
    if progress:
        print(json.dumps({k: v for k, v in scores.items() if k != "confusion"}, indent=2))
    return {**result, "scores": {k: v for k, v in scores.items() if k != "confusion"}}
