"""float8_e4m3fn: static per-head fp8 (FastDeploy ``cache_fp8``; spec §5.1-5.3, §8).

Layout per layer: k, v uint8 e4m3fn bit patterns (num_blocks, kv_heads, block_size, head_dim) (CuPy has no
fp8 dtype; the NumPy twin encodes/decodes through ``ml_dtypes.float8_e4m3fn``). Scales: options
``k_scale`` / ``v_scale`` float32 (layers, kv_heads), the calibrated abs-max ``A`` per kv head, as FastDeploy
stores ``cachek_matmul.activation_scale``.

Math (K after RoPE):  q = e4m3_rne(clip(x * 448 / A_h, -448, 448));  x^ = q * A_h / 448.
Option ``fp8_kv_round_to_int`` (default False) rounds x * 448 / A_h to an integer before the cast, as
FastDeploy's QuantToC8 does (values below 8 in scaled units lose their fractional bits).
"""
from __future__ import annotations

import numpy as np

from ._quant import FP8_MAX, StaticScales, e4m3_decode, e4m3_encode


class Format(StaticScales):
    name = "float8_e4m3fn"
    kernel_code = 2
    granularity = "head"
    options = {"k_scale": None, "v_scale": None, "fp8_kv_round_to_int": False}

    def _alloc(self):
        return {"k": self.xp.zeros(self.shape, np.uint8), "v": self.xp.zeros(self.shape, np.uint8)}

    def _quantize(self, x, amax):
        """x: (N, Hkv, D), amax: (Hkv, 1) -> uint8 bits (N, Hkv, D)."""
        scaled = x.astype(np.float32, copy=False) * (np.float32(FP8_MAX) / amax)
        return e4m3_encode(scaled, self.xp, bool(self.opts["fp8_kv_round_to_int"]))

    def write(self, layer, k, v, meta):
        blk, off = self.scatter_index(meta)
        store = self.layers[layer]
        store["k"][blk, :, off] = self._quantize(k, self.layer_scale("k_scale", layer))
        store["v"][blk, :, off] = self._quantize(v, self.layer_scale("v_scale", layer))

    def read(self, layer, meta):
        store, dt = self.layers[layer], self.backend.compute_dtype
        out = []
        for name in ("k", "v"):
            step = self.layer_scale(name + "_scale", layer) / np.float32(FP8_MAX)           # (Hkv, 1)
            q = e4m3_decode(self.gather_blocks(store[name], meta), self.xp)                 # (B, L, Hkv, D)
            out.append((q * step).astype(dt, copy=False))
        return out[0], out[1]

    def kernel_cache(self, layer):
        """Write scales 448 / A and read steps A / 448 per kv head (float32, as _quantize / read)."""
        store = self.layers[layer]
        out = {"fmt": self.kernel_code, "round_to_int": bool(self.opts["fp8_kv_round_to_int"])}
        for name in ("k", "v"):
            amax = self.layer_scale(name + "_scale", layer).reshape(-1)
            out.update({name: store[name], name + "_w": np.float32(FP8_MAX) / amax,
                        name + "_r": amax / np.float32(FP8_MAX)})
        return out

    def bytes_per_token(self):
        c = self.cfg
        return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim   # 1 byte each; scales per model
