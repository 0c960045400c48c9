"""Callers' side of the engine: feed requests lazily, collect them as they finish, stream their pieces.

Nothing here holds the engine's lock across a yield: a caller adds its sequences, then ``Engine.pump``s until
one of them moves, so any number of threads (or asyncio tasks, through ``asyncio.to_thread``) share the
running batch. Whatever leaves early (an exception, a closed generator, a cancelled task) aborts its own
unfinished sequences, which returns their KV blocks.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Callable, Iterable, Iterator

from ..sampling_params import RequestOutput, StreamPiece
from .engine import Engine
from .sequence import Sequence


def complete(engine: Engine, groups: Iterable[tuple[object, list[Sequence]]], limit: int,
             on_step: Callable[[], None] | None = None) -> Iterator[tuple[object, list[Sequence]]]:
    """Run (tag, sequences) groups through the engine; yield each group once all its sequences finished, in
    completion order. ``groups`` is read lazily, keeping at most ``limit`` of this caller's sequences in the
    engine, so memory does not grow with the number of requests."""
    ev = threading.Event()
    live: dict[int, tuple[object, list[Sequence]]] = {}
    it, exhausted, in_flight = iter(groups), False, 0
    try:
        while True:
            ev.clear()                      # before looking, so a wake-up during the look is not lost
            for key in [k for k, (_, seqs) in live.items() if all(s.finished for s in seqs)]:
                tag, seqs = live.pop(key)
                in_flight -= len(seqs)
                yield tag, seqs
            while not exhausted and in_flight < limit:
                nxt = next(it, None)
                if nxt is None:
                    exhausted = True
                    break
                for s in nxt[1]:
                    s.waker = ev
                    engine.add(s)
                live[id(nxt)] = nxt
                in_flight += len(nxt[1])
            if not live:
                return
            engine.pump(ev)
            if on_step is not None:
                on_step()
    finally:
        for _, seqs in live.values():
            for s in seqs:
                engine.abort(s)


def request_output(seq: Sequence) -> RequestOutput:
    return RequestOutput(request_id=seq.request_id if seq.params.n == 1 else f"{seq.request_id}-{seq.index}",
                         prompt=seq.prompt, prompt_token_ids=list(seq.prompt_ids), outputs=seq.completion(),
                         finished=True, metrics=seq.metrics, num_cached_tokens=seq.num_cached_tokens)


def generate(engine: Engine, count: int, make_group: Callable[[int], list[Sequence]], progress: bool
             ) -> list[RequestOutput]:
    """Outputs of ``count`` prompts in input order (n > 1: n consecutive outputs per prompt). ``make_group(i)``
    builds prompt i's sequences when the engine has room for them; each finished Sequence is dropped as soon
    as its RequestOutput exists."""
    results: list[list[RequestOutput] | None] = [None] * count
    bar, t0, base = None, time.time(), engine.num_generated
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(total=count, desc="generate", unit="req")

    def show():
        if bar is not None:
            dt = max(time.time() - t0, 1e-9)
            bar.set_postfix(tok_s=f"{(engine.num_generated - base) / dt:.1f}", refresh=False)
            bar.refresh()

    try:
        groups = ((i, make_group(i)) for i in range(count))
        for i, seqs in complete(engine, groups, 4 * engine.max_num_seqs, show if bar is not None else None):
            results[i] = [request_output(s) for s in seqs]
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            show()
            bar.close()
    return [o for group in results for o in group]


def _pieces(seq: Sequence, hold: int) -> Iterator[StreamPiece]:
    """What is new in ``seq`` since the last call, as at most one StreamPiece per call."""
    sent_text = sent_ids = 0
    while True:
        finished = seq.finished
        safe = len(seq.text) if finished else max(sent_text, len(seq.text) - hold)   # hold back a stop string
        new_ids = seq.output_ids[sent_ids:]
        if safe > sent_text or new_ids or finished:
            yield StreamPiece(seq.text[sent_text:safe], new_ids, finished, seq.finish_reason if finished else None)
            sent_text, sent_ids = safe, sent_ids + len(new_ids)
            if finished:
                return
        else:
            yield None


def stream(engine: Engine, seq: Sequence, hold: int) -> Iterator[StreamPiece]:
    """Yield ``seq``'s pieces as tokens arrive; closing the generator aborts the sequence."""
    ev = threading.Event()
    seq.waker = ev
    engine.add(seq)
    new = _pieces(seq, hold)
    try:
        while True:
            ev.clear()
            piece = next(new)
            if piece is not None:
                yield piece
                if piece.finished:
                    return
            engine.pump(ev)
    finally:
        engine.abort(seq)


async def astream(engine: Engine, seq: Sequence, hold: int):
    """``stream`` for asyncio: engine steps run in a worker thread, so the event loop stays free and other
    tasks' requests join the same batch. Cancelling the consuming task aborts the sequence."""
    ev = threading.Event()
    seq.waker = ev
    engine.add(seq)
    new = _pieces(seq, hold)
    try:
        while True:
            ev.clear()
            piece = next(new)
            if piece is not None:
                yield piece
                if piece.finished:
                    return
            await asyncio.to_thread(engine.pump, ev)
    finally:
        engine.abort(seq)      # sets the waker, so a worker still pumping for us returns
