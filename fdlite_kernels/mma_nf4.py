"""Launcher for mma_nf4.cu — nf4's prefill GEMM (weight-only, groups of 64) on the tensor cores.

mma_nf4(x, q, ws, out=None, stages=None):
    x: bf16 [M, K] (any M >= 1), K % 256 == 0 (the padded K); q: uint8 [N, K / 2] level indices in nf4_interleave's
    order (the device copy nf4.Method.prepare makes, which gemv_rows' nf4 mode reads too); ws: float32 [N, K / 64]
    absmax -> y bf16 [M, N] = x @ (bf16(NF4_LEVELS[q]) * ws).T with fp32 sums per group, 128 x 128 outputs a block.
    stages: the cp.async pipeline depth (3 or 4; default 3); wm: warps along
    the rows, 2 (64 x 32 a warp) or 1 (128 x 16: each weight fragment looked up once a block; default WM). sm_80+.
    Twin: fdlite.quant.nf4.Method.matmul (the levels rounded to bf16: relative 2^-9 per weight).
"""
from __future__ import annotations

import functools

import numpy as np

from . import load
from ._launch import BF16, check, expect, launch, smem_optin

BM = BN = 128               # rows of x and output columns per block (mma_nf4.cu: NF_BM, NF_BN)
THREADS = 256
WM = 1               # (H100, the four 8B projections: 8579 against 9797 us at 4096 rows, 602 against 670 at 16)


def smem_bytes(stages: int) -> int:
    """Per stage: x [128][256 B] (128 bf16 columns), codes [128][64 B], two absmax per weight row."""
    return stages * (BM * 256 + BN * 64 + BN * 2 * 4)


@functools.lru_cache(maxsize=None)
def kernel(device_id: int, stages: int, wm: int = 2):
    name = f"mma_nf4<{stages}, {wm}>"
    fn = load("mma_nf4", name_expressions=(name,)).get_function(name)
    fn.max_dynamic_shared_size_bytes = smem_bytes(stages)
    return fn


def mma_nf4(x, q, ws, out=None, stages=None, wm=None):
    import cupy as cp  # noqa: PLC0415

    expect(x, "x", BF16, 2)
    expect(q, "q", np.uint8, 2)
    expect(ws, "ws", np.float32, 2)
    M, K = x.shape
    N = q.shape[0]
    check(q.shape[1] * 2 == K, f"q holds K = {q.shape[1] * 2} (two codes a byte), x has K = {K}")
    check(K % 256 == 0 and K > 0, f"K = {K} must be a positive multiple of 256 (nf4_interleave's tiles)")
    check(ws.shape == (N, K // 64), f"ws shape {ws.shape}, expected {(N, K // 64)}: an absmax per row and group of 64")
    check(N > 0 and -(-N // BN) <= 65535, f"N = {N}: 1 to {65535 * BN} output columns")
    check(x.data.ptr % 16 == 0 and q.data.ptr % 16 == 0, f"x (address {x.data.ptr:#x}) and q (address "
          f"{q.data.ptr:#x}) must be 16-byte aligned: the kernel copies 16-byte chunks")
    dev = cp.cuda.Device().id
    if stages is None:                      # 3: as fast as 4 on the H100 (8598 / 8579 us at 4096 rows), fits an A100
        stages = 3
    check(stages in (3, 4), f"stages = {stages}, expected 3 or 4")
    wm = WM if wm is None else wm
    check(wm in (1, 2), f"wm = {wm}, expected 1 or 2")
    check(smem_bytes(stages) <= smem_optin(dev), f"{stages} stages take {smem_bytes(stages)} bytes of shared memory, over "
                                             f"this device's {smem_optin(dev)} a block")
    y = out if out is not None else cp.empty((M, N), dtype=BF16)
    check(y.shape == (M, N) and y.dtype == BF16 and y.flags.c_contiguous,
          f"out: {y.dtype} {y.shape}, expected C-contiguous bf16 {(M, N)}")
    if M == 0:
        return y
    launch(kernel(dev, stages, wm), (-(-M // BM), -(-N // BN)), (THREADS,),
           (x, q, ws, y, np.int32(M), np.int32(N), np.int32(K)), shared_mem=smem_bytes(stages), pdl=True)
    return y
