"""Train the diffusion transformer (with its reward/termination head) on latents.

    worldsim encode --checkpoint TOKENIZER --data DIR --out LATENTS
    worldsim train dynamics --data LATENTS --out RUN [--config XS] [--steps 3000]
    torchrun --nproc_per_node 2 -m worldsim.cli train dynamics ...   # data-parallel

Windows of `window` consecutive latent frames with the actions between them; every
hyper-parameter is a field of TrainConfig. Checkpoints, logs and resume: training/loop.py.

With `--memory K` the model learns to use retrieved memory (worldsim/memory.py): for the
last frame of each window, the K earlier frames of its episode (before the window) whose
ground-truth camera poses see most of its view come with the batch. Half of each batch
is drawn from windows where the memory is needed: the last view left the window (no
window frame sees 90% of it) and an earlier frame sees at least 90% of it, as when the
agent turns away and back. A tenth of the windows get no memory, so the same model also
predicts without it: that is what memory guidance (`DynamicsConfig.memory_guidance`)
contrasts. With `--rerender-share SHARE --depth DEPTH_RUN` that share of them gets its
memory as a dream with rerender=True does (worldsim/world_model.py, DreamCore): one view,
the frame before the last and what the dream's memory bank would recall re-rendered at
the last frame's pose and fused, all placed by dead reckoning from the actions as the
dream places them, so the model learns how far to trust such views.
`--init CHECKPOINT` starts from a trained world model's or dynamics run's weights; for a
new tokenizer with the same token grid (16x16x4 latents in `--patch 4` against 8x8x8 in
patches of 2) the transformer body carries over and the latent input/output layers start
fresh.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from envs import env_pose_model, gt_names
from training.loop import RunConfig, pick_device, run
from worldsim.checkpoint import NETWORK_OF_KIND, CheckpointError, config_from, load_checkpoint, with_prefix
from worldsim.dataset import WindowDataset, episode_paths, load_meta, open_episode, read_array
from worldsim.dynamics import CONFIGS, Dynamics, DynamicsConfig, event_rises
from worldsim.depth import load_depth_run
from worldsim.memory import (MIN_LIKENESS, SAME_VIEW, SEEN_HERE, PoseTracker, bank_drops, best_views, fit_pose_model,
                             gather, latent_keys, relative_poses, view_overlap, view_points_seen)
from worldsim.objective import diffusion_forcing_loss, distillation_loss, first_dreamed, heads_loss
from worldsim.reproject import rerender
from worldsim.text import TEXT_DIM, whitening
from worldsim.tokenizer import Tokenizer
from worldsim.world_model import WorldModel


@dataclass(kw_only=True)
class TrainConfig(RunConfig):  # data: a latent dataset from `worldsim encode`
    config: str = "XS"  # model size: tiny | XS | S | B | L
    window: int | None = None  # frames per training window (default: the model's context, max_frames); 1 with --text: a first-frame model (worlds' starts from their captions, `worldsim export --first-frame`)
    steps: int = 3000
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.01
    memory: int = 0  # memory frames the generated frame attends to (0: no memory)
    memory_key: str = "auto"  # what memory is keyed by: pose (info['gt']['pose']) | latent (envs without one) | auto: pose when every episode has it
    memory_match: float = 0.0  # what makes half of each batch need its memory: 0 = an exact return (an earlier frame shows the last view, no window frame does); above 0 (pose keys): at least this share of the last view is seen by earlier frames and by no window frame, from any pose
    memory_from_window: bool = False  # (pose keys) memory is what a dream's bank recalls: from every frame before the last, the window's own included, near-copies replaced (at the true poses); the model learns that a recalled neighbouring view is seen from another pose, not the view to paste
    rerender_share: float = 0.0  # with --memory keyed by pose and --depth: share of the windows with memory whose memory is what a dream with rerender=True gives: the frame before the last and the recalled views re-rendered at the last frame's pose and fused into one view
    depth: str | None = None  # a depth run (`worldsim train depth`), or a world model that carries one, that gives --rerender-share's frames their depth
    memory_reproject: bool = False  # memory tokens take the screen column their bearing has in the new view (turns; the env's field of view), so a view seen from another heading lines up
    init: str | None = None  # start from this world model's or dynamics run's weights
    teacher: str | None = None  # distil this world model's guided sampler into one step: the run (from the teacher's weights unless --init) learns to predict in one pass, from the same noise, the frame the teacher samples; it samples in 1 step with no guidance
    end_share: float = 0.0  # share of each batch drawn from windows that end the episode (rare deaths)
    reward_share: float = 0.0  # share of each batch drawn from windows whose last step pays a reward (rare pickups: the model learns to draw what pays, so a dream's head can pay for it); with --events, whose last step has an event
    events: str = ""  # a ground-truth key of per-frame event counts (Crafter: achievements): the heads learn which counts rose at each step, the dream pays 1 the first time each rises in an episode, and the reward head learns the reward less those first rises (Crafter's reward: an achievement pays once an episode, which no pair of frames shows)
    heads_only: bool = False  # train only the reward, end and event heads, on clean real latents (the transformer as --init left it, no denoising): a head added to a trained model in minutes
    end_weight: float = 10.0  # weight of an end in the termination loss: 10 a detector that fires early; 1 calibrated probabilities, for a dream that draws its ends (--sample-ends)
    reward_weight: float = 1.0  # weight of the reward's squared error: a reward far below 1 (Crafter's health, 0.1 a point) is otherwise lost beside the event and end losses
    patch: int | None = None  # latent cells per token side (default: DynamicsConfig's, 2); 4 keeps a 16x16 latent at 16 tokens a frame
    action_dropout: float = 0.0  # share of frames trained without their action, for action guidance at sampling
    sampled_context_share: float = 0.0  # share of windows whose frames before the last sit at the sampler's context noise level, so the last frame is learnt as the dream predicts it (the rest: every frame at its own random level)
    rollout_share: float = 0.0  # share of windows whose frames just before the last are the model's own samples (drawn as a dream draws them, real actions), the last frame still learnt towards the real one: a dream reads its own frames, not real ones
    rollout_frames: int = 4  # with --rollout-share: how many frames before the last are dreamed (from the real frames before them)
    change_weight: float = 0.0  # each latent position's denoising error weighs 1 + this times how much the real latent changed there in the step before (over the batch's mean change; never the frame itself, which would tilt the model towards big changes): small moving things (TakeCover's fireballs) count beside a still background
    action_balance: float = 0.0  # (discrete actions) each frame's denoising error weighs frequency^-balance of the action that led into it in the training data, normalised to a mean of 1 over its frames: 1 gives every action the same total weight, so rare moves (strafes, steps back) are learnt as well as common ones; 0 weighs frames as the data has them
    judge: str | None = None  # a judge of latents (`worldsim train inverse-dynamics` on a latent dataset of this tokenizer): its cross-entropy on each predicted frame beside the frame before (against --judge-target) joins the loss
    judge_weight: float = 0.1  # with --judge: the weight of that cross-entropy beside the denoising error
    judge_target: str = "action"  # with --judge: what each predicted frame should show: action (the action given) | real (what the judge reads from the real pair: a walk into a wall shows no move)
    text: bool = False  # condition each window on the caption of its start (Rooms ground truth; envs/rooms_captions.py)
    text_dropout: float = 0.1  # share of windows given the null text, for text guidance at sampling
    text_whiten: bool = False  # with --text: captions enter whitened by their statistics in the training data, so a caption's small words (an object's side) count as much as its room
    object_share: float = 0.0  # with --text: share of windows starting with an object in view (rare in frames)
    footage: str | None = None  # a latent dataset of the same world trained on without its actions (imported video, gameplay with its actions removed)
    footage_share: float = 0.5  # with --footage: share of each batch drawn from it


def as_tensors(array: np.ndarray):
    """A batch array as a tensor; Dict actions (a structured array, one field per key) as a
    dict of tensors, the form the action encoder takes."""
    if array.dtype.names:
        return {k: torch.from_numpy(np.ascontiguousarray(array[k])) for k in array.dtype.names}
    return torch.from_numpy(array)


class WindowCaptions:
    """The sentence embedding of the descriptive caption of the clip starting at each
    frame of each episode (exact captions from the Rooms ground truth), looked up by
    `batch`; `dropout` of the windows get the null text (zeros), which text guidance
    contrasts."""

    def __init__(self, paths, dropout: float, clip: int = 8):
        from envs.rooms_captions import GT_KEYS, caption, clip_attributes
        from worldsim.text import embed_texts

        texts, objects, self.rows, self.dropout = [], [], {}, dropout
        for path in paths:
            with open_episode(path) as f:
                missing = [f"gt/{k}" for k in GT_KEYS if f"gt/{k}" not in f]
                if missing:
                    raise ValueError(f"{path} lacks {', '.join(missing)}: --text captions windows from the Rooms "
                                     "ground truth (datasets from before gt/room: collect Rooms again and encode it)")
                gt = {k: read_array(f, f"gt/{k}") for k in GT_KEYS}
            n = len(gt["pose"])
            self.rows[str(path)] = len(texts)
            attrs = [clip_attributes(gt, s, min(clip, n - 1 - s)) for s in range(n)]
            texts += [caption(a) for a in attrs]
            objects += [bool(a.objects) for a in attrs]
        self.objects = np.array(objects)  # whether the clip starting at each frame shows an object
        unique = sorted(set(texts))  # far fewer than the frames: one embedding each
        self.table = embed_texts(unique)
        row = {text: i for i, text in enumerate(unique)}
        self.index = np.array([row[text] for text in texts])

    def shows_object(self, path, start: int) -> bool:
        return bool(self.objects[self.rows[str(path)] + start])

    def batch(self, rng, starts) -> np.ndarray:
        """starts: (episode path, first frame) of each window -> (N, 384) float32."""
        text = self.table[self.index[[self.rows[str(path)] + s for path, s in starts]]]
        return np.where(rng.random((len(text), 1)) < self.dropout, 0.0, text).astype(np.float32)


def nothing_to_draw(option: str, share: float, root, field: str) -> ValueError:
    """The error of a share of windows ending on a step with a nonzero `field` when none does."""
    return ValueError(f"{option} {share}: no window of {root}'s train split ends with a step whose {field} is nonzero")


class LatentWindows:
    """Random windows of latents with their actions, rewards and ends; the draw depends
    only on (seed, step, rank). `end_share` of each batch comes from windows whose last
    step ends the episode, so the termination head sees deaths, rare as they are,
    `reward_share` from windows whose last step pays a reward (with `events`, has an
    event), so the model learns to draw the step that pays (an object reached and gone, a
    sapling gathered), and `object_share` (with captions) from windows that start with an
    object in view. With `events` (a gt key) each batch carries the frames' event counts."""

    def __init__(self, root, window, seed, end_share: float = 0.0, captions: WindowCaptions | None = None,
                 object_share: float = 0.0, reward_share: float = 0.0, events: str = ""):
        self.events = events
        self.windows = WindowDataset(root, split="train", context=window, horizon=0, field="latents",
                                     gt_keys=(events,) if events else ())
        self.captions = captions
        if not self.windows.has_actions:
            raise ValueError(f"{root} has no actions; the dynamics model needs action-labelled episodes")
        self.seed, self.end_share, self.reward_share = seed, end_share, reward_share
        self.ending, self.paying = [], []
        if end_share:
            self.ending = self._windows_ending_with(root, "terminated", window, "--end-share", end_share)
        if reward_share:  # with events, the steps that pay are those where an event happens
            self.paying = self._windows_ending_with(root, f"gt/{events}" if events else "rewards", window,
                                                    "--reward-share", reward_share)
        self.object_share, self.showing = object_share, []
        if object_share:
            self.showing = [i for i, (e, t) in enumerate(self.windows.index)
                            if captions.shows_object(self.windows.paths[e], t)]
            if not self.showing:
                raise ValueError(f"--object-share {object_share}: no window of {root} starts with an object in view")

    def _windows_ending_with(self, root, field: str, window: int, option: str, share: float) -> list[int]:
        """The windows whose last step has a nonzero `field` (an end, a reward), or for a
        gt key of per-frame counts, a rise in one of them (an event)."""
        marked = {}
        for e, path in enumerate(self.windows.paths):
            with open_episode(path) as f:
                values = read_array(f, field)
            marked[e] = event_rises(values).any(-1) if field.startswith("gt/") else values != 0
        found = [i for i, (e, t) in enumerate(self.windows.index) if marked[e][t + window - 2]]
        if not found:
            raise nothing_to_draw(option, share, root, field)
        return found

    def batch(self, n, step, rank):
        """A batch of CPU tensors (the training loop moves it to its device)."""
        rng = np.random.default_rng([self.seed, step, rank])
        idx = rng.integers(len(self.windows), size=n)
        start = 0
        for share, pool in ((self.end_share, self.ending), (self.reward_share, self.paying),
                            (self.object_share, self.showing)):
            k = int(round(n * share))
            if k:
                idx[start:start + k] = rng.choice(pool, size=k)
            start += k
        items = [self.windows[int(i)] for i in idx]
        stack = lambda k: as_tensors(np.stack([it[k] for it in items]))  # noqa: E731
        batch = {"z": stack("context").float(), "actions": stack("actions"), "rewards": stack("rewards"),
                 "terminated": stack("terminated")}
        if self.events:
            batch["events"] = stack(f"gt/{self.events}")
        if self.captions:
            starts = [(self.windows.paths[e], t) for e, t in (self.windows.index[int(i)] for i in idx)]
            batch["text"] = torch.from_numpy(self.captions.batch(rng, starts))
        return batch


class FootageWindows:
    """Windows of action-free footage beside the action-labelled `labelled` windows:
    `share` of each batch comes from `root` (actions, if it has any, are not read), with
    `has_action` False, so the model learns what the world looks like and how it moves
    from the footage, and what actions do only from the labelled windows. The heads are
    trained on the labelled windows alone (footage has no rewards or ends to learn from)."""

    def __init__(self, labelled, root, window, seed, share: float):
        if not 0 < share < 1:
            raise ValueError(f"--footage-share must be between 0 and 1 (exclusive), got {share}")
        self.labelled, self.share, self.seed = labelled, share, seed
        self.captions = labelled.captions  # the labelled windows' (footage gets the null text)
        self.windows = WindowDataset(root, split="train", context=window, horizon=0, field="latents")

    def batch(self, n, step, rank):
        if n < 2:
            raise ValueError(f"--footage needs a batch of at least 2 windows (labelled and footage), got {n}")
        k = min(max(int(round(n * self.share)), 1), n - 1)  # both kinds in every batch
        batch = self.labelled.batch(n - k, step, rank)
        rng = np.random.default_rng([self.seed, step, rank, 1])
        z = torch.from_numpy(np.stack([self.windows[int(i)]["context"] for i in rng.integers(len(self.windows), size=k)]))
        zeros = lambda t: t.new_zeros((k, *t.shape[1:]))  # noqa: E731
        footage = {key: ({a: zeros(v) for a, v in value.items()} if isinstance(value, dict) else zeros(value))
                   for key, value in batch.items()}  # no action, reward, end or text: the null of each
        footage["z"] = z.float()
        cat = lambda a, b: torch.cat([a, b]) if not isinstance(a, dict) else {x: torch.cat([a[x], b[x]]) for x in a}  # noqa: E731
        mixed = {key: cat(batch[key], footage[key]) for key in batch}
        mixed["has_action"] = torch.arange(n) < n - k
        return mixed


class RerenderedMemory:
    """The view a dream with rerender=True gives its network as memory (DreamCore), made
    from training latents: the sources decoded by the dataset's tokenizer, given depth by
    a depth run's network, re-rendered at the new pose, fused and encoded again. Frames
    are decoded and given depth in fixed chunks of an episode when first needed (so a
    batch does not depend on which came before it) and kept: about 20 KB a 64x64 frame."""

    CHUNK = 32

    def __init__(self, depth_run: str, meta: dict, fov_deg: float):
        self.depth = load_depth_run(depth_run, meta.get("env_id"), fov_deg, "--data")[0]
        if not meta.get("tokenizer"):
            raise ValueError("--rerender-share decodes the training latents: the dataset must record its tokenizer "
                             "(`worldsim encode` writes it)")
        self.tokenizer = Tokenizer.load(meta["tokenizer"]).eval()
        self.fov_deg = fov_deg
        self.kept = {}  # episode path -> (frames, inverse depth, which chunks are made)

    def _views(self, ep: dict, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(ep["latents"])
        if ep["path"] not in self.kept:
            h, w = self.tokenizer.cfg.frame_size
            self.kept[ep["path"]] = (np.zeros((n, h, w, 3), np.uint8), np.zeros((n, h, w), np.float16),
                                     np.zeros(-(-n // self.CHUNK), bool))
        pixels, inverse, made = self.kept[ep["path"]]
        for c in np.unique(indices // self.CHUNK):
            if not made[c]:
                part = slice(c * self.CHUNK, (c + 1) * self.CHUNK)
                decoded = self.tokenizer.decode(torch.from_numpy(ep["latents"][part]).float()[None])[0]
                pixels[part], inverse[part], made[c] = decoded.numpy(), self.depth.predict(decoded).numpy(), True
        return pixels[indices], inverse[indices]

    @torch.no_grad()
    def __call__(self, episodes: list, indices: np.ndarray, poses: np.ndarray, shown: np.ndarray) -> torch.Tensor:
        """For each of `episodes`, its frames `indices` (R, S; the last frame first) with
        their poses relative to the new view (R, S, 3), `shown` (R, S) those that count
        -> the view's latents (R, C, h, w)."""
        views = [self._views(ep, idx) for ep, idx in zip(episodes, indices)]
        pixels, inverse = (torch.from_numpy(np.stack(v)) for v in zip(*views))
        view = rerender(pixels, inverse.float(), torch.from_numpy(poses), torch.from_numpy(shown), self.fov_deg)
        return self.tokenizer.encode(view[:, None])[:, 0]


class MemoryWindows:
    """Windows as LatentWindows, each with the memory retrieved for its last frame from
    the frames before it. Keyed by pose (the episodes' ground-truth `gt/pose`): the frames
    whose views overlap the last frame's most. Keyed by latent (envs without a pose): the
    frames most like the frame before the last, as the dream retrieves them
    (worldsim/memory.py). Episodes are held in memory."""

    def __init__(self, root, window, seed, k, pose_model, key="pose", match_share=0.5, drop_share=0.1,
                 match: float = 0.0, captions: WindowCaptions | None = None, object_share: float = 0.0,
                 rerender_share: float = 0.0, depth_run: str | None = None, from_window: bool = False,
                 reward_share: float = 0.0):
        """`pose_model`: the env's, or only its view (fov_deg, reach, either optional):
        the motion per action is then fitted from the episodes' poses. `key`: pose,
        latent, or auto (pose when every episode has its poses). `rerender_share` of the
        windows with memory get the dream's re-rendered view, with `depth_run`'s depth.
        `from_window` (pose keys): memory is what a dream's bank recalls (`bank_recall`, at
        the true poses); otherwise the best views among frames before the window."""
        if key not in ("pose", "latent", "auto"):
            raise ValueError(f"--memory-key must be pose, latent or auto, got {key!r}")
        self.paths = episode_paths(root, "train")
        self.episodes = []
        for path in self.paths:
            with open_episode(path) as f:
                if key == "pose" and "gt/pose" not in f:
                    raise ValueError(f"{path} has no gt/pose; memory keyed by pose needs the camera pose of every "
                                     "frame: an env reports it as info[\"gt\"][\"pose\"] = (x, y, yaw) (README, "
                                     "\"Your own env\"); without one, use --memory-key latent")
                if "actions" not in f:
                    raise ValueError(f"{path} has no actions; the dynamics model needs action-labelled episodes")
                if len(f["latents"]) >= window + 1:
                    fields = ("latents", "actions", "rewards", "terminated") + \
                        (("gt/pose",) if key != "latent" and "gt/pose" in f else ())
                    self.episodes.append({"path": path, **{name: read_array(f, name) for name in fields}})
        if not self.episodes:
            raise ValueError(f"{root} has no training episode longer than {window} frames")
        if key == "auto":
            key = "pose" if all("gt/pose" in ep for ep in self.episodes) else "latent"
        for ep in self.episodes:  # keys: latents, or poses in the precision view overlap computes in
            if key == "latent":
                ep["keys"] = latent_keys(ep["latents"].astype(np.float32))
            elif key == "pose":
                ep["gt/pose"] = ep["gt/pose"].astype(np.float64)
        self.window, self.seed, self.k, self.key, self.captions = window, seed, k, key, captions
        self.from_window = from_window
        self.object_share, self.reward_share = object_share, reward_share
        # (episode, start) of every window whose last step pays a reward
        self.paying = [(e, int(t) - window + 2) for e, ep in enumerate(self.episodes)
                       for t in np.flatnonzero(ep["rewards"]) if t - window + 2 >= 1]
        if reward_share and not self.paying:
            raise nothing_to_draw("--reward-share", reward_share, root, "rewards")
        if rerender_share and key != "pose":
            raise ValueError("--rerender-share moves recalled views to the last frame's pose: it needs memory keyed by "
                             "pose (info['gt']['pose'])")
        if from_window and (key != "pose" or match):
            raise ValueError("--memory-from-window recalls as a dream's bank does, by view overlap at the frames' poses: "
                             "it needs memory keyed by pose (info['gt']['pose']) and no --memory-match (which picks "
                             "windows by what frames before the window show)")
        if match and key != "pose":
            raise ValueError(f"--memory-match {match} counts the last view's points that earlier frames see: it needs "
                             "memory keyed by pose (info['gt']['pose']), not by latent")
        if not 0 <= match < 1:
            raise ValueError(f"--memory-match is a share of the view, in [0, 1); got {match}")
        self.match, self.same = match, SAME_VIEW[key]
        self.match_share, self.drop_share = match_share, drop_share
        self.pose_model = None
        if key == "pose":
            if "motion" not in pose_model:
                n_actions = int(max(ep["actions"].max() for ep in self.episodes)) + 1
                pose_model = fit_pose_model([ep["gt/pose"] for ep in self.episodes],
                                            [ep["actions"] for ep in self.episodes], n_actions,
                                            pose_model.get("fov_deg"), pose_model.get("reach"))
            self.pose_model = pose_model
            self.fov, self.reach = pose_model["fov_deg"], pose_model["reach"]
        self.rerender_share = rerender_share
        self.rerenderer = RerenderedMemory(depth_run, load_meta(root), self.fov) if rerender_share else None
        lengths = np.array([len(ep["latents"]) - window for ep in self.episodes], float)
        self.weights = lengths / lengths.sum()
        if self.match:  # a share no window reaches would train on random windows without a word
            found = np.mean([self.draw(np.random.default_rng([seed, k]), True)[2] for k in range(20)])
            if found < 0.5:
                raise ValueError(f"--memory-match {match}: only {found:.0%} of 20 tries found (in 100 draws each) a "
                                 f"window whose last view is {match:.0%} seen by earlier frames and by no window frame; "
                                 "lower it (consecutive frames share most of their view)")

    def _likeness(self, ep, i, frames):
        """How much of frame i's view each of `frames` shows: view overlap of poses, or
        the cosine similarity of latent keys."""
        if self.key == "pose":
            return view_overlap(ep["gt/pose"][i], ep["gt/pose"][frames], self.fov, self.reach)
        return ep["keys"][frames] @ ep["keys"][i]

    def needs_memory(self, ep, s: int, last: int) -> bool:
        """Whether the window starting at s ends on a view only frames before it showed:
        the same view (an exact return), or with `match`, at least that share of the
        last view seen by the frames memory will recall and by no window frame. The
        window, a few frames, is checked before the episode's history."""
        if not self.match:
            return (self._likeness(ep, last, slice(s, last)).max() < self.same and
                    self._likeness(ep, last, slice(0, s)).max() >= self.same)
        poses = ep["gt/pose"]
        in_window = view_points_seen(poses[last], poses[s:last], self.fov, self.reach).any(axis=0)
        if (~in_window).mean() < self.match:
            return False
        seen = view_points_seen(poses[last], poses[:s], self.fov, self.reach)
        recalled = best_views(seen.mean(axis=1), self.k, MIN_LIKENESS["pose"])
        return (seen[recalled].any(axis=0) & ~in_window).mean() >= self.match

    def draw(self, rng, want_match: bool, want_object: bool = False) -> tuple[dict, int, bool]:
        """An episode and window start; with want_match (or want_object), up to 100 draws
        for a window that needs its memory (or starts on an object). Also whether it
        needs its memory."""
        for _ in range(100):
            ep = self.episodes[rng.choice(len(self.episodes), p=self.weights)]
            s = int(rng.integers(1, len(ep["latents"]) - self.window + 1))
            if want_object and not self.captions.shows_object(ep["path"], s):
                continue
            if not want_match:
                return ep, s, False
            if self.needs_memory(ep, s, s + self.window - 1):
                return ep, s, True
        return ep, s, False

    def bank_recall(self, ep, last: int, k: int, true_poses: bool = False) -> np.ndarray:
        """The frames a dream's memory bank (worldsim/memory.py) recalls for frame `last`,
        best view first, at most k. Poses are the dream's own (ep["dream_poses"]),
        dead-reckoned from the actions (walking into a wall still moves them), or with
        `true_poses` the episode's (ep["gt/pose"]); the bank replaces near-copies of a view
        and drops its oldest entry when full, so the frames it still holds are computed
        once an episode, by filling a bank as the dream does."""
        key = "gt/pose" if true_poses else "dream_poses"
        if key == "dream_poses" and key not in ep:
            ep[key] = PoseTracker(self.pose_model["motion"]).path(ep["actions"])
        if f"{key} dropped_at" not in ep:
            ep[f"{key} dropped_at"] = bank_drops(ep[key], self.fov, self.reach)
        poses = ep[key]
        held = np.nonzero(ep[f"{key} dropped_at"][:last] >= last)[0]  # entries in the bank when frame `last` is made
        return held[best_views(view_overlap(poses[last], poses[held], self.fov, self.reach), k, MIN_LIKENESS["pose"])]

    def dream_recall(self, ep, last: int) -> tuple[np.ndarray, np.ndarray]:
        """What a dream's memory re-renders for frame `last`: the frame before it and the
        entries its bank recalls, with their poses relative to the last frame's, (S, 3),
        all the dream's own."""
        sources = np.concatenate([[last - 1], self.bank_recall(ep, last, self.k)]).astype(int)
        poses = ep["dream_poses"]
        return sources, relative_poses(poses[last], poses[sources]).astype(np.float32)

    def item(self, rng, want_match: bool, drop: bool, want_object: bool = False, rerendered: bool = False,
             want_reward: bool = False):
        if want_reward:
            e, s = self.paying[rng.integers(len(self.paying))]
            ep = self.episodes[e]
        else:
            ep, s, _ = self.draw(rng, want_match, want_object)
        last = s + self.window - 1
        end = s + self.window
        window = {"z": ep["latents"][s:end], "actions": ep["actions"][s:end - 1], "rewards": ep["rewards"][s:end - 1],
                  "terminated": ep["terminated"][s:end - 1], "start": (ep["path"], s)}
        if rerendered and not drop:
            sources, poses = self.dream_recall(ep, last)
            if len(sources) > 1:
                return {**window, "sources": (ep, sources, poses)}
            drop = True  # the bank recalls nothing: the dream goes without memory
        query = last if self.key == "pose" else last - 1  # a dream knows the next pose, not the next frame
        if self.from_window:  # true poses: dead reckoning drifts from the frames at every bump into a wall
            order = self.bank_recall(ep, last, 0 if drop else self.k, true_poses=True)
        else:
            order = best_views(self._likeness(ep, query, slice(0, s)), 0 if drop else self.k, MIN_LIKENESS[self.key])
        poses = ep["gt/pose"] if self.key == "pose" else None
        z_mem, feats, valid = gather(ep["latents"], poses, order, None if poses is None else poses[last], self.k,
                                     self.reach if poses is not None else 1.0, ep["latents"].shape[1:])
        slot = np.full(self.k, -1)  # where in the window each memory frame sits (-1: before it, or none)
        slot[:len(order)] = np.where((order >= s) & (order < last), order - s, -1)
        return {**window, "mem_z": z_mem.numpy(), "mem_pose": feats, "mem_valid": valid, "mem_slot": slot}

    def batch(self, n, step, rank):
        """A batch of CPU tensors (the training loop moves it to its device)."""
        rng = np.random.default_rng([self.seed, step, rank])
        drop = rng.random(n) < self.drop_share
        objects = rng.random(n) < self.object_share if self.object_share else np.zeros(n, bool)
        rerendered = rng.random(n) < self.rerender_share if self.rerenderer else np.zeros(n, bool)
        paying = rng.random(n) < self.reward_share if self.reward_share else np.zeros(n, bool)
        items = [self.item(rng, i < n * self.match_share, drop[i], objects[i], rerendered[i], paying[i])
                 for i in range(n)]
        self.rerender_memory([it for it in items if "sources" in it])
        stack = lambda k: as_tensors(np.stack([it[k] for it in items]))  # noqa: E731
        batch = {"z": stack("z").float(), "actions": stack("actions"), "rewards": stack("rewards"),
                 "terminated": stack("terminated"),
                 "memory": (stack("mem_z").float(), stack("mem_pose"), stack("mem_valid")),
                 "memory_slot": stack("mem_slot")}
        if self.captions:
            batch["text"] = torch.from_numpy(self.captions.batch(rng, [it["start"] for it in items]))
        return batch

    def rerender_memory(self, items):
        """Give each item with re-render sources its memory as the dream's: their one
        view in slot 0, seen from the last frame's own pose."""
        if not items:
            return
        episodes, sources, poses = zip(*(it.pop("sources") for it in items))
        most = max(len(src) for src in sources)  # shorter rows repeat their last source, not shown
        indices = np.stack([np.pad(src, (0, most - len(src)), mode="edge") for src in sources])
        padded = np.zeros((len(items), most, 3), np.float32)
        shown = np.zeros((len(items), most), bool)
        for i, p in enumerate(poses):
            padded[i, :len(p)], shown[i, :len(p)] = p, True
        views = self.rerenderer(episodes, indices, padded, shown)
        for it, view in zip(items, views):
            it["mem_z"] = np.zeros((self.k, *view.shape), np.float32)
            it["mem_pose"] = np.zeros((self.k, 4), np.float32)
            it["mem_valid"] = np.zeros(self.k, bool)
            it["mem_z"][0], it["mem_pose"][0], it["mem_valid"][0] = view.numpy(), SEEN_HERE, True
            it["mem_slot"] = np.full(self.k, -1)  # a view of its own, not a window frame


def dataset_pose_model(meta: dict) -> dict:
    """The pose model a latent dataset records, or its env's; {} for envs with none."""
    return meta.get("pose_model") or env_pose_model(meta.get("env_id"), meta.get("env_kwargs", {})) or {}


def build(cfg: TrainConfig, meta: dict) -> Dynamics:
    if "latent_shape" not in meta:
        raise ValueError(f"{cfg.data} is not a latent dataset; make one with `worldsim encode`")
    if cfg.config not in CONFIGS:
        raise ValueError(f"unknown dynamics size {cfg.config!r}; expected one of {', '.join(CONFIGS)}")
    fov = 0.0
    if cfg.memory_reproject:
        pose_model = dataset_pose_model(meta)
        fov = pose_model.get("fov_deg", 0.0)
        if not cfg.memory or not fov:
            raise ValueError("--memory-reproject turns memory views by their pose: it needs --memory, memory keyed by "
                             "pose, and the camera's field of view (the env's pose_model()['fov_deg'])")
    one_step = {"sample_steps": 1, "memory_guidance": 0.0, "action_guidance": 0.0, "text_guidance": 0.0}
    dyn_cfg = DynamicsConfig(latent_shape=tuple(meta["latent_shape"]), action_space=meta["action_space"],
                             events=event_names(cfg, meta),
                             **{**CONFIGS[cfg.config], "memory": cfg.memory, "memory_fov_deg": fov,
                                **({"patch": cfg.patch} if cfg.patch else {}),
                                **({"text_dim": TEXT_DIM, "text_whiten": cfg.text_whiten} if cfg.text else {}),
                                **(one_step if cfg.teacher else {})})
    torch.manual_seed(cfg.seed)  # the initial weights
    model = Dynamics(dyn_cfg)
    init = cfg.init or cfg.teacher
    if init:
        fresh = init_from(model, init, first_frame=cfg.window == 1)
        if fresh:
            print(f"--init {init}: the latent shape or patch changed; {', '.join(fresh)} start fresh", file=sys.stderr)
    if cfg.text and cfg.init:  # the text layer is new to the model it starts from: it learns 10x faster
        model.lr_scales = {"text.": 10.0}
    return model


def event_names(cfg: TrainConfig, meta: dict) -> tuple[str, ...]:
    """The names of the counts `--events` points the heads at (the env's, else key[i])."""
    if not cfg.events:
        return ()
    with open_episode(episode_paths(cfg.data, "train")[0]) as f:
        if f"gt/{cfg.events}" not in f:
            raise ValueError(f"--events {cfg.events}: {cfg.data}'s episodes have no gt/{cfg.events}; they have "
                             f"{sorted(f['gt']) if 'gt' in f else 'no ground truth'}")
        shape = f["gt"][cfg.events].shape
    if len(shape) != 2:
        raise ValueError(f"--events {cfg.events}: expected a vector of counts per frame, (T + 1, E); got {shape}")
    return gt_names(meta.get("env_id"), cfg.events, shape[1])


# The layers that read or write latents: a model for another tokenizer (other channels or
# patch size) can still take the transformer body between them.
LATENT_IO = ("embed.", "final.", "heads.conv.0.")


def resized_positions(table: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """A (rows * cols, d) screen-position table resampled to another token grid
    (bilinear), so that a finer patching starts with the positions its tokens' places had."""
    d = table.shape[-1]
    image = table.T.reshape(1, d, *grid)
    return F.interpolate(image, size=new_grid, mode="bilinear", align_corners=False).reshape(d, -1).T


def init_from(model: Dynamics, path: str, first_frame: bool = False):
    """Load the weights `path` shares with `model` (a world model or a dynamics run);
    parts only `model` has (the memory's pose embedding, the heads' event rows) keep their
    initial values, and so do the latent input/output layers when the latent shape or
    patch size changed. A `first_frame` model (single frames) leaves out the memory layers of `path`."""
    tensors, config = load_checkpoint(path)
    prefix = NETWORK_OF_KIND.get(config.get("kind"))
    if prefix is None:
        raise CheckpointError(f"{path} is a {config.get('kind')!r} checkpoint; --init takes a world model or a dynamics run")
    own = model.state_dict()
    weights = {k: v.float() for k, v in with_prefix(tensors, prefix).items()}
    unused = [k for k in weights if k.startswith(("memory_pose.", "memory_offscreen"))] if not model.cfg.memory else []
    if unused and first_frame:  # a first-frame model (single frames: nothing to recall) takes the rest of one with memory
        print(f"--init {path}: its memory layers are left out (a first-frame run has no memory)", file=sys.stderr)
        weights = {k: v for k, v in weights.items() if k not in unused}
    elif unused:
        raise CheckpointError(f"{path} was trained with memory: pass --memory {config['dynamics'].get('memory')} to "
                              "keep it")
    grid, new_grid = config_from(DynamicsConfig, config, "dynamics", path).token_grid, model.cfg.token_grid
    if grid != new_grid:  # a finer or coarser patching: the body carries over, positions are resampled
        weights["space_pos"] = resized_positions(weights["space_pos"], grid, new_grid)
    out = "heads.out.2."  # the heads' last layer: reward and end rows first, then one per event
    if out + "weight" in weights and own[out + "weight"].shape[0] > weights[out + "weight"].shape[0] == 2:
        for k in (out + "weight", out + "bias"):  # events new to the model: reward and end carry over
            weights[k] = torch.cat([weights[k], own[k][2:]])
    shared = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    left = sorted(set(weights) - set(shared))
    if any(k.startswith("text.") for k in left):
        raise CheckpointError(f"{path} was trained with captions: pass --text to keep its text conditioning")
    if any(k in left for k in ("text_mean", "text_whitening")):
        raise CheckpointError(f"{path} was trained with --text-whiten: pass it to keep its caption whitening")
    if out + "weight" in left and not model.cfg.events:
        raise CheckpointError(f"{path} counts events ({len(weights[out + 'weight']) - 2} of them): pass --events "
                              "with their ground-truth key to keep them")
    if "memory_offscreen" in left:
        raise CheckpointError(f"{path} was trained with --memory-reproject: pass it to keep its memory positions")
    misfit = [k for k in left if not k.startswith(LATENT_IO)]
    if misfit:
        raise CheckpointError(f"{path}: {misfit[:4]}... do not fit this model's config")
    model.load_state_dict(shared, strict=False)
    return left  # left at their initial values


def training_windows(cfg: TrainConfig, meta: dict, window: int):
    """The windows `cfg` trains on (memory, captions, footage as it asks), and the dataset
    facts the run records beside them (its pose model and memory key)."""
    meta = dict(meta)
    if cfg.memory and cfg.end_share:
        raise ValueError("--end-share and --memory do not combine yet: memory windows are drawn by view overlap")
    if cfg.events and (cfg.memory or cfg.footage):
        raise ValueError("--events does not combine with --memory or --footage yet: their windows carry no ground truth")
    captions = WindowCaptions(episode_paths(cfg.data, "train"), cfg.text_dropout) if cfg.text else None
    if cfg.object_share and not cfg.text:
        raise ValueError("--object-share draws windows by their captions: it needs --text")
    if cfg.object_share + cfg.end_share + cfg.reward_share > 1:
        raise ValueError(f"--object-share {cfg.object_share}, --end-share {cfg.end_share} and --reward-share "
                         f"{cfg.reward_share} are shares of one batch: together at most 1")
    if not 0 <= cfg.rerender_share <= 1:
        raise ValueError(f"--rerender-share is a share of the windows with memory, in [0, 1]; got {cfg.rerender_share}")
    if bool(cfg.rerender_share) != bool(cfg.depth):
        raise ValueError("--rerender-share and --depth come together: the share of memory windows re-rendered, and "
                         f"the depth run (`worldsim train depth`) that gives their frames depth; got {cfg.rerender_share} "
                         f"and {cfg.depth}")
    if cfg.memory_from_window and not cfg.memory:
        raise ValueError("--memory-from-window says where memory recalls from: it needs --memory")
    if cfg.rerender_share and not (cfg.memory and cfg.memory_key != "latent"):
        raise ValueError("--rerender-share re-renders memory keyed by pose: it needs --memory and --memory-key pose or auto")
    if cfg.memory:
        data = MemoryWindows(cfg.data, window, cfg.seed, cfg.memory, dataset_pose_model(meta), cfg.memory_key,
                             match=cfg.memory_match, captions=captions, object_share=cfg.object_share,
                             rerender_share=cfg.rerender_share, depth_run=cfg.depth, from_window=cfg.memory_from_window,
                             reward_share=cfg.reward_share)
        meta["pose_model"], meta["memory_key"] = data.pose_model, data.key
        if cfg.memory_reproject and data.key != "pose":
            raise ValueError(f"--memory-reproject turns memory views by their pose, but {cfg.data} is keyed by "
                             f"{data.key!r}: its episodes need gt/pose")
    else:
        data = LatentWindows(cfg.data, window, cfg.seed, cfg.end_share, captions, cfg.object_share, cfg.reward_share,
                             cfg.events)
    if cfg.footage:
        if cfg.memory:
            raise ValueError("--footage and --memory do not combine yet: memory windows are drawn by pose, which "
                             "footage does not have")
        footage_meta = load_meta(cfg.footage)
        if footage_meta.get("latent_shape") != meta.get("latent_shape"):
            raise ValueError(f"--footage {cfg.footage} holds latents of shape {footage_meta.get('latent_shape')}; "
                             f"{cfg.data} has {meta.get('latent_shape')}: encode both with the same tokenizer")
        data = FootageWindows(data, cfg.footage, window, cfg.seed, cfg.footage_share)
    return data, meta


def action_weights(paths, meta: dict, balance: float) -> torch.Tensor:
    """Per action, the weight of a frame it led into: frequency^-balance over the episodes'
    actions, scaled so that the frames' mean weight is 1 (`--action-balance`)."""
    space = meta.get("action_space", {})
    if space.get("type") != "Discrete":
        raise ValueError(f"--action-balance weighs discrete actions; {meta.get('env_id')} has a {space.get('type')} action space")
    counts = np.zeros(space["n"])
    for path in paths:
        with open_episode(path) as f:
            counts += np.bincount(read_array(f, "actions"), minlength=space["n"])
    freq = counts / counts.sum()
    weights = np.where(freq > 0, np.maximum(freq, 1e-12) ** -balance, 0.0)
    return torch.tensor(weights / (freq * weights).sum(), dtype=torch.float32)


def latent_judge(path, meta: dict):
    """The frozen judge of latents `--judge` names, checked to read this dataset's latents."""
    from worldsim.inverse_dynamics import load_inverse_dynamics

    if meta.get("action_space", {}).get("type") != "Discrete":
        raise ValueError(f"--judge reads discrete actions; {meta.get('env_id')} has a "
                         f"{meta.get('action_space', {}).get('type')} action space")
    judge = load_inverse_dynamics(path, meta.get("env_id"), latents=True)
    _, config = load_checkpoint(path)
    seen = config["dataset"]
    if seen.get("latent_shape") != meta.get("latent_shape") or \
            Path(seen.get("tokenizer", "")).name != Path(meta.get("tokenizer", "")).name:
        raise ValueError(f"--judge {path} reads latents {seen.get('latent_shape')} of {seen.get('tokenizer')}; this "
                         f"dataset holds {meta.get('latent_shape')} of {meta.get('tokenizer')}")
    return judge.requires_grad_(False)


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    probe = WindowDataset(cfg.data, split="train", context=1, horizon=0, field="latents")
    model = build(cfg, probe.meta)
    window = cfg.window or model.cfg.max_frames
    if window > model.cfg.max_frames:
        raise ValueError(f"window {window} is longer than the model's context of {model.cfg.max_frames} frames")
    data, meta = training_windows(cfg, probe.meta, window)
    if window == 1:  # single frames: no step for the reward and end heads to learn (and DDP needs every grad used)
        model.heads.requires_grad_(False)
    if cfg.text_whiten:
        if not cfg.text:
            raise ValueError("--text-whiten whitens the captions: it needs --text")
        if not model.text_mean.any():  # not fitted (nor inherited from --init): the training captions' statistics
            model.set_text_whitening(*whitening(data.captions.table))
            torch.nn.init.zeros_(model.text.weight)  # a text layer --init learnt on raw embeddings cannot read these
            torch.nn.init.zeros_(model.text.bias)
    device = pick_device(cfg.device)
    config = {"kind": "dynamics", "dynamics": asdict(model.cfg), "train": asdict(cfg), "dataset": meta}
    tokens = (window + cfg.memory) * model.cfg.tokens_per_frame
    if cfg.heads_only:
        if not cfg.init or cfg.teacher:
            raise ValueError("--heads-only trains the heads of a trained model: it needs --init MODEL, and no --teacher")
        model.requires_grad_(False)
        model.heads.requires_grad_(True)
        loss_of = lambda m, b: heads_loss(m, **b, end_weight=cfg.end_weight, reward_weight=cfg.reward_weight)  # noqa: E731
    elif cfg.teacher:
        if (cfg.footage or cfg.action_dropout or cfg.sampled_context_share or cfg.action_balance or cfg.judge
                or cfg.rollout_share or cfg.change_weight):
            raise ValueError("--teacher learns the teacher's samples for the given actions: drop --footage, "
                             "--action-dropout (the teacher's action guidance is distilled in), --action-balance, "
                             "--change-weight, --judge, --rollout-share and --sampled-context-share (the student "
                             "reads the sampler's context already)")
        teacher = WorldModel.load(cfg.teacher, device=device).dynamics.eval().requires_grad_(False)
        body = ("latent_shape", "patch", "d_model", "n_layers", "memory", "text_dim", "memory_fov_deg")
        if any(getattr(teacher.cfg, k) != getattr(model.cfg, k) for k in body) or teacher.cfg.max_frames < window:
            raise ValueError(f"--teacher {cfg.teacher} is {({k: getattr(teacher.cfg, k) for k in body})} with "
                             f"{teacher.cfg.max_frames} frames of context; this run builds "
                             f"{({k: getattr(model.cfg, k) for k in body})} for windows of {window}: pass the "
                             "teacher's --config, --patch, --memory, --text, --memory-reproject")
        model.heads.requires_grad_(False)  # the teacher's, kept: distillation gives them no loss
        loss_of = lambda m, b: distillation_loss(m, teacher, **b)  # noqa: E731
    else:
        if not 0 <= cfg.sampled_context_share <= 1:
            raise ValueError(f"--sampled-context-share is a share of the windows, in [0, 1]; got {cfg.sampled_context_share}")
        if not 0 <= cfg.rollout_share <= 1:
            raise ValueError(f"--rollout-share is a share of the windows, in [0, 1]; got {cfg.rollout_share}")
        if cfg.rollout_share:
            first_dreamed(window, cfg.rollout_frames)  # a window too short says so before the first step
        if cfg.rollout_share and cfg.footage:
            raise ValueError("--rollout-share dreams with the real actions, which footage does not have: drop --footage")
        weights = action_weights(probe.paths, meta, cfg.action_balance).to(device) if cfg.action_balance else None
        if weights is not None:
            config["action_weights"] = weights.tolist()
        judge = latent_judge(cfg.judge, meta).to(device) if cfg.judge else None
        loss_of = lambda m, b: diffusion_forcing_loss(m, **b, action_dropout=cfg.action_dropout,  # noqa: E731
                                                      end_weight=cfg.end_weight, reward_weight=cfg.reward_weight,
                                                      sampled_context_share=cfg.sampled_context_share,
                                                      action_weights=weights, judge=judge,
                                                      judge_weight=cfg.judge_weight, judge_target=cfg.judge_target,
                                                      rollout_share=cfg.rollout_share,
                                                      rollout_frames=cfg.rollout_frames,
                                                      change_weight=cfg.change_weight)
    return run(model, cfg, "dynamics", config,
               batch_at=lambda step, rank: data.batch(cfg.batch_size, step, rank),
               loss_of=loss_of,
               items_per_batch=lambda b: b["z"].shape[0] * tokens, device=device, progress=progress)

