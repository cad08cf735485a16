"""The training loop shared by every model: progress, logs, checkpoints, resume, DDP.

A run directory holds `latest.safetensors` (model, optimizer, step, config, RNG;
rewritten atomically every `ckpt_every` steps and at the end), `metrics.csv` and
TensorBoard event files. Starting a run whose directory has a checkpoint resumes it.
With `ema`, the checkpoint's model weights are a moving average of the trained ones (what
exports and `--init` read); the weights the optimizer steps are kept beside them for
resumes. Batches depend only on (seed, step, rank), so a resumed run sees what an uninterrupted
one would have. Under `torchrun`, each rank trains on its own batches through
DistributedDataParallel (gloo on CPU, NCCL on GPU) and rank 0 alone writes files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
import pickle
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from worldsim.checkpoint import (MODEL, TRAINED, as_saved_today, load_checkpoint, optimizer_tensors, prefixed,
                                 restore_optimizer, save_checkpoint, with_prefix)


@dataclass
class LoopConfig:
    """The loop's hyper-parameters; each model's TrainConfig extends it (through RunConfig)
    with its data, its architecture fields and its own defaults."""

    out: str  # run directory: checkpoint, metrics.csv, TensorBoard; resumes if present
    steps: int = 1000  # optimizer steps (the learning-rate schedule spans them)
    lr: float = 1e-3  # peak learning rate
    warmup: int = 100  # steps of linear warm-up
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # gradient norm clip
    ckpt_every: int = 250  # steps between checkpoints
    log_every: int = 25  # steps between metrics.csv rows
    seed: int = 0
    stop_at: int | None = None  # end this run early at this step (time-boxed jobs); rerun to resume and finish the schedule
    loader_workers: int = 0  # processes drawing batches ahead; 0 = one thread (a GPU outruns one core's numpy)
    ema: float = 0.0  # decay of the moving average of the weights that the checkpoint's model holds; 0 = the last weights


@dataclass(kw_only=True)
class RunConfig(LoopConfig):
    """What every `worldsim train MODEL` run has besides the loop's settings."""

    data: str  # dataset directory: frames (tokenizer, recaptioner) or latents from `worldsim encode` (dynamics)
    device: str = "auto"  # auto, cpu or cuda


def lr_at(step: int, cfg: LoopConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min((step - cfg.warmup) / max(1, cfg.steps - cfg.warmup), 1.0)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress)))


def pick_device(name: str = "auto") -> torch.device:
    """cuda when there is one (each torchrun rank on its own GPU), else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(name)
    return torch.device(name)


def to_device(batch, device: torch.device):
    """A batch (tensors, possibly in dicts, tuples and lists) on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def seconds_per_step(model: torch.nn.Module, draw: Callable[[int], object], loss_of: Callable, device: torch.device,
                     loader_workers: int = 0, trials: int = 3) -> float:
    """Measured time of one optimizer step of `model` on `device`: the longer of the step
    itself (loss_of(model, batch) -> (loss, stats), as `run` takes it) and drawing its
    batch (draw(k), CPU tensors), shared among `loader_workers` processes."""
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    times, draws = [], []
    for k in range(trials + 1):  # the first step warms up kernels and allocators
        t0 = time.perf_counter()
        batch = draw(k)
        draws.append(time.perf_counter() - t0)
        batch = to_device(batch, device)
        t0 = time.perf_counter()
        with autocast:
            loss, _ = loss_of(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return max(float(np.median(times[1:])), float(np.median(draws[1:])) / max(1, loader_workers))


_draw_batch = None  # batch_at, set before the loader processes fork so that they inherit it


def _loader_init():
    torch.set_num_threads(1)  # a forked OpenMP pool can hang; one thread per process is the point anyway


def _draw(step: int, rank: int) -> bytes:
    # Plain pickle sends the tensors' bytes through the pipe: torch's own sharing would
    # need a /dev/shm as large as the batches in flight.
    return pickle.dumps(_draw_batch(step, rank))


class Prefetch:
    """Batches drawn ahead of the step that trains on them: the next one by a thread, or,
    with `workers`, `2 * workers` of them by forked processes (a dead one raises
    BrokenProcessPool rather than hanging). Batches depend only on (step, rank), so who
    draws them changes nothing in what is trained."""

    def __init__(self, batch_at: Callable[[int, int], object], rank: int, workers: int = 0):
        global _draw_batch
        if workers:
            _draw_batch = batch_at
            self.pool = ProcessPoolExecutor(workers, multiprocessing.get_context("fork"), _loader_init)
            self.submit = lambda step: self.pool.submit(_draw, step, rank)
            self.receive = lambda future: pickle.loads(future.result())
        else:
            self.pool = ThreadPoolExecutor(1)
            self.submit = lambda step: self.pool.submit(batch_at, step, rank)
            self.receive = lambda future: future.result()
        self.ahead = 2 * workers if workers else 2  # the batch of this step, and those drawn meanwhile
        self.pending: deque = deque()
        self.next_step = None

    def batch(self, step: int, end: int):
        if self.next_step is None:
            self.next_step = step
        while self.next_step < end and len(self.pending) < self.ahead:
            self.pending.append(self.submit(self.next_step))
            self.next_step += 1
        return self.receive(self.pending.popleft())

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


def distributed() -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


class WeightAverage:
    """An exponential moving average of a model's parameters: one step's weights are noisy,
    an average over the last ~1/(1 - decay) steps is not. Buffers are taken as they are.
    The decay rises as (1 + step) / (10 + step) to `decay`, so that the average soon
    forgets the weights a run started from."""

    def __init__(self, model: torch.nn.Module, decay: float, weights: dict | None = None):
        if not 0 < decay < 1:
            raise ValueError(f"ema is a decay in (0, 1), e.g. 0.999; got {decay}")
        self.decay = decay
        self.params = {k for k, _ in model.named_parameters()}
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.params}
        if weights:
            for k, v in weights.items():
                if k in self.weights:
                    self.weights[k].copy_(v)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int):
        keep = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if k in self.weights:
                self.weights[k].lerp_(v.detach(), 1 - keep)

    def state_dict(self, model: torch.nn.Module) -> dict:
        return {k: self.weights.get(k, v) for k, v in model.state_dict().items()}


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for v in model.state_dict().values():
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def run(model: torch.nn.Module, cfg: LoopConfig, name: str, config: dict,
        batch_at: Callable[[int, int], object], loss_of: Callable[[torch.nn.Module, object], tuple],
        items_per_batch: Callable[[object], int], before_save: Callable[[], None] | None = None,
        device: torch.device | None = None, progress: bool = True) -> dict:
    """Train `model` for cfg.steps steps.

    batch_at(step, rank) -> batch of CPU tensors (the loop moves it to `device`);
    loss_of(module, batch) -> (loss tensor, {metric: float});
    items_per_batch(batch) counts what the throughput figure counts (frames, tokens);
    config is stored in every checkpoint; config["kind"] names the entry (config[kind], the
    architecture) that must match on resume.
    """
    from tqdm import tqdm

    rank, world = distributed()
    device = device or pick_device()
    out = Path(cfg.out)
    ckpt = out / "latest.safetensors"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    model.to(device)
    # A model may ask for some parameters to learn faster (`lr_scales`: name prefix -> factor),
    # as layers new to a fine-tuned model do.
    scales = getattr(model, "lr_scales", {})
    groups = {}
    for pname, param in model.named_parameters():
        scale = next((f for prefix, f in scales.items() if pname.startswith(prefix)), 1.0)
        groups.setdefault(scale, []).append(param)
    opt = torch.optim.AdamW([{"params": ps, "lr_scale": f} for f, ps in groups.items()], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    step, seconds_before = 0, 0.0  # training time of earlier runs of this directory (resumes)
    torch.manual_seed(cfg.seed + rank)
    if ckpt.exists():
        tensors, meta = load_checkpoint(ckpt)
        kind = config["kind"]
        saved = meta.get(kind) or {}
        if is_dataclass(getattr(model, "cfg", None)):  # older runs' settings, as saved today
            saved = as_saved_today(type(model.cfg), saved)
        if json.loads(json.dumps(saved)) != json.loads(json.dumps(config[kind])):
            raise ValueError(f"{ckpt} holds a {kind} built as {meta.get(kind)}, not {config[kind]}; "
                             "use another --out or the same settings")
        trained = with_prefix(tensors, TRAINED)
        model.load_state_dict(trained or with_prefix(tensors, MODEL))  # a run without ema keeps one set
        restore_optimizer(opt, {k: v.to(device) for k, v in tensors.items()}, meta["optimizer"])
        step = meta["step"]
        seconds_before = meta.get("train_seconds", 0.0)
        if f"rng/torch{rank}" in tensors:
            torch.set_rng_state(tensors[f"rng/torch{rank}"])
    # The average goes on from the saved one, or starts at the weights the run starts from.
    average = WeightAverage(model, cfg.ema, with_prefix(tensors, MODEL) if ckpt.exists() else None) if cfg.ema else None
    step_fn = _LossForward(model, loss_of)
    if world > 1:  # DDP syncs gradients of what goes through its forward: the whole loss
        step_fn = torch.nn.parallel.DistributedDataParallel(step_fn)

    def save():
        if before_save:
            before_save()
        if rank != 0:
            return
        opt_tensors, opt_info = optimizer_tensors(opt)
        weights = prefixed(average.state_dict(model), MODEL) | prefixed(model.state_dict(), TRAINED) if average \
            else prefixed(model.state_dict(), MODEL)
        tensors = {**weights, **opt_tensors, "rng/torch0": torch.get_rng_state()}
        save_checkpoint(ckpt, tensors, {**config, "step": step, "optimizer": opt_info, "device": device.type,
                                        "world_size": world,
                                        "train_seconds": seconds_before + time.perf_counter() - t0})

    writer = _tensorboard(out) if rank == 0 else None
    log_file = log = None
    if rank == 0:
        # Also when empty: a run killed before its first row leaves the file with no header.
        new = not (out / "metrics.csv").exists() or (out / "metrics.csv").stat().st_size == 0
        log_file = open(out / "metrics.csv", "a", newline="")
        log = csv.writer(log_file)
    columns = None
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {name}", unit="step",
               disable=not progress or rank != 0, mininterval=1)
    t0, items, stats = time.perf_counter(), 0, {}
    model.train()
    end = cfg.steps if cfg.stop_at is None else min(cfg.stop_at, cfg.steps)
    # Drawing windows is numpy work that would otherwise leave the model waiting.
    prefetch = Prefetch(batch_at, rank, cfg.loader_workers)
    try:
        while step < end:
            batch = to_device(prefetch.batch(step, end), device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg) * g.get("lr_scale", 1.0)  # runs from before lr_scales resume without it
            with autocast:
                loss, stats = step_fn(batch)
            if not np.isfinite(loss.item()):
                raise FloatingPointError(f"{name}: loss is {loss.item()} at step {step}; training stopped, "
                                         f"the last good checkpoint is {ckpt}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if average:
                average.update(model, step)
            step += 1
            items += items_per_batch(batch) * world
            bar.update(1)
            if rank == 0 and (step % cfg.log_every == 0 or step == end):
                row = {"step": step, **stats, "lr": lr_at(step - 1, cfg), "items_per_s": items / (time.perf_counter() - t0)}
                if columns is None:
                    columns = list(row)
                    if new:
                        log.writerow(columns)
                log.writerow([row.get(c, "") for c in columns])
                log_file.flush()
                if writer:
                    for k, v in row.items():
                        if k != "step":
                            writer.add_scalar(f"{name}/{k}", v, step)
                bar.set_postfix({k: f"{v:.4g}" for k, v in list(stats.items())[:2]}, refresh=False)
            if step % cfg.ckpt_every == 0 or step == end:
                save()
    finally:
        prefetch.close()
    bar.close()
    if average:  # what follows a run (scores, exports) sees the weights its checkpoint ships
        model.load_state_dict(average.state_dict(model))
    summary = {"checkpoint": str(ckpt), "step": step, "last_batch": stats,
               "items_per_s": items / max(time.perf_counter() - t0, 1e-9), "world_size": world}
    if world > 1:  # every rank must hold the same weights after DDP training
        digests = [None] * world
        dist.all_gather_object(digests, weights_digest(model))
        summary["ddp_weights_identical"] = len(set(digests)) == 1
        if not summary["ddp_weights_identical"]:
            raise RuntimeError(f"DDP ranks diverged: weight digests {digests}")
        dist.destroy_process_group()  # gloo's threads left running at exit can abort a rank
    if rank == 0:
        log_file.close()
        if writer:
            writer.close()
    return summary


class _LossForward(torch.nn.Module):
    """Makes `loss_of(model, batch)` the forward of a module, so DDP can wrap it."""

    def __init__(self, model, loss_of):
        super().__init__()
        self.model, self.loss_of = model, loss_of

    def forward(self, batch):
        return self.loss_of(self.model, batch)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: metrics.csv always has the figures
        return None
    return SummaryWriter(str(out / "tb"))
