"""`fdlite batch`: malformed lines, duplicates, resume, and SIGKILL at random moments resumed to exactly the
uninterrupted run's output."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import FIXTURES, ROOT, SHARED_DATA

from fdlite import cli
from fdlite.batch import derived_seed, errors_path, parse_line, read_done
from fdlite.sampling_params import SamplingParams

LLAMA = FIXTURES / "hf" / "llama"
BAD: set = set()
N_KILL = 400


def _lines(n: int, seed: int = 0) -> list[str]:
    """n valid requests (token-id prompts, greedy and unseeded sampling, varied lengths) + bad lines."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        req = {"id": f"r{i}" if i % 2 else i, "prompt": [rng.randrange(256) for _ in range(rng.randint(1, 20))],
               "max_tokens": rng.randint(1, 24)}
        if i % 3 == 0:
            req["temperature"] = 0.8        # no seed: derived from the id
        out.append(json.dumps(req))
    bad = ['{"id": 2, "prompt": [1, 2]}',                            # duplicate of id 2
           "{not json", "[1, 2]", '{"prompt": [1]}', '{"id": "x", "prompt": [1], "messages": []}',
           '{"id": "y", "prompt": [1], "max_tokens": -3}', '{"id": "z", "prompt": [1], "colour": "red"}',
           '{"id": "w", "prompt": [999999]}', '{"id": "t", "prompt": "text needs a tokenizer"}']
    BAD.update(bad)
    for j, b in enumerate(bad):
        out.insert(5 + 7 * j, b)
    return out


def _run(inp, out, *extra, wait=True):
    cmd = [sys.executable, "-m", "fdlite.cli", "batch", str(inp), str(out), "--model", str(LLAMA), "--device", "cpu",
           "--max-num-seqs", "6", "--no-progress", *extra]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        o, e = p.communicate(timeout=300)
        return p.returncode, o, e
    return p


def _records(path):
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for r in recs:
        r.pop("metrics")
    return recs


def test_parse_line_rules():
    base = SamplingParams(max_tokens=7)
    rid, prompt, messages, sp = parse_line('{"id": 5, "prompt": "hi", "temperature": 0.5}', base, None)
    assert (rid, prompt, messages, sp.max_tokens, sp.temperature) == (5, "hi", None, 7, 0.5)
    assert sp.seed == derived_seed(5, None) != derived_seed("5", None)
    assert parse_line('{"id": "a", "messages": [{"role": "user", "content": "x"}], "seed": 3}', base, 9)[3].seed == 3
    for bad, why in [('{"id": true, "prompt": "x"}', "'id' must be"), ('{"id": 1}', "exactly one of"),
                     ('{"id": 1, "prompt": []}', "'prompt' must be"), ('{"id": 1, "prompt": "x", "n": 2}', "n = 2"),
                     ('{"id": 1, "messages": [{"role": "user"}]}', "'messages' must be"),
                     ('{"id": 1, "prompt": "x", "top_p": 7}', "top_p")]:
        with pytest.raises(ValueError, match=why):
            parse_line(bad, base, None)


def test_errors_path_and_torn_line(tmp_path):
    assert errors_path(tmp_path / "OUT.jsonl").name == "OUT.errors.jsonl"
    assert errors_path(tmp_path / "out.txt").name == "out.txt.errors.jsonl"
    out = tmp_path / "o.jsonl"
    out.write_text('{"id": 1, "text": ""}\n{"id": "a"}\n{"id": 2, "te')
    assert read_done(out) == {"1", '"a"'}
    assert out.read_text() == '{"id": 1, "text": ""}\n{"id": "a"}\n'          # the torn line is cut off


def test_batch_errors_summary_and_rerun(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("\n".join(_lines(30)) + "\n\n")
    rc, stdout, stderr = _run(inp, out)
    assert rc == 0, stderr
    summary = json.loads(stdout.splitlines()[-1])
    assert (summary["done"], summary["skipped"], summary["failed"]) == (30, 0, 9) and summary["tokens_per_s"] > 0
    errs = [json.loads(x) for x in errors_path(out).read_text().splitlines()]
    text = inp.read_text().splitlines()
    assert sorted(text[e["line"] - 1] for e in errs) == sorted(BAD)           # line numbers point at them
    reasons = " | ".join(e["reason"] for e in errs)
    for why in ("duplicate id 2", "not valid JSON", "must be a JSON object", "'id' must be", "exactly one of",
                "max_tokens", "unknown key", "outside the vocabulary", "no tokenizer"):
        assert why in reasons
    recs = _records(out)
    assert sorted(map(json.dumps, (r["id"] for r in recs))) == sorted(json.dumps(i if i % 2 == 0 else f"r{i}")
                                                                      for i in range(30))
    assert all(set(r) == {"id", "text", "token_ids", "finish_reason"} for r in recs)
    rc, stdout, _ = _run(inp, out)                                            # nothing left to do
    assert rc == 0 and json.loads(stdout.splitlines()[-1])["skipped"] == 30
    assert len(out.read_text().splitlines()) == 30 and len(errors_path(out).read_text().splitlines()) == 9


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(tmp_path):
    """Kill -9 the job at random moments, rerun until done: one output per valid id, identical to an
    uninterrupted run (greedy and id-seeded sampling, different batch compositions after each resume)."""
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(_lines(N_KILL, seed=1)) + "\n")
    ref_out = tmp_path / "ref.jsonl"
    t0 = time.time()
    rc, _, err = _run(inp, ref_out)
    whole = time.time() - t0                             # startup + the whole job
    assert rc == 0, err
    out, rng, kills = tmp_path / "out.jsonl", random.Random(3), 0
    for _ in range(12):
        p = _run(inp, out, wait=False)
        time.sleep(rng.uniform(0.15, 0.9) * whole)       # anywhere: loading, mid-step, mid-write
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        p.communicate()
        if p.returncode == 0:
            break
    rc, _, err = _run(inp, out)                          # finish whatever is left
    assert rc == 0, err
    assert kills >= 2
    got, ref = _records(out), _records(ref_out)
    assert len(got) == len({json.dumps(r["id"]) for r in got}) == N_KILL       # nothing duplicated or lost
    key = lambda r: json.dumps(r["id"])  # noqa: E731
    assert sorted(got, key=key) == sorted(ref, key=key)
    assert errors_path(out).read_text() == errors_path(ref_out).read_text()


def test_text_and_messages_prompts(tmp_path, monkeypatch, capsys):
    """A model with a tokenizer: text and chat prompts; run in-process through cli.main."""
    model = SHARED_DATA / "stories260K.gguf"
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"id": "a", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}) + "\n" +
                   json.dumps({"id": "b", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}) + "\n")
    rc = cli.main(["batch", str(inp), str(out), "--model", str(model), "--device", "cpu", "--no-progress"])
    assert rc == 0
    recs = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    if "b" not in recs:       # the GGUF may carry no chat template: then "b" is an error line, not a crash
        assert "chat" in errors_path(out).read_text().lower() or "template" in errors_path(out).read_text().lower()
    assert recs["a"]["text"].startswith(",") or recs["a"]["text"]
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["done"] >= 1
