"""The world model as a Gymnasium environment: `worldsim/Dream-v0`.

    env = gymnasium.make("worldsim/Dream-v0")                      # the shipped Rooms model
    env = gymnasium.make("worldsim/Dream-v0", checkpoint="my.safetensors", obs_type="latent")
    envs = gymnasium.make_vec("worldsim/Dream-v0", num_envs=16, vectorization_mode="vector_entry_point")

`reset(options=...)` starts from a real start frame held with the checkpoint (default),
from a dataset episode ({"episode": path} or {"episode": (path, start)}), or from given
context ({"context": {"frames": (T, H, W, 3) uint8, "actions": the T-1 actions between
them}}), or, with a text-conditioned model, from text ({"prompt": str}: rewritten into the
caption style, the first frame made from it, the text kept for every step; info["caption"]
says what was used; a vector env's autoreset starts from a start frame and the null text);
`step(a)` then predicts the frame that follows the last given one, as if `a`
were taken there. Reward and termination come from the model's heads, truncation from
`max_steps`. The vector env advances all sub-envs in one batched forward pass.
`memory=False` turns off the latent memory of a model trained with one (on by default);
`memory_guidance` overrides how strongly recalled views are followed (worldsim/sampler.py).
`sample_ends=True` draws each step's termination from the head's probability instead of
thresholding it at 0.5: an uncertain model then ends episodes as often as it believes
they end, which leaves an agent less room to exploit it. `uncertainty=True` samples each
frame twice and puts the samples' disagreement in info["uncertainty"] (DreamCore): a
researcher can penalise or end the steps where the model does not know what comes next.
"""

from __future__ import annotations

import copy
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from worldsim.spaces import space_from_dict

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "rooms.safetensors"
START_OPTIONS = ("context", "episode", "prompt")  # the reset options: one way to start


def load_world_model(checkpoint, env_id: str | None = None, device: str = "cpu"):
    from worldsim.checkpoint import CheckpointError, checkpoint_kind
    from worldsim.world_model import WorldModel

    if isinstance(checkpoint, torch.nn.Module):  # a loaded world model, latent or pixel
        model = checkpoint
    else:
        path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
        if not path.exists():
            raise CheckpointError(f"no world model at {path}; expected a checkpoint from `worldsim export`"
                                  + (" (the shipped Rooms model is missing from this install)" if checkpoint is None else ""))
        from worldsim.pixel_world_model import KIND, PixelWorldModel
        model = (PixelWorldModel if checkpoint_kind(path) == KIND else WorldModel).load(path, device=device)
    if env_id is not None and model.info.get("env_id") != env_id:
        raise CheckpointError(f"the world model was trained on {model.info.get('env_id')!r}, not {env_id!r}")
    return model


class _DreamBase:
    """What the single and the vector env share: loading, spaces, contexts, observations."""

    def _setup(self, checkpoint, obs_type, max_steps, sample_steps, env_id, device, memory, sample_ends,
               memory_guidance, uncertainty, rerender):
        if obs_type not in ("rgb", "latent"):
            raise ValueError(f"obs_type must be 'rgb' or 'latent', got {obs_type!r}")
        self.model = load_world_model(checkpoint, env_id, device)
        self.obs_type, self.max_steps, self.memory, self.sample_ends = obs_type, max_steps, memory, sample_ends
        # Fails now, not at reset, if memory or re-rendering is asked of a model without it.
        self.model.use_rerender(rerender, self.model.use_memory(memory))
        self.memory_guidance, self.uncertainty, self.rerender = memory_guidance, uncertainty, rerender
        self.sample_steps = sample_steps or self.model.dynamics.cfg.sample_steps
        self.single_action_space = space_from_dict(self.model.info["action_space"])
        self.action_meanings = tuple(self.model.info.get("action_meanings") or ())
        latent = self.model.dynamics.cfg.latent_shape
        self.single_observation_space = (gym.spaces.Box(0, 255, self.model.frame_shape, np.uint8) if obs_type == "rgb"
                                         else gym.spaces.Box(-np.inf, np.inf, latent, np.float32))

    def _check_options(self, options, known=START_OPTIONS) -> dict:
        """Reset options as a dict, refusing keys it does not know (a misspelt key would
        otherwise be ignored) and more than one way to start."""
        if options is None:
            return {}
        if not isinstance(options, dict):
            raise ValueError(f"reset options must be a dict with one of the keys {', '.join(known)}, got {options!r}")
        unknown = [k for k in options if k not in known]
        if unknown:
            raise ValueError(f"unknown reset option {', '.join(map(repr, unknown))}; known keys: {', '.join(known)}")
        starts = [k for k in START_OPTIONS if k in options]
        if len(starts) > 1:
            raise ValueError(f"reset options give {' and '.join(starts)}; give one way to start")
        return options

    def _context(self, options, rng):
        """(frames, actions) to start from, validated against the model."""
        options = self._check_options(options)
        h, w, _ = self.model.frame_shape
        if "prompt" in options:
            return self._prompt_context(options["prompt"], rng)
        if "episode" in options:
            return self._episode_context(options["episode"])
        if "context" in options:
            ctx = options["context"]
            if not isinstance(ctx, dict):
                raise ValueError(f"context must be a dict {{'frames': (T, {h}, {w}, 3) uint8, 'actions': the T-1 "
                                 f"actions between them}}, got {ctx!r}")
            frames = np.asarray(ctx.get("frames"))
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (h, w, 3) or len(frames) < 1:
                raise ValueError(f"context frames must be uint8 (T, {h}, {w}, 3) with T >= 1, "
                                 f"got {frames.dtype} {frames.shape}")
            frames = np.ascontiguousarray(frames)  # views such as frames[..., ::-1] have strides torch refuses
            given = ctx.get("actions")
            actions = np.zeros((0,), np.int64) if given is None else np.asarray(given)
            if actions.ndim == 0 or len(actions) != len(frames) - 1:
                got = "none" if given is None else repr(given) if actions.ndim == 0 else len(actions)
                raise ValueError(f"context needs the {len(frames) - 1} actions between its {len(frames)} frames "
                                 f"(actions[i] led from frame i to i+1), got {got}")
            for a in actions:
                if not self._valid(a):
                    raise ValueError(f"context action {a!r} is outside the action space {self.single_action_space}; "
                                     f"expected {self._expected()}")
            return frames, actions.astype(self.single_action_space.dtype)
        frames = self.model.start_frames[rng.integers(len(self.model.start_frames))][None]
        return frames, np.zeros((0,), np.int64)

    def _prompt_context(self, prompt, rng):
        """(first frame, no actions, text embedding, {"prompt", "caption"}) of a world made
        from a prompt: the prompt is rewritten into the caption style the model was
        trained on (envs/rooms_captions.py); the reset's info says what was used."""
        from envs.rooms_captions import rewrite_prompt
        from worldsim.text import embed_texts

        if not self.model.dynamics.cfg.text_dim:
            raise ValueError("this world model has no text conditioning (text_dim=0); start from a start frame, "
                             "an episode or a context instead of a prompt, or use a model trained with --text")
        _, text = rewrite_prompt(prompt, int(rng.integers(2**31)))
        embedding = embed_texts([text])[0]
        generator = torch.Generator(device=self.model.device).manual_seed(int(rng.integers(2**31)))
        return (self.model.frame_from_text(embedding, generator)[None], np.zeros((0,), np.int64), embedding,
                {"prompt": prompt, "caption": text})

    def _episode_context(self, ref):
        """(frames, actions) from a dataset episode: `path` or `(path, start)`."""
        from worldsim.dataset import read_episode

        if isinstance(ref, (str, Path)):
            path, start = ref, 0
        elif isinstance(ref, (tuple, list)) and len(ref) == 2:
            path, start = ref
        else:
            raise ValueError(f"episode must be a path or (path, start frame), got {ref!r}")
        episode = read_episode(path)
        if episode.actions is None:
            raise ValueError(f"{path} has no actions; the dream starts from action-labelled episodes")
        if episode.frames.shape[1:] != self.model.frame_shape:
            raise ValueError(f"{path} has frames of {episode.frames.shape[1:]}; this world model takes "
                             f"{self.model.frame_shape}")
        length = len(episode.frames)
        if not isinstance(start, (int, np.integer)) or not 0 <= start < length:
            raise ValueError(f"episode start {start!r} is outside {path}, which has {length} frames; "
                             f"expected an integer in [0, {length})")
        n = min(self.model.dynamics.cfg.max_frames - 1, length - start)
        return episode.frames[start:start + n], episode.actions[start:start + n - 1]

    def _ends(self, probs: np.ndarray) -> np.ndarray:
        """Episode ends from the head's probabilities: drawn (sample_ends) or above 0.5."""
        if self.sample_ends:
            return self.np_random.random(len(probs)) < probs
        return probs > 0.5

    def _valid(self, a) -> bool:
        """Whether `a` is one action of the single-env space."""
        return in_space(self.single_action_space, a)

    def _expected(self) -> str:
        """What an action must be, in words, for error messages."""
        space = self.single_action_space
        if isinstance(space, gym.spaces.Discrete):
            names = f" ({', '.join(self.action_meanings)})" if self.action_meanings else ""
            return f"an integer in [{space.start}, {space.start + space.n}){names}"
        return f"a {space.dtype} array of shape {space.shape} in {space}"

    def _decode(self, z) -> np.ndarray:
        """latents (N, C, h, w) -> RGB frames (N, H, W, 3) uint8."""
        with torch.no_grad():
            return self.model.decode(z[:, None])[:, 0].cpu().numpy()

    def _observe(self, z):
        """latents (N, C, h, w) just dreamed -> observations (N, ...). A re-rendering core
        has decoded them already, for its memory."""
        if self.obs_type == "latent":
            return z.cpu().numpy().astype(np.float32)
        # A copy: the core writes its frames in place, and the caller owns what it is given.
        return self.core.last_pixels.cpu().numpy().copy() if self.core.rerender else self._decode(z)

    def get_state(self) -> dict:
        """A copy of the dream's whole state (the model's KV cache, memory, clocks, the
        env's step counts and random state): `set_state` of it, then the same actions,
        gives the same frames. For planners that branch in the dream (CEM, MPC, tree search)."""
        if self.core is None:
            raise RuntimeError("get_state() needs a running dream; call reset() first")
        return {"core": self.core.get_state(), "env": copy.deepcopy(self._env_state()),
                "generator": self._generator.get_state(), "np_random": copy.deepcopy(self.np_random.bit_generator.state)}

    def set_state(self, state: dict):
        """Continue from a `get_state()` of a dream env with the same model (and as many
        sub-envs); the state stays valid, so it can be restored again."""
        if not (isinstance(state, dict) and {"core", "env", "generator", "np_random"} <= state.keys()):
            raise ValueError("set_state expects a dict from get_state() (keys core, env, generator, np_random)")
        rows, same_kind = state["core"].get("rows"), set(state["env"]) == set(self._env_state())
        if rows != self._rows or not same_kind:
            source = f"{rows} rows" + ("" if same_kind else " of the other kind of dream env")
            raise ValueError(f"this dream state holds {source}; this {type(self).__name__} has {self._rows}")
        if self.core is None:
            self.core = self._new_core()
            self._generator = torch.Generator(device=self.model.device)
        self.core.set_state(state["core"])
        for name, value in copy.deepcopy(state["env"]).items():
            setattr(self, name, value)
        self._generator.set_state(state["generator"])
        self.np_random.bit_generator.state = copy.deepcopy(state["np_random"])

    def _new_core(self):
        return self.model.new_core(self._rows, self.sample_steps, self.memory, memory_guidance=self.memory_guidance,
                                   uncertainty=self.uncertainty, rerender=self.rerender)

    def _info(self, row: int, prob: float, steps: int) -> dict:
        """One env's info (the vector env batches them as gymnasium does)."""
        info = {"denoising_steps": self.sample_steps, "termination_prob": prob, "context_frames": self.core.context_frames,
                "steps": steps, "memory_frames": int(self.core.retrieved[row])}
        if self.uncertainty:
            info["uncertainty"] = float(self.core.spread[row]) if steps else 0.0
        if self.core.dyn.cfg.events:
            info["events"] = self.core.happened[row].copy()
        return info


def in_space(space: gym.Space, a) -> bool:
    """Whether `a` is a member of `space`, integers of any numpy kind welcome. Floats and
    strings never pass for integer spaces: a cast would truncate or parse them."""
    a = np.asarray(a)
    if a.dtype.kind not in ("biuf" if space.dtype.kind == "f" else "biu"):
        return False
    cast = a.astype(space.dtype)
    return bool(np.array_equal(cast, a) and space.contains(cast))  # equal: nothing wrapped round in the cast


class DreamEnv(_DreamBase, gym.Env):
    """A world model stepped as a Gymnasium env: `gymnasium.make("worldsim/Dream-v0")`.

    ## Description
    Each step the diffusion transformer generates the next frame's latent from the
    context (the last frames, in its KV cache), the action and, where the model has
    one, the latent memory of views that left the context; the tokenizer decodes it. A
    pixel world model (worldsim/pixel_world_model.py) draws the frame itself from its
    last frames, with no tokenizer and no memory.
    The vector env (`DreamVectorEnv`) steps many such dreams in one batched pass.

    ## Action Space
    The action space of the env the model was trained on (`model.info["action_space"]`:
    `Discrete(7)` for the shipped Rooms model, a Dict for MineRL).

    ## Observation Space
    `obs_type="rgb"`: `Box(0, 255, frame_shape, uint8)`, the decoded frame.
    `obs_type="latent"`: `Box(-inf, inf, (C, h, w), float32)`, the tokenizer's latent,
    never decoded (fast agents; `render()` still decodes).

    ## Rewards
    The model's reward head on each transition (Rooms: about 1 where an object is
    reached). A model with counted events (Crafter's achievements, `model.dynamics.cfg.events`)
    adds 1 for each event its head detects that the episode has not had yet, as Crafter
    pays an achievement only the first time; an episode started from given frames has had
    none.

    ## Starting State
    `reset(options=...)`: a real start frame held with the checkpoint (default), a dataset
    episode (`{"episode": path}` or `(path, start)`), given context (`{"context":
    {"frames", "actions"}}`), or, for a text-conditioned model, a prompt (`{"prompt":
    str}`; the rewritten caption comes back in `info["caption"]`).

    ## Episode End
    Terminated when the termination head's probability passes 0.5 (or, with
    `sample_ends=True`, when a draw from it says so); truncated at `max_steps`.

    ## Info
    `termination_prob`, `steps`, `context_frames`, `memory_frames` (views recalled for this
    frame; with rerender, fused into the one view the network sees), `denoising_steps`, and with `uncertainty=True` `uncertainty` (the disagreement
    of two samples of the frame); with counted events, `events` (E,) bool: those the head
    detected in this step, in the order of `model.dynamics.cfg.events`.

    ## Arguments
        checkpoint: world model file or a loaded WorldModel (default: the shipped Rooms model).
        obs_type: "rgb" or "latent".
        max_steps: truncation limit.
        sample_steps: denoising steps per frame (default: the model's).
        env_id: the env the model must have been trained on (checked when given).
        device: where the model runs ("cpu", "cuda").
        render_mode: "rgb_array" or "human".
        memory: False turns a trained memory off; None keeps the model's.
        sample_ends: draw terminations instead of thresholding them.
        memory_guidance: overrides how strongly recalled views are followed.
        uncertainty: sample each frame twice and report the spread.
        rerender: re-render recalled views from the dream's new pose with the model's depth
            network (the shipped Rooms model carries one): objects come back from new poses,
            long replays lose some fidelity (RESULTS.md).

    `get_state()` / `set_state()` fork the dream: the same state, actions and seed give
    the same frames.

    ## Version History
    * v0: the first and only version.
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 15}
    _rows = 1

    def __init__(self, checkpoint=None, obs_type: str = "rgb", max_steps: int = 500, sample_steps: int | None = None,
                 env_id: str | None = None, device: str = "cpu", render_mode: str | None = None,
                 memory: bool | None = None, sample_ends: bool = False, memory_guidance: float | None = None,
                 uncertainty: bool = False, rerender: bool = False):
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self._setup(checkpoint, obs_type, max_steps, sample_steps, env_id, device, memory, sample_ends, memory_guidance,
                    uncertainty, rerender)
        self.action_space, self.observation_space = self.single_action_space, self.single_observation_space
        self.render_mode = render_mode
        self.core, self._steps, self._done, self._frame = None, None, False, None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        frames, actions, *text = self._context(options, self.np_random)
        self._generator = torch.Generator(device=self.model.device).manual_seed(int(self.np_random.integers(2**31)))
        self.core = self._new_core()
        self.core.reset_rows([0], [(frames, actions, *text)], self._generator)
        self._steps, self._done, self._frame = 0, False, frames[-1]
        obs = frames[-1].copy() if self.obs_type == "rgb" else self.core.last[0].cpu().numpy().astype(np.float32)
        if self.render_mode == "human":
            self.render()
        info = self._info(0, 0.0, 0)
        if text:  # the rewritten prompt the world was made from
            info.update(text[1])
        return obs, info

    def _env_state(self) -> dict:
        return {"_steps": self._steps, "_done": self._done, "_frame": self._frame}

    def step(self, action):
        if self.core is None:
            raise RuntimeError("DreamEnv.step() called before reset(); call env.reset() first")
        if self._done:
            raise RuntimeError("DreamEnv.step() called after the episode ended; call env.reset() first")
        if not self._valid(action):
            raise ValueError(f"action {action!r} is outside the action space {self.action_space}; "
                             f"expected {self._expected()}")
        z, reward, prob = self.core.step(np.asarray(action, self.action_space.dtype)[None], self._generator)
        self._steps += 1
        terminated = bool(self._ends(prob)[0])
        truncated = self._steps >= self.max_steps
        self._done = terminated or truncated
        obs = self._observe(z)[0]
        self._frame = obs if self.obs_type == "rgb" else None  # latent observations: decoded when rendered
        if self.render_mode == "human":
            self.render()
        return obs, float(reward[0]), terminated, truncated, self._info(0, float(prob[0]), self._steps)

    def render(self):
        """The current frame as RGB, whatever the observation type."""
        if self.core is None:
            return None
        if self._frame is None:
            self._frame = self._decode(self.core.last)[0]
        if self.render_mode == "human":
            from envs.window import show

            show("worldsim dream", self._frame)
            return None
        return self._frame.copy()


class DreamVectorEnv(_DreamBase, gym.vector.VectorEnv):
    """N dream envs advanced in one batched forward pass, with per-env resets.

    Autoreset follows gymnasium: NEXT_STEP (default) resets a finished sub-env on the
    following step; SAME_STEP resets it at once and puts its last observation in
    info["final_obs"] (and its info in info["final_info"]); DISABLED leaves it to
    `reset(options={"reset_mask": mask})`, which resets the rows where mask is True.
    Infos are batched as gymnasium's: an array per key, with a `_key` mask of the rows
    that have it."""

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, checkpoint=None, obs_type: str = "rgb", max_steps: int = 500,
                 sample_steps: int | None = None, env_id: str | None = None, device: str = "cpu",
                 autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP, render_mode: str | None = None,
                 memory: bool | None = None, sample_ends: bool = False, memory_guidance: float | None = None,
                 uncertainty: bool = False, rerender: bool = False):
        self._setup(checkpoint, obs_type, max_steps, sample_steps, env_id, device, memory, sample_ends, memory_guidance,
                    uncertainty, rerender)
        self.num_envs, self._rows, self.render_mode = num_envs, num_envs, render_mode
        self.autoreset_mode = gym.vector.AutoresetMode(autoreset_mode)
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.core, self._obs, self._generator = None, None, None
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._ended = np.zeros(num_envs, dtype=bool)  # ended at the last step and not reset since

    def reset(self, *, seed=None, options=None):
        options = dict(self._check_options(options, (*START_OPTIONS, "reset_mask")))
        mask = options.pop("reset_mask", None)
        rows = np.arange(self.num_envs) if mask is None else self._mask_rows(mask)
        super().reset(seed=seed)
        generator = self._generator
        if mask is None or seed is not None:
            generator = torch.Generator(device=self.model.device).manual_seed(int(self.np_random.integers(2**31)))
        contexts = [self._context(options, self.np_random) for _ in rows]  # checked before anything changes
        self._generator = generator
        if mask is None:
            self.core = self._new_core()
            self._obs = np.zeros(self.observation_space.shape, self.observation_space.dtype)
        self._obs[rows], infos = self._reset_rows(rows, contexts)
        return self._obs.copy(), self._batch_infos({}, rows, infos)

    def _env_state(self) -> dict:
        return {"_steps": self._steps, "_ended": self._ended, "_obs": self._obs}

    def _mask_rows(self, mask) -> np.ndarray:
        """The rows a reset_mask names, checked as gymnasium checks it."""
        if self.core is None:
            raise RuntimeError("reset(options={'reset_mask': ...}) resets some sub-envs of a running batch; "
                               "call envs.reset() without it first")
        if not (isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == (self.num_envs,)):
            raise ValueError(f"options['reset_mask'] must be a numpy bool array of shape ({self.num_envs},), "
                             f"got {mask!r}")
        if not mask.any():
            raise ValueError("options['reset_mask'] must have at least one True row")
        return np.nonzero(mask)[0]

    def _reset_rows(self, rows, contexts=None):
        """Start `rows` afresh (from start frames unless given contexts): their first
        observations and infos."""
        contexts = contexts or [self._context(None, self.np_random) for _ in rows]
        self.core.reset_rows(rows, contexts, self._generator)
        self._steps[rows] = 0
        self._ended[rows] = False
        obs = (np.stack([context[0][-1] for context in contexts]) if self.obs_type == "rgb"
               else self.core.last[list(rows)].cpu().numpy().astype(np.float32))
        infos = [self._info(row, 0.0, 0) for row in rows]
        for info, context in zip(infos, contexts):
            if len(context) > 3:  # the rewritten prompt the world was made from
                info.update(context[3])
        return obs, infos

    def _batch_infos(self, batched: dict, rows, infos) -> dict:
        for row, info in zip(rows, infos):
            batched = self._add_info(batched, info, row)
        return batched

    def step(self, actions):
        if self.core is None:
            raise RuntimeError("DreamVectorEnv.step() called before reset(); call envs.reset() first")
        if not in_space(self.action_space, actions):
            raise ValueError(f"actions {actions!r} are outside the batched action space {self.action_space}; "
                             f"expected {self.num_envs} actions, each {self._expected()}")
        if self.autoreset_mode == gym.vector.AutoresetMode.DISABLED and self._ended.any():
            raise RuntimeError(f"sub-envs {np.nonzero(self._ended)[0].tolist()} ended and autoreset_mode is DISABLED; "
                               "reset them with envs.reset(options={'reset_mask': mask}) before stepping")
        z, rewards, probs = self.core.step(np.asarray(actions, self.action_space.dtype), self._generator)
        self._steps += 1
        obs = self._observe(z)
        terminated = self._ends(probs)
        truncated = self._steps >= self.max_steps
        rewards = rewards.astype(np.float64)
        infos = [self._info(row, float(probs[row]), int(self._steps[row])) for row in range(self.num_envs)]
        batched = {}
        if self.autoreset_mode == gym.vector.AutoresetMode.NEXT_STEP:
            rows = np.nonzero(self._ended)[0]
            if len(rows):  # these ended last step: this step is their reset
                obs[rows], fresh = self._reset_rows(rows)
                rewards[rows], terminated[rows], truncated[rows] = 0.0, False, False
                for row, info in zip(rows, fresh):
                    infos[row] = info
            self._ended = terminated | truncated
        elif self.autoreset_mode == gym.vector.AutoresetMode.SAME_STEP:
            rows = np.nonzero(terminated | truncated)[0]
            if len(rows):
                batched = self._batch_infos(batched, rows, [{"final_obs": obs[row].copy(), "final_info": infos[row]}
                                                            for row in rows])
                obs[rows], fresh = self._reset_rows(rows)
                for row, info in zip(rows, fresh):
                    infos[row] = info
        else:  # DISABLED: ended rows wait for reset(options={"reset_mask": ...})
            self._ended = terminated | truncated
        self._obs = obs.copy()
        return obs, rewards, terminated, truncated, self._batch_infos(batched, range(self.num_envs), infos)

    def render(self):
        """The sub-envs' current frames as RGB (N, H, W, 3), whatever the observation type."""
        return None if self.core is None else self._decode(self.core.last)
