"""``fdlite batch IN.jsonl OUT.jsonl --model M``: a resumable batch job through the continuous-batching engine.

Input, one JSON object per line:
  {"id": str | int, "prompt": str | [token ids]}  or  {"id": ..., "messages": [{"role", "content"}, ...]}
plus any SamplingParams field ("max_tokens", "temperature", "seed", ...) overriding the command's defaults.
A line without "seed" samples with one derived from its id (and --seed), so its output is the same in every
run: the engine's batch invariance (fdlite/engine/invariant.py) makes a request's output independent of
which other requests share its batch, and so of where a killed job resumed.

Output: one line per finished request, appended in completion order, flushed and fsynced before the next:
  {"id", "text", "token_ids", "finish_reason", "metrics": {...}}
Rerunning the same command skips ids already in OUT: a job killed at any moment (SIGKILL included) resumes
with nothing lost and nothing duplicated. A torn last line (killed mid-write) is cut off before resuming.
Malformed lines, duplicate ids and prompts the model cannot take go to OUT.errors.jsonl as
{"line", "id", "reason"} (rewritten by every run, so it lists each bad line once) and never stop the job.
A JSON summary goes to stdout at the end; the exit status is 0 when every valid line is done.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

from .errors import FdliteError, InputError
from .sampling_params import SamplingParams

PARAM_KEYS = {f.name for f in fields(SamplingParams)}
KEYS = {"id", "prompt", "messages"} | PARAM_KEYS


def errors_path(out: Path) -> Path:
    """OUT.jsonl -> OUT.errors.jsonl (any other name gets .errors.jsonl appended)."""
    return out.with_name(out.name[:-6] + ".errors.jsonl") if out.name.endswith(".jsonl") else \
        out.with_name(out.name + ".errors.jsonl")


def id_key(rid) -> str:
    return json.dumps(rid)          # 1 and "1" are different ids


def derived_seed(rid, base: int | None) -> int:
    """A request's seed when its line gives none: a hash of its id (and --seed), in [0, 2**63)."""
    h = hashlib.sha256(f"fdlite-batch:{base or 0}:{id_key(rid)}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def read_done(out: Path) -> set[str]:
    """Ids already in OUT. A last line without its newline (the job was killed mid-write) is truncated away."""
    done: set[str] = set()
    if not out.exists():
        return done
    with open(out, "r+b") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    for line in data[:end].splitlines():
        try:
            done.add(id_key(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError):
            continue                # not ours; the id it may have held is run again
    return done


def parse_line(text: str, base: SamplingParams, seed: int | None):
    """One input line -> (id, prompt or None, messages or None, SamplingParams); ValueError names the fault."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"a line must be a JSON object, got {type(obj).__name__}")
    rid = obj.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
        raise ValueError(f"'id' must be a non-empty string or an integer, got {rid!r}")
    unknown = sorted(set(obj) - KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; valid: id, prompt | messages, and SamplingParams fields")
    if ("prompt" in obj) == ("messages" in obj):
        raise ValueError("give exactly one of 'prompt' (text or token ids) and 'messages'")
    prompt, messages = obj.get("prompt"), obj.get("messages")
    if prompt is not None and not (isinstance(prompt, str) and prompt or isinstance(prompt, list) and prompt and
                                   all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)):
        raise ValueError(f"'prompt' must be a non-empty string or list of int token ids, got {prompt!r:.80}")
    if messages is not None and not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages)):
        raise ValueError("'messages' must be a non-empty list of {\"role\": str, \"content\": str}")
    over = {k: v for k, v in obj.items() if k in PARAM_KEYS}
    if "seed" not in over or over["seed"] is None:
        over["seed"] = derived_seed(rid, seed)
    sp = SamplingParams.from_dict(over, base=base)
    if sp.n != 1:
        raise ValueError(f"n = {sp.n}: a batch line gives one output (use several ids for several samples)")
    return rid, prompt, messages, sp


class Job:
    """One run of the command: reads IN lazily, feeds the engine, writes results and errors as they come."""

    def __init__(self, model, inp: Path, out: Path, base: SamplingParams, seed: int | None):
        self.model, self.inp, self.out, self.base, self.seed = model, inp, out, base, seed
        self.done_before = read_done(out)
        self.skipped = self.done = self.failed = self.tokens = 0
        self.err = open(errors_path(out), "w", encoding="utf-8")

    def error(self, lineno: int, rid, reason: str) -> None:
        self.failed += 1
        _append(self.err, {"line": lineno, "id": rid, "reason": reason})

    def requests(self):
        """(id, [Sequence]) for every valid line not done yet, in input order, built lazily."""
        seen: set[str] = set()
        with open(self.inp, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rid, prompt, messages, sp = parse_line(line, self.base, self.seed)
                except ValueError as e:
                    self.error(lineno, _peek_id(line), str(e))
                    continue
                key = id_key(rid)
                if key in seen:
                    self.error(lineno, rid, f"duplicate id {rid!r} (first seen earlier in the file; skipped)")
                    continue
                seen.add(key)
                if key in self.done_before:
                    self.skipped += 1
                    continue
                try:
                    yield rid, self._sequences(prompt, messages, sp)
                except (FdliteError, ValueError) as e:
                    self.error(lineno, rid, str(e))

    def _sequences(self, prompt, messages, sp):
        m, special = self.model, True
        if messages is not None:
            if m.tokenizer is None:
                raise InputError("'messages' needs a model with a tokenizer and a chat template")
            prompt, special = m.tokenizer.apply_chat_template(messages, add_generation_prompt=True), False
        return m._prepare([prompt], sp, special)[0]

    def run(self, progress: bool) -> dict:
        from .engine import driver  # noqa: PLC0415

        total = sum(1 for line in open(self.inp, encoding="utf-8", errors="replace") if line.strip())
        bar = None
        if progress:
            from tqdm.auto import tqdm  # noqa: PLC0415

            bar = tqdm(total=total, desc="batch", unit="req", disable=None, file=sys.stderr)
        t0 = time.time()
        engine = self.model.engine
        with open(self.out, "a", encoding="utf-8") as out:
            for rid, seqs in driver.complete(engine, self.requests(), 4 * engine.max_num_seqs):
                s = seqs[0]
                mt = s.metrics
                _append(out, {"id": rid, "text": s.text, "token_ids": s.output_ids, "finish_reason": s.finish_reason,
                              "metrics": {"prompt_tokens": mt.prompt_tokens, "generated_tokens": len(s.output_ids),
                                          "cached_tokens": s.num_cached_tokens,
                                          "time_in_queue": _r(mt.time_in_queue),
                                          "first_token_latency": _r(mt.first_token_time and
                                                                    mt.first_token_time - mt.arrival_time),
                                          "latency": _r(mt.finish_time - mt.arrival_time),
                                          "preemptions": mt.num_preemptions}})
                self.done += 1
                self.tokens += len(s.output_ids)
                if bar is not None:
                    bar.n = self.done + self.skipped + self.failed
                    bar.set_postfix(tok_s=f"{self.tokens / max(time.time() - t0, 1e-9):.1f}", refresh=True)
        if bar is not None:
            bar.close()
        self.err.close()
        dt = time.time() - t0
        return {"done": self.done, "skipped": self.skipped, "failed": self.failed, "tokens": self.tokens,
                "seconds": round(dt, 2), "tokens_per_s": round(self.tokens / max(dt, 1e-9), 1),
                "output": str(self.out), "errors": str(errors_path(self.out))}


def _r(x):
    return None if x is None else round(x, 4)


def _peek_id(line: str):
    try:
        obj = json.loads(line)
        return obj.get("id") if isinstance(obj, dict) else None
    except ValueError:
        return None


def _append(f, obj: dict) -> None:
    """One JSON line, on disk before returning (a kill after this cannot lose it)."""
    f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def cmd_batch(args) -> int:
    from .cli import _params  # noqa: PLC0415
    from .model import Model  # noqa: PLC0415

    inp, out = Path(args.input), Path(args.output)
    if not inp.is_file():
        raise FileNotFoundError(f"input file {str(inp)!r} does not exist")
    if inp.resolve() == out.resolve():
        raise InputError("IN and OUT are the same file")
    kw = {k: getattr(args, k, None) for k in ("device", "quantization", "kv_cache", "kv_scales", "calibration",
                                              "max_model_len", "max_num_seqs", "max_num_batched_tokens",
                                              "tensor_parallel_size")}
    kw = {k: v for k, v in kw.items() if v is not None}
    with Model.load(args.model, **kw) as model:
        summary = Job(model, inp, out, _params(args), args.seed).run(progress=not args.no_progress)
    print(json.dumps(summary))
    print(f"fdlite batch: {summary['done']} done, {summary['skipped']} skipped (already in {out.name}), "
          f"{summary['failed']} failed (see {errors_path(out).name}), {summary['tokens_per_s']} tok/s",
          file=sys.stderr)
    return 0


def register_cli(sub) -> None:
    from .cli import _model_args, _sampling_args  # noqa: PLC0415

    b = sub.add_parser("batch", help="run a JSONL file of prompts; resumable (see fdlite/batch.py)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("input", help="IN.jsonl")
    b.add_argument("output", help="OUT.jsonl (appended to; ids already in it are skipped)")
    _model_args(b)
    _sampling_args(b)
    b.add_argument("--max-num-seqs", type=int, default=None, help="requests decoded together (default 8)")
    b.add_argument("--max-num-batched-tokens", type=int, default=None)
    b.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    b.set_defaults(func=cmd_batch)
