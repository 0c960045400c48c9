"""GPU execution of the weight methods that have kernels: repack at load (``prepare``) and launch (``matmul``).

Kept beside the methods (underscore: not a method) so each method file stays the definition of its math and
only calls in here when its arrays live on a GPU. Which path runs:

| method | layout on the GPU | M <= 4 | 4 < M | kernel |
|---|---|---|---|---|
| wint8 (per channel), wint4 (groups % 16 == 0) | mma fragment order (fdlite_kernels.mma_wq.repack) | gemv_packed | mma_wq | one weight copy for every M |
| wint2 | as stored (FastDeploy's CCQ checkpoint layout) | gemv_wint2 (M <= 4) | — | above 4 rows: the twin formula on CuPy (stop-gap) |
| block_wise_fp8 | as stored (e4m3 bits, 128x128 inverse scales) | gemv_block_fp8 (M <= 16) | — | above 16 rows: the NumPy-twin formula on CuPy (dequantize + cuBLAS, a stop-gap) |
| dense (bf16) | as stored | gemv_bf16 (M = 1) | cuBLAS | while a CUDA graph is captured (CuPy refuses cuBLAS there): gemv_bf16 in 16-row pieces |
"""
from __future__ import annotations

import numpy as np

from .base import Packed


def grouped_supported(method, p: Packed) -> bool:
    """wint8 per channel or int4 with a uniform grid and groups that are multiples of 16."""
    if method.levels is not None or method.bits not in (4, 8):
        return False
    G = p.arrays["weight_scale"].shape[1]
    return G == 1 if method.bits == 8 else p.meta["group_size"] % 16 == 0


def prepare_grouped(method, p: Packed, backend) -> Packed:
    from fdlite_kernels.mma_wq import padded, repack  # noqa: PLC0415

    N, K = p.shape
    bits = method.bits
    q = np.asarray(method.unpack(p, np))                                          # (N, Kq) int codes
    Np, Kk = padded(N, q.shape[1], bits)
    s = np.asarray(p.arrays["weight_scale"], np.float32)                          # (N, G)
    group = Kk if bits == 8 else p.meta["group_size"]
    scale = np.zeros((Np, 1 if bits == 8 else Kk // group), np.float32)
    scale[:N, :s.shape[1]] = s                                                   # padded groups: zero codes
    arrays = {"qp": backend.asarray(repack(q, bits)), "scale": backend.asarray(scale)}
    return Packed(p.method, p.shape, arrays, {**p.meta, "gpu": "mma_wq", "bits": bits, "group": group, "K_pad": Kk})


def matmul_grouped(x, p: Packed, xp):
    from fdlite_kernels.mma_wq import gemm_packed  # noqa: PLC0415

    return gemm_packed(_bf16_padded(x, p.meta["K_pad"], xp), p.arrays["qp"], p.arrays["scale"], p.shape[0],
                       p.meta["bits"], p.meta["group"])


def matmul_block_fp8(method, x, p: Packed, xp):
    from fdlite_kernels.gemv_block_fp8 import gemv_block_fp8  # noqa: PLC0415

    M, K = x.shape
    if M <= 16 and K % 16 == 0 and method.activation == "fp8" and tuple(method.block) == (128, 128):
        return gemv_block_fp8(_bf16_padded(x, K, xp), p.arrays["quant_weight"], p.arrays["weight_scale_inv"])
    return None     # the caller runs the reference formula on the device


def matmul_wint2(x, p: Packed, xp):
    from fdlite_kernels.gemv_wint2 import gemv_wint2  # noqa: PLC0415

    a = p.arrays
    return gemv_wint2(_bf16_padded(x, x.shape[1], xp), a["quant_weight"], a["weight_scale"], a["super_scales"],
                      a["code_scale"], a["code_zp"])


def _bf16_padded(x, K_pad: int, xp):
    import ml_dtypes  # noqa: PLC0415

    bf16 = np.dtype(ml_dtypes.bfloat16)
    x = xp.ascontiguousarray(x.astype(bf16, copy=False))
    if x.shape[1] < K_pad:
        x = xp.pad(x, ((0, 0), (0, K_pad - x.shape[1])))
    return x


def matmul_dense(x, w, xp):
    """x: (M, K) bf16, w: (N, K) bf16 on the GPU -> (M, N); None when the kernel cannot take the shapes."""
    from fdlite_kernels.gemv_bf16 import MAX_M, gemv_bf16  # noqa: PLC0415

    M, K = x.shape
    if K % 8 or not w.flags.c_contiguous:
        return None
    if M > DENSE_GEMV_MAX_M and not xp.cuda.get_current_stream().is_capturing():
        return None                                    # cuBLAS (the caller's x @ w.T) is faster here
    x = xp.ascontiguousarray(x)
    if M <= MAX_M:
        return gemv_bf16(x, w)
    return xp.concatenate([gemv_bf16(x[i:i + MAX_M], w) for i in range(0, M, MAX_M)])


# Measured on the H100 (Llama-3-8B, BENCHMARKS.md): gemv_bf16 re-reads x per 4 weight rows, so beyond one row
# cuBLAS wins; the kernel runs above 1 row only inside a graph capture, where cuBLAS cannot.
DENSE_GEMV_MAX_M = 1
