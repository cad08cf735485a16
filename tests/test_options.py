"""Flags generated from config dataclasses: each option declared once."""

import argparse
from dataclasses import dataclass, field

import pytest

from worldsim.options import add_fields, from_args, nested


@dataclass
class Base:
    out: str  # where it goes
    steps: int = 10  # how long


@dataclass
class Options(Base):
    rate: float = 0.5
    text: bool = False  # condition on captions
    keep: bool = True  # keep the files
    memory: bool | None = None  # on, off, or the model decides
    init: str | None = None
    env_kwargs: dict = field(default_factory=dict)  # JSON keyword arguments


def parse(argv):
    parser = argparse.ArgumentParser()
    add_fields(parser, Options)
    return from_args(parser.parse_args(argv), Options), parser


def test_fields_become_typed_flags_with_their_comment_as_help():
    cfg, parser = parse(["--out", "o"])
    assert cfg == Options(out="o")
    cfg, _ = parse(["--out", "o", "--steps", "3", "--rate", "0.25", "--text", "--no-keep", "--no-memory",
                    "--init", "w.safetensors", "--env-kwargs", '{"world_seed": null}'])
    assert cfg == Options(out="o", steps=3, rate=0.25, text=True, keep=False, memory=False, init="w.safetensors",
                          env_kwargs={"world_seed": None})
    assert parse(["--out", "o", "--memory"])[0].memory is True
    text = parser.format_help()
    assert "how long (default 10)" in text and "condition on captions" in text and "where it goes" in text
    with pytest.raises(SystemExit):  # a field without a default is required
        parser.parse_args([])
    with pytest.raises(SystemExit):  # an env_kwargs that is not a JSON object
        parser.parse_args(["--out", "o", "--env-kwargs", "[1]"])


def test_a_field_type_without_a_flag_form_is_refused():
    @dataclass
    class Odd:
        shape: tuple = (1, 2)

    with pytest.raises(TypeError, match="Odd.shape"):
        add_fields(argparse.ArgumentParser(), Odd)


@dataclass
class Composite:
    out: str  # the composite's own folder
    iterations: int = 2
    inner: Options = field(default_factory=lambda: Options(out="", steps=7),
                           metadata=nested("inner", set_here=("out", "init")))
    plain: Base = field(default_factory=lambda: Base(out=""), metadata=nested("", set_here=("out",)))


def test_a_composite_nests_the_configs_it_runs_under_a_prefix():
    parser = argparse.ArgumentParser()
    add_fields(parser, Composite)
    text = parser.format_help()
    assert "--inner-steps" in text and "--inner-init" not in text and "--inner-out" not in text
    assert "how long (default 7)" in text  # the nested instance's default, with the field's own help
    assert "--steps" in text  # prefix "": the nested field keeps its own name
    cfg = from_args(parser.parse_args(["--out", "o", "--inner-steps", "3", "--inner-text", "--steps", "5"]), Composite)
    assert cfg == Composite(out="o", inner=Options(out="", steps=3, text=True), plain=Base(out="", steps=5))
    assert from_args(parser.parse_args(["--out", "o"]), Composite) == Composite(out="o")


def test_nested_flags_that_would_collide_or_name_no_field_are_refused():
    @dataclass
    class Clash:
        inner_steps: int = 1
        inner: Base = field(default_factory=lambda: Base(out=""), metadata=nested("inner", set_here=("out",)))

    @dataclass
    class Typo:
        inner: Base = field(default_factory=lambda: Base(out=""), metadata=nested("inner", set_here=("ouT",)))

    with pytest.raises(TypeError, match="--inner-steps is declared twice"):
        add_fields(argparse.ArgumentParser(), Clash)
    with pytest.raises(TypeError, match=r"no fields \['ouT'\]"):
        add_fields(argparse.ArgumentParser(), Typo)
