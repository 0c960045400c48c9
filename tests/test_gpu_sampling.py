"""Sampling on the GPU (fdlite_kernels/sampling.cu + fdlite/engine/gpu_sampler.py) against the host sampler.

The GPU tests (pytest -m gpu) compare the kernel with ``process_logits`` + ``choose`` on fresh random logits,
each sequence's generator cloned so both sides draw the same u. The CPU tests check the packing, and run a
NumPy model of the kernel's algorithm (radix select on float keys, fixed-point mass, ties of the top-p
threshold, index-order draw) against the host sampler, and the engine's device path through that model.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import FIXTURES

import fdlite_kernels
from fdlite import Model, SamplingParams
from fdlite.engine import gpu_sampler
from fdlite.engine.gpu_sampler import pack
from fdlite.engine.sampler import choose, process_logits
from fdlite_kernels.sampling import META, NMETA, NPRM, PRM

gpu = pytest.mark.gpu
VS = [1000, 32000, 151936]
CASES = {                                           # name -> SamplingParams fields
    "greedy": dict(temperature=0.0),
    "greedy_top_k1": dict(temperature=0.8, top_k=1),
    "temperature": dict(temperature=0.7),
    "hot": dict(temperature=3.0),
    "top_k": dict(temperature=1.0, top_k=40),
    "top_p": dict(temperature=0.9, top_p=0.8),
    "top_p_small": dict(temperature=1.0, top_p=0.05),
    "top_p_high": dict(temperature=1.3, top_p=0.999),
    "min_p": dict(temperature=1.0, min_p=0.05),
    "all": dict(temperature=0.8, top_k=100, top_p=0.9, min_p=0.02),
    "penalties": dict(temperature=0.9, repetition_penalty=1.3, frequency_penalty=0.7, presence_penalty=-0.4),
    "greedy_penalties": dict(temperature=0.0, repetition_penalty=0.8, frequency_penalty=-1.5,
                             presence_penalty=2.0),
    "everything": dict(temperature=0.6, top_k=500, top_p=0.95, min_p=0.01, repetition_penalty=1.1,
                       frequency_penalty=0.3, presence_penalty=0.2),
}


# ---- helpers --------------------------------------------------------------------------------------------
def _seqs(rng, V, S, fields, n_ids=64):
    """S fake sequences (what the samplers read: params, rng, all_ids, output_ids, logprobs) + banned ids."""
    seqs, banned = [], []
    for r in range(S):
        prompt = rng.integers(0, V, rng.integers(1, n_ids)).tolist()
        out = rng.integers(0, V, rng.integers(0, n_ids)).tolist()
        out += out[: len(out) // 2]                                             # repeats: counts > 1
        seqs.append(SimpleNamespace(params=SamplingParams(**fields), rng=np.random.default_rng(1000 + r),
                                    prompt_ids=prompt, output_ids=out, all_ids=prompt + out, logprobs=None))
        banned.append(rng.integers(0, V, rng.integers(0, 6)).astype(np.int64))
    return seqs, banned


def _logits(rng, S, V, ties=False):
    x = (rng.standard_normal((S, V)) * 3).astype(np.float32)
    return np.round(x * 2) / 2 if ties else x                                   # ties: a few dozen levels


def _host(raw, seqs, banned):
    """Host tokens with cloned generators (the originals stay fresh for the kernel side)."""
    return np.array([choose(process_logits(raw[i], copy.deepcopy(s), banned[i]), copy.deepcopy(s))
                     for i, s in enumerate(seqs)], np.int64)


def _near_boundary(raw, seq, banned, tol=1e-9) -> bool:
    """True when the host's choice hangs on float rounding (seq's generator as before the draw): u * total
    within tol of a CDF step, the top-p cumulative mass within tol of top_p, or a probability within tol of
    the min-p threshold."""
    p, s = seq.params, copy.deepcopy(seq)
    if p.greedy:
        return False
    x = process_logits(raw, s, banned).astype(np.float64) / p.temperature
    if p.top_k > 0 and p.top_k < x.size:
        x = np.where(x < np.partition(x, -p.top_k)[-p.top_k], -np.inf, x)
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    if p.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        csum = np.cumsum(probs[order])
        if np.abs(csum - p.top_p).min() < tol:
            return True
        cut = int(np.searchsorted(csum, p.top_p)) + 1
        keep = np.zeros_like(probs, dtype=bool)
        keep[order[:cut]] = True
        probs = np.where(keep, probs, 0.0)
    if p.min_p > 0:
        thr = p.min_p * probs.max()
        if np.any(np.abs(probs[probs > 0] - thr) < tol * thr):
            return True
        probs = np.where(probs < thr, 0.0, probs)
    csum = np.cumsum(probs)
    return bool(np.abs(csum - s.rng.random() * csum[-1]).min() < tol * csum[-1])


# ---- a NumPy model of sampling.cu's algorithm -----------------------------------------------------------
def _keys(x):
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).copy()
    u[(u << np.uint32(1)) == 0] = 0                                              # -0 -> +0
    return np.where(u >> np.uint32(31), ~u, u | np.uint32(0x80000000)).astype(np.uint32)


def _radix_select(keys, w, lo, target):
    """The kernel's radix_select: (key, weight above, weight at) or None when target > total weight."""
    part = keys >= lo
    if int(w[part].sum()) < target:
        return None
    prefix = mask = above = at = 0
    for shift, bits in ((21, 11), (10, 11), (0, 10)):
        dm = (1 << bits) - 1
        sel = part & ((keys & np.uint32(mask)) == prefix)
        hist = np.zeros(2048, np.uint64)
        np.add.at(hist, ((keys[sel] >> np.uint32(shift)) & np.uint32(dm)).astype(np.int64), w[sel])
        gt = above
        for d in range(2047, -1, -1):
            h = int(hist[d])
            if gt < target <= gt + h:
                prefix, mask, above, at = prefix | (d << shift), mask | (dm << shift), gt, h
                break
            gt += h
    return prefix, above, at


def _twin(logits, pk):
    """sampling.cu on the host, row by row (modifies logits in place, as the kernel does)."""
    out = np.empty(pk.prm.shape[0], np.int64)
    for r, (prm, me) in enumerate(zip(pk.prm, pk.meta)):
        temp, top_p, min_p, u, rp, fp, pp, top_k = prm
        row, a, b, c, e = me
        x = logits[row]
        V = x.size
        rep, pairs, ban = pk.ids[a:b], pk.ids[b:c].reshape(-1, 2), pk.ids[c:e]
        x[rep] = np.where(x[rep] > 0, x[rep] / np.float32(rp), x[rep] * np.float32(rp))
        x[pairs[:, 0]] = (x[pairs[:, 0]].astype(np.float64) - (pairs[:, 1] * fp + pp)).astype(np.float32)
        x[ban] = -np.inf
        vmax = x.max()
        if not temp > 0 or vmax == -np.inf:
            out[r] = np.argmax(x) if not temp > 0 else V - 1
            continue
        keys, smax = _keys(x), float(vmax) / temp
        kkey = 0
        if 0 < top_k < V:
            kkey = _radix_select(keys, np.ones(V, np.uint64), 0, int(top_k))[0]
        e_ = np.where(keys >= kkey, np.exp(x.astype(np.float64) / temp - smax), 0.0)
        z = e_.sum()
        prob = e_ / z
        pkey, tie_last = kkey, V
        if top_p < 1.0:
            fx = (prob * 2.0**62).astype(np.uint64)
            target = int(np.ceil(top_p * 2.0**62))
            sel = _radix_select(keys, fx, kkey, target)
            if sel is not None:
                pkey, above, at = sel
                unit = int(fx[np.flatnonzero(keys == pkey)[0]])
                n_eq, need = at // unit, (target - above + unit - 1) // unit
                if need < n_eq:
                    tie_last = int(np.flatnonzero(keys == pkey)[need - 1])
        idx = np.arange(V)
        kept = np.where((keys > pkey) | ((keys == pkey) & (idx <= tie_last)), prob, 0.0)
        kept = np.where(kept < (min_p * (1.0 / z) if min_p > 0 else 0.0), 0.0, kept)
        csum = np.cumsum(kept)
        if not csum[-1] > 0:
            out[r] = V - 1
            continue
        hit = np.flatnonzero(csum > u * csum[-1])
        out[r] = hit[0] if hit.size else np.flatnonzero(kept)[-1]
    return out


# ---- CPU: packing, the algorithm, the engine's device path ----------------------------------------------
def test_layout_constants_match_the_kernel():
    src = fdlite_kernels.source("sampling")
    assert "enum { P_TEMP, P_TOP_P, P_MIN_P, P_U, P_REP, P_FREQ, P_PRES, P_TOP_K, NPRM };" in src
    assert "enum { M_ROW, M_REP, M_FREQ, M_BAN, M_END, NMETA };" in src
    assert (NPRM, NMETA) == (len(PRM), len(META)) == (8, 5)


def test_pack_layout_and_generator_use():
    rng = np.random.default_rng(0)
    seqs, banned = _seqs(rng, 500, 4, CASES["everything"])
    seqs[1].params = SamplingParams(temperature=0.0, repetition_penalty=1.2)   # greedy: no draw
    seqs[2].output_ids, seqs[2].all_ids = [], seqs[2].prompt_ids                # no outputs: no freq pairs
    seqs[3].params = SamplingParams(temperature=0.5)                            # no penalties at all
    ref = [copy.deepcopy(s.rng) for s in seqs]
    pk = pack(seqs, banned, [7, 0, 3, 2], 500)
    assert pk.prm.base is pk.buf and pk.meta.base is pk.buf and pk.ids.base is pk.buf
    assert pk.buf.nbytes == pk.prm.nbytes + pk.meta.nbytes + pk.ids.nbytes
    assert pk.meta[:, 0].tolist() == [7, 0, 3, 2]
    for r, s in enumerate(seqs):
        p = s.params
        temp, top_p, min_p, u, rp, fp, pp, top_k = pk.prm[r]
        if p.greedy:
            assert temp == 0 and u == 0 and s.rng.random() == ref[r].random()          # generator untouched
        else:
            assert temp == p.temperature and u == ref[r].random()                        # exactly one draw
            assert s.rng.random() == ref[r].random()
        assert (top_p, min_p, rp, top_k) == (p.top_p, p.min_p, p.repetition_penalty, p.top_k)
        assert (fp, pp) == (np.float32(p.frequency_penalty), np.float32(p.presence_penalty))
        _, a, b, c, e = pk.meta[r]
        rep, pairs, ban = pk.ids[a:b], pk.ids[b:c].reshape(-1, 2), pk.ids[c:e]
        want_rep = np.unique(s.all_ids) if p.repetition_penalty != 1 else []
        assert rep.tolist() == list(want_rep)
        if (p.frequency_penalty or p.presence_penalty) and s.output_ids:
            ids, counts = np.unique(s.output_ids, return_counts=True)
            assert pairs[:, 0].tolist() == ids.tolist() and pairs[:, 1].tolist() == counts.tolist()
        else:
            assert pairs.size == 0
        assert ban.tolist() == banned[r].tolist()
    assert pk.meta[-1, 4] == pk.ids.size and (pk.meta[1:, 1] == pk.meta[:-1, 4]).all()


def test_pack_rejects_banned_ids_outside_the_vocabulary():
    seqs, _ = _seqs(np.random.default_rng(1), 100, 1, CASES["temperature"])
    with pytest.raises(IndexError, match=r"banned token id 100 is outside the vocabulary \[0, 100\)"):
        pack(seqs, [np.array([3, 100])], [0], 100)
    assert pack([], [], [], 100).buf.nbytes == 0


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("ties", [False, True])
def test_kernel_algorithm_matches_host(case, ties):
    """The NumPy model of sampling.cu picks the host's tokens (ties exercise the top-p tie rule)."""
    rng = np.random.default_rng(sum(map(ord, case)) * 2 + ties)
    V, S = 3000, 24
    seqs, banned = _seqs(rng, V, S, CASES[case])
    raw = _logits(rng, S, V, ties)
    want, fresh = _host(raw, seqs, banned), copy.deepcopy(seqs)
    got = _twin(raw.copy(), pack(seqs, banned, range(S), V))
    bad = [i for i in np.flatnonzero(got != want) if not _near_boundary(raw[i], fresh[i], banned[i])]
    assert not bad, f"rows {bad}: twin {got[bad]} host {want[bad]}"


def test_kernel_algorithm_on_degenerate_rows():
    V = 50
    seqs, _ = _seqs(np.random.default_rng(2), V, 4, CASES["all"])
    seqs[1].params = seqs[3].params = SamplingParams(temperature=0.0)
    banned = [np.arange(V)] * 2 + [np.arange(V - 1)] * 2           # all banned; all but the last banned
    raw = _logits(np.random.default_rng(3), 4, V)
    raw[2:, 7] = np.float32(-3e38)
    with np.errstate(invalid="ignore"):
        want = _host(raw, seqs, banned)
    assert want.tolist() == [V - 1, 0, V - 1, V - 1]
    assert _twin(raw.copy(), pack(seqs, banned, range(4), V)).tolist() == want.tolist()


class _Dev:
    """Stands in for a cupy array of logits: anything that is not an np.ndarray takes the device path."""

    def __init__(self, a):
        self.a = a
        self.shape, self.ndim = a.shape, a.ndim


def _fake_sample(logits, seqs, banned_per_row, rows=None, raw_out=None):
    """gpu_sampler.sample with the NumPy model in place of the kernel (logprob rows on the host, as there)."""
    rows = np.arange(len(seqs)) if rows is None else np.asarray(rows)
    out = np.empty(len(seqs), np.int64)
    dev = [i for i, s in enumerate(seqs) if s.logprobs is None]
    for i in (i for i, s in enumerate(seqs) if s.logprobs is not None):
        raw = logits.a[rows[i]].copy()
        out[i] = choose(process_logits(raw, seqs[i], banned_per_row[i]), seqs[i])
        raw_out[i] = raw
    if dev:
        out[dev] = _twin(logits.a, pack([seqs[i] for i in dev], [banned_per_row[i] for i in dev], rows[dev],
                                        logits.a.shape[1]))
    return out


def test_engine_device_path_matches_host_path(monkeypatch):
    params = [SamplingParams(temperature=0.0, max_tokens=12),
              SamplingParams(temperature=0.9, top_p=0.9, max_tokens=12, seed=1),
              SamplingParams(temperature=1.2, top_k=20, min_p=0.05, repetition_penalty=1.3, max_tokens=12,
                             seed=2),
              SamplingParams(temperature=0.8, frequency_penalty=1.0, presence_penalty=0.5, min_tokens=5,
                             max_tokens=12, seed=3, logprobs=2),
              SamplingParams(temperature=1.0, n=3, max_tokens=10, seed=4, bad_words_token_ids=[1, 2, 3])]
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    with Model.load(FIXTURES / "hf" / "llama", device="cpu", max_model_len=64, max_num_seqs=4) as m:
        want = [[(o.outputs.token_ids, o.outputs.text, o.outputs.finish_reason, o.outputs.cumulative_logprob)
                 for o in m.generate(prompts, sp, use_tqdm=False)] for sp in params]
        host_runner = m.engine.runner
        monkeypatch.setattr(m.engine, "runner", lambda ids, meta: _Dev(host_runner(ids, meta)))
        monkeypatch.setattr(gpu_sampler, "sample", _fake_sample)
        got = [[(o.outputs.token_ids, o.outputs.text, o.outputs.finish_reason, o.outputs.cumulative_logprob)
                for o in m.generate(prompts, sp, use_tqdm=False)] for sp in params]
    assert got == want


# ---- GPU ------------------------------------------------------------------------------------------------
def _run_kernel(cp, logits, seqs, banned, rows):
    from fdlite_kernels.sampling import sample_rows

    pk = pack(seqs, banned, rows, logits.shape[1])
    out = cp.full(len(seqs), -7, dtype=np.int64)                              # poisoned: every row written
    sample_rows(logits, *pk.to_device(cp), out=out)
    return cp.asnumpy(out)


@gpu
@pytest.mark.parametrize("V", VS)
@pytest.mark.parametrize("S", [1, 5, 64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_matches_host(cp, V, S, case):
    rng = np.random.default_rng(V * 7 + S * 131 + sum(map(ord, case)))
    seqs, banned = _seqs(rng, V, S, CASES[case])
    raw = _logits(rng, S + 3, V)                                            # 3 spare rows the kernel skips
    rows = rng.permutation(S + 3)[:S]
    want, fresh = _host(raw[rows], seqs, banned), copy.deepcopy(seqs)
    dev = cp.asarray(raw)
    got = _run_kernel(cp, dev, seqs, banned, rows)
    bad = [i for i in np.flatnonzero(got != want) if not _near_boundary(raw[rows[i]], fresh[i], banned[i])]
    assert not bad, f"rows {bad}: kernel {got[bad]} host {want[bad]}"
    spare = np.setdiff1d(np.arange(S + 3), rows)
    assert np.array_equal(cp.asnumpy(dev[spare]), raw[spare])                 # untouched
    processed = np.stack([process_logits(raw[r], s, b) for r, s, b in zip(rows, seqs, banned)])
    assert np.array_equal(cp.asnumpy(dev[rows]), processed)                   # penalties bit-exact in place


@gpu
@pytest.mark.parametrize("V", VS)
@pytest.mark.parametrize("case", ["greedy", "top_k", "top_p", "top_p_small", "all", "everything"])
def test_kernel_matches_host_with_ties(cp, V, case):
    rng = np.random.default_rng(V + sum(map(ord, case)))
    seqs, banned = _seqs(rng, V, 32, CASES[case])
    raw = _logits(rng, 32, V, ties=True)
    want, fresh = _host(raw, seqs, banned), copy.deepcopy(seqs)
    got = _run_kernel(cp, cp.asarray(raw), seqs, banned, np.arange(32))
    bad = [i for i in np.flatnonzero(got != want) if not _near_boundary(raw[i], fresh[i], banned[i])]
    assert not bad, f"rows {bad}: kernel {got[bad]} host {want[bad]}"


@gpu
@pytest.mark.parametrize("V", [1, 2, 1000, 4097, 151936])
def test_kernel_degenerate_rows(cp, V):
    """All tokens banned (greedy -> 0, sampled -> V - 1, as the host), all but one banned, constant rows."""
    rng = np.random.default_rng(V)
    fields = [CASES[c] for c in ("greedy", "all", "everything", "top_p", "greedy", "min_p")]
    seqs = [_seqs(rng, V, 1, f)[0][0] for f in fields]
    banned = [np.arange(V), np.arange(V), np.arange(V - 1), np.arange(1, V), np.zeros(0, np.int64),
              np.zeros(0, np.int64)]
    raw = _logits(rng, 6, V)
    raw[4:] = 1.5                                                   # constant rows: every value tied
    with np.errstate(invalid="ignore"):
        want = _host(raw, seqs, banned)
    got = _run_kernel(cp, cp.asarray(raw), seqs, banned, np.arange(6))
    assert got.tolist() == want.tolist()


@gpu
@pytest.mark.parametrize("S", [1, 16, 256])
def test_kernel_many_draws_of_one_row(cp, S):
    """2048 draws from one distribution, S rows per launch: the host's draws, one by one."""
    V, N = 32000, 2048
    row = (np.random.default_rng(S).standard_normal(V) * 2).astype(np.float32)
    fields = dict(temperature=0.8, top_k=50, top_p=0.9)
    seqs = [SimpleNamespace(params=SamplingParams(**fields), rng=np.random.default_rng(i), all_ids=[],
                            output_ids=[], logprobs=None) for i in range(N)]
    none = [np.zeros(0, np.int64)] * N
    want = _host(np.broadcast_to(row, (N, V)), seqs, none)
    dev = cp.asarray(np.tile(row, (S, 1)))
    got = np.concatenate([_run_kernel(cp, dev.copy(), seqs[i:i + S], none[:S], np.arange(S))
                          for i in range(0, N, S)])
    assert np.array_equal(got, want)


@gpu
def test_sample_sends_logprob_rows_through_the_host(cp):
    V, S = 32000, 6
    rng = np.random.default_rng(5)
    seqs, banned = _seqs(rng, V, S, CASES["everything"])
    for i in (1, 4):
        seqs[i].logprobs = []
    raw = _logits(rng, S, V)
    want = _host(raw, seqs, banned)
    raws = {}
    got = gpu_sampler.sample(cp.asarray(raw), seqs, banned, raw_out=raws)
    assert got.dtype == np.int64 and got.tolist() == want.tolist()
    assert sorted(raws) == [1, 4] and all(np.array_equal(raws[i], raw[i]) for i in raws)


@gpu
def test_engine_with_device_logits_matches_host(cp):
    """The engine fed cupy logits (the GPU runner's contract) gives the host path's outputs."""
    params = [SamplingParams(temperature=0.0, max_tokens=12),
              SamplingParams(temperature=0.9, top_p=0.9, top_k=30, max_tokens=12, seed=1, logprobs=1),
              SamplingParams(temperature=1.1, min_p=0.02, repetition_penalty=1.2, frequency_penalty=0.4,
                             min_tokens=4, max_tokens=12, seed=2, n=2)]
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    with Model.load(FIXTURES / "hf" / "llama", device="cpu", max_model_len=64, max_num_seqs=4) as m:
        want = [[o.outputs.token_ids for o in m.generate(prompts, sp, use_tqdm=False)] for sp in params]
        host_runner = m.engine.runner
        m.engine.runner = lambda ids, meta: cp.asarray(host_runner(ids, meta))
        got = [[o.outputs.token_ids for o in m.generate(prompts, sp, use_tqdm=False)] for sp in params]
    assert got == want


@gpu
def test_launcher_errors(cp):
    from fdlite_kernels.sampling import sample_rows

    x = cp.zeros((2, 10), np.float32)
    prm, meta, ids = cp.zeros((2, NPRM)), cp.zeros((2, NMETA), np.int32), cp.zeros(0, np.int32)
    with pytest.raises(ValueError, match="prm has 7 columns, expected 8"):
        sample_rows(x, cp.zeros((2, 7)), meta, ids)
    with pytest.raises(ValueError, match=r"meta has shape \(3, 5\), expected \(2, 5\)"):
        sample_rows(x, prm, cp.zeros((3, NMETA), np.int32), ids)
    with pytest.raises(ValueError, match="logits: dtype float64, expected float32"):
        sample_rows(cp.zeros((2, 10)), prm, meta, ids)
