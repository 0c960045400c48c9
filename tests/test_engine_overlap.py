"""Overlapped decode (Engine.step launches step t + 1 before it reads step t's tokens) on the CPU: the runner and
the device sampler are stood in for by NumPy twins with the GPU's interfaces (logits that are not an np.ndarray,
``launch_decode``, a Pending-like handle), so the engine's GPU control flow runs here. Outputs must equal the plain
engine's token for token, whatever arrives, stops or is aborted mid-flight, and every KV block must come back."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st

from fdlite import Model, SamplingParams
from fdlite.engine.sampler import choose, process_logits

LLAMA = FIXTURES / "hf" / "llama"
MAX_LEN = 48


class Dev:
    """A 'device' array: the engine may not treat it as host logits (not an np.ndarray)."""

    def __init__(self, a):
        self.a = a
        self.shape = a.shape

    def __len__(self):
        return len(self.a)


class Pending:
    def __init__(self, toks):
        self.dev = Dev(toks)
        self.reads = 0

    def get(self):
        self.reads += 1
        return self.dev.a


def _host_sample(engine, logits, rows):
    return [choose(process_logits(logits.a[row], seq, engine._banned(seq)), seq) for row, seq in rows]


def _gpu_like(m: Model, launches: list):
    """Give m's engine the GPU runner's and sampler's interfaces, computing on the host."""
    eng, real = m.engine, m.engine.runner

    class Runner:
        def __call__(self, ids, meta):
            return Dev(real(ids, meta))

        def wait(self):
            launches.append("wait")

        replayed = True                      # a graph served the plain step (the GPU runner's flag)

        def launch_decode(self, tokens, meta):
            launches.append(meta.batch)
            assert len(tokens.dev) == meta.batch
            return Dev(real(np.asarray(tokens.dev.a, np.int64), meta))

    eng.runner = Runner()
    eng._launch_sampling = lambda logits, rows: Pending(np.array(_host_sample(eng, logits, rows), np.int64))
    eng._choose_on_device = lambda logits, rows: {
        row: (tok, logits.a[row] if seq.logprobs is not None else None)
        for (row, seq), tok in zip(rows, _host_sample(eng, logits, rows))}


def _run(reqs, block_size, max_num_seqs, overlap, abort_at=None, prefix=True):
    launches: list = []
    with Model.load(LLAMA, device="cpu", max_model_len=MAX_LEN, block_size=block_size, max_num_seqs=max_num_seqs,
                    enable_prefix_caching=prefix) as m:
        if overlap is not None:
            _gpu_like(m, launches)
            m.engine.overlap = overlap
        eng, plan = m.engine, []
        for at, prompt, sp in reqs:
            plan.append((at, m._prepare([prompt], sp)[0][0]))
        pending, step, finished = sorted(plan, key=lambda r: r[0]), 0, []
        while pending or eng.has_work():
            while pending and pending[0][0] <= step:
                eng.add(pending.pop(0)[1])
            if abort_at is not None and step == abort_at and eng.running:
                eng.abort(eng.running[0])
            with eng.lock:
                finished += [s for s in eng.step() if s.finished]
            eng.blocks.check()
            step += 1
            assert step < 5000, "no progress"
        assert eng.blocks.num_free == eng.blocks.num_blocks and not eng.has_work()
        seqs = [seq for _, seq in plan]
        assert len({id(s) for s in finished}) == len([s for s in seqs if s.finish_reason != "abort"])
        return [(s.output_ids, s.finish_reason) for s in seqs], launches


requests = st.lists(st.tuples(
    st.integers(0, 6),                                     # arrival step
    st.integers(1, 20),                                    # prompt length
    st.integers(1, 14),                                    # max_tokens
    st.sampled_from([0.0, 0.9]),                           # greedy or seeded sampling
    st.booleans(),                                         # stop on a token id the model is likely to produce
    st.integers(0, 2**31)), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(reqs=requests, block_size=st.sampled_from([2, 4, 8]), max_num_seqs=st.integers(1, 5),
       prefix=st.booleans(), abort=st.sampled_from([None, 3, 7]))
def test_overlapped_decode_equals_plain_steps(reqs, block_size, max_num_seqs, prefix, abort):
    plan = []
    for at, n, max_tokens, temp, stop, seed in reqs:
        rng = np.random.default_rng(seed)
        sp = SamplingParams(temperature=temp, max_tokens=max_tokens, seed=seed, ignore_eos=True,
                            stop_token_ids=[int(t) for t in rng.integers(0, 256, 40)] if stop else None,
                            repetition_penalty=1.2 if seed % 3 == 0 else 1.0)
        plan.append((at, rng.integers(0, 256, n).tolist(), sp))
    want, _ = _run(plan, block_size, max_num_seqs, overlap=False, prefix=prefix)
    got, _ = _run(plan, block_size, max_num_seqs, overlap=True, abort_at=abort, prefix=prefix)
    for (ids, why), (ref, ref_why) in zip(got, want):      # the CPU engine is batch-invariant: arrival times and
        if why == "abort":                                  # neighbours do not change a sequence's tokens
            assert ids == ref[:len(ids)]
        else:
            assert (ids, why) == (ref, ref_why)


def test_overlap_runs_and_can_be_turned_off():
    """Steady decode of a full batch: all but the first decode steps go through launch_decode; overlap = False
    never calls it, and the outputs agree."""
    reqs = [(0, list(range(5 + i)), SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)) for i in range(3)]
    on, launches = _run(reqs, 4, 4, overlap=True)
    off, none = _run(reqs, 4, 4, overlap=False)
    assert on == off and not [b for b in none if b != "wait"]
    steps = [b for b in launches if b != "wait"]
    assert len(steps) >= 7 and set(steps) == {3}
    # the last launch computed a step nobody samples (every sequence stopped): the engine waits for it at once
    last = max(i for i, b in enumerate(launches) if b != "wait")
    assert launches[last + 1] == "wait"


def test_logprobs_and_admissions_drain_the_overlap():
    """A sequence that wants logprobs keeps the batch on plain steps; a late arrival is admitted after a drain."""
    sp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    lp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=0)
    reqs = [(0, [1, 2, 3], lp), (0, [4, 5], sp)]
    _, launches = _run(reqs, 4, 4, overlap=True)
    assert not [b for b in launches if b != "wait"]
    reqs = [(0, [1, 2, 3], sp), (3, [4, 5, 6, 7], sp)]
    got, launches = _run(reqs, 4, 4, overlap=True)
    want, _ = _run(reqs, 4, 4, overlap=False)
    assert got == want and [b for b in launches if b != "wait"]


@pytest.mark.parametrize("budget", [1, 2])
def test_token_budget_below_the_batch_never_overlaps_a_partial_batch(budget):
    """max_num_batched_tokens below the running count: plain steps schedule a subset; the overlap must not run
    the others (it needs every running sequence in the batch)."""
    sp = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    reqs = [(0, [1, 2], sp), (0, [3, 4], sp), (0, [5, 6], sp)]
    with Model.load(LLAMA, device="cpu", max_model_len=MAX_LEN, block_size=4, max_num_seqs=4,
                    max_num_batched_tokens=budget) as m:
        plain = [o.outputs.token_ids for o in m.generate([r[1] for r in reqs], sp, use_tqdm=False)]
    with Model.load(LLAMA, device="cpu", max_model_len=MAX_LEN, block_size=4, max_num_seqs=4,
                    max_num_batched_tokens=budget) as m:
        launches: list = []
        _gpu_like(m, launches)
        m.engine.overlap = True
        got = [o.outputs.token_ids for o in m.generate([r[1] for r in reqs], sp, use_tqdm=False)]
    assert got == plain
    assert all(b <= budget for b in launches if b != "wait")


@pytest.mark.parametrize("overlap", [False, True])
def test_engine_close_mid_run_ends_everything(overlap):
    """Model.close's Engine.close with a step in flight and sequences running and waiting: each ends as "abort",
    every block comes back, the step in flight is dropped and step() does nothing from then on."""
    sp = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    with Model.load(LLAMA, device="cpu", max_model_len=MAX_LEN, block_size=4, max_num_seqs=2) as m:
        _gpu_like(m, [])
        eng = m.engine
        eng.overlap = overlap
        seqs = [g[0] for g in m._prepare([[1, 2, 3], [4, 5], [6, 7, 8, 9]], sp)]
        for s in seqs[:2]:
            eng.add(s)
        with eng.lock:
            for _ in range(4):
                eng.step()
        eng.add(seqs[2])                            # waits: both slots are taken
        with eng.lock:
            assert (eng._inflight is not None) == overlap and eng.waiting
            eng.close()
            assert eng.step() == [] and not eng.has_work() and eng._inflight is None
        assert all(s.finish_reason == "abort" for s in seqs)
        assert eng.blocks.num_free == eng.blocks.num_blocks
