"""Train the recaptioner on exact captions, and score it on held-out clips.

    worldsim train recaptioner --data DIR --out RUN [--steps 3000]

DIR is a Rooms dataset collected with ground truth (every `worldsim collect` of Rooms
records it); its train split teaches, its test split (other episodes, other maps when
collected with `--env-kwargs '{"world_seed": null}'`) scores. The run directory holds
the loop's files and, at the end, `recaptioner.safetensors` and `scores.json`: the
attribute accuracy of the predicted captions against the exact ones, beside always
guessing each attribute's most common value.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from envs.rooms_captions import GT_KEYS, clip_attributes
from training.loop import RunConfig, pick_device, run
from worldsim.dataset import DatasetError, episode_paths, read_episode
from worldsim.recaptioner import Recaptioner, RecaptionerConfig, clip_frames


@dataclass(kw_only=True)
class TrainConfig(RunConfig):
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    clip: int = 8  # actions per captioned clip
    eval_clips: int = 2000  # held-out clips scored at the end


class Clips:
    """Every clip of a split with its exact attributes, as arrays (frames are read lazily
    from episodes held in memory)."""

    def __init__(self, root: str, split: str, clip: int, objects: int):
        self.frames, self.index, targets = [], [], []
        for e, path in enumerate(episode_paths(root, split)):
            ep = read_episode(path)
            missing = [k for k in GT_KEYS if k not in ep.gt]
            if missing:
                raise DatasetError(f"{path} lacks gt/{', gt/'.join(missing)}; the recaptioner learns from Rooms episodes "
                                   "collected with their ground truth (`worldsim collect --env worldsim/Rooms-v0`)")
            if len(ep.gt["objects_xy"][0]) > objects:
                raise DatasetError(f"{path} has {len(ep.gt['objects_xy'][0])} objects; the recaptioner has "
                                   f"{objects} object slots (Rooms' default n_objects)")
            self.frames.append(ep.frames)
            for t in range(0, len(ep.frames) - clip):
                self.index.append((e, t))
                targets.append(clip_attributes(ep.gt, t, clip))
        if not self.index:
            raise DatasetError(f"{root} has no {split} episode longer than a clip of {clip} actions")
        n = len(targets)
        self.room = np.array([a.room for a in targets])
        self.motion = np.array([a.motion for a in targets])
        self.seen = np.zeros((n, objects), bool)
        self.side = np.zeros((n, objects), np.int64)
        self.distance = np.zeros((n, objects), np.int64)
        for k, a in enumerate(targets):
            for i, (side, dist) in a.objects.items():
                self.seen[k, i], self.side[k, i], self.distance[k, i] = True, side, dist
        self.clip = clip

    def __len__(self):
        return len(self.index)

    def batch(self, rows) -> tuple[torch.Tensor, dict]:
        frames = np.stack([clip_frames(self.frames[e], t, self.clip) for e, t in (self.index[r] for r in rows)])
        targets = {k: torch.from_numpy(getattr(self, k)[rows]) for k in ("room", "motion", "seen", "side", "distance")}
        return torch.from_numpy(frames), targets


def attribute_accuracy(model: Recaptioner, clips: Clips, rows) -> dict:
    """Accuracy of each attribute a caption states, predicted against exact, with the
    majority-guess baseline beside it (from the same clips)."""
    preds = {k: [] for k in ("room", "motion", "seen", "side", "distance")}
    with torch.no_grad():
        for s in range(0, len(rows), 256):
            frames, _ = clips.batch(rows[s:s + 256])
            out = model(frames.to(next(model.parameters()).device))
            preds["room"].append(out["room"].argmax(1).cpu())
            preds["motion"].append(out["motion"].argmax(1).cpu())
            preds["seen"].append((out["seen"] > 0).cpu())
            preds["side"].append(out["side"].argmax(2).cpu())
            preds["distance"].append(out["distance"].argmax(2).cpu())
    p = {k: torch.cat(v).numpy() for k, v in preds.items()}
    truth = {k: getattr(clips, k)[rows] for k in p}
    seen = truth["seen"]

    def majority(values):
        return float(np.mean(values == np.bincount(values.astype(int).ravel()).argmax())) if values.size else None

    scores = {
        "room": (float(np.mean(p["room"] == truth["room"])), majority(truth["room"])),
        "motion": (float(np.mean(p["motion"] == truth["motion"])), majority(truth["motion"])),
        "object_in_view": (float(np.mean(p["seen"] == seen)), majority(seen)),
        "object_side": (float(np.mean(p["side"][seen] == truth["side"][seen])), majority(truth["side"][seen])),
        "object_distance": (float(np.mean(p["distance"][seen] == truth["distance"][seen])),
                            majority(truth["distance"][seen])),
        "object_count": (float(np.mean(p["seen"].sum(1) == seen.sum(1))), majority(seen.sum(1))),
        # The whole caption: every attribute right at once.
        "exact_caption": (float(np.mean((p["room"] == truth["room"]) & (p["motion"] == truth["motion"])
                                        & (p["seen"] == seen).all(1)
                                        & ((p["side"] == truth["side"]) | ~seen).all(1)
                                        & ((p["distance"] == truth["distance"]) | ~seen).all(1))), None),
    }
    return {"clips": len(rows), "objects_in_view": int(seen.sum()),
            "accuracy": {k: v[0] for k, v in scores.items()},
            "majority_baseline": {k: v[1] for k, v in scores.items() if v[1] is not None},
            "mean_attribute_accuracy": float(np.mean([v[0] for k, v in scores.items()
                                                      if k not in ("exact_caption", "object_count")]))}


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    model_cfg = RecaptionerConfig(clip=cfg.clip)
    clips = Clips(cfg.data, "train", cfg.clip, model_cfg.objects)
    torch.manual_seed(cfg.seed)
    model = Recaptioner(model_cfg)
    device = pick_device(cfg.device)
    config = {"kind": "recaptioner_run", "recaptioner_run": asdict(model_cfg), "train": asdict(cfg)}
    summary = run(model, cfg, "recaptioner", config,
                  batch_at=lambda step, rank: clips.batch(
                      np.random.default_rng([cfg.seed, step, rank]).integers(len(clips), size=cfg.batch_size)),
                  loss_of=lambda m, b: m.loss(*b), items_per_batch=lambda b: len(b[0]), device=device,
                  progress=progress)
    model.eval()
    out = Path(cfg.out)
    model.save(out / "recaptioner.safetensors")
    test = Clips(cfg.data, "test", cfg.clip, model_cfg.objects)
    rows = np.random.default_rng(cfg.seed).permutation(len(test))[:cfg.eval_clips]
    scores = {"data": cfg.data, "split": "test", **attribute_accuracy(model, test, rows)}
    (out / "scores.json").write_text(json.dumps(scores, indent=2))
    return {**summary, "scores": scores}
