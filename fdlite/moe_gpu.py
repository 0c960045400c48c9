"""MoE layers on the GPU through fdlite_kernels/moe.cu, and the NumPy twins of those kernels.

At load (``prepare``), each projection of the routed experts is stacked into one array per tensor (an
``ExpertStack``) and every expert's Linear is pointed at its slice of the stack (views: no second copy). The
forward (``routed``) is then seven launches whose shapes depend only on the token count, with no host sync, so
the CUDA-graph runner can capture MoE decode steps:

    route (router GEMV + softmax + top-k) -> align (rows sorted by expert, on the device) -> gate_up GEMM
    -> SwiGLU (fused_ops.silu_mul) -> down GEMM -> combine (fp32 weighted sum over slots, bf16 out)

Which path ``fdlite.moe.moe_forward`` takes:

| condition | routed experts run |
|---|---|
| GPU, bf16 activations, ``prepare`` succeeded, N <= MAX_TOKENS or a graph capture | these kernels |
| otherwise (the CPU; prefill of more than MAX_TOKENS tokens; unsupported expert kinds) | the grouped reference: host counts, one matmul pair per expert |

Supported expert kinds (each projection one kind, identical across its experts): the mma_wq packed layout
(wint8 per channel, wint4 with groups % 16 == 0: what fdlite/quant/_gpu.py prepare_grouped makes) and dense bf16.
The GEMMs are GEMVs over each expert's rows (weights read once per 8 rows of an expert), the decode regime;
longer prefills go to the per-expert tensor-core path.
"""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from . import ops

BF16 = np.dtype(ml_dtypes.bfloat16)
MAX_TOKENS = 256     # = the largest CUDA-graph bucket; the crossover with the grouped tensor-core path is unmeasured


@dataclass
class GpuExperts:
    """The routed experts stacked for moe.cu: gate_up W_e (2I, H) and down W_e (H, I) (fdlite_kernels.moe)."""

    gate_up: object     # ExpertStack
    down: object        # ExpertStack


def _kind(lin) -> tuple | None:
    """A Linear's stackable signature (kind, N, K, bits, group, array shapes), or None."""
    p = lin.packed
    if lin.bias is not None:
        return None
    # the group must divide the padded K (prepare_grouped makes it so; a guard for hand-built Packed)
    if p.meta.get("gpu") == "mma_wq" and p.meta["K_pad"] % p.meta["group"] == 0:
        return ("packed", p.shape[0], p.meta["K_pad"], p.meta["bits"], p.meta["group"],
                tuple(p.arrays["qp"].shape), tuple(p.arrays["scale"].shape))
    w = p.arrays.get("w")
    if lin.method.name == "dense" and w is not None and w.dtype == BF16 and w.ndim == 2:
        return ("bf16", p.shape[0], p.shape[1], 16, 0, tuple(w.shape))
    return None


def _stack(linears, sig, xp):
    from fdlite_kernels.moe import ExpertStack  # noqa: PLC0415

    kind, N, K, bits, group = sig[:5]
    names = ("qp", "scale") if kind == "packed" else ("w",)
    arrays = {n: xp.stack([lin.packed.arrays[n] for lin in linears]) for n in names}   # (E, ...)
    for e, lin in enumerate(linears):          # each expert's Linear now reads its slice: one copy in memory
        lin.packed.arrays.update({n: a[e] for n, a in arrays.items()})
    return ExpertStack(kind, N, K, arrays, bits, group)


def prepare(m, xp) -> GpuExperts | None:
    """Stack MoE block m's routed experts for the kernels (once, at load); None when they cannot run there."""
    from fdlite_kernels.moe import MAX_E  # noqa: PLC0415

    E, (_, H) = len(m.experts), m.router_w.shape
    f32 = np.dtype(np.float32)
    if not 1 <= E <= MAX_E or H % 8 or m.router_w.dtype != f32 or \
            (m.correction_bias is not None and m.correction_bias.dtype != f32):
        return None
    sigs = [[_kind(lin) for lin in lins] for lins in (m.experts.gate_up, m.experts.down)]
    if any(s[0] is None or s.count(s[0]) != E for s in sigs):
        return None
    gu, dn = sigs[0][0], sigs[1][0]
    inter = m.experts.down[0].shape[1]                                     # I: down's logical K
    if gu[1] != 2 * inter or m.experts.gate_up[0].shape[1] != H or dn[1] != H:
        return None
    if inter % 2 or (dn[0] == "bf16" and inter % 8):                     # x loads: 4-byte / 16-byte aligned rows
        return None
    return GpuExperts(_stack(m.experts.gate_up, gu, xp), _stack(m.experts.down, dn, xp))


def use_kernels(m, x, xp) -> bool:
    return (m.gpu is not None and xp is not np and x.dtype == BF16 and x.ndim == 2
            and (x.shape[0] <= MAX_TOKENS or xp.cuda.get_current_stream().is_capturing()))


def routed(m, x, xp):
    """x: (N, H) bf16 on the GPU -> (N, H) bf16, the routed experts combined (shared experts: the caller)."""
    from fdlite_kernels.fused_ops import silu_mul  # noqa: PLC0415
    from fdlite_kernels.moe import moe_align, moe_combine, moe_gemm, moe_route  # noqa: PLC0415

    g, k = m.gpu, m.top_k
    x = xp.ascontiguousarray(x)
    w, ids = moe_route(x, m.router_w, m.correction_bias, k, m.norm_min)           # (N, k) f32, (N, k) int32
    plan = moe_align(ids, g.gate_up.num_experts)
    gu = moe_gemm(x, g.gate_up, plan, k)                                          # (N k, 2 I)
    # SwiGLU once per row: fused into the down GEMM it was recomputed in every 16-column block (on ERNIE-21B at
    # 32 tokens that down projection took 1445 us a layer against gate_up's 721 us for twice the bytes; H100)
    y = moe_gemm(silu_mul(gu), g.down, plan, 1)                                   # (N k, H)
    return moe_combine(y, w)                                                      # (N, H)


# --- NumPy twins (what each kernel computes) ------------------------------------------------------------------
def align(ids, num_experts: int):
    """Twin of moe_align. ids: (N, k) in [0, E) -> (sorted (R,), experts (S,), offsets (S + 1,)) int32."""
    flat = np.asarray(ids).reshape(-1)                                         # (R,)
    R, S = flat.size, min(num_experts, flat.size)
    counts = np.bincount(flat, minlength=num_experts)
    used = np.flatnonzero(counts)
    experts, offsets = np.zeros(S, np.int32), np.full(S + 1, R, np.int32)
    experts[:used.size] = used
    offsets[:used.size] = (np.cumsum(counts) - counts)[used]
    return np.argsort(flat, kind="stable").astype(np.int32), experts, offsets


def unpack_codes(qp_e, N: int, K: int, bits: int) -> np.ndarray:
    """One expert's mma_wq fragment-ordered bytes -> int codes (Np, K): the inverse of fdlite_kernels.mma_wq.repack
    (the layout moe_gemm_packed reads)."""
    from fdlite_kernels.mma_wq import KT  # noqa: PLC0415

    kt, Np = KT[bits], -(-N // 16) * 16
    b = np.asarray(qp_e).reshape(Np // 8, K // kt, 8, 4, -1)                  # (nt, kt, g, t, bytes of the lane)
    if bits == 8:
        sel = b.reshape(b.shape[:4] + (kt // 16, 4)).view(np.int8).astype(np.int16)   # (..., step, 4 codes)
    else:                                       # per step pair: bytes c0|c2<<4 of s0, of s1, c1|c3<<4 of s0, of s1
        w = b.reshape(b.shape[:-1] + (-1, 4))                                   # (..., step pair, 4 bytes)
        c = np.stack([w[..., :2] & 15, w[..., 2:] & 15, w[..., :2] >> 4, w[..., 2:] >> 4], -1)   # (..., pair, s, c)
        sel = c.reshape(b.shape[:-1] + (kt // 16, 4)).astype(np.int16) - 8
    idx = np.array([[2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9] for t in range(4)])   # (t, 4) k offsets per lane
    out = np.zeros((Np // 8, 8, K // kt, kt // 16, 16), np.int16)             # (nt, g, kt, step, 16)
    out[..., idx] = sel.transpose(0, 2, 1, 4, 3, 5)                           # (nt, g, kt, step, t, 4)
    return out.reshape(Np, K)


def dequantize_stack(stack) -> np.ndarray:
    """ExpertStack (host or device arrays) -> (E, N, K) float32 weights, as the kernels read them."""
    a = {n: np.asarray(v.get() if hasattr(v, "get") else v) for n, v in stack.arrays.items()}
    if stack.kind == "bf16":
        return a["w"].astype(np.float32)
    out = []
    for qp_e, s in zip(a["qp"], a["scale"]):                                   # s: (Np, G)
        q = unpack_codes(qp_e, stack.N, stack.K, stack.bits).astype(np.float32)
        out.append((q * np.repeat(s, stack.K // s.shape[1], axis=1))[:stack.N])
    return np.stack(out)


def gemm_ref(x, w_all, ids, xdiv: int, swiglu: bool = False):
    """Twin of moe_gemm (swiglu: of fused_ops.silu_mul then moe_gemm, as routed runs the down projection).
    x: (R / xdiv, Kx) or gu (R / xdiv, 2 Kx); w_all: (E, N, K >= Kx) float32; ids: (N, k) -> (R, N) in x's dtype.
    The SwiGLU is rounded to x's dtype first, as fused_ops.silu_mul does."""
    flat = np.asarray(ids).reshape(-1)                                         # (R,)
    a = np.asarray(x)[np.arange(flat.size) // xdiv]                            # (R, cols)
    if swiglu:
        kx = a.shape[1] // 2
        a = ops.silu_mul(a[:, :kx], a[:, kx:], np)                             # (R, Kx)
    y = np.zeros((flat.size, w_all.shape[1]), np.float32)
    for e in np.unique(flat):
        rows = flat == e
        y[rows] = a[rows].astype(np.float32) @ w_all[e, :, :a.shape[1]].T
    return y.astype(a.dtype)


def combine(y, w):
    """Twin of moe_combine (and moe_forward's combine). y: (N k, H), w: (N, k) float32 -> (N, H) in y's dtype."""
    N, k = w.shape
    return (y.reshape(N, k, -1).astype(np.float32) * w[:, :, None]).sum(axis=1).astype(y.dtype)


def routed_ref(m, x):
    """Twin of ``routed`` on the host from m.gpu's stacks: route -> per-row GEMMs -> combine."""
    from .moe import route  # noqa: PLC0415

    host = (lambda a: a if a is None or isinstance(a, np.ndarray) else a.get())
    w, ids = route(x, host(m.router_w), host(m.correction_bias), m.top_k, m.norm_min, np)
    gu = gemm_ref(x, dequantize_stack(m.gpu.gate_up), ids, m.top_k)
    return combine(gemm_ref(gu, dequantize_stack(m.gpu.down), ids, 1, swiglu=True), w)
