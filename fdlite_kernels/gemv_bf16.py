"""Launcher for gemv_bf16.cu — decode GEMV with dense bf16 weights (graph-capturable, unlike cuBLAS via CuPy).

x: bf16 [M, K], M <= 16, C-contiguous; w: bf16 [N, K] row-major; returns y: bf16 [M, N] = x @ w.T
K must be a multiple of 8 (16-byte rows). The twin is fdlite.quant's dense matmul.
"""
from __future__ import annotations

import numpy as np

from . import load
from ._launch import BF16, check, expect, grid_for, launch, mmax

_NAMES = tuple(f"gemv_bf16<{m}>" for m in (1, 4, 8, 16))
MAX_M = 16


def gemv_bf16(x, w, out=None):
    import cupy as cp  # noqa: PLC0415

    expect(x, "x", BF16, 2)
    expect(w, "w", BF16, 2)
    M, K = x.shape
    N = w.shape[0]
    check(w.shape[1] == K, f"w has K = {w.shape[1]} but x has K = {K}")
    check(K % 8 == 0, f"K = {K} must be a multiple of 8")
    m = mmax(M)
    y = out if out is not None else cp.empty((M, N), dtype=BF16)
    fn = load("gemv_bf16", name_expressions=_NAMES).get_function(f"gemv_bf16<{m}>")
    launch(fn, (grid_for(N),), (256,), (x, w, y, np.int32(M), np.int32(N), np.int32(K)), pdl=True)
    return y
