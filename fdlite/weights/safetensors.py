"""safetensors reader: JSON header + numpy.memmap, zero-copy views, header validated before any use.

Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [b, e]}},
then the data; offsets are relative to the first byte after the header.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import ml_dtypes
import numpy as np

from ..errors import CheckpointError

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32), "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_MAX_HEADER = 100 << 20  # the format's own limit on the JSON header


class SafetensorsFile:
    """One .safetensors file. ``get(name)`` returns a read-only view into the mmap (no copy)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: file not found") from None
        if size < 8:
            raise CheckpointError(f"{self.path}: {size} bytes is too short for a safetensors file (truncated?)")
        with open(self.path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > min(size - 8, _MAX_HEADER):
                raise CheckpointError(f"{self.path}: header length {n} exceeds the file size {size} (truncated or "
                                      "not a safetensors file)")
            raw = f.read(n)
        try:
            header = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{self.path}: header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self._base = 8 + n
        data_size = size - self._base
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}
        spans = []
        for name, e in header.items():
            try:
                dtype_s, shape, (b, end) = e["dtype"], tuple(int(s) for s in e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: tensor {name!r} has a malformed header entry {e!r}") from None
            if dtype_s not in DTYPES:
                raise CheckpointError(f"{self.path}: tensor {name!r} has unknown dtype {dtype_s!r}; known: "
                                      f"{', '.join(DTYPES)}")
            dt = DTYPES[dtype_s]
            if any(s < 0 for s in shape) or not (0 <= b <= end):
                raise CheckpointError(f"{self.path}: tensor {name!r} has bad shape {shape} or offsets [{b}, {end}]")
            if end - b != math.prod(shape) * dt.itemsize:
                raise CheckpointError(f"{self.path}: tensor {name!r} of shape {list(shape)} {dtype_s} needs "
                                      f"{math.prod(shape) * dt.itemsize} bytes but its offsets span {end - b}")
            if end > data_size:
                raise CheckpointError(f"{self.path}: tensor {name!r} ends at byte {end} of the data but the file "
                                      f"holds only {data_size} data bytes (truncated?)")
            spans.append((b, end, name))
            self._entries[name] = (dt, shape, b)
        spans.sort()
        for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise CheckpointError(f"{self.path}: tensors {n0!r} and {n1!r} overlap (bytes {b1} < {e0})")
        self._mm = np.memmap(self.path, dtype=np.uint8, mode="r") if size else None

    def keys(self):
        return self._entries.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        return self._entries[name][0]

    def get(self, name: str) -> np.ndarray:
        dt, shape, b = self._entries[name]
        count = math.prod(shape)
        start = self._base + b
        return np.frombuffer(self._mm, dtype=dt, count=count, offset=start).reshape(shape)

    def close(self) -> None:
        self._mm = None


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file (used by offline quantization and tests). Tensors are written in name order."""
    rev = {v: k for k, v in DTYPES.items()}
    header: dict = {"__metadata__": dict(metadata or {})}
    off = 0
    arrays = []
    for name in sorted(tensors):
        a = np.asarray(tensors[name], order="C")   # (ascontiguousarray would turn a 0-d scalar into 1-d)
        if a.dtype not in rev:
            raise CheckpointError(f"{path}: cannot store tensor {name!r} of dtype {a.dtype}")
        header[name] = {"dtype": rev[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
        arrays.append(a)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data to 8 bytes
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for a in arrays:
            f.write(a.tobytes())
