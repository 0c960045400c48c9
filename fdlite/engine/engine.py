"""Continuous batching: every step admits waiting sequences (chunked prefill, within a token budget),
runs one forward over prefill chunks and decodes together, samples, and retires finished sequences.

When KV blocks run out, the newest running sequence is preempted: its blocks are freed and it waits to be
recomputed from its prompt plus what it generated so far. Nothing is lost and nothing crashes.

With prefix caching (the block manager's), a sequence admitted with an empty block table first takes the
cached full blocks its tokens start with and computes only the rest; at least its last token is always
computed, since its logits are needed.

Overlapped decode (GPU): while every running sequence decodes, the engine launches step t + 1 before it reads
step t's tokens. The sampler's output stays on the device and is step t + 1's input; the host then waits for step
t's tokens only (a copy queued right behind the sampling), records them (stops, detokenizing) and queues step
t + 1's sampling while the GPU runs its forward, so the host's share of a step hides behind the GPU. A sequence
that stops at step t has computed one position more in step t + 1, into a block position nobody else owns (a
partial or fresh block, never a shared prefix block), and that row is not sampled. The same sequences and the same
draws of their generators in the same order; ``step`` returns step t's sequences one call later. Anything else (an
admission, a prefill chunk, a preemption, logprobs, an abort, no graph for the batch) drains the overlap and the
next step is a plain one. On the GPU a step's logits depend on its row count (kernel plans), and the overlapped
step keeps stopped sequences' rows one step longer, so tokens can differ from plain steps by rounding where that
changes a plan; with the same plans (and on the CPU twin) they are the same.
It is on by default (``engine.overlap = False`` runs plain steps): on the H100 it gives ~4-5% at batch 1 and 32.
An earlier build crashed (illegal address) at batch 32 in runs of several models in one process; the hazards found
then are fixed (the kernels' arrival counters came from a graph runner's memory pool that dies with its model, the
static inputs were zeroed on another stream, a last step could outlive Model.close) and the multi-model stress runs
clean since (BENCHMARKS.md, GPU end to end).

Threads: ``lock`` guards all engine state. Callers never step the engine under their own lock; they call
``pump(event)``, which runs steps for everyone until the caller's event is set (one of its sequences got a
token or finished). Whichever caller holds ``lock`` steps; the others wait on their event, so concurrent
callers share each step's batch instead of taking turns with whole calls.
"""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from ..kv.base import StepMeta
from .block_manager import BlockManager
from .sampler import choose, logprob_entry, process_logits
from .sequence import FINISHED, RUNNING, WAITING, Sequence


_NO_IDS = np.zeros(0, np.int64)
_NO_IDS.flags.writeable = False                              # shared by every step that bans nothing


class Engine:
    """runner(ids (N,), meta) -> logits (S, V) float32 for meta.logit_rows: a NumPy array (sampled row by row
    on the host) or a CuPy array (sampled on the GPU by gpu_sampler; only the chosen ids come back)."""

    def __init__(self, runner, blocks: BlockManager, tokenizer, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int):
        self.runner, self.blocks, self.tokenizer = runner, blocks, tokenizer
        self.max_num_seqs, self.max_num_batched_tokens, self.max_model_len = \
            max_num_seqs, max_num_batched_tokens, max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.lock = threading.Lock()
        self.num_preemptions = self.num_steps = self.peak_batch = 0
        self.num_cached_tokens = 0             # prompt tokens served from the prefix cache
        self.num_generated = 0                 # tokens sampled, over all requests
        self.overlap = True                    # overlapped decode where the runner has launch_decode (GPU graphs)
        self._inflight = None                  # (sequences, gpu_sampler.Pending): a step sampled, not yet recorded
        self._slot = 0                         # alternates the Pending host buffers
        self._pinned: dict = {}                # this engine's Pending host buffers
        self._fed = None                       # the Pending whose ids the last launched step reads (kept alive)
        self.closed = False

    def add(self, seq: Sequence) -> None:
        with self.lock:
            self.waiting.append(seq)

    def has_work(self) -> bool:
        return not self.closed and bool(self.waiting or self.running or self._inflight)

    def abort(self, seq: Sequence) -> None:
        """Stop a sequence now and return its KV blocks (waits for a step in progress to end)."""
        with self.lock:
            if seq.finished:
                return
            if seq in self.running:
                self.running.remove(seq)
            elif seq in self.waiting:
                self.waiting.remove(seq)
            self._finish(seq, "abort")

    def pump(self, event: threading.Event, poll: float = 0.005) -> None:
        """Step the engine (or let another thread step it) until ``event`` is set or nothing is left to do."""
        while not event.is_set():
            if self.lock.acquire(blocking=False):
                try:
                    if event.is_set() or not self.has_work():
                        return
                    for seq in self.step():
                        if seq.waker is not None:
                            seq.waker.set()
                finally:
                    self.lock.release()
            else:
                event.wait(poll)   # another thread is stepping; our sequences advance in its batch

    # --- scheduling ----------------------------------------------------------------------------------
    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq.block_table)
        seq.block_hashes = []
        seq.num_computed, seq.status = 0, WAITING
        seq.metrics.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _schedule(self) -> list[tuple[Sequence, int]]:
        budget, batch = self.max_num_batched_tokens, []
        for seq in list(self.running):                      # oldest first: they hold blocks already
            if seq.status != RUNNING or budget == 0:
                continue
            n = min(seq.pending, budget)
            while not self.blocks.allocate(seq.block_table, seq.num_computed + n):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.status == RUNNING:
                batch.append((seq, n))
                budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not seq.block_table:                         # prefix cache: reuse full blocks, keep >= 1 token
                ids = seq.all_ids
                seq.block_table, seq.block_hashes = self.blocks.match_prefix(ids, (len(ids) - 1)
                                                                             // self.blocks.block_size)
                seq.num_computed = len(seq.block_table) * self.blocks.block_size
            n = min(seq.pending, budget)
            if not self.blocks.allocate(seq.block_table, seq.num_computed + n):
                self.blocks.free(seq.block_table)           # give the matched blocks back, wait for more
                seq.block_hashes, seq.num_computed = [], 0
                break
            self.waiting.popleft()
            seq.status = RUNNING
            self.num_cached_tokens += seq.num_computed
            if seq.metrics.inference_start_time is None:
                seq.num_cached_tokens = seq.num_computed
                seq.metrics.inference_start_time = time.time()
                seq.metrics.time_in_queue = seq.metrics.inference_start_time - seq.metrics.arrival_time
            self.running.append(seq)
            batch.append((seq, n))
            budget -= n
        return batch

    # --- one step ------------------------------------------------------------------------------------
    def step(self) -> list[Sequence]:
        """Run one forward step. Returns the sequences that got a new token or finished (overlapped decode: of
        the step before)."""
        if self.closed:
            return []
        if self._inflight is not None:
            return self._step_overlapped()
        batch = self._schedule()
        if not batch:
            if self.running or self.waiting:   # cannot happen with >= max_model_len tokens of blocks; guard anyway
                raise RuntimeError(f"scheduler stalled: {len(self.waiting)} waiting, {len(self.running)} running, "
                                   f"{self.blocks.num_free} free blocks")
            return []
        ids, meta = self._step_inputs(batch)
        logits = self.runner(ids, meta)                                           # (B, V)
        self.num_steps += 1
        self.peak_batch = max(self.peak_batch, len(batch))
        on_host = isinstance(logits, np.ndarray)           # else a cupy array: sample every row at once there
        if not on_host and self._can_overlap(batch):
            seqs = [seq for seq, _ in batch]
            for seq in seqs:
                seq.num_computed += 1
                self._commit(seq, seq.num_computed)
            self._inflight = (seqs, self._launch_sampling(logits, list(enumerate(seqs))), logits)
            return []
        picked = {} if on_host else self._choose_on_device(
            logits, [(row, seq) for row, (seq, n) in enumerate(batch) if seq.pending == n])
        touched = []
        for row, (seq, n) in enumerate(batch):
            seq.num_computed += n
            self._commit(seq, seq.num_computed)
            if seq.pending:                                   # mid-prompt chunk: nothing to sample yet
                continue
            tok, raw = (self._choose(seq, logits[row]), logits[row]) if on_host else picked[row]
            self._record(seq, tok, raw)
            touched.append(seq)
        return touched

    # --- overlapped decode ---------------------------------------------------------------------------------
    def _can_overlap(self, batch: list[tuple[Sequence, int]]) -> bool:
        """Every running sequence decodes one token, nobody waits to be admitted, none wants logprobs (those rows
        are sampled on the host), and the runner can launch a step from ids on the device."""
        return (self._keeps_overlapping(batch)
                and hasattr(self.runner, "launch_decode") and getattr(self.runner, "replayed", False)
                and all(n == 1 and seq.pending == 1 and seq.logprobs is None for seq, n in batch))

    def _keeps_overlapping(self, rows: list) -> bool:
        """The overlap is on, nobody waits to be admitted and rows (one per sequence) are every running one."""
        return self.overlap and not self.waiting and len(rows) == len(self.running)

    def _launch_sampling(self, logits, rows: list[tuple[int, Sequence]]):
        """Queue the sampling of rows (row, seq) of the device logits; their tokens come back as a Pending."""
        from .gpu_sampler import Pending, launch  # noqa: PLC0415 - GPU only

        seqs = [seq for _, seq in rows]
        self._slot ^= 1
        return Pending(launch(logits, seqs, [self._banned(seq) for seq in seqs], [row for row, _ in rows]),
                       self._pinned, self._slot)

    def _commit(self, seq: Sequence, upto: int) -> None:
        """Name the blocks of seq that [0, upto) fills, for the prefix cache (all its tokens known, K/V computed)."""
        if self.blocks.enable_prefix_caching and upto // self.blocks.block_size > len(seq.block_hashes):
            self.blocks.commit(seq.block_table, seq.block_hashes, seq.all_ids, upto)

    def _step_overlapped(self) -> list[Sequence]:
        """Launch the next decode step of the sequences in flight (their last tokens still on the device), then
        record the tokens of the step before and queue the new step's sampling. Falls back to recording only
        (the next step is a plain one) when the batch would change or no graph serves it."""
        seqs, pending, _ = self._inflight
        self._inflight = None
        logits = None
        if (self._keeps_overlapping(seqs) and all(s.status == RUNNING for s in seqs)
                and all(self.blocks.allocate(s.block_table, s.num_computed + 1) for s in seqs)):
            meta = StepMeta.build([(s.num_computed, 1, s.block_table) for s in seqs], self.blocks.block_size)
            logits = self.runner.launch_decode(pending, meta)
        # The launched step reads pending.dev on the runner's stream: keep it referenced until that step is known
        # done, so its memory is not reused meanwhile. The ids the step before read (prior) are safe to free once
        # pending.get() below returns: that sampling was queued behind the step before.
        prior, self._fed = self._fed, (pending if logits is not None else None)
        if logits is not None:
            self.num_steps += 1
            self.peak_batch = max(self.peak_batch, len(seqs))
            for s in seqs:
                s.num_computed += 1
        touched = []
        for seq, tok in zip(seqs, pending.get()):
            if seq.status != RUNNING:                         # aborted while its step ran
                continue
            self._commit(seq, len(seq.prompt_ids) + len(seq.output_ids))   # what a plain step had committed
            self._record(seq, int(tok), None)
            touched.append(seq)
        del prior
        if logits is None:
            return touched
        live = [(row, s) for row, s in enumerate(seqs) if s.status == RUNNING]
        if not live:            # every sequence stopped: nothing will read this step, so wait for it here (it
            self.sync()         # writes K/V into blocks just freed, and reads weights a close() may free next)
            return touched
        if self._keeps_overlapping(live):
            self._inflight = ([s for _, s in live], self._launch_sampling(logits, live), logits)
            return touched
        picked = self._choose_on_device(logits, live)         # the batch changes: sample this step now
        seen = {id(s) for s in touched}
        for row, seq in live:
            tok, raw = picked[row]
            self._commit(seq, seq.num_computed)
            self._record(seq, tok, raw)
            if id(seq) not in seen:
                touched.append(seq)
        return touched

    def sync(self) -> None:
        """Wait for every step the engine has launched on the device (the overlapped decode leaves one running
        past step()); the sampled tokens in flight stay for the next step to record. Model.close calls it."""
        if self._inflight is not None:
            self._inflight[1].get()
        wait = getattr(self.runner, "wait", None)
        if wait is not None:
            wait()
        self._fed = None

    def close(self) -> None:
        """Stop for good (Model.close, with ``lock`` held): wait for the device, drop the step in flight, end every
        sequence (finish reason "abort", waking its caller), and make step() a no-op."""
        self.sync()
        self._inflight = None
        for seq in list(self.running) + list(self.waiting):
            if seq in self.waiting:
                self.waiting.remove(seq)
            self._finish(seq, "abort")
        self.closed = True

    def _step_inputs(self, batch: list[tuple[Sequence, int]]) -> tuple[np.ndarray, StepMeta]:
        """The step's new token ids (N,) int64 and its StepMeta. Each sequence's tokens are sliced without
        all_ids (a copy of its whole context, per sequence per step) and go into one flat list: one array."""
        ids: list[int] = []
        for seq, n in batch:
            ids += seq.ids(seq.num_computed, seq.num_computed + n)
        meta = StepMeta.build([(seq.num_computed, n, seq.block_table) for seq, n in batch], self.blocks.block_size)
        return np.array(ids, np.int64), meta

    @staticmethod
    def _banned(seq: Sequence) -> np.ndarray:
        p = seq.params
        if not p.bad_words_token_ids and len(seq.output_ids) >= p.min_tokens:
            return _NO_IDS                                  # the usual case: no per-step array to build
        banned = list(p.bad_words_token_ids or ())
        if len(seq.output_ids) < p.min_tokens:
            banned += list(seq.stop_ids) + list(p.stop_token_ids or ())
        return np.asarray(banned, np.int64)

    def _choose(self, seq: Sequence, raw: np.ndarray) -> int:
        return choose(process_logits(raw, seq, self._banned(seq)), seq)

    def _choose_on_device(self, logits, rows: list[tuple[int, Sequence]]) -> dict:
        """{row: (token, host copy of the raw row if the sequence wants logprobs, else None)}; only those rows
        and the chosen ids cross to the host."""
        from .gpu_sampler import sample  # noqa: PLC0415 - GPU only: cupy is imported there

        seqs, raws = [seq for _, seq in rows], {}
        toks = sample(logits, seqs, [self._banned(seq) for seq in seqs], [row for row, _ in rows], raws)
        return {row: (int(toks[i]), raws.get(i)) for i, (row, _) in enumerate(rows)}

    def _record(self, seq: Sequence, tok: int, raw: np.ndarray | None) -> None:
        """Append the chosen token: logprobs from raw, stop ids and strings, length limits."""
        p = seq.params
        self.num_generated += 1
        if seq.metrics.first_token_time is None:
            seq.metrics.first_token_time = time.time()
        if seq.logprobs is not None:
            entry, lp = logprob_entry(raw, tok, p.logprobs, self.tokenizer.id_to_piece if self.tokenizer else str)
            seq.logprobs.append(entry)
            seq.cumulative_logprob += lp
        if tok in seq.stop_ids and not p.ignore_eos:
            return self._finish(seq, "stop")                  # EOS is not part of the output
        seq.output_ids.append(tok)
        if seq.detok is not None:
            seq.text += seq.detok.add(tok)
            if p.stop and self._stop_string(seq):
                return self._finish(seq, "stop", flush=False)
        if p.stop_token_ids and tok in p.stop_token_ids:
            return self._finish(seq, "stop")
        if len(seq.output_ids) >= p.max_tokens or len(seq.prompt_ids) + len(seq.output_ids) >= self.max_model_len:
            return self._finish(seq, "length")

    def _stop_string(self, seq: Sequence) -> bool:
        longest = max(len(s) for s in seq.params.stop)
        tail_from = max(0, len(seq.text) - longest - 16)
        hits = [i for i in (seq.text.find(s, tail_from) for s in seq.params.stop) if i >= 0]
        if hits:
            seq.text = seq.text[:min(hits)]
            return True
        return False

    def _finish(self, seq: Sequence, reason: str, flush: bool = True) -> None:
        if seq.detok is not None and flush:                  # text cut at a stop string keeps no tail
            seq.text += seq.detok.flush()
        seq.status, seq.finish_reason = FINISHED, reason
        seq.metrics.finish_time = time.time()
        seq.metrics.generated_tokens = len(seq.output_ids)
        if seq in self.running:
            self.running.remove(seq)
        self.blocks.free(seq.block_table)
        seq.block_hashes = []
        if seq.waker is not None:
            seq.waker.set()
