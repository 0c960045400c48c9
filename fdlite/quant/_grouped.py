"""Symmetric scalar quantization with one scale per (output row, group of K columns): the shared body of
wint8, wint4, w8a8, w4a8, w4afp8 and nf4. Each of those files sets the grid, the packing and the activations.

Packed layout (arrays, keys named as FastDeploy's checkpoint keys):
    quant_weight  bits=8: int8 (N, Kp);  bits=4: uint8 (N, Kp/2), low nibble = even k, high nibble = odd k
                  (uniform grids: two's-complement nibbles; nf4: unsigned level index 0..15)
    weight_scale  float32 (N, G), G = Kp / g; per-channel (group_size=-1) is G = 1
    Kp = G * g >= K: a partial last group is zero-padded (SmolLM2's K = 576 and 1536 are not multiples of
    128); the padding codes are 0 and never meet an activation (dequantize slices [:, :K]).
Math, per row n and group j (amax = max |w| over the group):
    s[n, j] = amax / qmax                      (amax = 0 -> s = 0, codes 0)
    q       = clip(round_half_away(w / amax * qmax), qmin, qmax)     (Paddle's W/amax*Q, lroundf)
    w_hat   = grid[q] * s      (uniform grids: grid[q] = q; nf4: grid = the 16 NF4 levels, qmax = 1)
``pack(q, s, shape)`` takes codes made elsewhere (GPTQ; GGUF Q8_0 / Q4_0 blocks, fdlite/weights/gguf.py):
dequantize reads every code the storage holds (int8 -128..127, nibbles -8..7), not only qmin..qmax.
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from ..errors import ConfigError
from ._common import check_static_amax, check_weight, nearest_level, pack_nibbles, round_half_away, unpack_nibbles
from . import _gpu
from .base import Packed, QuantMethod


SLAB = 1 << 24      # elements of float32 temporaries per quantize step (64 MiB): bounds device memory at load


class Grouped(QuantMethod):
    bits = 4                     # 4: two codes per byte; 8: one int8 per weight
    qmin, qmax = -7, 7
    levels: np.ndarray | None = None   # non-uniform grid (nf4); None = the integers qmin..qmax
    default_group = 128
    quantizes_on_device = True   # round-to-nearest on a uniform grid runs on CuPy too (nf4: host only)
    needs_calibration = True     # 4-bit: activation-aware rounding (GPTQ) helps a lot; 8-bit sets False

    def __init__(self, group_size: int | None = None, **unknown):
        if unknown:
            raise ConfigError(f"{self.name}: unknown option(s) {', '.join(map(repr, unknown))}; {self.name} takes "
                              f"group_size (-1 = per channel, or a positive multiple of 2)")
        g = self.default_group if group_size is None else group_size
        if not isinstance(g, int) or isinstance(g, bool) or not (g == -1 or (g > 0 and g % 2 == 0)):
            raise ConfigError(f"{self.name}: group_size={group_size!r} must be -1 (per channel) or a positive "
                              "even integer such as 64 or 128")
        self.group_size = g

    def config(self) -> dict:
        """The quantization_config keys that rebuild this method."""
        return {"quantization": self.name, "group_size": self.group_size}

    # --- grid ----------------------------------------------------------------------------------------
    def group_of(self, K: int) -> int:
        """Columns per scale group for a K-wide weight (per channel: all of K, rounded up to even)."""
        return K + K % 2 if self.group_size == -1 else self.group_size

    def codes(self, v, amax):
        """v: (N, ..., c) values of one or more columns of a group, amax: broadcastable -> int8 codes, on the
        array module of v. Float32 throughout, in Paddle's order (w / amax * qmax, then the rounding): each
        step is one IEEE-rounded float32 operation, so NumPy and CuPy give the same codes bit for bit."""
        xp = array_module(v)
        safe = xp.where(amax > 0, amax, xp.float32(1)).astype(xp.float32)
        t = v / safe
        t *= xp.float32(self.qmax)                        # in place: one float32 temporary, not two
        if self.levels is None:
            return xp.clip(round_half_away(t, xp), self.qmin, self.qmax).astype(xp.int8)
        return nearest_level(t, self.levels, xp).astype(xp.int8)               # argmin |t - level|, exactly

    def values(self, q, s, xp=np):
        """codes (N, ..., c) and scales broadcastable to them -> float32 values."""
        g = q.astype(xp.float32) if self.levels is None else xp.asarray(self.levels)[q]
        return g * s

    def scale_of(self, amax):
        return (amax / np.float32(self.qmax)).astype(np.float32)      # any xp: a NumPy scalar keeps float32

    # --- quantize / pack -----------------------------------------------------------------------------
    def quantize(self, w, what: str = "weight") -> Packed:
        """(N, K) float weight -> Packed, computed where w lives: a device (CuPy) weight is quantized on the
        device (Model.from_config's random weights; checkpoint weights that _linear_factory uploads first)
        with the same float32 steps as NumPy, so the result is bit-identical to the host path."""
        w = check_weight(w, what, on_device=self.quantizes_on_device)
        xp = array_module(w)
        N, K = w.shape
        g = self.group_of(K)
        G = -(-K // g)
        if G * g != K:                                     # a partial last group: zero-pad it (a copy)
            wp = xp.zeros((N, G * g), xp.float32)
            wp[:, :K] = w
            w = wp
        wg = w.reshape(N, G, g)                                                    # (N, G, g)
        amax = xp.empty((N, G, 1), np.float32)                                     # (N, G, 1)
        q = xp.empty((N, G * g), np.int8)                                          # (N, Kp)
        # Row slabs: the rounding's float32 temporaries stay at SLAB elements each instead of one (N, Kp) copy
        # apiece (the 8B gate_up is 28672 x 4096); every row is independent, so the codes do not change.
        rows = max(1, SLAB // (G * g))
        for r in range(0, N, rows):
            x = wg[r:r + rows]                                                     # (rows, G, g)
            amax[r:r + rows] = xp.abs(x).max(-1, keepdims=True)
            q[r:r + rows] = self.codes(x, amax[r:r + rows]).reshape(-1, G * g)
        del w, wg, x                                       # the float32 copy goes before packing
        return self.pack(q, self.scale_of(amax[..., 0]), (N, K))

    def pack(self, q, scale, shape) -> Packed:
        """codes (N, Kp) int + scales (N, G) float32 -> Packed, where q lives (numpy dtypes are cupy's)."""
        qw = pack_nibbles(q) if self.bits == 4 else q.astype(np.int8)
        return Packed(self.name, tuple(shape), {"quant_weight": qw, "weight_scale": scale.astype(np.float32)},
                      {"group_size": self.group_of(shape[1])})

    def unpack(self, p: Packed, xp=np):
        qw = p.arrays["quant_weight"]
        return unpack_nibbles(qw, self.levels is None, xp) if self.bits == 4 else qw      # (N, Kp)

    def dequantize(self, p: Packed, xp=np):
        N, K = p.shape
        s = p.arrays["weight_scale"]                                               # (N, G)
        q = self.unpack(p, xp).reshape(N, s.shape[1], -1)                          # (N, G, g)
        return self.values(q, s[..., None].astype(xp.float32), xp).reshape(N, -1)[:, :K]

    # --- matmul --------------------------------------------------------------------------------------
    def act(self, x, p: Packed, xp):
        """Activation quantization (x_hat in float32); weight-only methods keep x as is."""
        return x

    def prepare(self, p: Packed, backend) -> Packed:
        if backend.is_gpu and type(self).act is Grouped.act and _gpu.grouped_supported(self, p):
            return _gpu.prepare_grouped(self, p, backend)        # weight-only int8/int4: repack for the kernels
        if "activation_scale" in p.arrays:
            check_static_amax(self.name, p.arrays["activation_scale"])
        q = super().prepare(p, backend)
        if backend.is_gpu and "activation_scale" in p.arrays:    # w8a8 / w4a8 static: the kernels' float32 scale
            return _gpu.with_static_scale(q, backend)
        return q

    # an activation-quantized method's decode kernel on the GPU: the name of a fdlite.quant._gpu function
    # (x, p, xp) -> y, or None where it does not apply (then the reference formula runs on the device)
    device_matmul: str | None = None

    def matmul(self, x, p: Packed, xp):
        if p.meta.get("gpu") == "mma_wq":
            return _gpu.matmul_grouped(x, p, xp)
        if self.device_matmul is not None and xp is not np:
            y = getattr(_gpu, self.device_matmul)(x, p, xp)
            if y is not None:
                return y
        w = self.dequantize(p, xp)                                                 # (N, K) float32
        return (self.act(x, p, xp).astype(xp.float32, copy=False) @ w.T).astype(x.dtype, copy=False)

    def matmul_swiglu(self, x, p: Packed, xp):
        return _gpu.matmul_grouped_swiglu(x, p, xp) if p.meta.get("gpu") == "mma_wq" else None

    def error_bound(self, w) -> float:
        """max |w - dequantize(quantize(w))| for round-to-nearest: half a grid step times the group scale."""
        w = check_weight(w)
        N, K = w.shape
        g = self.group_of(K)
        wg = np.pad(w, ((0, 0), (0, -K % g))).reshape(N, -1, g)
        amax = float(np.abs(wg).max(-1).max())
        grid = np.arange(self.qmin, self.qmax + 1) if self.levels is None else self.levels
        half_step = float(np.diff(np.sort(grid)).max()) / 2
        return amax / self.qmax * half_step * (1 + 1e-5) + 1e-30
