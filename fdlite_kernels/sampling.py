"""Launcher for sampling.cu — one token per row from float32 logits, with the host sampler's semantics
(penalties -> bans -> temperature -> top-k -> top-p -> min-p -> inverse-CDF draw in vocabulary order).

logits: float32 [R, V], C-contiguous. The rows named in meta are MODIFIED IN PLACE (penalties and bans).
prm: float64 [S, NPRM], one row per sampled sequence, columns PRM:
    temperature (0 = greedy: argmax, first index on ties), top_p (1 = off), min_p (0 = off),
    u (uniform in [0, 1) for the draw), repetition_penalty (1 = off), frequency_penalty, presence_penalty
    (both as float32 values: the host applies them as np.float32), top_k (<= 0 or >= V = off)
meta: int32 [S, NMETA], columns META: logits row in [0, R), then four offsets into ids that bound three
    lists: [rep, freq) repetition-penalty ids, unique; [freq, ban) (id, count) pairs for the frequency and
    presence penalties, ids unique; [ban, end) banned ids (set to -inf; repeats are harmless).
ids: int32 [N] (N may be 0). Ids outside [0, V) are skipped (the packer rejects them beforehand).
returns out: int64 [S], the token of each row (-1 for a row index outside [0, R)).
A row whose tokens are all banned gives token 0 when greedy and V - 1 otherwise, as the host sampler does.
The NumPy twin is fdlite.engine.sampler (process_logits + choose); fdlite.engine.gpu_sampler packs the inputs.
"""
from __future__ import annotations

import numpy as np

from . import load
from ._launch import check, expect

PRM = ("temperature", "top_p", "min_p", "u", "repetition_penalty", "frequency_penalty", "presence_penalty",
       "top_k")
META = ("row", "rep", "freq", "ban", "end")
NPRM, NMETA = len(PRM), len(META)
THREADS = 1024                          # one CTA per row; sampling.cu's default THREADS


def sample_rows(logits, prm, meta, ids, out=None):
    import cupy as cp  # noqa: PLC0415

    expect(logits, "logits", np.float32, 2)
    expect(prm, "prm", np.float64, 2)
    expect(meta, "meta", np.int32, 2)
    expect(ids, "ids", np.int32, 1)
    R, V = logits.shape
    S = prm.shape[0]
    check(prm.shape[1] == NPRM, f"prm has {prm.shape[1]} columns, expected {NPRM} {PRM}")
    check(meta.shape == (S, NMETA), f"meta has shape {meta.shape}, expected ({S}, {NMETA}) for S = {S}")
    check(0 < V < 2**30, f"V = {V} must be in [1, 2^30)")
    check(ids.size < 2**31, f"ids has {ids.size} entries, more than int32 offsets address")
    y = out if out is not None else cp.empty(S, dtype=np.int64)
    expect(y, "out", np.int64, 1)
    check(y.shape[0] == S, f"out has {y.shape[0]} entries for S = {S} rows")
    if S == 0:
        return y
    if ids.size == 0:                                       # a valid pointer even though no row reads it
        ids = cp.zeros(1, dtype=np.int32)
    fn = load("sampling").get_function("sample_rows")
    fn((S,), (THREADS,), (logits, np.int32(R), np.int32(V), prm, meta, ids, y))
    return y
