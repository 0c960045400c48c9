"""The parallel pieces of a rank's params tree: each looks to the forward like the object it replaces and does
its collective inside, so fdlite.models.* run unchanged on every rank and never name parallelism.

    RowParallel     in place of a Linear whose K is split (wo, w2):   y = all_reduce(x_r @ W_r.T)
    VocabEmbedding  in place of params["embed"] (``embed[ids]``):     rows = all_reduce(local rows, 0 elsewhere)
    VocabHead       in place of params["lm_head"]:                    logits = all_gather(h @ W_r.T) over vocab

They are plain fdlite objects with a ``__dict__``, so fdlite.engine.invariant.tile_linears reaches the Linear
inside, and ``nbytes`` lets Model.memory_report count them. (A MoE block reduces once at its end:
fdlite.parallel.rank.RankMoE.)
"""
from __future__ import annotations

from ..backend import array_module


class _AroundLinear:
    """A Linear with a collective after it: reports the Linear's shape and bytes."""

    def __init__(self, linear, comm):
        self.linear, self.comm = linear, comm

    @property
    def shape(self) -> tuple[int, int]:
        return self.linear.shape

    @property
    def nbytes(self) -> int:
        return self.linear.nbytes


class RowParallel(_AroundLinear):
    """A row-parallel Linear (this rank's K columns; bias on rank 0 only) and the all-reduce after it.
    x: (M, K / tp) -> (M, N), the full sum, the same on every rank."""

    def __call__(self, x):
        y = self.linear(x)                                                         # (M, N) partial
        return self.comm.all_reduce_sum(array_module(y).ascontiguousarray(y))     # NCCL works in place


class VocabEmbedding:
    """Rows [v0, v0 + n) of the (V, hidden) embedding. ``self[ids]``: ids (N,) -> (N, hidden), each rank's
    rows with zeros for ids outside its range, summed over ranks (exact: one term per row is non-zero).
    No boolean indexing (a host sync on the GPU): ids are clamped, then the foreign rows zeroed."""

    def __init__(self, table, v0: int, comm):
        self.table, self.v0, self.comm = table, int(v0), comm

    @property
    def shape(self):
        return self.table.shape

    @property
    def dtype(self):
        return self.table.dtype

    @property
    def nbytes(self) -> int:
        return int(self.table.nbytes)

    def __getitem__(self, ids):
        xp = array_module(self.table)
        local = xp.asarray(ids) - self.v0                                          # (N,)
        mine = (local >= 0) & (local < self.table.shape[0])
        rows = self.table[xp.where(mine, local, 0)]                                # (N, hidden)
        rows = xp.where(mine[:, None], rows, xp.zeros((), rows.dtype))
        return self.comm.all_reduce_sum(xp.ascontiguousarray(rows))


class VocabHead(_AroundLinear):
    """The lm_head rows of this rank's vocab range, then the all-gather: h (S, hidden) -> (S, V) on every rank.
    widths[r]: rank r's vocab rows. Unequal ranges are padded to the widest for the (equal-sized) gather and
    cut back after it."""

    def __init__(self, linear, widths: list[int], comm):
        super().__init__(linear, comm)
        self.widths = [int(w) for w in widths]

    def __call__(self, h):
        y = self.linear(h)                                                         # (S, v_r)
        xp, w = array_module(y), max(self.widths)
        if y.shape[1] < w:
            y = xp.concatenate([y, xp.zeros((y.shape[0], w - y.shape[1]), y.dtype)], axis=1)    # (S, w)
        g = self.comm.all_gather(xp.ascontiguousarray(y), axis=-1)                 # (S, tp * w)
        if all(v == w for v in self.widths):
            return g
        return xp.concatenate([g[:, r * w:r * w + v] for r, v in enumerate(self.widths)], axis=1)    # (S, V)
