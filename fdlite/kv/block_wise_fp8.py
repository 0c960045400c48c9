"""block_wise_fp8: dynamic fp8 with one scale per token per kv head (FastDeploy ``block_wise_fp8``, PR #3767;
spec §5.3, §8). Needs no calibration.

Layout per layer: k, v uint8 e4m3fn bit patterns (num_blocks, kv_heads, block_size, head_dim); beside them
k_scale, v_scale float32 (num_blocks, kv_heads, block_size): the dequant scale ``amax / 448`` at the token's
slot (FastDeploy's scale caches ``caches[4 * layer + 2 | 3]`` have this shape, in bf16).

Math per token t and kv head h (K after RoPE):  A = max_d |x[d]|;  q = e4m3_rne(x / A * 448);  store A / 448;
x^ = q * A / 448. A == 0 (an all-zero row) stores q = 0 and scale 0. The token's largest element is always
exactly representable (448), so the error is e4m3's relative rounding (<= 2^-4) of each element.
Option ``fp8_kv_round_to_int`` (default False): round x / A * 448 to an integer before the cast, as
FastDeploy's fp8 write does.
"""
from __future__ import annotations

import numpy as np

from ._quant import FP8_MAX, e4m3_decode, e4m3_encode, gather_tokens
from .base import KVFormat


class Format(KVFormat):
    name = "block_wise_fp8"
    kernel_code = 3
    options = {"fp8_kv_round_to_int": False}

    def _alloc(self):
        xp, sshape = self.xp, self.shape[:3]
        return {"k": xp.zeros(self.shape, np.uint8), "v": xp.zeros(self.shape, np.uint8),
                "k_scale": xp.zeros(sshape, np.float32), "v_scale": xp.zeros(sshape, np.float32)}

    def _quantize(self, x):
        """x: (N, Hkv, D) -> (uint8 bits (N, Hkv, D), dequant scale float32 (N, Hkv))."""
        xp = self.xp
        x = x.astype(np.float32, copy=False)
        amax = xp.abs(x).max(axis=-1)                                                # (N, Hkv)
        safe = xp.where(amax > 0, amax, np.float32(1))[..., None]                    # (N, Hkv, 1)
        bits = e4m3_encode(x / safe * np.float32(FP8_MAX), xp, bool(self.opts["fp8_kv_round_to_int"]))
        return bits, (amax / np.float32(FP8_MAX)).astype(np.float32)

    def write(self, layer, k, v, meta):
        blk, off = self.scatter_index(meta)
        store = self.layers[layer]
        for name, x in (("k", k), ("v", v)):
            bits, scale = self._quantize(x)
            store[name][blk, :, off] = bits
            store[name + "_scale"][blk, :, off] = scale

    def read(self, layer, meta):
        store, xp, dt = self.layers[layer], self.xp, self.backend.compute_dtype
        out = []
        for name in ("k", "v"):
            q = e4m3_decode(self.gather_blocks(store[name], meta), xp)                      # (B, L, Hkv, D)
            s = gather_tokens(store[name + "_scale"], meta, xp)                              # (B, L, Hkv)
            out.append((q * s[..., None]).astype(dt, copy=False))
        return out[0], out[1]

    def kernel_cache(self, layer):
        store = self.layers[layer]
        return {"fmt": self.kernel_code, "k": store["k"], "v": store["v"], "k_tok": store["k_scale"],
                "v_tok": store["v_scale"], "round_to_int": bool(self.opts["fp8_kv_round_to_int"])}

    def bytes_per_token(self):
        c = self.cfg
        # 1 byte per element plus one float32 scale per kv head, for K and V, every layer
        return 2 * c.num_hidden_layers * c.num_key_value_heads * (c.head_dim + 4)
