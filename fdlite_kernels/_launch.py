"""Shared launcher checks: every error quotes the numbers at fault."""
from __future__ import annotations

import functools

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def expect(a, name: str, dtype, ndim: int) -> None:
    check(hasattr(a, "data") and hasattr(a, "device"), f"{name}: expected a cupy array, got {type(a).__name__}")
    check(a.dtype == np.dtype(dtype), f"{name}: dtype {a.dtype}, expected {np.dtype(dtype)}")
    check(a.ndim == ndim, f"{name}: {a.ndim}-D with shape {a.shape}, expected {ndim}-D")
    check(a.flags.c_contiguous, f"{name}: shape {a.shape} strides {a.strides} is not C-contiguous")


def mmax(M: int) -> int:
    for m in (1, 4, 8, 16):
        if M <= m:
            return m
    raise ValueError(f"decode GEMV takes M <= 16 rows, got M = {M} (use the prefill GEMM)")


def grid_for(N: int, warps: int = 8, rows: int = 4) -> int:
    # enough blocks to cover every row once, capped so each SM gets a few resident blocks
    return max(1, min(-(-N // (warps * rows)), 132 * 16))


@functools.lru_cache(maxsize=None)
def _null(device_id: int):
    import cupy as cp  # noqa: PLC0415

    with cp.cuda.Device(device_id):
        return cp.zeros(1, np.float32)       # stands for an absent pointer argument; never read


def ptr(a):
    """a, or for None a valid never-read device pointer (kernels take every pointer argument)."""
    import cupy as cp  # noqa: PLC0415

    return _null(cp.cuda.Device().id) if a is None else a
