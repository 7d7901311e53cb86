"""`simulate` on causal-lm (the paper's NLP setting in miniature): two clients with one instruction task
each, two rounds, on the tiny Llama; exact match, token F1 and response loss in every output; TAP with
token-level distillation."""

from __future__ import annotations

import json

import pytest

from helpers import build_lm_workspace

CLIENTS = {"copy": "copy", "first": "first"}


@pytest.fixture(scope="module")
def lm_sim(tiny_llama, tmp_path_factory):
    import fedbip_cli.client.loading as loading
    from fedbip_cli.sim.report import write_report
    from fedbip_cli.sim.simulate import simulate

    ws = build_lm_workspace(tmp_path_factory.mktemp("lm-sim") / "ws", tiny_llama, CLIENTS,
                            **{"max_steps: null": "max_steps: 2",  # and mixed ranks, as in examples/multitask
                               "test: data/first/test.jsonl": "test: data/first/test.jsonl\n    lora_r: 4"})
    loads = []
    real = loading.load_pretrained
    loading.load_pretrained = lambda *a, **k: loads.append(a[1]) or real(*a, **k)  # counts, then really loads
    try:
        res = simulate(ws, ["fedbip", "fedavg"], rounds=2, plots=False)
    finally:
        loading.load_pretrained = real
    report, figures = write_report(res, ws / "runs", title="causal-lm")
    return ws, res, report, figures, loads


def test_every_round_reports_rouge_exact_match_token_f1_and_response_loss(lm_sim):
    ws, res, _, _, _ = lm_sim
    assert res.metrics == ("rougeL", "rouge1", "rouge2", "exact_match", "token_f1", "loss")
    assert res.primary == "rougeL"  # the registry's headline
    for s in ("fedbip", "fedavg"):
        assert len(res.evaluations[s]) == 2
        for t, ev in enumerate(res.evaluations[s]):
            assert ev == json.loads((ws / f"runs/{s}/rounds/{t:04d}/evaluation.json").read_text())
            assert ev["primary"] == "rougeL"
            for m in res.metrics:
                assert set(ev[m]) == set(CLIENTS)
                assert ev[f"mean_{m}"] == pytest.approx(sum(ev[m].values()) / len(CLIENTS))
            assert ev["worst_exact_match"] == min(ev["exact_match"].values())
            assert ev["worst_loss"] == max(ev["loss"].values())  # worst loss is the highest
            assert all(0 <= v <= 1 for m in res.metrics if m != "loss" for v in ev[m].values())
    doc = json.loads((ws / "runs/results.json").read_text())
    assert doc["metrics"] == list(res.metrics)
    assert doc["results"]["fedbip"][1]["mean_loss"] == res.evaluations["fedbip"][1]["mean_loss"]


def test_report_tables_and_plots(lm_sim):
    _, res, report, figures, _ = lm_sim
    text = report.read_text()
    for heading in ("Test ROUGE-L after each round", "Test ROUGE-1 after each round",
                    "Test exact match after each round", "Test token F1 after each round",
                    "Test response loss after each round", "Per-client ROUGE-L after round 1"):
        assert heading in text
    # the headline first
    assert text.index("Test ROUGE-L after each round") < text.index("Test ROUGE-1 after each round")
    assert figures["mean_rougeL"]["fedavg"] == res.mean("fedavg", "rougeL")
    pytest.importorskip("matplotlib")
    for png in ("rougeL.png", "exact_match.png", "token_f1.png", "loss.png"):
        assert (report.parent / png).is_file() and f"]({png})" in text


def test_the_base_model_loads_once_for_every_client_rank_round_and_strategy(lm_sim):
    *_, loads = lm_sim
    assert len(loads) == 1


def test_tap_on_causal_lm_distils_token_by_token(tiny_llama, tmp_path):
    from fedbip_cli.sim.simulate import simulate

    ws = build_lm_workspace(tmp_path / "ws", tiny_llama, CLIENTS,
                            **{"max_steps: null": "max_steps: 3", "distill_steps: 50": "distill_steps: 8",
                               "distill_batch_size: 32": "distill_batch_size: 6"})
    res = simulate(ws, ["fedbip-tap"], rounds=1, plots=False)
    assert set(res.evaluations["fedbip-tap"][0]["exact_match"]) == set(CLIENTS)
    for c in CLIENTS:
        log = [json.loads(x) for x in (ws / f"runs/fedbip-tap/personal/{c}/decisions.jsonl").read_text().splitlines()]
        assert [x["stage"] for x in log] == ["accept", "distill"]
        distil = log[1]
        # the student moved to the teacher
        assert distil["steps"] == 8 and 0 <= distil["kl_after"] < distil["kl_before"]
        assert (ws / f"runs/fedbip-tap/personal/{c}/teacher/adapter_model.safetensors").is_file()
