"""The workspace folder: where every file of a federation lives, and the config that describes it.

    fedbip.yaml  labels.json  metrics.jsonl  initial/
    rounds/0003/start/<client>/  trained/<client>/  deltas/<client>.safetensors
                similarity.{json,csv,png}  weights.json  manifest.json
    rounds/0004/start/<client>/  rounds/0004/global/
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from fedbip_cli.core.files.client_names import check_client_name
from fedbip_cli.core.files.hashes import sha256_file
from fedbip_cli.core.files.regular import read_json as read
from fedbip_cli.core.files.targets import check_target, write_roots
from fedbip_cli.errors import NotReady, UserError
from fedbip_cli.workspace.config import CONFIG_FILE, ClientConfig, Config, load_config
from fedbip_cli.workspace.labels import read_label_map

LABELS_FILE = "labels.json"
METRICS_FILE = "metrics.jsonl"


@dataclass
class Workspace:
    """Paths of one federation's files. `config` is loaded and validated on first use."""

    root: Path
    _config: Config | None = field(default=None, repr=False)

    @classmethod
    def open(cls, root: str | Path, config: Config | None = None) -> "Workspace":
        root = Path(root)
        if config is None and not (root / CONFIG_FILE).is_file():
            raise UserError(f"{root / CONFIG_FILE}: not found: not a fedbip workspace (run `fedbip init {root}`)")
        return cls(root, config)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.root / CONFIG_FILE)
            model = self._config.model
            if model.path is not None and not Path(model.path).is_absolute():
                model.path = str((self.root / model.path).resolve())
            if model.gguf_file is not None and not Path(model.gguf_file).is_absolute():
                model.gguf_file = str((self.root / model.gguf_file).resolve())
        return self._config

    @cached_property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    def config_sha256(self) -> str | None:
        """sha256 of fedbip.yaml, recorded in manifests."""

        return sha256_file(self.config_path) if self.config_path.is_file() else None

    def client(self, name: str) -> ClientConfig:
        check_client_name(name, "--client")
        if name not in self.config.clients:
            known = ", ".join(self.config.clients) or "none"
            raise UserError(f"{self.config_path}: unknown client {name!r} (configured: {known})")
        return self.config.clients[name]

    def data_path(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def relative(self, path: str | Path) -> str:
        """How outputs name a file: relative to the workspace root, so no path of this machine leaves it
        (a file outside the workspace is named by its own name)."""
        p = Path(path)
        try:
            return p.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return p.as_posix() if not p.is_absolute() else p.name

    def check_writes(self, *files: Path, folders: Iterable[Path] = ()) -> None:
        """Refuse, before any work, a step whose outputs could not be written where the layout puts them:
        a folder, FIFO or device where a file goes (or the reverse), or a link that leads out of the
        workspace (core/files/targets.py). One UserError line, exit 2; nothing is written.

        Inside a CLI command the command's write scope decides what is inside (the workspace and its
        --out paths); a library caller's workspace is held to its own root."""

        roots = None if write_roots() is not None else (self.root,)
        for path in files:
            check_target(path, "file", roots)
        for path in folders:
            check_target(path, "folder", roots)

    # layout
    def manifest_path(self, t: int) -> Path:
        return self.round_dir(t) / "manifest.json"

    @property
    def labels_path(self) -> Path:
        return self.root / LABELS_FILE

    @property
    def metrics_path(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def initial_dir(self) -> Path:
        return self.root / "initial"

    def round_dir(self, t: int) -> Path:
        if t < 0:
            raise UserError(f"--round: must be 0 or more, got {t}")
        return self.root / "rounds" / f"{t:04d}"

    def start_dir(self, t: int, client: str) -> Path:
        return self.round_dir(t) / "start" / client

    def trained_dir(self, t: int, client: str) -> Path:
        return self.round_dir(t) / "trained" / client

    def deltas_dir(self, t: int) -> Path:
        return self.round_dir(t) / "deltas"

    def taskvec_path(self, t: int, client: str) -> Path:
        return self.deltas_dir(t) / f"{client}.safetensors"

    def global_dir(self, t: int) -> Path:
        return self.round_dir(t) / "global"

    def resolve_start(self, t: int, client: str, *, site: bool = False) -> Path:
        """The adapter client starts round t from: its own, else the round's global (late joiners),
        else for round 0 the shared initial adapter.

        Missing, it is NotReady (exit 75): the round before is not finished. `site` words the message
        for a site, which waits for the coordinator's adapter instead of aggregating."""
        for candidate in (self.start_dir(t, client), self.global_dir(t)):
            if candidate.is_dir():
                return candidate
        if t == 0 and self.initial_dir.is_dir():
            return self.initial_dir
        if t == 0:
            raise NotReady(f"{self.start_dir(t, client)}: no start adapter for {client!r} in round 0: run "
                           f"`fedbip initial` here, or copy the coordinator's initial/ adapter here")
        if site:
            raise NotReady(f"{self.start_dir(t, client)}: the coordinator has not sent {client!r} its adapter for "
                           f"round {t} yet (it comes once round {t - 1} is aggregated: copy or `fedbip unpack` it "
                           f"here); `fedbip status -c {client}` shows this site's round")
        raise NotReady(f"{self.start_dir(t, client)}: no start adapter for {client!r} in round {t}: round {t - 1} is "
                       f"not aggregated yet (`fedbip aggregate --round {t - 1}`)")

    def current_round(self, client: str) -> int:
        """The round a site is in: the newest with an adapter for `client` (its own or the global one), else 0."""
        for t in range(self.latest_round() or 0, 0, -1):
            if self.start_dir(t, client).is_dir() or self.global_dir(t).is_dir():
                return t
        return 0

    def latest_round(self) -> int | None:
        rounds = sorted(int(p.name) for p in (self.root / "rounds").glob("[0-9][0-9][0-9][0-9]") if p.is_dir())
        return rounds[-1] if rounds else None

    def labels(self) -> list[str]:
        """The label map: labels.json if present, else task.labels; None-safe error otherwise."""

        if self.labels_path.is_file():
            labels = read_label_map(self.labels_path)
            if self.config.task.labels and labels != self.config.task.labels:
                raise UserError(f"{self.labels_path}: disagrees with task.labels in {self.config_path}")
            return labels
        if self.config.task.labels:
            return list(self.config.task.labels)
        raise UserError(f"{self.labels_path}: no label map yet: set task.labels in {self.config_path} "
                        f"or run `fedbip labels` once over the training files")


def read_json(path: Path) -> Any:
    """A JSON file of the workspace, through the one text reader (core/files/regular.py): a missing,
    non-UTF-8 or malformed file is one UserError line naming it."""

    return read(path)
