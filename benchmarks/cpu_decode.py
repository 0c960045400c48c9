"""SmolLM2-135M on the CPU: load time, prefill tok/s, greedy decode tok/s, peak RSS.

    python benchmarks/cpu_decode.py [--model smollm2-135m] [--prompt-tokens 128] [--new-tokens 128]
"""
import argparse
import json
import resource
import time

import numpy as np

from fdlite import Model, SamplingParams


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--quantization", default=None)
    ap.add_argument("--kv-cache", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = Model.load(args.model, device="cpu", quantization=args.quantization, kv_cache=args.kv_cache)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    prompt = rng.integers(100, model.config.vocab_size, args.prompt_tokens).tolist()
    model.generate([prompt[:8]], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)   # warm up
    model.logits(np.asarray(prompt))   # first touch of BLAS buffers and pages
    t0 = time.perf_counter()
    model.logits(np.asarray(prompt))
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = model.generate([prompt], SamplingParams(temperature=0, max_tokens=args.new_tokens, ignore_eos=True),
                         use_tqdm=False)[0]
    total = time.perf_counter() - t0
    first = out.metrics.first_token_time - out.metrics.inference_start_time
    n = len(out.outputs.token_ids)
    res = {
        "model": args.model, "quantization": args.quantization, "kv_cache": args.kv_cache,
        "load_s": round(load_s, 2), "prefill_tokens": args.prompt_tokens,
        "prefill_tok_s": round(args.prompt_tokens / prefill_s, 1),
        "decode_tokens": n, "decode_tok_s": round((n - 1) / (total - first), 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "weights_mib": round(model.memory_report()["weights_bytes"] / 2**20, 1),
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
