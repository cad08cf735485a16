"""Checkpoints: one safetensors file holding the weights and, in its metadata, the JSON
config that rebuilds the model. Loading never unpickles anything; writes are atomic
(a temporary file renamed into place), so a kill mid-save leaves the last one intact.
Optimizer state is flattened into tensors plus JSON, so resuming needs no pickle either.
Loading refuses a NaN or infinite tensor and a config that is not what the code expects,
with an error naming the file and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, or made for something else."""


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict):
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
              metadata={"worldsim": json.dumps(config)})
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; expected a .safetensors file written by worldsim")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers and short files
        raise CheckpointError(f"{path}: unreadable checkpoint ({e}); expected a complete .safetensors file "
                              "written by worldsim (a truncated copy?)") from e
    if "worldsim" not in meta:
        raise CheckpointError(f"{path}: a safetensors file without a worldsim config; expected a worldsim checkpoint")
    try:
        config = json.loads(meta["worldsim"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its worldsim config is not valid JSON ({e}); expected the JSON object "
                              "worldsim writes") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its worldsim config is a JSON {type(config).__name__}; expected an object")
    # A NaN weight would give black frames and NaN rewards, with nothing said.
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: tensor(s) {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} hold NaN or "
                              "infinite values; expected finite weights (the run diverged, or the file was damaged)")
    return tensors, config


def checkpoint_kind(path: str | os.PathLike) -> str | None:
    """The kind a worldsim checkpoint says it holds, read from its header alone (None where
    it cannot be read: `load_checkpoint` then says why)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["worldsim"]).get("kind")
    except Exception:  # a missing, damaged or foreign file: the loader's own error names it
        return None


# Where each part's tensors sit in a checkpoint: a training run's model and optimizer
# (`worldsim train`, `Tokenizer.save`), a world model's networks (`WorldModel.save`), and a
# pixel world model's reward/end network (`PixelWorldModel.save`).
MODEL, OPTIMIZER, TOKENIZER, DYNAMICS, FIRST_FRAME, DEPTH, REWARD_END = (
    "model/", "optim/", "tokenizer/", "dynamics/", "first_frame/", "depth/", "reward_end/")
TRAINED = "trained/"  # a run with a weight average: the weights its optimizer steps (MODEL holds the average)
# The prefix of the network a checkpoint of each kind continues from (`--init`).
NETWORK_OF_KIND = {"dynamics": MODEL, "world_model": DYNAMICS}


def with_prefix(tensors: dict, prefix: str) -> dict:
    """The tensors whose names start with `prefix` (MODEL, DYNAMICS, ...), named without it."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def prefixed(state: dict, prefix: str) -> dict:
    """A state dict's tensors named under `prefix`, as a checkpoint holds them."""
    return {prefix + k: v for k, v in state.items()}


def network_of(path, tensors: dict, config: dict, name: str) -> tuple[dict, dict]:
    """The first-frame or depth network (`name`: first_frame | depth) a world model file
    carries, as the run that trained it gives it: weights under MODEL, and a config with its
    kind, network settings, train record and dataset facts; so an export can reuse the
    network of a world model whose run is gone."""
    if name not in config:
        raise CheckpointError(f"{path} is a world model without a {name.replace('_', '-')} network")
    record = config.get(f"{name}_train") or {}
    kind = "depth" if name == "depth" else "dynamics"  # its config section is named as its kind
    # The carrier's env and camera were checked against this network when it was exported.
    run = {"kind": kind, kind: config[name], "train": record.get("train"), "record": record,
           "dataset": {"env_id": config.get("env_id"), "latent_shape": config[name].get("latent_shape")},
           "fov_deg": (config.get("pose_model") or {}).get("fov_deg")}
    return prefixed(with_prefix(tensors, {"first_frame": FIRST_FRAME, "depth": DEPTH}[name]), MODEL), run


def config_from(cls, config: dict, section: str, path):
    """The dataclass `cls` built from `config[section]`, each setting checked against the
    type of its default: a bad file fails here with its name, not later in the model."""
    data = config.get(section)
    where = f"{path}: the {section!r} config"
    if not isinstance(data, dict):
        if data is None:
            raise CheckpointError(f"{path}: no {section!r} config section; expected a JSON object of "
                                  f"{cls.__name__} settings")
        raise CheckpointError(f"{where} is a JSON {type(data).__name__}; expected an object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    retired = getattr(cls, "RETIRED", {})
    for name in set(data) & set(retired):
        if data[name] != retired[name]:
            raise CheckpointError(f"{where} has {name}={data[name]!r}, which this version no longer reads "
                                  f"(only {retired[name]!r})")
    data = without_retired(cls, data)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CheckpointError(f"{where} has unknown setting(s) {unknown}; expected some of {sorted(fields)}")
    for name, value in data.items():
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if not _same_kind(value, default):
            raise CheckpointError(f"{where} has {name}={value!r}; expected {type(default).__name__}, "
                                  f"like the default {default!r}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where} is inconsistent: {e}") from e


def as_saved_today(cls, data: dict) -> dict:
    """Settings `data` of a `cls` as this version would save them: retired ones dropped
    (`without_retired`), and the ones added to `cls` since, which the file lacks, at their
    defaults (an added setting at its default builds what the file's model was)."""
    added = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
             for f in dataclasses.fields(cls) if f.name not in data and
             (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)}
    return {**without_retired(cls, data), **added}


def without_retired(cls, data: dict) -> dict:
    """`data` less the settings `cls` has retired (its RETIRED: older files carry them,
    with the one value still readable) where they hold that value."""
    retired = getattr(cls, "RETIRED", {})
    return {k: v for k, v in data.items() if not (k in retired and v == retired[k])}


def _same_kind(value, default) -> bool:
    """Whether a JSON value fits a setting with this default (a list for a tuple)."""
    number = lambda v, kinds: isinstance(v, kinds) and not isinstance(v, bool)  # noqa: E731
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return number(value, int)
    if isinstance(default, float):
        return number(value, (int, float))
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and (not default or all(_same_kind(v, default[0]) for v in value))
    return default is None or isinstance(value, type(default))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state into tensors and a JSON-able remainder."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{OPTIMIZER}{pid}/{name}"] = value
            else:
                scalars[f"{pid}/{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict):
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith(OPTIMIZER):
            pid, name = key[len(OPTIMIZER):].split("/", 1)
            state.setdefault(int(pid), {})[name] = value
    for key, value in info["scalars"].items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
