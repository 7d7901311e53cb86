"""Safetensors files read tensor by tensor and written as a stream, in numpy.

Why not `safetensors.safe_open`: it memory-maps the whole file, and every touched page then counts
in the coordinator's resident memory; with many clients that grows with clients x adapter size.
Here a tensor is read with one positioned read into a fresh buffer and dropped after use, and an
output file is written tensor by tensor, so peak memory stays at a few tensors. The files are the
standard format (8-byte header length, JSON header, raw little-endian data) and load with the
`safetensors` library and `PeftModel.from_pretrained`.

Every float tensor is handed out as float32 (bf16 and fp16 inputs are widened, so sums accumulate in
fp32) and written back in the dtype the output declares.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Mapping

import numpy as np

from fedbip_cli.core.files.atomic import shared_temp_file, sweep_stale
from fedbip_cli.core.files.regular import open_regular
from fedbip_cli.core.files.targets import check_target
from fedbip_cli.errors import IncompleteFile, UserError

MAX_HEADER_BYTES = 100 * 1024 * 1024
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in its file."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    """The parsed and checked header of one safetensors file."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def read_header(path: str | os.PathLike[str]) -> Header:
    """Parse and validate a safetensors header without reading tensor data.

    Raises UserError naming the file for: a missing or unreadable file, a pickle or zip (torch.save)
    file, a header that is not JSON, offsets that overlap, leave gaps or run past the end of the
    file, an unsupported dtype, or a shape that does not match its byte count.
    """
    path = Path(path)
    fd = open_regular(path)  # a FIFO or device is refused before a byte is read
    try:
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            if n is None or n > MAX_HEADER_BYTES or 8 + n > size:
                # a valid header length never starts like a pickle; only check the magic once it failed
                if head.startswith(_PICKLE_MAGIC):
                    raise UserError(f"{path}: is a pickle/zip file, not safetensors (pickles are never loaded)")
                if n is None:
                    raise UserError(f"{path}: truncated: {size} bytes is too short for a safetensors header")
                if n > MAX_HEADER_BYTES:
                    raise UserError(f"{path}: not a safetensors file: header length {n} is over the "
                                    f"{MAX_HEADER_BYTES} byte limit")
                if size > 8 and not f.read(1).startswith(b"{"):  # a partial upload still starts its JSON header
                    raise UserError(f"{path}: not a safetensors file: header is not JSON")
                raise IncompleteFile(f"{path}: incomplete (truncated): header declares {n} bytes, file holds {size} "
                                     f"(still being copied? retry once it is complete)")
            raw = f.read(n)
            if not raw.lstrip().startswith(b"{"):
                if head.startswith(_PICKLE_MAGIC):
                    raise UserError(f"{path}: is a pickle/zip file, not safetensors (pickles are never loaded)")
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        raise UserError(f"{path}: not a safetensors file: header is not valid JSON") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: not a safetensors file: header is not a JSON object")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise UserError(f"{path}: safetensors metadata must map strings to strings")
    data_start = 8 + n
    data_len = size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, spec in doc.items():
        try:
            dtype, shape, (begin, end) = spec["dtype"], tuple(_integer(s) for s in spec["shape"]), spec["data_offsets"]
            begin, end = _integer(begin), _integer(end)
            if not isinstance(dtype, str) or not name or len(shape) > 8:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: tensor {name[:80]!r}: malformed header entry") from None
        if dtype not in _ITEMSIZE:
            raise UserError(f"{path}: tensor {name!r}: unsupported dtype {dtype} (float tensors only)")
        if any(s < 0 for s in shape) or not (0 <= begin <= end):
            raise UserError(f"{path}: tensor {name!r}: negative shape or offsets")
        if end > data_len:
            raise IncompleteFile(f"{path}: incomplete (truncated): tensor {name!r} ends at byte {end} but the data "
                                 f"holds {data_len} (still being copied? retry once it is complete)")
        if (end - begin) != math.prod(shape) * _ITEMSIZE[dtype]:
            raise UserError(f"{path}: tensor {name!r}: shape {list(shape)} does not match its {end - begin} bytes")
        tensors[name] = TensorInfo(dtype, shape, begin, end)
    spans = sorted((t.begin, t.end) for t in tensors.values())
    pos = 0
    for begin, end in spans:
        if begin != pos:
            raise UserError(f"{path}: corrupted: tensor data overlaps or leaves a gap at byte {pos}")
        pos = end
    if pos != data_len:
        raise UserError(f"{path}: corrupted: data holds {data_len} bytes but tensors cover {pos}")
    return Header(path, tensors, {str(k): v for k, v in metadata.items()}, data_start)


def _integer(value: Any) -> int:
    """A JSON integer of the header (shape entry or offset): never a bool, float or string."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("not an integer")
    return value


def _decode(buf: bytes | bytearray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "BF16":
        half = np.frombuffer(buf, dtype="<u2")
        out = (half.astype(np.uint32) << 16).view(np.float32)
    else:
        out = np.frombuffer(buf, dtype={"F64": "<f8", "F32": "<f4", "F16": "<f2"}[dtype]).astype(np.float32)
    return out.reshape(shape)


def _encode(array: np.ndarray, dtype: str) -> memoryview:
    """The little-endian bytes of `array` in `dtype`, without a copy when it already is C-contiguous F32."""
    if dtype == "BF16":
        a = np.ascontiguousarray(array, dtype=np.float32)
        bits = a.view(np.uint32)
        # round to nearest, ties to even, as torch does; in uint32 only NaN bit patterns could overflow,
        # and NaN is never written (every tensor is checked finite)
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        return rounded.astype("<u2").data.cast("B")
    if dtype == "F64":  # straight from the input: going through float32 would drop its precision
        return np.ascontiguousarray(array, dtype="<f8").data.cast("B")
    a = np.ascontiguousarray(array, dtype=np.float32)
    if dtype != "F32" or sys.byteorder != "little":
        a = a.astype({"F32": "<f4", "F16": "<f2"}[dtype])
    return a.data.cast("B")


def _info(header: Header, name: str) -> TensorInfo:
    info = header.tensors.get(name)
    if info is None:
        raise UserError(f"{header.path}: tensor {name!r} is missing")
    return info


def _check_finite(header: Header, name: str, array: np.ndarray) -> None:
    if not np.isfinite(array).all():
        raise UserError(f"{header.path}: tensor {name!r} holds NaN or Inf values")


def read_tensor(header: Header, name: str, *, check_finite: bool = True) -> np.ndarray:
    """Read one tensor as a float32 array with a single positioned read (no memory map)."""
    info = _info(header, name)
    with os.fdopen(open_regular(header.path), "rb") as f:
        buf = os.pread(f.fileno(), info.end - info.begin, header.data_start + info.begin)
    if len(buf) != info.end - info.begin:
        raise UserError(f"{header.path}: truncated while reading tensor {name!r}")
    out = _decode(buf, info.dtype, info.shape)
    if check_finite:
        _check_finite(header, name, out)
    return out


def read_into(header: Header, name: str, out: np.ndarray, *, check_finite: bool = True,
              on_raw: Callable[[TensorInfo, memoryview], None] | None = None, fd: int | None = None) -> np.ndarray:
    """Read one tensor into `out` (a C-contiguous float32 array of its shape) and return `out`.

    F32 data is read straight into `out`'s memory (no intermediate buffer or copy), which is what
    lets the coordinator stack one tensor of every client into a single preallocated matrix.
    `on_raw(info, raw)` receives the tensor's bytes as stored (to hash a file while reading it).
    `fd`: a descriptor of the file kept open by the caller (a pass reading thousands of tensors
    saves as many opens), else the file is opened for this read.
    """
    info = _info(header, name)
    if tuple(out.shape) != info.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"read_into: {name!r} needs a C-contiguous float32 array of shape {info.shape}")
    nbytes = info.end - info.begin
    if fd is None:
        with os.fdopen(open_regular(header.path), "rb") as f:
            return read_into(header, name, out, check_finite=check_finite, on_raw=on_raw, fd=f.fileno())
    if info.dtype == "F32" and sys.byteorder == "little":
        raw = out.data.cast("B")
        got = os.preadv(fd, [raw], header.data_start + info.begin) if nbytes else 0
    else:
        buf = os.pread(fd, nbytes, header.data_start + info.begin)
        raw, got = memoryview(buf), len(buf)
        if got == nbytes:
            out[...] = _decode(buf, info.dtype, info.shape)
    if got != nbytes:
        raise UserError(f"{header.path}: truncated while reading tensor {name!r}")
    if on_raw is not None:
        on_raw(info, raw)
    if check_finite:
        _check_finite(header, name, out)
    return out


def load(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor of a (small) file: float32 arrays and the string metadata."""
    header = read_header(path)
    return {name: read_tensor(header, name) for name in header.tensors}, header.metadata


class StreamWriter:
    """Write a safetensors file tensor by tensor, to a temporary name renamed into place on close.

    The layout (names, dtypes, shapes) is fixed up front, so the header is written first and each
    tensor's bytes follow in declaration order; only the tensor being written is held in memory.

    >>> w = StreamWriter("out.safetensors", {"w": ("F32", (2, 2))}, {"format": "pt"})
    >>> w.write("w", np.eye(2)); w.close()
    """

    def __init__(self, path: str | os.PathLike[str], layout: Mapping[str, tuple[str, tuple[int, ...]]],
                 metadata: Mapping[str, str] | None = None, hasher: Any = None) -> None:
        self.path = Path(path)
        self.hasher = hasher
        """Optional object with `update(bytes)`, fed every byte written (e.g. `digests.StreamHash`)."""
        self._order = list(layout)
        self._layout = {k: (d, tuple(s)) for k, (d, s) in layout.items()}
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        pos = 0
        for name in self._order:
            dtype, shape = self._layout[name]
            nbytes = math.prod(shape) * _ITEMSIZE[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
            pos += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        check_target(self.path, "file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(self.path)
        fd, self._tmp = shared_temp_file(self.path)
        self._file = os.fdopen(fd, "wb")
        self._emit(struct.pack("<Q", len(raw)) + raw)
        self._next = 0

    def _emit(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        if self.hasher is not None:
            self.hasher.update(data)

    def write(self, name: str, array: np.ndarray) -> None:
        """Write the next tensor; tensors must come in the order the layout declared.

        With a hasher, F32 data is handed to it without a copy: leave `array` unmodified afterwards
        (the engines write freshly computed arrays)."""
        if self._next >= len(self._order) or self._order[self._next] != name:
            raise RuntimeError(f"StreamWriter: expected {self._order[self._next:self._next + 1]}, got {name!r}")
        dtype, shape = self._layout[name]
        if tuple(array.shape) != shape:
            raise RuntimeError(f"StreamWriter: {name!r} has shape {array.shape}, layout says {shape}")
        self._emit(_encode(array, dtype))
        self._next += 1

    def sync(self) -> None:
        """Flush and fsync what was written so far (callers syncing many files may do so in parallel)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Flush, fsync and rename into place (all tensors must have been written)."""
        if self._next != len(self._order):
            self.abort()
            raise RuntimeError(f"StreamWriter: {len(self._order) - self._next} tensors were never written")
        self.sync()
        self._file.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop the temporary file; the destination is left as it was."""
        if not self._file.closed:
            self._file.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "StreamWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def save(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None,
         dtypes: Mapping[str, str] | None = None) -> None:
    """Write a whole dict of arrays atomically (F32 unless `dtypes` names another dtype)."""
    dtypes = dtypes or {}
    names = sorted(tensors)
    layout = {n: (dtypes.get(n, "F32"), tuple(tensors[n].shape)) for n in names}
    with StreamWriter(path, layout, metadata) as w:
        for n in names:
            w.write(n, tensors[n])
