"""wint2: FastDeploy's CCQ 2-bit format (spec §4.7), decoded exactly, plus an fdlite encoder, on any linear.

Packed layout (FastDeploy's checkpoint tensors, Paddle [K, N] orientation; K zero-padded to Kp, a multiple of 128):
    quant_weight   uint8 [Kp/4, N]   byte r of column n encodes rows 4r..4r+3 (one codeword index b)
    weight_scale   uint8 [Kp/128, N] two 4-bit local scales per byte: high nibble = even 64-row group
    super_scales   bf16  [N]         per-column second-level scale
    code_scale     fp32  [N]         slope of b -> codeword
    code_zp        fp32  [N]         offset of b -> codeword
Decode (exact): v = floor(b * code_scale + code_zp + 0.5) (a 15-bit codeword); for j = 0..3 the 6-bit window
code_j = (v >> (9 - 3j)) & 63 (windows overlap by 3 bits: the "convolutional code"); g = (4r) // 64;
ls = high nibble of weight_scale[g // 2] if g even else low nibble; W[4r + j, n] = bf16((code_j - 32) * ls * ss)
with ls * ss formed in fp32 (the CUDA path). A local scale of 0 zeroes its group.
Encoder (FastDeploy's is not public; CCQ paper arXiv:2507.07145): every column uses code_scale = 120,
code_zp = 1084, the pair that minimised the 4-D quantization error of Gaussian weights in a search over the
format's own codes (0.106 x variance at 16 code units per standard deviation). Scales are searched, not set:
each 64-row group tries scales f * rms / 16 (f on a geometric grid of 7 from 0.5 to 4) and keeps the one whose
nearest-codeword error, weighted by the input energy H_kk when calibrated, is smallest (so a group holding an
outlier can widen its scale instead of clipping it: rms / 16 alone clips at 2 rms, which collapsed SmolLM2);
super scale = max group scale / 15 (bf16); each local scale then tries round(scale / ss) + {-1, 0, 1} in 1..15
against the same error. Each 4-row chunk takes the nearest of the 256 codewords; with a Hessian (calibration)
the chunks are chosen in GPTQ order with the error fed back (fdlite/gptq.py). There is no tight max-error bound
(outliers beyond the codebook's reach are clipped); error_bound is the loose 3.02 * amax x 4 (the widest searched
scale), and the tests check the mean error instead.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from ..backend import array_module
from ..errors import ConfigError
from ._common import check_weight
from . import _gpu
from .base import Packed, QuantMethod

CODE_SCALE, CODE_ZP, UNITS_PER_STD = 120.0, 1084.0, 16.0


def codebook(cs: float = CODE_SCALE, cz: float = CODE_ZP) -> np.ndarray:
    """(256, 4) float32: the centred 6-bit windows (code_j - 32) of every byte b."""
    v = np.floor(np.arange(256) * np.float32(cs) + np.float32(cz) + np.float32(0.5)).astype(np.int64)
    return np.stack([((v >> (9 - 3 * j)) & 63) - 32 for j in range(4)], 1).astype(np.float32)


def bf16_round(x, xp=np):
    """float32 -> nearest bf16 value (RNE) as float32, with integer ops so it runs on any xp."""
    u = x.astype(xp.float32).view(xp.uint32)
    u = (u + xp.uint32(0x7FFF) + ((u >> 16) & xp.uint32(1))) & xp.uint32(0xFFFF0000)
    return u.view(xp.float32)


class Method(QuantMethod):
    name = "wint2"
    needs_calibration = True
    # The uncalibrated encoder (scale search + nearest codeword) is written for any array module: on the host an
    # 8B layer's 256-codeword searches take ~5 s per 4M weights, so a device array is encoded where it lives. On
    # the H100 (2026-11-24) its codes matched the host's on > 99% of weights with the same reconstruction error
    # (near-ties resolve by cuBLAS's summation order). With a Hessian (GPTQ order) it always runs on the host.
    quantizes_on_device = True

    def __init__(self, group_size: int = 64, **unknown):
        if unknown or group_size != 64:
            raise ConfigError(f"wint2: the CCQ format has 64-row local scales (group_size=64); got "
                              f"group_size={group_size!r}{', unknown ' + ', '.join(map(repr, unknown)) if unknown else ''}")

    def config(self) -> dict:
        return {"quantization": self.name, "group_size": 64}

    def quantize(self, w, what: str = "weight", hessian=None) -> Packed:
        w = check_weight(w, what, on_device=self.quantizes_on_device and hessian is None)
        xp = array_module(w)
        N, K = w.shape
        Kp = K + (-K % 128)
        W = xp.zeros((N, Kp), xp.float32)
        W[:, :K] = w                                                              # (N, Kp)
        d = xp.ones(Kp, xp.float32)                                               # (Kp,) input energy
        if hessian is not None:
            d[:K] = np.maximum(np.diag(hessian), 0)
            d[:K] += 1e-3 * float(d[:K].mean()) + 1e-30   # a dead input still counts a little
        book = xp.asarray(codebook())
        ls, ss = _search_scales(W, d, book)
        scale = ls.astype(xp.float32) * ss[:, None]                                # (N, G) as decoded
        scale = xp.where(scale > 0, scale, xp.float32(1))     # a zero group: any code decodes to 0 (ls = 0)
        if hessian is None:
            codes = _nearest(W.reshape(N, Kp // 4, 4) / xp.repeat(scale, 16, 1)[..., None], book)
        else:
            from ..gptq import gptq_vector  # noqa: PLC0415

            codes = gptq_vector(W, np.pad(hessian, ((0, Kp - K), (0, Kp - K))), np.repeat(scale, 64, 1), book)
        lsb = (ls[:, 0::2] << 4) | ls[:, 1::2]                                     # (N, Kp/128)
        # ss holds bf16 values (bf16_round): its upper 16 bits are the bf16 pattern, exactly
        ss16 = (ss.view(xp.uint32) >> 16).astype(xp.uint16).view(ml_dtypes.bfloat16)
        arrays = {"quant_weight": xp.ascontiguousarray(codes.T.astype(xp.uint8)),          # [Kp/4, N]
                  "weight_scale": xp.ascontiguousarray(lsb.T), "super_scales": ss16,
                  "code_scale": xp.full(N, CODE_SCALE, xp.float32), "code_zp": xp.full(N, CODE_ZP, xp.float32)}
        return Packed(self.name, (N, K), arrays, {"group_size": 64})

    def dequantize(self, p: Packed, xp=np):
        N, K = p.shape
        a = p.arrays
        b = a["quant_weight"].astype(xp.float32)                                   # [Kp/4, N]
        v = xp.floor(b * a["code_scale"] + a["code_zp"] + xp.float32(0.5)).astype(xp.int32)
        lsb = a["weight_scale"]                                                    # [Kp/128, N]
        ls = xp.stack([lsb >> 4, lsb & 0xF], 1).reshape(-1, N).astype(xp.float32)  # [Kp/64, N], even group first
        scale = ls * xp.asarray(a["super_scales"]).astype(xp.float32)             # fp32 product, as CUDA
        rows = xp.repeat(scale, 16, axis=0)                                        # [Kp/4, N]: scale per byte row
        win = xp.stack([((v >> (9 - 3 * j)) & 63) - 32 for j in range(4)], 1)     # [Kp/4, 4, N]
        Wt = bf16_round(win.astype(xp.float32) * rows[:, None, :], xp)             # [Kp/4, 4, N]
        return Wt.reshape(-1, N).T[:, :K]                                          # (N, K)

    def prepare(self, p: Packed, backend) -> Packed:
        """Arrays onto the backend as stored, and whether every column's codewords b * code_scale + code_zp + 0.5
        (b = 0..255, float32 as decoded) lie in [0, 2^23): the tensor-core GEMV floors them with an exponent trick
        valid there (any checkpoint whose windows fit 15 bits does). Checked once here, not per call."""
        q = super().prepare(p, backend)
        xp = array_module(q.arrays["code_scale"])
        cs, cz = q.arrays["code_scale"].astype(xp.float32), q.arrays["code_zp"].astype(xp.float32)
        ends = [b * cs + cz + xp.float32(0.5) for b in (xp.float32(0), xp.float32(255))]
        q.meta["codewords_in_range"] = bool(((ends[0] >= 0) & (ends[1] >= 0) & (ends[0] < 2.0 ** 23)
                                             & (ends[1] < 2.0 ** 23)).all())
        return q

    def matmul(self, x, p: Packed, xp):
        if xp is not np and (x.shape[0] <= _gpu.WINT2_GEMV_MAX_M or xp.cuda.get_current_stream().is_capturing()):
            return _gpu.matmul_wint2(x, p, xp)                     # GPU decode: fdlite_kernels/gemv_wint2.cu
        return (x.astype(xp.float32, copy=False) @ self.dequantize(p, xp).T).astype(x.dtype, copy=False)

    def error_bound(self, w) -> float:
        # |w_hat| <= 32 * 15 * ss, ss <= (1 + 2^-8) 4 max_group_rms / (16 * 15) <= 4 amax / 240
        return 4 * 3.02 * float(np.abs(check_weight(w)).max())    # scales up to 4x the rms-based one


def _nearest(x, book, chunk: int = 1 << 15):
    """x (..., 4) in code units -> (...) index of the nearest codeword (squared distance via one matmul), on x's
    array module (book on the same one)."""
    xp = array_module(x)
    flat = x.reshape(-1, 4)
    out = xp.empty(len(flat), xp.uint8)
    bb = (book ** 2).sum(1)
    chunk = chunk if xp is np else chunk * 4             # (chunk, 256) float32 distances: 128 MB on the device
    for i in range(0, len(flat), chunk):
        out[i:i + chunk] = (bb - 2 * flat[i:i + chunk] @ book.T).argmin(1)
    return out.reshape(x.shape[:-1])


def _group_error(W, scale, book, d):
    """Nearest-codeword error per (row, 64-row group) at group scales ``scale`` (N, G), weighted by d (Kp,)."""
    N, Kp = W.shape
    s = array_module(W).repeat(scale, 16, 1)[..., None]                            # (N, Kp/4, 1)
    x = W.reshape(N, Kp // 4, 4)
    e = (x - book[_nearest(x / s, book)] * s).reshape(N, Kp) ** 2 * d             # (N, Kp)
    return e.reshape(N, -1, 64).sum(-1)                                            # (N, G)


def _search_scales(W, d, book, grid=np.geomspace(0.5, 4, 7)):
    """W (N, Kp), d (Kp,) -> local scales uint8 (N, G) in 0..15 and super scales float32 (N,) (bf16 values):
    first the best continuous scale per group over f * rms / 16, then the best local scale near it."""
    xp = array_module(W)
    N, Kp = W.shape
    rms = xp.sqrt((W.reshape(N, -1, 64) ** 2).mean(-1)) / xp.float32(UNITS_PER_STD)   # (N, G)
    live = rms > 0
    base = xp.where(live, rms, xp.float32(1)).astype(xp.float32)
    best, err = base.copy(), xp.full(base.shape, np.inf, xp.float32)
    for f in grid:
        e = _group_error(W, base * np.float32(f), book, d)
        better = e < err
        best[better], err[better] = (base * np.float32(f))[better], e[better]
    ss = bf16_round(xp.maximum(xp.where(live, best, xp.float32(0)).max(1), xp.float32(1e-30)) / xp.float32(15), xp)
    ls0 = xp.clip(xp.rint(best / ss[:, None]), 1, 15)                              # (N,) super scale (bf16) ^
    ls, err = ls0.copy(), xp.full(base.shape, np.inf, xp.float32)
    for off in (-1, 0, 1):
        cand = xp.clip(ls0 + off, 1, 15)
        e = _group_error(W, (cand * ss[:, None]).astype(xp.float32), book, d)
        better = e < err
        ls[better], err[better] = cand[better], e[better]
    return xp.where(live, ls, xp.float32(0)).astype(xp.uint8), ss.astype(xp.float32)
