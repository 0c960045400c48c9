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
The per-rank trees come from fdlite.parallel.rank, the builder the process runtime (runtime.py) uses too;
there the collectives sit inside the pieces instead of in this loop.
"""
from __future__ import annotations

import numpy as np

from .. import ops
from ..errors import InputError
from ..kv.base import StepMeta
from ..models.llama import attention_block, mlp_block
from .rank import Rank, RankMoE, kv_options, rank_config, rank_params   # noqa: F401 - re-exported

__all__ = ["Rank", "RankMoE", "all_reduce", "forward", "kv_options", "logits", "rank_config", "shard_model"]


def all_reduce(parts):
    """Sum over ranks in rank order (NCCL's ring sums in another order: results differ in the last bits)."""
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def shard_model(model, tp: int) -> list[Rank]:
    """A loaded CPU Model -> tp Rank objects (fdlite.parallel.rank.rank_params, no communicator: plain host
    pieces; the single-process params are not changed)."""
    if model.backend.is_gpu:
        raise InputError("shard_model works on a CPU Model (host Packed weights); load with device='cpu'")
    if not isinstance(tp, int) or tp < 1:
        raise InputError(f"tensor_parallel_size = {tp!r} must be a positive integer")
    return [rank_params(model.params, model.config, tp, r) for r in range(tp)]


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
