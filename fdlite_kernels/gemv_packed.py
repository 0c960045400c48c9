"""Launcher for gemv_packed.cu — decode GEMV (M <= 16) on the tensor cores over mma_wq's packed int8 / int4 weights.

gemv_packed(x, qp, scale, N, bits, group, out=None, rows=None, warps=None, minb=None, depth=None, gate=False):
    the same arguments, checks and result as ``mma_wq.mma_wq`` (x: bf16 [M, K] with K the packed K, M <= 16;
    qp from ``mma_wq.repack``; scale: float32 [Np, G]) -> y bf16 [M, N] = x @ (q * scale per (n, k // group)).T.
    gate: the weight is a fused gate_up projection (rows [gate; up], N = 2I with I % 8 == 0) and y is bf16 [M, I]
    = silu(gate) * up, applied in the epilogue (twin: fdlite.ops.swiglu of the plain result, bit for bit).
    rows: row pairs (16 output rows each) per block, 1 or 2; warps: 4, 8 or 16 (they split the K tiles);
    minb: resident blocks per SM the compile asks for (1: the compiler's choice of registers); depth: 0 keeps
    each lane's next two K tiles in registers, -n its next n - 1 (n = 2..6), 2..8 streams them through a per-warp
    shared-memory ring of that many tiles (cp.async). Defaults: ``plan``.
The NumPy twins are fdlite.quant's wint8 / wint4 reference matmuls (the same as mma_wq's).
"""
from __future__ import annotations

import functools

import numpy as np

from . import load
from ._launch import BF16, check, launch
from .mma_wq import KT, _validate

MAX_M = 16                     # two B fragments of 8 tokens
ROWS = (1, 2)
WARPS = (4, 8, 16)
REG_DEPTHS = (0, -2, -3, -4, -5, -6)   # tiles of weights in registers: 0 -> 3 (two in flight), -n -> n
MINB = (1, 2, 3, 4, 6, 8)


def steps_per_scale(bits: int, group: int) -> int:
    """k16 steps sharing one int4 scale inside a K tile (the kernel's GS): 8 when groups cover whole tiles,
    group / 16 when they split one evenly, else 1 (a scale per step: any multiple of 16). int8: 1 (unused)."""
    if bits == 8:
        return 1
    if group % KT[4] == 0:
        return KT[4] // 16
    return group // 16 if KT[4] % group == 0 else 1


def plan(Np: int, K: int, bits: int, M: int = 1) -> tuple[int, int, int, int]:
    """-> (rows, warps, minb, depth), from the H100 sweeps of block shapes on the Llama-3-8B projections
    (BENCHMARKS.md; results_gemv_loop_h100_2026-11-25.jsonl, after the K loop lost its division and register
    copies). One row pair per block and three tiles of weights in registers, for int8 and int4 alike. Many row pairs
    over a short K (qkv, gate_up) favour 4 warps (int4 gate_up 28.0 vs 30.1 us with 8, int8 qkv 10.9 vs 12.1); a long
    K (down_proj) and the small o_proj want 8 (int4 down 13.9 vs 18.1 with 4). The shared-memory ring (depth >= 2),
    which won for int8 before, ties or loses now (int8 o_proj 8.4 vs 7.8 us); four tiles in registers and one- or
    two-warp blocks lose everywhere (int4 sum at one row 62.6 / 111.9 / 74.7 vs 54.0 us)."""
    if K >= 8192:
        return 1, 8, 1, 0
    return (1, 4, 1, 0) if Np >= 6144 else (1, 8, 1, 0)


def name(bits: int, M: int, group: int, rows: int, warps: int, minb: int, depth: int = 0, gate: bool = False) -> str:
    return (f"gemv_packed<{bits}, {1 if M <= 8 else 2}, {steps_per_scale(bits, group)}, {rows}, {warps}, {minb}, "
            f"{depth}, {'true' if gate else 'false'}>")


def check_gate(N: int, Np: int, who: str) -> int:
    """The fused SwiGLU's shape rule (gemv_packed / gemv_xs, gate=True) -> I, the outputs per token."""
    check(N % 16 == 0 and Np == N, f"{who}(gate=True) needs a gate_up weight of N = 2I rows with I a multiple of 8, "
          f"got N = {N}")
    return N // 2


def smem_bytes(bits: int, group: int, rows: int, warps: int, depth: int) -> int:
    """The ring's dynamic shared memory: per warp and slot, 16 bytes per lane of each of the 2 rows' n8 tiles, and
    (int4) one f32 scale per lane, tile half and scale group inside the tile."""
    if depth <= 0:
        return 0
    ns = KT[4] // 16 // steps_per_scale(bits, group) if bits == 4 else 0
    return warps * depth * rows * 2 * 32 * (16 + 4 * ns)


@functools.lru_cache(maxsize=None)
def kernel(device_id: int, name: str, smem: int = 0):
    """The compiled instantiation, looked up once per device (an eager decode step launches it per linear)."""
    fn = load("gemv_packed", name_expressions=(name,)).get_function(name)
    if smem:
        fn.max_dynamic_shared_size_bytes = smem          # the default cap is 48 KiB less the static reduction buffer
    return fn


def gemv_packed(x, qp, scale, N: int, bits: int, group: int, out=None, rows=None, warps=None, minb=None,
                depth=None, gate: bool = False):
    import cupy as cp  # noqa: PLC0415

    M, K, Np, group = _validate(x, qp, scale, N, bits, group)
    check(1 <= M <= MAX_M, f"gemv_packed takes 1..{MAX_M} rows, got M = {M} (use mma_sk / mma_wq)")
    pr, pw, pm, pd = plan(Np, K, bits, M)
    rows = pr if rows is None else rows
    warps = pw if warps is None else warps
    check(rows in ROWS, f"rows = {rows}, expected one of {ROWS}")
    check(warps in WARPS, f"warps = {warps}, expected one of {WARPS}")
    minb = pm if minb is None else minb
    check(minb in MINB and minb * warps <= 64, f"minb = {minb} with {warps} warps: expected one of {MINB}, "
          f"at most 64 warps per SM")
    depth = pd if depth is None else depth
    check(depth in REG_DEPTHS or 2 <= depth <= 8,
          f"depth = {depth}, expected 0 or -2..-6 (tiles in registers) or 2..8 (ring slots)")
    smem = smem_bytes(bits, group, rows, warps, depth)
    check(smem <= 227 * 1024, f"depth = {depth} with {warps} warps x {rows} row pairs needs {smem} bytes of shared "
          "memory, over the 227 KiB a block may have")
    check(x.data.ptr % 4 == 0, f"x must be 4-byte aligned (address {x.data.ptr:#x}): the kernel reads bf16 pairs")
    Ny = check_gate(N, Np, "gemv_packed") if gate else N        # output columns
    y = out if out is not None else cp.empty((M, Ny), dtype=BF16)
    check(y.shape == (M, Ny) and y.dtype == BF16 and y.flags.c_contiguous,
          f"out: {y.dtype} {y.shape}, expected C-contiguous bf16 {(M, Ny)}")
    fn = kernel(cp.cuda.Device().id, name(bits, M, group, rows, warps, minb, depth, gate), smem)
    pairs = Np // 16
    launch(fn, (-(-pairs // rows),), (32 * warps,),
           (x, qp, scale, y, np.int32(M), np.int32(N), np.int32(K), np.int32(group)), shared_mem=smem, pdl=True)
    return y
