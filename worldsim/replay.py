"""Held-out episodes replayed in the dream with their real actions, scored against the
real frames: the figure every world model here is judged by.

For windows of a split: give `context` real frames, dream `max(horizons)` steps with the
episode's real actions, and score the dream at each horizon (PSNR of the mean squared
error pooled over windows, and SSIM) beside its baselines: copy-last-frame (the last
context frame held) and the tokenizer's reconstruction of the real frame (the ceiling).
The reward and termination heads are scored as detectors on the same split's real
transitions: precision and recall of pickups and ends, beside always-zero.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from worldsim.cells import cell_scores
from worldsim.dataset import episode_paths, read_episode
from worldsim.dynamics import RewardEndHead, event_rises, first_rises
from worldsim.tokenizer import psnr_pooled, ssim
from worldsim.world_model import DreamCore


def replay_windows(data: str, context: int, length: int, count: int, split: str = "test"):
    """Up to `count` (frames, actions) windows of context + length frames of `split`."""
    out = []
    for path in episode_paths(data, split):
        e = read_episode(path)
        for s in range(0, len(e) - context - length + 2, max(length // 2, 1)):
            out.append((e.frames[s:s + context + length], e.actions[s:s + context + length - 1]))
            if len(out) == count:
                return out
    return out


def dream_windows(model, frames: np.ndarray, actions: np.ndarray, context: int, memory=None,
                  sample_steps: int | None = None, rerender: bool = False, batch: int = 8) -> np.ndarray:
    """The dream of windows (N, context + L, H, W, 3) from their first `context` frames,
    taking their real actions (N, context + L - 1): (N, L, H, W, 3), `batch` windows at a
    time, each batch drawn with its first window's index as seed."""
    c = context
    return np.concatenate([model.rollout(frames[i:i + batch, :c], actions[i:i + batch, :c - 1],
                                         actions[i:i + batch, c - 1:], steps=sample_steps, seed=i, memory=memory,
                                         rerender=rerender)[0]
                           for i in range(0, len(frames), batch)])


def baselines(model, frames: np.ndarray, context: int) -> dict:
    """What every replayed dream is set beside, for windows (N, context + L, H, W, 3):
    `copy_last_frame` (the last context frame held) and `tokenizer_ceiling` (each real
    frame encoded and decoded: the best any dream of this tokenizer can draw), (N, L, H, W, 3)."""
    real = frames[:, context:]
    with torch.no_grad():
        ceiling = np.stack([model.decode(model.encode(real[i:i + 1]))[0].cpu().numpy() for i in range(len(real))])
    return {"copy_last_frame": np.repeat(frames[:, context - 1:context], real.shape[1], 1),
            "tokenizer_ceiling": ceiling}


def replay_scores(model, data: str, context: int = 4, horizons=(1, 4, 16, 64), count: int = 32,
                  split: str = "test", sample_steps: int | None = None, batch: int = 8, rerender: bool = False,
                  judge=None, cells=None) -> dict:
    """PSNR and SSIM by horizon of the dream (memory on and off when the model has memory;
    `rerender`: memory re-rendered from new poses), copy-last-frame and the tokenizer
    ceiling, on `count` windows of `split`. With `judge` (worldsim/inverse_dynamics.py),
    also `<name>_shown`: the share of steps, between consecutive horizons, whose real
    action the judge reads from the frame before and the frame. With `cells` (a grid
    world's `worldsim.cells.CellReader`), also `<name>_cells`: what each prediction draws
    in the view's cells against what the real frame shows (`cell_scores`), beside a dream
    of open grass only (`grass_only_cells`)."""
    length = max(horizons)
    ws = replay_windows(data, context, length, count, split)
    if not ws:
        raise ValueError(f"{data}: no {split} episode is long enough for {context} + {length} frames")
    frames, actions = np.stack([w[0] for w in ws]), np.stack([w[1] for w in ws])
    c = context

    def rollout(memory):
        return dream_windows(model, frames, actions, c, memory, sample_steps, rerender and memory is not False, batch)

    predictions = {"dream": rollout(None)}  # with the model's memory when it has one
    if model.has_memory:
        predictions["dream_memory_off"] = rollout(False)
    real = frames[:, c:]
    predictions |= baselines(model, frames, c)
    result = {"data": str(data), "split": split, "windows": len(ws), "context": c, "horizons": list(horizons),
              "sample_steps": sample_steps or model.dynamics.cfg.sample_steps}
    for name, pred in predictions.items():
        result[f"{name}_psnr_db"] = {str(h): psnr_pooled(real[:, h - 1], pred[:, h - 1]) for h in horizons}
        result[f"{name}_ssim"] = {str(h): float(ssim(real[:, h - 1], pred[:, h - 1]).mean()) for h in horizons}
    if judge is not None:
        acts = actions[:, c - 1:c - 1 + length].astype(int)
        edges = [0, *sorted(horizons)]
        for name, pred in predictions.items():
            shown = judge.read_steps(frames[:, c - 1], pred) == acts
            result[f"{name}_shown"] = {(f"{a + 1}-{b}" if b > a + 1 else str(b)): float(shown[:, a:b].mean())
                                       for a, b in zip(edges, edges[1:])}
    if cells is not None:
        read_real = cells.read(real)
        grass_only = np.full_like(read_real, cells.names.index("grass"))
        for name, read in [*((n, cells.read(p)) for n, p in predictions.items()), ("grass_only", grass_only)]:
            result[f"{name}_cells"] = {str(h): cell_scores(read[:, h - 1], read_real[:, h - 1], cells.names)
                                       for h in horizons}
    result["dream_minus_copy_last_frame_db"] = {
        str(h): result["dream_psnr_db"][str(h)] - result["copy_last_frame_psnr_db"][str(h)] for h in horizons}
    return result


def uncertainty_vs_error(model, data: str, context: int = 4, length: int = 16, count: int = 32, split: str = "test",
                         batch: int = 8) -> dict:
    """Does the dream know where it is wrong? Windows of `split` are replayed with their
    real actions and uncertainty on (DreamCore: two samples per step); at each step, each
    window's sample disagreement is set against its error, the RMS distance of the dream's
    latent from the real frame's. Spearman rank correlations: within each step (error and
    disagreement both grow with the horizon, so pooling steps would credit that alone),
    averaged over steps, and pooled; and how many of the worst quarter of steps by error
    the most uncertain quarter holds (chance 0.25)."""
    ws = replay_windows(data, context, length, count, split)
    if not ws:
        raise ValueError(f"{data}: no {split} episode is long enough for {context} + {length} frames")
    generator = torch.Generator(device=model.device).manual_seed(0)
    spread, error = [], []
    for i in range(0, len(ws), batch):
        chunk = ws[i:i + batch]
        core = DreamCore(model, len(chunk), uncertainty=True)
        core.reset_rows(range(len(chunk)), [(f[:context], a[:context - 1]) for f, a in chunk], generator)
        with torch.no_grad():
            real = model.encode(np.stack([f[context:] for f, _ in chunk]))
        s, e = [], []
        for t in range(length):
            nxt, _, _ = core.step(np.stack([a[context - 1 + t] for _, a in chunk]), generator)
            s.append(core.spread)
            e.append((nxt - real[:, t]).pow(2).mean(dim=(1, 2, 3)).sqrt().float().cpu().numpy())
        spread.append(np.stack(s, 1))
        error.append(np.stack(e, 1))
    spread, error = np.concatenate(spread), np.concatenate(error)  # (windows, steps)
    per_step = [_spearman(spread[:, t], error[:, t]) for t in range(length)]
    worst, unsure = error >= np.quantile(error, 0.75), spread >= np.quantile(spread, 0.75)
    return {"windows": len(ws), "steps": length, "spearman_within_step": float(np.mean(per_step)),
            "spearman_pooled": _spearman(spread.ravel(), error.ravel()),
            "worst_quarter_caught": float((worst & unsure).sum() / worst.sum()),
            "spread_mean": float(spread.mean()), "error_mean": float(error.mean())}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _detector(predicted: np.ndarray, actual: np.ndarray) -> dict:
    hits = int((predicted & actual).sum())
    return {"events": int(actual.sum()), "predicted": int(predicted.sum()),
            "precision": hits / int(predicted.sum()) if predicted.any() else None,
            "recall": hits / int(actual.sum()) if actual.any() else None}


def heads_detection(model, data: str, split: str = "test", max_steps: int = 20_000) -> dict:
    """The reward and termination heads on real consecutive latents of `split` (whole
    episodes, until max_steps transitions), as detectors: a pickup is |reward| > 0.5, an
    end a probability above 0.5. For ends also `expected`, the sum of the probabilities
    (the ends a dream that draws them would deal, against `events` real ones), and
    `r_precision`, the share of real ends among the as many transitions the head rates
    most likely to end (threshold-free).

    Where the ground truth names the objects (Rooms: gt/objects_alive, gt/objects_in_view),
    pickups also split by whether the collected object was in view the frame before:
    one reached backwards or sideways leaves no trace in the pair of frames the head reads.

    `returns`: the mean return per episode the head pays for the real play (what a dream
    of these episodes would pay) beside the real one. A model with counted events
    (Crafter's achievements) pays as the dream does (the head's reward, plus each detected
    event the episode had not had), and its event head is scored as a detector of the
    steps where a count rose (`events`, pooled over the events) and of those with an
    event new to the episode (`unlocks`); `reward_rest` scores the reward head on what it
    learns, the reward less those first payments (Crafter: the health change), beside
    always saying that rest's mean."""
    preds, reals, end_p, end_r, in_view = [], [], [], [], []
    names, key = model.dynamics.cfg.events, (model.info.get("train") or {}).get("events")
    event_p, event_r, unlock_p, unlock_r, rest_p, rest_r = [], [], [], [], [], []
    seen = 0
    for path in episode_paths(data, split):
        e = read_episode(path)
        with torch.no_grad():
            z = torch.cat([model.encode(e.frames[None, s:s + 256])[0] for s in range(0, len(e.frames), 256)])
            r, end, logits = model.dynamics.heads(z[:-1], z[1:], torch.as_tensor(e.actions, device=z.device))
            if names:  # the episode from its start: nothing unlocked before its first step
                unlocked = torch.zeros(1, len(names), dtype=torch.bool, device=z.device)
                paid = []
                rest_p.append(r.float().cpu().numpy())  # the head's own reward, before events are paid
                for t in range(len(r)):
                    step_reward, before = r[t:t + 1].float(), unlocked
                    step_reward, unlocked = RewardEndHead.paid(step_reward, logits[t:t + 1], unlocked)
                    paid.append(step_reward)
                    unlock_p.append(bool((unlocked & ~before).any()))
                r = torch.cat(paid)
                if key not in e.gt:
                    raise ValueError(f"{path}: no gt/{key}, the counts the model's event head is scored against")
                counts = np.asarray(e.gt[key])
                first = first_rises(counts)
                event_p.append((logits > 0).cpu().numpy()), event_r.append(event_rises(counts))
                unlock_r += list(first.any(1))
                rest_r.append(e.rewards - first.sum(1))
        preds.append(r.float().cpu().numpy()), reals.append(e.rewards)
        end_p.append(torch.sigmoid(end).float().cpu().numpy()), end_r.append(e.terminated.astype(bool))
        if "objects_alive" in e.gt and "objects_in_view" in e.gt:
            alive, view = np.asarray(e.gt["objects_alive"], bool), np.asarray(e.gt["objects_in_view"], bool)
            in_view.append((alive[:-1] & ~alive[1:] & view[:-1]).any(1))  # a pickup's object, seen before it
        seen += len(e)
        if seen >= max_steps:
            break
    p, r, ep, er = map(np.concatenate, (preds, reals, end_p, end_r))
    pickups = _detector(np.abs(p) > 0.5, np.abs(r) > 0.5)
    if len(in_view) == len(preds):
        seen_before = np.concatenate(in_view) & (np.abs(r) > 0.5)
        pickups["in_view_before"] = int(seen_before.sum())
        pickups["recall_in_view_before"] = float((np.abs(p) > 0.5)[seen_before].mean()) if seen_before.any() else None
    result = {"transitions": int(len(r)), "reward_mse": float(((p - r) ** 2).mean()),
              "reward_mse_always_zero": float((r ** 2).mean()), "pickups": pickups,
              "ends": _detector(ep > 0.5, er) | {"expected": float(ep.sum()), "r_precision": _r_precision(ep, er)},
              "returns": {"episodes": len(preds), "paid": float(p.sum() / len(preds)), "real": float(r.sum() / len(preds))}}
    if names:
        result["events"] = _detector(np.concatenate(event_p).ravel(), np.concatenate(event_r).ravel())
        result["unlocks"] = _detector(np.array(unlock_p), np.array(unlock_r))
        rp, rr = np.concatenate(rest_p), np.concatenate(rest_r)
        result["reward_rest"] = {"corr": float(np.corrcoef(rp, rr)[0, 1]) if rp.std() and rr.std() else None,
                                 "mse": float(((rp - rr) ** 2).mean()), "mse_of_the_mean": float(rr.var())}
    return result


def calibrate_ends(model, data: str, split: str = "val", max_steps: int = 20_000, batch: int = 16,
                   seed: int = 0) -> dict:
    """Shift the termination head's logit so that the dream ends episodes as often as the
    data did: each episode of `split` is replayed in the dream from its first frame with
    its own actions, and the shift makes the mean end probability per dreamed step equal
    the data's ends per step. A dream that draws its ends (--sample-ends) then kills the
    data's own policy as often as the real env did. Without it, it need not: training
    windows see an episode's last step less often than its others, and the dream renders
    what kills (a fireball up close) less often than the game shows it. A shift scales
    small probabilities alike, so the head's ranking of steps is kept. Either kind of
    world model (`new_core`, `shift_end_logit`); `batch` rows dream at once, and a row
    whose episode is over takes the next one (every row is stepped until the last episode
    ends, so a batch near the number of episodes wastes most of its steps)."""
    episodes, seen = [], 0
    for path in episode_paths(data, split):
        episodes.append(read_episode(path))
        seen += len(episodes[-1])
        if seen >= max_steps:
            break
    real = int(sum(e.terminated.sum() for e in episodes))
    if not real:
        raise ValueError(f"the {split} split of {data} has no episode end to calibrate the termination head on")
    generator = torch.Generator(device=model.device).manual_seed(seed)
    rows = min(batch, len(episodes))
    core = model.new_core(rows)
    playing, t = list(range(rows)), np.zeros(rows, dtype=np.int64)  # each row's episode, and its step in it
    core.reset_rows(range(rows), [(episodes[i].frames[:1], episodes[i].actions[:0]) for i in playing], generator)
    following, probs = rows, []
    bar = tqdm(total=seen, desc="calibrate ends", unit="step", leave=False)
    while any(i is not None for i in playing):
        actions = np.stack([episodes[i].actions[t[r]] if i is not None else episodes[0].actions[0]
                            for r, i in enumerate(playing)])
        _, _, p = core.step(actions, generator)
        t += 1
        bar.update(sum(i is not None for i in playing))
        for r, i in enumerate(playing):
            if i is None:
                continue
            probs.append(p[r])
            if t[r] == len(episodes[i]):  # over: the row replays the next episode, or idles
                playing[r] = following if following < len(episodes) else None
                if playing[r] is not None:
                    t[r], following = 0, following + 1
                    core.reset_rows([r], [(episodes[playing[r]].frames[:1], episodes[playing[r]].actions[:0])], generator)
    bar.close()
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    logits = np.log(p / (1 - p))
    rate = real / len(p)
    mean_prob = lambda shift: float((1 / (1 + np.exp(-(logits + shift)))).mean())  # noqa: E731
    low, high = -20.0, 20.0
    for _ in range(60):  # mean_prob() rises with the shift: bisect for mean_prob == rate
        mid = (low + high) / 2
        low, high = (mid, high) if mean_prob(mid) < rate else (low, mid)
    shift = (low + high) / 2
    model.shift_end_logit(shift)
    return {"data": str(data), "split": split, "episodes": len(episodes), "dreamed_steps": int(len(p)),
            "real_ends": real, "real_ends_per_step": rate, "dream_ends_per_step_before": mean_prob(0.0),
            "logit_shift": shift}


def _r_precision(scores: np.ndarray, actual: np.ndarray) -> float | None:
    n = int(actual.sum())
    return float(actual[np.argsort(-scores)[:n]].mean()) if n else None


def plot_replay(result: dict, path, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hs = result["horizons"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("psnr_db", "ssim")):
        for name, style in (("dream", "o-"), ("dream_memory_off", "o-."), ("copy_last_frame", "s--"),
                            ("tokenizer_ceiling", "^:")):
            if f"{name}_{metric}" in result:
                ax.plot(hs, [result[f"{name}_{metric}"][str(h)] for h in hs], style, label=name.replace("_", " "))
        ax.set_xscale("log", base=2)
        ax.set_xticks(hs, [str(h) for h in hs])
        ax.set_xlabel("steps dreamed (real actions)")
        ax.set_ylabel(metric.replace("_db", " (dB)").upper())
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{title}: {result['windows']} {result['split']} windows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
