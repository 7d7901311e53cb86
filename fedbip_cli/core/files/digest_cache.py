"""sha256 of the files a step reads and writes (for manifests), each file hashed once, off the main thread.

Manifests record the sha256 of every input and output. At LLM scale hashing costs as much as reading
the data, and naively a round hashes the same task vectors in `similarity` and again in `aggregate`,
and every output after writing it. So:

- digests are remembered in `<workspace>/.fedbip/digests.json`, keyed by path and validated by the
  file's size, mtime_ns and inode (as git's index does): a file is hashed again only if it changed.
  Stat data can be forged by whoever writes the file, so this serves the coordinator's own files
  (start adapters, outputs) and hints only for files others send: task vectors are hashed from the
  very reads of each pass over them (`read_hashes`), which is what proves the bytes a result used;
- inputs not yet known are hashed on a worker thread while the main thread computes (`prefetch`);
- outputs are hashed from the bytes as they are written (`stream`), on the same worker, so they are
  never read back.

hashlib releases the GIL on large buffers, so the worker really runs beside numpy on another core.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Callable

from fedbip_cli.core.files import safetensors_io
from fedbip_cli.core.files.atomic import write_json
from fedbip_cli.core.files.hashes import sha256_file
from fedbip_cli.core.files.regular import read_json
from fedbip_cli.errors import UserError

CACHE = Path(".fedbip") / "digests.json"
_PENDING_BYTES = 256 << 20
"""At most this many written-but-not-yet-hashed bytes are held for the worker."""
_BATCH_BYTES = 8 << 20
MAX_CACHE_BYTES = 256 << 20  # a digest per task vector and adapter of every round: far less
"""Stream updates are handed to the worker in batches of about this size (one hand-over per update
cost more than the hashing of small tensors)."""


Update = Callable[[bytes | memoryview], None]
"""One stream's `update` (a hashlib object's)."""


def _run(batch: list[tuple[Update, bytes | memoryview]]) -> None:
    for update, data in batch:
        update(data)


def _key(path: Path) -> str:
    return str(Path(path).resolve())


def _stamp(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class StreamHash:
    """sha256 of a byte stream whose updates run, in order, on the Digests worker."""

    def __init__(self, owner: Digests) -> None:
        self._owner = owner
        self._h = hashlib.sha256()

    def update(self, data: bytes | memoryview) -> None:
        """Queue `data` (kept alive, unmodified, until hashed) for hashing."""
        self._owner._queue(self._h.update, data)

    def hexdigest(self) -> str:
        self._owner._drain()
        return self._h.hexdigest()


class SequentialHash:
    """sha256 of a safetensors file computed from the reads of its tensors: a digest of the very bytes
    a pass used.

    The coordinator reads every byte of every task vector for the Gram matrices and again for the
    outputs; hashing those same bytes saves reading each file a further time for the manifest, and
    proves which bytes the results came from (a file rewritten in place between two passes gives two
    digests). A safetensors file is its header followed by its tensors with no gap or overlap
    (`safetensors_io.read_header` checks that), so hashing the header and then every tensor in offset
    order is hashing the file. Reads that come out of order (worker threads, files laid out in another
    order) are copied and held until their turn: at most one file's bytes. A tensor read twice, or never, makes
    `digest()` None: nothing proven. Thread-safe: worker threads of one pass may feed it.
    """

    def __init__(self, owner: Digests, header: safetensors_io.Header) -> None:
        self._hash = owner.stream()
        self._lock = threading.Lock()
        self._pos: int | None = 0
        self._end = max((t.end for t in header.tensors.values()), default=0)
        self._held: dict[int, tuple[int, memoryview]] = {}
        self.path = header.path
        with open(header.path, "rb") as f:
            head = f.read(header.data_start)
        if not _same_header(head, header):
            raise UserError(f"{header.path}: changed while the coordinator was reading it (header differs)")
        self._hash.update(head)

    def feed(self, info: safetensors_io.TensorInfo, raw: memoryview) -> None:
        """Take the bytes `raw` of one tensor as read (kept alive, unmodified, until hashed)."""
        with self._lock:
            if self._pos is None:
                return
            if info.begin < self._pos or info.begin in self._held:  # read twice: cannot vouch for either read
                self._pos, self._held = None, {}
                return
            if info.begin != self._pos:  # a copy: holding `raw` would keep the whole stack it views alive
                self._held[info.begin] = (info.end, memoryview(bytes(raw)))
                return
            self._hash.update(raw)
            self._pos = info.end
            while self._pos in self._held:
                end, held = self._held.pop(self._pos)
                self._hash.update(held)
                self._pos = end

    def digest(self) -> str | None:
        """The file's sha256 if every tensor was read exactly once, else None."""
        with self._lock:
            complete = self._pos == self._end and not self._held
        return self._hash.hexdigest() if complete else None


def _same_header(head: bytes, header: safetensors_io.Header) -> bool:
    """Whether the header bytes `head` describe the tensors and metadata `header` was parsed to."""
    try:
        doc = json.loads(head[8:].decode("utf-8"))
        meta = doc.pop("__metadata__", None) or {}
        tensors = {k: (v["dtype"], tuple(v["shape"]), tuple(v["data_offsets"])) for k, v in doc.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    want = {k: (t.dtype, tuple(t.shape), (t.begin, t.end)) for k, t in header.tensors.items()}
    return len(head) == header.data_start and meta == header.metadata and tensors == want


class Digests:
    """File digests for one workspace: cached, prefetched and streamed (see the module docstring).

    Use as a context manager (the worker stops and the cache is saved on exit), or call `close()`.
    """

    def __init__(self, root: str | Path | None) -> None:
        self._cache_path = Path(root) / CACHE if root is not None else None
        self._cache: dict[str, list] = self._load()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future] = {}
        self._inflight: deque[tuple[Future, int]] = deque()
        self._inflight_bytes = 0
        self._batch: list[tuple[Update, bytes | memoryview]] = []
        self._batch_bytes = 0
        self._queue_lock = threading.RLock()
        self._dirty = False

    def _load(self) -> dict[str, list]:
        if self._cache_path is None:
            return {}
        try:
            doc = read_json(self._cache_path, MAX_CACHE_BYTES)
            return doc if isinstance(doc, dict) else {}
        except (OSError, UserError):
            return {}  # a missing or damaged cache only costs re-hashing

    def _worker(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedbip-digest")
        return self._pool

    def _queue(self, update: Update, data: bytes | memoryview) -> None:
        """Add one stream update to the current batch; hand the batch over when it is big enough.
        Batches run in order on the single worker, so each stream's updates stay in order. Threads
        (the writer, the delta engine's readers) may queue at once."""
        with self._queue_lock:
            self._batch.append((update, data))
            self._batch_bytes += memoryview(data).nbytes
            if self._batch_bytes >= _BATCH_BYTES:
                self._flush()

    def _flush(self) -> None:
        with self._queue_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._batch:
            return
        while self._inflight and self._inflight_bytes > _PENDING_BYTES:  # bound the bytes held for hashing
            done, size = self._inflight.popleft()
            done.result()
            self._inflight_bytes -= size
        self._inflight.append((self._worker().submit(_run, self._batch), self._batch_bytes))
        self._inflight_bytes += self._batch_bytes
        self._batch, self._batch_bytes = [], 0

    def _drain(self) -> None:
        """Wait until every queued stream update has been hashed."""
        with self._queue_lock:
            self._flush_locked()
            while self._inflight:
                self._inflight.popleft()[0].result()
            self._inflight_bytes = 0

    def cached(self, path: Path) -> str | None:
        """The remembered digest of `path` if the file is unchanged since, else None."""
        entry = self._cache.get(_key(path))
        try:
            return entry[3] if entry and entry[:3] == _stamp(path) else None
        except OSError:
            return None

    def remember(self, path: Path, digest: str) -> None:
        """Record the digest of a file as it is now (call after it reached its final name)."""
        with self._lock:
            self._cache[_key(path)] = [*_stamp(path), digest]
            self._dirty = True

    def _hash(self, path: Path) -> str:
        digest = sha256_file(path)
        self.remember(path, digest)
        return digest

    def prefetch(self, paths: Iterable[Path]) -> None:
        """Start hashing, on the worker, the files among `paths` whose digest is not known."""
        for p in paths:
            k = _key(p)
            if k not in self._futures and self.cached(p) is None:
                self._futures[k] = self._worker().submit(self._hash, Path(p))

    def digest(self, path: Path) -> str:
        """sha256 of `path`: remembered, being prefetched, or computed now."""
        fut = self._futures.get(_key(path))
        if fut is not None:
            return fut.result()
        return self.cached(path) or self._hash(Path(path))

    def read_hashes(self, headers: Iterable[safetensors_io.Header]) -> dict[Path, SequentialHash]:
        """Hashers for a pass that reads every tensor of these files (`round_data.FileSource`), so its
        digests say which bytes it used. Every file is hashed, known or not: a digest remembered from
        stat data proves nothing about the bytes read now."""
        return {h.path: SequentialHash(self, h) for h in headers}

    def finish_reading(self, hashers: dict[Path, SequentialHash]) -> dict[Path, str | None]:
        """The digests of the bytes a pass read (None where it did not read a file exactly once);
        remembered for the manifest. Files without one are prefetched the ordinary way."""
        digests = {path: sh.digest() for path, sh in hashers.items()}
        for path, digest in digests.items():
            if digest is not None:
                self.remember(path, digest)
        self.prefetch([p for p, d in digests.items() if d is None])
        return digests

    def stream(self) -> StreamHash:
        """A hasher for a file being written; `remember` its digest once the file is in place."""
        return StreamHash(self)

    def close(self, save: bool = True) -> None:
        """Wait for the worker, stop it, and save the cache (not after a failed step: a command
        that refuses its input writes nothing, not even a cache)."""
        self._drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if save and self._dirty and self._cache_path is not None:
            try:
                live = {k: v for k, v in self._cache.items() if Path(k).exists()}
                write_json(self._cache_path, live)
                self._dirty = False
            except OSError:
                pass  # read-only workspace: digests are only a cache

    def __enter__(self) -> Digests:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(save=exc_type is None)
