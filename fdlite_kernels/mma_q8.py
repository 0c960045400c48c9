"""Launchers for mma_q8.cu — the prefill tensor-core GEMM of the methods that quantize x (8-bit codes on both sides).

Each takes x bf16 [M, K] (any M >= 1), quantizes it once (gemv_rows_quant_x, as the decode kernels' pre path does)
and multiplies on the tensor cores, 128 x 128 outputs a block, every weight tile read once per 128 rows of x:
mma_q8_fp8(x, q, ws, out=None):
    block_wise_fp8: q uint8 [N, K] e4m3fn bits, K % 128 == 0; ws float32 [ceil(N / 128), K / 128] -> y bf16 [M, N];
    x to e4m3 per token and 128 columns. sm_89+. Twin: fdlite.quant.block_wise_fp8.Method.matmul.
mma_q8_fp8_channel(x, q, ws, out=None):
    wfp8afp8: q uint8 [N, K] e4m3fn bits, K % 128 == 0; ws float32 [N, 1] or [N]; x to e4m3 per token over all of K.
    sm_89+. Twin: fdlite.quant.wfp8afp8.Method.matmul.
mma_q8_int8(x, q, ws, out=None):
    w8a8 (dynamic): q int8 [N, K], K % 128 == 0; ws float32 [N, 1] or [N]; x to int8 per token; exact int32 sums.
    sm_80+. Twin: fdlite.quant.w8a8.Method.matmul.
mma_q8_w4a8(x, q, ws, out=None):
    w4a8 (dynamic, groups of 128): q uint8 [N, K / 2] two's-complement nibbles (low = even k), K % 256 == 0 (the
    packed K); ws float32 [N, K / 128]; x to int8 per token and group. sm_80+. Twin: fdlite.quant.w4a8.Method.matmul.
mma_q8_w4afp8(x, q, ws, out=None):
    w4afp8 (groups of 128): q and ws as w4a8; x to e4m3 per token and group. sm_89+.
    Twin: fdlite.quant.w4afp8.Method.matmul.
stages: the cp.async pipeline depth (3 or 4; default: 4 where a block's shared memory allows it);
unroll: the four k32 steps of a tile unrolled (True) or looped (False: fewer registers; default: per mode, from the
H100 sweep in BENCHMARKS.md);
inflight (wgmma_q8): keep one wgmma group in flight across K tiles (default: INFLIGHT, per mode);
static (mma_q8_int8, mma_q8_w4a8): a checkpoint's static activation scale, gemv_rows.static_scale(A);
wgmma: the 8-bit-weight modes (fp8, fp8_channel, int8) on Hopper's warpgroup tensor cores (wgmma_q8.cu: the same
inputs and math; sm_90 only). Default: on sm_90 (WGMMA), where mma.sync has no e4m3 form in hardware.
"""
from __future__ import annotations

import functools

import numpy as np

from . import load
from ._launch import BF16, check, launch, smem_optin
from .gemv_rows import (MODE_BLOCK, MODE_CHANNEL, MODE_INT8, MODE_W4A8, MODE_W4AFP8, W4_MODES, _codes, _e4m3,
                        _int4_groups, _per_channel, quantized_x)

BM = BN = 128               # rows of x and output columns per block (mma_q8.cu: Q8_BM, Q8_BN)
THREADS = 256
# from the H100 sweep at 128 and 4096 rows (BENCHMARKS.md: results_prefill_h100_2026-11-25.jsonl)
UNROLL = {MODE_BLOCK: True, MODE_CHANNEL: False, MODE_INT8: True, MODE_W4A8: True, MODE_W4AFP8: False}
WGMMA = True                # sm_90: the 8-bit-weight modes on wgmma_q8 (route_ab.py can turn it off for an A/B)
WGMMA_MODES = (MODE_BLOCK, MODE_CHANNEL, MODE_INT8)
# wgmma_q8 keeping one wgmma group in flight across K tiles (loads STAGES - 2 ahead), and its pipeline depth, per
# mode: the H100 sums over the four 8B projections at 4096 rows (BENCHMARKS.md): w8a8 3074 us in flight with 4 stages
# against 3623 without (128 rows: 236 / 269), wfp8afp8 3073 / 3540 (235 / 261); block_wise_fp8 gains nothing (3564 /
# 3526: ptxas serializes its wgmma, a tile's sums being scaled while the next tile's run)
INFLIGHT = {MODE_BLOCK: False, MODE_CHANNEL: True, MODE_INT8: True}
WGMMA_STAGES = {MODE_BLOCK: 3, MODE_CHANNEL: 4, MODE_INT8: 4}


def smem_bytes(mode: int, stages: int) -> int:
    """Per stage: x [128][128 B], weights [128][128 B] (int4: 64 B a row) and, per-group modes, 256 scales."""
    tiled = mode in (MODE_BLOCK,) + W4_MODES
    return stages * (BM * 128 + BN * (64 if mode in W4_MODES else 128) + (2 * BM * 4 if tiled else 0))


@functools.lru_cache(maxsize=None)
def kernel(device_id: int, mode: int, stages: int, unroll: bool):
    name = f"mma_q8<{mode}, {stages}, {'true' if unroll else 'false'}>"
    fn = load("mma_q8", name_expressions=(name,)).get_function(name)
    fn.max_dynamic_shared_size_bytes = smem_bytes(mode, stages)      # above the 48 KiB default
    return fn


def wgmma_smem_bytes(stages: int) -> int:
    """Per stage x and weights [128][128 B] and 1 KiB of scales, plus 1 KiB to put the tiles on 1024-byte bounds."""
    return stages * (BM * 128 + BN * 128 + 1024) + 1024


@functools.lru_cache(maxsize=None)
def wgmma_kernel(device_id: int, mode: int, stages: int, inflight: bool = False):
    name = f"wgmma_q8<{mode}, {stages}, {'true' if inflight else 'false'}>"
    fn = load("wgmma_q8", name_expressions=(name,)).get_function(name)
    fn.max_dynamic_shared_size_bytes = wgmma_smem_bytes(stages)
    return fn


def _run(x, w, ws, N: int, K: int, mode: int, out, stages, unroll, wgmma=None, static=None, inflight=None):
    import cupy as cp  # noqa: PLC0415

    M = x.shape[0]
    dev = cp.cuda.Device().id
    sm90 = int(cp.cuda.Device().compute_capability) == 90
    wgmma = (WGMMA and sm90 and mode in WGMMA_MODES) if wgmma is None else bool(wgmma)
    check(not wgmma or (sm90 and mode in WGMMA_MODES), f"wgmma_q8 takes the 8-bit-weight modes on sm_90 (mode {mode}, "
          f"compute capability {cp.cuda.Device().compute_capability})")
    size = wgmma_smem_bytes if wgmma else functools.partial(smem_bytes, mode)
    if stages is None:
        stages = WGMMA_STAGES[mode] if wgmma else 4
        stages = stages if size(stages) <= smem_optin(dev) else 3
    check(stages in (3, 4), f"stages = {stages}, expected 3 or 4")
    smem = size(stages)
    check(smem <= smem_optin(dev), f"{stages} stages take {smem} bytes of shared memory, over this device's "
                               f"{smem_optin(dev)} a block")
    y = out if out is not None else cp.empty((M, N), dtype=BF16)
    check(y.shape == (M, N) and y.dtype == BF16 and y.flags.c_contiguous,
          f"out: {y.dtype} {y.shape}, expected C-contiguous bf16 {(M, N)}")
    check(x.data.ptr % 16 == 0 and w.data.ptr % 16 == 0, f"x (address {x.data.ptr:#x}) and the weight (address "
          f"{w.data.ptr:#x}) must be 16-byte aligned: the kernel copies 16-byte chunks")
    check(-(-N // BN) <= 65535, f"N = {N} needs {-(-N // BN)} column blocks, over the grid's 65535")
    if M == 0:
        return y
    xq = quantized_x(x, mode, static)
    inflight = INFLIGHT.get(mode, False) if inflight is None else bool(inflight)
    fn = wgmma_kernel(dev, mode, stages, inflight) if wgmma else kernel(dev, mode, stages,
                                                              UNROLL[mode] if unroll is None else bool(unroll))
    launch(fn, (-(-M // BM), -(-N // BN)), (THREADS,), (xq, w, ws, y, np.int32(M), np.int32(N), np.int32(K)),
           shared_mem=smem, pdl=True)
    return y


def mma_q8_fp8(x, q, ws, out=None, stages=None, unroll=None, wgmma=None, inflight=None):
    from ._launch import expect  # noqa: PLC0415

    N, K = _codes(x, q, np.uint8, 1, 128, "whole fp8 blocks")
    expect(ws, "ws", np.float32, 2)
    check(ws.shape == (-(-N // 128), K // 128), f"ws shape {ws.shape}, expected {(-(-N // 128), K // 128)} for "
          f"N = {N}, K = {K}")
    return _run(x, q, ws, N, K, _e4m3(MODE_BLOCK), out, stages, unroll, wgmma, inflight=inflight)


def mma_q8_fp8_channel(x, q, ws, out=None, stages=None, unroll=None, wgmma=None, inflight=None):
    N, K = _codes(x, q, np.uint8, 1, 128, "128-column tiles")
    _per_channel(ws, N)
    return _run(x, q, ws, N, K, _e4m3(MODE_CHANNEL), out, stages, unroll, wgmma, inflight=inflight)


def mma_q8_int8(x, q, ws, out=None, stages=None, unroll=None, wgmma=None, static=None, inflight=None):
    N, K = _codes(x, q, np.int8, 1, 128, "128-column tiles")
    _per_channel(ws, N)
    return _run(x, q, ws, N, K, MODE_INT8, out, stages, unroll, wgmma, static, inflight)


def mma_q8_w4a8(x, q, ws, out=None, stages=None, unroll=None, static=None):
    N, K = _int4_groups(x, q, ws)
    return _run(x, q, ws, N, K, MODE_W4A8, out, stages, unroll, static=static)


def mma_q8_w4afp8(x, q, ws, out=None, stages=None, unroll=None):
    N, K = _int4_groups(x, q, ws)
    return _run(x, q, ws, N, K, _e4m3(MODE_W4AFP8), out, stages, unroll)
