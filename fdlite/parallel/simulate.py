"""A CPU simulator of the N-rank tensor(+expert)-parallel forward: the proof of the sharding plan.

``shard_model(model, tp)`` cuts a loaded CPU Model's params into ``tp`` per-rank trees
(fdlite.parallel.sharding); ``forward(ranks, ids, meta, caches, rope)`` runs every rank's part of each layer
with the code the single process runs (fdlite.models.llama.attention_block / mlp_block, fdlite.moe.route,
Experts.__call__) and joins them with a Python ``all_reduce`` (a sum in rank order) and an all-gather (a
concatenation): where NCCL would sit. Per layer (the collectives of the plan, docs/parallel.md):

    x  = all_reduce_r(embed_r(ids))                  vocab-parallel embedding: ids outside r's range give 0
    x += all_reduce_r(wo_r(attn(wqkv_r(norm(x)))))   q/k/v column-parallel by head, o row-parallel
    x += all_reduce_r(w2_r(silu(w13_r(norm(x)))))    gate/up column-parallel, down row-parallel
      or all_reduce_r(moe_r(norm(x)))                MoE: experts placed by rank (EP = TP), shared experts TP
    logits = all_gather_r(lm_head_r(norm(x)))        vocab-parallel lm_head

Each rank's KV cache holds only its KV heads (a per-rank config with num_key_value_heads = its local count;
static KV scales sliced by head). Row-parallel biases are kept by rank 0 only: the all-reduce adds them once.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .. import ops
from ..errors import InputError
from ..kv.base import StepMeta
from ..models.llama import attention_block, mlp_block
from ..moe import Experts, MoE, route
from ..quant.base import Linear
from . import experts as ep_
from .sharding import (gate_up_segments, heads_of, kv_heads_of, n_unit, qkv_segments, split_even, take_cols,
                       take_rows)


_REPLICATED = ("attn_norm", "mlp_norm", "q_norm", "k_norm")     # per-layer tensors every rank holds whole


def all_reduce(parts):
    """Sum over ranks in rank order (NCCL's ring sums in another order: results differ in the last bits)."""
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


@dataclass
class Rank:
    rank: int
    cfg: object              # ModelConfig with this rank's q / kv heads and intermediate size
    vocab: tuple[int, int]   # [v0, v1) rows of the embedding and lm_head this rank holds
    params: dict
    kv_heads: tuple[int, int]


def rank_config(cfg, tp: int, rank: int):
    """The ModelConfig one rank sees: its q heads, its (split or replicated) KV heads, I / tp."""
    q0, q1 = heads_of(cfg.num_attention_heads, tp, rank)
    k0, k1 = kv_heads_of(cfg.num_key_value_heads, tp, rank)
    return replace(cfg, num_attention_heads=q1 - q0, num_key_value_heads=k1 - k0,
                   intermediate_size=cfg.intermediate_size // tp)


def _lin(lin: Linear, packed, bias) -> Linear:
    return Linear(lin.method, packed, bias, lin.xp)


def column(lin: Linear, segments) -> Linear:
    """Column-parallel piece of a Linear: rows ``segments``, bias rows with them."""
    bias = None if lin.bias is None else np.concatenate([lin.bias[s:e] for s, e in segments])
    return _lin(lin, take_rows(lin.packed, segments), bias)


def row(lin: Linear, start: int, stop: int, rank: int) -> Linear:
    """Row-parallel piece: K columns [start, stop); the bias stays on rank 0 (the all-reduce adds it once)."""
    return _lin(lin, take_cols(lin.packed, start, stop), lin.bias if rank == 0 else None)


def _mlp(lp: dict, tp: int, r: int) -> dict:
    inter = lp["w13"].shape[0] // 2
    s, e = gate_up_segments(inter, tp, r)[0]
    return {"w13": column(lp["w13"], gate_up_segments(inter, tp, r)), "w2": row(lp["w2"], s, e, r)}


@dataclass
class RankMoE:
    """One rank's MoE block: the replicated router, its contiguous experts, its TP slice of the shared
    experts."""

    whole: MoE               # router_w, correction_bias, top_k, norm_min (replicated)
    experts: Experts         # experts [first, first + len) only
    num_experts: int
    ep: int
    rank: int
    shared: dict | None

    def __call__(self, h, xp):
        """h: (N, hidden) -> this rank's (N, hidden) partial of the MoE output (before the all-reduce)."""
        m, k = self.whole, self.whole.top_k
        w, ids = route(h, m.router_w, m.correction_bias, k, m.norm_min, xp)   # (N, k), same on every rank
        d = ep_.dispatch(ids, self.num_experts, self.ep)[self.rank]
        ys = self.experts(h[d.tokens(k)], d.counts, xp)                       # (R, hidden) by expert
        out = ep_.combine(d, ys, w, h.shape[0], xp).astype(h.dtype, copy=False)
        return out if self.shared is None else out + mlp_block(self.shared, h, xp)


def _moe(m: MoE, tp: int, r: int) -> RankMoE:
    E = len(m.experts)
    s, e = ep_.expert_ranges(E, tp)[r]
    local = Experts(m.experts.gate_up[s:e], m.experts.down[s:e])
    return RankMoE(m, local, E, tp, r, None if m.shared is None else _mlp(m.shared, tp, r))


def shard_model(model, tp: int) -> list[Rank]:
    """A loaded CPU Model -> tp Rank objects (host arrays; the single-process params are not changed)."""
    cfg, P = model.config, model.params
    if model.backend.is_gpu:
        raise InputError("shard_model works on a CPU Model (host Packed weights); load with device='cpu'")
    if not isinstance(tp, int) or tp < 1:
        raise InputError(f"tensor_parallel_size = {tp!r} must be a positive integer")
    nh, nkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    # vocab ranges on the lm_head layout's row unit (a quantized block_wise_fp8 lm_head: whole blocks)
    vocab = split_even(cfg.vocab_size, tp, n_unit(P["lm_head"].packed), "vocab_size")
    ranks = []
    for r in range(tp):
        q0, q1 = heads_of(nh, tp, r)
        layers = []
        for lp in P["layers"]:
            out = {k: v for k, v in lp.items() if k in _REPLICATED}
            out["wqkv"] = column(lp["wqkv"], qkv_segments(nh, nkv, D, tp, r))
            out["wo"] = row(lp["wo"], q0 * D, q1 * D, r)                  # o's input is this rank's heads
            if "moe" in lp:
                out["moe"] = _moe(lp["moe"], tp, r)
            else:
                out.update(_mlp(lp, tp, r))
            layers.append(out)
        v0, v1 = vocab[r]
        params = {"embed": P["embed"][v0:v1], "layers": layers, "norm": P["norm"],
                  "lm_head": column(P["lm_head"], [(v0, v1)])}
        ranks.append(Rank(r, rank_config(cfg, tp, r), (v0, v1), params, kv_heads_of(nkv, tp, r)))
    return ranks


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


def forward(ranks: list[Rank], ids, meta: StepMeta, caches: list, rope, xp=np, reduce=all_reduce):
    """ids: (N,) -> (S, vocab) logits, each layer computed rank by rank and joined by ``reduce``."""
    ids = np.asarray(ids)
    eps = ranks[0].cfg.rms_norm_eps
    embeds = []
    for rk in ranks:                                                         # vocab-parallel embedding
        v0, v1 = rk.vocab
        mine = (ids >= v0) & (ids < v1)
        e = xp.zeros((len(ids), rk.params["embed"].shape[1]), rk.params["embed"].dtype)    # (N, hidden)
        e[mine] = rk.params["embed"][ids[mine] - v0]
        embeds.append(e)
    x = reduce(embeds)
    rot = rope.step(meta, xp)
    for i in range(len(ranks[0].params["layers"])):
        lps = [rk.params["layers"][i] for rk in ranks]
        x = x + reduce([attention_block(lp, rk.cfg, ops.rms_norm(x, lp["attn_norm"], eps, xp), meta, c, i,
                                        rot, xp) for lp, rk, c in zip(lps, ranks, caches)])
        hs = [ops.rms_norm(x, lp["mlp_norm"], eps, xp) for lp in lps]          # the same on every rank
        x = x + reduce([lp["moe"](h, xp) if "moe" in lp else mlp_block(lp, h, xp) for lp, h in zip(lps, hs)])
    x = x[xp.asarray(meta.logit_rows)]                                         # (S, hidden)
    return xp.concatenate([rk.params["lm_head"](ops.rms_norm(x, rk.params["norm"], eps, xp)) for rk in ranks],
                          axis=1)                                              # all-gather over the vocab


def logits(model, ids, tp: int, ranks: list[Rank] | None = None) -> np.ndarray:
    """Model.logits computed by ``tp`` simulated ranks: ids (B, T) -> float32 (B, T, V)."""
    a = np.asarray(ids, np.int64)
    a = a[None] if a.ndim == 1 else a
    B, T = a.shape
    ranks = ranks or shard_model(model, tp)
    bs = model.cache.block_size
    nb = -(-T // bs)
    fmt = model._kv_format
    caches = [fmt(rk.cfg, B * nb, bs, model.backend, **kv_options(fmt, model.config, model._kv_options,
                                                                    rk.kv_heads)) for rk in ranks]
    try:
        meta = StepMeta.build([(0, T, list(range(b * nb, (b + 1) * nb))) for b in range(B)], bs, logits="all")
        out = forward(ranks, a.reshape(-1), meta, caches, model.rope, model.backend.xp)
    finally:
        for c in caches:
            c.close()
    return np.asarray(out, np.float32).reshape(B, T, -1)
