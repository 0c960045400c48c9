"""One rank's share of a model: the per-rank param builder the simulator (simulate.py) and the process
runtime (runtime.py, worker.py) both use.

``rank_params(P, cfg, tp, r)`` cuts a whole params tree of host Linears (fdlite.parallel.sharding does the
cutting) into rank r's tree, per docs/parallel.md section 2:

    wqkv        column-parallel: r's q heads, then its KV heads in k and in v (qkv_segments)
    wo, w2      row-parallel: r's K columns, bias on rank 0 only
    w13         column-parallel: the same slice of gate and of up (gate_up_segments)
    moe         RankMoE: replicated router, experts [E r / tp, E (r+1) / tp), shared experts as w13 / w2
    embed       rows of r's vocab range;  lm_head: the same rows (vocab-parallel)
    norms       replicated

Without a communicator (the simulator) the pieces are plain Linears and arrays and the caller joins the
ranks. With one (the runtime) wo / w2 become RowParallel, embed VocabEmbedding, lm_head VocabHead and each
RankMoE all-reduces its output: the family's forward then runs unchanged. ``place`` moves each finished
piece to the rank's device (Placement.linear / .array); the default leaves host arrays where they are.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..models.llama import mlp_block
from ..moe import Experts, block_nbytes, route
from ..quant.base import Linear
from . import experts as ep_
from .layers import RowParallel, VocabEmbedding, VocabHead
from .sharding import (gate_up_segments, heads_of, kv_heads_of, n_unit, qkv_segments, split_even, take_cols,
                       take_rows)

REPLICATED = ("attn_norm", "mlp_norm", "q_norm", "k_norm")     # per-layer tensors every rank holds whole


@dataclass
class Rank:
    rank: int
    cfg: object              # ModelConfig with this rank's q / kv heads and intermediate size
    vocab: tuple[int, int]   # [v0, v1) rows of the embedding and lm_head this rank holds
    params: dict
    kv_heads: tuple[int, int]


class HostPlacement:
    """Leave every piece where it is (host arrays): the simulator and the CPU default."""

    def linear(self, lin: Linear) -> Linear:
        return lin

    def array(self, a, fp32: bool = False):
        return a


def rank_config(cfg, tp: int, rank: int):
    """The ModelConfig one rank sees: its q heads, its (split or replicated) KV heads, I / tp."""
    q0, q1 = heads_of(cfg.num_attention_heads, tp, rank)
    k0, k1 = kv_heads_of(cfg.num_key_value_heads, tp, rank)
    return replace(cfg, num_attention_heads=q1 - q0, num_key_value_heads=k1 - k0,
                   intermediate_size=cfg.intermediate_size // tp)


def column(lin: Linear, segments) -> Linear:
    """Column-parallel piece of a Linear: rows ``segments``, bias rows with them."""
    bias = None if lin.bias is None else np.concatenate([lin.bias[s:e] for s, e in segments])
    return Linear(lin.method, take_rows(lin.packed, segments), bias, lin.xp)


def row(lin: Linear, start: int, stop: int, rank: int) -> Linear:
    """Row-parallel piece: K columns [start, stop); the bias stays on rank 0 (the all-reduce adds it once)."""
    return Linear(lin.method, take_cols(lin.packed, start, stop), lin.bias if rank == 0 else None, lin.xp)


def _mlp(lp: dict, tp: int, r: int, place, wrap=lambda lin: lin) -> dict:
    inter = lp["w13"].shape[0] // 2
    s, e = gate_up_segments(inter, tp, r)[0]
    return {"w13": place.linear(column(lp["w13"], gate_up_segments(inter, tp, r))),
            "w2": wrap(place.linear(row(lp["w2"], s, e, r)))}


class RankMoE:
    """One rank's MoE block: the replicated router, its contiguous experts, its TP slice of the shared experts.
    ``self(h, xp)``: h (N, hidden) -> (N, hidden): this rank's partial (routed + shared), all-reduced when the
    block has a communicator (one collective per MoE layer, the plan's)."""

    def __init__(self, m, experts: Experts, num_experts: int, ep: int, rank: int, shared: dict | None,
                 comm=None, place=HostPlacement()):
        self.router_w, self.correction_bias = place.array(m.router_w, True), place.array(m.correction_bias, True)
        self.top_k, self.norm_min = m.top_k, m.norm_min
        self.experts, self.num_experts, self.ep, self.rank, self.shared, self.comm = \
            experts, num_experts, ep, rank, shared, comm

    @property
    def nbytes(self) -> int:
        return block_nbytes(self)

    def __call__(self, h, xp):
        k = self.top_k
        w, ids = route(h, self.router_w, self.correction_bias, k, self.norm_min, xp)   # (N, k), same on all ranks
        host_ids = ids.get() if hasattr(ids, "get") else ids
        d = ep_.dispatch(host_ids, self.num_experts, self.ep)[self.rank]
        ys = self.experts(h[xp.asarray(d.tokens(k))], d.counts, xp)                 # (R, hidden) by expert
        out = ep_.combine(d, ys, w, h.shape[0], xp).astype(h.dtype, copy=False)
        if self.shared is not None:
            out = out + mlp_block(self.shared, h, xp)
        return out if self.comm is None else self.comm.all_reduce_sum(out)


def _moe(m, tp: int, r: int, comm, place) -> RankMoE:
    E = len(m.experts)
    s, e = ep_.expert_ranges(E, tp)[r]
    local = Experts([place.linear(x) for x in m.experts.gate_up[s:e]],
                    [place.linear(x) for x in m.experts.down[s:e]])
    shared = None if m.shared is None else _mlp(m.shared, tp, r, place)   # reduced with the routed part
    return RankMoE(m, local, E, tp, r, shared, comm, place)


def rank_params(P: dict, cfg, tp: int, r: int, comm=None, place=HostPlacement()) -> Rank:
    """A whole params tree of host Linears -> rank r's Rank (P is not changed)."""
    nh, nkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    # vocab ranges on the lm_head layout's row unit (a quantized block_wise_fp8 lm_head: whole blocks)
    vocab = split_even(cfg.vocab_size, tp, n_unit(P["lm_head"].packed), "vocab_size")
    q0, q1 = heads_of(nh, tp, r)

    def reduced(lin):
        return lin if comm is None else RowParallel(lin, comm)

    layers = []
    for lp in P["layers"]:
        out = {k: place.array(v) for k, v in lp.items() if k in REPLICATED}
        out["wqkv"] = place.linear(column(lp["wqkv"], qkv_segments(nh, nkv, D, tp, r)))
        out["wo"] = reduced(place.linear(row(lp["wo"], q0 * D, q1 * D, r)))   # o's input: this rank's heads
        if "moe" in lp:
            out["moe"] = _moe(lp["moe"], tp, r, comm, place)
        else:
            out.update(_mlp(lp, tp, r, place, reduced))
        layers.append(out)
    v0, v1 = vocab[r]
    embed, head = place.array(P["embed"][v0:v1]), place.linear(column(P["lm_head"], [(v0, v1)]))
    if comm is not None:
        embed, head = VocabEmbedding(embed, v0, comm), VocabHead(head, [e - s for s, e in vocab], comm)
    params = {"embed": embed, "layers": layers, "norm": place.array(P["norm"]), "lm_head": head}
    return Rank(r, rank_config(cfg, tp, r), (v0, v1), params, kv_heads_of(nkv, tp, r))


def kv_options(fmt, cfg, options: dict, kv_heads: tuple[int, int]) -> dict:
    """Static KV scales (layers, nkv * c) sliced to one rank's KV heads; other options pass as they are."""
    out = dict(options)
    nkv = cfg.num_key_value_heads
    for name in fmt.scale_shapes(cfg):
        if out.get(name) is not None:
            a = np.asarray(out[name], np.float32).reshape(cfg.num_hidden_layers, -1)     # (L, nkv * c)
            c = a.shape[1] // nkv
            out[name] = np.ascontiguousarray(a[:, kv_heads[0] * c:kv_heads[1] * c])
    return out
