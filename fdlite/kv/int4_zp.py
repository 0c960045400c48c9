"""int4_zp: static per-channel int4 with a zero point (FastDeploy ``cache_int4_zp``; spec §5.1-5.4, §8).

Layout per layer: k, v uint8 (num_blocks, kv_heads, block_size, head_dim // 2), two values per byte packed
along head_dim: element d = 2j in the low nibble of byte j, d = 2j + 1 in the high nibble. A nibble holds
q + 8 with q in [-7, 7] (so 1..15; 0 only in never-written slots). Scales: options ``k_scale`` / ``v_scale``
float32 (layers, kv_heads * head_dim): the dequant step ``s`` per channel c = kv_head * head_dim + d, and
``k_zero_point`` / ``v_zero_point`` float32, same shape: FastDeploy's ``cachek_matmul.activation_scale`` and
``cachek_matmul.activation_zero_point``.

Math (K after RoPE):  q = clip(round_half_even(x / s + zp), -7, 7);  x^ = (q - zp) * s.
Representable range per channel: [(-7 - zp) s, (7 - zp) s]; values outside saturate at its ends.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ._quant import StaticScales

QMAX = 7.0


def pack(q, xp):
    """q: int (..., D) in [-7, 7], D even -> uint8 (..., D // 2) nibbles (q + 8), even d low."""
    n = (q + 8).astype(np.uint8)
    return (n[..., 0::2] | (n[..., 1::2] << 4)).astype(np.uint8)


def unpack(b, xp):
    """uint8 (..., D // 2) -> int8 (..., D) q in [-7, 7] (q = nibble - 8)."""
    lo = (b & 0x0F).astype(np.int8) - 8
    hi = (b >> 4).astype(np.int8) - 8
    return xp.stack([lo, hi], axis=-1).reshape(b.shape[:-1] + (2 * b.shape[-1],))


class Format(StaticScales):
    name = "int4_zp"
    kernel_code = 4
    granularity = "channel"
    scale_names = ("k_scale", "v_scale", "k_zero_point", "v_zero_point")
    options = {n: None for n in scale_names}

    def _check_options(self, opts):
        if self.cfg.head_dim % 2:
            raise ConfigError(f"kv_cache 'int4_zp' packs two values per byte along head_dim; head_dim="
                              f"{self.cfg.head_dim} is odd")
        return super()._check_options(opts)

    def _alloc(self):
        shape = self.shape[:3] + (self.shape[3] // 2,)
        return {"k": self.xp.zeros(shape, np.uint8), "v": self.xp.zeros(shape, np.uint8)}

    def _quantize(self, x, s, zp):
        """x: (N, Hkv, D); s, zp: (Hkv, D) -> packed uint8 (N, Hkv, D // 2)."""
        xp = self.xp
        q = xp.clip(xp.rint(x.astype(np.float32, copy=False) / s + zp), -QMAX, QMAX)
        return pack(q.astype(np.int8), xp)

    def write(self, layer, k, v, meta):
        blk, off = self.scatter_index(meta)
        store = self.layers[layer]
        for name, x in (("k", k), ("v", v)):
            s, zp = self.layer_scale(name + "_scale", layer), self.layer_scale(name + "_zero_point", layer)
            store[name][blk, :, off] = self._quantize(x, s, zp)

    def read(self, layer, meta):
        store, dt = self.layers[layer], self.backend.compute_dtype
        out = []
        for name in ("k", "v"):
            s, zp = self.layer_scale(name + "_scale", layer), self.layer_scale(name + "_zero_point", layer)
            q = unpack(self.gather_blocks(store[name], meta), self.xp)                      # (B, L, Hkv, D)
            out.append(((q.astype(np.float32) - zp) * s).astype(dt, copy=False))
        return out[0], out[1]

    def kernel_cache(self, layer):
        """Steps s and zero points zp per channel (the kernel divides by s on write, as _quantize)."""
        store, out = self.layers[layer], {"fmt": self.kernel_code}
        for name in ("k", "v"):
            s = self.layer_scale(name + "_scale", layer).reshape(-1)
            zp = self.layer_scale(name + "_zero_point", layer).reshape(-1)
            out.update({name: store[name], name + "_w": s, name + "_r": s, name + "_z": zp})
        return out

    def bytes_per_token(self):
        c = self.cfg
        return c.num_hidden_layers * c.num_key_value_heads * c.head_dim   # K and V at half a byte each
