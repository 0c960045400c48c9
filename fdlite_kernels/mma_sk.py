"""Launcher for mma_sk.cu — split-K, cp.async-pipelined tensor-core GEMM over mma_wq's packed int8 / int4 weights.

mma_sk(x, qp, scale, N, bits, group, out=None, mt=None, splits=None, warps=None):
    the same arguments, checks and result as ``mma_wq.mma_wq`` (x: bf16 [M, K] with K the packed K; qp from
    ``mma_wq.repack``; scale: float32 [Np, G]) -> y bf16 [M, N] = x @ (q * scale per (n, k // group)).T.
    mt: 16-row tiles per block (1, 2 or 4), splits: K splits (defaults: ``plan``); warps: 4 or 8 per block.
mma_sk_bf16(x, w, out=None, ...): dense bf16, w [N, K] row-major as stored, K % 64 == 0 -> x @ w.T (fp32
    accumulation); graph-capturable like mma_wq.mma_bf16, whose twin (the plain matmul) it shares.
mma_sk_fp8(x, q, ws, out=None, ...): block_wise_fp8 on the e4m3 tensor cores (see its docstring).
The MoE experts' GATHER variant is launched by fdlite_kernels.moe (moe_gemm). The NumPy twins are fdlite.quant's
wint8 / wint4 / block_wise_fp8 reference matmuls and fdlite.moe_gpu.gemm_ref.
"""
from __future__ import annotations

import functools

import numpy as np

from . import load
from ._launch import BF16, COUNTERS, check, counters, sms
from .mma_wq import KT as _KT_PACKED
from .mma_wq import _validate

FP8 = 28                      # mma_sk.cu's BITS code of block_wise_fp8 (e4m3 weights and activations)
KT = {**_KT_PACKED, 16: 64, FP8: 128}   # K columns per stage: int4 and fp8 128, int8 and dense bf16 64

BN = 128            # output columns per block (mma_sk.cu: SK_BN)
STAGES = 4          # SK_STAGES


def smem_bytes(bits: int, mt: int) -> int:
    """Per stage: x rows, weight tiles (dense / fp8: 128 rows x 128 bytes) and scales (int4: up to 8 group scales
    per row; fp8: the rows' activation scales and the weight block's)."""
    eb = 1 if bits == FP8 else 2
    x = 16 * mt * KT[bits] * eb
    if bits in (16, FP8):
        return STAGES * (x + BN * KT[bits] * eb + ((16 * mt + 4) * 4 if bits == FP8 else 0))
    return STAGES * (x + BN // 8 * 512 + (BN * 8 * 4 if bits == 4 else 0))


def supports(bits: int, group: int) -> bool:
    """int4 groups must cover whole K tiles or split one evenly into at most 8 (a stage's scales)."""
    return bits == 8 or (group % KT[4] == 0 or (KT[4] % group == 0 and KT[4] // group <= 8))


@functools.lru_cache(maxsize=None)
def kernel(device_id: int, bits: int, mt: int, post: bool, warps: int, gather: bool = False):
    """The compiled instantiation (gather: the MoE variant, launched by fdlite_kernels.moe)."""
    b = {True: "true", False: "false"}
    name = f"mma_sk<{bits}, {mt}, {b[post]}, {warps}, {b[gather]}>"
    fn = load("mma_sk", name_expressions=(name,)).get_function(name)
    fn.max_dynamic_shared_size_bytes = smem_bytes(bits, mt)    # above the 48 KiB default for most shapes
    return fn


def plan(M: int, Np: int, K: int, bits: int, mt=None, splits=None, warps=None,
         sms: int = 132) -> tuple[int, int, int, int]:
    """-> (mt, splits, K tiles per split, warps) for a launch (host arithmetic, tested on the CPU).
    From the H100 sweep of (warps, mt, splits) on the 8B projections at M = 1, 16, 32, 64 (BENCHMARKS.md,
    results_gemv_sk_h100_2026-11-24.jsonl): when the columns alone fill the GPU (gate_up, 224 blocks) the
    tallest block reads the weights once, unsplit; narrower N takes blocks of up to 32 rows and splits K until
    there are about three blocks per SM (a power of two, at most 8 splits, at least 2 K tiles each)."""
    ktiles = K // KT[bits]
    cols = -(-Np // BN)
    wide = cols >= sms
    if mt is None:
        mt = min(4 if wide else 2, 1 if M <= 16 else 2 if M <= 32 else 4)
    check(mt in (1, 2, 4), f"mt = {mt}, expected 1, 2 or 4")
    blocks = cols * -(-M // (16 * mt))
    if splits is None:
        want = 1 if wide else max(1, min(8, 3 * sms // blocks, ktiles // 2))
        splits = 1 << (want.bit_length() - 1)
    check(1 <= splits <= ktiles, f"splits = {splits} must be in [1, {ktiles}] (the K tiles)")
    warps = warps or (4 if mt == 4 else 8)
    check(warps in (4, 8), f"warps = {warps}, expected 4 or 8")
    per = -(-ktiles // splits)
    return mt, -(-ktiles // per), per, warps


def launch(bits: int, post: bool, mt: int, warps: int, grid: tuple, per: int, x, w, scale, y, M: int, N: int,
           Np: int, K: int, group: int, gather=None, xscale=None) -> None:
    """One mma_sk launch (every entry point, the MoE one included): the split-K workspace, this stream's counters,
    the instantiation. grid = (column blocks, row blocks, splits); gather = (route, S, rowtiles, xdiv, qp_es,
    scale_es) for the MoE form, None for a plain one; xscale: the fp8 activation scales."""
    import cupy as cp  # noqa: PLC0415

    from ._launch import ptr  # noqa: PLC0415

    check(grid[0] * grid[1] <= COUNTERS, f"{grid[0] * grid[1]} output tiles exceed the {COUNTERS} split-K counters")
    ws = cp.empty((grid[2], M, Np), np.float32) if grid[2] > 1 else y      # not read when unsplit
    dev = cp.cuda.Device().id
    route, S, rowtiles, xdiv, qp_es, scale_es = gather or (ptr(None), 0, 1, 1, 0, 0)
    fn = kernel(dev, bits, mt, post, warps, gather is not None)
    # a plain launch: through PDL (fdlite_kernels._launch) the batch-32 step ran 7% slower (BENCHMARKS.md)
    fn(grid, (32 * warps,), (x, w, scale, y, ws, counters(), np.int32(M), np.int32(N), np.int32(Np), np.int32(K),
                             np.int32(group), np.int32(per), route, np.int32(S), np.int32(rowtiles), np.int32(xdiv),
                             np.int64(qp_es), np.int64(scale_es), ptr(xscale)), shared_mem=smem_bytes(bits, mt))


def _planned(bits: int, post: bool, x, w, scale, y, M: int, N: int, Np: int, K: int, group: int, mt, splits, warps,
             xscale=None):
    """A plain launch over M rows with ``plan``'s (or the given) block height, splits and warps."""
    import cupy as cp  # noqa: PLC0415

    mt, splits, per, warps = plan(M, Np, K, bits, mt, splits, warps, sms(cp.cuda.Device().id))
    launch(bits, post, mt, warps, (-(-Np // BN), -(-M // (16 * mt)), splits), per, x, w, scale, y, M, N, Np, K,
           group, xscale=xscale)
    return y


def mma_sk(x, qp, scale, N: int, bits: int, group: int, out=None, mt=None, splits=None, warps=None):
    import cupy as cp  # noqa: PLC0415

    M, K, Np, group = _validate(x, qp, scale, N, bits, group)
    check(supports(bits, group), f"group = {group}: mma_sk takes int4 groups that divide or are multiples of 128 "
                                 "(at least 16); use mma_wq")
    y = out if out is not None else cp.empty((M, N), dtype=BF16)
    if M == 0:
        return y
    return _planned(bits, bits == 4 and group % KT[4] == 0, x, qp, scale, y, M, N, Np, K, group, mt, splits, warps)


def mma_sk_bf16(x, w, out=None, mt=None, splits=None, warps=None):
    import cupy as cp  # noqa: PLC0415

    from ._launch import expect, ptr  # noqa: PLC0415

    expect(x, "x", BF16, 2)
    expect(w, "w", BF16, 2)
    M, K = x.shape
    N = w.shape[0]
    check(w.shape[1] == K, f"w has K = {w.shape[1]}, x has K = {K}")
    check(K % KT[16] == 0, f"K = {K} must be a multiple of {KT[16]}")
    y = out if out is not None else cp.empty((M, N), dtype=BF16)
    if M == 0:
        return y
    return _planned(16, False, x, w, ptr(None), y, M, N, -(-N // 8) * 8, K, K, mt, splits, warps)


def mma_sk_fp8(x, q, ws, out=None, mt=None, splits=None):
    """block_wise_fp8 on the e4m3 tensor cores (sm_89+): x bf16 [M, K] is quantized per token and 128 columns
    (act_quant_fp8), then y = x_hat @ w_hat.T with w_hat = e4m3(q) * ws per 128 x 128 block. q uint8 [N, K] e4m3
    bits row-major, K % 128 == 0; ws float32 [ceil(N / 128), K / 128] -> y bf16 [M, N]. Twin:
    fdlite.quant.block_wise_fp8.Method.matmul (fp32 sums per 128-column block, scaled, as here)."""
    import cupy as cp  # noqa: PLC0415

    from ._launch import expect  # noqa: PLC0415
    from .gemv_block_fp8 import act_quant_fp8  # noqa: PLC0415

    expect(x, "x", BF16, 2)
    expect(q, "q", np.uint8, 2)
    expect(ws, "ws", np.float32, 2)
    M, K = x.shape
    N = q.shape[0]
    check(q.shape[1] == K, f"q has K = {q.shape[1]}, x has K = {K}")
    check(K % 128 == 0, f"K = {K} must be a multiple of 128 (whole fp8 blocks)")
    check(ws.shape == (-(-N // 128), K // 128), f"ws shape {ws.shape}, expected {(-(-N // 128), K // 128)} for "
          f"N = {N}, K = {K}")
    cc = int(cp.cuda.Device().compute_capability)
    check(cc >= 89, f"e4m3 tensor cores need compute capability 8.9 or newer, this device has {cc}")
    y = out if out is not None else cp.empty((M, N), dtype=BF16)
    if M == 0:
        return y
    xq, xs = act_quant_fp8(x)                                                  # (M, K) e4m3, (M, K / 128) f32
    return _planned(FP8, False, xq, q, ws, y, M, N, -(-N // 8) * 8, K, K, mt, splits, 8, xscale=xs)
