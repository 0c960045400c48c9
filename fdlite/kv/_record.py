"""A bf16 cache that also records what is written: calibration's window on K (after RoPE) and V.

Private (underscore: not listed by ``kv.available()``). ``write`` stores as bf16 does, then keeps a host
float32 copy of each layer's k, v (N, kv_heads, head_dim) and the tokens' positions, so static scales can
be fitted without touching the forward pass.
"""
from __future__ import annotations

import numpy as np

from .bf16 import Format as BF16


class Format(BF16):
    name = "_record"
    kernel_code = None      # the reference write path, which this format records

    def _check_options(self, opts):
        self.seen: list[dict[str, list[np.ndarray]]] = [{"k": [], "v": [], "pos": []}
                                                         for _ in range(self.cfg.num_hidden_layers)]
        return opts

    def write(self, layer, k, v, meta):
        super().write(layer, k, v, meta)
        rec, host = self.seen[layer], self.backend.to_host
        rec["k"].append(host(k).astype(np.float32))
        rec["v"].append(host(v).astype(np.float32))
        rec["pos"].append(np.asarray(meta.positions))

    def values(self, layer: int, name: str) -> np.ndarray:
        """-> (T, kv_heads, head_dim) float32: every token written to ``layer`` so far (name "k" | "v")."""
        return np.concatenate(self.seen[layer][name])

    def positions(self, layer: int) -> np.ndarray:
        return np.concatenate(self.seen[layer]["pos"])
