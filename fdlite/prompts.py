"""Normalising and validating the prompts given to generate/stream/chat, before any work starts."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError, TokenizerError
from .sampling_params import SamplingParams


@dataclass
class Prompt:
    text: str | None
    ids: list[int]


def _is_ids(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(t, int) and not isinstance(t, bool)
                                                                 for t in x)


def split_prompts(prompts) -> list:
    """str | list[str] | list[int] | list[list[int]] | dict | list[dict] -> list of str / list[int]."""
    if isinstance(prompts, (str, dict)) or _is_ids(prompts):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise InputError(f"prompts must be a str, a list of str, a list of token ids or a list of lists of ids; "
                         f"got {type(prompts).__name__} {prompts!r:.80}")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, dict):
            if "prompt" not in p and "prompt_token_ids" not in p:
                raise InputError(f"prompt {i}: a dict prompt needs a 'prompt' or 'prompt_token_ids' key, got {sorted(p)}")
            p = p.get("prompt_token_ids") or p["prompt"]
        if not (isinstance(p, str) or _is_ids(p)):
            raise InputError(f"prompt {i} must be a str or a non-empty list of int token ids, got {p!r:.80}")
        out.append(p)
    return out


def prepare(prompts, tokenizer, vocab_size: int, max_model_len: int, add_special_tokens: bool = True) -> list[Prompt]:
    out = []
    for i, p in enumerate(split_prompts(prompts)):
        if isinstance(p, str):
            if tokenizer is None:
                raise TokenizerError(f"prompt {i} is text but this model has no tokenizer; pass token ids instead")
            ids = tokenizer.encode(p, add_special_tokens=add_special_tokens)
            if not ids:
                raise InputError(f"prompt {i} ({p!r}) encodes to no tokens")
            out.append(Prompt(p, ids))
        else:
            out.append(Prompt(None, list(p)))
        ids = out[-1].ids
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise InputError(f"prompt {i}: token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
        if len(ids) >= max_model_len:
            raise InputError(f"prompt {i} has {len(ids)} tokens but max_model_len is {max_model_len} (the prompt "
                             "plus at least one generated token must fit); load with a larger max_model_len")
    return out


def per_prompt_params(sampling_params, count: int) -> list[SamplingParams]:
    if sampling_params is None:
        return [SamplingParams()] * count
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * count
    if isinstance(sampling_params, (list, tuple)) and all(isinstance(s, SamplingParams) for s in sampling_params):
        if len(sampling_params) != count:
            raise InputError(f"got {len(sampling_params)} SamplingParams for {count} prompts (give one, or one each)")
        return list(sampling_params)
    raise InputError(f"sampling_params must be a SamplingParams or a list of them, got {type(sampling_params).__name__}")
