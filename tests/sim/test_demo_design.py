"""The demo's federation as designed (docs/simulate.md): limited data, related and conflicting groups, enough
test examples; the data-rich regime beside it. Builds the federations from the packaged BBC News (no model)."""

from __future__ import annotations

import pytest
import yaml

from fedbip_cli.sim.demo import DATA_RICH, DEMO_REGIME, INSTRUCTIONS, LIMITED, SMOLLM2_CHAT, binomial_se, build
from fedbip_cli.sim.partition import read_groups
from fedbip_cli.sim.report import client_spread


def count_lines(path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("regime", [LIMITED, DATA_RICH], ids=lambda r: r.name)
def test_regime_builds_the_federation_it_describes(regime, tmp_path):
    build(tmp_path, regime.spec, regime.settings, regime.chars)
    groups = read_groups(tmp_path)
    assert len(groups) == regime.spec.clients and set(groups.values()) == set(range(regime.spec.groups))
    cfg = yaml.safe_load((tmp_path / "fedbip.yaml").read_text())
    assert cfg["model"]["max_length"] == regime.settings["model.max_length"]
    assert cfg["training"]["epochs"] == regime.settings["training.epochs"]
    for files in cfg["clients"].values():
        assert count_lines(tmp_path / files["train"]) == regime.spec.train
        assert count_lines(tmp_path / files["test"]) == regime.spec.test
    build(tmp_path, regime.spec, regime.settings, regime.chars)  # the same federation: resumes, no error


def test_instructions_regime_is_one_task_per_client_on_the_packaged_decoder(tmp_path):
    spec = INSTRUCTIONS.spec
    build(tmp_path, spec, INSTRUCTIONS.settings, INSTRUCTIONS.chars)
    cfg = yaml.safe_load((tmp_path / "fedbip.yaml").read_text())
    assert cfg["task"]["type"] == "causal-lm" and cfg["model"]["path"] is None  # the packaged SmolLM2
    assert cfg["task"]["prompt_template"] == SMOLLM2_CHAT and cfg["task"]["task_field"] == "task"
    groups = read_groups(tmp_path)
    assert sorted(groups.values()) == sorted(g for g in range(len(spec.tasks)) for _ in range(2))  # 2 per task
    for files in cfg["clients"].values():
        assert count_lines(tmp_path / files["train"]) == spec.train
        assert count_lines(tmp_path / files["test"]) == spec.test
    assert INSTRUCTIONS.eval_workers >= 1 and INSTRUCTIONS.rounds >= 1
    build(tmp_path, spec, INSTRUCTIONS.settings, INSTRUCTIONS.chars)  # the same federation: resumes


def test_demo_is_the_limited_data_regime_with_measurable_differences():
    assert DEMO_REGIME is LIMITED
    assert LIMITED.spec.train < DATA_RICH.spec.train and LIMITED.spec.groups >= 2
    n_test = LIMITED.spec.clients * LIMITED.spec.test
    assert 2 * binomial_se(0.7, n_test) < 0.035  # a 3-point difference is about 2 standard errors


def test_client_spread_is_mean_standard_error_and_worst():
    mean, se, worst = client_spread({"accuracy": {"a": 0.5, "b": 0.7, "c": 0.9}})
    assert mean == pytest.approx(0.7) and worst == 0.5
    assert se == pytest.approx(0.2 / 3 ** 0.5)


def test_unknown_regime_is_a_user_error(cli, tmp_path):
    r = cli("demo", "--out", tmp_path / "d", "--regime", "huge")
    assert r.exit_code == 2 and "unknown regime 'huge'" in r.output
    assert not (tmp_path / "d").exists()
