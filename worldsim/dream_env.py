"""The world model as a Gymnasium environment: `worldsim/Dream-v0`.

    env = gymnasium.make("worldsim/Dream-v0")                      # the shipped Rooms model
    env = gymnasium.make("worldsim/Dream-v0", checkpoint="my.safetensors", obs_type="latent")
    envs = gymnasium.make_vec("worldsim/Dream-v0", num_envs=16, vectorization_mode="vector_entry_point")

`reset(options=...)` starts from a real start frame held with the checkpoint (default),
from a dataset episode ({"episode": path} or {"episode": (path, start)}), or from given
context ({"context": {"frames": (T, H, W, 3) uint8, "actions": the T-1 actions between
them}}); `step(a)` then predicts the frame that follows the last given one, as if `a`
were taken there. Reward and termination come from the model's heads, truncation from
`max_steps`. The vector env advances all sub-envs in one batched forward pass.
`memory=False` turns off the latent memory of a model trained with one (on by default);
`memory_guidance` overrides how strongly recalled views are followed (worldsim/dynamics.py).
`sample_ends=True` draws each step's termination from the head's probability instead of
thresholding it at 0.5: an uncertain model then ends episodes as often as it believes
they end, which leaves an agent less room to exploit it.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from worldsim.spaces import space_from_dict
from worldsim.world_model import DreamCore

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "rooms.safetensors"


def load_world_model(checkpoint, env_id: str | None = None, device: str = "cpu"):
    from worldsim.checkpoint import CheckpointError
    from worldsim.world_model import WorldModel

    if isinstance(checkpoint, WorldModel):
        model = checkpoint
    else:
        path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
        if not path.exists():
            raise CheckpointError(f"no world model at {path}; expected a checkpoint from `worldsim export`"
                                  + (" (the shipped Rooms model is missing from this install)" if checkpoint is None else ""))
        model = WorldModel.load(path, device=device)
    if env_id is not None and model.info.get("env_id") != env_id:
        raise CheckpointError(f"the world model was trained on {model.info.get('env_id')!r}, not {env_id!r}")
    return model


class _DreamBase:
    """What the single and the vector env share: loading, spaces, contexts, observations."""

    def _setup(self, checkpoint, obs_type, max_steps, sample_steps, env_id, device, memory, sample_ends,
               memory_guidance):
        if obs_type not in ("rgb", "latent"):
            raise ValueError(f"obs_type must be 'rgb' or 'latent', got {obs_type!r}")
        self.model = load_world_model(checkpoint, env_id, device)
        self.obs_type, self.max_steps, self.memory, self.sample_ends = obs_type, max_steps, memory, sample_ends
        self.model.use_memory(memory)  # fails now, not at reset, if memory is asked of a model without it
        self.memory_guidance = memory_guidance
        self.sample_steps = sample_steps or self.model.dynamics.cfg.sample_steps
        self.single_action_space = space_from_dict(self.model.info["action_space"])
        self.action_meanings = tuple(self.model.info.get("action_meanings") or ())
        latent = self.model.dynamics.cfg.latent_shape
        self.single_observation_space = (gym.spaces.Box(0, 255, self.model.frame_shape, np.uint8) if obs_type == "rgb"
                                         else gym.spaces.Box(-np.inf, np.inf, latent, np.float32))

    def _context(self, options, rng):
        """(frames, actions) to start from, validated against the model."""
        options = options or {}
        h, w, _ = self.model.frame_shape
        if "prompt" in options:
            if not self.model.dynamics.cfg.text_dim:
                raise ValueError("this world model has no text conditioning (text_dim=0); start from a start frame, "
                                 "an episode or a context instead of a prompt")
            raise NotImplementedError("prompt resets need the text encoder of a text-conditioned checkpoint")
        if "episode" in options:
            from worldsim.dataset import read_episode

            ref = options["episode"]
            path, start = (ref, 0) if isinstance(ref, (str, Path)) else ref
            episode = read_episode(path)
            if episode.actions is None:
                raise ValueError(f"{path} has no actions; the dream starts from action-labelled episodes")
            n = min(self.model.dynamics.cfg.max_frames - 1, len(episode.frames) - start)
            frames, actions = episode.frames[start:start + n], episode.actions[start:start + n - 1]
        elif "context" in options:
            ctx = options["context"]
            frames = np.asarray(ctx.get("frames"))
            actions = np.asarray(ctx.get("actions", np.zeros((0,), np.int64)))
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (h, w, 3) or len(frames) < 1:
                raise ValueError(f"context frames must be uint8 (T, {h}, {w}, 3) with T >= 1, "
                                 f"got {frames.dtype} {frames.shape}")
            if len(actions) != len(frames) - 1:
                raise ValueError(f"context needs the {len(frames) - 1} actions between its {len(frames)} frames "
                                 f"(actions[i] led from frame i to i+1), got {len(actions)}")
            for a in actions:
                if not self._valid(a):
                    raise ValueError(f"context action {a!r} is outside the action space {self.single_action_space}")
        else:
            frames = self.model.start_frames[rng.integers(len(self.model.start_frames))][None]
            actions = np.zeros((0,), np.int64)
        return frames, actions

    def _ends(self, probs: np.ndarray) -> np.ndarray:
        """Episode ends from the head's probabilities: drawn (sample_ends) or above 0.5."""
        if self.sample_ends:
            return self.np_random.random(len(probs)) < probs
        return probs > 0.5

    def _valid(self, a) -> bool:
        """Whether `a` is one action of the single-env space (ints of any numpy kind welcome)."""
        space = self.single_action_space
        try:
            return space.contains(int(a) if isinstance(space, gym.spaces.Discrete) else np.asarray(a, space.dtype))
        except (TypeError, ValueError):
            return False

    def _observe(self, z):
        """latents (N, C, h, w) -> observations (N, ...)."""
        if self.obs_type == "latent":
            return z.numpy().astype(np.float32)
        with torch.no_grad():
            return self.model.decode(z[:, None])[:, 0].numpy()

    def _info(self, probs, steps):
        retrieved = self.core.retrieved if isinstance(steps, np.ndarray) else int(self.core.retrieved[0])
        return {"denoising_steps": self.sample_steps, "termination_prob": probs,
                "context_frames": self.core.cache.frames, "steps": steps, "memory_frames": retrieved}


class DreamEnv(_DreamBase, gym.Env):
    """A single dream env (a batch of one)."""

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 15}

    def __init__(self, checkpoint=None, obs_type: str = "rgb", max_steps: int = 500, sample_steps: int | None = None,
                 env_id: str | None = None, device: str = "cpu", render_mode: str | None = None,
                 memory: bool | None = None, sample_ends: bool = False, memory_guidance: float | None = None):
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self._setup(checkpoint, obs_type, max_steps, sample_steps, env_id, device, memory, sample_ends, memory_guidance)
        self.action_space, self.observation_space = self.single_action_space, self.single_observation_space
        self.render_mode = render_mode
        self.core, self._steps, self._done, self._frame = None, None, False, None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        frames, actions = self._context(options, self.np_random)
        self._generator = torch.Generator().manual_seed(int(self.np_random.integers(2**31)))
        self.core = DreamCore(self.model, 1, self.sample_steps, self.memory, memory_guidance=self.memory_guidance)
        self.core.reset_rows([0], [(frames, actions)], self._generator)
        self._steps, self._done, self._frame = 0, False, frames[-1]
        obs = frames[-1].copy() if self.obs_type == "rgb" else self.core.last[0].numpy().astype(np.float32)
        return obs, self._info(0.0, 0)

    def step(self, action):
        if self.core is None:
            raise RuntimeError("DreamEnv.step() called before reset(); call env.reset() first")
        if self._done:
            raise RuntimeError("DreamEnv.step() called after the episode ended; call env.reset() first")
        if not self._valid(action):
            raise ValueError(f"action {action!r} is outside the action space {self.action_space}")
        z, reward, prob = self.core.step(np.asarray(action)[None], self._generator)
        self._steps += 1
        terminated = bool(self._ends(prob)[0])
        truncated = self._steps >= self.max_steps
        self._done = terminated or truncated
        obs = self._observe(z)[0]
        if self.obs_type == "rgb":
            self._frame = obs
        return obs, float(reward[0]), terminated, truncated, self._info(float(prob[0]), self._steps)

    def render(self):
        if self._frame is None:
            return None
        frame = self._frame if self.obs_type == "rgb" else self._observe(self.core.last)[0]
        if self.render_mode == "human":
            import cv2
            cv2.imshow("worldsim dream", cv2.resize(frame[..., ::-1], (256, 256), interpolation=cv2.INTER_NEAREST))
            cv2.waitKey(1)
            return None
        return frame.copy()


class DreamVectorEnv(_DreamBase, gym.vector.VectorEnv):
    """N dream envs advanced in one batched forward pass, with per-env resets.

    Autoreset follows gymnasium: NEXT_STEP (default) resets a finished sub-env on the
    following step; SAME_STEP resets it at once and puts its last observation in
    info["final_obs"] (and its info in info["final_info"])."""

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, checkpoint=None, obs_type: str = "rgb", max_steps: int = 500,
                 sample_steps: int | None = None, env_id: str | None = None, device: str = "cpu",
                 autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP, render_mode: str | None = None,
                 memory: bool | None = None, sample_ends: bool = False, memory_guidance: float | None = None):
        self._setup(checkpoint, obs_type, max_steps, sample_steps, env_id, device, memory, sample_ends, memory_guidance)
        self.num_envs, self.render_mode = num_envs, render_mode
        self.autoreset_mode = gym.vector.AutoresetMode(autoreset_mode)
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.core = None
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._needs_reset = np.zeros(num_envs, dtype=bool)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._generator = torch.Generator().manual_seed(int(self.np_random.integers(2**31)))
        self.core = DreamCore(self.model, self.num_envs, self.sample_steps, self.memory,
                              memory_guidance=self.memory_guidance)
        contexts = [self._context(options, self.np_random) for _ in range(self.num_envs)]
        self.core.reset_rows(range(self.num_envs), contexts, self._generator)
        self._steps[:] = 0
        self._needs_reset[:] = False
        return self._first_obs(contexts, range(self.num_envs)), {
            "denoising_steps": self.sample_steps, "context_frames": self.core.cache.frames}

    def _first_obs(self, contexts, rows):
        if self.obs_type == "rgb":
            return np.stack([frames[-1] for frames, _ in contexts])
        return self.core.last[list(rows)].numpy().astype(np.float32)

    def step(self, actions):
        if self.core is None:
            raise RuntimeError("DreamVectorEnv.step() called before reset(); call envs.reset() first")
        actions = np.asarray(actions)
        if not self.action_space.contains(actions.astype(self.action_space.dtype) if actions.dtype != object else actions):
            raise ValueError(f"actions {actions!r} are outside the batched action space {self.action_space}")
        z, rewards, probs = self.core.step(actions, self._generator)
        self._steps += 1
        obs = self._observe(z)
        terminated = self._ends(probs)
        truncated = self._steps >= self.max_steps
        rewards = rewards.astype(np.float64)
        info = self._info(probs, self._steps.copy())
        if self.autoreset_mode == gym.vector.AutoresetMode.NEXT_STEP:
            rows = np.nonzero(self._needs_reset)[0]
            if len(rows):  # these finished last step: this step is their reset
                obs[rows] = self._reset(rows)
                rewards[rows], terminated[rows], truncated[rows] = 0.0, False, False
            self._needs_reset = terminated | truncated
        else:
            rows = np.nonzero(terminated | truncated)[0]
            if len(rows):
                info["final_obs"] = np.empty(self.num_envs, dtype=object)  # filled one by one: a 1-D array of arrays
                for i in rows:
                    info["final_obs"][i] = obs[i].copy()
                info["_final_obs"] = terminated | truncated
                info["final_info"] = {"termination_prob": probs.copy()}
                info["_final_info"] = terminated | truncated
                obs[rows] = self._reset(rows)
        return obs, rewards, terminated, truncated, info

    def _reset(self, rows):
        contexts = [self._context(None, self.np_random) for _ in rows]
        self.core.reset_rows(rows, contexts, self._generator)
        self._steps[rows] = 0
        return self._first_obs(contexts, rows)

    def render(self):
        return None if self.core is None else self._observe(self.core.last)
