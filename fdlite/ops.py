"""Reference math on any array module (numpy or cupy). Shapes are commented where they change."""
from __future__ import annotations

import ml_dtypes
import numpy as np

_BF16 = np.dtype(ml_dtypes.bfloat16)


def _fused(xp, *arrays):
    """fdlite_kernels.fused_ops when the arrays are bf16 on the GPU, else None (this module's math runs)."""
    if xp is np or any(a.dtype != _BF16 for a in arrays):
        return None
    from fdlite_kernels import fused_ops  # noqa: PLC0415

    return fused_ops


def rms_norm(x, weight, eps: float, xp):
    """x: (..., D); weight: (D,). Statistics in float32, as transformers' LlamaRMSNorm."""
    k = _fused(xp, x, weight)
    if k is not None:
        return k.rms_norm(xp.ascontiguousarray(x).reshape(-1, x.shape[-1]), weight, eps).reshape(x.shape)
    xf = x.astype(xp.float32, copy=False)
    var = (xf * xf).mean(axis=-1, keepdims=True)
    return ((xf / xp.sqrt(var + np.float32(eps))) * weight).astype(x.dtype, copy=False)


def add_rms_norm(x, delta, weight, eps: float, xp):
    """The residual add fused with the next norm: returns (x + delta, rms_norm(x + delta)); x, delta: (M, D).
    On the GPU x is updated in place (one kernel); callers use the returned array either way."""
    k = _fused(xp, x, delta, weight)
    if k is not None and x.flags.c_contiguous:
        return x, k.add_rms_norm(x, xp.ascontiguousarray(delta), weight, eps)
    x = x + delta
    return x, rms_norm(x, weight, eps, xp)


def swiglu(gu, xp):
    """gu: (M, 2I) gate and up halves side by side (the fused gate_up projection) -> (M, I) silu(gate) * up."""
    k = _fused(xp, gu)
    if k is not None:
        return k.silu_mul(xp.ascontiguousarray(gu))
    inter = gu.shape[1] // 2
    return silu_mul(gu[:, :inter], gu[:, inter:], xp)


def linear_swiglu(gate_up, x, xp):
    """x: (M, K) -> (M, I) silu(gate) * up through a fused gate_up Linear (rows [gate; up], 2I): one kernel where
    its method puts the SwiGLU in the GEMV's epilogue (the decode GEMVs of wint8 / wint4 on the GPU), else the
    projection and then ``swiglu``. Both give the same bits."""
    y = gate_up.swiglu(x)
    return swiglu(gate_up(x), xp) if y is None else y


def silu_mul(gate, up, xp):
    """SwiGLU: silu(gate) * up, elementwise; (M, I) each."""
    g = gate.astype(xp.float32, copy=False)
    return (g / (1 + xp.exp(-g)) * up).astype(gate.dtype, copy=False)


def log_softmax(x, xp, axis=-1):
    x = x.astype(xp.float32, copy=False)
    m = x.max(axis=axis, keepdims=True)
    z = x - m
    return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))


_ATTN_CHUNK_ELEMS = 1 << 26  # bound the (B, H, Tq, L) score tensor at 256 MB of float32


def attention(q, k, v, q_pos, kv_len, window, scale: float, xp):
    """Causal multi-head attention with grouped KV heads over padded, batched sequences.

    q: (B, Tq, H, D) new queries; k, v: (B, L, Hkv, D) keys/values of positions 0..L-1 (already rotated);
    q_pos: (B, Tq) int absolute position of each query; kv_len: (B,) int valid keys per row;
    window: None or int (key j is visible from position p iff p - window < j <= p).
    Returns (B, Tq, H, D) in q's dtype; softmax in float32.
    """
    B, Tq, H, D = q.shape
    L, Hkv = k.shape[1], k.shape[2]
    g = H // Hkv
    if B * H * Tq * L > _ATTN_CHUNK_ELEMS and Tq > 1:  # split queries to bound memory
        step = max(1, _ATTN_CHUNK_ELEMS // (B * H * L))
        parts = [attention(q[:, s:s + step], k, v, q_pos[:, s:s + step], kv_len, window, scale, xp)
                 for s in range(0, Tq, step)]
        return xp.concatenate(parts, axis=1)
    qh = q.reshape(B, Tq, Hkv, g, D).transpose(0, 2, 3, 1, 4).reshape(B, Hkv, g * Tq, D)   # (B, Hkv, g*Tq, D)
    kh = k.transpose(0, 2, 3, 1)                                                           # (B, Hkv, D, L)
    vh = v.transpose(0, 2, 1, 3)                                                           # (B, Hkv, L, D)
    s = (qh.astype(xp.float32) @ kh.astype(xp.float32)) * np.float32(scale)                # (B, Hkv, g*Tq, L)
    j = xp.arange(L)[None, None, :]                                                        # (1, 1, L)
    p = xp.asarray(q_pos)[:, :, None]                                                      # (B, Tq, 1)
    ok = (j <= p) & (j < xp.asarray(kv_len)[:, None, None])
    if window:
        ok &= j > p - window
    ok = xp.broadcast_to(ok[:, None, None], (B, 1, g, Tq, L)).reshape(B, 1, g * Tq, L)
    s = xp.where(ok, s, np.float32(-np.inf))
    m = s.max(axis=-1, keepdims=True)
    m = xp.where(xp.isfinite(m), m, np.float32(0))      # rows with no visible key (padding) stay finite
    e = xp.exp(s - m)
    denom = e.sum(axis=-1, keepdims=True)
    pr = e / xp.where(denom > 0, denom, np.float32(1))
    o = pr @ vh.astype(xp.float32)                                                          # (B, Hkv, g*Tq, D)
    o = o.reshape(B, Hkv, g, Tq, D).transpose(0, 3, 1, 2, 4).reshape(B, Tq, H, D)          # (B, Tq, H, D)
    return o.astype(q.dtype, copy=False)
