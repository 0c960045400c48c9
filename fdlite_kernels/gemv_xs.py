"""Launcher for gemv_xs.cu — batched decode GEMV (9-32 rows) over mma_wq's packed int8 / int4 weights, x staged
in shared memory.

gemv_xs(x, qp, scale, N, bits, group, out=None, pairs_per_block=None, slices=None, warps=16, chunk_kib=64,
        ksplit=None, gate=False):
    the same arguments, checks and result as ``mma_wq.mma_wq`` (x: bf16 [M, K] with K the packed K, 1 <= M <= 32;
    qp from ``mma_wq.repack``; scale: float32 [Np, G]) -> y bf16 [M, N] = x @ (q * scale per (n, k // group)).T.
    gate: a fused gate_up weight (rows [gate; up], N = 2I, I % 8 == 0): y is bf16 [M, I] = silu(gate) * up,
    applied in the epilogue (twin: fdlite.ops.swiglu of the plain result, bit for bit).
    pairs_per_block (P): 16-row output pairs per block; slices (S): warps splitting K per pair, P * S <= 16.
    ksplit: blocks splitting K (grid.y; their fp32 sums meet in a workspace, the last block adds them). Default
    ``split_plan`` from K = LONG_K (blocks of 8 row pairs x 2 slices, about one per SM), else 1.
    Defaults: ``plan`` for blocks of ``warps`` (16: about one block per SM, 8: two); chunk_kib: KiB of x per
    staged chunk (two buffers). H100 sweep (results_gemv_xs2_h100_2026-11-25.jsonl), sum over qkv, o and gate_up,
    wint4, M = 16 / 32: 16 warps with 64 KiB chunks 66.4 / 94.1 us, 32 KiB 70.3 / 101.5, 16 KiB 77.3 / 114.7;
    8 warps (two blocks per SM) 82.3 / 121.5 with 32 KiB.
The NumPy twins are fdlite.quant's wint8 / wint4 reference matmuls (the same as mma_wq's and gemv_packed's).
"""
from __future__ import annotations

import functools

import numpy as np

from . import load
from ._launch import BF16, COUNTERS, check, counters, launch, sms
from .gemv_packed import check_gate, steps_per_scale
from .mma_wq import KT, _validate

MAX_M = 32                     # four B fragments of 8 tokens
MAX_WARPS = 16
LONG_K = 8192                  # from here the default plan splits K over blocks (split_plan)


def plan(pairs: int, n_sm: int, warps: int = 16) -> tuple[int, int]:
    """-> (P, S): enough row pairs per block that the grid is about 16 / warps blocks per SM, and as many K
    slices per pair as fit the warps (a short N such as o_proj's 256 pairs gets 2 pairs x 8 slices at 16)."""
    P = min(warps, max(1, -(-pairs // (n_sm * (MAX_WARPS // warps)))))
    return P, max(1, warps // P)


def split_plan(pairs: int, ktiles: int, n_sm: int, warps: int = 16) -> tuple[int, int, int]:
    """-> (P, S, K splits) for a long K: blocks of 8 row pairs x 2 K slices (16 warps), split over K until there is
    about one block per SM, each split at least two K tiles. down_proj (256 pairs, 112 int4 tiles) -> 4 splits, 128
    blocks. H100 sweep (results_gemv_xsk_h100_2026-11-25.jsonl), int4 down at 16 / 32 rows: 23.6 / 34.4 us, against
    23.8 / 34.7 for 16 pairs x 8 splits and mma_sk's 28.2 / 38.8 (int8: 34.0 / 44.5 against 35.7 / 50.0)."""
    P = min(warps // 2, pairs)
    blocks = -(-pairs // P)
    return P, max(1, warps // P), max(1, min(n_sm // blocks, ktiles // 2, 32))


def chunk_cols(nb: int, chunk_kib: int = 64) -> int:
    """Columns of x per staged chunk: chunk_kib KiB of nb * 8 bf16 rows (64 KiB: 2048 for 16 rows, 1024 for 32)."""
    return chunk_kib * 1024 // (8 * nb * 2)


def smem_bytes(nb: int, P: int, S: int, chunk_kib: int = 64) -> int:
    """Two x chunk buffers, which the slices' fp32 sums [P S warps][nb * 4][32 lanes] reuse at the end."""
    return max(2 * chunk_kib * 1024, P * S * nb * 4 * 32 * 4)


# the largest smem_bytes of any launch (64 KiB chunks, or 16 warps' sums of 4 B fragments)
MAX_SMEM = max(2 * 64 * 1024, MAX_WARPS * 4 * 4 * 32 * 4)


@functools.lru_cache(maxsize=None)
def kernel(device_id: int, name: str):
    """The compiled instantiation, opted in once to the most shared memory any launch of it asks for: its launches
    differ in chunk size and block shape, and a cap set per launch size would be the last one set (a CUfunction
    attribute), failing larger launches."""
    fn = load("gemv_xs", name_expressions=(name,)).get_function(name)
    fn.max_dynamic_shared_size_bytes = MAX_SMEM
    return fn


def gemv_xs(x, qp, scale, N: int, bits: int, group: int, out=None, pairs_per_block=None, slices=None, warps: int = 16,
            chunk_kib: int = 64, ksplit=None, gate: bool = False):
    import cupy as cp  # noqa: PLC0415

    M, K, Np, group = _validate(x, qp, scale, N, bits, group)
    check(1 <= M <= MAX_M, f"gemv_xs takes 1..{MAX_M} rows, got M = {M} (use mma_sk / mma_wq)")
    check(x.data.ptr % 16 == 0, f"x must be 16-byte aligned (address {x.data.ptr:#x}): it is staged in 16-byte copies")
    dev = cp.cuda.Device().id
    pairs = Np // 16
    check(warps in (8, 16), f"warps = {warps}, expected 8 or 16")
    check(chunk_kib in (16, 32, 64), f"chunk_kib = {chunk_kib}, expected 16, 32 or 64")
    ktiles = K // KT[bits]
    if ksplit is None and K >= LONG_K:
        P, S, ksplit = split_plan(pairs, ktiles, sms(dev), warps)
    elif ksplit is None or ksplit == 1:
        (P, S), ksplit = plan(pairs, sms(dev), warps), 1
    else:
        P, S = min(warps, pairs), max(1, warps // min(warps, pairs))
    check(1 <= ksplit <= ktiles, f"ksplit = {ksplit} must be in [1, {ktiles}] (the K tiles)")
    P = P if pairs_per_block is None else pairs_per_block
    S = S if slices is None else slices
    check(P >= 1 and S >= 1 and P * S <= MAX_WARPS, f"pairs_per_block = {P} x slices = {S} must be 1..{MAX_WARPS} "
          "warps")
    nb = 2 if M <= 16 else 4
    C = chunk_cols(nb, chunk_kib)
    check(C % KT[bits] == 0, f"chunk of {C} columns is not whole {KT[bits]}-column K tiles")
    Ny = check_gate(N, Np, "gemv_xs") if gate else N              # output columns
    y = out if out is not None else cp.empty((M, Ny), dtype=BF16)
    check(y.shape == (M, Ny) and y.dtype == BF16 and y.flags.c_contiguous,
          f"out: {y.dtype} {y.shape}, expected C-contiguous bf16 {(M, Ny)}")
    smem = smem_bytes(nb, P, S, chunk_kib)
    fn = kernel(dev, f"gemv_xs<{bits}, {nb}, {steps_per_scale(bits, group)}, {'true' if gate else 'false'}>")
    per = -(-ktiles // ksplit)
    ksplit = -(-ktiles // per)                          # no empty split
    bx = -(-pairs // P)
    ws, flags = (y, y) if ksplit == 1 else (cp.empty((ksplit, M, N), np.float32), counters())
    check(bx <= COUNTERS, f"{bx} row blocks exceed the {COUNTERS} split counters")
    launch(fn, (bx, ksplit), (32 * P * S,),
           (x, qp, scale, y, np.int32(M), np.int32(N), np.int32(K), np.int32(group), np.int32(P), np.int32(S),
            np.int32(C), np.int32(per), ws, flags), shared_mem=smem, pdl=True)
    return y
