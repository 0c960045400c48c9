"""The x-quantizing methods' GEMMs past decode on the Llama-3-8B projections: mma_q8 (the prefill GEMM) against the
decode kernels launched per 16 (int4: 8) rows, mma_sk_fp8, block_wise_fp8's bf16 stop-gap and cuBLAS bf16.

    PREFILL_MS=16,32,64,128,256,1024,4096 python benchmarks/gpu_prefill.py   (JSON lines to $OUT/prefill.jsonl)
    PREFILL_VARIANTS=1 also times every (stages, unroll) of mma_q8 at 128 and 4096 rows; PREFILL_NF4=1 only nf4's
    mma_nf4 (both pipeline depths) and gemv_rows per 16 rows; PREFILL_WG=1 only wgmma_q8's modes (depths, in flight).
Graph-captured kernels are timed as gpu_gemv.bench does (20 calls in a graph, weights rotated through 4 buffers);
the stop-gap (cuBLAS through CuPy, which a graph cannot capture) and cuBLAS itself (through torch, in a graph) are
the references. Each row: µs, TFLOP/s (2 M N K / t) and the ratio to cuBLAS bf16.
"""
import json
import os

import cupy as cp
import ml_dtypes
import numpy as np

from fdlite_kernels import gemv_rows as gr
from fdlite_kernels import mma_q8 as q8
from fdlite_kernels.dequant_block_fp8 import dequant_w, dequant_x
from fdlite_kernels.mma_nf4 import mma_nf4
from fdlite_kernels.mma_sk import mma_sk_fp8

import gpu_gemv

BF16 = np.dtype(ml_dtypes.bfloat16)
SHAPES = gpu_gemv.SHAPES
ROT = gpu_gemv.ROT


def bench_eager(fn, calls=10):
    """Median µs of eager calls (for what a graph cannot hold: CuPy's cuBLAS)."""
    for i in range(2):
        fn(i % ROT)
    cp.cuda.Device().synchronize()
    times = []
    for i in range(calls):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        fn(i % ROT)
        b.record()
        b.synchronize()
        times.append(cp.cuda.get_elapsed_time(a, b))
    return float(np.median(times)) * 1e3


def chunks(f, x, y, step):
    """The decode route past its rows: one launch per `step` rows (each reads the weights again)."""
    def run(i):
        for r in range(0, x.shape[0], step):
            f(i, x[r:r + step], y[r:r + step])
    return run


def main():
    rows = []
    ms = [int(v) for v in os.environ.get("PREFILL_MS", "16,32,64,128,256,1024,4096").split(",")]
    variants = os.environ.get("PREFILL_VARIANTS") == "1"
    for name, (N, K) in SHAPES.items():
        b8 = [cp.random.randint(0, 255, (N, K), dtype=np.uint8) & 0xF7 for _ in range(ROT)]   # e4m3 bits, no NaN
        i8 = [a.view(np.int8) for a in b8]
        nib = [a.reshape(-1)[:N * K // 2].reshape(N, K // 2) for a in b8]
        wsb = cp.random.random((-(-N // 128), K // 128), dtype=np.float32)
        wsc = cp.random.random((N, 1), dtype=np.float32)
        ws4 = cp.random.random((N, K // 128), dtype=np.float32)
        ws64 = cp.random.random((N, K // 64), dtype=np.float32)
        only_nf4 = os.environ.get("PREFILL_NF4") == "1"
        for M in ms:
            x = (cp.random.standard_normal((M, K), dtype=np.float32)).astype(BF16)
            y = cp.empty((M, N), dtype=BF16)
            t_bf16 = gpu_gemv.bench_torch_bf16(M, N, K)
            flop = 2 * M * N * K
            cands = [("fp8 q8", lambda i: q8.mma_q8_fp8(x, b8[i], wsb, out=y)),
                     ("channel q8", lambda i: q8.mma_q8_fp8_channel(x, b8[i], wsc, out=y)),
                     ("w8a8 q8", lambda i: q8.mma_q8_int8(x, i8[i], wsc, out=y)),
                     ("w4a8 q8", lambda i: q8.mma_q8_w4a8(x, nib[i], ws4, out=y)),
                     ("w4afp8 q8", lambda i: q8.mma_q8_w4afp8(x, nib[i], ws4, out=y))]
            cands.append(("nf4 mma_nf4", lambda i: mma_nf4(x, nib[i], ws64, out=y)))
            if only_nf4:
                cands = cands[-1:] + [("nf4 mma_nf4 s3", lambda i: mma_nf4(x, nib[i], ws64, out=y, stages=3)),
                                      ("nf4 mma_nf4 wm1", lambda i: mma_nf4(x, nib[i], ws64, out=y, wm=1)),
                                      ("nf4 mma_nf4 s3 wm1", lambda i: mma_nf4(x, nib[i], ws64, out=y, stages=3, wm=1))]
                if M <= 64:
                    cands.append(("nf4 rows", chunks(lambda i, a, b: gr.gemv_rows_nf4(a, nib[i], ws64, out=b), x, y, 16)))
            if M in (128, 4096) and not only_nf4:               # the mma.sync kernel beside wgmma's (sm_90)
                cands += [("fp8 q8 mma", lambda i: q8.mma_q8_fp8(x, b8[i], wsb, out=y, wgmma=False)),
                          ("channel q8 mma", lambda i: q8.mma_q8_fp8_channel(x, b8[i], wsc, out=y, wgmma=False)),
                          ("w8a8 q8 mma", lambda i: q8.mma_q8_int8(x, i8[i], wsc, out=y, wgmma=False))]
                cands += [(f"{n} q8 s{st}{' inflight' if fl else ''}",
                           lambda i, f=f, w=w, s=s, st=st, fl=fl: f(x, w[i], s, out=y, stages=st, inflight=fl))
                          for st in (3, 4) for fl in (False, True) for n, f, w, s in (
                    ("fp8", q8.mma_q8_fp8, b8, wsb), ("channel", q8.mma_q8_fp8_channel, b8, wsc),
                    ("w8a8", q8.mma_q8_int8, i8, wsc))]
            if variants and M in (128, 4096):
                for s in (3, 4):
                    for u in (False, True):
                        kw = {"stages": s, "unroll": u}
                        cands += [(f"fp8 q8 s{s}u{int(u)}", lambda i, kw=kw: q8.mma_q8_fp8(x, b8[i], wsb, out=y, **kw)),
                                  (f"channel q8 s{s}u{int(u)}",
                                   lambda i, kw=kw: q8.mma_q8_fp8_channel(x, b8[i], wsc, out=y, **kw)),
                                  (f"w8a8 q8 s{s}u{int(u)}", lambda i, kw=kw: q8.mma_q8_int8(x, i8[i], wsc, out=y, **kw)),
                                  (f"w4a8 q8 s{s}u{int(u)}", lambda i, kw=kw: q8.mma_q8_w4a8(x, nib[i], ws4, out=y, **kw)),
                                  (f"w4afp8 q8 s{s}u{int(u)}",
                                   lambda i, kw=kw: q8.mma_q8_w4afp8(x, nib[i], ws4, out=y, **kw))]
            if M <= 64 and not only_nf4:                         # the decode kernels, per 16 (int4: 8) rows
                cands += [("channel rows", chunks(lambda i, a, b: gr.gemv_rows_fp8_channel(a, b8[i], wsc, out=b),
                                                  x, y, 16)),
                          ("w8a8 rows", chunks(lambda i, a, b: gr.gemv_rows_int8(a, i8[i], wsc, out=b), x, y, 16)),
                          ("w4a8 rows", chunks(lambda i, a, b: gr.gemv_rows_w4a8(a, nib[i], ws4, out=b), x, y, 8)),
                          ("w4afp8 rows", chunks(lambda i, a, b: gr.gemv_rows_w4afp8(a, nib[i], ws4, out=b), x, y, 8))]
            if M <= 256 and not only_nf4:
                cands.append(("fp8 sk", lambda i: mma_sk_fp8(x, b8[i], wsb, out=y)))
            if os.environ.get("PREFILL_WG") == "1":             # only wgmma_q8's modes and variants
                cands = [c for c in cands if c[0].split()[0] in ("fp8", "channel", "w8a8") and "mma" not in c[0]
                         and "sk" not in c[0] and "rows" not in c[0]]
            for method, fn in cands:
                t = gpu_gemv.bench(fn, calls=20 if M <= 1024 else 5, reps=10 if M <= 1024 else 5)
                rows.append({"shape": name, "N": N, "K": K, "M": M, "method": method, "us": round(t, 2),
                             "TFLOPs": round(flop / t / 1e6, 1), "speedup_vs_bf16": round(t_bf16 / t, 2)})
            if M >= 64 and not only_nf4 and os.environ.get("PREFILL_WG") != "1":                          # block_wise_fp8's stop-gap: bf16 expansion + cuBLAS
                t = bench_eager(lambda i: dequant_x(x) @ dequant_w(b8[i], wsb).T)
                rows.append({"shape": name, "N": N, "K": K, "M": M, "method": "fp8 stop-gap", "us": round(t, 2),
                             "TFLOPs": round(flop / t / 1e6, 1), "speedup_vs_bf16": round(t_bf16 / t, 2)})
            rows.append({"shape": name, "N": N, "K": K, "M": M, "method": "bf16 cuBLAS*", "us": round(t_bf16, 2),
                         "TFLOPs": round(flop / t_bf16 / 1e6, 1), "speedup_vs_bf16": 1.0})
        del b8, i8, nib
        cp.get_default_memory_pool().free_all_blocks()
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "prefill.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print("* cuBLAS via torch in a CUDA graph (reference only; fdlite does not use torch)")
    for r in rows:
        print(f"{r['shape']:8} {r['M']:>5} {r['method']:20} {r['us']:>10} {r['TFLOPs']:>7} {r['speedup_vs_bf16']:>6}")
    print("sum over the four projections of one layer (us):")
    sums = {}
    for r in rows:
        sums.setdefault((r["M"], r["method"]), []).append(r["us"])
    for (M, method), ts in sorted(sums.items()):
        if len(ts) == 4:
            print(f"  M={M:<5} {method:20} {sum(ts):10.1f}")


if __name__ == "__main__":
    main()
