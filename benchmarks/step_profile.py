"""Where a decode step's time goes: engine host work vs the graph's GPU time vs its kernels.

    python benchmarks/step_profile.py [--quant dense] [--layers 32] [--batch 1] [--steps 64]
    ncu --profile-from-start off --metrics gpu__time_duration.sum --csv \
        python benchmarks/step_profile.py --layers 2 --ncu      (per-kernel durations of one replay)

Prints, per decode step: wall time of Engine.step, GPU time of the graph replay (CUDA events around the
launch), and the host time spent before the launch (schedule, StepMeta, input fill) and after it (sampling,
bookkeeping). With --ncu, one replay runs between cudaProfilerStart/Stop for Nsight Compute.
"""
import argparse
import time

import numpy as np

from fdlite import Model, SamplingParams


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--quant", default="dense")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--ncu", action="store_true")
    ap.add_argument("--overlap", type=int, default=0, help="the engine's overlapped decode (0 here: a step's host "
                    "and graph times are only separable in plain steps)")
    a = ap.parse_args()
    import cupy as cp

    m = Model.from_config(a.model, device="cuda", seed=0, quantization=None if a.quant == "dense" else a.quant,
                          max_model_len=512, max_num_seqs=max(a.batch, 1), num_hidden_layers=a.layers)
    runner, eng = m.engine.runner, m.engine
    eng.overlap = bool(a.overlap)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, m.config.vocab_size, 64).tolist() for _ in range(a.batch)]
    m.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)  # capture

    gpu_ms, marks = [], {}
    orig = runner._replay

    def timed(g, ids, meta, **kw):
        marks["launch"] = time.perf_counter()
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record(runner.stream)
        if a.ncu and not marks.get("profiled"):
            cp.cuda.runtime.deviceSynchronize()
            cp.cuda.profiler.start()
        out = orig(g, ids, meta, **kw)
        e1.record(runner.stream)
        if a.ncu and not marks.get("profiled"):
            cp.cuda.runtime.deviceSynchronize()
            cp.cuda.profiler.stop()
            marks["profiled"] = True
        gpu_ms.append((e0, e1))
        return out

    runner._replay = timed
    step = eng.step
    walls, pre = [], []

    def timed_step():
        t0 = time.perf_counter()
        r = step()
        t1 = time.perf_counter()
        walls.append(t1 - t0)
        pre.append(marks.get("launch", t1) - t0)
        return r

    eng.step = timed_step
    m.generate(prompts, SamplingParams(temperature=0, max_tokens=a.steps, ignore_eos=True), use_tqdm=False)
    cp.cuda.runtime.deviceSynchronize()
    g = np.array([cp.cuda.get_elapsed_time(e0, e1) for e0, e1 in gpu_ms])
    w = 1e3 * np.array(walls[1:])                   # the first step is the prefill
    p = 1e3 * np.array(pre[1:])
    print(f"{a.model} {a.quant} layers={a.layers} batch={a.batch}: {len(g)} replays, {runner.num_eager} eager steps")
    print(f"  engine step wall  median {np.median(w):.3f} ms  (p10 {np.percentile(w, 10):.3f}, p90 "
          f"{np.percentile(w, 90):.3f})")
    print(f"  graph GPU time    median {np.median(g):.3f} ms")
    print(f"  host before launch median {np.median(p):.3f} ms; after launch (sync + sampling + bookkeeping) "
          f"{np.median(w - p):.3f} ms")


if __name__ == "__main__":
    main()
