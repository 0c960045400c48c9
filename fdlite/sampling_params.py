"""SamplingParams and the output records, in FastDeploy's offline-API shape (spec §6.3, §6.4)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any


def _bad(name: str, value: Any, rule: str) -> ValueError:
    return ValueError(f"SamplingParams.{name} = {value!r}: {rule}")


@dataclass
class SamplingParams:
    """How to sample. FastDeploy's conventions: temperature 0 = greedy; top_k 0 or -1 = off;
    top_p in [0, 1] with 0 meaning greedy; ``max_tokens`` counts generated tokens (default 256)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    max_tokens: int = 256
    min_tokens: int = 0
    logprobs: int | None = None
    bad_words: list[str] | None = None
    bad_words_token_ids: list[int] | None = None
    ignore_eos: bool = False

    def __post_init__(self):
        def num(name, lo=-math.inf, hi=math.inf, lo_open=False, integer=False):
            v = getattr(self, name)
            ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
            if isinstance(v, bool) or not ok_type or (not integer and not math.isfinite(v)):
                raise _bad(name, v, f"must be {'an integer' if integer else 'a finite number'}")
            if v < lo or v > hi or (lo_open and v == lo):
                raise _bad(name, v, f"must be in {'(' if lo_open else '['}{lo}, {hi}]")

        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            if getattr(self, name) is None:  # FastDeploy's from_optional: None means the default
                setattr(self, name, {f.name: f.default for f in fields(self)}[name])
        num("n", 1, integer=True)
        num("temperature", 0.0)
        num("top_p", 0.0, 1.0)
        num("top_k", -1, integer=True)
        num("min_p", 0.0, 1.0)
        num("repetition_penalty", 0.0, lo_open=True)
        num("presence_penalty", -2.0, 2.0)
        num("frequency_penalty", -2.0, 2.0)
        num("max_tokens", 1, integer=True)
        num("min_tokens", 0, integer=True)
        if self.min_tokens > self.max_tokens:
            raise _bad("min_tokens", self.min_tokens, f"must be <= max_tokens ({self.max_tokens})")
        if self.seed is not None:
            num("seed", 0, 2**63 - 1, integer=True)
        if self.logprobs is not None:
            num("logprobs", 0, 20, integer=True)
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop is not None:
            if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
                raise _bad("stop", self.stop, "must be a non-empty string or a list of non-empty strings")
            self.stop = list(self.stop)
        for name in ("stop_token_ids", "bad_words_token_ids"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (list, tuple)) or
                                  not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in v)):
                raise _bad(name, v, "must be a list of non-negative token ids")
        if self.bad_words is not None and (not isinstance(self.bad_words, (list, tuple))
                                           or not all(isinstance(w, str) and w for w in self.bad_words)):
            raise _bad("bad_words", self.bad_words, "must be a list of non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_p == 0 or self.top_k == 1

    @classmethod
    def from_dict(cls, d: dict, base: "SamplingParams | None" = None) -> "SamplingParams":
        """Fields of ``d`` override ``base`` (or the defaults); unknown keys are an error naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown SamplingParams field(s) {unknown}; valid: {sorted(names)}")
        start = {f.name: getattr(base, f.name) for f in fields(cls)} if base else {}
        return cls(**{**start, **d})


@dataclass
class Logprob:
    logprob: float
    rank: int
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None = None       # "stop" | "length" | "abort" | None while running
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float | None = None


@dataclass
class RequestMetrics:
    arrival_time: float = 0.0
    inference_start_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    time_in_queue: float | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    num_preemptions: int = 0


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: CompletionOutput
    finished: bool = False
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    num_cached_tokens: int = 0


@dataclass
class StreamPiece:
    """One increment of ``Model.stream``: new text (never a broken UTF-8 sequence) and the new token ids."""

    text: str
    token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None
