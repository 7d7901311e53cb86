"""One file to carry between a site and the coordinator: `fedbip pack` / `fedbip unpack`.

An archive is an uncompressed tar (safetensors data does not compress) holding, at their paths in
the workspace, either a site's task vector for round T (rounds/T/deltas/<client>.safetensors) or the
coordinator's adapter for a client made from round T (rounds/T+1/start/<client>/), plus
`fedbip-pack.json` (what it holds) and `SHA256SUMS` (`sha256sum -c` can check it too).

Unpacking trusts nothing in the archive: every member must be a plain file at exactly one of the
paths that kind of archive may hold, for a client configured in this workspace (no absolute paths,
no `..`, no links, devices or extra files); every file must match its sha256; the task vector or
adapter must open and name the same client and round. Only then is it placed, each file by a
rename (an adapter folder as a whole). What is already there unchanged is left alone (exit 0); a
different file already in place is a conflict (exit 3) unless `force`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from fedbip_cli.core.files import atomic
from fedbip_cli.core.files.adapter import CONFIG_FILE, WEIGHTS_FILE, read_adapter
from fedbip_cli.core.files.hashes import sha256_file
from fedbip_cli.core.files.manifest import read_manifest
from fedbip_cli.core.files.regular import decode_text, parse_json
from fedbip_cli.core.files.targets import check_target
from fedbip_cli.core.files.taskvec import open_taskvec
from fedbip_cli.errors import RoundConflict, UserError
from fedbip_cli.steps.cards import CARD_FILE
from fedbip_cli.workspace.layout import Workspace

FORMAT = "fedbip.pack/1"
INDEX = "fedbip-pack.json"
SUMS = "SHA256SUMS"
KINDS = ("taskvec", "adapter")
_CHUNK = 1 << 20


@dataclass
class Packed:
    archive: Path
    client: str
    round: int
    kind: str
    files: dict[str, str]
    """{path in the workspace: sha256}"""
    placed: list[str] | None = None
    """unpack: the paths written (empty when everything was already in place)"""

    def to_json(self) -> dict:
        return {"archive": str(self.archive), "client": self.client, "round": self.round, "kind": self.kind,
                "files": self.files, **({"placed": self.placed} if self.placed is not None else {})}


def member_paths(ws: Workspace, kind: str, client: str, t: int, card: bool = False) -> dict[str, Path]:
    """{path in the archive: path in the workspace} of what an archive of `kind` carries (an adapter's
    model card README.md too with `card`: adapters written before cards existed have none)."""
    if kind == "taskvec":
        paths = [ws.taskvec_path(t, client)]
    else:
        folder = ws.start_dir(t + 1, client)
        paths = [folder / CONFIG_FILE, folder / WEIGHTS_FILE] + ([folder / CARD_FILE] if card else [])
    return {p.relative_to(ws.root).as_posix(): p for p in paths}


def card_path(ws: Workspace, client: str, t: int) -> str:
    """The archive path of the model card of `client`'s adapter for round t+1."""
    return (ws.start_dir(t + 1, client) / CARD_FILE).relative_to(ws.root).as_posix()


def default_kind(ws: Workspace, client: str, t: int) -> str:
    """The coordinator's adapter once round t is aggregated here, else the site's task vector."""
    aggregated = "aggregate" in read_manifest(ws.round_dir(t)).get("steps", {})
    return "adapter" if aggregated and ws.start_dir(t + 1, client).is_dir() else "taskvec"


def pack(ws: Workspace, client: str, t: int, *, kind: str | None = None, out: Path | None = None) -> Packed:
    """Write one archive of `client`'s task vector of round t (site) or its adapter from round t (coordinator)."""
    ws.client(client)
    kind = kind or default_kind(ws, client, t)
    if kind not in KINDS:
        raise UserError(f"--kind: must be taskvec or adapter, got {kind!r}")
    has_card = kind == "adapter" and (ws.start_dir(t + 1, client) / CARD_FILE).is_file()
    members = member_paths(ws, kind, client, t, card=has_card)
    for path in members.values():
        if not path.is_file():
            what = "task vector (run `fedbip taskvec`)" if kind == "taskvec" else f"adapter (aggregate round {t} first)"
            raise UserError(f"{path}: not found: no {what} to pack")
    if kind == "taskvec":
        _check_taskvec(members, client, t)
    else:
        read_adapter(next(iter(members.values())).parent)
    sums = {rel: sha256_file(p) for rel, p in members.items()}
    index = {"format": FORMAT, "client": client, "round": t, "kind": kind, "files": sums}
    out = Path(out) if out is not None else ws.root / "outbox" / f"{client}-r{t:04d}-{kind}.fedbip.tar"
    with atomic.atomic_open(out, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, INDEX, (json.dumps(index, indent=2) + "\n").encode())
        _add_bytes(tar, SUMS, "".join(f"{sha}  {rel}\n" for rel, sha in sums.items()).encode())
        for rel, path in members.items():
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with open(path, "rb") as src:
                tar.addfile(info, src)
    return Packed(out, client, t, kind, sums)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _check_taskvec(members: dict[str, Path], client: str, t: int) -> None:
    path = next(iter(members.values()))
    tv = open_taskvec(path)
    if tv.meta.client != client or tv.meta.round != t:
        raise UserError(f"{path}: metadata says client {tv.meta.client!r} round {tv.meta.round}, "
                        f"but the archive is for client {client!r} round {t}")


_SAFE_PART = re.compile(r"^[A-Za-z0-9._-]+$")


def _read_index(tar: tarfile.TarFile, archive: Path) -> tuple[dict, dict[str, str]]:
    docs = {}
    for name in (INDEX, SUMS):
        try:
            member = tar.getmember(name)
        except KeyError:
            raise UserError(f"{archive}: not a fedbip archive ({name} missing)") from None
        if not member.isfile() or member.size > 1 << 20:
            raise UserError(f"{archive}: {name} is not a small plain file")
        docs[name] = decode_text(_open_member(tar, member, archive).read(), f"{archive}: {name}")
    index = parse_json(docs[INDEX], f"{archive}: {INDEX}")
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else None
        raise UserError(f"{archive}: {INDEX}: unsupported format {found!r}")
    sums = {}
    for line in docs[SUMS].splitlines():
        m = re.fullmatch(r"([0-9a-f]{64})  (\S+)", line.strip())
        if not m:
            raise UserError(f"{archive}: {SUMS}: malformed line {line[:80]!r}")
        sums[m.group(2)] = m.group(1)
    return index, sums


def unpack(ws: Workspace, archive: Path, *, force: bool = False) -> Packed:
    """Verify an archive against this workspace and place its files; see the module docstring."""
    archive = Path(archive)
    if not archive.is_file():
        raise UserError(f"{archive}: archive not found")
    try:
        tar = tarfile.open(archive, mode="r:")
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"{archive}: not a readable tar archive ({e})") from None
    with tar:
        index, sums = _read_index(tar, archive)
        client, kind = index.get("client"), index.get("kind")
        t = index.get("round")
        if kind not in KINDS or not isinstance(t, int) or isinstance(t, bool) or t < 0 or not isinstance(client, str):
            raise UserError(f"{archive}: {INDEX}: bad client, round or kind")
        ws.client(client)  # a client configured in this workspace, with a safe name
        expected = member_paths(ws, kind, client, t, card=kind == "adapter" and card_path(ws, client, t) in sums)
        if set(sums) != set(expected) or index.get("files") != sums:
            raise UserError(f"{archive}: lists {sorted(sums)}, but a {kind} archive of {client!r} round {t} holds "
                            f"exactly {sorted(expected)}")
        members = _checked_members(tar, archive, set(expected))
        staging = Path(tempfile.mkdtemp(prefix=atomic.temp_prefix(Path("unpack")), suffix=".tmp",
                                        dir=_staging_parent(ws)))
        try:
            staged = {rel: _extract(tar, members[rel], staging, sums[rel], archive) for rel in expected}
            _check_content(staged, kind, client, t, archive)
            placed = _place(ws, expected, staged, sums, kind, client, t, force)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return Packed(archive, client, t, kind, sums, placed)


def _checked_members(tar: tarfile.TarFile, archive: Path, allowed: set[str]) -> dict[str, tarfile.TarInfo]:
    """Every member: a plain file at an allowed, safe relative path, each once (the index files aside)."""
    out: dict[str, tarfile.TarInfo] = {}
    for m in tar.getmembers():
        if m.name in (INDEX, SUMS):
            continue
        p = PurePosixPath(m.name)
        if p.is_absolute() or ".." in p.parts or not all(_SAFE_PART.match(part) for part in p.parts):
            raise UserError(f"{archive}: member {m.name!r}: unsafe path (absolute, '..' or odd characters)")
        if not m.isfile():
            raise UserError(f"{archive}: member {m.name!r}: not a plain file (links, folders and devices are refused)")
        if m.name not in allowed:
            raise UserError(f"{archive}: member {m.name!r}: does not belong to this archive's client and round")
        if m.name in out:
            raise UserError(f"{archive}: member {m.name!r}: appears twice")
        out[m.name] = m
    missing = allowed - set(out)
    if missing:
        raise UserError(f"{archive}: incomplete: {min(missing)} is missing")
    return out


def _staging_parent(ws: Workspace) -> Path:
    """The workspace's .fedbip/ folder, cleared of the staging folders of killed unpacks (their names carry
    the pid, as every temporary does: core/files/atomic.py)."""
    folder = ws.root / ".fedbip"
    check_target(folder, "folder")
    folder.mkdir(parents=True, exist_ok=True)
    atomic.sweep_stale(folder / "unpack")
    return folder


def _open_member(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> IO[bytes]:
    """A plain-file member's bytes (callers check `member.isfile()`; tarfile gives None for the others)."""
    src = tar.extractfile(member)
    if src is None:
        raise UserError(f"{archive}: member {member.name!r}: not a plain file")
    return src


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, staging: Path, sha: str, archive: Path) -> Path:
    """Copy one member into the staging folder, checking its sha256 on the way."""
    dest = staging / member.name.replace("/", "__")
    h = hashlib.sha256()
    src = _open_member(tar, member, archive)
    with open(dest, "wb") as out:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if h.hexdigest() != sha:
        raise UserError(f"{archive}: member {member.name!r}: sha256 does not match {SUMS} (damaged in transit?)")
    return dest


def _check_content(staged: dict[str, Path], kind: str, client: str, t: int, archive: Path) -> None:
    if kind == "taskvec":
        _check_taskvec(staged, client, t)
        return
    folder = next(iter(staged.values())).parent / "adapter-check"
    folder.mkdir()
    for rel, path in staged.items():
        os.link(path, folder / PurePosixPath(rel).name)
    read_adapter(folder)


def _place(ws: Workspace, expected: dict[str, Path], staged: dict[str, Path], sums: dict[str, str], kind: str,
           client: str, t: int, force: bool) -> list[str]:
    """Rename the verified files into place; nothing if they are there already, a conflict if others are."""
    present = {rel: dest for rel, dest in expected.items() if dest.exists()}
    if present and all(dest.is_file() and sha256_file(dest) == sums[rel] for rel, dest in present.items()) \
            and len(present) == len(expected):
        return []
    if present and not force:
        what = f"{client}'s task vector of round {t}" if kind == "taskvec" else f"{client}'s adapter for round {t + 1}"
        raise RoundConflict(f"{next(iter(present.values()))}: {what} is already here and differs from the archive's; "
                            f"nothing changed (use --force to replace it)")
    if kind == "taskvec":  # staged in the workspace's .fedbip/, so a rename puts it in place whole
        rel, dest = next(iter(expected.items()))
        check_target(dest, "file")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged[rel], dest)
    else:
        with atomic.atomic_dir(ws.start_dir(t + 1, client)) as tmp:
            for rel, path in staged.items():
                os.replace(path, tmp / PurePosixPath(rel).name)
    return list(expected)
