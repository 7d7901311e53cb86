"""Fuzzing fedbip.yaml (issue 15): random YAML text and random documents over the real key paths, with
values of every type and range. Each either loads into a Config whose every number is finite and in
range, or is one UserError line naming the file."""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from pathlib import Path

import yaml
from fuzzing import fuzz, one_line
from hypothesis import given
from hypothesis import strategies as st

from fedbip_cli.errors import UserError
from fedbip_cli.workspace.config import RANGES, Config, check_ranges, load_config

DIR = Path(tempfile.mkdtemp(prefix="fedbip-fuzz-config-"))
SECTIONS = {f.name: [g.name for g in dataclasses.fields(f.type if isinstance(f.type, type) else
                                                       type(getattr(Config(), f.name)))]
            for f in dataclasses.fields(Config) if f.name != "clients"}
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
    check_ranges(cfg, "again")  # what loaded is in range
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


def test_every_range_has_a_known_key():
    for path in RANGES:
        section, key = path.split(".")
        assert key in SECTIONS[section], path


def teardown_module() -> None:
    shutil.rmtree(DIR, ignore_errors=True)
