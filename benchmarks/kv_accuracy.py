"""SmolLM2-135M perplexity per KV-cache format, as ratios to the bf16 (unquantized) cache.

Protocol (issue 4): the first 4096 wikitext-2 test token ids (tests/fixtures/real/smollm2.npz), windows of
512; Model.perplexity writes each window into a scratch cache of the format and attention reads it back at
every position (equal to feeding 32-token chunks, since quantization is per token; see BENCHMARKS.md).
Static scales: calibrated inside Model.load on text the model generates itself (calibration="self"; the
scored text is never seen), unless --kv-scales gives a file from `fdlite calibrate`.

    python benchmarks/kv_accuracy.py [--tokens 4096] [--formats int8,int4_zp] [--kv-scales FILE] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from fdlite import Model

GOALS = {"int8": 1.002, "float8_e4m3fn": 1.008, "block_wise_fp8": 1.006, "int4_zp": 1.15}
IDS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "real" / "smollm2.npz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--formats", default=",".join(GOALS))
    ap.add_argument("--kv-scales", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    ids = np.load(IDS)["wikitext_ids"][:args.tokens].tolist()
    rows = []
    for name in ["bf16"] + args.formats.split(","):
        t0 = time.time()
        static = name in ("int8", "float8_e4m3fn", "int4_zp")
        m = Model.load("smollm2-135m", device="cpu", kv_cache=name,
                       kv_scales=args.kv_scales if static else None)
        t1 = time.time()
        ppl = m.perplexity(ids, window=args.window)
        row = {"kv_cache": name, "ppl": round(ppl, 4),
               "kv_bytes_per_token": m.memory_report()["kv_bytes_per_token"],
               "load_s": round(t1 - t0, 1), "ppl_s": round(time.time() - t1, 1)}
        if rows:
            row["ratio"] = round(ppl / rows[0]["ppl"], 4)
            row["goal"] = GOALS.get(name)
            row["ok"] = row["goal"] is None or row["ratio"] <= row["goal"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        m.close()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
