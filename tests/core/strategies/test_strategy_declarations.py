"""Strategies carry their own knowledge: declared settings (checked, defaults filled), what a site does with
the adapter it receives, the proximal pull it asks of a site; FedAMP as PFLlib's server computes it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fedbip_cli.core.strategies import RoundStats, make_strategy
from fedbip_cli.core.strategies.fedamp import FedAMP
from fedbip_cli.core.strategies.registry import (
    CATALOGUE,
    all_strategies,
    declared_params,
)
from fedbip_cli.core.strategies.similarity import GLOBAL
from fedbip_cli.errors import UserError


def test_catalogue_loads_every_strategy_under_its_own_name():
    classes = all_strategies()
    assert list(classes) == list(CATALOGUE)
    for name, cls in classes.items():
        assert cls.name == name and cls.summary
        assert len({p.name for p in cls.params}) == len(cls.params)


def test_construction_fills_declared_defaults_and_records_them():
    s = make_strategy("fedbip")
    assert s.options() == {p.name: p.default for p in s.params}
    assert make_strategy("fedbip", top_k=2, negative="softmax").options()["top_k"] == 2


@pytest.mark.parametrize("name, options, message", [
    ("fedavg", {"sigma": 1.0}, "strategy fedavg: unknown setting 'sigma'"),
    ("fedbip", {"negative": "drop"}, "negative: must be one of clamp, softmax"),
    ("fedbip", {"temperature": 0.0}, r"temperature: must be in \(0, inf\)"),
    ("fedbip", {"top_k": 0}, "top_k: must be in"),
    ("fedbip", {"top_k": 1.5}, "top_k: expected int"),
    ("fedbip", {"self_floor": 2.0}, r"self_floor: must be in \[0, 1\]"),
    ("fedamp", {"sigma": -1.0}, "sigma: must be in"),
    ("fedamp", {"lamda": None}, "lamda: must be set"),
    ("fedamp", {"alpha_k": True}, "alpha_k: expected float"),
])
def test_bad_settings_are_user_errors_naming_strategy_and_key(name, options, message):
    with pytest.raises(UserError, match=message):
        make_strategy(name, **options)


def test_variants_declare_what_a_site_does_after_receiving():
    classes = all_strategies()
    assert classes["fedavg-ft"].after_receive == "finetune"
    assert classes["tap"].after_receive == classes["fedbip-tap"].after_receive == "tap"
    assert {n for n, c in classes.items() if c.after_receive == "evaluate"} == {
        "local", "fedavg", "fedamp", "fedbip", "fedbip-layer"}
    s = stats(np.array([[1.0, 0.2, 0.0], [0.2, 1.0, 0.1], [0.0, 0.1, 1.0]]))
    np.testing.assert_array_equal(make_strategy("fedavg-ft").mixing(s).matrix, make_strategy("fedavg").mixing(s).matrix)
    np.testing.assert_array_equal(make_strategy("fedbip-tap").mixing(s).matrix,
                                  make_strategy("fedbip").mixing(s).matrix)


def test_shared_settings_are_declared_once():
    params = declared_params()
    assert params["negative"] is next(p for p in all_strategies()["fedbip-tap"].params if p.name == "negative")
    assert {"sigma", "alpha_k", "lamda", "negative", "temperature", "top_k", "self_floor"} == set(params)


def stats(model_gram: np.ndarray) -> RoundStats:
    k = model_gram.shape[0]
    return RoundStats([f"c{i}" for i in range(k)], np.full(k, 10), {GLOBAL: np.eye(k)}, {GLOBAL: model_gram})


def gram_of(points: np.ndarray) -> np.ndarray:
    return points @ points.T


def test_fedamp_is_pflib_formula_with_explicit_sigma_and_alpha():
    """xi_ik = alpha_K exp(-d/sigma)/sigma off the diagonal, xi_ii = 1 - sum (PFLlib serveramp.py)."""
    pts = np.array([[0.0, 0.0], [0.3, 0.0], [0.0, 2.0]])
    mix = make_strategy("fedamp", sigma=0.5, alpha_k=0.2).mixing(stats(gram_of(pts)))
    d = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    for i in range(3):
        for k in range(3):
            if i != k:
                assert mix.matrix[i, k] == pytest.approx(0.2 * np.exp(-d[i, k] / 0.5) / 0.5)
    np.testing.assert_allclose(mix.matrix.sum(1), 1.0)
    assert mix.mode == "model"


def test_fedamp_self_weight_is_not_renormalised():
    """PFLlib keeps 1 - sum even when it is negative (close adapters, sigma and alpha_K of 1)."""
    pts = np.array([[0.0], [0.01], [0.02], [0.03]])
    w = make_strategy("fedamp", sigma=1.0, alpha_k=1.0).mixing(stats(gram_of(pts))).matrix
    assert (np.diag(w) < 0).all()
    np.testing.assert_allclose(w.sum(1), 1.0)


def test_fedamp_defaults_keep_self_weight_positive_and_favour_near_adapters():
    pts = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [3.0, 3.0]])
    w = make_strategy("fedamp").mixing(stats(gram_of(pts))).matrix
    off = w[~np.eye(4, dtype=bool)]
    assert (off <= 1 / 4 + 1e-12).all() and (np.diag(w) >= 1 / 4 - 1e-12).all()
    assert w[0, 1] > w[0, 3]


def test_site_proximal_is_lambda_over_alpha_k():
    assert make_strategy("fedamp", lamda=0.5, alpha_k=0.25).site_proximal() == pytest.approx(2.0)
    assert make_strategy("fedamp", lamda=0.5).site_proximal() == 0.5  # alpha_k null: alpha_K = 1 at the site
    assert all(make_strategy(n).site_proximal() == 0.0 for n in CATALOGUE if n != "fedamp")
    assert FedAMP.differs


def test_catalogue_costs_no_numpy():
    """`fedbip --help` lists the names from the catalogue; importing it must not import numpy."""
    code = ("import sys, fedbip_cli.core.strategies.registry as r; "
            "assert r.CATALOGUE and 'numpy' not in sys.modules, sorted(m for m in sys.modules if 'numpy' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)
