"""fedbip.yaml's `aggregation:` holds each strategy's settings, checked by the strategy that declares them."""

from __future__ import annotations

import pytest
import yaml

from fedbip_cli.errors import UserError
from fedbip_cli.workspace.config import Config, override, parse_config
from fedbip_cli.workspace.template import render


def config_with(aggregation: dict) -> Config:
    raw = yaml.safe_load(render())
    raw["aggregation"].update(aggregation)
    return parse_config(raw, "fedbip.yaml")


def test_settings_reach_the_strategy_that_declares_them():
    cfg = config_with({"strategy": "fedamp", "sigma": 0.5, "lamda": 2, "top_k": 3})
    s = cfg.aggregation.make_strategy()
    assert (s.sigma, s.alpha_k, s.lamda) == (0.5, None, 2.0)
    assert cfg.aggregation.options_for("fedbip")["top_k"] == 3
    assert cfg.aggregation.make_strategy("fedbip").top_k == 3


@pytest.mark.parametrize("aggregation, message", [
    ({"sigmaa": 1.0}, "fedbip.yaml: aggregation.sigmaa: unknown key 'sigmaa'"),
    ({"sigma": -1}, r"fedbip.yaml: aggregation.sigma: must be in \(0, inf\), got -1.0"),
    ({"negative": "drop"}, "fedbip.yaml: aggregation.negative: must be one of clamp, softmax"),
    ({"strategy": "fedprox"}, "fedbip.yaml: aggregation.strategy: unknown strategy 'fedprox'"),
    ({"settings": {}}, "unknown key 'settings'"),
    ({"temperature": float("nan")}, "fedbip.yaml: aggregation.temperature: must be a finite number, got nan"),
    ({"sigma": float("inf")}, "fedbip.yaml: aggregation.sigma: must be a finite number, got inf"),
])
def test_bad_aggregation_keys_name_file_and_key(aggregation, message):
    with pytest.raises(UserError, match=message):
        config_with(aggregation)


def test_every_catalogued_strategy_is_accepted():
    from fedbip_cli.core.strategies.registry import CATALOGUE

    for name in CATALOGUE:
        assert config_with({"strategy": name}).aggregation.make_strategy().name == name


def test_set_override_checks_strategy_settings():
    cfg = config_with({})
    override(cfg, "aggregation.alpha_k", "0.25", "--set aggregation.alpha_k")
    assert cfg.aggregation.make_strategy("fedamp").site_proximal() == pytest.approx(4.0)
    with pytest.raises(UserError, match="--set aggregation.top_k: aggregation.top_k: must be in"):
        override(cfg, "aggregation.top_k", "0", "--set aggregation.top_k")
