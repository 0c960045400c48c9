"""Launchers for gemv_rows.cu — decode GEMV (M <= 16) on the tensor cores over row-major weights, read as stored.

gemv_rows_bf16(x, w, out=None, rows=None, warps=None):
    x: bf16 [M, K], M <= 16; w: bf16 [N, K] C-contiguous, K % 64 == 0 -> y bf16 [M, N] = x @ w.T (fp32 sums).
    Twin: the float32 product (fdlite.quant.dense's reference matmul).
gemv_rows_fp8(x, q, ws, out=None, rows=None, warps=None, pre=None):
    block_wise_fp8 (128 x 128 weight blocks, fp8 activations per token and 128 columns, quantized by the kernel):
    x: bf16 [M, K], M <= 16; q: uint8 [N, K] e4m3fn bits, K % 128 == 0; ws: float32 [ceil(N / 128), K / 128]
    (weight_scale_inv) -> y bf16 [M, N]. sm_89+ (e4m3 tensor cores). Twin: fdlite.quant.block_wise_fp8.Method.matmul.
gemv_rows_fp8_channel(x, q, ws, out=None, rows=None, warps=None, pre=None):
    wfp8afp8 (e4m3 weights per output channel, fp8 activations per token over all of K, quantized by the kernel):
    x: bf16 [M, K], M <= 16; q: uint8 [N, K] e4m3fn bits, K % 128 == 0; ws: float32 [N, 1] or [N] (weight_scale)
    -> y bf16 [M, N] = xs[m] ws[n] (xq[m] . q[n]). sm_89+. Twin: fdlite.quant.wfp8afp8.Method.matmul.
gemv_rows_int8(x, q, ws, out=None, rows=None, warps=None, pre=None):
    w8a8 with dynamic activations (int8 weights per output channel, x quantized to int8 per token over all of K by
    the kernel: s = max(amax, 1e-10) / 127, rint, +-127): x: bf16 [M, K], M <= 16; q: int8 [N, K], K % 128 == 0;
    ws: float32 [N, 1] or [N] -> y bf16 [M, N] = xs[m] ws[n] (xq[m] . q[n]) with exact int32 sums. sm_80+.
    Twin: fdlite.quant.w8a8.Method.matmul.
gemv_rows_w4a8(x, q, ws, out=None, rows=None, warps=None, pre=None):
    w4a8 with dynamic activations and groups of 128: x: bf16 [M, K], M <= 8, K % 256 == 0 (the padded K); q: uint8
    [N, K / 2] two's-complement nibbles, low = even k; ws: float32 [N, K / 128] -> y bf16 [M, N] = sum over groups b of
    xs[m, b] ws[n, b] (xq[m, b] . q[n, b]), x quantized to int8 per token and group by the kernel. sm_80+.
    Twin: fdlite.quant.w4a8.Method.matmul.
gemv_rows_w4afp8(x, q, ws, out=None, rows=None, warps=None, pre=None):
    w4afp8 (groups of 128, fp8 activations per token and group, quantized by the kernel): x, q and ws as w4a8 ->
    y bf16 [M, N] = sum over groups b of xs[m, b] ws[n, b] (e4m3(xq[m, b]) . q[n, b]). sm_89+ (e4m3 tensor cores).
    Twin: fdlite.quant.w4afp8.Method.matmul.
gemv_rows_nf4(x, q, ws, out=None, rows=None, warps=None):
    nf4, weight-only, groups of 64: x: bf16 [M, K], M <= 16, K % 256 == 0 (the padded K); q: uint8 [N, K / 2] level
    indices (low nibble = even k) in nf4_interleave's order; ws: float32 [N, K / 64] absmax, 16-byte aligned ->
    y bf16 [M, N] = x @ (bf16(NF4_LEVELS[q]) * ws).T with fp32 sums per group. sm_80+.
    Twin: fdlite.quant.nf4.Method.matmul (the levels rounded to bf16: relative 2^-9 per weight).
nf4_interleave(q) / nf4_deinterleave(q): [N, K / 2] packed nf4 codes (K % 256 == 0) <-> the kernel's order, on the
    array's module: in each 64-byte half of a 128-byte tile, the two 32-byte groups interleaved 8 bytes at a time.
rows: row pairs (16 output rows each) per block, 1 or 2; warps: 4, 8 or 16 (they split the K tiles). Defaults: plan.
pre (the x-quantizing modes): True quantizes x once in gemv_rows_quant_x (a launch before, one block per token) and
    the GEMV reads it from global memory; False quantizes it in every block's prologue. Default: from PRE_MIN_M rows.
static (gemv_rows_int8, gemv_rows_w4a8): a checkpoint's static activation scale, float32 [1] = static_scale(A), for
    every token and group instead of their amax (codes clipped to +-127); implies pre.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from . import load
from ._launch import BF16, check, expect, launch, smem_optin, sms

MAX_M = 16                     # two B fragments of 8 tokens (9-16: NB = 2, block shape (1, 8))
MAX_M_INT4 = 8                 # w4a8, w4afp8: one fragment (their x registers leave no room for a second)
SHAPES = ((1, 4), (1, 8), (1, 16), (2, 4), (2, 8))   # (row pairs, warps) a block may have (gemv_rows.cu has them)
SHAPES16 = ((1, 8),)           # ... with two token fragments
SMEM_MAX = 227 * 1024          # bytes of shared memory a block may have (H100 / sm_90; sm_89: 99 KiB, checked)


MODE_BF16, MODE_BLOCK, MODE_CHANNEL, MODE_INT8, MODE_W4A8, MODE_W4AFP8, MODE_NF4 = range(7)   # gemv_rows.cu: ROWS_*
W4_MODES = (MODE_W4A8, MODE_W4AFP8)      # int4 weights, x quantized per group of 128 with code sums


def plan(N: int, K: int, qx: bool, M: int = 1) -> tuple[int, int]:
    """-> (rows, warps), from the H100 sweeps of block shapes on the Llama-3-8B projections and lm_head at 1, 4 and 8
    rows (BENCHMARKS.md; results_gemv_rows*_h100_2026-11-25.jsonl). bf16: gemv_packed's rule (4 warps for many row
    pairs over a short row, 8 for few pairs or a long row; the shapes were within 3% of each other). fp8: 16 warps
    for a long row or more than one token (more warps share the block's quantization of x: 8 rows 115 vs 142 us
    over the four projections), 8 for one token's short rows (qkv 12.4 vs 12.6, o 9.0 vs 9.6); qx: a byte mode (x
    quantized by the kernel), which the fp8 sweep stands for."""
    if qx:
        return (1, 16) if K >= 8192 or M > 1 else (1, 8)
    if 2 * K >= 16384:
        return 1, 8
    return (1, 4) if N >= 6144 else (1, 8)


PRE_MIN_M = 2            # byte modes from this many rows: x quantized once by gemv_rows_quant_x (PRE), not per block
QUANT_WARPS = 16         # gemv_rows_quant_x's block (one per token)


def nf4_plan(N: int, K: int) -> tuple[int, int]:
    """-> (rows, warps) for nf4 (from the H100 sweep of the four Llama-3-8B projections at one row, BENCHMARKS.md)."""
    return 1, 8


def smem_bytes(M: int, K: int, qx: bool, w4: bool = False) -> int:
    """The byte modes: x quantized into shared memory, [M][K + 64] codes then [M][K / 128] scales (w4a8: and as many
    int32 code sums); bf16 reads x from L2."""
    return M * (K + 64) + (8 if w4 else 4) * M * (K // 128) if qx else 0


def resident_blocks(regs: int, warps: int, smem: int) -> int:
    """Blocks of this shape one SM holds at once (sm_80 / sm_90 limits: 64 K registers allocated per warp in units
    of 256, 64 warps, 32 blocks, 228 KiB of shared memory with 1 KiB reserved per block)."""
    by_regs = 65536 // (-(-regs * 32 // 256) * 256 * warps)
    return max(1, min(by_regs, 64 // warps, 32, 233472 // (smem + 1024)))


def grid(N: int, rows: int, warps: int, qx: bool, regs: int, smem: int, n_sms: int) -> int:
    """Blocks to launch: one per `rows` row pairs for bf16; for the byte modes (qx) at most what is resident at once
    (each block quantizes x in its prologue, then loops over row pairs: per pair the prologue cost ~5x the K loop)."""
    pairs = -(-N // 16)                                 # 16-row pairs, the last ragged when N % 16
    blocks = -(-pairs // rows)
    if not qx:
        return blocks
    static = warps * rows * 4 * 32 * 4                  # the kernel's reduction buffer
    return min(blocks, n_sms * resident_blocks(regs, warps, smem + static))


class Compiled(NamedTuple):
    fn: object             # the RawKernel
    regs: int              # registers per thread (the resident blocks that size the byte modes' grid)
    smem_cap: int          # bytes of dynamic shared memory it may take (0 for bf16, which takes none)


@functools.lru_cache(maxsize=None)
def kernel(device_id: int, name: str) -> Compiled:
    """The compiled instantiation and what its launches need to know of it, looked up once per device (an eager
    decode step launches it per linear; the attributes are driver queries). A byte mode is allowed all the dynamic
    shared memory a block may have beside its static reduction buffer (its x is sized by M and K; the attribute
    belongs to the function, so it is set once, not per launch size)."""
    fn = load("gemv_rows", name_expressions=(name,)).get_function(name)
    cap = 0
    if not name.startswith((f"gemv_rows<{MODE_BF16},", "gemv_rows_quant_x")) and ", true" not in name:
        cap = fn.max_dynamic_shared_size_bytes = min(smem_optin(device_id), SMEM_MAX) - fn.shared_size_bytes
    return Compiled(fn, fn.num_regs, cap)


def _run(x, w, ws, N: int, K: int, mode: int, out, rows, warps, pre=None, static=None):
    import cupy as cp  # noqa: PLC0415

    qx = mode not in (MODE_BF16, MODE_NF4)              # a byte mode: x quantized by the kernel
    M = x.shape[0]
    if static is not None:                              # a static scale: only gemv_rows_quant_x takes it
        check(pre is not False, "a static activation scale takes pre=True: x quantized once by gemv_rows_quant_x")
        pre = True
    top = MAX_M_INT4 if mode in W4_MODES else MAX_M
    check(1 <= M <= top, f"gemv_rows takes 1..{top} rows here, got M = {M} (use mma_sk / cuBLAS, or launch per 8)")
    nb = 2 if M > 8 else 1                              # token fragments of 8
    check(nb == 1 or pre is not False, f"{M} rows (two token fragments) take pre=True: x quantized once")
    pre = qx and (M >= PRE_MIN_M if pre is None else bool(pre))
    # two fragments, pre and the int4 modes (16 warps spill there): (1, 8)
    pr, pw = (1, 8) if nb == 2 or mode in W4_MODES or pre else nf4_plan(N, K) if mode == MODE_NF4 else plan(N, K, qx, M)
    rows = pr if rows is None else rows
    warps = pw if warps is None else warps
    shapes = SHAPES if nb == 1 else SHAPES16
    check((rows, warps) in shapes, f"rows = {rows}, warps = {warps}: (rows, warps) must be one of {shapes} for {M} rows")
    check(x.data.ptr % 16 == 0 and w.data.ptr % 16 == 0, f"x (address {x.data.ptr:#x}) and the weight (address "
          f"{w.data.ptr:#x}) must be 16-byte aligned: the kernel reads 16-byte chunks")
    smem = smem_bytes(M, K, qx, mode in W4_MODES)
    dev = cp.cuda.Device()
    k = kernel(dev.id, f"gemv_rows<{mode}, {rows}, {warps}" + (", true>" if pre else ">") if nb == 1
               else f"gemv_rows<{mode}, {rows}, {warps}, {'true' if pre else 'false'}, 2>")
    check(pre or smem <= k.smem_cap, f"{M} rows of K = {K} need {smem} bytes of shared memory for the quantized x, "
          f"over the {k.smem_cap} a block may have here")
    y = out if out is not None else cp.empty((M, N), dtype=BF16)
    check(y.shape == (M, N) and y.dtype == BF16 and y.flags.c_contiguous,
          f"out: {y.dtype} {y.shape}, expected C-contiguous bf16 {(M, N)}")
    if pre:                                             # x quantized once, then a block per row pairs
        x, smem, blocks = quantized_x(x, mode, static), 0, grid(N, rows, warps, False, k.regs, 0, sms(dev.id))
    else:
        blocks = grid(N, rows, warps, qx, k.regs, smem, sms(dev.id))
    launch(k.fn, (blocks,), (32 * warps,), (x, w, ws, y, np.int32(M), np.int32(N), np.int32(K)), shared_mem=smem,
           pdl=True)
    return y


def quantized_x(x, mode: int, static=None):
    """x bf16 [M, K] (K % 128 == 0; checked by the callers) quantized for a byte mode by gemv_rows_quant_x (one block
    per token, launched with PDL) -> uint8 [smem_bytes(M, K, True, w4)] in quantize_x's layout: codes [M][K + 64],
    scales [M][K / 128] (per token: [m][0]), then for the int4 modes the groups' code sums. Read by a PRE GEMV and by
    mma_q8 (prefill). static: None (dynamic scales), or for the int8 modes (w8a8, w4a8) a float32 [1] device array
    holding a checkpoint's static scale as the twin forms it, float32(A / 127) (static_scale)."""
    import cupy as cp  # noqa: PLC0415

    from ._launch import ptr  # noqa: PLC0415

    if static is not None:
        check(mode in (MODE_INT8, MODE_W4A8), f"a static activation scale is for the int8 modes (w8a8, w4a8), not "
                                               f"mode {mode}")
        expect(static, "static", np.float32, 1)
        check(static.shape == (1,), f"static: shape {static.shape}, expected (1,): one scale per tensor")
    M, K = x.shape
    xq = cp.empty((smem_bytes(M, K, True, mode in W4_MODES),), dtype=np.uint8)
    q = kernel(cp.cuda.Device().id, f"gemv_rows_quant_x<{mode}, {QUANT_WARPS}>")
    launch(q.fn, (M,), (32 * QUANT_WARPS,), (x, xq, np.int32(M), np.int32(K), ptr(static),
                                             np.int32(static is not None)), shared_mem=0, pdl=True)
    return xq


def static_scale(activation_scale) -> np.ndarray:
    """A checkpoint's static activation abs-max A (any array of one value) -> float32 [1] holding A / 127 rounded
    once to float32, the scale act_int8_per_token's static branch forms (on the host; upload it once)."""
    A = float(np.asarray(activation_scale.get() if hasattr(activation_scale, "get") else activation_scale).reshape(-1)[0])
    check(np.isfinite(A) and A > 0, f"activation_scale = {A}: a static activation abs-max must be finite and > 0")
    return np.array([A / 127.0], np.float32)


def gemv_rows_bf16(x, w, out=None, rows=None, warps=None):
    from ._launch import ptr  # noqa: PLC0415

    expect(x, "x", BF16, 2)
    expect(w, "w", BF16, 2)
    M, K = x.shape
    N = w.shape[0]
    check(w.shape[1] == K, f"w has K = {w.shape[1]}, x has K = {K}")
    check(K % 64 == 0 and K > 0, f"K = {K} must be a positive multiple of 64 (128-byte tiles of bf16)")
    check(N > 0, f"w has N = {N} rows")
    return _run(x, w, ptr(None), N, K, MODE_BF16, out, rows, warps)


def gemv_rows_fp8(x, q, ws, out=None, rows=None, warps=None, pre=None):
    N, K = _codes(x, q, np.uint8, 1, 128, "whole fp8 blocks")
    expect(ws, "ws", np.float32, 2)
    check(ws.shape == (-(-N // 128), K // 128), f"ws shape {ws.shape}, expected {(-(-N // 128), K // 128)} for "
          f"N = {N}, K = {K}")
    return _run(x, q, ws, N, K, _e4m3(MODE_BLOCK), out, rows, warps, pre)


def gemv_rows_fp8_channel(x, q, ws, out=None, rows=None, warps=None, pre=None):
    N, K = _codes(x, q, np.uint8, 1, 128, "128-column tiles")
    _per_channel(ws, N)
    return _run(x, q, ws, N, K, _e4m3(MODE_CHANNEL), out, rows, warps, pre)


def gemv_rows_int8(x, q, ws, out=None, rows=None, warps=None, pre=None, static=None):
    N, K = _codes(x, q, np.int8, 1, 128, "128-column tiles")
    _per_channel(ws, N)
    return _run(x, q, ws, N, K, MODE_INT8, out, rows, warps, pre, static)


def gemv_rows_w4a8(x, q, ws, out=None, rows=None, warps=None, pre=None, static=None):
    N, K = _int4_groups(x, q, ws)
    return _run(x, q, ws, N, K, MODE_W4A8, out, rows, warps, pre, static)


def gemv_rows_w4afp8(x, q, ws, out=None, rows=None, warps=None, pre=None):
    N, K = _int4_groups(x, q, ws)
    return _run(x, q, ws, N, K, _e4m3(MODE_W4AFP8), out, rows, warps, pre)


def _int4_groups(x, q, ws) -> tuple[int, int]:
    """The int4 x int8 / e4m3 modes' checks: nibbles [N, K / 2], K % 256 == 0, ws [N, K / 128] -> (N, K)."""
    N, K = _codes(x, q, np.uint8, 2, 256, "two groups of 128 a tile")
    expect(ws, "ws", np.float32, 2)
    check(ws.shape == (N, K // 128), f"ws shape {ws.shape}, expected {(N, K // 128)}: a scale per row and group of 128")
    return N, K


def gemv_rows_nf4(x, q, ws, out=None, rows=None, warps=None):
    N, K = _codes(x, q, np.uint8, 2, 256, "four groups of 64 a tile")
    expect(ws, "ws", np.float32, 2)
    check(ws.shape == (N, K // 64), f"ws shape {ws.shape}, expected {(N, K // 64)}: an absmax per row and group of 64")
    check(ws.data.ptr % 16 == 0, f"ws (address {ws.data.ptr:#x}) must be 16-byte aligned: the kernel reads a row's "
          "four scales of a tile as one 16-byte load")
    return _run(x, q, ws, N, K, MODE_NF4, out, rows, warps)


def nf4_interleave(q):
    """[N, K / 2] nf4 codes, K % 256 == 0 -> the kernel's order (a new C-contiguous array on q's module): byte
    16 t + 8 s + j of each 64-byte half is byte 32 s + 8 t + j of the half as packed (t < 4, s < 2, j < 8), so the
    16 bytes lane t of a warp loads hold 8 of each 64-column group."""
    N, B = q.shape
    check(B % 128 == 0, f"nf4 codes of {B} bytes a row: the kernel's order needs a multiple of 128 (K % 256 == 0)")
    return q.reshape(N, B // 64, 2, 4, 8).transpose(0, 1, 3, 2, 4).reshape(N, B).copy()


def nf4_deinterleave(q):
    """nf4_interleave's inverse."""
    N, B = q.shape
    check(B % 128 == 0, f"nf4 codes of {B} bytes a row: the kernel's order needs a multiple of 128 (K % 256 == 0)")
    return q.reshape(N, B // 64, 4, 2, 8).transpose(0, 1, 3, 2, 4).reshape(N, B).copy()


def _codes(x, q, qdtype, per_byte: int, multiple: int, why: str) -> tuple[int, int]:
    """The byte modes' checks of x (bf16 [M, K]) and the codes q ([N, K / per_byte] of qdtype) -> (N, K)."""
    expect(x, "x", BF16, 2)
    expect(q, "q", qdtype, 2)
    K, N = x.shape[1], q.shape[0]
    check(q.shape[1] * per_byte == K, f"q holds K = {q.shape[1] * per_byte}" + (" (two codes a byte)" if per_byte > 1
          else "") + f", x has K = {K}")
    check(K % multiple == 0 and K > 0, f"K = {K} must be a positive multiple of {multiple} ({why})")
    check(N > 0, f"q has N = {N} rows")
    return N, K


def _per_channel(ws, N: int) -> None:
    """One float32 scale per output channel: [N, 1] or [N]."""
    check(hasattr(ws, "dtype") and ws.dtype == np.float32 and ws.flags.c_contiguous,
          f"ws: expected C-contiguous float32, got {getattr(ws, 'dtype', type(ws).__name__)}")
    check(ws.size == N and ws.shape in ((N,), (N, 1)), f"ws shape {ws.shape}, expected ({N}, 1) or ({N},): one "
          "scale per output channel")


def _e4m3(mode: int) -> int:
    import cupy as cp  # noqa: PLC0415

    cc = int(cp.cuda.Device().compute_capability)
    check(cc >= 89, f"e4m3 tensor cores need compute capability 8.9 or newer, this device has {cc}")
    return mode
