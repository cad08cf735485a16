"""The world model: tokenizer + diffusion transformer + reward/termination head, as one
checkpoint that remembers the env, action space and frame size it was trained on and
holds a few real start frames (the DreamEnv's default reset).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from worldsim.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from worldsim.dynamics import Dynamics, DynamicsConfig
from worldsim.tokenizer import Tokenizer, TokenizerConfig


class WorldModel(nn.Module):
    def __init__(self, tokenizer: Tokenizer, dynamics: Dynamics, info: dict, start_frames: np.ndarray | None = None):
        super().__init__()
        self.tokenizer, self.dynamics, self.info = tokenizer, dynamics, dict(info)
        h, w = tokenizer.cfg.frame_size
        self.start_frames = (np.zeros((1, h, w, 3), np.uint8) if start_frames is None
                             else np.asarray(start_frames, dtype=np.uint8))

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (*self.tokenizer.cfg.frame_size, 3)

    # -------------------------------------------------------------- files
    def save(self, path, half: bool = True):
        """One safetensors file; `half` stores weights as float16 (loaded back as float32)."""
        tensors = {f"tokenizer/{k}": v for k, v in self.tokenizer.state_dict().items()}
        tensors |= {f"dynamics/{k}": v for k, v in self.dynamics.state_dict().items()}
        if half:
            tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        tensors["start_frames"] = torch.from_numpy(self.start_frames)
        save_checkpoint(path, tensors, {"kind": "world_model", "tokenizer": asdict(self.tokenizer.cfg),
                                        "dynamics": asdict(self.dynamics.cfg), **self.info})

    @classmethod
    def load(cls, path, device="cpu") -> "WorldModel":
        tensors, config = load_checkpoint(path)
        if config.get("kind") != "world_model":
            raise CheckpointError(f"{path} is a {config.get('kind', 'unknown')!r} checkpoint; expected a world model "
                                  "(make one with `worldsim export --checkpoint DYNAMICS_RUN/latest.safetensors`)")
        tokenizer = Tokenizer(TokenizerConfig(**config["tokenizer"]))
        dynamics = Dynamics(DynamicsConfig(**config["dynamics"]))
        try:
            tokenizer.load_state_dict({k[10:]: v.float() for k, v in tensors.items() if k.startswith("tokenizer/")})
            dynamics.load_state_dict({k[9:]: v.float() for k, v in tensors.items() if k.startswith("dynamics/")})
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not match its own config ({e})") from e
        info = {k: v for k, v in config.items() if k not in ("kind", "tokenizer", "dynamics")}
        model = cls(tokenizer, dynamics, info, tensors["start_frames"].numpy())
        return model.to(device).eval()

    # -------------------------------------------------------------- use
    @property
    def device(self):
        return self.tokenizer.latent_shift.device

    def encode(self, frames) -> torch.Tensor:
        return self.tokenizer.encode(torch.as_tensor(frames).to(self.device))

    def decode(self, z) -> torch.Tensor:
        return self.tokenizer.decode(z)

    @torch.no_grad()
    def rollout(self, context_frames, context_actions, actions, steps: int | None = None, seed: int = 0):
        """Dream forward from real context.

        context_frames (B, T, H, W, 3) uint8; context_actions (B, T-1) the actions between
        them; actions (B, N) the actions to take from the last context frame on. Returns
        frames (B, N, H, W, 3) uint8: frame k is the result of actions[:, k] - and the
        predicted rewards (B, N) and termination probabilities (B, N).
        """
        dyn = self.dynamics
        generator = torch.Generator(device=self.device).manual_seed(seed)
        z = self.encode(context_frames)
        b, t = z.shape[:2]
        context_actions = torch.as_tensor(np.asarray(context_actions)).to(self.device).reshape(b, t - 1)
        actions = torch.as_tensor(np.asarray(actions)).to(self.device)
        cache = dyn.new_cache()
        into, has = dyn.actions_into_frames(context_actions, b, t, self.device)
        keep = min(t, dyn.cfg.max_frames - 1)  # the context that fits the window
        dyn.prime(cache, z[:, -keep:], into[:, -keep:], has[:, -keep:],
                  torch.arange(t - keep, t, device=self.device).expand(b, keep), generator)
        prev = z[:, -1]
        frames, rewards, ends = [], [], []
        for k in range(actions.shape[1]):
            a = actions[:, k]
            nxt = dyn.sample_next(cache, a, torch.full((b,), t + k, device=self.device), steps, generator)
            reward, end = dyn.heads(prev, nxt, a)
            rewards.append(reward)
            ends.append(torch.sigmoid(end))
            frames.append(self.decode(nxt[:, None])[:, 0])
            prev = nxt
        return (torch.stack(frames, 1).cpu().numpy(), torch.stack(rewards, 1).cpu().numpy(),
                torch.stack(ends, 1).cpu().numpy())


def export_world_model(dynamics_ckpt: str, out: str, tokenizer_ckpt: str | None = None, start_frames: int = 16,
                       half: bool = True) -> dict:
    """Bundle a trained dynamics run with its tokenizer and real start frames."""
    from worldsim.dataset import episode_paths, read_episode

    tensors, config = load_checkpoint(dynamics_ckpt)
    if config.get("kind") != "dynamics":
        raise CheckpointError(f"{dynamics_ckpt} is a {config.get('kind')!r} checkpoint; expected a dynamics run")
    meta = config["dataset"]
    tokenizer_ckpt = tokenizer_ckpt or meta.get("tokenizer")
    if not tokenizer_ckpt or not Path(tokenizer_ckpt).exists():
        raise CheckpointError(f"tokenizer {tokenizer_ckpt!r} not found; pass --tokenizer")
    tokenizer = Tokenizer.load(tokenizer_ckpt)
    dynamics = Dynamics(DynamicsConfig(**config["dynamics"]))
    dynamics.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    firsts = []
    frames_dataset = meta.get("frames_dataset")
    if frames_dataset and Path(frames_dataset).exists():
        for path in episode_paths(frames_dataset, "train")[:start_frames]:
            firsts.append(read_episode(path).frames[0])
    info = {"env_id": meta.get("env_id"), "env_kwargs": meta.get("env_kwargs", {}),
            "action_space": meta["action_space"], "action_meanings": meta.get("action_meanings"),
            "frame_shape": meta["frame_shape"], "trained_steps": config.get("step"),
            "train": config.get("train")}
    model = WorldModel(tokenizer, dynamics, info, np.stack(firsts) if firsts else None)
    model.save(out, half=half)
    return {"out": out, "bytes": Path(out).stat().st_size, "start_frames": len(firsts),
            "parameters": sum(p.numel() for p in model.parameters())}
