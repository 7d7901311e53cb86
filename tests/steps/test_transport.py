"""`fedbip pack` / `fedbip unpack`: one archive per transfer, verified and placed atomically, refusing
anything that does not belong to the workspace."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from fedbip_cli.testing.synthetic import Shape, make_round

SMALL = Shape(layers=2, hidden=16, r=2, head=None)


def workspace_files(ws: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in ws.rglob("*") if p.is_file() and ".fedbip" not in p.relative_to(ws).parts}


@pytest.fixture
def ws(tmp_path):
    make_round(tmp_path / "ws", 3, SMALL, keep_trained=False)
    return tmp_path / "ws"


def test_task_vector_round_trip(cli, ws, tmp_path):
    # Prepare
    tv = ws / "rounds/0000/deltas/c000.safetensors"
    original = tv.read_bytes()
    # Execute
    r = cli("pack", "-c", "c000", "-r", 0, "-w", ws, "-o", tmp_path / "c000.tar", "--json")
    assert r.exit_code == 0, r.output
    tv.unlink()  # the coordinator's side, before the archive arrives
    placed = cli("unpack", tmp_path / "c000.tar", "-w", ws, "--json")
    again = cli("unpack", tmp_path / "c000.tar", "-w", ws, "--json")
    # Assert
    assert json.loads(r.stdout)["kind"] == "taskvec"
    assert placed.exit_code == 0 and json.loads(placed.stdout)["placed"] == ["rounds/0000/deltas/c000.safetensors"]
    assert tv.read_bytes() == original
    assert again.exit_code == 0 and json.loads(again.stdout)["placed"] == []  # already in place: nothing changed
    with tarfile.open(tmp_path / "c000.tar") as tar:
        sums = tar.extractfile("SHA256SUMS").read().decode()
    assert sums == f"{hashlib.sha256(original).hexdigest()}  rounds/0000/deltas/c000.safetensors\n"


def test_adapter_round_trip_from_the_coordinator(cli, ws, tmp_path):
    assert cli("aggregate", "-r", 0, "-w", ws).exit_code == 0
    folder = ws / "rounds/0001/start/c001"
    original = {p.name: p.read_bytes() for p in folder.iterdir()}
    r = cli("pack", "-c", "c001", "-w", ws, "--json")  # default round: the newest aggregated one
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["kind"] == "adapter" and res["round"] == 0 and Path(res["archive"]).parent == ws / "outbox"
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
    assert cli("unpack", res["archive"], "-w", ws).exit_code == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == original


def forged(path: Path, members: list[tuple[str, bytes | None, str]], index: dict, sums: str | None = None) -> Path:
    """A tar with fedbip-pack.json, SHA256SUMS and `members` (name, data, type: file | symlink)."""
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("fedbip-pack.json", json.dumps(index).encode())
        add("SHA256SUMS", (sums if sums is not None else "".join(
            f"{hashlib.sha256(d or b'').hexdigest()}  {n}\n" for n, d, _ in members)).encode())
        for name, data, kind in members:
            if kind == "symlink":
                info = tarfile.TarInfo(name)
                info.type = tarfile.SYMTYPE
                info.linkname = "/etc/passwd"
                tar.addfile(info)
            else:
                add(name, data)
    return path


REL = "rounds/0000/deltas/c000.safetensors"


def index_for(members: list[tuple[str, bytes | None, str]], client: str = "c000") -> dict:
    return {"format": "fedbip.pack/1", "client": client, "round": 0, "kind": "taskvec",
            "files": {n: hashlib.sha256(d or b"").hexdigest() for n, d, _ in members}}


@pytest.mark.parametrize("case, needle", [
    ("traversal", "unsafe path"),
    ("absolute", "unsafe path"),
    ("symlink", "not a plain file"),
    ("extra", "holds exactly"),
    ("tampered", "sha256 does not match"),
    ("unknown client", "unknown client 'mallory'"),
    ("wrong metadata", "metadata says client 'c001'"),
])
def test_unpack_refuses_what_does_not_belong(cli, ws, tmp_path, case, needle):
    # Prepare: the real task vector of c000 (and c001's, for a mislabelled archive)
    data = (ws / REL).read_bytes()
    (ws / REL).unlink()
    members = [(REL, data, "file")]
    index, sums = index_for(members), None
    if case == "traversal":
        members = [("rounds/0000/deltas/../../../../evil.safetensors", data, "file")]
        index["files"] = {REL: index["files"][REL]}
        sums = f"{index['files'][REL]}  {REL}\n"
    elif case == "absolute":
        members = [("/tmp/evil.safetensors", data, "file")]
        sums = f"{index['files'][REL]}  {REL}\n"
    elif case == "symlink":
        members = [(REL, None, "symlink")]
        sums = f"{index['files'][REL]}  {REL}\n"
    elif case == "extra":
        members = members + [("rounds/0000/deltas/c001.safetensors", data, "file")]
        index = index_for(members)
    elif case == "tampered":
        members = [(REL, data[:-4] + b"\0\0\0\0", "file")]
        sums = f"{index['files'][REL]}  {REL}\n"
    elif case == "unknown client":
        index = index_for(members, client="mallory")
    elif case == "wrong metadata":
        other = (ws / "rounds/0000/deltas/c001.safetensors").read_bytes()
        members = [(REL, other, "file")]
        index = index_for(members)
    archive = forged(tmp_path / "forged.tar", members, index, sums)
    before = workspace_files(ws)
    # Execute
    r = cli("unpack", archive, "-w", ws)
    # Assert
    assert r.exit_code == 2, r.output
    assert needle in " ".join(r.output.split()), r.output
    assert workspace_files(ws) == before and not (tmp_path / "evil.safetensors").exists()
    assert list((ws / ".fedbip").glob("unpack-*")) == []  # the staging folder is gone


def test_a_different_file_in_place_is_a_conflict(cli, ws, tmp_path):
    assert cli("pack", "-c", "c000", "-r", 0, "-w", ws, "-o", tmp_path / "a.tar").exit_code == 0
    tv = ws / REL
    tv.write_bytes((ws / "rounds/0000/deltas/c001.safetensors").read_bytes())  # something else is there
    before = tv.read_bytes()
    r = cli("unpack", tmp_path / "a.tar", "-w", ws)
    assert r.exit_code == 3 and tv.read_bytes() == before
    assert cli("unpack", tmp_path / "a.tar", "-w", ws, "--force").exit_code == 0
    assert tv.read_bytes() != before
