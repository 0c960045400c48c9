"""GPU execution of the weight methods that have kernels: repack at load (``prepare``) and launch (``matmul``).

Kept beside the methods (underscore: not a method) so each method file stays the definition of its math and
only calls in here when its arrays live on a GPU. Which path runs:

| method | layout on the GPU | few rows | more rows | kernel |
|---|---|---|---|---|
| wint8 (per channel), wint4 (groups % 16 == 0) | mma fragment order (fdlite_kernels.mma_wq.repack, on the device) | gemv_packed (tensor-core GEMV, M <= 8), gemv_xs (x in shared memory, M <= 32; K split over blocks from K = 8192) | mma_sk (split-K pipeline, M <= 64), mma_wq above | one weight copy for every M; a gate_up weight's SwiGLU runs in the GEMVs' epilogue to 32 rows (matmul_grouped_swiglu) |
| wint2 | as stored (FastDeploy's CCQ checkpoint layout) | gemv_wint2_tc (tensor cores, 16 rows a launch; N % 64 == 0, K % 4 == 0), else gemv_wint2 (4 rows a launch), M <= 16, any M in graphs | — | eager above 16 rows: the twin formula on CuPy (stop-gap) |
| wfp8afp8, w8a8 (dynamic, per channel), w4a8 (dynamic, groups of 128), w4afp8 (groups of 128) | as stored (e4m3 bits, int8, or int4 nibbles with group scales) | gemv_rows (e4m3 mma, sm_89+, or int8 mma; x quantized per token (w4a8, w4afp8: and group) in its prologue at one row, from 2 rows once by gemv_rows_quant_x; K % 128 == 0, int4 256) | gemv_rows per 16 rows (w4a8, w4afp8: per 8) below Q8_MIN_M (int4: Q8_INT4_MIN_M); from there mma_q8, the prefill GEMM (x quantized once, 128 x 128 tiles; on sm_90 wgmma_q8 for the 8-bit weights) | group-wise w8a8: the twin formula on CuPy (stop-gap); static activation scales (w8a8, w4a8) take the same kernels, x quantized once with the prepared scale |
| nf4 (weight-only, groups of 64) | the stored codes permuted once at load (gemv_rows.nf4_interleave) | gemv_rows (levels looked up as bf16 in registers, bf16 mma; padded K % 256 == 0) | gemv_rows per 16 rows below NF4_MIN_M, mma_nf4 (the prefill GEMM, the same lookups, 128 x 128 tiles) from there | other groups, activation int8: the twin formula on CuPy (stop-gap) |
| block_wise_fp8 | as stored (e4m3 bits, 128x128 inverse scales) | gemv_rows (e4m3 mma, weights streamed as stored, x quantized in its prologue, from 2 rows once by gemv_rows_quant_x; M <= 16, K % 128 == 0, sm_89+), else gemv_block_fp8 (M <= 16) | mma_sk_fp8 below Q8_FP8_MIN_M rows, mma_q8 (wgmma_q8 on sm_90) from there, any M, graphs too | K % 128 != 0 above 16 rows, or before sm_89: a stop-gap, weight and activation expanded to bf16 (dequant_block_fp8.cu) then cuBLAS (or mma_bf16 in a graph) |
| dense (bf16) | as stored | M <= 16: gemv_rows (bf16 mma, K % 64 == 0, lm_head included); other K at one row: gemv_bf16 (N >= 65536 or K % 32 != 0), else mma_bf16 | cuBLAS | while a CUDA graph is captured (CuPy refuses cuBLAS there): mma_bf16 (mma_sk's dense variant for 17-64 rows) |
"""
from __future__ import annotations

import functools

import numpy as np

from ..backend import array_module
from .base import Packed


def grouped_supported(method, p: Packed) -> bool:
    """Uniform grids: int8 or int4 per channel (one scale column, whatever K), or int4 groups that are multiples
    of 16 and divide K padded to the kernel's 128-column tiles (else the reference path runs on the device)."""
    if method.levels is not None or method.bits not in (4, 8):
        return False
    G = p.arrays["weight_scale"].shape[1]
    if G == 1:
        return True
    g = p.meta["group_size"]
    return method.bits == 4 and g % 16 == 0 and (-(-(G * g) // 128) * 128) % g == 0


def prepare_grouped(method, p: Packed, backend) -> Packed:
    """Repack where the packed arrays live: on the device when quantize ran there (no host round trip), on
    the host for a checkpoint's packed tensors (then uploaded). Same bytes either way (xp-generic repack)."""
    from fdlite_kernels.mma_wq import padded, repack  # noqa: PLC0415

    N, K = p.shape
    bits = method.bits
    xp = array_module(p.arrays["quant_weight"])
    q = method.unpack(p, xp)                                                      # (N, Kq) int8 codes
    Np, Kk = padded(N, q.shape[1], bits)
    s = xp.asarray(p.arrays["weight_scale"], dtype=np.float32)                    # (N, G)
    # per channel: one group spanning the padded K (the padding codes are 0), so it fits the kernel's tiles
    group = Kk if s.shape[1] == 1 else p.meta["group_size"]
    scale = xp.zeros((Np, Kk // group), np.float32)
    scale[:N, :s.shape[1]] = s                                                   # padded groups: zero codes
    qp = repack(q, bits)                                                          # (Np * Kk * bits / 8,)
    del q                                                           # int4: an (N, Kq) int8 copy, not kept
    arrays = {"qp": backend.asarray(qp), "scale": backend.asarray(scale)}
    return Packed(p.method, p.shape, arrays, {**p.meta, "gpu": "mma_wq", "bits": bits, "group": group, "K_pad": Kk})


def matmul_grouped(x, p: Packed, xp):
    from fdlite_kernels.mma_wq import gemm_packed  # noqa: PLC0415

    return gemm_packed(_bf16_padded(x, p.meta["K_pad"], xp), p.arrays["qp"], p.arrays["scale"], p.shape[0],
                       p.meta["bits"], p.meta["group"])


def matmul_grouped_swiglu(x, p: Packed, xp):
    """silu(gate) * up of a gate_up weight: in the decode GEMVs' epilogue (mma_wq.gemm_packed_swiglu), else (more
    rows, I % 8 != 0) the routed GEMM then fused_ops.silu_mul, both from one padded copy of x."""
    from fdlite_kernels.fused_ops import silu_mul  # noqa: PLC0415
    from fdlite_kernels.mma_wq import gemm_packed, gemm_packed_swiglu  # noqa: PLC0415

    xb = _bf16_padded(x, p.meta["K_pad"], xp)
    w = (p.arrays["qp"], p.arrays["scale"], p.shape[0], p.meta["bits"], p.meta["group"])
    y = gemm_packed_swiglu(xb, *w)
    return y if y is not None else silu_mul(gemm_packed(xb, *w))


def matmul_block_fp8(method, x, p: Packed, xp):
    from fdlite_kernels.gemv_block_fp8 import gemv_block_fp8  # noqa: PLC0415

    M, K = x.shape
    if not (K % 16 == 0 and method.activation == "fp8" and tuple(method.block) == (128, 128)):
        return None     # the caller runs the reference formula on the device
    xb = _bf16_padded(x, K, xp)
    sk = K % 128 == 0 and _cc(xp) >= 89
    if sk and M <= FP8_ROWS_MAX_M and _aligned16(xb, p.arrays["quant_weight"]):
        from fdlite_kernels.gemv_rows import gemv_rows_fp8  # noqa: PLC0415

        return gemv_rows_fp8(xb, p.arrays["quant_weight"], p.arrays["weight_scale_inv"])
    if sk and M >= Q8_FP8_MIN_M and _aligned16(xb, p.arrays["quant_weight"]):
        from fdlite_kernels.mma_q8 import mma_q8_fp8  # noqa: PLC0415

        return mma_q8_fp8(xb, p.arrays["quant_weight"], p.arrays["weight_scale_inv"])
    if sk and (M <= FP8_SK_MAX_M or xp.cuda.get_current_stream().is_capturing()):
        from fdlite_kernels.mma_sk import mma_sk_fp8  # noqa: PLC0415

        return mma_sk_fp8(xb, p.arrays["quant_weight"], p.arrays["weight_scale_inv"])
    if M <= 16:
        return gemv_block_fp8(xb, p.arrays["quant_weight"], p.arrays["weight_scale_inv"])
    return _block_fp8_as_bf16(xb, p, xp)


def matmul_fp8_channel(x, p: Packed, xp):
    """wfp8afp8 on gemv_rows (e4m3 mma over the stored weight, x quantized per token in its prologue), K % 128 == 0
    on sm_89+: one launch for 1-16 rows, one per 16 rows up to BYTE_ROWS_MAX_M (each rereads the weights, still far
    cheaper than the reference's per-call float32 expansion, and capturable; per-token quantization makes the
    chunks exact). None elsewhere: the caller runs the reference formula on the device."""
    if _cc(xp) < 89:
        return None
    from fdlite_kernels.gemv_rows import gemv_rows_fp8_channel  # noqa: PLC0415
    from fdlite_kernels.mma_q8 import mma_q8_fp8_channel  # noqa: PLC0415

    return _per_channel_rows(gemv_rows_fp8_channel, x, p.arrays["quant_weight"], p.arrays["weight_scale"], xp,
                             prefill=mma_q8_fp8_channel)


def matmul_w8a8(x, p: Packed, xp):
    """w8a8 with per-channel weights on gemv_rows' int8 mode (integer mma, the activation quantized in the prologue,
    or once before with a static scale), as wfp8afp8 above; None for group-wise weights, another K or a static scale
    that prepare() did not turn into the kernels' (the reference formula runs)."""
    q, s = p.arrays["quant_weight"], p.arrays["weight_scale"]
    if s.shape[1] != 1 or q.shape[1] != p.shape[1]:
        return None
    static = _static(p)
    if static is False:
        return None
    from fdlite_kernels.gemv_rows import gemv_rows_int8  # noqa: PLC0415
    from fdlite_kernels.mma_q8 import mma_q8_int8  # noqa: PLC0415

    return _per_channel_rows(_given(gemv_rows_int8, static), x, q, s, xp, prefill=_given(mma_q8_int8, static))


def matmul_w4a8(x, p: Packed, xp):
    """w4a8 with groups of 128 on gemv_rows' int4 x int8 mode (s8 mma, nibbles as q + 8 corrected by the prologue's
    code sums), 8 rows a launch, mma_q8 from Q8_INT4_MIN_M rows; activations dynamic per token and group, or a static
    scale (prepared, as w8a8's). None for other groups or a padded K that is not a multiple of 256."""
    static = _static(p)
    if static is False or not _int4_group128(p):
        return None
    from fdlite_kernels.gemv_rows import gemv_rows_w4a8  # noqa: PLC0415
    from fdlite_kernels.mma_q8 import mma_q8_w4a8  # noqa: PLC0415

    return _int4_rows(_given(gemv_rows_w4a8, static), x, p, xp, _given(mma_q8_w4a8, static))


def with_static_scale(p: Packed, backend) -> Packed:
    """A prepared w8a8 / w4a8 weight with a static activation scale (FastDeploy's activation_scale, the abs-max A)
    gains act_static: float32 [1] = float32(A / 127) on the device, the scale the kernels quantize x with."""
    from fdlite_kernels.gemv_rows import static_scale  # noqa: PLC0415

    return Packed(p.method, p.shape, {**p.arrays, "act_static": backend.asarray(static_scale(p.arrays["activation_scale"]))},
                  dict(p.meta))


def _static(p: Packed):
    """None: dynamic activations; the device scale of a static one; False: static but not prepared (no kernel)."""
    if "activation_scale" not in p.arrays:
        return None
    return p.arrays.get("act_static", False)


def _given(fn, static):
    """fn, or fn with its static activation scale bound."""
    return fn if static is None else functools.partial(fn, static=static)


def matmul_w4afp8(x, p: Packed, xp):
    """w4afp8 (groups of 128, fp8 activations per token and group) on gemv_rows' int4 x e4m3 mode (nibbles
    looked up as e4m3(q + 8), corrected by x's code sums), 8 rows a launch to BYTE_ROWS_MAX_M, sm_89+; None for
    other groups, a padded K that is not a multiple of 256 or an older device (the reference formula runs)."""
    if not _int4_group128(p) or _cc(xp) < 89:
        return None
    from fdlite_kernels.gemv_rows import gemv_rows_w4afp8  # noqa: PLC0415
    from fdlite_kernels.mma_q8 import mma_q8_w4afp8  # noqa: PLC0415

    return _int4_rows(gemv_rows_w4afp8, x, p, xp, mma_q8_w4afp8)


def _int4_group128(p: Packed) -> bool:
    """int4 nibbles in groups of 128 whose packed K is a multiple of 256: what gemv_rows' int4 modes read."""
    Kp = p.arrays["quant_weight"].shape[1] * 2
    return p.meta.get("group_size") == 128 and Kp % 256 == 0 and p.arrays["weight_scale"].shape[1] == Kp // 128


def _int4_rows(kernel, x, p: Packed, xp, prefill):
    """An int4 x int8 / e4m3 mode, x zero-padded to the packed K, 8 rows a launch (one token fragment)."""
    q = p.arrays["quant_weight"]
    return _per_channel_rows(kernel, x, q, p.arrays["weight_scale"], xp, K_pad=q.shape[1] * 2, step=8,
                             prefill=prefill, min_m=Q8_INT4_MIN_M)


def nf4_rows_supported(method, p: Packed) -> bool:
    """gemv_rows' nf4 mode takes weight-only nf4 in groups of 64 whose packed K is a multiple of 256."""
    q, s = p.arrays["quant_weight"], p.arrays["weight_scale"]
    Kp = q.shape[1] * 2
    return (method.activation == "bf16" and p.meta.get("group_size") == 64 and Kp % 256 == 0
            and s.shape[1] == Kp // 64)


def prepare_nf4(p: Packed) -> Packed:
    """The device copy's codes in gemv_rows' order (same bytes, permuted in place of the stored ones: one copy),
    marked so nf4.Method.unpack reads them back."""
    from fdlite_kernels.gemv_rows import nf4_interleave  # noqa: PLC0415

    arrays = {**p.arrays, "quant_weight": nf4_interleave(p.arrays["quant_weight"])}
    return Packed(p.method, p.shape, arrays, {**p.meta, "gpu": "rows_nf4"})


def matmul_nf4(x, p: Packed, xp):
    """nf4 (weight-only, groups of 64) on gemv_rows' nf4 mode (levels looked up as bf16 in registers, bf16 mma,
    fp32 group sums): 16 rows a launch below NF4_MIN_M, mma_nf4 (the same numerics) from there; None for a weight
    prepare() left as stored (the reference formula runs)."""
    if p.meta.get("gpu") != "rows_nf4":
        return None
    from fdlite_kernels.gemv_rows import gemv_rows_nf4  # noqa: PLC0415
    from fdlite_kernels.mma_nf4 import mma_nf4  # noqa: PLC0415

    q, s = p.arrays["quant_weight"], p.arrays["weight_scale"]
    if not _aligned16(s):                          # the kernel reads a row's four scales of a tile as 16 bytes
        return None
    return _per_channel_rows(gemv_rows_nf4, x, q, s, xp, K_pad=q.shape[1] * 2, prefill=mma_nf4, min_m=NF4_MIN_M)


def _per_channel_rows(kernel, x, q, ws, xp, K_pad=None, step=None, prefill=None, min_m=None):
    """kernel on x's rows, `step` rows a launch (default gemv_rows.MAX_M; the int4 x int8 / e4m3 modes take 8); from
    min_m rows (default Q8_MIN_M) the prefill GEMM `prefill` (mma_q8, mma_nf4: each weight tile read once per 128
    rows)."""
    import ml_dtypes  # noqa: PLC0415

    from fdlite_kernels.gemv_rows import MAX_M  # noqa: PLC0415

    step = MAX_M if step is None else step
    M, K = x.shape
    K = K if K_pad is None else K_pad              # w4a8: x zero-padded to the packed K (as the twin pads)
    big = prefill is not None and M >= (Q8_MIN_M if min_m is None else min_m)
    if not ((M <= BYTE_ROWS_MAX_M or big) and K % 128 == 0):
        return None
    xb = _bf16_padded(x, K, xp)
    if not _aligned16(xb, q):
        return None
    if big:
        return prefill(xb, q, ws)
    if M <= step:
        return kernel(xb, q, ws)
    y = xp.empty((M, q.shape[0]), dtype=np.dtype(ml_dtypes.bfloat16))
    for i in range(0, M, step):                    # row slices of C-contiguous arrays: contiguous, 16-byte aligned
        kernel(xb[i:i + step], q, ws, out=y[i:i + step])
    return y


# wfp8afp8 / w8a8 / w4a8 / w4afp8 / nf4 rows taken by gemv_rows (16 a launch; int4 x int8 / e4m3: 8) below Q8_MIN_M;
# nf4's prefill above runs the reference formula (stop-gap)
BYTE_ROWS_MAX_M = 64
# mma_q8 (the prefill GEMM; on sm_90 wgmma_q8 for 8-bit weights) from this many rows: wfp8afp8 and w8a8, w4a8 and
# w4afp8, block_wise_fp8. The H100 sums over the four 8B projections (BENCHMARKS.md): at 64 rows wfp8afp8 260 us
# against gemv_rows' 469 (4 launches), w8a8 267 / 396, w4a8 452 / 606, w4afp8 674 / 778, block_wise_fp8 274 against
# mma_sk_fp8's 283; at 32 rows gemv_rows' two launches win (w8a8 202, wfp8afp8 239; w4a8 309 against 441).
Q8_MIN_M = 33
Q8_INT4_MIN_M = 49
Q8_FP8_MIN_M = 64
# nf4 (weight-only, groups of 64): mma_nf4, its prefill GEMM, from this many rows (H100, the four 8B projections:
# at 64 rows gemv_rows' four launches 438 us against mma_nf4's 671, at 128 about 875 against 665)
NF4_MIN_M = 65


# gemv_rows (e4m3 tensor cores, the weights streamed into registers as stored, x quantized in its prologue) to here
FP8_ROWS_MAX_M = 16     # (9-16 rows, two token fragments: 124 us over the four 8B projections against
                        # mma_sk_fp8's 139-143; H100, BENCHMARKS.md)
# mma_sk_fp8 (e4m3 tensor cores) up to here, and for any captured row count; the H100 sums over the four 8B
# projections (BENCHMARKS.md): M = 1 131 us vs gemv_block_fp8's 173, M = 16 145 vs 1037, M = 256 889 vs the
# stop-gap's 2223 (mma_bf16); eager prefill above keeps the stop-gap, whose cuBLAS GEMM is faster there (M = 4096:
# cuBLAS bf16 2.5 ms against mma_sk_fp8's 12.9 ms)
FP8_SK_MAX_M = 256


def _block_fp8_as_bf16(x, p: Packed, xp):
    """Above the GEMV's 16 rows, a stop-gap (no fp8 tensor-core kernel yet): weight and fp8-quantized activation
    expanded to bf16 (dequant_block_fp8.cu), then mma_bf16 inside a graph capture (cuBLAS is not capturable)
    or cuBLAS bf16 eagerly. Each expanded element is rounded once to bf16 (the twin keeps float32)."""
    from fdlite_kernels.dequant_block_fp8 import dequant_w, dequant_x  # noqa: PLC0415
    from fdlite_kernels.mma_wq import mma_bf16  # noqa: PLC0415

    w = dequant_w(p.arrays["quant_weight"], p.arrays["weight_scale_inv"])          # (N, K) bf16, per call
    xh = dequant_x(x)                                                             # (M, K) bf16
    if xp.cuda.get_current_stream().is_capturing() and x.shape[1] % 32 == 0:
        return mma_bf16(xh, w)
    return xh @ w.T


def matmul_wint2(x, p: Packed, xp):
    """gemv_wint2_tc (tensor cores, 1-16 rows a launch) where the shape allows it (N % 64 == 0, K % 4 == 0, the
    codewords in the range its floor trick needs: wint2.Method.prepare), else gemv_wint2.cu, 4 rows per launch: one
    launch for decode, M / 4 for a small batch (each rereads the weights, still far cheaper than expanding them).
    Both are graph-capturable at any M (the float32 formula is not: cuBLAS)."""
    import ml_dtypes  # noqa: PLC0415

    from fdlite_kernels.gemv_wint2 import TC_MAX_M, gemv_wint2, gemv_wint2_tc  # noqa: PLC0415

    a = p.arrays
    xb = _bf16_padded(x, x.shape[1], xp)
    w = (a["quant_weight"], a["weight_scale"], a["super_scales"], a["code_scale"], a["code_zp"])
    M, K = xb.shape
    N = a["quant_weight"].shape[1]
    tc = (WINT2_TC and p.meta.get("codewords_in_range", False) and N % 64 == 0 and K % 4 == 0
          and xb.data.ptr % 8 == 0 and _cc(xp) >= 80)
    step = TC_MAX_M if tc else 4
    run = gemv_wint2_tc if tc else gemv_wint2
    if M <= step:
        return run(xb, *w)
    y = xp.empty((M, N), dtype=np.dtype(ml_dtypes.bfloat16))
    for i in range(0, M, step):
        run(xb[i:i + step], *w, out=y[i:i + step])
    return y


WINT2_TC = True         # gemv_wint2_tc where it applies (route_ab.py can turn it off for an A/B)
# wint2 rows run by gemv_wint2 (4 per launch) when eager; more rows take the float32 formula on CuPy (stop-gap)
WINT2_GEMV_MAX_M = 16


def _cc(xp) -> int:
    """The current device's compute capability as an int (89 for sm_89; CuPy caches it per device)."""
    return int(xp.cuda.Device().compute_capability)


def _aligned16(*arrays) -> bool:
    """gemv_rows reads 16-byte chunks: views that start off a 16-byte boundary take the other kernels."""
    return all(a.data.ptr % 16 == 0 for a in arrays)


def _bf16_padded(x, K_pad: int, xp):
    import ml_dtypes  # noqa: PLC0415

    bf16 = np.dtype(ml_dtypes.bfloat16)
    x = xp.ascontiguousarray(x.astype(bf16, copy=False))
    if x.shape[1] < K_pad:
        x = xp.pad(x, ((0, 0), (0, K_pad - x.shape[1])))
    return x


def matmul_dense(x, w, xp):
    """x: (M, K) bf16, w: (N, K) bf16 on the GPU -> (M, N); None when cuBLAS (the caller's x @ w.T) should run.

    1-16 rows, K % 64 == 0: gemv_rows (H100, one row: 2.5-2.9 TB/s on the 8B layer shapes, 155.6 us for the four
    against cuBLAS' 165.5 and mma_bf16's 174.5; lm_head 340 us, 3.09 TB/s, against gemv_bf16's 353). Other one-row
    shapes: gemv_bf16 for a vocabulary-sized N or K % 32 != 0, else mma_bf16. More rows: cuBLAS when eager; inside
    a graph capture (where CuPy refuses cuBLAS) mma_bf16, the tensor-core kernel reading w as stored."""
    from fdlite_kernels.gemv_bf16 import gemv_bf16  # noqa: PLC0415
    from fdlite_kernels.mma_wq import mma_bf16  # noqa: PLC0415

    M, K = x.shape
    if K % 8 or not w.flags.c_contiguous:
        return None
    x = xp.ascontiguousarray(x)
    if M <= DENSE_ROWS_MAX_M and K % 64 == 0 and _aligned16(x, w):
        from fdlite_kernels.gemv_rows import gemv_rows_bf16  # noqa: PLC0415

        return gemv_rows_bf16(x, w)
    capturing = xp.cuda.get_current_stream().is_capturing()
    if M == 1 and (w.shape[0] >= GEMV_MIN_N or K % 32):
        return gemv_bf16(x, w)
    if (capturing or M <= DENSE_MMA_MAX_M) and K % 32 == 0:
        return mma_bf16(x, w)
    if capturing:
        raise RuntimeError(f"dense linear K = {K} is not a multiple of 32: no capturable kernel for {M} rows")
    return None


# Eager steps above one row take cuBLAS (faster at every M measured on the H100, BENCHMARKS.md); mma_bf16 is the
# graph's kernel. Raise this if a measurement shows mma_bf16 ahead at small M.
DENSE_MMA_MAX_M = 1
DENSE_ROWS_MAX_M = 16   # gemv_rows (the weights streamed into registers as stored) to here, eager or captured,
                        # any N (BENCHMARKS.md: 157-165 us at 4 and 8 rows against cuBLAS' 166-167; 158-159 at 12
                        # and 16, two token fragments a launch, against cuBLAS' 165-166 and mma_bf16's 186-196)
GEMV_MIN_N = 65536      # one row of a vocabulary projection that gemv_rows does not take (K % 64): gemv_bf16
