"""The clipping rule (docs/reliability.md, "Clipping"): zero vectors not counted, small rounds,
and the bound when up to half the vectors are hostile."""

from __future__ import annotations

import numpy as np
import pytest

from fedbip_cli.core.engine.clipping import clip_round_norms, lower_median
from fedbip_cli.errors import UserError


def clipped_norms(norms, factor=3.0, history=None) -> np.ndarray:
    clip = clip_round_norms(np.asarray(norms, float), factor, history)
    return np.asarray(norms, float) * clip.scales


def test_idle_clients_do_not_count_towards_the_median():
    # three clients, two idle: the one real update is not scaled to zero (the old median of all was 0)
    out = clipped_norms([0.0, 2.0, 0.0])
    assert out[1] == 2.0 and out[0] == out[2] == 0.0


def test_two_clients_a_hundredfold_vector_is_clipped():
    # the median of two is their mean (50.5 x 3 would let x100 through); the lower median is not
    out = clipped_norms([1.0, 100.0])
    assert out[0] == 1.0 and out[1] == pytest.approx(3.0)
    assert clip_round_norms(np.array([1.0, 100.0]), 3.0).rule == "pair"


def test_small_rounds_take_the_historical_bound():
    clip = clip_round_norms(np.array([0.0, 50.0]), 3.0, history=4.5)
    assert clip.rule == "history" and clip.bound == 4.5
    assert clipped_norms([0.0, 50.0], history=4.5)[1] == pytest.approx(4.5)
    # a lone non-zero vector without history is left as it is, and the record says so
    alone = clip_round_norms(np.array([0.0, 50.0, 0.0]), 3.0)
    assert alone.rule == "none" and alone.bound is None and not alone.active


@pytest.mark.parametrize("n_honest, n_hostile", [(2, 2), (3, 3), (3, 2), (5, 5), (6, 1), (1, 1)])
def test_up_to_half_hostile_vectors_stay_within_factor_times_the_largest_honest_norm(n_honest, n_hostile):
    rng = np.random.default_rng(n_honest * 10 + n_hostile)
    for _ in range(200):
        honest = rng.uniform(0.5, 2.0, n_honest)
        hostile = rng.uniform(10.0, 1e6, n_hostile)  # inflated, as large as they like
        norms = rng.permutation(np.concatenate([honest, hostile]))
        out = clipped_norms(norms, factor=3.0)
        assert out.max() <= 3.0 * honest.max() * (1 + 1e-12)
        if n_hostile < n_honest:  # fewer than half hostile: honest vectors no shorter than 3 x the shortest honest
            assert clip_round_norms(norms, 3.0).bound >= 3.0 * honest.min()


def test_lower_median_is_one_of_the_values():
    assert lower_median(np.array([4.0, 1.0, 3.0, 2.0])) == 2.0
    assert lower_median(np.array([5.0])) == 5.0


@pytest.mark.parametrize("factor", [-1.0, 0.0, float("nan"), float("inf"), True, "3"])
def test_a_factor_that_is_not_a_positive_number_is_refused(factor):
    with pytest.raises(UserError, match="clip_factor"):
        clip_round_norms(np.array([1.0, 2.0, 3.0]), factor)


def test_off_and_record():
    assert clip_round_norms(np.array([1.0, 100.0, 1.0]), None).rule == "off"
    clip = clip_round_norms(np.array([1.0, 100.0, 1.0, 0.0]), 3.0)
    rec = clip.record(["a", "b", "c", "d"])
    assert rec["rule"] == "median" and rec["bound"] == 3.0 and rec["nonzero_vectors"] == 3
    assert rec["clipped"] == {"b": 0.03}


def test_the_historical_bound_is_the_latest_median_bound_of_the_same_space(tmp_path):
    import json

    from fedbip_cli.steps.coordinator.aggregate import clip_history
    from fedbip_cli.testing.synthetic import Shape, make_round
    from fedbip_cli.workspace.layout import Workspace

    make_round(tmp_path, 3, Shape())
    ws = Workspace.open(tmp_path)

    def record(t: int, space: str, rule: str, bound) -> None:
        ws.round_dir(t).mkdir(parents=True, exist_ok=True)
        doc = {"space": space, "clip": {"rule": rule, "bound": bound}}
        (ws.round_dir(t) / "weights.json").write_text(json.dumps(doc))

    assert clip_history(ws, 3, "factor") is None
    record(0, "factor", "median", 2.5)
    record(1, "factor", "pair", 9.0)  # a small round's bound is not history
    record(2, "delta", "median", 7.0)  # nor another space's
    assert clip_history(ws, 3, "factor") == 2.5
    assert clip_history(ws, 3, "delta") == 7.0
    record(2, "delta", "median", -1)
    with pytest.raises(UserError, match="clip.bound"):
        clip_history(ws, 3, "delta")
