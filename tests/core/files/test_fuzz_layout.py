"""Fuzzing the workspace layout (issue 22): every path the layout names, at the coordinator, replaced by
something it should not be (random bytes, bytes that are not UTF-8, a folder, a FIFO, a symlink to a file
or a folder outside the workspace), then one of the coordinator's commands run on it.

The rule is tests/hostile_paths.py's; tests/client/test_fuzz_site_layout.py holds the site to it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedbip_cli.cli.app import app
from fedbip_cli.core.files.digest_cache import CACHE
from fedbip_cli.core.files.gram_cache import FILE as GRAMS
from fedbip_cli.testing.synthetic import Shape, make_round
from fuzzing import fuzz
from hostile_paths import KINDS, plant, reset, snapshot
from hostile_paths import check as check_rule

BASE = Path(tempfile.mkdtemp(prefix="fedbip-fuzz-layout-"))
PRISTINE, ROOT, OUTSIDE = BASE / "pristine", BASE / "ws", BASE / "outside"
RUNNER = CliRunner()


def _invoke(*args: object):
    return RUNNER.invoke(app, [str(a) for a in args])


def _build() -> None:
    make_round(PRISTINE, 3, Shape(layers=1, hidden=8, r=2, head=None))
    for args in (("similarity", "-r", 0), ("aggregate", "-r", 0), ("pack", "-c", "c000", "-r", 0, "--kind", "taskvec")):
        r = _invoke(*args, "-w", PRISTINE)
        assert r.exit_code == 0, r.output


_build()

PACK = Path("outbox/c000-r0000-taskvec.fedbip.tar")
R0, R1 = Path("rounds/0000"), Path("rounds/0001")
# every path of the layout that a coordinator holds, as a file or a folder
FILES = [Path("fedbip.yaml"), Path("labels.json"), Path("metrics.jsonl"), Path("initial/adapter_config.json"),
         Path("initial/adapter_model.safetensors"), *(R0 / "deltas" / f"c00{k}.safetensors" for k in range(3)),
         R0 / "similarity.json", R0 / "similarity.csv", R0 / "similarity.png", R0 / GRAMS, R0 / "weights.json",
         R0 / "manifest.json", R1 / "start/c001/adapter_model.safetensors", CACHE, PACK]
FOLDERS = [Path("initial"), R0, R0 / "deltas", R1, R1 / "start/c001", R1 / "global", Path("outbox"), Path(".fedbip")]
# what each command writes: a folder, FIFO or link out at one of these is always exit 2
COMMANDS = {
    "similarity": (["similarity", "-r", 0, "--force"],
                   {R0 / n for n in ("similarity.json", "similarity.csv", "similarity.png", GRAMS, "manifest.json")}
                   | {CACHE}),
    "aggregate": (["aggregate", "-r", 0, "--force"],
                  {R0 / "weights.json", R0 / "manifest.json", CACHE, R1, R1 / "start/c001", R1 / "global"}),
    "aggregate-again": (["aggregate", "-r", 0], set()),
    "verify": (["verify", "-r", 0], set()),
    "status": (["status", "-r", 0], set()),
    "pack": (["pack", "-c", "c000", "-r", 0, "--kind", "taskvec"], {PACK}),
    "unpack": (["unpack", str(PRISTINE / PACK), "--force"], {R0 / "deltas/c000.safetensors"}),
}


def check(command: str, rel: Path, kind: str, result, before: dict, outside: dict) -> None:
    check_rule(result, root=ROOT, outside=OUTSIDE, writes=rel in COMMANDS[command][1], kind=kind, before=before,
               outside_before=outside, what=(command, rel, kind), folder=rel in FOLDERS)


@fuzz(240)
@example(R0 / "manifest.json", "bytes", "similarity", b"")  # wrote its outputs, then refused the manifest
@example(R0 / "deltas/c000.safetensors", "fifo", "aggregate", b"")  # blocked for ever on hashing the FIFO
@given(st.sampled_from(FILES + FOLDERS), st.sampled_from(KINDS), st.sampled_from(sorted(COMMANDS)),
       st.binary(max_size=48))
def test_hostile_layout_path(rel, kind, command, data):
    reset(PRISTINE, ROOT, OUTSIDE)
    plant(ROOT / rel, kind, data, OUTSIDE)
    before, outside = snapshot(ROOT), snapshot(OUTSIDE)
    result = _invoke(*COMMANDS[command][0], "-w", ROOT)
    check(command, rel, kind, result, before, outside)


def teardown_module() -> None:
    shutil.rmtree(BASE, ignore_errors=True)
