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
    device: the int32 device copies GPU kernels read (``on_device``), or None until a GPU step asks.
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
    device: dict | None = None

    @property
    def batch(self) -> int:
        return self.q_pos.shape[0]

    def on_device(self, xp) -> dict:
        """positions, slots, rows (the sequence row of each token), block_tables as int32 device arrays (one
        host-to-device copy), and max_len (the longest context, which sizes the attention grid). A captured
        CUDA graph sets its own static buffers here instead (fdlite.engine.cuda_graph)."""
        if self.device is None:
            parts = [self.positions, self.slots, self.rows, self.block_tables.reshape(-1)]
            flat = xp.asarray(np.concatenate(parts).astype(np.int32))
            ends = np.cumsum([len(a) for a in parts])
            self.device = {"positions": flat[:ends[0]], "slots": flat[ends[0]:ends[1]],
                           "rows": flat[ends[1]:ends[2]],
                           "block_tables": flat[ends[2]:].reshape(self.block_tables.shape),
                           "max_len": int(self.kv_lens.max(initial=1))}
        return self.device

    def logit_index(self, xp):
        """None when every token's logits are wanted in order (decode steps), else the rows on the backend."""
        n = len(self.positions)
        if len(self.logit_rows) == n and np.array_equal(self.logit_rows, np.arange(n)):
            return None
        return xp.asarray(self.logit_rows)

    @staticmethod
    def build(seqs: list[tuple[int, int, list[int]]], block_size: int, logits: str = "last") -> "StepMeta":
        """seqs: per sequence (start position, number of new tokens, block table).
        logits: "last" (one row per sequence) or "all"."""
        if seqs and all(n == 1 for _, n, _ in seqs):
            return StepMeta._build_decode(seqs, block_size)
        # vectorized over the sequences: at batch 32 the per-sequence loop it replaces was ~0.5 ms of host time
        # per decode step on the H100 machine (benchmarks/step_profile.py), about 6% of the step
        B = len(seqs)
        starts = np.fromiter((s for s, _, _ in seqs), np.int64, B)                  # (B,)
        ns = np.fromiter((n for _, n, _ in seqs), np.int64, B)                      # (B,)
        lens = np.fromiter((len(t) for _, _, t in seqs), np.int64, B)               # (B,) blocks per table
        short = np.flatnonzero(lens * block_size < starts + ns)
        if short.size:
            b = int(short[0])
            raise ValueError(f"sequence {b}: {lens[b]} blocks of {block_size} cannot hold {starts[b] + ns[b]} tokens")
        max_q = int(ns.max())
        tables = _padded_tables([t for _, _, t in seqs], int(lens.max()))
        offs = np.cumsum(ns) - ns                                                   # (B,) first token of each
        rows = np.repeat(np.arange(B), ns)                                          # (N,)
        cols = np.arange(int(ns.sum())) - offs[rows]                                # (N,)
        positions = starts[rows] + cols                                             # (N,)
        slots = tables[rows, positions // block_size].astype(np.int64) * block_size + positions % block_size
        q_pos = starts[:, None] + np.minimum(np.arange(max_q)[None, :], ns[:, None] - 1)   # (B, max_q)
        kv_lens = starts + ns
        logit_rows = np.arange(len(rows)) if logits == "all" else offs + ns - 1
        return StepMeta(positions, slots, kv_lens[rows], rows, cols, q_pos, tables, kv_lens, logit_rows)

    @staticmethod
    def _build_decode(seqs: list[tuple[int, int, list[int]]], block_size: int) -> "StepMeta":
        """build() when every sequence brings one token (a decode step: "last" and "all" are the same rows).
        Plain Python over the sequences, then one array per field: the general path's ~20 NumPy calls cost
        ~20 us per step at batch 1, host time that adds to every GPU decode step."""
        bs, B = block_size, len(seqs)
        for b, (pos, _, table) in enumerate(seqs):
            if len(table) * bs < pos + 1:
                raise ValueError(f"sequence {b}: {len(table)} blocks of {bs} cannot hold {pos + 1} tokens")
        positions = np.array([pos for pos, _, _ in seqs], np.int64)                 # (B,)
        slots = np.array([int(table[pos // bs]) * bs + pos % bs for pos, _, table in seqs], np.int64)
        tables = _padded_tables([t for _, _, t in seqs], max(len(t) for _, _, t in seqs))
        kv_lens = positions + 1
        return StepMeta(positions, slots, kv_lens.copy(), np.arange(B), np.zeros(B, np.int64),
                        positions.reshape(B, 1).copy(), tables, kv_lens, np.arange(B))


def _padded_tables(tables: list[list[int]], max_blocks: int) -> np.ndarray:
    """(B, max_blocks) int32, each table left-aligned and zero-padded: one array from padded lists (rows of a
    step mostly have equal lengths) instead of one NumPy assignment per row."""
    return np.array([t if len(t) == max_blocks else list(t) + [0] * (max_blocks - len(t)) for t in tables],
                    np.int32).reshape(len(tables), max_blocks)


class KVFormat:
    """Base paged cache: K and V per layer as (num_blocks, kv_heads, block_size, head_dim) arrays.

    Subclasses define ``name``, ``_alloc`` (storage), ``write`` and ``read`` (dequantized, gathered).
    ``attend`` (read + reference attention) is the default every format may override with a kernel.
    """

    name = ""
    options: dict = {}   # option name -> default: what the format accepts (static scales, flags)
    kernel_code: int | None = None   # the format's code in fdlite_kernels/kv_codec.cuh; None: reference only
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

    def kernel_cache(self, layer: int) -> dict:
        """The layer's arrays and scales as fdlite_kernels.kv_cache reads them (formats with a kernel_code)."""
        raise NotImplementedError

    # --- the attention prologue and attention (GPU kernels where the format has them) --------------------
    def _kernel_cache(self, layer: int) -> dict:
        memo = self.__dict__.setdefault("_kernel_memo", {})     # scales and storage are fixed once built
        if layer not in memo:
            memo[layer] = self.kernel_cache(layer)
        return memo[layer]

    def _use_kernels(self, n_heads: int) -> bool:
        """Called twice per layer per step: decided once per (instance, kernel_code, heads)."""
        memo = self.__dict__.setdefault("_use_memo", {})
        key = (self.kernel_code, n_heads)
        if key not in memo:
            memo[key] = self._kernels_take(n_heads)
        return memo[key]

    def _kernels_take(self, n_heads: int) -> bool:
        if not self.backend.is_gpu or self.kernel_code is None:
            return False
        from fdlite_kernels.kv_cache import GMAX, HEAD_DIMS  # noqa: PLC0415

        c = self.cfg
        return (c.head_dim in HEAD_DIMS
                and n_heads % c.num_key_value_heads == 0 and n_heads // c.num_key_value_heads <= GMAX[-1])

    def store(self, layer: int, qkv, meta: StepMeta, rot, eps: float, q_norm=None, k_norm=None):
        """qkv: (N, (nh + 2 nkv) D) output of the fused QKV projection -> q: (N, nh, D), normed (q_norm) and
        rotated; K (normed with k_norm, rotated) and V are written at meta.slots. rot: fdlite.rope.RotaryStep.
        On the GPU one kernel does all of it (fdlite_kernels/kv_write.cu); the reference below defines it."""
        xp, c = self.xp, self.cfg
        N, nh, nkv, D = qkv.shape[0], c.num_attention_heads, c.num_key_value_heads, c.head_dim
        if self._use_kernels(nh) and qkv.dtype == self.backend.compute_dtype:
            from fdlite_kernels.kv_cache import rope_kv_write  # noqa: PLC0415

            dev = meta.on_device(xp)
            idx = rot.idx if rot.idx is not None else xp.arange(N, dtype=np.int32)
            return rope_kv_write(xp.ascontiguousarray(qkv), nh, nkv, D, rot.cos, rot.sin, idx, dev["slots"],
                                 self._kernel_cache(layer), q_norm=q_norm, k_norm=k_norm, eps=eps,
                                 interleaved=rot.interleaved)
        q = qkv[:, :nh * D].reshape(N, nh, D)                                      # (N, nh, D)
        k = qkv[:, nh * D:(nh + nkv) * D].reshape(N, nkv, D)                       # (N, nkv, D)
        v = qkv[:, (nh + nkv) * D:].reshape(N, nkv, D)
        if q_norm is not None:
            q = ops.rms_norm(q, q_norm, eps, xp)
            k = ops.rms_norm(k, k_norm, eps, xp)
        q, k = rot.apply(q, xp), rot.apply(k, xp)
        self.write(layer, k, v, meta)
        return q

    # --- shared ------------------------------------------------------------------------------------
    def attend(self, layer: int, q, meta: StepMeta, window: int | None, scale: float):
        """q: (N, H, D) new queries -> (N, H, D) attention output over each sequence's cached context."""
        xp = self.xp
        if self._use_kernels(q.shape[1]) and q.dtype == self.backend.compute_dtype:
            from fdlite_kernels.kv_cache import paged_attention  # noqa: PLC0415

            dev = meta.on_device(xp)
            return paged_attention(xp.ascontiguousarray(q), self._kernel_cache(layer), dev["block_tables"],
                                   dev["rows"], dev["positions"], window=window, scale=scale,
                                   max_len=dev["max_len"])
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
        self.__dict__.pop("_kernel_memo", None)
