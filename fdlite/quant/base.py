"""The contract every weight method implements, and the Linear that calls it.

A method turns a float weight ``w: (N, K)`` (out_features, in_features; y = x @ w.T) into a
:class:`Packed`, and computes ``matmul(x, packed)`` from it. The forward pass only ever calls a Linear,
so it never names a format.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Packed:
    """A quantized (or dense) weight: logical shape (N, K) plus the method's arrays and settings."""

    method: str
    shape: tuple[int, int]
    arrays: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))


class QuantMethod:
    """Base class. Subclasses set ``name`` and implement quantize / dequantize / matmul."""

    name = ""

    # Roles the architectures give their linears; a method may quantize each role differently (mix_quant).
    ROLES = ("attn_qkv", "attn_o", "mlp_gate_up", "mlp_down", "moe_gate_up", "moe_down", "lm_head")

    # Set per instance by Model.load(quantize_lm_head=True); FastDeploy keeps the lm_head in bf16.
    quantize_lm_head = False
    # True when activation-aware rounding (calibration="self" | path) changes what quantize produces.
    needs_calibration = False
    # True when quantize(w) of a device (CuPy) weight runs on the device; Model.load then uploads host
    # checkpoint weights before quantizing them (fdlite/model.py _linear_factory). False: w comes to the host.
    quantizes_on_device = False

    def for_layer(self, role: str, name: str) -> "QuantMethod | None":
        """The method that quantizes linear ``name`` of ``role``; None keeps it dense. Default: every role
        but the lm_head (FastDeploy keeps the lm_head in bf16) unless quantize_lm_head is set."""
        return None if role == "lm_head" and not self.quantize_lm_head else self

    def accepts(self, shape: tuple[int, int]) -> bool:
        return True

    def quantize(self, w: np.ndarray) -> Packed:
        raise NotImplementedError

    def dequantize(self, p: Packed, xp=np):
        """(N, K) float32: what the packed weight means. The reference every kernel is checked against."""
        raise NotImplementedError

    def prepare(self, p: Packed, backend) -> Packed:
        """Move (and, for kernels, repack) the arrays onto ``backend``. Default: copy as they are."""
        return Packed(p.method, p.shape, {k: backend.asarray(a) for k, a in p.arrays.items()}, dict(p.meta))

    def matmul(self, x, p: Packed, xp):
        """x: (M, K) -> (M, N). Reference: x @ dequantize(p).T in float32."""
        w = self.dequantize(p, xp)
        return (x.astype(xp.float32, copy=False) @ w.T).astype(x.dtype, copy=False)

    def matmul_swiglu(self, x, p: Packed, xp):
        """x: (M, K), p a fused gate_up weight (rows [gate; up], N = 2I) -> (M, I) silu(gate) * up in one kernel,
        or None where this method has none for these shapes (the caller then runs ``matmul`` and the SwiGLU)."""
        return None


def iter_linears(tree):
    """Every Linear in a params tree of dicts and lists (the families' layout), depth first."""
    if isinstance(tree, Linear):
        yield tree
    elif isinstance(tree, (dict, list, tuple)):
        for v in (tree.values() if isinstance(tree, dict) else tree):
            yield from iter_linears(v)


class Linear:
    """y = x @ W.T (+ b) through a quantization method. x: (M, K) -> (M, N)."""

    __slots__ = ("method", "packed", "bias", "xp")

    def __init__(self, method: QuantMethod, packed: Packed, bias, xp):
        self.method, self.packed, self.bias, self.xp = method, packed, bias, xp

    @property
    def shape(self) -> tuple[int, int]:
        return self.packed.shape

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + (0 if self.bias is None else int(self.bias.nbytes))

    def __call__(self, x):
        y = self.method.matmul(x, self.packed, self.xp)
        return y if self.bias is None else y + self.bias

    def swiglu(self, x):
        """This gate_up projection (rows [gate; up]) followed by SwiGLU -> (M, N / 2), in one kernel where the
        method fuses it; None otherwise (with a bias too): fdlite.ops.linear_swiglu then runs the two steps."""
        return None if self.bias is not None else self.method.matmul_swiglu(x, self.packed, self.xp)
