"""Engine benchmarks on the CPU: continuous batching vs a loop over generate, a 10,000-prompt soak, and the cost
of batch invariance. Prints one JSON line per measurement (copy the numbers into BENCHMARKS.md).

  python benchmarks/engine_throughput.py throughput --model tiny --n 1000 --max-tokens 16
  python benchmarks/engine_throughput.py throughput --model smollm2 --n 1000 --max-tokens 8
  python benchmarks/engine_throughput.py soak --n 10000
  python benchmarks/engine_throughput.py invariance --model smollm2
  python benchmarks/engine_throughput.py throughput --model llama-3-8b --quant wint4 --n 1000 --max-tokens 64 \
      --max-num-seqs 64 --loop-n 16                     (GPU: random weights built on the device)

tiny = stories260K (5 layers, hidden 64; /work/shared/data/stories260K.gguf or $FDLITE_TINY). llama-3-8b (GPU):
Model.from_config with random weights; its prompts are random token ids of 32-128 tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time
from pathlib import Path

from fdlite import Model, SamplingParams, ops
from fdlite.engine import driver

ROOT = Path(__file__).resolve().parents[1]
TINY = os.environ.get("FDLITE_TINY", str(ROOT.parent / "shared" / "data" / "stories260K.gguf"))
NAMES = ["Lily", "Tom", "Ben", "Sue", "Max", "Anna", "Sam", "Mia"]
PLACES = ["park", "sea", "forest", "shop", "garden", "zoo", "farm", "hill"]


GPU_MODELS = ("llama-3-8b",)


def prompts(n: int, model: str = "tiny") -> list:
    """n distinct short story openings (no shared prefix beyond a word or two); token ids for the GPU models."""
    if model in GPU_MODELS:
        import numpy as np  # noqa: PLC0415

        rng = np.random.default_rng(0)
        return [rng.integers(0, 128000, int(rng.integers(32, 129))).tolist() for _ in range(n)]
    return [f"{NAMES[i % 8]} went to the {PLACES[(i // 8) % 8]} with {i} friends and" for i in range(n)]


def load(name: str, quant: str | None = None, **kw) -> Model:
    if name in GPU_MODELS:
        return Model.from_config(name, device="cuda", seed=0, quantization=quant, max_model_len=256, **kw)
    return Model.load(TINY if name == "tiny" else "smollm2-135m", device="cpu", quantization=quant, **kw)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


DEVICE = "CPU, 2 cores"


def emit(**row) -> None:
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "device": DEVICE, **row}), flush=True)


def throughput(args) -> None:
    global DEVICE
    ps = prompts(args.n, args.model)
    sp = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    model = load(args.model, args.quant, max_num_seqs=args.max_num_seqs)
    if args.model in GPU_MODELS:
        import cupy as cp  # noqa: PLC0415

        DEVICE = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
        b = 1                                    # warm up: capture every decode bucket the run will meet
        while b <= args.max_num_seqs:
            model.generate(ps[:b], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True), use_tqdm=False)
            b *= 2
    else:
        model.generate(ps[:2], sp, use_tqdm=False)                               # warm up
    t0 = time.perf_counter()
    outs = model.generate(ps, sp, use_tqdm=False)
    dt = time.perf_counter() - t0
    toks = sum(len(o.outputs.token_ids) for o in outs)
    emit(bench="engine", model=args.model, quant=args.quant, prompts=args.n, max_tokens=args.max_tokens,
         max_num_seqs=args.max_num_seqs, seconds=round(dt, 2), tok_s=round(toks / dt, 1),
         req_s=round(args.n / dt, 2), steps=model.engine.num_steps, peak_batch=model.engine.peak_batch)
    n_loop = args.loop_n or args.n
    t0 = time.perf_counter()
    loop = [model.generate([p], sp, use_tqdm=False)[0] for p in ps[:n_loop]]
    dt_loop = time.perf_counter() - t0
    toks_loop = sum(len(o.outputs.token_ids) for o in loop)
    same = all(a.outputs.token_ids == b.outputs.token_ids for a, b in zip(loop, outs))
    emit(bench="loop over generate", model=args.model, quant=args.quant, prompts=n_loop, max_tokens=args.max_tokens,
         seconds=round(dt_loop, 2), tok_s=round(toks_loop / dt_loop, 1), req_s=round(n_loop / dt_loop, 2),
         speedup=round((toks / dt) / (toks_loop / dt_loop), 2), same_tokens=same)


def soak(args) -> None:
    """Peak RSS while N prompts stream through, sampled every 50 ms; reported at checkpoints."""
    model = load("tiny", max_num_seqs=args.max_num_seqs)
    sp = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=args.max_tokens, seed=1)
    peak, stop = [rss_mib()], threading.Event()

    def sample():
        while not stop.wait(0.05):
            peak[0] = max(peak[0], rss_mib())

    threading.Thread(target=sample, daemon=True).start()
    start_rss, t0, done, toks = rss_mib(), time.perf_counter(), 0, 0
    marks = {args.n // 10, args.n // 2, args.n}
    groups = ((i, model._prepare([p], sp)[0]) for i, p in enumerate(prompts(args.n)))
    for _, seqs in driver.complete(model.engine, groups, 4 * model.engine.max_num_seqs):
        done += 1
        toks += len(seqs[0].output_ids)
        if done in marks:
            emit(bench="soak (completion-order iterator)", prompts_done=done, rss_mib=round(rss_mib(), 1),
                 peak_rss_mib=round(peak[0], 1), start_rss_mib=round(start_rss, 1),
                 tok_s=round(toks / (time.perf_counter() - t0), 1))
    t0, before = time.perf_counter(), peak[0]
    outs = model.generate(prompts(args.n), sp, use_tqdm=False)
    emit(bench="soak (generate, results kept)", prompts=len(outs), seconds=round(time.perf_counter() - t0, 1),
         rss_mib=round(rss_mib(), 1), peak_rss_mib=round(peak[0], 1), peak_before_mib=round(before, 1),
         ru_maxrss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    stop.set()
    assert model.engine.blocks.num_free == model.engine.blocks.num_blocks


def invariance(args) -> None:
    """Engine with the batch-invariant path (default on the CPU) vs the plain GEMMs and ops.attention."""
    model = load(args.model, max_num_seqs=args.max_num_seqs)
    ps = prompts(args.n)
    sp = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    invariant_runner, invariant_attn = model.engine.runner, model.cache.attention
    for mode in ("invariant", "plain", "invariant"):
        model.engine.runner = invariant_runner if mode == "invariant" else model._run
        model.cache.attention = invariant_attn if mode == "invariant" else ops.attention
        model.generate(ps[:1], sp, use_tqdm=False)
        t0 = time.perf_counter()
        outs = model.generate(ps, sp, use_tqdm=False)
        dt = time.perf_counter() - t0
        emit(bench="engine", mode=mode, model=args.model, prompts=args.n, max_tokens=args.max_tokens,
             max_num_seqs=args.max_num_seqs, seconds=round(dt, 2),
             tok_s=round(sum(len(o.outputs.token_ids) for o in outs) / dt, 1))
        single = time.perf_counter()
        model.generate(ps[:1], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True), use_tqdm=False)
        emit(bench="one request, 32 tokens", mode=mode, model=args.model,
             seconds=round(time.perf_counter() - single, 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["throughput", "soak", "invariance"])
    ap.add_argument("--model", default="tiny", choices=["tiny", "smollm2", *GPU_MODELS])
    ap.add_argument("--quant", default=None, help="quantization method (GPU: e.g. wint4)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--loop-n", type=int, default=None, help="prompts for the loop baseline (default: --n)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    args = ap.parse_args()
    {"throughput": throughput, "soak": soak, "invariance": invariance}[args.what](args)


if __name__ == "__main__":
    main()
