"""block_wise_fp8: e4m3 weights in 128x128 blocks with fp32 inverse scales, x dynamic fp8 activations per token
and group of 128 K columns (DeepSeek-V3 / FastDeploy BlockWiseFP8, DeepGEMM fp8_gemm_nt).

Packed layout: quant_weight uint8 (N, K): e4m3fn bit patterns (sign, 4 exponent bits bias 7, 3 mantissa bits;
the GPU reads the bits), K contiguous; weight_scale_inv float32 (ceil(N/128), ceil(K/128)). Partial blocks at
the N or K edge (SmolLM2: K = 576 = 4.5 blocks) are zero-padded for the amax and then not stored.
Weights (spec §4.3): per block amax; s_inv = amax / 448 (amax = 0 -> s_inv = 1); q = e4m3_rne(W / s_inv).
Activations: per token m and K-group b: xs = max(amax, 1e-10) / 448, xq = e4m3_rne(x / xs).
GEMM: y[m, n] = sum_b (sum_{k in b} xq wq) * xs[m, b] * s_inv[n // 128, b] (fp32 accumulate per block);
the reference forms x_hat = xq * xs and W_hat = wq * s_inv and computes x_hat @ W_hat.T in float32 (the same sum).
Round-trip error per weight <= amax_block / 16 (half an e4m3 ulp, 2^-4 relative; subnormals are finer).
HF checkpoints with quant_method "fp8" + weight_block_size [128, 128] (weight e4m3 + weight_scale_inv) load as is.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ._common import FP8_MAX, act_fp8, check_weight, fp8_decode, fp8_encode
from . import _gpu
from .base import Packed, QuantMethod


class Method(QuantMethod):
    name = "block_wise_fp8"

    def __init__(self, weight_block_size=(128, 128), activation: str = "fp8", **unknown):
        if unknown:
            raise ConfigError(f"block_wise_fp8: unknown option(s) {', '.join(map(repr, unknown))}; it takes "
                              "weight_block_size ([128, 128]) and activation ('fp8' or 'bf16')")
        bs = tuple(weight_block_size) if isinstance(weight_block_size, (list, tuple)) else ()
        if len(bs) != 2 or not all(isinstance(b, int) and b > 0 for b in bs):
            raise ConfigError(f"block_wise_fp8: weight_block_size={weight_block_size!r} must be two positive "
                              "integers, e.g. [128, 128]")
        if activation not in ("fp8", "bf16"):
            raise ConfigError(f"block_wise_fp8: activation={activation!r} must be 'fp8' or 'bf16' (weight-only)")
        self.block, self.activation = bs, activation

    def config(self) -> dict:
        return {"quantization": self.name, "weight_block_size": list(self.block), "activation": self.activation}

    def _blocks(self, w):
        """(N, K) -> zero-padded (Nb, bn, Kb, bk) view of the blocks."""
        (bn, bk), (N, K) = self.block, w.shape
        wp = np.pad(w, ((0, -N % bn), (0, -K % bk)))
        return wp.reshape(wp.shape[0] // bn, bn, wp.shape[1] // bk, bk)

    def quantize(self, w, what: str = "weight") -> Packed:
        w = check_weight(w, what)
        N, K = w.shape
        blocks = self._blocks(w)                                                   # (Nb, bn, Kb, bk)
        amax = np.abs(blocks).max(axis=(1, 3))                                     # (Nb, Kb)
        s_inv = np.where(amax > 0, amax / np.float32(FP8_MAX), 1.0).astype(np.float32)
        q = fp8_encode(blocks / s_inv[:, None, :, None])                           # (Nb, bn, Kb, bk) uint8
        q = q.reshape(blocks.shape[0] * blocks.shape[1], -1)[:N, :K]               # (N, K)
        return Packed(self.name, (N, K), {"quant_weight": np.ascontiguousarray(q), "weight_scale_inv": s_inv},
                      {"weight_block_size": list(self.block)})

    def dequantize(self, p: Packed, xp=np):
        (bn, bk), (N, K) = self.block, p.shape
        s = p.arrays["weight_scale_inv"]                                           # (Nb, Kb)
        s_full = xp.repeat(xp.repeat(s, bn, axis=0), bk, axis=1)[:N, :K]           # (N, K)
        return fp8_decode(p.arrays["quant_weight"], xp) * s_full

    def matmul(self, x, p: Packed, xp):
        if xp is not np:
            y = _gpu.matmul_block_fp8(self, x, p, xp)             # decode kernel where it applies
            if y is not None:
                return y
        w = self.dequantize(p, xp)
        xh = act_fp8(x, self.block[1], xp) if self.activation == "fp8" else x.astype(xp.float32, copy=False)
        return (xh @ w.T).astype(x.dtype, copy=False)

    def error_bound(self, w) -> float:
        w = check_weight(w)
        return float(np.abs(w).max()) / 16 * (1 + 1e-6) + 1e-30
