"""dense: no quantization; the weight is kept in the compute dtype (float32 on the CPU, bf16 on the GPU).

Layout: arrays["w"] (N, K) row-major. It is the reference every other method is compared with. On the GPU
(bf16) decode-sized inputs run fdlite's GEMV (fdlite/quant/_gpu.py), larger ones cuBLAS.
"""
from __future__ import annotations

import numpy as np

from .base import Packed, QuantMethod


class Method(QuantMethod):
    name = "dense"

    def __init__(self, dtype=np.float32):
        self.dtype = np.dtype(dtype)

    def quantize(self, w: np.ndarray) -> Packed:
        # A float32 checkpoint tensor is used as is (a view into the mmap: no copy).
        w = w if w.dtype == self.dtype else w.astype(self.dtype)
        return Packed(self.name, tuple(w.shape), {"w": w})

    def dequantize(self, p: Packed, xp=np):
        return p.arrays["w"].astype(xp.float32, copy=False)

    def matmul(self, x, p: Packed, xp):
        w = p.arrays["w"]
        if xp is not np and x.ndim == 2 and x.dtype == w.dtype and w.dtype.itemsize == 2:   # bf16 on the GPU
            from ._gpu import matmul_dense  # noqa: PLC0415

            y = matmul_dense(x, w, xp)
            if y is not None:
                return y
        return x @ w.T

    def error_bound(self, w: np.ndarray) -> float:
        return 0.0
