"""int8: static per-channel symmetric int8 (FastDeploy ``cache_int8``; spec §5.1-5.3, §8).

Layout per layer: k, v int8 (num_blocks, kv_heads, block_size, head_dim) (FastDeploy offsets to uint8 q + 128
for its magic-number conversion; plain int8 here, same values). Scales: options ``k_scale`` / ``v_scale``
float32 (layers, kv_heads * head_dim), the calibrated abs-max ``A`` per channel c = kv_head * head_dim + d,
exactly what FastDeploy checkpoints store as ``cachek_matmul.activation_scale`` / ``cachev_...``.

Math (K after RoPE):  q = clip(round_half_even(x * 127 / A_c), -127, 127);  x^ = q * A_c / 127.
A value beyond the calibrated range saturates at +-A_c.
"""
from __future__ import annotations

import numpy as np

from ._quant import StaticScales

QMAX = 127.0


class Format(StaticScales):
    name = "int8"
    kernel_code = 1
    granularity = "channel"
    options = {"k_scale": None, "v_scale": None}

    def _alloc(self):
        return {"k": self.xp.zeros(self.shape, np.int8), "v": self.xp.zeros(self.shape, np.int8)}

    def _quantize(self, x, amax):
        """x: (N, Hkv, D), amax: (Hkv, D) -> int8 (N, Hkv, D)."""
        xp = self.xp
        q = xp.rint(x.astype(np.float32, copy=False) * (np.float32(QMAX) / amax))
        return xp.clip(q, -QMAX, QMAX).astype(np.int8)

    def write(self, layer, k, v, meta):
        blk, off = self.scatter_index(meta)
        store = self.layers[layer]
        store["k"][blk, :, off] = self._quantize(k, self.layer_scale("k_scale", layer))
        store["v"][blk, :, off] = self._quantize(v, self.layer_scale("v_scale", layer))

    def read(self, layer, meta):
        store, dt = self.layers[layer], self.backend.compute_dtype
        out = []
        for name in ("k", "v"):
            step = self.layer_scale(name + "_scale", layer) / np.float32(QMAX)              # (Hkv, D)
            q = self.gather_blocks(store[name], meta)                                       # (B, L, Hkv, D)
            out.append((q.astype(np.float32) * step).astype(dt, copy=False))
        return out[0], out[1]

    def kernel_cache(self, layer):
        """Write scales 127 / A and read steps A / 127 per channel, in float32 as _quantize / read compute them."""
        store, out = self.layers[layer], {"fmt": self.kernel_code}
        for name in ("k", "v"):
            amax = self.layer_scale(name + "_scale", layer).reshape(-1)
            out.update({name: store[name], name + "_w": np.float32(QMAX) / amax, name + "_r": amax / np.float32(QMAX)})
        return out

    def bytes_per_token(self):
        c = self.cfg
        return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim   # 1 byte each; scales per model
