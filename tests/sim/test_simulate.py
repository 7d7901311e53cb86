"""`simulate` on the tiny BERT: every strategy, reuse of identical training, resume, determinism."""

from __future__ import annotations

import json

import pytest

from fedbip_cli.errors import UserError
from fedbip_cli.sim.simulate import Reporter, all_strategies, simulate

CLIENTS = {"a": ["sport", "money"], "b": ["sport", "money"], "c": ["tech", "money"]}


class StopAt(Reporter):
    """Interrupts the run when it reaches one phase, as a kill would."""

    def __init__(self, strategy: str, t: int, what: str, client: str) -> None:
        self.at = (strategy, t, what, client)

    def phase(self, strategy, t, what, client=None):
        if (strategy, t, what, client) == self.at:
            raise KeyboardInterrupt


def test_every_strategy_runs_and_writes_the_round_files(make_workspace):
    # Prepare
    ws = make_workspace(CLIENTS, n_train=6, n_test=4)
    # Execute
    res = simulate(ws, all_strategies(), rounds=2)
    # Assert
    assert all_strategies() == ["local", "fedavg", "fedavg-ft", "fedamp", "fedbip", "fedbip-layer"]
    assert set(res.evaluations) == set(all_strategies())
    for s in all_strategies():
        run = ws / "runs" / s
        assert len(res.evaluations[s]) == 2
        for t in (0, 1):
            rd = run / "rounds" / f"{t:04d}"
            for name in ("weights.json", "similarity.json", "manifest.json", "evaluation.json"):
                assert (rd / name).is_file(), (s, t, name)
            assert json.loads((rd / "weights.json").read_text())["strategy"] == s
            ev = res.evaluations[s][t]
            assert set(ev["accuracy"]) == set(CLIENTS) and 0 <= ev["worst_accuracy"] <= ev["mean_accuracy"] <= 1
        assert (run / "rounds/0002/start/a/adapter_model.safetensors").is_file()
    # fedavg-ft evaluates the global adapter after a local fine-tune, which is round t+1's training
    assert (ws / "runs/fedavg-ft/rounds/0002/trained/a").is_dir()
    # round 0 is trained once for all but fedamp (its proximal pull changes training); fedavg and fedavg-ft
    # share all training (ft's eval = next round's)
    assert res.trained == 3 + 3 + 3 + 4 * 3 + 3 and res.reused == 4 * 3 + 3
    assert json.loads((ws / "runs/fedamp/rounds/0000/trained/a/fedbip_training.json").read_text())["proximal"] == 1.0
    reused = json.loads((ws / "runs/fedbip/rounds/0000/trained/b/fedbip_training.json").read_text())
    assert "reused_from" in reused and reused["start"].endswith("runs/fedbip/initial")
    doc = json.loads((ws / "runs/results.json").read_text())
    assert doc["results"]["fedbip"][1]["mean_accuracy"] == res.evaluations["fedbip"][1]["mean_accuracy"]


def test_reused_training_is_what_training_would_give(make_workspace, tmp_path):
    shared = make_workspace(CLIENTS, n_train=6, n_test=4, folder=tmp_path / "shared")
    alone = make_workspace(CLIENTS, n_train=6, n_test=4, folder=tmp_path / "alone")
    simulate(shared, ["fedavg", "fedbip"], rounds=1)
    simulate(alone, ["fedbip"], rounds=1)
    for c in CLIENTS:
        f = "rounds/0000/trained/{}/adapter_model.safetensors".format(c)
        assert (shared / "runs/fedbip" / f).read_bytes() == (alone / "runs/fedbip" / f).read_bytes()


def test_resume_after_an_interrupted_round_gives_the_uninterrupted_result(make_workspace, tmp_path):
    # Prepare
    ref = make_workspace(CLIENTS, n_train=6, n_test=4, folder=tmp_path / "ref")
    ws = make_workspace(CLIENTS, n_train=6, n_test=4, folder=tmp_path / "ws")
    want = simulate(ref, ["fedbip", "local"], rounds=2)
    # Execute: killed in round 1 after fedbip's a and b trained, then run again
    with pytest.raises(KeyboardInterrupt):
        simulate(ws, ["fedbip", "local"], rounds=2, reporter=StopAt("fedbip", 1, "taskvec", "b"))
    trained_a = ws / "runs/fedbip/rounds/0001/trained/a/adapter_model.safetensors"
    before = trained_a.stat().st_mtime_ns
    assert not (ws / "runs/fedbip/rounds/0001/evaluation.json").exists()
    got = simulate(ws, ["fedbip", "local"], rounds=2)
    # Assert
    assert trained_a.stat().st_mtime_ns == before  # finished work is not redone
    assert got.trained == 1 + 3  # fedbip's c of round 1, and local's round 1 (it had not started)
    assert got.evaluations == want.evaluations or _same_numbers(got.evaluations, want.evaluations)
    # a further call with more rounds continues from there
    more = simulate(ws, ["fedbip", "local"], rounds=3)
    assert more.trained == 2 * 3 and len(more.evaluations["fedbip"]) == 3


def _same_numbers(a: dict, b: dict) -> bool:
    def strip(evs):
        return {s: [{k: e[k] for k in ("accuracy", "metrics")} for e in v] for s, v in evs.items()}

    return strip(a) == strip(b)


def test_same_seed_gives_the_same_numbers(make_workspace, tmp_path):
    one = make_workspace(CLIENTS, n_train=6, n_test=4, folder=tmp_path / "one")
    two = make_workspace(CLIENTS, n_train=6, n_test=4, folder=tmp_path / "two")
    a = simulate(one, ["fedbip-layer", "fedamp"], rounds=2)
    b = simulate(two, ["fedbip-layer", "fedamp"], rounds=2)
    assert _same_numbers(a.evaluations, b.evaluations)
    for s in ("fedbip-layer", "fedamp"):
        f = f"runs/{s}/rounds/0002/start/c/adapter_model.safetensors"
        assert (one / f).read_bytes() == (two / f).read_bytes()


def test_changed_config_needs_restart(make_workspace):
    ws = make_workspace(CLIENTS, n_train=4, n_test=2)
    simulate(ws, ["local"], rounds=1)
    cfg = ws / "fedbip.yaml"
    cfg.write_text(cfg.read_text().replace("epochs: 1.0", "epochs: 2.0"))
    with pytest.raises(UserError, match="--restart"):
        simulate(ws, ["local"], rounds=1)
    res = simulate(ws, ["local"], rounds=1, restart=True)
    assert res.trained == 3


def test_simulate_cli(cli, make_workspace):
    ws = make_workspace(CLIENTS, n_train=4, n_test=2)
    r = cli("simulate", "-w", ws, "--strategies", "fedbip,fedavg-ft", "--rounds", 1, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert set(doc["results"]) == {"fedbip", "fedavg-ft"} and (ws / "runs/report.md").is_file()
    r = cli("simulate", "-w", ws, "--strategies", "fedbip,nope")
    assert r.exit_code == 2 and "unknown strategy 'nope'" in r.output


def test_report_has_tables_plots_and_group_similarity(make_workspace):
    from fedbip_cli.sim.report import write_report

    ws = make_workspace(CLIENTS, n_train=4, n_test=2)
    res = simulate(ws, ["fedbip", "local"], rounds=1)
    path, figures = write_report(res, ws / "out", title="t", groups={"a": 0, "b": 0, "c": 1})
    text = path.read_text()
    assert "| fedbip |" in text and "round 0" in text
    assert {"within_group_similarity", "cross_group_similarity"} <= set(figures)
    assert (ws / "out/accuracy.png").is_file() and (ws / "out/similarity.png").is_file()


def test_tap_variants_gate_every_round_distil_after_the_last_and_reuse_training(make_workspace):
    ws = make_workspace(CLIENTS, n_train=6, n_test=4)
    res = simulate(ws, ["fedavg", "tap", "fedbip-tap"], rounds=2)
    fedavg_weights = json.loads((ws / "runs/fedavg/rounds/0001/weights.json").read_text())
    for s, mode in (("tap", "model"), ("fedbip-tap", "update")):  # the coordinator side is fedavg's, fedbip's
        run = ws / "runs" / s
        weights = json.loads((run / "rounds/0001/weights.json").read_text())
        assert (weights["strategy"], weights["mode"]) == (s, mode)
        if s == "tap":
            assert weights["weights"] == fedavg_weights["weights"]
        for c in CLIENTS:
            log = [json.loads(line) for line in (run / f"personal/{c}/decisions.jsonl").read_text().splitlines()]
            assert [(d["stage"], d["round"]) for d in log] == [("accept", 1), ("accept", 2), ("distill", 2)]
            assert log[0]["action"] == "seed"
        assert res.evaluations[s][-1]["adapter"] == "TAP personal adapter"
    # tap's federation is fedavg's: its training was copied, never redone
    tap_info = json.loads((ws / "runs/tap/rounds/0001/trained/a/fedbip_training.json").read_text())
    assert "reused_from" in tap_info
    # the personal adapters never reach the coordinator's files
    assert not any("personal" in str(p.relative_to(ws)) for p in (ws / "runs/tap/rounds").rglob("*"))


def test_evaluation_workers_change_no_result_and_no_file(make_workspace, tmp_path):
    """eval_workers (the demo's 2 threads beside the training) gives the inline run's numbers, evaluation.json
    and metrics.jsonl records in the same order (only their timestamps differ), and the same adapters."""
    inline = make_workspace(CLIENTS, n_train=6, n_test=4, folder=tmp_path / "inline")
    workers = make_workspace(CLIENTS, n_train=6, n_test=4, folder=tmp_path / "workers")
    a = simulate(inline, all_strategies(), rounds=2, plots=False)
    b = simulate(workers, all_strategies(), rounds=2, plots=False, eval_workers=2)
    assert a.evaluations == b.evaluations and (a.trained, a.reused) == (b.trained, b.reused)
    def records(path):
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in path.read_text().splitlines()]

    for s in all_strategies():
        assert records(inline / "runs" / s / "metrics.jsonl") == records(workers / "runs" / s / "metrics.jsonl"), s
        for t in (0, 1):
            f = f"runs/{s}/rounds/{t:04d}/evaluation.json"
            assert (inline / f).read_bytes() == (workers / f).read_bytes(), f
        f = f"runs/{s}/rounds/0002/start/c/adapter_model.safetensors"
        assert (inline / f).read_bytes() == (workers / f).read_bytes(), f
