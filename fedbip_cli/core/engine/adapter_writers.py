"""The round's output adapters: one PEFT folder per target, all written as streams side by side.

Each folder is built under a temporary name and swapped into place when every tensor has been
written (`atomic_dir`), so a crash leaves the previous round's adapters or the new ones, never a mix;
memory holds only the tensor being written.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Sequence

import numpy as np

from fedbip_cli.core.files import safetensors_io
from fedbip_cli.core.files.adapter import WEIGHTS_FILE, Adapter, write_adapter_config
from fedbip_cli.core.files.atomic import atomic_dir
from fedbip_cli.core.files.digest_cache import Digests


class AdapterWriters:
    """Writers for T adapter folders; `write(name, rows)` writes rows[t] into folder t.

    Each output takes its config (unless `configs` are given) and each tensor's dtype from the adapter
    it is modelled on (its start adapter), so fp16/bf16 adapters come back in their own dtype;
    `extra_files` ({name: text} per target, e.g. the model card) are written into each folder. Use as a context manager.
    With `digests`, every weights file is hashed from the bytes being written (on the digest worker)
    and its digest remembered once the folder is in place, so the manifest never reads it back.
    """

    def __init__(self, targets: Sequence[tuple[Path, Adapter]], names: Sequence[str],
                 digests: Digests | None = None, configs: Sequence[dict] | None = None,
                 extra_files: Sequence[dict[str, str]] | None = None) -> None:
        self._targets = list(targets)
        self._configs = list(configs) if configs is not None else [like.config for _, like in self._targets]
        self._extra = list(extra_files) if extra_files is not None else [{} for _ in self._targets]
        self._names = list(names)
        self._stack = ExitStack()
        self._writers: list[safetensors_io.StreamWriter] = []
        self._digests = digests

    def __enter__(self) -> "AdapterWriters":
        try:
            for (folder, like), config, extra in zip(self._targets, self._configs, self._extra):
                tmp = self._stack.enter_context(atomic_dir(folder))
                write_adapter_config(tmp, config)
                for name, text in extra.items():  # model card: swapped in with the folder
                    (tmp / name).write_text(text, encoding="utf-8")
                layout = {n: (like.header.tensors[n].dtype, like.header.tensors[n].shape) for n in self._names}
                hasher = self._digests.stream() if self._digests is not None else None
                writer = safetensors_io.StreamWriter(tmp / WEIGHTS_FILE, layout, {"format": "pt"}, hasher=hasher)
                self._writers.append(self._stack.enter_context(writer))
        except BaseException:
            self._stack.close()
            raise
        return self

    def write(self, name: str, rows: np.ndarray | Sequence[np.ndarray]) -> None:
        """Write rows[t] as tensor `name` of target t, for every target."""
        for writer, row in zip(self._writers, rows):
            writer.write(name, row)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc_type is None:  # fsync all files at once: the disk flushes them in parallel, not one by one
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda w: w.sync(), self._writers))
        # writers close (rename their files) before their folders are swapped in: ExitStack unwinds in reverse
        suppress = self._stack.__exit__(exc_type, exc, tb)
        if exc_type is None and self._digests is not None:
            for (folder, _), writer in zip(self._targets, self._writers):
                self._digests.remember(folder / WEIGHTS_FILE, writer.hasher.hexdigest())
        return bool(suppress)
