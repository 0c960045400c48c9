"""The peer in the same run as benchmarks/e2e.py: HF transformers eager bf16 on the Llama-3-8B shape, random
weights, 128-token prompts, greedy (the protocol of ../shared/bench/peer_anchors_torch.py). Needs torch and
transformers (present on the benchmark machine; fdlite itself never imports them).

    python benchmarks/hf_peer.py [--batch 1,32] [--gen 64]
"""
import argparse
import json
import os
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--gen", type=int, default=64)
    a = ap.parse_args()
    try:
        import torch
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        print(f"HF peer skipped: {e}")
        return
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)
    torch.manual_seed(0)
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        model = LlamaForCausalLM(cfg).eval()
        torch.set_default_dtype(torch.float32)
    for bs in [int(b) for b in a.batch.split(",")]:
        ids = torch.randint(0, 128000, (bs, 128), device="cuda")
        with torch.no_grad():
            model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=a.gen, min_new_tokens=a.gen, do_sample=False)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        row = {"peer": f"transformers {transformers.__version__} eager bf16", "batch": bs, "gen": a.gen,
               "tok_s": round(bs * a.gen / dt, 1), "ms_per_step": round(1e3 * dt / a.gen, 2)}
        print(f"| HF eager bf16 | batch {bs} | {row['tok_s']} tok/s | {row['ms_per_step']} ms/step |", flush=True)
        if os.environ.get("OUT"):
            with open(os.path.join(os.environ["OUT"], "hf_peer.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
