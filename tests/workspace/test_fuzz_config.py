"""Fuzzing fedbip.yaml: random YAML text and random documents over the real key paths, with values of every
type and range, and every declared key walked with values of the wrong type and out of its range, from the
YAML and from --set alike. Each either loads into a Config whose every value is within its declaration, or
is one UserError line naming the file (or --set) and the key."""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fedbip_cli.errors import UserError
from fedbip_cli.workspace.config import SECTIONS as SECTION_NAMES
from fedbip_cli.workspace.config import Config, load_config, override, validate
from fedbip_cli.workspace.schema import convert, info
from fuzzing import fuzz, one_line

DIR = Path(tempfile.mkdtemp(prefix="fedbip-fuzz-config-"))
SECTIONS = {name: [f.name for f in dataclasses.fields(getattr(Config(), name)) if info(f).template]
            for name in SECTION_NAMES}
SCALAR = (st.none() | st.booleans() | st.integers(-10, 10) | st.integers() | st.floats() | st.text(max_size=10)
          | st.sampled_from([".nan", ".inf", "-.inf", "1e999", "5e-4", "0x10", "~", "fedbip", "delta", "mean"]))
VALUE = SCALAR | st.lists(SCALAR, max_size=3) | st.dictionaries(st.text(max_size=5), SCALAR, max_size=2)
SECTION_DOCS = st.sampled_from(sorted(SECTIONS)).flatmap(
    lambda sec: st.dictionaries(st.sampled_from(SECTIONS[sec]) | st.text(max_size=6), VALUE, max_size=3)
    .map(lambda d: {sec: d}))
CLIENTS = st.dictionaries(st.text(max_size=8) | st.sampled_from(["a", "site-1", "../x"]),
                          st.fixed_dictionaries({"train": st.just("a.jsonl")}, optional={
                              "lora_r": SCALAR, "lora_alpha": SCALAR, "max_examples": SCALAR}) | VALUE,
                          max_size=2).map(lambda c: {"clients": c})
DOCS = st.lists(SECTION_DOCS | CLIENTS, max_size=3).map(lambda parts: {k: v for p in parts for k, v in p.items()})


def load(text: str) -> None:
    path = DIR / "fedbip.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(path)
    except UserError as e:
        one_line(e)
        assert str(path) in str(e)
        return
    validate(cfg, "again")  # what loaded is within every declaration
    for section in SECTIONS:
        for value in vars(getattr(cfg, section)).values():
            assert not isinstance(value, float) or math.isfinite(value)


@fuzz(1200)
@given(DOCS)
def test_random_documents(doc):
    load(yaml.safe_dump(doc, allow_unicode=True).replace("'.nan'", ".nan").replace("'.inf'", ".inf"))


@fuzz(500)
@given(st.text(max_size=80))
def test_random_text(text):
    load(text)


KEYS = [(section, f) for section in SECTION_NAMES for f in dataclasses.fields(getattr(Config(), section))
        if info(f).template]
WRONG_TYPES = [[1, 2], {"a": 1}, "not a number", 1.5, True, -3]


def _refuses(section: str, name: str, value, tmp_path: Path) -> bool:
    """Whether fedbip.yaml and --set both refuse `value` for the key, in one line naming it; or both accept."""
    path = tmp_path / "fedbip.yaml"
    path.write_text(yaml.safe_dump({section: {name: value}}), encoding="utf-8")
    outcomes = []
    for attempt in (lambda: load_config(path), lambda: override(Config(), f"{section}.{name}", value)):
        try:
            attempt()
            outcomes.append(None)
        except UserError as e:
            one_line(e)
            assert f"{section}.{name}" in str(e), str(e)
            outcomes.append(str(e).split(": ", 1)[1])
    assert (outcomes[0] is None) == (outcomes[1] is None), outcomes  # the file and --set agree
    return outcomes[0] is not None


@pytest.mark.parametrize("section, f", KEYS, ids=[f"{s}.{f.name}" for s, f in KEYS])
def test_every_key_refuses_wrong_types_and_ranges(section, f, tmp_path):
    """Walks every declared key: its default is accepted; values of other types are refused unless the
    key's type holds them; each bound is enforced just past it, from the YAML and from --set alike."""
    meta = info(f)
    default = getattr(Config(), section).__dict__[f.name]
    assert not _refuses(section, f.name, default, tmp_path)
    hint = typing.get_type_hints(type(getattr(Config(), section)))[f.name]
    for value in WRONG_TYPES:
        try:
            convert(value, hint, "k", "s", lambda cls, raw, where: raw)
        except UserError:
            assert _refuses(section, f.name, value, tmp_path), (f.name, value)
    b = meta.bounds
    if b is not None:
        integer = hint in (int, typing.Optional[int])
        step = 1 if integer else 1e-9
        if b.low is not None:
            assert _refuses(section, f.name, (int(b.low) if integer else b.low) - (0 if b.low_open else step), tmp_path)
        if b.high is not None:
            assert _refuses(section, f.name, (int(b.high) if integer else b.high) + (0 if b.high_open else step),
                            tmp_path)


def teardown_module() -> None:
    shutil.rmtree(DIR, ignore_errors=True)
