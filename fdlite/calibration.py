"""Calibration token sequences for activation-aware weight rounding and static KV scales.

``calibration_ids(model, source)``: source "self" = text the model generates itself from a few seeded
openings (no data set needed), or a path to the user's own text file. Self-generated samples are cached on
disk per model and settings (``$FDLITE_CACHE`` or ~/.cache/fdlite), so a second load costs nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from .errors import InputError
from .sampling_params import SamplingParams

log = logging.getLogger("fdlite")

# Openings for self-generation: varied registers so the activations cover prose, dialogue, code and lists.
_OPENINGS = ["The", "In 1998,", "Once upon a time", "Q: How does", "def main():", "The report found that",
             "Dear", "1.", "Scientists have", "The history of", "She said", "Ingredients:", "It was", "Why",
             "According to", "The following"]


def _cache_dir() -> Path:
    return Path(os.environ.get("FDLITE_CACHE") or Path.home() / ".cache" / "fdlite") / "calibration"


def calibration_ids(model, source="self", num_seqs: int = 16, seq_len: int = 128, seed: int = 0,
                    min_tokens: int = 256) -> list[list[int]]:
    """-> num_seqs token sequences (each <= seq_len tokens) to calibrate on."""
    if source == "self":
        return _self_generated(model, num_seqs, seq_len, seed)
    path = Path(source)
    if not path.is_file():
        raise InputError(f"calibration={source!r}: expected 'self' or the path of a text file; no such file")
    if model.tokenizer is None:
        raise InputError(f"calibration text {path} needs a tokenizer; this model has none")
    ids = model.tokenizer.encode(path.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False)
    if len(ids) < min_tokens:
        raise InputError(f"calibration text {path} has {len(ids)} tokens; at least {min_tokens} are needed")
    n = min(num_seqs, len(ids) // seq_len) or 1
    return [ids[i * seq_len:(i + 1) * seq_len] for i in range(n)]


def _self_generated(model, num_seqs, seq_len, seed) -> list[list[int]]:
    key = json.dumps([model.source, os.path.getsize(model.source) if os.path.isfile(model.source) else 0,
                      num_seqs, seq_len, seed, 1])
    path = _cache_dir() / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")
    if path.is_file():
        try:
            return json.loads(path.read_text())["ids"]
        except (json.JSONDecodeError, KeyError):
            pass  # a torn cache file is regenerated
    tok = model.tokenizer
    if tok is not None:
        prompts = [tok.encode(_OPENINGS[i % len(_OPENINGS)], add_special_tokens=True) for i in range(num_seqs)]
    else:
        bos = model.config.bos_token_id or 0
        prompts = [[bos] for _ in range(num_seqs)]
    log.info("fdlite: generating %d x %d calibration tokens from the model itself (seed %d)", num_seqs, seq_len, seed)
    params = [SamplingParams(temperature=0.8, top_p=0.95, max_tokens=max(1, seq_len - len(p)), seed=seed + i,
                             ignore_eos=True) for i, p in enumerate(prompts)]
    outs = model.generate(prompts, params, use_tqdm=False, add_special_tokens=False)
    ids = [o.prompt_token_ids + o.outputs.token_ids for o in outs]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "ids": ids}))
        tmp.replace(path)
    except OSError as e:  # a read-only home must not stop calibration
        log.warning("fdlite: cannot cache calibration ids at %s (%s)", path, e)
    return ids
