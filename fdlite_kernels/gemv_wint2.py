"""Launchers for gemv_wint2.cu — decode GEMVs over FastDeploy's WINT2 (CCQ) checkpoint layout, read as stored.

x: bf16 [M, K]
quant_weight: uint8 [Kp/4, N]; weight_scale: uint8 [Kp/128, N]; super_scales: bf16 [N];
code_scale, code_zp: float32 [N]   (Kp = K rounded up to 128; see fdlite/quant/wint2.py)
returns y: bf16 [M, N] = x @ W with W decoded exactly as fdlite.quant.wint2.Method.dequantize (its twin).
gemv_wint2 (CUDA cores, M <= 4): split-K partial sums added in fp32 (atomicAdd), rounded to bf16 once at the end.
gemv_wint2_tc (tensor cores, M <= 16; N % 64 == 0, K % 4 == 0, every codeword b * code_scale + code_zp + 0.5 in
[0, 2^23), which fdlite.quant.wint2.Method.prepare checks): the same weights to the bit, fp32 sums over 64-column
blocks x K splits, the splits added in a fixed order (bit-identical replays). warps: 4 or 8 per block (default
tc_warps); splits: default about two blocks per SM; depth: 64-row groups of weights a lane holds in registers (2 or
3, default TC_DEPTH).
"""
from __future__ import annotations

import numpy as np

from . import load
from ._launch import BF16, check, counters, expect, launch, sms

KCHUNK = 256
_NAMES = ("gemv_wint2<1>", "gemv_wint2<4>")


def _check_ccq(x, quant_weight, weight_scale, super_scales, code_scale, code_zp) -> tuple[int, int, int, int]:
    """Both kernels' argument checks (dtypes, ranks, the CCQ tensors' shapes) -> (M, K, Kp, N)."""
    expect(x, "x", BF16, 2)
    expect(quant_weight, "quant_weight", np.uint8, 2)
    expect(weight_scale, "weight_scale", np.uint8, 2)
    expect(super_scales, "super_scales", BF16, 1)
    expect(code_scale, "code_scale", np.float32, 1)
    expect(code_zp, "code_zp", np.float32, 1)
    M, K = x.shape
    Kp, N = quant_weight.shape[0] * 4, quant_weight.shape[1]
    check(Kp % 128 == 0 and K <= Kp, f"quant_weight covers Kp = {Kp} rows (a multiple of 128 >= K = {K})")
    check(weight_scale.shape == (Kp // 128, N), f"weight_scale shape {weight_scale.shape}, expected {(Kp // 128, N)}")
    for name, a in (("super_scales", super_scales), ("code_scale", code_scale), ("code_zp", code_zp)):
        check(a.shape == (N,), f"{name} shape {a.shape}, expected ({N},)")
    return M, K, Kp, N


def gemv_wint2(x, quant_weight, weight_scale, super_scales, code_scale, code_zp, out=None):
    import cupy as cp  # noqa: PLC0415

    M, K, Kp, N = _check_ccq(x, quant_weight, weight_scale, super_scales, code_scale, code_zp)
    check(M <= 4, f"wint2 decode GEMV takes M <= 4 rows, got M = {M}")
    y32 = cp.zeros((M, N), dtype=np.float32)
    mod = load("gemv_wint2", name_expressions=_NAMES)
    fn = mod.get_function(f"gemv_wint2<{1 if M == 1 else 4}>")
    fn((-(-N // 256), -(-Kp // KCHUNK)), (64,),
       (x, quant_weight, weight_scale, super_scales, code_scale, code_zp, y32, np.int32(M), np.int32(N),
        np.int32(K), np.int32(Kp)))
    y = out if out is not None else cp.empty((M, N), dtype=BF16)
    mod.get_function("f32_to_bf16_kernel")((-(-(M * N) // 256),), (256,), (y32, y, np.int32(M * N)))
    return y


TC_MAX_M = 16                  # one A fragment of 16 token rows
TC_WARPS = (4, 8)


def tc_splits(N: int, K: int, n_sms: int, warps: int = 4) -> tuple[int, int]:
    """-> (splits, 64-row groups per split): enough (column block, split) blocks for about two per SM, each split
    at least one group per warp."""
    blocks, G = N // 64, -(-K // 64)
    want = max(1, min(-(-2 * n_sms // blocks), G // warps if G >= warps else 1))
    gpb = -(-G // want)
    return -(-G // gpb), gpb


TC_DEPTHS = (2, 3)             # groups of weights in registers per lane (one computed, the rest in flight)
TC_DEPTH = 2                   # H100 (BENCHMARKS.md): 2 holds 128 registers (16 warps an SM), 3 holds 167 (12 warps);
                               # the four 8B projections at 1 / 16 rows: 116.0 / 139.6 us against 132.3 / 168.2


def tc_warps(M: int) -> int:
    """Warps per block: 8 for up to 8 tokens, 4 above (the same sweep: 116.0 vs 123.5 at one row, 139.6 vs 154.0
    at 16)."""
    return 8 if M <= 8 else 4


def gemv_wint2_tc(x, quant_weight, weight_scale, super_scales, code_scale, code_zp, out=None, warps=None, splits=None,
                  depth=None):
    import cupy as cp  # noqa: PLC0415

    M, K, Kp, N = _check_ccq(x, quant_weight, weight_scale, super_scales, code_scale, code_zp)
    check(1 <= M <= TC_MAX_M, f"gemv_wint2_tc takes 1..{TC_MAX_M} rows, got M = {M}")
    check(N % 64 == 0 and K % 4 == 0, f"gemv_wint2_tc needs N % 64 == 0 and K % 4 == 0, got N = {N}, K = {K}")
    warps = tc_warps(M) if warps is None else warps
    check(warps in TC_WARPS, f"warps = {warps}, expected one of {TC_WARPS}")
    depth = TC_DEPTH if depth is None else depth
    check(depth in TC_DEPTHS, f"depth = {depth}, expected one of {TC_DEPTHS}")
    check(x.data.ptr % 8 == 0 and quant_weight.data.ptr % 8 == 0 and weight_scale.data.ptr % 8 == 0,
          "x, quant_weight and weight_scale must be 8-byte aligned (the kernel reads 8-byte chunks)")
    dev = cp.cuda.Device()
    S, gpb = tc_splits(N, K, sms(dev.id), warps)
    if splits is not None:
        G = -(-K // 64)
        check(1 <= splits <= G, f"splits = {splits}, expected 1..{G} (64-row groups of K = {K})")
        gpb = -(-G // splits)
        S = -(-G // gpb)
    y = out if out is not None else cp.empty((M, N), dtype=BF16)
    check(y.shape == (M, N) and y.dtype == BF16 and y.flags.c_contiguous,
          f"out: {y.dtype} {y.shape}, expected C-contiguous bf16 {(M, N)}")
    ws, flags = (y, y) if S == 1 else (cp.empty((S, M, N), np.float32), counters())
    name = f"gemv_wint2_tc<{warps}, {'true' if M > 8 else 'false'}, {depth}>"
    fn = load("gemv_wint2", name_expressions=(name,)).get_function(name)
    launch(fn, (N // 64, S), (32 * warps,), (x, quant_weight, weight_scale, super_scales, code_scale, code_zp, y, ws,
                                             flags, np.int32(M), np.int32(N), np.int32(K), np.int32(gpb)), pdl=True)
    return y
