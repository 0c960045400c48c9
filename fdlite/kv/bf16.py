"""bf16 (the default): K and V stored unquantized in the compute dtype.

Layout per layer: k, v (num_blocks, kv_heads, block_size, head_dim); bf16 on the GPU, float32 on the CPU
(the CPU reference computes in float32, so nothing is rounded there).
"""
from __future__ import annotations

from .base import KVFormat


class Format(KVFormat):
    name = "bf16"
    kernel_code = 0

    def _alloc(self):
        dt = self.backend.compute_dtype
        return {"k": self.xp.zeros(self.shape, dt), "v": self.xp.zeros(self.shape, dt)}

    def write(self, layer, k, v, meta):
        blk, off = self.scatter_index(meta)
        store = self.layers[layer]
        store["k"][blk, :, off] = k          # (N, Hkv, D) into (nb, Hkv, bs, D) at [blk[i], :, off[i]]
        store["v"][blk, :, off] = v

    def read(self, layer, meta):
        store = self.layers[layer]
        return self.gather_blocks(store["k"], meta), self.gather_blocks(store["v"], meta)

    def kernel_cache(self, layer):
        store = self.layers[layer]
        return {"fmt": self.kernel_code, "k": store["k"], "v": store["v"]}

    def bytes_per_token(self):
        c = self.cfg
        return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * self.backend.compute_dtype.itemsize
