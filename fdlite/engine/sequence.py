"""One generation request (one of the n samples of a prompt) as the engine tracks it."""
from __future__ import annotations

import time

import numpy as np

from ..sampling_params import CompletionOutput, RequestMetrics, SamplingParams

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


class Sequence:
    def __init__(self, request_id: str, index: int, prompt: str | None, prompt_ids: list[int],
                 params: SamplingParams, seed: int, detokenizer, stop_ids: frozenset[int]):
        self.request_id, self.index, self.prompt = request_id, index, prompt
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.rng = np.random.Generator(np.random.PCG64(seed))   # per request: output independent of the batch
        self.detok = detokenizer
        self.stop_ids = stop_ids          # ids that end generation and are not part of the output (EOS)
        self.output_ids: list[int] = []
        self.logprobs: list | None = [] if params.logprobs is not None else None
        self.cumulative_logprob = 0.0
        self.text = ""
        self.num_computed = 0             # tokens whose K/V are in the cache
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []   # prefix-cache names of the table's full, computed blocks
        self.num_cached_tokens = 0        # prompt tokens whose K/V came from the prefix cache (first admission)
        self.waker = None                 # threading.Event of the caller waiting on this sequence, if any
        self.status = WAITING
        self.finish_reason: str | None = None
        self.metrics = RequestMetrics(arrival_time=time.time(), prompt_tokens=len(prompt_ids))

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def ids(self, start: int, stop: int) -> list[int]:
        """all_ids[start:stop] (0 <= start <= stop) without building all_ids, a copy of the whole context: the
        engine takes each step's new tokens here, one per sequence in decode."""
        p = len(self.prompt_ids)
        if start >= p:
            return self.output_ids[start - p:stop - p]
        if stop <= p:
            return self.prompt_ids[start:stop]
        return self.prompt_ids[start:] + self.output_ids[:stop - p]

    @property
    def pending(self) -> int:
        """Tokens to feed before the next sample (prompt chunk, recompute after preemption, or 1 in decode)."""
        return len(self.prompt_ids) + len(self.output_ids) - self.num_computed

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    def completion(self) -> CompletionOutput:
        return CompletionOutput(index=self.index, token_ids=list(self.output_ids), text=self.text,
                                finish_reason=self.finish_reason, logprobs=self.logprobs,
                                cumulative_logprob=self.cumulative_logprob if self.logprobs is not None else None)
