"""The coordinator's math on hand-made tensors: no model, no files."""

from __future__ import annotations

import numpy as np
import pytest

from fedbip_cli.core.strategies import RoundStats, make_strategy
from fedbip_cli.core.strategies.base import Mixing
from fedbip_cli.core.strategies.similarity import GLOBAL, cosine_from_gram
from fedbip_cli.core.strategies.weights import apply_self_floor, similarity_weights
from reference import accumulate_grams, mix_tensor


def stats_from(vectors: dict[str, np.ndarray], n=(10, 20, 30), starts=None) -> RoundStats:
    """vectors: tensor name -> K x d array of task vectors."""
    names = sorted(vectors)
    grams = accumulate_grams(names, lambda name: vectors[name])
    model = None
    if starts is not None:
        model = accumulate_grams(names, lambda name: vectors[name] + starts[name])
    return RoundStats(["a", "b", "c"], np.array(n, float), grams, model)


VEC = {
    "m1.lora_A.weight": np.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.2]]),
    "m1.lora_B.weight": np.array([[0.5, 0.5], [0.4, 0.6], [0.0, -0.5]]),
    "head.weight": np.array([[1.0, 2.0], [1.0, 1.5], [0.1, -3.0]]),
}


def test_similarity_symmetric_unit_diagonal_and_matches_concatenation():
    s = stats_from(VEC)
    cos = cosine_from_gram(s.task_grams[GLOBAL])
    flat = np.concatenate([VEC[k] for k in sorted(VEC)], axis=1)
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    np.testing.assert_allclose(cos, unit @ unit.T, atol=1e-12)
    np.testing.assert_allclose(cos, cos.T)
    np.testing.assert_allclose(np.diag(cos), 1.0)


def test_fedbip_matches_hand_computation_of_design_section_2():
    s = stats_from(VEC)
    w = make_strategy("fedbip").mixing(s).matrix
    cos = cosine_from_gram(s.task_grams[GLOBAL])
    # by hand: clamp negatives, normalise rows
    hand = np.maximum(cos, 0) / np.maximum(cos, 0).sum(1, keepdims=True)
    np.testing.assert_allclose(w, hand)
    assert (w >= 0).all() and np.allclose(w.sum(1), 1)
    assert cos[0, 2] < 0 and w[0, 2] == 0  # conflicting client gets no weight
    # aggregation: start_i + sum_k p_ik tau_k
    starts = np.arange(6.0).reshape(3, 2)
    out = mix_tensor(Mixing(w), "m1", starts, VEC["head.weight"])
    np.testing.assert_allclose(out, starts + w @ VEC["head.weight"], rtol=1e-6)


def test_local_is_identity_and_fedavg_is_example_weighted_mean():
    s = stats_from(VEC)
    np.testing.assert_array_equal(make_strategy("local").mixing(s).matrix, np.eye(3))
    starts = np.ones((3, 2))
    taus = VEC["head.weight"]
    local = mix_tensor(make_strategy("local").mixing(s), "head", starts, taus)
    np.testing.assert_allclose(local, starts + taus, rtol=1e-6)
    avg = make_strategy("fedavg").mixing(s)
    trained = starts + taus
    want = (np.array([10, 20, 30])[:, None] * trained).sum(0) / 60
    got = mix_tensor(avg, "head", starts, taus)
    for row in got:
        np.testing.assert_allclose(row, want, rtol=1e-6)


def test_layer_wise_uses_each_modules_own_matrix():
    s = stats_from(VEC)
    mix = make_strategy("fedbip-layer").mixing(s)
    assert set(mix.per_module) == {"m1", "head"}
    for module, names in (("m1", ["m1.lora_A.weight", "m1.lora_B.weight"]), ("head", ["head.weight"])):
        flat = np.concatenate([VEC[n] for n in names], axis=1)
        unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
        cos = unit @ unit.T
        hand = np.maximum(cos, 0) / np.maximum(cos, 0).sum(1, keepdims=True)
        np.testing.assert_allclose(mix.for_module(module), hand, atol=1e-12)
    assert not np.allclose(mix.per_module["m1"], mix.per_module["head"])


def test_weight_options_softmax_topk_self_floor():
    cos = np.array([[1.0, 0.8, 0.3, -0.5], [0.8, 1.0, 0.1, 0.0], [0.3, 0.1, 1.0, 0.2], [-0.5, 0.0, 0.2, 1.0]])
    soft = similarity_weights(cos, negative="softmax", temperature=0.5)
    np.testing.assert_allclose(soft[0], np.exp(cos[0] / 0.5) / np.exp(cos[0] / 0.5).sum())
    top1 = similarity_weights(cos, top_k=1)
    assert np.count_nonzero(top1[0]) == 2 and top1[0, 1] > 0 and top1[0, 2] == 0
    floored = similarity_weights(cos, self_floor=0.7)
    assert np.all(np.diag(floored) >= 0.7 - 1e-12) and np.allclose(floored.sum(1), 1)
    for w in (soft, top1, floored):
        assert (w >= 0).all() and np.allclose(w.sum(1), 1)


def test_self_floor_keeps_ratios_of_others():
    w = np.array([[0.2, 0.6, 0.2]])
    out = apply_self_floor(w, 0.5)
    np.testing.assert_allclose(out, [[0.5, 0.375, 0.125]])


def test_zero_task_vector_rule():
    gram = np.array([[4.0, 0.0, 2.0], [0.0, 0.0, 0.0], [2.0, 0.0, 1.0]])
    cos = cosine_from_gram(gram)
    assert cos[1, 1] == 1 and cos[1, 0] == 0 and cos[0, 1] == 0
    w = similarity_weights(cos)
    np.testing.assert_allclose(w[1], [0, 1, 0])


def test_fedamp_weights_rows_sum_to_one_and_favour_near_models():
    starts = {k: np.zeros_like(v) for k, v in VEC.items()}
    s = stats_from(VEC, starts=starts)
    mix = make_strategy("fedamp").mixing(s)
    assert mix.mode == "model"
    w = mix.matrix
    assert (w >= 0).all() and np.allclose(w.sum(1), 1)
    assert w[0, 1] > w[0, 2]  # a and b are close, c is far


def test_unknown_strategy_is_a_user_error():
    from fedbip_cli.errors import UserError

    with pytest.raises(UserError, match="unknown strategy 'nope'"):
        make_strategy("nope")
