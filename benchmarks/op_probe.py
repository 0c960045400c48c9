"""The small kernels of a decode step, each timed inside a CUDA graph, with and without PDL.

    python benchmarks/op_probe.py [--reps 64] [--ctx 64,300,1000,4000] [--max-len 512,4096]

For the Llama-3-8B shape at batch 1 (and --batch B): add + RMSNorm (H 4096), RoPE + KV write (32 q / 8 kv
heads of 128, bf16 cache), paged attention (+ its merge) at several contexts, SwiGLU (I 14336). Each op is
captured --reps times back to back in one graph (its inputs were just written, as in a step, so they sit in
L2); a row is the replay time over --reps, in µs per call. FDLITE_PDL is switched per capture (PDL: the next
call's launch overlaps this one's tail; see fdlite_kernels/_launch.py). One JSON row per (op, pdl) on stdout
after the table.
"""
import argparse
import json
import os

import numpy as np


def timed_graph(cp, fn, reps: int, iters: int = 20) -> float:
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        fn()                                   # compile, allocate
        s.synchronize()
        s.begin_capture()
        for _ in range(reps):
            fn()
        g = s.end_capture()
        g.launch(s)
        s.synchronize()
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record(s)
        for _ in range(iters):
            g.launch(s)
        e1.record(s)
        e1.synchronize()
    return cp.cuda.get_elapsed_time(e0, e1) * 1e3 / (iters * reps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--ctx", default="64,300,1000,4000")
    ap.add_argument("--max-len", default="512,4096")
    ap.add_argument("--attn", default="tc,cuda",
                    help="attention plans, comma-separated: tc or cuda (paged_attn_tc / paged_attn), optionally "
                         "with :w<warps>, :k<min_keys> and :c<CTAs per row>, e.g. tc:w8:k32")
    ap.add_argument("--only", default="", help="only ops whose name contains this")
    a = ap.parse_args()
    import cupy as cp

    from fdlite_kernels import fused_ops, kv_cache
    from fdlite_kernels._launch import BF16

    rng = np.random.default_rng(0)
    B, H, I, nh, nkv, D, bs = a.batch, 4096, 14336, 32, 8, 128, 64

    def bf(*shape):
        return cp.asarray(rng.standard_normal(shape, dtype=np.float32)).astype(BF16)

    x, d, w = bf(B, H), bf(B, H), bf(H)
    gu = bf(B, 2 * I)
    ops = {
        "add_rms_norm": lambda: fused_ops.add_rms_norm(x, d, w, 1e-5),
        "silu_mul": lambda: fused_ops.silu_mul(gu),
    }
    ctxs = [int(c) for c in a.ctx.split(",")]
    max_lens = [int(m) for m in a.max_len.split(",")]
    nb = B * (-(-max(max_lens + ctxs) // bs)) + 1
    cache = {"fmt": 0, "k": bf(nb, nkv, bs, D), "v": bf(nb, nkv, bs, D)}
    qkv = bf(B, (nh + 2 * nkv) * D)
    cos_t = cp.asarray(rng.standard_normal((8192, D // 2), dtype=np.float32))
    sin_t = cp.asarray(rng.standard_normal((8192, D // 2), dtype=np.float32))
    mb = (nb - 1) // B
    tables = cp.asarray(np.arange(B * mb, dtype=np.int32).reshape(B, mb))
    rows = cp.arange(B, dtype=np.int32)
    q = bf(B, nh, D)
    for ctx in ctxs:
        pos = cp.full(B, ctx - 1, np.int32)
        slots = cp.asarray((np.arange(B) * mb * bs + ctx - 1).astype(np.int32))
        ops[f"rope_kv_write ctx={ctx}"] = (lambda pos=pos, slots=slots: kv_cache.rope_kv_write(
            qkv, nh, nkv, D, cos_t, sin_t, pos, slots, cache))
        for ml in max_lens:
            if ml < ctx:
                continue
            for plan in a.attn.split(","):
                kind, *opts = plan.split(":")
                kw = {"tensor_cores": kind == "tc"}
                for o in opts:
                    kw[{"w": "warps", "k": "min_keys", "c": "ctas_per_row"}[o[0]]] = int(o[1:])
                ops[f"paged_attention[{plan}] ctx={ctx} max_len={ml}"] = (
                    lambda pos=pos, ml=ml, kw=kw: kv_cache.paged_attention(
                        q, cache, tables, rows, pos, window=None, scale=D ** -0.5, max_len=ml, **kw))

    results = []
    print(f"| op (batch {B}) | µs / call, plain | µs / call, PDL |")
    print("|---|---|---|")
    for name, fn in ops.items():
        if a.only not in name:
            continue
        t = {}
        for pdl in ("0", "1"):
            os.environ["FDLITE_PDL"] = pdl
            t[pdl] = timed_graph(cp, fn, a.reps)
            results.append({"op": name, "batch": B, "pdl": pdl == "1", "us_per_call": round(t[pdl], 2)})
        print(f"| {name} | {t['0']:.2f} | {t['1']:.2f} |")
    os.environ.pop("FDLITE_PDL", None)
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
