"""End-to-end decode on the GPU: Llama-3-8B shape (random weights drawn on the device, Model.from_config),
128-token prompts, greedy generation through the engine (continuous batching, CUDA-graph decode, GPU sampling).

    python benchmarks/e2e.py [--quant dense,wint8] [--kv bf16,int8] [--batch 1,32] [--gen 256] [--layers N] [--tp N]

--tp N: N GPU processes (Model.from_config(tensor_parallel_size=N); each rank draws its weights on its host, CUDA
graphs are off); the rows add each rank's GPU memory (CuPy pool) and weight bytes.

One model load per (weights, KV) pair serves every batch size. Prints one table row per case and writes JSON lines to $OUT/e2e.jsonl when $OUT is set. Reported: time from
Model.from_config to the first generated token, decode tok/s over the whole batch and ms per step (from the
first-token time to the end), peak GPU memory held by CuPy's pool.
"""
import argparse
import json
import os
import time

import numpy as np

from fdlite import Model, SamplingParams


def load(name, quant, kv, prompt, gen, max_batch, over, tp=1):
    """-> (model, seconds from Model.from_config to the first generated token of one prompt)."""
    t0 = time.perf_counter()
    m = Model.from_config(name, device="cuda", seed=0, quantization=None if quant == "dense" else quant,
                          kv_cache=kv, max_model_len=prompt + gen + 8, max_num_seqs=max_batch,
                          tensor_parallel_size=tp, **over)
    ids = np.random.default_rng(1).integers(0, m.config.vocab_size, prompt).tolist()
    first = m.generate([ids], SamplingParams(temperature=0, max_tokens=1, ignore_eos=True), use_tqdm=False)
    m.backend.synchronize()
    assert len(first[0].outputs.token_ids) == 1
    return m, time.perf_counter() - t0


def _rank_memory(model) -> tuple[float, float]:
    """(GPU GiB in CuPy's pool, weight GiB) of one rank; runs in each tensor-parallel worker (Group.call)."""
    import cupy as cp

    return (round(cp.get_default_memory_pool().total_bytes() / 2**30, 2),
            round(model.memory_report()["weights_bytes"] / 2**30, 2))


def case(m, name, quant, kv, batch, prompt, gen, ttft, over):
    import cupy as cp

    pool = cp.get_default_memory_pool()
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, m.config.vocab_size, prompt).tolist() for _ in range(batch)]
    sp = SamplingParams(temperature=0, max_tokens=gen, ignore_eos=True)
    # warm-up with the whole batch: every decode bucket the run meets is captured (and its kernels compiled)
    # before the clock starts; warming with one prompt left batch 32's capture inside the timed decode
    # (other prompts: the prefix cache would otherwise hold the timed prompts' KV and skip their prefill)
    warm = [rng.integers(0, m.config.vocab_size, prompt).tolist() for _ in range(batch)]
    m.generate(warm, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    runner = m.engine.runner
    r0, e0 = runner.num_replays, runner.num_eager
    t, t_wall = time.perf_counter(), time.time()
    outs = m.generate(prompts, sp, use_tqdm=False)
    m.backend.synchronize()
    total = time.perf_counter() - t
    firsts = [o.metrics.first_token_time for o in outs]
    ends = [o.metrics.finish_time for o in outs]
    decode_s = max(ends) - min(firsts)
    ntok = sum(len(o.outputs.token_ids) for o in outs)
    steps = gen - 1
    row = {"model": name, "quant": quant, "kv": kv, "batch": batch, "prompt": prompt, "gen": gen,
           "load_to_first_token_s": round(ttft, 2), "total_s": round(total, 3),
           "decode_tok_s": round(batch * steps / decode_s, 1), "ms_per_step": round(1e3 * decode_s / steps, 3),
           # until every prompt has its first token: the batch's prefill (chunks of the engine's token budget)
           "prefill_s": round(max(firsts) - t_wall, 4), "prefill_tok_s": round(batch * prompt / (max(firsts) - t_wall), 1),
           "e2e_tok_s": round(ntok / total, 1), "gpu_mem_gib": round(pool.total_bytes() / 2**30, 2),
           "weights_gib": round(m.memory_report()["weights_bytes"] / 2**30, 2),
           "graphs": runner.enabled, "graph_reason": runner.reason, "replays": runner.num_replays - r0,
           "eager_steps": runner.num_eager - e0, "overlap": m.engine.overlap, **({"overrides": over} if over else {})}
    workers = getattr(m, "_workers", None)
    if workers is not None:                          # tensor parallel: every rank's memory, rank 0 first
        ranks = [(row["gpu_mem_gib"], row["weights_gib"])] + workers.call(_rank_memory)
        row.update(tp=len(ranks), rank_gpu_mem_gib=[r[0] for r in ranks], rank_weights_gib=[r[1] for r in ranks])
    print(f"| {name} | {quant} | {kv} | {batch} | {row['decode_tok_s']} | {row['ms_per_step']} | "
          f"{row['load_to_first_token_s']} | {row.get('rank_gpu_mem_gib', row['gpu_mem_gib'])} | "
          f"prefill {row['prefill_s']} s ({row['prefill_tok_s']} tok/s) | graphs={row['graphs']} "
          f"({row['replays']} replays, {row['eager_steps']} eager) |", flush=True)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "e2e.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--quant", default="dense")
    ap.add_argument("--kv", default="bf16,int8")
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--layers", type=int, default=0, help="override num_hidden_layers (0: the model's)")
    ap.add_argument("--tp", type=int, default=1, help="tensor_parallel_size: GPU processes (ranks) on this host")
    ap.add_argument("--overlap", type=int, default=None, help="the engine's overlapped decode (1; the default, see "
                    "fdlite/engine/engine.py) or plain steps (0)")
    a = ap.parse_args()
    over = {"num_hidden_layers": a.layers} if a.layers else {}
    print("| model | weights | kv | batch | decode tok/s | ms/step | load->1st token s | GPU GiB | graphs |")
    print("|---|---|---|---|---|---|---|---|---|")
    batches = [int(x) for x in a.batch.split(",")]
    for q in a.quant.split(","):
        for kv in a.kv.split(","):
            try:
                m, ttft = load(a.model, q, kv, a.prompt, a.gen, max(batches), over, a.tp)
            except Exception as e:  # noqa: BLE001 - report and go on to the next case
                print(f"| {a.model} | {q} | {kv} | - | load FAILED {type(e).__name__}: {str(e)[:200]} |", flush=True)
                continue
            if a.overlap is not None:
                m.engine.overlap = bool(a.overlap)
            for b in batches:
                try:
                    case(m, a.model, q, kv, b, a.prompt, a.gen, ttft, over)
                except Exception as e:  # noqa: BLE001
                    print(f"| {a.model} | {q} | {kv} | {b} | FAILED {type(e).__name__}: {str(e)[:200]} |", flush=True)
            m.close()


if __name__ == "__main__":
    main()
