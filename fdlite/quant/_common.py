"""Shared numerics of the weight methods: input checks, rounding, nibble packing, e4m3 codes, activation
quantizers. Not a method (the leading underscore keeps it out of ``quant.available()``).

Every function takes ``xp`` where it may run on the device (numpy or cupy); host-only helpers use numpy.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from ..backend import array_module
from ..errors import InputError

FP8_MAX = 448.0                      # largest finite float8_e4m3fn
# e4m3fn code -> float32 value (256 entries; 0x7f/0xff are NaN). The GPU twin reads the same bits.
FP8_TABLE = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)


def check_weight(w, what: str = "weight", on_device: bool = False):
    """(N, K) finite float -> float32 array; else InputError naming the tensor and quoting the shape.
    A device (CuPy) weight stays on the device when ``on_device`` (round-to-nearest quantizes it there); else
    it comes to the host, for the quantizers that run on NumPy only (GPTQ, nf4, the fp8 and 2-bit methods)."""
    xp = array_module(w)
    if xp is not np and not on_device:
        w, xp = w.get(), np                                 # device -> host for the NumPy-only quantizers
    w = xp.asarray(w)
    if w.ndim != 2 or 0 in w.shape:
        raise InputError(f"{what}: a linear weight must be a non-empty 2-D (N, K) array, got shape {w.shape}")
    w = w.astype(xp.float32, copy=False)
    if not bool(xp.isfinite(w).all()):                      # on the device: one sync for the verdict
        bad = ~xp.isfinite(w)
        n, k = (int(i) for i in xp.argwhere(bad)[0])
        raise InputError(f"{what}: weight of shape {w.shape} holds {int(bad.sum())} NaN/Inf values "
                         f"(first at [{n}, {k}] = {float(w[n, k])}); refusing to quantize it")
    return w


def round_half_away(x, xp=np):
    """Paddle's lroundf: halves go away from zero (np.round would round them to even)."""
    return xp.sign(x) * xp.floor(xp.abs(x) + 0.5)


def nearest_level(t, levels, xp=np):
    """Index of the level nearest each t, the first on a tie: exactly argmin(|t - levels|, -1) in float32 for sorted
    levels (|t - L[j]|, each difference rounded, falls then rises along j, so the minimum is L[c - 1] or L[c] for c =
    the first level >= t), without argmin's (..., len(levels)) temporary: two differences per value, not 16."""
    lv = xp.asarray(levels, dtype=xp.float32)
    c = xp.clip(xp.searchsorted(lv, t), 1, lv.shape[0] - 1)                 # (...): candidates c - 1 and c
    lo = c - 1
    return xp.where(xp.abs(t - lv[lo]) <= xp.abs(t - lv[c]), lo, c)


def pad_cols(w: np.ndarray, multiple: int) -> np.ndarray:
    """Zero-pad the K axis up to a multiple (partial last group/block: zeros do not move an absmax)."""
    pad = -w.shape[1] % multiple
    return w if pad == 0 else np.pad(w, ((0, 0), (0, pad)))


# ------------------------------------------------------------------------------------------ int4 nibbles

def pack_nibbles(q):
    """(N, K) ints in [-8, 15] (K even) -> (N, K/2) uint8: low nibble = even k, high nibble = odd k.
    Negative values are stored as two's-complement nibbles (FastDeploy's int4 order before its permute).
    Runs where q lives (numpy or cupy); the final cast pins uint8 whatever a backend promotes ``<< 4`` to."""
    u = (q.astype(np.int16) & 0xF).astype(np.uint8)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8, copy=False)


def unpack_nibbles(p, signed: bool, xp=np):
    """(N, K/2) uint8 -> (N, K) int8; signed: nibble >= 8 means nibble - 16."""
    lo, hi = (p & 0xF).astype(xp.int8), (p >> 4).astype(xp.int8)
    q = xp.stack([lo, hi], axis=-1).reshape(p.shape[0], -1)        # (N, K): lo, hi interleaved
    return q - (q >= 8).astype(xp.int8) * 16 if signed else q


# ----------------------------------------------------------------------------------------------- fp8 e4m3

def fp8_encode(x: np.ndarray) -> np.ndarray:
    """float32 -> e4m3fn bit patterns (uint8), round-to-nearest-even, saturating at +-448 (ml_dtypes would
    turn out-of-range values into NaN, so clip first)."""
    return np.clip(x, -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)


def fp8_decode(bits, xp=np):
    """e4m3fn bit patterns (uint8) -> float32 through the 256-entry table."""
    return xp.asarray(FP8_TABLE)[bits]


def fp8_round(x, xp=np):
    """float32 -> nearest e4m3fn value as float32 (on any xp: through the host for cupy)."""
    if xp is np:
        return np.clip(x, -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    return xp.asarray(fp8_round(x.get()))


# --------------------------------------------------------------------------------- activation quantizers
# Each returns x_hat = dequantize(quantize(x)) in float32: the reference GEMM is then x_hat @ W_hat.T, which
# equals the integer/fp8 GEMM followed by the scales (fp32 accumulation; exact up to float reassociation).

def check_static_amax(method: str, a) -> float:
    """A checkpoint's static activation abs-max (activation_scale): one finite value > 0, else CheckpointError (a
    zero scale would divide x by zero on every call)."""
    from ..errors import CheckpointError  # noqa: PLC0415

    v = np.asarray(a.get() if hasattr(a, "get") else a, np.float64).reshape(-1)
    if v.size != 1 or not np.isfinite(v[0]) or v[0] <= 0:
        raise CheckpointError(f"{method}: activation_scale holds {v.tolist()[:4]}; a static activation abs-max is one "
                              "finite value > 0")
    return float(v[0])


def act_int8_per_token(x, xp=np, static_amax: float | None = None, group: int | None = None):
    """Dynamic per token (row), or per token and K-group of ``group`` columns (last group may be partial):
    s = amax / 127, q = rint(x / s) in [-127, 127] (RNE, __float2int_rn).
    static_amax: FastDeploy's static per-tensor activation scale A (q = clip(rint(127 x / A)))."""
    x = x.astype(xp.float32, copy=False)
    if static_amax is not None:
        s = xp.float32(static_amax / 127.0)
        return xp.clip(xp.rint(x / s), -127, 127) * s
    M, K = x.shape
    g = K if group is None else group
    pad = -K % g
    xg = (xp.pad(x, ((0, 0), (0, pad))) if pad else x).reshape(M, -1, g)          # (M, K/g, g)
    s = xp.maximum(xp.abs(xg).max(axis=-1, keepdims=True), 1e-10) / 127.0         # (M, K/g, 1)
    return (xp.clip(xp.rint(xg / s), -127, 127) * s).reshape(M, -1)[:, :K]


def act_fp8(x, group: int | None, xp=np):
    """Dynamic fp8 per token (group None) or per token and K-group of ``group`` columns (the last group may be
    partial): s = max(amax, 1e-10) / 448, x_hat = e4m3(x / s) * s."""
    x = x.astype(xp.float32, copy=False)
    M, K = x.shape
    g = K if group is None else group
    pad = -K % g
    xg = (xp.pad(x, ((0, 0), (0, pad))) if pad else x).reshape(M, -1, g)          # (M, K/g, g)
    s = xp.maximum(xp.abs(xg).max(axis=-1, keepdims=True), 1e-10) / FP8_MAX       # (M, K/g, 1)
    return (fp8_round(xg / s, xp) * s).reshape(M, -1)[:, :K]
