"""Rotary position embeddings: inverse frequencies for each scaling type, and their application.

Frequencies are computed in float32 with the same formulas (and the same float32 rounding) as
transformers' ``modeling_rope_utils``, so CPU logits match its float32 forward to ~1e-6.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import ModelConfig, RopeConfig


def _default_inv_freq(base: float, dim: int) -> np.ndarray:
    exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return (1.0 / (np.float32(base) ** exponent)).astype(np.float32)          # (dim/2,)


def _llama3(inv: np.ndarray, r: RopeConfig, old_ctx: int) -> np.ndarray:
    low_wl, high_wl = old_ctx / r.low_freq_factor, old_ctx / r.high_freq_factor
    wavelen = 2 * math.pi / inv
    inv_llama = np.where(wavelen > low_wl, inv / np.float32(r.factor), inv)
    smooth = (old_ctx / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor)
    smoothed = (1 - smooth) * inv_llama / np.float32(r.factor) + smooth * inv_llama
    medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
    return np.where(medium, smoothed, inv_llama).astype(np.float32)


def _yarn(r: RopeConfig, dim: int, old_ctx: int) -> tuple[np.ndarray, float]:
    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = r.attention_factor
    if attn is None:
        attn = mscale(r.factor, r.mscale) / mscale(r.factor, r.mscale_all_dim) if (r.mscale and r.mscale_all_dim) \
            else mscale(r.factor)

    def corr_dim(rot):  # dimension whose wavelength makes `rot` turns over the original context
        return dim * math.log(old_ctx / (rot * 2 * math.pi)) / (2 * math.log(r.theta))

    low, high = corr_dim(r.beta_fast), corr_dim(r.beta_slow)
    if r.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrap = (1 - ramp).astype(np.float32)
    pos_freqs = np.float32(r.theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
    inv = (1.0 / (np.float32(r.factor) * pos_freqs)) * (1 - extrap) + (1.0 / pos_freqs) * extrap
    return inv.astype(np.float32), float(attn)


class Rope:
    """Per-model rotary table. ``cos_sin(positions, seq_lens)`` gives the rotation for each token.

    Only "dynamic" depends on the sequence length: like transformers, its base grows with
    ``max(position) + 1`` of the sequence in the current forward once that exceeds
    ``max_position_embeddings``.
    """

    def __init__(self, cfg: ModelConfig):
        r, dim = cfg.rope, cfg.head_dim
        self.cfg, self.dim, self.interleaved = cfg, dim, r.interleaved
        old_ctx = r.original_max_position_embeddings or cfg.max_position_embeddings
        self.attention_scaling = 1.0
        inv = _default_inv_freq(r.theta, dim)
        if r.type == "linear":
            inv = (inv / np.float32(r.factor)).astype(np.float32)
        elif r.type == "llama3":
            inv = _llama3(inv, r, old_ctx)
        elif r.type == "yarn":
            inv, self.attention_scaling = _yarn(r, dim, old_ctx)
        self.inv_freq = inv                                                         # (dim/2,)

    def _dynamic_inv_freq(self, seq_len: int) -> np.ndarray:
        r, max_pos, d = self.cfg.rope, self.cfg.max_position_embeddings, self.dim
        seq_len = max(seq_len, max_pos)
        base = r.theta * ((r.factor * seq_len / max_pos) - (r.factor - 1)) ** (d / (d - 2))
        return _default_inv_freq(base, d)

    def cos_sin(self, positions: np.ndarray, seq_lens: np.ndarray | None = None):
        """positions: (N,) int; seq_lens: (N,) int, max(position)+1 of each token's sequence (dynamic only).

        Returns cos, sin: (N, dim/2) float32 on the host (attention scaling folded in).
        """
        pos = positions.astype(np.float32)
        if self.cfg.rope.type == "dynamic" and seq_lens is not None \
                and int(seq_lens.max(initial=0)) > self.cfg.max_position_embeddings:
            inv = np.stack([self._dynamic_inv_freq(int(s)) for s in seq_lens])      # (N, dim/2)
            ang = pos[:, None] * inv
        else:
            ang = np.outer(pos, self.inv_freq)                                       # (N, dim/2)
        s = np.float32(self.attention_scaling)
        return (np.cos(ang) * s).astype(np.float32), (np.sin(ang) * s).astype(np.float32)

    table_len = 0      # positions the device table covers; the Model sets it to max_model_len

    def step(self, meta, xp) -> RotaryStep:
        """The RotaryStep of a forward step (meta: fdlite.kv.StepMeta)."""
        dynamic = self.cfg.rope.type == "dynamic"
        if xp is not np and not dynamic and self.table_len and int(meta.positions.max(initial=0)) < self.table_len:
            tab = self.__dict__.get("_device_table")
            if tab is None or tab[0] is not xp:
                cos, sin = self.cos_sin(np.arange(self.table_len))                   # (table_len, dim/2)
                tab = self._device_table = (xp, xp.asarray(cos), xp.asarray(sin))
            return RotaryStep(tab[1], tab[2], meta.on_device(xp)["positions"], self.interleaved)
        cos, sin = self.cos_sin(meta.positions, meta.rope_lens)                     # (N, dim/2) host float32
        return RotaryStep(xp.asarray(cos), xp.asarray(sin), None, self.interleaved)


@dataclass
class RotaryStep:
    """The rotation of one forward step: token n turns by row ``idx[n]`` of (cos, sin) (idx None: row n).

    cos, sin: (T, dim/2) float32 on the step's backend. The GPU keeps one table for every position up to the
    model's max_model_len and indexes it with the positions already on the device, so a captured CUDA graph
    needs no host work; the CPU (and dynamic scaling, whose angles depend on the sequence length) computes
    the N rows of the step directly."""

    cos: object
    sin: object
    idx: object
    interleaved: bool

    def apply(self, x, xp):
        """x: (N, heads, dim) -> rotated (reference path)."""
        c, s = (self.cos, self.sin) if self.idx is None else (self.cos[self.idx], self.sin[self.idx])
        return apply_rope(x, c, s, self.interleaved, xp)


def apply_rope(x, cos, sin, interleaved: bool, xp):
    """x: (N, heads, dim); cos/sin: (N, dim/2) -> rotated x, same shape and dtype.

    Half-split layout (HF/Llama): pairs are (i, i + dim/2). Interleaved (GPT-J/ERNIE): pairs (2i, 2i+1).
    """
    c, s = cos[:, None, :].astype(x.dtype), sin[:, None, :].astype(x.dtype)          # (N, 1, dim/2)
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = xp.empty_like(x)
        out[..., 0::2] = x1 * c - x2 * s
        out[..., 1::2] = x2 * c + x1 * s
        return out
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return xp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
