"""fedbip.yaml validation: the template is valid and equals the schema defaults; errors name key paths."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from fedbip_cli.errors import UserError
from fedbip_cli.workspace.config import Config, load_config, override, parse_config
from fedbip_cli.workspace.template import render


def test_template_parses_to_the_schema_defaults():
    cfg = parse_config(yaml.safe_load(render()))
    assert dataclasses.asdict(cfg) == dataclasses.asdict(Config())


@pytest.mark.parametrize("doc, message", [
    ({"training": {"batch_sise": 4}}, "unknown key 'training.batch_sise'"),
    ({"training": {"batch_size": "four"}}, "training.batch_size: expected int"),
    ({"lora": {"r": 0}}, "lora.r"),
    ({"model": {"pooling": "max"}}, "model.pooling"),
    ({"clients": {"a": {"test": "x.jsonl"}}}, "missing required key 'clients.a.train'"),
    ({"clients": {"../evil": {"train": "x.jsonl"}}}, "invalid client name"),
    ({"aggregation": {"strategy": "median"}}, "unknown strategy 'median'"),
    ([1, 2], "expected a mapping"),
])
def test_errors_name_the_key_path(doc, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        parse_config(doc, "fedbip.yaml")


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "fedbip.yaml"
    p.write_text("model:\n  path: [unclosed\n")
    with pytest.raises(UserError, match="YAML error at line"):
        load_config(p)


def test_override_converts_and_checks():
    cfg = Config()
    override(cfg, "training.epochs", "2")
    override(cfg, "lora.target_modules", "[q, v]")
    assert cfg.training.epochs == 2.0 and cfg.lora.target_modules == ["q", "v"]
    with pytest.raises(UserError, match="unknown key"):
        override(cfg, "training.nope", "1")
    with pytest.raises(UserError, match="training.batch_size"):
        override(cfg, "training.batch_size", "big")


def test_duplicate_client_ids_are_refused(tmp_path):
    p = tmp_path / "fedbip.yaml"
    p.write_text("clients:\n  a: {train: x.jsonl}\n  a: {train: y.jsonl}\n")
    with pytest.raises(UserError, match="duplicate key 'a'"):
        load_config(p)


@pytest.mark.parametrize("key, value, message", [
    ("aggregation.clip_factor", -1, "aggregation.clip_factor: must be > 0"),
    ("aggregation.clip_factor", ".nan", "aggregation.clip_factor: must be a finite number"),
    ("aggregation.self_floor", -0.5, "aggregation.self_floor: must be in [0, 1]"),
    ("aggregation.alpha_k", -1, "aggregation.alpha_k: must be in (0, inf)"),
    ("aggregation.temperature", 0, "aggregation.temperature: must be in (0, inf)"),
    ("training.threads", -2, "training.threads: must be in (0, 4096]"),
    ("training.max_steps", 0, "training.max_steps: must be > 0"),
    ("training.learning_rate", ".nan", "training.learning_rate: must be a finite number"),
    ("training.learning_rate", ".inf", "training.learning_rate: must be a finite number"),
    ("training.learning_rate", 0, "training.learning_rate: must be > 0"),
    ("training.epochs", 10 ** 400, "training.epochs: must be a finite number"),
    ("training.seed", 10 ** 30, "is out of range"),
    ("lora.dropout", 1.5, "lora.dropout: must be in"),
    ("privacy.delta", 1, "privacy.delta: must be in"),
])
def test_values_out_of_range_are_one_line_naming_the_key(tmp_path, key, value, message):
    section, name = key.split(".")
    p = tmp_path / "fedbip.yaml"
    p.write_text(yaml.safe_dump({section: {name: value}}).replace("'.nan'", ".nan").replace("'.inf'", ".inf"))
    with pytest.raises(UserError, match=re.escape(message)) as e:
        load_config(p)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=re.escape(message)):  # --set goes through the same checks
        override(Config(), key, str(value))


@pytest.mark.parametrize("key, value, message", [
    ("task.max_new_tokens", "0", "task.max_new_tokens: must be in (0, 65536]"),
    ("task.prompt_template", "x", "task.prompt_template: template must use {prompt}"),
    ("training.warmup_ratio", "0.5", None),
    ("model.quantization", "4bit", None),
])
def test_set_runs_every_check_the_file_runs(key, value, message):
    """--set goes through the same validation as fedbip.yaml, including the rules across keys; a refused
    value leaves the config as it was."""
    cfg = Config()
    cfg.training.warmup_steps = 10
    cfg.model.dtype = "float32"
    before = dataclasses.asdict(cfg)
    with pytest.raises(UserError, match=re.escape(message) if message else None) as e:
        override(cfg, key, value)
    assert "\n" not in str(e.value) and dataclasses.asdict(cfg) == before


def test_set_keeps_text_yaml_would_read_otherwise():
    cfg = Config()
    override(cfg, "task.prompt_template", "### Q: {prompt}\n### A:")
    assert cfg.task.prompt_template == "### Q: {prompt}\n### A:"
    override(cfg, "model.path", "null")
    assert cfg.model.path is None


def test_template_carries_given_values_and_every_declared_key():
    from fedbip_cli.workspace.config import SECTIONS
    from fedbip_cli.workspace.schema import info

    text = render("m", ["b", "a"], {"s1": {"train": "s1.jsonl", "lora_r": 4}}, {"training.epochs": 2,
                                                                              "aggregation.top_k": 3})
    cfg = parse_config(yaml.safe_load(text))
    assert (cfg.model.path, cfg.task.labels, cfg.training.epochs) == ("m", ["b", "a"], 2.0)
    assert cfg.clients["s1"].lora_r == 4 and cfg.aggregation.settings["top_k"] == 3
    raw = yaml.safe_load(text)
    for section in SECTIONS:
        declared = {f.name for f in dataclasses.fields(getattr(Config(), section)) if info(f).template}
        assert declared <= set(raw[section]), section
        assert all(info(f).help for f in dataclasses.fields(getattr(Config(), section))), section
