"""Launchers for fused_ops.cu — RMSNorm (optionally fused with the residual add) and SwiGLU, bf16.

rms_norm(x, w, eps): x bf16 [M, H], w bf16 [H] -> y bf16 [M, H]
add_rms_norm(x, d, w, eps): x, d bf16 [M, H]; x <- x + d (in place, rounded to bf16), returns rms_norm(x)
silu_mul(gu): gu bf16 [M, 2I] -> bf16 [M, I] = silu(gu[:, :I]) * gu[:, I:]
Twins: fdlite.ops.rms_norm / silu_mul (float32 inside, one bf16 rounding at the end).
"""
from __future__ import annotations

import numpy as np

from . import load
from ._launch import BF16, check, expect, launch

_NAMES = ("rms_norm<false>", "rms_norm<true>", "rms_norm_v<false>", "rms_norm_v<true>", "silu_mul")   # all, for NVRTC
_VEC_MAX_H = 8 * 256 * 4            # rms_norm_v: 16-byte vectors, THREADS 256, VPT 4


def _norm(x, d, w, eps: float, out):
    import cupy as cp  # noqa: PLC0415

    expect(x, "x", BF16, 2)
    expect(w, "w", BF16, 1)
    M, H = x.shape
    check(w.shape[0] == H, f"w has {w.shape[0]} entries for rows of H = {H}")
    if d is not None:
        expect(d, "d", BF16, 2)
        check(d.shape == x.shape, f"d has shape {d.shape}, x has {x.shape}")
    y = out if out is not None else cp.empty_like(x)
    arrays = (x, w, y) if d is None else (x, d, w, y)
    vec = H % 8 == 0 and H <= _VEC_MAX_H and all(a.flags.c_contiguous and a.data.ptr % 16 == 0 for a in arrays)
    fn = load("fused_ops", name_expressions=_NAMES).get_function(_NAMES[2 * vec + (d is not None)])
    if M:
        launch(fn, (M,), (256,), (x, x if d is None else d, w, y, np.int32(H), np.float32(eps)), pdl=True)
    return y


def rms_norm(x, w, eps: float, out=None):
    return _norm(x, None, w, eps, out)


def add_rms_norm(x, d, w, eps: float, out=None):
    return _norm(x, d, w, eps, out)


def silu_mul(gu, out=None):
    import cupy as cp  # noqa: PLC0415

    expect(gu, "gu", BF16, 2)
    M, I2 = gu.shape
    check(I2 % 2 == 0, f"gu has {I2} columns; expected gate and up halves (an even number)")
    y = out if out is not None else cp.empty((M, I2 // 2), dtype=BF16)
    total = M * (I2 // 2)
    if total:
        fn = load("fused_ops", name_expressions=_NAMES).get_function("silu_mul")
        launch(fn, (min(-(-total // 256), 132 * 32),), (256,), (gu, y, np.int32(M), np.int32(I2 // 2)), pdl=True)
    return y
