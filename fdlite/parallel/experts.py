"""Expert parallelism: where each routed expert lives, and which (token, slot) rows each rank computes.

Placement: ``ep`` ranks hold contiguous expert ranges [E r / ep, E (r+1) / ep) (balanced; FastDeploy
requires E % ep == 0, which makes them equal). Routing (fdlite.moe.route) runs on every rank on the same
replicated hidden states, so every rank knows ids (N, k) and weights (N, k) of every token.

Dispatch (pure index arithmetic): the N k (token, slot) pairs are numbered flat = token * k + slot. Rank r
takes the pairs whose expert it owns, sorted by local expert (stable: tokens keep their order inside an
expert), and runs ``Experts.__call__`` (the grouped-GEMM slot) on x[flat // k] with per-expert counts.

Combine: rank r scatters w[flat] * y into a zero (N, hidden) partial; the sum of the partials over ranks
(one all-reduce, the same one tensor parallelism needs after the row-parallel shared-expert down
projection) is the MoE output. With data-parallel attention (each rank holding different tokens) the same
sets become all-to-all sends: ``send_counts`` gives the (source, destination) pair counts and
``displacements`` their offsets.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


def expert_ranges(num_experts: int, ep: int) -> list[tuple[int, int]]:
    """[start, stop) experts of each rank, contiguous and balanced."""
    if not isinstance(ep, int) or not 1 <= ep <= num_experts:
        raise InputError(f"expert_parallel_size = {ep!r} must be an integer in [1, moe_num_experts = "
                         f"{num_experts}]")
    return [(num_experts * r // ep, num_experts * (r + 1) // ep) for r in range(ep)]


def owner(num_experts: int, ep: int) -> np.ndarray:
    """(E,) int64: the rank holding each expert."""
    out = np.empty(num_experts, np.int64)
    for r, (s, e) in enumerate(expert_ranges(num_experts, ep)):
        out[s:e] = r
    return out


@dataclass
class Dispatch:
    """What one rank computes. flat (R,): token * k + slot, sorted by local expert; counts (E_r,)."""

    rank: int
    first_expert: int
    flat: np.ndarray
    counts: list[int]

    def tokens(self, k: int) -> np.ndarray:
        return self.flat // k


def dispatch(ids: np.ndarray, num_experts: int, ep: int) -> list[Dispatch]:
    """ids: (N, k) chosen experts -> one Dispatch per rank; together they hold every pair exactly once."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.size and (ids.min() < 0 or ids.max() >= num_experts):
        raise InputError(f"expert ids must be an (N, k) array in [0, {num_experts}), got shape {ids.shape}")
    flat_ids = ids.reshape(-1)                                                  # (N k,)
    order = np.argsort(flat_ids, kind="stable")                 # pairs sorted by global expert
    sorted_ids = flat_ids[order]
    out = []
    for r, (s, e) in enumerate(expert_ranges(num_experts, ep)):
        lo, hi = np.searchsorted(sorted_ids, [s, e])            # contiguous: experts are ranges
        counts = np.bincount(sorted_ids[lo:hi] - s, minlength=e - s)
        out.append(Dispatch(r, s, order[lo:hi], [int(c) for c in counts]))
    return out


def combine(d: Dispatch, ys, weights, num_tokens: int, xp=np):
    """ys (R, hidden) expert outputs of d's rows, weights (N, k) -> this rank's (N, hidden) float32
    partial."""
    k = weights.shape[1]
    part = xp.zeros((num_tokens, ys.shape[1]), xp.float32)
    w = weights.reshape(-1)[xp.asarray(d.flat)][:, None]                        # (R, 1)
    xp.add.at(part, xp.asarray(d.flat // k), ys.astype(xp.float32, copy=False) * w)
    return part


def send_counts(ids_per_rank: list[np.ndarray], num_experts: int, ep: int) -> np.ndarray:
    """Data-parallel tokens: ids_per_rank[src] (N_src, k) -> (ep, ep) counts[src, dst] of the pairs src
    sends to dst."""
    own = owner(num_experts, ep)
    return np.stack([np.bincount(own[np.asarray(ids).reshape(-1)], minlength=ep) for ids in ids_per_rank])


def displacements(counts: np.ndarray) -> np.ndarray:
    """(ep, ep) counts -> (ep, ep) offsets of each src -> dst block in src's send buffer (exclusive
    cumsum)."""
    zero = np.zeros((counts.shape[0], 1), counts.dtype)
    return np.concatenate([zero, np.cumsum(counts, 1)[:, :-1]], axis=1)
