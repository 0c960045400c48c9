"""Sampling on the host, one row per sequence, in a fixed order per row (so a row's result never depends
on the other rows of the batch): penalties -> masks -> temperature -> top-k -> top-p -> min-p -> draw.
"""
from __future__ import annotations

import numpy as np

from ..sampling_params import Logprob


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max()
    return z - np.log(np.exp(z).sum())


def process_logits(logits: np.ndarray, seq, banned_ids: np.ndarray) -> np.ndarray:
    """Penalties and bans applied to one row (V,) float32; returns a new array."""
    p = seq.params
    x = logits.astype(np.float32, copy=True)
    if p.repetition_penalty != 1.0:
        ids = np.unique(np.asarray(seq.all_ids, np.int64))
        vals = x[ids]
        x[ids] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if (p.frequency_penalty or p.presence_penalty) and seq.output_ids:
        ids, counts = np.unique(np.asarray(seq.output_ids, np.int64), return_counts=True)
        x[ids] -= counts * np.float32(p.frequency_penalty) + np.float32(p.presence_penalty)
    if banned_ids.size:
        x[banned_ids] = -np.inf
    return x


def choose(x: np.ndarray, seq) -> int:
    """Draw one token from processed logits x (V,) with the sequence's own generator."""
    p = seq.params
    if p.greedy:
        return int(np.argmax(x))
    x = x.astype(np.float64) / p.temperature
    if p.top_k > 0 and p.top_k < x.size:
        kth = np.partition(x, -p.top_k)[-p.top_k]
        x = np.where(x < kth, -np.inf, x)
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    if p.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        csum = np.cumsum(probs[order])
        cut = int(np.searchsorted(csum, p.top_p)) + 1          # smallest prefix with mass >= top_p
        keep = np.zeros_like(probs, dtype=bool)
        keep[order[:cut]] = True
        probs = np.where(keep, probs, 0.0)
    if p.min_p > 0:
        probs = np.where(probs < p.min_p * probs.max(), 0.0, probs)
    csum = np.cumsum(probs)
    tok = int(np.searchsorted(csum, seq.rng.random() * csum[-1], side="right"))
    return min(tok, x.size - 1)


def logprob_entry(raw: np.ndarray, token: int, k: int, decode) -> tuple[dict[int, Logprob], float]:
    """Logprobs from the model's raw distribution: the chosen token plus the top k."""
    lp = _log_softmax(raw.astype(np.float64))
    chosen = float(lp[token])
    rank = int((lp > chosen).sum()) + 1
    out = {token: Logprob(chosen, rank, decode(token))}
    if k:
        top = np.argpartition(-lp, min(k, lp.size - 1))[:k]
        for r, t in enumerate(sorted(top.tolist(), key=lambda t: -lp[t]), start=1):
            out.setdefault(int(t), Logprob(float(lp[t]), r, decode(int(t))))
    return out, chosen
