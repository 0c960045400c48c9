"""Model.from_config on the GPU: random-weight build time (weights drawn on the device), a 128-token prefill and
greedy decode, for the presets at full width. Usage (device): python benchmarks/gpu_from_config.py [name ...]"""
import sys
import time

import numpy as np

from fdlite import Model, SamplingParams

CASES = {"ernie-4.5-0.3b": {}, "llama-3-8b": {}, "ernie-4.5-21b-a3b": {},
         "ernie-4.5-300b-a47b": {"num_hidden_layers": 4}}       # 3 dense layers + 1 MoE layer at full width


def bench(name, over):
    t = time.perf_counter()
    m = Model.from_config(name, device="cuda", seed=0, max_model_len=1024, max_num_seqs=1, **over)
    m.backend.synchronize()
    build = time.perf_counter() - t
    gib = m.memory_report()["weights_bytes"] / 2**30
    ids = np.random.default_rng(0).integers(0, m.config.vocab_size, (1, 128))
    first = m.logits(ids[:, :8])
    t = time.perf_counter()
    m.logits(ids)
    prefill = time.perf_counter() - t

    def gen(n):
        t = time.perf_counter()
        out = m.generate([ids[0, :16].tolist()], SamplingParams(temperature=0, max_tokens=n, ignore_eos=True),
                         use_tqdm=False)
        return time.perf_counter() - t, out[0].outputs.token_ids

    gen(2)
    t1, _ = gen(1)
    t33, toks = gen(33)
    m.close()
    again = Model.from_config(name, device="cuda", seed=0, max_model_len=64, max_num_seqs=1, **over)
    same = bool(np.array_equal(again.logits(ids[:, :8]), first))
    again.close()
    print(f"| {name} {over or ''} | {build:.1f} s | {gib:.1f} GiB | {128 / prefill:.0f} tok/s | "
          f"{32 / (t33 - t1):.1f} tok/s | same seed same logits: {same} | {toks[:6]} |", flush=True)


if __name__ == "__main__":
    for n in sys.argv[1:] or CASES:
        bench(n, CASES[n])
