"""Launcher for gemv_wint4.cu — decode GEMV with packed int4 weights and group-wise scales.

x: bf16 [M, K], M <= 16
q: uint8 [N, K // 2]: byte j of row n = (q[n, 2j] + 8) | (q[n, 2j + 1] + 8) << 4, q in [-8, 7]
scale: float32 [N, K // G] (G = K: per-channel, FastDeploy's WINT4)
returns y: bf16 [M, N] = x @ ((q - 0) * scale[:, k // G]).T
K and G must be multiples of 32, G must divide K. The NumPy twin is fdlite.quant's wint4 reference.
"""
from __future__ import annotations

import numpy as np

from . import load
from ._launch import BF16, check, expect, grid_for, mmax


_NAMES = tuple(f"gemv_wint4<{m}>" for m in (1, 4, 8, 16))


def pack_int4(q: np.ndarray) -> np.ndarray:
    """int values in [-8, 7], shape [N, K] -> uint8 [N, K // 2] in this kernel's nibble order (host)."""
    u = (np.asarray(q, np.int16) + 8).astype(np.uint8)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)


def gemv_wint4(x, q, scale, out=None):
    import cupy as cp  # noqa: PLC0415

    expect(x, "x", BF16, 2)
    expect(q, "q", np.uint8, 2)
    expect(scale, "scale", np.float32, 2)
    M, K = x.shape
    N = q.shape[0]
    check(q.shape[1] * 2 == K, f"q has {q.shape[1]} bytes per row, expected K / 2 = {K // 2}")
    check(scale.shape[0] == N and scale.shape[1] >= 1, f"scale shape {scale.shape} for N = {N}")
    G = K // scale.shape[1]
    check(G * scale.shape[1] == K, f"scale has {scale.shape[1]} groups, which does not divide K = {K}")
    check(K % 32 == 0 and G % 32 == 0, f"K = {K} and group size G = {G} must be multiples of 32")
    m = mmax(M)
    y = out if out is not None else cp.empty((M, N), dtype=BF16)
    fn = load("gemv_wint4", name_expressions=_NAMES).get_function(f"gemv_wint4<{m}>")
    fn((grid_for(N),), (256,), (x, q, scale, y, np.int32(M), np.int32(N), np.int32(K), np.int32(G)))
    return y
