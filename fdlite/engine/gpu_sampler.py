"""Sampling on the GPU for the engine: the logits stay on the device and only the chosen ids come back.

Same semantics and the same per-sequence generators as the host sampler (``sampler.py``): each sampled row
draws ``u = seq.rng.random()`` on the host exactly when ``choose`` would (never for greedy rows), so a
request's output does not depend on which path sampled it, up to float rounding (a draw whose ``u * total``
lands within ~1e-12 relative of a CDF boundary may pick the neighbouring token). Rows that want logprobs need
their raw row on the host anyway: only those rows are copied, and the host functions sample them.

The parameters of all rows travel in one host->device copy (``pack``); this module imports cupy only inside
``sample``, so packing is testable without a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fdlite_kernels.sampling import META, NMETA, NPRM, PRM

from .sampler import choose, process_logits


@dataclass
class Packed:
    """One host buffer and its three views: prm float64 (S, NPRM), meta int32 (S, NMETA), ids int32 (N,)."""

    buf: np.ndarray
    prm: np.ndarray
    meta: np.ndarray
    ids: np.ndarray

    def to_device(self, cp) -> tuple:
        """One copy; the same views on the device."""
        d = cp.asarray(self.buf)
        a, b = self.prm.nbytes, self.prm.nbytes + self.meta.nbytes
        return (d[:a].view(cp.float64).reshape(self.prm.shape),
                d[a:b].view(cp.int32).reshape(self.meta.shape), d[b:].view(cp.int32))


_EMPTY = np.zeros(0, np.int64)
_EMPTY.flags.writeable = False          # the list of a row without that penalty or ban (most rows): shared


def pack(seqs, banned_per_row, rows, V: int) -> Packed:
    """Per-row parameters for sampling.cu. Draws u from each non-greedy sequence's generator (one draw each,
    as ``choose`` does). Penalty lists are sent only where the host would apply them.
    Rows are gathered as Python tuples and become arrays once: per-row NumPy calls (a row assignment, empty
    lists) were ~5 us a row, most of the host's sampling time at batch 32."""
    S = len(seqs)
    prm, bounds, lists, n = [], [], [], 0                                # bounds: rep, freq, ban, end per row
    for seq, banned in zip(seqs, banned_per_row):
        p = seq.params
        rep = freq = _EMPTY
        if p.repetition_penalty != 1.0:
            rep = np.unique(np.asarray(seq.all_ids, np.int64))
        if (p.frequency_penalty or p.presence_penalty) and seq.output_ids:
            ids, counts = np.unique(np.asarray(seq.output_ids, np.int64), return_counts=True)
            freq = np.stack([ids, counts], 1).reshape(-1)                  # (id, count) pairs
        ban = _EMPTY if isinstance(banned, np.ndarray) and banned.size == 0 else \
            np.asarray(banned, np.int64).reshape(-1)
        if ban.size:
            bad = ban[(ban < 0) | (ban >= V)]
            if bad.size:
                raise IndexError(f"banned token id {int(bad[0])} is outside the vocabulary [0, {V})")
        greedy = p.greedy
        prm.append((0.0 if greedy else p.temperature, p.top_p, p.min_p, 0.0 if greedy else seq.rng.random(),
                    p.repetition_penalty, np.float32(p.frequency_penalty), np.float32(p.presence_penalty),
                    p.top_k))
        nr, nf, nb = rep.size, freq.size, ban.size
        bounds.append((n, n + nr, n + nr + nf, n + nr + nf + nb))
        n += nr + nf + nb
        lists += [x for x in (rep, freq, ban) if x.size]
    if n >= 2**31:
        raise ValueError(f"{n} penalty/ban ids in one step: more than int32 offsets address")
    a, b = S * NPRM * 8, S * NPRM * 8 + S * NMETA * 4
    buf = np.empty(b + n * 4, np.uint8)
    packed = Packed(buf, buf[:a].view(np.float64).reshape(S, NPRM), buf[a:b].view(np.int32).reshape(S, NMETA),
                    buf[b:].view(np.int32))
    packed.prm[:] = np.array(prm, np.float64).reshape(S, NPRM)
    packed.meta[:, 0] = np.asarray(rows, np.int64).reshape(S)
    packed.meta[:, 1:] = np.array(bounds, np.int64).reshape(S, 4)
    packed.ids[:] = np.concatenate(lists) if lists else _EMPTY
    return packed


def sample(logits_dev, seqs, banned_per_row, rows=None, raw_out: dict | None = None) -> np.ndarray:
    """logits_dev: cupy (R, V); seqs[i] samples row rows[i] (default i) with banned ids banned_per_row[i].
    Returns the tokens, np.int64 (S,). The rows sampled on the device are overwritten (penalties applied in
    place). Rows of sequences with logprobs are copied to the host and sampled there; those host rows go to
    raw_out[i] when raw_out is given."""
    import cupy as cp  # noqa: PLC0415

    S = len(seqs)
    rows = np.arange(S) if rows is None else np.asarray(rows, np.int64)
    R = logits_dev.shape[0]
    if logits_dev.ndim != 2 or rows.shape != (S,) or (S and (rows.min() < 0 or rows.max() >= R)):
        raise ValueError(f"logits {logits_dev.shape} and rows {rows.tolist()} do not match {S} sequences")
    out = np.empty(S, np.int64)
    host = [i for i in range(S) if seqs[i].logprobs is not None]
    dev = [i for i in range(S) if seqs[i].logprobs is None]
    if host:
        raws = cp.asnumpy(logits_dev[cp.asarray(rows[host])]).astype(np.float32, copy=False)   # (H, V)
        for i, raw in zip(host, raws):
            out[i] = choose(process_logits(raw, seqs[i], np.asarray(banned_per_row[i], np.int64)), seqs[i])
            if raw_out is not None:
                raw_out[i] = raw
    if dev:
        if len(dev) < S:                                                  # else (the usual case) every row is here
            seqs, banned_per_row, rows = [seqs[i] for i in dev], [banned_per_row[i] for i in dev], rows[dev]
        out[dev] = cp.asnumpy(launch(logits_dev, seqs, banned_per_row, rows))
    return out


def launch(logits_dev, seqs, banned_per_row, rows):
    """Sample rows[i] of logits_dev for seqs[i] on the device, none of them wanting logprobs (``sample`` sorts
    those out). Returns the tokens there, int64 (S,), without waiting for them."""
    import cupy as cp  # noqa: PLC0415

    from fdlite_kernels.sampling import sample_rows  # noqa: PLC0415

    logits = cp.ascontiguousarray(logits_dev, dtype=cp.float32)           # no copy when it already is
    return sample_rows(logits, *pack(seqs, banned_per_row, rows, logits.shape[1]).to_device(cp))


class Pending:
    """Tokens sampled on the device, on their way to the host: ``dev`` stays on the GPU (the next step's input
    ids in the engine's overlapped decode), a copy into page-locked memory is queued behind the sampling at
    once, so ``get`` waits for the sampling only, not for whatever the stream runs after it."""

    def __init__(self, dev, buffers: dict, slot: int):
        """buffers: the caller's own {(device, slot): (page-locked int64 buffer, event)}, reused every step (an
        engine alternates two slots, so a slot is refilled only after its tokens were read; engines must not
        share them)."""
        import cupy as cp  # noqa: PLC0415

        self.dev, n = dev, dev.size
        key = (cp.cuda.Device().id, slot)
        buf, self.event = buffers.get(key, (None, None))
        if buf is None or buf.size < n:
            buf = np.frombuffer(cp.cuda.alloc_pinned_memory(max(n, 256) * 8), np.int64)
            self.event = self.event or cp.cuda.Event(disable_timing=True)
            buffers[key] = (buf, self.event)
        self.host = buf[:n]
        stream = cp.cuda.get_current_stream()
        cp.cuda.runtime.memcpyAsync(self.host.ctypes.data, dev.data.ptr, n * 8,
                                    cp.cuda.runtime.memcpyDeviceToHost, stream.ptr)
        self.event.record(stream)

    def get(self) -> np.ndarray:
        self.event.synchronize()
        return self.host


__all__ = ["Packed", "Pending", "launch", "pack", "sample", "PRM", "META"]
