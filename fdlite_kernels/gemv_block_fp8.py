"""Launchers for act_quant_fp8.cu + gemv_block_fp8.cu — block_wise_fp8 decode (fp8 weights and activations).

x: bf16 [M, K], M <= 16
q: uint8 [N, K] — e4m3fn bit patterns, K contiguous
ws: float32 [ceil(N / 128), ceil(K / 128)] — inverse block scales (weight_scale_inv)
returns y: bf16 [M, N] = sum over 128-groups b of xs[m, b] ws[n // 128, b] (xq[m, b-group] . q[n, b-group])
with xq, xs the per-token, per-128 dynamic fp8 quantization of x (act_quant_fp8). K % 16 == 0.
The NumPy twin is fdlite.quant.block_wise_fp8.Method.matmul.
"""
from __future__ import annotations

import numpy as np

from . import load
from ._launch import BF16, check, expect, grid_for, mmax

_NAMES = tuple(f"gemv_block_fp8<{m}>" for m in (1, 4, 8, 16))


def act_quant_fp8(x):
    """x: bf16 [M, K] -> (xq uint8 [M, Kb * 128], xs float32 [M, Kb])."""
    import cupy as cp  # noqa: PLC0415

    expect(x, "x", BF16, 2)
    M, K = x.shape
    Kb = -(-K // 128)
    xq = cp.empty((M, Kb * 128), dtype=np.uint8)
    xs = cp.empty((M, Kb), dtype=np.float32)
    load("act_quant_fp8").get_function("act_quant_fp8")((Kb, M), (64,), (x, xq, xs, np.int32(M), np.int32(K)))
    return xq, xs


def gemv_block_fp8(x, q, ws, out=None):
    import cupy as cp  # noqa: PLC0415

    expect(x, "x", BF16, 2)
    expect(q, "q", np.uint8, 2)
    expect(ws, "ws", np.float32, 2)
    M, K = x.shape
    N = q.shape[0]
    Kb = -(-K // 128)
    check(q.shape[1] == K, f"q has K = {q.shape[1]} but x has K = {K}")
    check(ws.shape == (-(-N // 128), Kb), f"ws shape {ws.shape}, expected {(-(-N // 128), Kb)} for N = {N}, K = {K}")
    check(K % 16 == 0, f"K = {K} must be a multiple of 16")
    m = mmax(M)
    xq, xs = act_quant_fp8(x)
    y = out if out is not None else cp.empty((M, N), dtype=BF16)
    fn = load("gemv_block_fp8", name_expressions=_NAMES).get_function(f"gemv_block_fp8<{m}>")
    fn((grid_for(N),), (256,), (xq, xs, q, ws, y, np.int32(M), np.int32(N), np.int32(K), np.int32(Kb)))
    return y
