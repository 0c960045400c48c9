"""nf4: 4-bit NormalFloat weights (QLoRA's 16 levels), absmax scale per group of 64 K columns.

``activation="int8"`` quantizes activations dynamically per token to int8 (the WNF4A8 of WNF4A8C8; with an int8
KV cache that is the full scheme); the default keeps them in the compute dtype.
Packed layout: quant_weight uint8 (N, Kp/2), low nibble = even k, unsigned level index 0..15 into NF4_LEVELS;
weight_scale float32 (N, G) = absmax of the group. Math: q = argmin_i |W / absmax - NF4_LEVELS[i]|,
W_hat = NF4_LEVELS[q] * absmax. Round-trip error <= absmax * (largest gap between levels) / 2 = 0.152 absmax.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from . import _gpu
from ._common import act_int8_per_token
from ._grouped import Grouped

# Dettmers et al. 2023 (QLoRA), appendix E: quantiles of N(0, 1) normalised to [-1, 1], with an exact zero.
NF4_LEVELS = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                       0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                       0.44070982648468018, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)


class Method(Grouped):
    name = "nf4"
    qmin, qmax = 0, 1
    levels = NF4_LEVELS
    default_group = 64
    # host only: the nearest-level search no longer holds an (N, K, 16) temporary (_common.nearest_level), but its
    # CuPy run has not yet been checked against NumPy's codes on a GPU
    quantizes_on_device = False

    def __init__(self, group_size: int | None = None, activation: str = "bf16", **unknown):
        super().__init__(group_size, **unknown)
        if activation not in ("bf16", "int8"):
            raise ConfigError(f"nf4: activation={activation!r} must be 'bf16' (weight-only) or 'int8'")
        self.activation = activation

    def config(self) -> dict:
        return {**super().config(), "activation": self.activation}

    device_matmul = "matmul_nf4"       # gemv_rows (decode) / mma_nf4 (prefill) where prepare() permuted the codes

    def act(self, x, p, xp):
        return act_int8_per_token(x, xp) if self.activation == "int8" else x

    def prepare(self, p, backend):
        """On a GPU, weight-only groups of 64 with a packed K % 256 == 0: the codes permuted for gemv_rows."""
        p = super().prepare(p, backend)
        return _gpu.prepare_nf4(p) if backend.is_gpu and _gpu.nf4_rows_supported(self, p) else p

    def unpack(self, p, xp=np):
        if p.meta.get("gpu") == "rows_nf4":            # gemv_rows' order: back to the packed one first
            from fdlite_kernels.gemv_rows import nf4_deinterleave  # noqa: PLC0415

            p = type(p)(p.method, p.shape, {**p.arrays, "quant_weight": nf4_deinterleave(p.arrays["quant_weight"])},
                        p.meta)
        return super().unpack(p, xp)
