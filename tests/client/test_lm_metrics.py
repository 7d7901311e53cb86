"""causal-lm scores as the field reports them: rouge-score's ROUGE-1/2/L F-measures (Porter stemmer) beside
exact match and token F1, and ROUGE-L as the type's headline in the registry. No model."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("rouge_score")

from fedbip_cli.client.tasks.causal_lm import metrics  # noqa: E402
from fedbip_cli.errors import UserError  # noqa: E402
from fedbip_cli.workspace.task_types import task_type  # noqa: E402


def test_rouge_on_known_strings():
    # 6 words each, 5 shared after stemming (cats -> cat); the longest common subsequence has 5
    s = metrics.rouge("The cats sat on a mat", "the cat sat on the mat")
    assert s["rouge1"] == pytest.approx(5 / 6) and s["rougeL"] == pytest.approx(5 / 6)
    assert s["rouge2"] == pytest.approx(3 / 5)  # 5 bigrams each; "the cat", "cat sat", "sat on" shared
    assert metrics.rouge("business", "business") == {"rouge1": 1.0, "rouge2": 0.0, "rougeL": 1.0}
    assert metrics.rouge("", "business")["rougeL"] == 0.0
    order = metrics.rouge("mat the on sat cat the", "the cat sat on the mat")
    assert order["rouge1"] == 1.0 and order["rougeL"] == pytest.approx(3 / 6)  # ROUGE-L reads word order: LCS 3


def test_lm_metrics_report_rouge_exact_match_and_token_f1():
    m = metrics.lm_metrics([2.0, 2.0], [1, 1], ["Business.", "the cat sat"], ["business", "a cat sat down"])
    assert m["exact_match"] == 0.5 and m["rougeL"] == pytest.approx((1 + 2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4)) / 2)
    assert set(metrics.ROUGE_TYPES) <= set(m) and m["loss"] == 2.0


def test_missing_rouge_score_is_one_line(monkeypatch):
    metrics.rouge_scorer.cache_clear()
    monkeypatch.setitem(sys.modules, "rouge_score.rouge_scorer", None)
    try:
        with pytest.raises(UserError, match=r"pip install 'fedbip\[llm\]'"):
            metrics.rouge("a", "a")
    finally:
        metrics.rouge_scorer.cache_clear()


def test_rouge_l_is_the_causal_lm_headline():
    spec = task_type("causal-lm")
    assert spec.headline == "rougeL" and {"rouge1", "rouge2", "exact_match", "token_f1", "loss"} <= set(spec.metrics)
