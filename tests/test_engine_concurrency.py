"""One Model shared by threads and asyncio tasks: requests share the running batch, outputs are the same as
one at a time, cancellation returns KV blocks, generate() feeds lazily and shows tokens/s."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from conftest import FIXTURES

from fdlite import Model, SamplingParams
from fdlite.engine import driver

LLAMA = FIXTURES / "hf" / "llama"
SP = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=0)
PROMPTS = [np.random.default_rng(i).integers(0, 256, 3 + 2 * i).tolist() for i in range(8)]


@pytest.fixture(scope="module")
def model():
    with Model.load(LLAMA, device="cpu", max_model_len=48, max_num_seqs=8) as m:
        yield m


@pytest.fixture(scope="module")
def alone(model):
    return [model.generate([p], SP, use_tqdm=False)[0].outputs for p in PROMPTS]


def _free(m):
    return m.engine.blocks.num_free == m.engine.blocks.num_blocks and not m.engine.has_work()


def test_threads_share_batches(model, alone):
    """Four threads generate at once: their requests run in shared steps and give the one-at-a-time outputs."""
    model.engine.peak_batch = 0
    results, errors, barrier = {}, [], threading.Barrier(4)

    def work(t):
        try:
            barrier.wait()
            results[t] = model.generate(PROMPTS[2 * t:2 * t + 2], SP, use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors and len(results) == 4
    got = [o.outputs for t in range(4) for o in results[t]]
    assert [(o.token_ids, o.cumulative_logprob) for o in got] == [(o.token_ids, o.cumulative_logprob) for o in alone]
    assert model.engine.peak_batch > 2          # more than one thread's two requests in one step
    assert _free(model)


def test_stream_and_generate_from_threads(model, alone):
    pieces, outs = [], {}
    t = threading.Thread(target=lambda: outs.setdefault("g", model.generate(PROMPTS[:4], SP, use_tqdm=False)))
    t.start()
    for piece in model.stream(PROMPTS[5], SP):
        pieces.append(piece)
    t.join(60)
    assert [x for p in pieces for x in p.token_ids] == alone[5].token_ids and pieces[-1].finished
    assert [o.outputs.token_ids for o in outs["g"]] == [o.token_ids for o in alone[:4]]
    assert _free(model)


def test_astream_gather_and_cancel(model, alone):
    async def collect(p):
        return [x async for piece in model.astream(p, SP) for x in piece.token_ids]

    async def cancelled():
        async def consume():
            async for _ in model.astream(PROMPTS[7], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)):
                started.set()
        started = asyncio.Event()
        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def main():
        outs = await asyncio.gather(collect(PROMPTS[0]), collect(PROMPTS[3]), collect(PROMPTS[6]), cancelled())
        return outs[:3]

    got = asyncio.run(main())
    assert got == [alone[0].token_ids, alone[3].token_ids, alone[6].token_ids]
    assert _free(model)


def test_failing_step_aborts_and_recovers(model, alone):
    """A forward that raises: generate() raises, every block comes back, the next call works."""
    real = model.engine.runner
    calls = [0]

    def flaky(ids, meta):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("boom")
        return real(ids, meta)

    model.engine.runner = flaky
    try:
        with pytest.raises(RuntimeError, match="boom"):
            model.generate(PROMPTS, SP, use_tqdm=False)
    finally:
        model.engine.runner = real
    assert _free(model)
    assert model.generate(PROMPTS[:1], SP, use_tqdm=False)[0].outputs.token_ids == alone[0].token_ids


def test_feeding_is_lazy(model):
    """driver.complete keeps at most `limit` of the caller's sequences alive, however many requests come."""
    made, done, worst = [0], [0], [0]

    def groups():
        for i in range(300):
            made[0] += 1
            worst[0] = max(worst[0], made[0] - done[0])
            yield i, model._prepare([PROMPTS[i % 8]], SamplingParams(temperature=0, max_tokens=2))[0]

    order = []
    for i, _ in driver.complete(model.engine, groups(), limit=16):
        done[0] += 1
        order.append(i)
    assert sorted(order) == list(range(300)) and worst[0] <= 17
    assert _free(model)


def test_generate_order_progress_and_many_prompts(model, capsys):
    outs = model.generate([PROMPTS[i % 8] for i in range(200)], SamplingParams(temperature=0, max_tokens=3),
                          use_tqdm=True)
    assert [o.prompt_token_ids for o in outs] == [PROMPTS[i % 8] for i in range(200)]
    err = capsys.readouterr().err
    assert "200/200" in err and "tok_s=" in err
    assert _free(model)
