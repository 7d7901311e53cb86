"""fedbip on Flower: a simulated federation of three sites x two rounds on the tiny BERT, checked
against the file pipeline. Skipped when Flower is not installed (`pip install 'fedbip[flower]'`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # Flower reports usage events unless told not to
flwr = pytest.importorskip("flwr")
pytest.importorskip("flwr.serverapp.strategy")

from safetensors.numpy import load_file  # noqa: E402

SITES = {"a": ["sport", "money"], "b": ["sport", "money"], "c": ["tech", "money"]}


def tensors(path: Path) -> dict[str, np.ndarray]:
    return load_file(str(path / "adapter_model.safetensors" if path.is_dir() else path))


def assert_close(x: Path, y: Path, atol: float = 1e-6) -> None:
    tx, ty = tensors(x), tensors(y)
    assert set(tx) == set(ty)
    for k in tx:
        np.testing.assert_allclose(tx[k], ty[k], atol=atol, rtol=0, err_msg=f"{x} vs {y}: {k}")


def simulate(root: Path, rounds: int) -> None:
    """Flower's in-process simulation runtime (Ray, one worker) over the workspaces under root."""
    from flwr.simulation import run_simulation

    from fedbip_cli.flower.client import make_client_app
    from fedbip_cli.flower.server import make_server_app

    run_simulation(
        server_app=make_server_app(**{"workspace": str(root / "coordinator"), "num-server-rounds": rounds,
                                      "plot": False, "min-available-nodes": len(SITES)}),
        client_app=make_client_app(**{"sim-root": str(root), "sim-sites": ",".join(SITES)}),
        num_supernodes=len(SITES),
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 1}},
    )


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory, build_workspace):
    """Run the Flower simulation once: sites a, b, c and a coordinator, each in its own workspace."""
    root = tmp_path_factory.mktemp("flower")
    for folder in [*SITES, "coordinator"]:
        build_workspace(root / folder, SITES)
    simulate(root, rounds=2)
    return root


@pytest.fixture(scope="module")
def file_run(tmp_path_factory, build_workspace):
    """The same federation through the file pipeline's functions, in one workspace."""
    from fedbip_cli import aggregate, finetune, make_initial, similarity, taskvec
    from fedbip_cli.workspace.layout import Workspace

    root = build_workspace(tmp_path_factory.mktemp("files") / "ws", SITES)
    ws = Workspace.open(root)
    make_initial(ws)
    for t in (0, 1):
        for c in SITES:
            finetune(ws, c, t)
            taskvec(ws, c, t)
        similarity(ws, t, plot=False)
        aggregate(ws, t)
    return root


def test_flower_writes_the_file_pipeline_round_files(flower_run, cli):
    coord = flower_run / "coordinator"
    for t in (0, 1):
        rd = coord / "rounds" / f"{t:04d}"
        for name in ("similarity.json", "similarity.csv", "weights.json", "manifest.json"):
            assert (rd / name).is_file(), name
        assert sorted(p.stem for p in (rd / "deltas").glob("*.safetensors")) == sorted(SITES)
        steps = json.loads((rd / "manifest.json").read_text())["steps"]
        assert {"flower", "similarity", "aggregate"} <= set(steps)
        assert sorted(steps["flower"]["nodes"]) == sorted(SITES)
        r = cli("verify", "-r", t, "-w", coord)
        assert r.exit_code == 0, r.output
    for c in SITES:  # each site holds its own next adapter, byte for byte the coordinator's
        site = flower_run / c
        mine = site / "rounds/0002/start" / c / "adapter_model.safetensors"
        assert mine.read_bytes() == (coord / "rounds/0002/start" / c / "adapter_model.safetensors").read_bytes()
        for t in (0, 1):  # the coordinator's task vector is the site's file, byte for byte
            name = f"rounds/{t:04d}/deltas/{c}.safetensors"
            assert (site / name).read_bytes() == (coord / name).read_bytes()
        lines = [json.loads(x) for x in (site / "metrics.jsonl").read_text().splitlines()]
        assert [x["round"] for x in lines] == [1, 2] and all(x["examples"] == 12 for x in lines)
        assert [x["after_round"] for x in lines] == [0, 1]  # the count of tables and evaluation.json
    evals = [json.loads(x) for x in (coord / "metrics.jsonl").read_text().splitlines()]
    assert sorted((x["client"], x["round"]) for x in evals) == sorted((c, t) for c in SITES for t in (1, 2))


def test_flower_equals_the_file_pipeline(flower_run, file_run):
    coord = flower_run / "coordinator"
    for t in (0, 1):
        rd, fd = coord / "rounds" / f"{t:04d}", file_run / "rounds" / f"{t:04d}"
        for c in SITES:
            assert_close(rd / "deltas" / f"{c}.safetensors", fd / "deltas" / f"{c}.safetensors")
        wf, wp = json.loads((rd / "weights.json").read_text()), json.loads((fd / "weights.json").read_text())
        assert wf["clients"] == wp["clients"] and wf["strategy"] == wp["strategy"] == "fedbip"
        np.testing.assert_allclose(wf["weights"], wp["weights"], atol=1e-6, rtol=0)
        nd, nf = coord / "rounds" / f"{t + 1:04d}", file_run / "rounds" / f"{t + 1:04d}"
        for c in SITES:
            assert_close(nd / "start" / c, nf / "start" / c)
        assert_close(nd / "global", nf / "global")


def test_file_pipeline_on_flowers_task_vectors_gives_the_same_bytes(flower_run, tmp_path, cli):
    copy = shutil.copytree(flower_run / "coordinator", tmp_path / "coordinator")
    for t in (0, 1):
        r = cli("aggregate", "-r", t, "-w", copy, "--force", "--json")
        assert r.exit_code == 0, r.output
        for c in [*SITES, "global"]:
            sub = f"rounds/{t + 1:04d}/" + (c if c == "global" else f"start/{c}") + "/adapter_model.safetensors"
            assert (copy / sub).read_bytes() == (flower_run / "coordinator" / sub).read_bytes(), sub
        assert (json.loads((copy / f"rounds/{t:04d}/weights.json").read_text())["weights"]
                == json.loads((flower_run / f"coordinator/rounds/{t:04d}/weights.json").read_text())["weights"])


def test_fedbip_commands_resume_after_flower(flower_run, tmp_path, cli):
    root = shutil.copytree(flower_run, tmp_path / "fed")
    deltas = root / "coordinator/rounds/0002/deltas"
    deltas.mkdir(parents=True)
    for c in SITES:
        assert cli("finetune", "-c", c, "-r", 2, "-w", root / c).exit_code == 0
        assert cli("taskvec", "-c", c, "-r", 2, "-w", root / c).exit_code == 0
        shutil.copy(root / c / f"rounds/0002/deltas/{c}.safetensors", deltas)
    r = cli("aggregate", "-r", 2, "-w", root / "coordinator", "--json")
    assert r.exit_code == 0, r.output
    assert (root / "coordinator/rounds/0003/start/a/adapter_model.safetensors").is_file()


def test_a_second_flower_run_continues_from_the_workspace(flower_run, tmp_path):
    from fedbip_cli.flower.strategy import next_round
    from fedbip_cli.workspace.layout import Workspace

    root = shutil.copytree(flower_run, tmp_path / "fed")
    assert next_round(Workspace.open(root / "coordinator")) == 2
    simulate(root, rounds=1)
    manifest = json.loads((root / "coordinator/rounds/0002/manifest.json").read_text())
    assert manifest["steps"]["flower"]["server_round"] == 1
    assert json.loads((root / "coordinator/rounds/0002/weights.json").read_text())["clients"] == sorted(SITES)
    assert (root / "a/rounds/0003/start/a/adapter_model.safetensors").read_bytes() == (
        root / "coordinator/rounds/0003/start/a/adapter_model.safetensors").read_bytes()
    assert next_round(Workspace.open(root / "coordinator")) == 3


def test_records_round_trip_byte_for_byte(flower_run, tmp_path):
    from fedbip_cli.flower.records import (
        adapter_to_record,
        record_to_adapter,
        record_to_taskvec,
        taskvec_to_record,
    )

    src = flower_run / "coordinator/rounds/0001/start/a"
    arrays, meta = adapter_to_record(src)
    record_to_adapter(arrays, meta, tmp_path / "adapter")
    written = tmp_path / "adapter/adapter_model.safetensors"
    assert written.read_bytes() == (src / "adapter_model.safetensors").read_bytes()
    tv = flower_run / "a/rounds/0000/deltas/a.safetensors"
    arrays, meta_json = taskvec_to_record(tv)
    record_to_taskvec(arrays, meta_json, tmp_path / "a.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == tv.read_bytes()


def test_record_to_adapter_refuses_a_wrong_sha(flower_run, tmp_path):
    from fedbip_cli.errors import UserError
    from fedbip_cli.flower.records import (
        ADAPTER_SHA256,
        adapter_to_record,
        record_to_adapter,
    )

    arrays, meta = adapter_to_record(flower_run / "coordinator/rounds/0001/start/a")
    with pytest.raises(UserError, match="sha256"):
        record_to_adapter(arrays, {**meta, ADAPTER_SHA256: "0" * 64}, tmp_path / "adapter")


def test_site_comes_from_the_node_config(tmp_path):
    from flwr.app import Context, RecordDict

    from fedbip_cli.errors import UserError
    from fedbip_cli.flower.client import site_of

    def ctx(node: dict, run: dict | None = None) -> Context:
        return Context(run_id=1, node_id=12345, node_config=node, state=RecordDict(), run_config=run or {})

    assert site_of(ctx({"site": "a", "workspace": str(tmp_path)})) == ("a", tmp_path)
    simulated = ctx({"partition-id": 1, "num-partitions": 3}, {"sim-sites": "a, b,c", "sim-root": "/r"})
    assert site_of(simulated) == ("b", Path("/r/b"))
    with pytest.raises(UserError, match="workspace"):
        site_of(ctx({"site": "a"}))
    with pytest.raises(UserError, match="sim-sites"):
        site_of(ctx({"partition-id": 5}, {"sim-sites": "a,b", "sim-root": "/r"}))
    with pytest.raises(UserError, match="node-config"):
        site_of(ctx({}))
