"""Launcher for gemv_wint2.cu — decode GEMV over FastDeploy's WINT2 (CCQ) checkpoint layout, M <= 4.

x: bf16 [M, K]
quant_weight: uint8 [Kp/4, N]; weight_scale: uint8 [Kp/128, N]; super_scales: bf16 [N];
code_scale, code_zp: float32 [N]   (Kp = K rounded up to 128; see fdlite/quant/wint2.py)
returns y: bf16 [M, N] = x @ W with W decoded exactly as fdlite.quant.wint2.Method.dequantize (its twin).
Split-K: partial sums are added in fp32 (atomicAdd) and rounded to bf16 once at the end.
"""
from __future__ import annotations

import numpy as np

from . import load
from ._launch import BF16, check, expect

KCHUNK = 256
_NAMES = ("gemv_wint2<1>", "gemv_wint2<4>")


def gemv_wint2(x, quant_weight, weight_scale, super_scales, code_scale, code_zp, out=None):
    import cupy as cp  # noqa: PLC0415

    expect(x, "x", BF16, 2)
    expect(quant_weight, "quant_weight", np.uint8, 2)
    expect(weight_scale, "weight_scale", np.uint8, 2)
    expect(super_scales, "super_scales", BF16, 1)
    expect(code_scale, "code_scale", np.float32, 1)
    expect(code_zp, "code_zp", np.float32, 1)
    M, K = x.shape
    Kp, N = quant_weight.shape[0] * 4, quant_weight.shape[1]
    check(M <= 4, f"wint2 decode GEMV takes M <= 4 rows, got M = {M}")
    check(Kp % 128 == 0 and K <= Kp, f"quant_weight covers Kp = {Kp} rows (a multiple of 128 >= K = {K})")
    check(weight_scale.shape == (Kp // 128, N), f"weight_scale shape {weight_scale.shape}, expected {(Kp // 128, N)}")
    for name, a in (("super_scales", super_scales), ("code_scale", code_scale), ("code_zp", code_zp)):
        check(a.shape == (N,), f"{name} shape {a.shape}, expected ({N},)")
    y32 = cp.zeros((M, N), dtype=np.float32)
    mod = load("gemv_wint2", name_expressions=_NAMES)
    fn = mod.get_function(f"gemv_wint2<{1 if M == 1 else 4}>")
    fn((-(-N // 256), -(-Kp // KCHUNK)), (64,),
       (x, quant_weight, weight_scale, super_scales, code_scale, code_zp, y32, np.int32(M), np.int32(N),
        np.int32(K), np.int32(Kp)))
    y = out if out is not None else cp.empty((M, N), dtype=BF16)
    mod.get_function("f32_to_bf16_kernel")((-(-(M * N) // 256),), (256,), (y32, y, np.int32(M * N)))
    return y
