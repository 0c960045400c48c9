"""The paged KV-cache contract, and the per-step attention metadata the engine builds.

Storage is paged: fixed-size blocks, each sequence owning a list of block ids (its block table).
A format owns its storage, its ``write`` (quantize-on-write, K already rotated) and its ``attend``;
the forward pass calls these and never branches on the format's name.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import ops
from ..errors import InputError


@dataclass
class StepMeta:
    """Where the N new tokens of one forward step go. Host arrays (numpy); formats move what they need.

    positions: (N,) absolute position of each new token; slots: (N,) flat cache slot
    (block_id * block_size + offset); rope_lens: (N,) max(position)+1 of the token's sequence this step;
    rows, cols: (N,) where each token sits in the padded (B, max_q) query grid;
    q_pos: (B, max_q) position of each padded query (padding repeats a valid position);
    block_tables: (B, max_blocks) int32; kv_lens: (B,) tokens in cache after this step;
    logit_rows: (S,) indices of the tokens whose logits are wanted.
    """

    positions: np.ndarray
    slots: np.ndarray
    rope_lens: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    q_pos: np.ndarray
    block_tables: np.ndarray
    kv_lens: np.ndarray
    logit_rows: np.ndarray

    @property
    def batch(self) -> int:
        return self.q_pos.shape[0]

    @staticmethod
    def build(seqs: list[tuple[int, int, list[int]]], block_size: int, logits: str = "last") -> "StepMeta":
        """seqs: per sequence (start position, number of new tokens, block table).
        logits: "last" (one row per sequence) or "all"."""
        B = len(seqs)
        max_q = max(n for _, n, _ in seqs)
        max_blocks = max(len(t) for _, _, t in seqs)
        positions, slots, rope_lens, rows, cols, logit_rows = [], [], [], [], [], []
        q_pos = np.zeros((B, max_q), np.int64)
        tables = np.zeros((B, max_blocks), np.int32)
        kv_lens = np.zeros(B, np.int64)
        off = 0
        for b, (start, n, table) in enumerate(seqs):
            if len(table) * block_size < start + n:
                raise ValueError(f"sequence {b}: {len(table)} blocks of {block_size} cannot hold {start + n} tokens")
            pos = np.arange(start, start + n)
            tbl = np.asarray(table, np.int64)
            positions.append(pos)
            slots.append(tbl[pos // block_size] * block_size + pos % block_size)
            rope_lens.append(np.full(n, start + n))
            rows.append(np.full(n, b))
            cols.append(np.arange(n))
            q_pos[b, :n], q_pos[b, n:] = pos, start + n - 1
            tables[b, :len(table)] = table
            kv_lens[b] = start + n
            logit_rows.append(np.arange(off, off + n) if logits == "all" else np.array([off + n - 1]))
            off += n
        cat = np.concatenate
        return StepMeta(cat(positions), cat(slots), cat(rope_lens), cat(rows), cat(cols), q_pos, tables,
                        kv_lens, cat(logit_rows))


class KVFormat:
    """Base paged cache: K and V per layer as (num_blocks, kv_heads, block_size, head_dim) arrays.

    Subclasses define ``name``, ``_alloc`` (storage), ``write`` and ``read`` (dequantized, gathered).
    ``attend`` (read + reference attention) is the default every format may override with a kernel.
    """

    name = ""
    options: dict = {}   # option name -> default: what the format accepts (static scales, flags)
    # The attention ``attend`` runs after ``read``; a CPU Model sets fdlite.engine.invariant.attention here.
    attention = staticmethod(ops.attention)

    def __init__(self, cfg, num_blocks: int, block_size: int, backend, **options):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise InputError(f"kv_cache {self.name!r} takes no option(s) {unknown}; it takes: "
                             f"{', '.join(sorted(self.options)) or 'none'}")
        self.cfg, self.num_blocks, self.block_size, self.backend = cfg, num_blocks, block_size, backend
        self.xp = backend.xp
        self.opts = self._check_options({**self.options, **options})
        self.shape = (num_blocks, cfg.num_key_value_heads, block_size, cfg.head_dim)
        self.layers = [self._alloc() for _ in range(cfg.num_hidden_layers)]

    # --- what a format defines ---------------------------------------------------------------------
    @classmethod
    def scale_shapes(cls, cfg) -> dict:
        """Static scales the format needs: option name -> shape stacked over layers. {} = none (dynamic)."""
        return {}

    def _check_options(self, opts: dict) -> dict:
        """Validate (and normalize) the options before storage is allocated; raise InputError on bad ones."""
        return opts

    def _alloc(self) -> dict:
        raise NotImplementedError

    def write(self, layer: int, k, v, meta: StepMeta) -> None:
        """k, v: (N, kv_heads, head_dim) in the compute dtype, K after RoPE; stored at meta.slots."""
        raise NotImplementedError

    def read(self, layer: int, meta: StepMeta):
        """-> k, v: (B, L, kv_heads, head_dim) compute dtype, L = blocks * block_size, rows per block table."""
        raise NotImplementedError

    def bytes_per_token(self) -> float:
        """Bytes of K+V (scales included) one token occupies, summed over layers."""
        raise NotImplementedError

    # --- shared ------------------------------------------------------------------------------------
    def attend(self, layer: int, q, meta: StepMeta, window: int | None, scale: float):
        """q: (N, H, D) new queries -> (N, H, D) attention output over each sequence's cached context."""
        xp = self.xp
        k, v = self.read(layer, meta)                                            # (B, L, Hkv, D)
        B, max_q = meta.q_pos.shape
        rows, cols = xp.asarray(meta.rows), xp.asarray(meta.cols)
        qp = xp.zeros((B, max_q) + q.shape[1:], dtype=q.dtype)                   # (B, max_q, H, D)
        qp[rows, cols] = q
        o = self.attention(qp, k, v, meta.q_pos, meta.kv_lens, window, scale, xp)  # (B, max_q, H, D)
        return o[rows, cols]                                                     # (N, H, D)

    def gather_blocks(self, store, meta: StepMeta):
        """store: (num_blocks, Hkv, bs, D) -> (B, max_blocks * bs, Hkv, D) for each row's block table."""
        g = store[self.xp.asarray(meta.block_tables)]                            # (B, nb, Hkv, bs, D)
        B, nb, h, bs, d = g.shape
        return g.transpose(0, 1, 3, 2, 4).reshape(B, nb * bs, h, d)

    def scatter_index(self, meta: StepMeta):
        """(block ids, offsets) of the new tokens, on this backend."""
        s = meta.slots
        return self.xp.asarray(s // self.block_size), self.xp.asarray(s % self.block_size)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for layer in self.layers for a in layer.values()))

    def close(self) -> None:
        self.layers = []
