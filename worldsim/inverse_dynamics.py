"""Which action led from one frame to the next: a small convolutional network on the pair
of frames (the inverse dynamics model of VPT, here a judge rather than a labeller).

A judge of frames reads pixels, so it judges any world model of its env, whatever the
tokenizer. The action-control probe uses it to ask whether each dreamed step shows the
action it was given, seen from the dream's own previous frame; the probe's other figure
compares the dream with the real env's renders of every action from the real state, so
it also counts every step on which the dream has drifted off the real track.

A judge of latents (trained on a `worldsim encode` dataset) reads one tokenizer's latent
frames: cheap and differentiable, it is what `worldsim train dynamics --judge` trains
the world model's predictions against, so which action a predicted frame shows becomes
part of the objective. It is a different network on different inputs from the judge of
frames that scores the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsim.checkpoint import MODEL, CheckpointError, load_checkpoint, prefixed, save_checkpoint, with_prefix


SHIPPED = {"worldsim/Rooms-v0": Path(__file__).parent / "checkpoints" / "rooms_inverse_dynamics.safetensors"}


def find_judge(choice: str | None, env_id: str | None) -> Path | None:
    """The judge an `--inverse-dynamics` choice names: a path; "none", no judge; None, the
    one shipped for `env_id` if there is one."""
    if choice == "none":
        return None
    if choice:
        return Path(choice)
    path = SHIPPED.get(env_id)
    return path if path is not None and path.exists() else None


@dataclass
class InverseDynamicsConfig:
    n_actions: int  # a discrete action space's size
    width: int = 32  # channels after the first halving; doubled at the next two
    channels: int = 3  # 3: RGB frames; a latent judge: the latent's channels
    halvings: int = 4  # stride-2 convolutions before the 2x2 grid: log2(frame side / 4)
    latents: bool = False  # reads latent frames (B, C, h, w) as the dataset holds them, not uint8 pixels


class InverseDynamics(nn.Module):
    def __init__(self, cfg: InverseDynamicsConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.width
        layers, cin = [], 3 * cfg.channels  # the frame before, the frame after, and their difference
        for cout in (c, 2 * c, 4 * c, 4 * c, 4 * c)[:cfg.halvings]:  # each halves the frame
            layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.GroupNorm(8, cout), nn.GELU()]
            cin = cout
        # A 2x2 grid keeps where things moved (a turn shifts the whole view, a strafe the near walls more).
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * cin, cfg.n_actions))

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """before, after (B, H, W, 3) uint8 frames, or (B, C, h, w) latents for a judge of
        latents -> action logits (B, n_actions)."""
        if not self.cfg.latents:
            before, after = (f.permute(0, 3, 1, 2) / 127.5 - 1 for f in (before, after))
        before, after = before.float(), after.float()
        return self.net(torch.cat([before, after, after - before], 1))

    @torch.no_grad()
    def predict(self, before, after, batch: int = 512) -> torch.Tensor:
        """The most likely action for each pair (B,), in batches."""
        return torch.cat([self(before[i:i + batch], after[i:i + batch]).argmax(1) for i in range(0, len(before), batch)])

    def read_steps(self, last_context, frames) -> np.ndarray:
        """The action the judge reads from each step of rollouts: frames (N, L, H, W, 3)
        uint8 that followed last_context (N, H, W, 3) -> (N, L), each step read beside the
        frame before it (the first beside last_context)."""
        before = np.concatenate([last_context[:, None], frames[:, :-1]], 1)
        judged = self.predict(torch.from_numpy(before.reshape(-1, *before.shape[2:])),
                              torch.from_numpy(np.ascontiguousarray(frames).reshape(-1, *frames.shape[2:])))
        return judged.numpy().reshape(frames.shape[:2])

    def loss(self, before, after, actions) -> tuple[torch.Tensor, dict]:
        logits = self(before, after)
        loss = F.cross_entropy(logits, actions.long())
        return loss, {"loss": loss.item(), "accuracy": (logits.argmax(1) == actions).float().mean().item()}


def load_inverse_dynamics(path, env_id: str | None, latents: bool = False) -> InverseDynamics:
    """A `worldsim train inverse-dynamics` run or the file it exports, checked to be for
    `env_id` and to read frames (or `latents`)."""
    tensors, config = load_checkpoint(path)
    if config.get("kind") != "inverse_dynamics":
        raise CheckpointError(f"{path} is a {config.get('kind')!r} checkpoint; expected an inverse dynamics model "
                              "(`worldsim train inverse-dynamics`)")
    trained_on = config["dataset"].get("env_id")
    if env_id is not None and trained_on != env_id:
        raise CheckpointError(f"{path} judges actions in {trained_on}; the world model is of {env_id}")
    model = InverseDynamics(InverseDynamicsConfig(**config["inverse_dynamics"]))
    if model.cfg.latents != latents:
        raise CheckpointError(f"{path} judges {'latent frames' if model.cfg.latents else 'pixel frames'}; expected a "
                              f"judge of {'latents (train it on a `worldsim encode` dataset)' if latents else 'frames'}")
    model.load_state_dict({k: v.float() for k, v in with_prefix(tensors, MODEL).items()})
    return model.eval()


def export_inverse_dynamics(run_checkpoint, out) -> dict:
    """A training run's checkpoint -> the file to ship: fp16 weights and the config, no optimizer."""
    _, config = load_checkpoint(run_checkpoint)
    model = load_inverse_dynamics(run_checkpoint, None, config.get("inverse_dynamics", {}).get("latents", False))
    save_checkpoint(out, prefixed({k: v.half() for k, v in model.state_dict().items()}, MODEL),
                    {k: config[k] for k in ("kind", "inverse_dynamics", "train", "dataset", "step") if k in config})
    return {"out": str(out), "step": config.get("step"), "parameters": sum(p.numel() for p in model.parameters())}
