"""wfp8afp8 (Wfp8Afp8): e4m3 weights per output channel x dynamic e4m3 activations per token (spec §4.4).

Packed layout: quant_weight uint8 (N, K) e4m3fn bit patterns, K contiguous; weight_scale float32 (N, 1).
Weights: amax[n] = max(max_k |W|, 1e-4); s[n] = amax / 448; q = e4m3_rne(clip(W / s, -448, 448)).
Activations: per token s_x[m] = max(amax_m, 1e-10) / 448; x_hat = e4m3(x / s_x) * s_x.
GEMM: y = (xq @ wq.T) * s_x * s_w.T (cutlass_scaled_mm); the reference computes x_hat @ W_hat.T in float32.
Round-trip error per weight <= max(amax[n], 1e-4) / 16.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from . import _gpu
from ._common import FP8_MAX, act_fp8, check_weight, fp8_decode, fp8_encode
from .base import Packed, QuantMethod


class Method(QuantMethod):
    name = "wfp8afp8"

    def __init__(self, activation_scheme: str = "dynamic", **unknown):
        if unknown:
            raise ConfigError(f"wfp8afp8: unknown option(s) {', '.join(map(repr, unknown))}")
        if activation_scheme != "dynamic":
            raise ConfigError(f"wfp8afp8: activation_scheme={activation_scheme!r}; only 'dynamic' exists "
                              "(as in FastDeploy)")

    def config(self) -> dict:
        return {"quantization": self.name, "activation_scheme": "dynamic"}

    def quantize(self, w, what: str = "weight") -> Packed:
        w = check_weight(w, what)
        s = (np.maximum(np.abs(w).max(1, keepdims=True), 1e-4) / np.float32(FP8_MAX)).astype(np.float32)
        return Packed(self.name, w.shape, {"quant_weight": fp8_encode(w / s), "weight_scale": s})   # (N,K),(N,1)

    def dequantize(self, p: Packed, xp=np):
        return fp8_decode(p.arrays["quant_weight"], xp) * p.arrays["weight_scale"]

    def matmul(self, x, p: Packed, xp):
        if xp is not np:
            y = _gpu.matmul_fp8_channel(x, p, xp)                 # decode kernel where it applies
            if y is not None:
                return y
        return (act_fp8(x, None, xp) @ self.dequantize(p, xp).T).astype(x.dtype, copy=False)

    def error_bound(self, w) -> float:
        w = check_weight(w)
        return max(float(np.abs(w).max()), 1e-4) / 16 * (1 + 1e-6)
