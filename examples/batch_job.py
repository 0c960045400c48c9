"""A resumable batch job: write a JSONL of requests, run `fdlite batch` on it, run it again (nothing redone).

The same as: fdlite batch requests.jsonl results.jsonl --model smollm2-135m --device cpu --max-tokens 8
"""
import json
import tempfile
from pathlib import Path

from fdlite import cli

work = Path(tempfile.mkdtemp())
requests = [{"id": "capital", "prompt": "The capital of France is", "temperature": 0},
            {"id": "chat", "messages": [{"role": "user", "content": "Name a color."}]},
            {"id": "ids", "prompt": [504, 3458, 282, 4649, 314], "temperature": 0.8},   # token ids; seed from the id
            {"id": "capital", "prompt": "a duplicate id: goes to results.errors.jsonl"}]
(work / "requests.jsonl").write_text("\n".join(json.dumps(r) for r in requests) + "\n{broken json\n")

args = ["batch", str(work / "requests.jsonl"), str(work / "results.jsonl"), "--model", "smollm2-135m",
        "--device", "cpu", "--max-tokens", "8", "--no-progress"]
assert cli.main(args) == 0
assert cli.main(args) == 0          # a rerun (e.g. after a crash) skips every id already in results.jsonl
for line in (work / "results.jsonl").read_text().splitlines():
    r = json.loads(line)
    print(f"{r['id']:>8}: {r['text']!r} ({r['finish_reason']}, {r['metrics']['generated_tokens']} tokens)")
for line in (work / "results.errors.jsonl").read_text().splitlines():
    print("error:", line)
