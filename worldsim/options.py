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


def add_fields(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One flag per field of dataclass `cls`, except those in `skip`."""
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        flag, text = f"--{f.name.replace('_', '-')}", comments.get(f.name, "")
        kind = (f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))).replace(" ", "")
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if kind in ("bool", "bool|None"):
            if default is not True:
                parser.add_argument(flag, dest=f.name, action="store_true", default=default, help=text or None)
            if default is not False:
                parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false",
                                    default=default, help=f"switch off {flag}" + (f": {text}" if text else ""))
            continue
        base = kind.removesuffix("|None")
        convert = {"int": int, "float": float, "str": str, "dict": json_object}.get(base)
        if convert is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for type {f.type!r}")
        shown = f" (default {json.dumps(default) if base == 'dict' else default})" if has_default and default not in ("", None) else ""
        parser.add_argument(flag, dest=f.name, type=convert, default=default, required=not has_default,
                            metavar=f.name.upper(), help=(text + shown).strip() or None)


def from_args(args: argparse.Namespace, cls):
    """The dataclass `cls` from parsed arguments (the fields `add_fields` declared)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: v for k, v in vars(args).items() if k in names})
