"""Launchers for dequant_block_fp8.cu — block_wise_fp8 expanded to bf16 (the stop-gap of its GEMM above 16 rows).

dequant_w(q, ws): q uint8 [N, K] e4m3fn bits, ws float32 [ceil(N/128), ceil(K/128)] -> bf16 [N, K]
dequant_x(x): x bf16 [M, K] -> bf16 [M, K], the per-token per-128 dynamic fp8 quantization of x (act_quant_fp8,
    bit-exact with the twin's codes) expanded back: e4m3(xq) * xs
Twins: fdlite.quant.block_wise_fp8.Method.dequantize and fdlite.quant._common.act_fp8 (each element here is rounded
once more, to bf16).
"""
from __future__ import annotations

import numpy as np

from . import load
from ._launch import BF16, check, expect
from .gemv_block_fp8 import act_quant_fp8

_NAMES = ("dequant_w", "dequant_x")


def _grid(total: int) -> tuple[int]:
    return (max(1, min(-(-total // 256), 132 * 32)),)


def dequant_w(q, ws, out=None):
    import cupy as cp  # noqa: PLC0415

    expect(q, "q", np.uint8, 2)
    expect(ws, "ws", np.float32, 2)
    N, K = q.shape
    Kb = -(-K // 128)
    check(ws.shape == (-(-N // 128), Kb), f"ws shape {ws.shape}, expected {(-(-N // 128), Kb)} for N = {N}, K = {K}")
    w = out if out is not None else cp.empty((N, K), dtype=BF16)
    if N * K:
        load("dequant_block_fp8", name_expressions=_NAMES).get_function("dequant_w")(
            _grid(N * K), (256,), (q, ws, w, np.int32(N), np.int32(K), np.int32(Kb)))
    return w


def dequant_x(x, out=None):
    import cupy as cp  # noqa: PLC0415

    expect(x, "x", BF16, 2)
    M, K = x.shape
    xq, xs = act_quant_fp8(x)
    xh = out if out is not None else cp.empty((M, K), dtype=BF16)
    if M * K:
        load("dequant_block_fp8", name_expressions=_NAMES).get_function("dequant_x")(
            _grid(M * K), (256,), (xq, xs, xh, np.int32(M), np.int32(K), np.int32(xs.shape[1])))
    return xh
