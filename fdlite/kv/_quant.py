"""Helpers shared by the quantized KV formats (private: not a format, so ``kv.available()`` skips it).

- e4m3fn encode/decode on any xp: fp8 values live as ``uint8`` bit patterns (CuPy has no fp8 dtype); the
  NumPy path casts with ``ml_dtypes.float8_e4m3fn`` (round-to-nearest-even, exact incl. subnormals) after
  clipping to +-448, so the cast never meets an out-of-range value (e4m3fn has no inf: it would give NaN).
- ``StaticScales``: the base of the static formats (int8, float8_e4m3fn, int4_zp). Scales arrive as
  constructor options in FastDeploy's per-layer shapes, stacked over layers: per channel ``(layers,
  kv_heads * head_dim)``, per head ``(layers, kv_heads)``. They are checked (shape, finite, > 0) here.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from ..errors import ConfigError, InputError
from .base import KVFormat

FP8_MAX = 448.0
# bits -> float32 value of every e4m3fn pattern (0x7f / 0xff are NaN and never written).
E4M3_TABLE = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)


def e4m3_encode(x, xp, round_to_int: bool = False):
    """x: float32 already multiplied by the quant scale -> uint8 e4m3fn bits (same shape).

    round_to_int reproduces FastDeploy's QuantToC8 (``round`` to an integer before the fp8 cast), which
    throws away e4m3's fractional resolution below 8; off by default (the correct cast)."""
    if round_to_int:
        x = xp.rint(x)   # CUDA round() is half-away; rint is half-even: they differ only on exact .5 ties
    x = xp.clip(x, -FP8_MAX, FP8_MAX).astype(np.float32, copy=False)
    if xp is np:
        return x.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    host = x.get().astype(ml_dtypes.float8_e4m3fn).view(np.uint8)   # GPU: a kernel replaces this later
    return xp.asarray(host)


def e4m3_decode(bits, xp):
    """uint8 e4m3fn bits -> float32 values (a 256-entry table lookup)."""
    return xp.asarray(E4M3_TABLE)[bits]


def gather_tokens(store, meta, xp):
    """store: (num_blocks, Hkv, bs) per-token scales -> (B, max_blocks * bs, Hkv) for each block table."""
    g = store[xp.asarray(meta.block_tables)]                                     # (B, nb, Hkv, bs)
    B, nb, h, bs = g.shape
    return g.transpose(0, 1, 3, 2).reshape(B, nb * bs, h)


class StaticScales(KVFormat):
    """A format whose scales are calibrated offline. Subclasses set ``granularity`` ("channel" | "head")
    and ``scale_names`` (the option names of its scale tensors, each stacked over layers)."""

    granularity = "channel"
    scale_names = ("k_scale", "v_scale")

    @classmethod
    def scale_shapes(cls, cfg) -> dict[str, tuple[int, ...]]:
        per = cfg.num_key_value_heads * (cfg.head_dim if cls.granularity == "channel" else 1)
        return {n: (cfg.num_hidden_layers, per) for n in cls.scale_names}

    def _check_options(self, opts):
        self._dev: dict = {}   # (name, layer) -> scale row on the backend, made on first use
        given = [n for n in self.scale_names if opts.get(n) is not None]
        if given and len(given) != len(self.scale_names):
            raise InputError(f"kv_cache {self.name!r} needs all of {list(self.scale_names)}, "
                             f"got only {given}")
        shapes = self.scale_shapes(self.cfg)
        for n in given:
            a = np.asarray(opts[n], dtype=np.float32)
            if a.ndim == 1 and shapes[n][0] == 1:
                a = a[None]
            if a.shape != shapes[n]:
                raise InputError(f"kv_cache {self.name!r}: scale {n!r} has shape {list(a.shape)} but "
                                 f"this model needs {list(shapes[n])} (layers, {self._per()})")
            if not np.isfinite(a).all():
                raise InputError(f"kv_cache {self.name!r}: scale {n!r} has non-finite values")
            if "zero_point" not in n and (a <= 0).any():
                i = np.argwhere(a <= 0)[0]
                raise InputError(f"kv_cache {self.name!r}: scale {n!r} must be > 0, got "
                                 f"{float(a[tuple(i)])!r} at layer {i[0]} index {i[1]}")
            opts[n] = a
        return opts

    def _per(self) -> str:
        return "kv_heads * head_dim" if self.granularity == "channel" else "kv_heads"

    @property
    def calibrated(self) -> bool:
        return self.opts.get(self.scale_names[0]) is not None

    def layer_scale(self, name: str, layer: int):
        """The layer's row of scale ``name`` on this backend, shaped (Hkv, D) or (Hkv, 1) to broadcast."""
        if not self.calibrated:
            raise ConfigError(f"kv_cache {self.name!r} has no static scales: pass kv_scales= (a file from "
                              "`fdlite calibrate`), use a checkpoint that carries them, or let Model.load "
                              "calibrate")
        key = (name, layer)
        if key not in self._dev:
            row = self.opts[name][layer].reshape(self.cfg.num_key_value_heads, -1)   # (Hkv, D | 1)
            self._dev[key] = self.backend.asarray(row.astype(np.float32))
        return self._dev[key]
