"""Mixture-of-experts on any xp: routing (ERNIE-4.5 style), grouping tokens by expert, combining.

Routing (fastdeploy-spec §7.2; transformers' Ernie4_5_MoeTopKRouter; FastDeploy's moe_topk_select with
apply_norm_weight=True), per token x (hidden,), all in float32:

    p      = softmax(x @ W_router.T)                 # (E,)   router weight W_router (E, hidden) kept fp32
    chosen = top_k(p + e_score_correction_bias)      # the bias only decides WHICH experts run
    w      = p[chosen] / max(sum(p[chosen]), norm_min)   # weights: the un-biased p, renormalised
    out    = sum_j w_j * expert_{chosen_j}(x)  (+ shared experts, added by the caller)

Ties in ``p + bias`` go to the lower expert index (a stable sort; torch.topk promises no order on ties).

Execution is grouped, not per token: the N*k (token, slot) pairs are sorted by expert id, each expert runs one
matmul over its contiguous block of rows, and the rows are scattered back and combined. ``Experts.__call__``
(rows sorted by expert + per-expert counts -> rows) is exactly the interface of a grouped GEMM.

On the GPU, a block whose experts were stacked at load (``MoE.gpu``, fdlite/moe_gpu.py) runs the routed experts
through fdlite_kernels/moe.cu instead (same math, no host sync: CUDA-graph capturable); the grouped path above
stays the CPU reference and the fallback.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import moe_gpu, ops


def route(x, router_w, correction_bias, top_k: int, norm_min: float, xp):
    """x: (N, hidden); router_w: (E, hidden) float32; correction_bias: (E,) float32 or None.

    Returns weights (N, k) float32 (renormalised un-biased probabilities) and ids (N, k) int64, each row in
    decreasing order of the biased score.
    """
    logits = x.astype(xp.float32, copy=False) @ router_w.T                    # (N, E) fp32 router
    p = xp.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)                                         # softmax in fp32
    score = p if correction_bias is None else p + correction_bias
    ids = xp.argsort(-score, axis=-1, kind="stable")[:, :top_k]               # (N, k); ties -> lower index
    w = xp.take_along_axis(p, ids, axis=-1)                                    # (N, k) un-biased
    w /= xp.maximum(w.sum(axis=-1, keepdims=True), np.float32(norm_min))
    return w, ids.astype(xp.int64, copy=False)


def group_by_expert(ids, num_experts: int, xp):
    """ids: (N, k) expert of each (token, slot). Returns order (N*k,): flat (token*k + slot) indices sorted by
    expert (stable, so tokens keep their order inside an expert), and counts (E,) host ints."""
    flat = ids.reshape(-1)                                                     # (N*k,)
    order = xp.argsort(flat, kind="stable")
    counts = xp.bincount(flat, minlength=num_experts)
    return order, [int(c) for c in counts.tolist()]                          # host: sizes the blocks


class Experts:
    """E routed SwiGLU experts. gate_up[e]: Linear (2I, hidden) with rows gate then up; down[e]: Linear (hidden, I).

    The Linears come from make_linear with roles "moe_gate_up" / "moe_down", so quantization applies per role.
    """

    def __init__(self, gate_up: list, down: list):
        if len(gate_up) != len(down):
            raise ValueError(f"{len(gate_up)} gate_up linears but {len(down)} down linears")
        self.gate_up, self.down = gate_up, down

    def __len__(self) -> int:
        return len(self.gate_up)

    @property
    def nbytes(self) -> int:
        return sum(lin.nbytes for lin in self.gate_up + self.down)

    def __call__(self, xs, counts: list[int], xp):
        """xs: (R, hidden) rows sorted by expert; counts[e] rows belong to expert e -> (R, hidden).

        The grouped-GEMM slot: one matmul per expert over its block (experts with no rows are skipped)."""
        ys = xp.empty_like(xs)
        start = 0
        for e, n in enumerate(counts):
            if n:
                gu = self.gate_up[e](xs[start:start + n])                      # (n, 2I)
                inter = gu.shape[1] // 2
                ys[start:start + n] = self.down[e](ops.silu_mul(gu[:, :inter], gu[:, inter:], xp))
            start += n
        return ys


def block_nbytes(b) -> int:
    """Weight bytes of an MoE block (router, correction bias, experts, shared experts): MoE and a tensor-parallel
    rank's block (fdlite.parallel.rank.RankMoE) hold the same fields."""
    arrays = [b.router_w] + ([] if b.correction_bias is None else [b.correction_bias])
    return sum(int(a.nbytes) for a in arrays) + b.experts.nbytes + sum(lin.nbytes for lin in (b.shared or {}).values())


@dataclass
class MoE:
    """One MoE block's weights. shared: None or {"w13": Linear, "w2": Linear} (the shared-experts SwiGLU MLP)."""

    router_w: object              # (E, hidden) float32, never quantized
    correction_bias: object       # (E,) float32 or None
    experts: Experts
    top_k: int
    norm_min: float = 1e-12
    shared: dict | None = None
    gpu: object = None            # moe_gpu.GpuExperts: the experts stacked for the GPU kernels (moe_gpu.prepare)

    @property
    def nbytes(self) -> int:
        """Weight bytes (Model.memory_report counts the block through this)."""
        return block_nbytes(self)

    def __call__(self, x, xp):
        """x: (N, hidden) normed -> (N, hidden) (moe_forward). The families call the block, so a tensor-parallel
        rank's block (fdlite.parallel.rank.RankMoE) takes its place without the forward changing."""
        return moe_forward(self, x, xp)


def moe_forward(m: MoE, x, xp):
    """x: (N, hidden) normed hidden states -> (N, hidden): routed experts combined, plus the shared experts."""
    out = moe_gpu.routed(m, x, xp) if moe_gpu.use_kernels(m, x, xp) else _grouped(m, x, xp)
    if m.shared is not None:
        out = out + m.shared["w2"](ops.linear_swiglu(m.shared["w13"], x, xp))   # (N, I_shared) -> (N, hidden)
    return out


def _grouped(m: MoE, x, xp):
    """The routed experts by the reference path: x (N, hidden) -> (N, hidden) in x's dtype."""
    N, H, k = x.shape[0], x.shape[1], m.top_k
    w, ids = route(x, m.router_w, m.correction_bias, k, m.norm_min, xp)       # (N, k) each
    order, counts = group_by_expert(ids, len(m.experts), xp)
    ys = m.experts(x[order // k], counts, xp)                                  # (N*k, H) grouped by expert
    y = xp.empty_like(ys)
    y[order] = ys                                                              # back to (token, slot) order
    out = (y.reshape(N, k, H).astype(xp.float32, copy=False) * w[:, :, None]).sum(axis=1)   # (N, H)
    return out.astype(x.dtype, copy=False)
