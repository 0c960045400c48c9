"""Launcher for gemv_wint8.cu — decode GEMV with int8 weights and per-output-channel scales.

x: bf16 (ml_dtypes.bfloat16) [M, K], M <= 16, C-contiguous
q: int8 [N, K] row-major (y = x @ (q * scale[:, None]).T)
scale: float32 [N]
returns y: bf16 [M, N]
K must be a multiple of 16 (16-byte rows). The NumPy twin is fdlite.quant's wint8 reference matmul.
"""
from __future__ import annotations

import numpy as np

from . import load
from ._launch import BF16, check, expect, grid_for, mmax


_NAMES = tuple(f"gemv_wint8<{m}>" for m in (1, 4, 8, 16))


def gemv_wint8(x, q, scale, out=None):
    import cupy as cp  # noqa: PLC0415

    expect(x, "x", BF16, 2)
    expect(q, "q", np.int8, 2)
    expect(scale, "scale", np.float32, 1)
    M, K = x.shape
    N = q.shape[0]
    check(q.shape[1] == K, f"q has K = {q.shape[1]} but x has K = {K}")
    check(scale.shape[0] == N, f"scale has {scale.shape[0]} entries for N = {N} rows")
    check(K % 16 == 0, f"K = {K} must be a multiple of 16")
    m = mmax(M)
    y = out if out is not None else cp.empty((M, N), dtype=BF16)
    fn = load("gemv_wint8", name_expressions=_NAMES).get_function(f"gemv_wint8<{m}>")
    fn((grid_for(N),), (256,), (x, q, scale, y, np.int32(M), np.int32(N), np.int32(K)))
    return y
