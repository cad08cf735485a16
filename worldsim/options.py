"""Command-line flags from a config dataclass: each option is declared once, as a field
with its default and a comment, and becomes `--field-name` with that comment as its help.

    @dataclass
    class TrainConfig:
        steps: int = 3000  # optimizer steps
        text: bool = False  # condition on captions

    add_fields(parser, TrainConfig)   # --steps N (help "optimizer steps (default 3000)"), --text

A field without a default is a required flag; a bool is a switch (`--no-NAME` when it
defaults to True; `bool | None`, where None lets the code decide, offers both); a dict
is JSON; `str | None` and `int | None` take a value or stay None.

A composite config nests the configs it runs instead of declaring their fields again:

    agent: ImagineConfig = field(default_factory=ImagineConfig, metadata=nested("agent", set_here=("out",)))

gives `--agent-steps`, `--agent-algo`, ... (prefix "" keeps the fields' own names), with
the nested instance's values as defaults, and leaves out the fields the outer config sets
itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re

_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$")


def json_object(text: str) -> dict:
    """argparse type for a JSON object argument."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, e.g. '{{\"size\": 96}}': {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def field_comments(cls) -> dict[str, str]:
    """The comment on each field's line, from the class and the dataclasses it extends."""
    comments = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            for line in inspect.getsource(klass).splitlines():
                m = _FIELD_LINE.match(line)
                if m and m.group(2):
                    comments[m.group(1)] = m.group(2).strip()
    return comments


def nested(prefix: str, set_here: tuple[str, ...] = (), help: dict[str, str] | None = None) -> dict:
    """Metadata of a field that holds a config of its own: its fields become flags
    `--PREFIX-NAME`, except `set_here`, the ones the outer config fills in itself; `help`
    replaces a field's own help where the outer config gives it another meaning."""
    return {"flag_prefix": prefix, "set_here": tuple(set_here), "help": dict(help or {})}


def _dest(prefix: str, name: str) -> str:
    return "_".join(part for part in (prefix, name) if part)


def _default(f: dataclasses.Field, defaults):
    if defaults is not None:
        return getattr(defaults, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def add_fields(parser: argparse.ArgumentParser, cls, skip=(), prefix: str = "", defaults=None, helps=None,
               taken: set | None = None) -> None:
    """One flag per field of dataclass `cls`, except those in `skip`; nested configs (see
    `nested`) add theirs under their prefix, their defaults those of `defaults`' instance."""
    comments = {**field_comments(cls), **(helps or {})}
    taken = set() if taken is None else taken  # dests of every level: two fields never share a flag
    names = {f.name for f in dataclasses.fields(cls)}
    if set(skip) - names:
        raise TypeError(f"{cls.__name__} has no fields {sorted(set(skip) - names)} to set")
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        default = _default(f, defaults)
        if "flag_prefix" in f.metadata:
            add_fields(parser, type(default), f.metadata["set_here"], _dest(prefix, f.metadata["flag_prefix"]), default,
                       f.metadata["help"], taken)
            continue
        dest = _dest(prefix, f.name)
        if dest in taken:
            raise TypeError(f"{cls.__name__}.{f.name}: flag --{dest.replace('_', '-')} is declared twice")
        taken.add(dest)
        flag, text = f"--{dest.replace('_', '-')}", comments.get(f.name, "")
        kind = (f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))).replace(" ", "")
        has_default = default is not dataclasses.MISSING
        default = default if has_default else None
        if kind in ("bool", "bool|None"):
            if default is not True:
                parser.add_argument(flag, dest=dest, action="store_true", default=default, help=text or None)
            if default is not False:
                parser.add_argument(f"--no-{dest.replace('_', '-')}", dest=dest, action="store_false",
                                    default=default, help=f"switch off {flag}" + (f": {text}" if text else ""))
            continue
        base = kind.removesuffix("|None")
        convert = {"int": int, "float": float, "str": str, "dict": json_object}.get(base)
        if convert is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for type {f.type!r}")
        shown = f" (default {json.dumps(default) if base == 'dict' else default})" if has_default and default not in ("", None) else ""
        parser.add_argument(flag, dest=dest, type=convert, default=default, required=not has_default,
                            metavar=dest.upper(), help=(text + shown).strip() or None)


def from_args(args: argparse.Namespace, cls, prefix: str = "", defaults=None, skip=()):
    """The dataclass `cls` from parsed arguments (the flags `add_fields` declared); nested
    configs are their default instances with the flags given applied."""
    given, values = vars(args), {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        if "flag_prefix" in f.metadata:
            inner = _default(f, defaults)
            values[f.name] = from_args(args, type(inner), _dest(prefix, f.metadata["flag_prefix"]), inner,
                                       f.metadata["set_here"])
        elif _dest(prefix, f.name) in given:
            values[f.name] = given[_dest(prefix, f.name)]
    return dataclasses.replace(defaults, **values) if defaults is not None else cls(**values)
