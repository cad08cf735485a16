"""The learned recaptioner: a small video-to-caption network for footage without ground
truth.

It reads three frames of a clip (its first, middle and last) and predicts the clip's
Attributes (envs/rooms_captions.py): the room's wall colour, for each object whether it is
in view and, if so, on which side and how far, and the camera's motion. `caption` turns
them into the same sentences the exact captions use, so a model trained on exact
captions can be given footage captioned by this network. Trained by
`worldsim train recaptioner` (training/train_recaptioner.py) on exact captions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsim.checkpoint import CheckpointError, config_from, load_checkpoint, save_checkpoint


@dataclass
class RecaptionerConfig:
    rooms: int = 9  # wall colours
    objects: int = 6  # object slots (colour and shape fixed per slot)
    sides: int = 3  # left, ahead, right
    distances: int = 2  # close by, across the room
    motions: int = 7  # the camera's net motions (envs/rooms_captions.py MOTIONS)
    clip: int = 8  # actions per clip: frames 0, clip // 2 and clip are read
    width: int = 32  # channels of the first conv; doubled at each of four stride-2 convs (64 -> 4 pixels)


class Recaptioner(nn.Module):
    def __init__(self, cfg: RecaptionerConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        chans = [9, w, 2 * w, 4 * w, 4 * w]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, 2, 1) for a, b in zip(chans[:-1], chans[1:]))
        self.pool = nn.AdaptiveAvgPool2d(4)
        n_out = cfg.rooms + cfg.objects * (1 + cfg.sides + cfg.distances) + cfg.motions
        self.head = nn.Sequential(nn.Linear(chans[-1] * 16, 256), nn.GELU(), nn.Linear(256, n_out))

    def forward(self, frames: torch.Tensor) -> dict:
        """frames (B, 3, H, W, 3) uint8 -> logits: room (B, R), seen (B, O), side (B, O, 3),
        distance (B, O, 2), motion (B, M)."""
        x = frames.float().permute(0, 1, 4, 2, 3).flatten(1, 2) / 127.5 - 1
        for conv in self.convs:
            x = F.gelu(conv(x))
        out = self.head(self.pool(x).flatten(1))
        c, o = self.cfg, self.cfg.objects
        room, seen, side, dist, motion = out.split([c.rooms, o, o * c.sides, o * c.distances, c.motions], 1)
        return {"room": room, "seen": seen, "side": side.reshape(-1, o, c.sides),
                "distance": dist.reshape(-1, o, c.distances), "motion": motion}

    def loss(self, frames, targets: dict) -> tuple[torch.Tensor, dict]:
        out = self(frames)
        seen = targets["seen"].float()
        where = seen.bool()
        terms = {"room": F.cross_entropy(out["room"], targets["room"]),
                 "seen": F.binary_cross_entropy_with_logits(out["seen"], seen),
                 "motion": F.cross_entropy(out["motion"], targets["motion"])}
        if where.any():  # side and distance are said only of objects in view
            terms["side"] = F.cross_entropy(out["side"][where], targets["side"][where])
            terms["distance"] = F.cross_entropy(out["distance"][where], targets["distance"][where])
        loss = sum(terms.values())
        return loss, {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}

    @torch.no_grad()
    def attributes(self, frames) -> list:
        """Clip frames (B, 3, H, W, 3) uint8 -> the predicted Attributes of each clip."""
        from envs.rooms_captions import Attributes

        out = self(torch.as_tensor(np.asarray(frames)).to(next(self.parameters()).device))
        result = []
        for b in range(len(out["room"])):
            seen = (out["seen"][b] > 0).nonzero().flatten().tolist()
            objects = {i: (int(out["side"][b, i].argmax()), int(out["distance"][b, i].argmax())) for i in seen}
            result.append(Attributes(int(out["room"][b].argmax()), objects, int(out["motion"][b].argmax())))
        return result

    def caption(self, frames) -> list[str]:
        from envs.rooms_captions import caption

        return [caption(a) for a in self.attributes(frames)]

    def save(self, path):
        save_checkpoint(path, {k: v.detach().cpu() for k, v in self.state_dict().items()},
                        {"kind": "recaptioner", "recaptioner": asdict(self.cfg)})

    @classmethod
    def load(cls, path) -> "Recaptioner":
        tensors, meta = load_checkpoint(path)
        if meta.get("kind") != "recaptioner":
            raise CheckpointError(f"{path} is a {meta.get('kind')!r} checkpoint; expected a recaptioner "
                                  "(the recaptioner.safetensors a `worldsim train recaptioner` run writes)")
        model = cls(config_from(RecaptionerConfig, meta, "recaptioner", path))
        model.load_state_dict(tensors)
        return model.eval()


def clip_frames(frames: np.ndarray, t: int, clip: int) -> np.ndarray:
    """The three frames the recaptioner reads of the clip starting at frame t."""
    return frames[[t, t + clip // 2, t + clip]]


def caption_dataset(data: str, out: str, recaptioner: str | None = None, clip: int = 8, every: int = 8,
                    progress: bool = True) -> dict:
    """Caption every `every`-th clip of every episode of a dataset into a JSON-lines file:
    exact captions from the ground truth where the episode has it (Rooms, ViZDoom:
    `envs.caption_module`), else the recaptioner's (`recaptioner`: its checkpoint; footage
    without ground truth needs
    one). Each line: episode file, first frame, caption, and which of the two wrote it."""
    import json

    from tqdm import tqdm

    from envs import caption_module
    from worldsim.dataset import atomic_write_bytes, episode_paths, load_meta, read_episode

    model = Recaptioner.load(recaptioner) if recaptioner else None
    clip = model.cfg.clip if model else clip
    captions = caption_module(load_meta(data).get("env_id"))
    lines, sources = [], {"exact": 0, "recaptioner": 0}
    for path in tqdm(episode_paths(data), desc="caption", unit="episode", disable=not progress):
        ep = read_episode(path)
        starts = list(range(0, len(ep.frames) - clip, every))
        exact = captions is not None and all(k in ep.gt for k in captions.GT_KEYS)
        if exact:
            texts = [captions.caption(captions.clip_attributes(ep.gt, t, clip)) for t in starts]
        elif model is None:
            raise ValueError(f"{path} has no ground truth to caption from (Rooms, ViZDoom); pass --recaptioner "
                             "CHECKPOINT (from `worldsim train recaptioner`) to caption footage without it")
        else:
            texts = [text for s in range(0, len(starts), 256)
                     for text in model.caption(np.stack([clip_frames(ep.frames, t, clip) for t in starts[s:s + 256]]))]
        source = "exact" if exact else "recaptioner"
        sources[source] += len(texts)
        lines += [json.dumps({"episode": str(path), "t": t, "caption": text, "source": source})
                  for t, text in zip(starts, texts)]
    atomic_write_bytes(Path(out), ("\n".join(lines) + "\n").encode())
    return {"out": out, "clips": len(lines), **sources}
