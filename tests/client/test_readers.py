"""Data-file readers (issue 15): lines end at \\n only, a single huge line is refused after reading a
bounded part of it, and random bytes, JSON and CSV are either examples or one UserError line."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedbip_cli.client import readers
from fedbip_cli.client.tasks.text.data import read_examples
from fedbip_cli.errors import UserError
from fuzzing import fuzz, one_line

DIR = Path(tempfile.mkdtemp(prefix="fedbip-fuzz-data-"))


def test_unicode_line_separators_inside_json_strings_are_text(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [{"text": "one\u2028two\u2029three\x85four\x0c", "label": "a"}, {"text": "plain", "label": "b"}]
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    assert [e.text for e in read_examples(p)] == [r["text"] for r in rows]


def test_csv_quoted_newlines_survive(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('text,label\n"line one\nline two",a\nsecond,b\n', encoding="utf-8")
    assert [e.text for e in read_examples(p)] == ["line one\nline two", "second"]


def test_a_huge_line_is_refused_after_a_bounded_read(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 1000)
    monkeypatch.setattr(readers.data_lines, "__defaults__", (1000,))
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "ok", "label": "a"}\n{"text": "' + "x" * 5000 + '", "label": "a"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"d.jsonl:2: line longer than 1000 bytes"):
        read_examples(p)


def test_the_default_bound_holds_a_long_example(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "word " * 100_000, "label": "a"}) + "\n", encoding="utf-8")
    assert len(read_examples(p)[0].text) == 500_000
    p.write_text(json.dumps({"text": "w" * readers.MAX_LINE_BYTES, "label": "a"}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="line longer than"):
        read_examples(p)


def read(path: Path) -> None:
    before = {q.name for q in DIR.iterdir()}
    try:
        examples = read_examples(path)
    except UserError as e:
        one_line(e)
        return
    finally:
        assert {q.name for q in DIR.iterdir()} == before
    assert examples and all(e.text.strip() and e.label for e in examples)


@fuzz(600)
@given(st.binary(max_size=200), st.sampled_from([".jsonl", ".csv", ".tsv"]))
def test_random_bytes(data, suffix):
    path = DIR / f"data{suffix}"
    path.write_bytes(data)
    read(path)


VALUE = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
         | st.lists(st.integers(), max_size=2))
ROW = st.dictionaries(st.sampled_from(["text", "label", "task", "x"]), VALUE, max_size=3) | VALUE


@fuzz(600)
@given(st.lists(ROW, max_size=4), st.sampled_from(["\n", "\r\n"]))
def test_random_json_rows(rows, ending):
    path = DIR / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + ending for r in rows), encoding="utf-8")
    read(path)


def teardown_module() -> None:
    shutil.rmtree(DIR, ignore_errors=True)
