"""SmolLM2-135M perplexity on the first 4096 wikitext-2 test tokens (512-token windows) for every weight method,
as a ratio to the unquantized model (30.356). Results: one JSON line per method (appended to --out), and a
markdown table on stdout for docs/quantization.md and BENCHMARKS.md.

    python benchmarks/quant_accuracy.py                       # every method
    python benchmarks/quant_accuracy.py --only wint4 w4a8     # a subset (labels of CASES)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                   # runs from a checkout without installing
from fdlite import Model  # noqa: E402
DENSE_PPL = 30.356
# label -> (quantization, calibration, goal ratio or None)
CASES = {
    "wint8": ("wint8", None, 1.005),
    "block_wise_fp8": ("block_wise_fp8", None, 1.035),
    "wfp8afp8": ("wfp8afp8", None, 1.035),
    "w8a8": ("w8a8", None, 1.05),
    "wint4-rtn": ("wint4", None, None),
    "wint4-perchannel-rtn": ({"quantization": "wint4", "group_size": -1}, None, None),
    "wint4": ("wint4", "self", 1.25),
    "wint4-g64": ({"quantization": "wint4", "group_size": 64}, "self", None),
    "w4a8": ("w4a8", "self", 1.35),
    "w4afp8": ("w4afp8", "self", 1.35),
    "nf4-rtn": ("nf4", None, None),
    "nf4": ("nf4", "self", None),
    "wint2": ("wint2", "self", None),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "quant_accuracy.jsonl"))
    args = ap.parse_args()
    ids = np.load(ROOT / "tests" / "fixtures" / "real" / "smollm2.npz")["wikitext_ids"][:args.tokens].tolist()
    rows = []
    for label in args.only or list(CASES):
        q, cal, goal = CASES[label]
        t0 = time.time()
        model = Model.load("smollm2-135m", device="cpu", quantization=q, calibration=cal)
        t1 = time.time()
        ppl = model.perplexity(ids, window=512)
        row = {"method": label, "quantization": q, "calibration": cal, "tokens": len(ids), "ppl": round(ppl, 3),
               "ratio": round(ppl / DENSE_PPL, 4), "goal": goal, "pass": None if goal is None else ppl / DENSE_PPL
               <= goal, "weights_bytes": model.memory_report()["weights_bytes"], "load_s": round(t1 - t0, 1),
               "ppl_s": round(time.time() - t1, 1), "date": time.strftime("%Y-%m-%d"), "device": "CPU"}
        model.close()
        rows.append(row)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    print("\n| method | calibration | ppl | ratio | goal | weights MiB | load s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['calibration'] or 'none'} | {r['ppl']:.3f} | {r['ratio']:.4f} | "
              f"{'≤ ' + str(r['goal']) if r['goal'] else '-'} | {r['weights_bytes'] / 2**20:.1f} | {r['load_s']} |")


if __name__ == "__main__":
    main()
