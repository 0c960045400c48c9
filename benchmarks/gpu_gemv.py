"""Weight kernels vs cuBLAS bf16 on Llama-3-8B shapes; achieved GB/s of weight traffic and the sum over one
layer's four projections (the issue's measure).

    GEMV_MS=1,16,64 python benchmarks/gpu_gemv.py   (on the GPU machine; JSON lines to $OUT/gemv.jsonl)
    ROWMAJOR=1 adds the first row-major int8/int4 GEMVs (superseded by the packed layout); WINT2=0 skips wint2;
    GEMV_CFGS=1 times every compiled mma_wq block shape for M > 16; GEMV_SK=1 every mma_sk plan (warps, mt,
    splits) for wint4; GEMV_XS=1 gemv_xs's warps per block and x chunk sizes for M <= 32; GEMV_XSK=1 its K splits over blocks; GEMV_TC=1 every gemv_packed block shape (row pairs, warps) for M <= 16, at the ring depths
    of GEMV_TC_DEPTHS (default 0: registers), GEMV_TC_SHAPES="r.w.minb;..." to name the shapes; PACKED_ONLY=1
    times only cuBLAS and the packed int8 / int4 kernels (routed, mma_sk). ROWS_ONLY=1 times the row-major decode
    GEMV gemv_rows (bf16 and block_wise_fp8, every block shape) against mma_bf16 / gemv_bf16 / mma_sk_fp8 / cuBLAS;
    LM_HEAD=1 adds the 128256 x 4096 vocabulary projection to the shapes; INT4_ROWS=1 (with ROWS_ONLY=1) times
    gemv_rows' int4 modes instead (w4a8, w4afp8, nf4 and its block shapes) against wint4's gemv_packed, NF4_ONLY=1
    only nf4's, PRE=1 the x-quantizing modes with x quantized once (pre) and per block, ROWS16=1 (GEMV_MS=12,16)
    the 9-16 row launches (two token fragments) against cuBLAS, mma_sk_fp8 and two launches of half the rows. WINT2_ONLY=1 times the WINT2
    GEMVs (gemv_wint2_tc, and gemv_wint2 to 4 rows) on random CCQ tensors drawn on the device, against cuBLAS.
"""
import json
import os

import cupy as cp
import ml_dtypes
import numpy as np

from fdlite_kernels.gemv_wint4 import gemv_wint4, pack_int4
from fdlite_kernels.gemv_block_fp8 import gemv_block_fp8
from fdlite_kernels.gemv_wint2 import gemv_wint2, gemv_wint2_tc
from fdlite_kernels.gemv_wint8 import gemv_wint8
from fdlite_kernels.gemv_bf16 import gemv_bf16
from fdlite_kernels.dequant_block_fp8 import dequant_w, dequant_x
from fdlite_kernels.gemv_packed import gemv_packed
from fdlite_kernels import gemv_rows
from fdlite_kernels.gemv_xs import gemv_xs
from fdlite_kernels.mma_sk import mma_sk, mma_sk_bf16, mma_sk_fp8
from fdlite_kernels.mma_wq import gemm_packed, mma_bf16, mma_wq, repack

BF16 = np.dtype(ml_dtypes.bfloat16)
W2 = __import__("fdlite.quant", fromlist=["get"]).get("wint2")()
SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
if os.environ.get("LM_HEAD") == "1":
    SHAPES["lm_head"] = (128256, 4096)
ROT = 4   # rotate weight buffers so L2 (50-60 MB) cannot hold them
# gemv_packed block shapes timed by GEMV_TC=1: (row pairs, warps, resident blocks asked per SM)
TC_SHAPES = ((1, 8, 1), (1, 8, 3), (1, 8, 4), (1, 4, 1), (1, 4, 6), (1, 4, 8), (1, 16, 1), (1, 16, 2), (2, 8, 1),
             (2, 8, 3))
# ring depths timed with them (GEMV_TC_DEPTHS=0,4,...; 0 = the registers) and, when given, the shapes to time
TC_DEPTHS = [int(v) for v in os.environ.get("GEMV_TC_DEPTHS", "0").split(",")]
if os.environ.get("GEMV_TC_SHAPES"):                      # e.g. "1.8.1;1.4.1"
    TC_SHAPES = tuple(tuple(int(v) for v in t.split(".")) for t in os.environ["GEMV_TC_SHAPES"].split(";"))
WINT2 = os.environ.get("WINT2", "1") == "1"   # its host quantization (scale search) takes minutes per shape


def bench(fn, calls=20, reps=10):
    """Median µs per call, 20 calls captured in one CUDA graph (no Python launch gaps), weights rotated."""
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        for i in range(3):
            fn(i % ROT)                       # compile + warm up outside the capture
        stream.synchronize()
        stream.begin_capture()
        for i in range(calls):
            fn(i % ROT)
        graph = stream.end_capture()
        graph.launch(stream)
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        times = []
        for _ in range(reps):
            start.record(stream)
            graph.launch(stream)
            stop.record(stream)
            stop.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, stop) / calls)
    return float(np.median(times)) * 1e3


def bench_torch_bf16(M, N, K, calls=20, reps=10):
    """cuBLAS bf16 through torch (on the device only, for comparison): CuPy cannot capture cuBLAS in a graph."""
    import torch  # noqa: PLC0415

    x = torch.randn(M, K, dtype=torch.bfloat16, device="cuda")
    ws = [torch.randn(N, K, dtype=torch.bfloat16, device="cuda") for _ in range(ROT)]
    y = torch.empty(M, N, dtype=torch.bfloat16, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for i in range(3):
            torch.matmul(x, ws[i % ROT].T, out=y)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            torch.matmul(x, ws[i % ROT].T, out=y)
    g.replay()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        g.replay()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / calls)
    del ws
    torch.cuda.empty_cache()
    return float(np.median(times)) * 1e3


def copy_roof() -> float:
    """GB/s of a device-to-device copy of 1 GiB (bytes read + written), the bandwidth reference."""
    a = cp.empty(2**29, dtype=np.uint16)
    b = cp.empty_like(a)
    t = bench(lambda i: b.__setitem__(Ellipsis, a), calls=5)
    return 2 * a.nbytes / t / 1e3


def main():
    rng = np.random.default_rng(0)
    rows = []
    nan = float("nan")
    rowmajor = os.environ.get("ROWMAJOR") == "1"
    for name, (N, K) in SHAPES.items():
        q8 = None if not rowmajor else [cp.asarray(rng.integers(-127, 128, (N, K), dtype=np.int8)) for _ in range(ROT)]
        s8 = cp.asarray(rng.random(N, dtype=np.float32))
        q4 = None if not rowmajor else [cp.asarray(pack_int4(rng.integers(-8, 8, (N, K)))) for _ in range(ROT)]
        s4 = cp.asarray(rng.random((N, K // 128), dtype=np.float32))
        rows_only = os.environ.get("ROWS_ONLY") == "1" or os.environ.get("WINT2_ONLY") == "1"
        p8 = None if rows_only else [repack(cp.random.randint(-127, 128, (N, K), dtype=np.int16), 8)
                                     for _ in range(ROT)]   # on the device
        p4 = None if rows_only else [repack(cp.random.randint(-8, 8, (N, K), dtype=np.int16), 4) for _ in range(ROT)]
        s8c = cp.asarray(rng.random((N, 1), dtype=np.float32))
        packed = os.environ.get("PACKED_ONLY") == "1"           # just the packed int8 / int4 kernels (and cuBLAS)
        f8 = None if packed or rows_only else [cp.asarray((rng.standard_normal((N, K)) * 50).clip(-448, 448).astype(ml_dtypes.float8_e4m3fn)
                         .view(np.uint8)) for _ in range(ROT)]
        if os.environ.get("WINT2_ONLY") == "1":
            f8 = None
        elif rows_only:                           # drawn on the device (the vocabulary shape is slow on the host)
            f8 = [(cp.random.randint(0, 0x7F, (N, K), dtype=np.uint8) | (cp.random.randint(0, 2, (N, K), dtype=np.uint8)
                                                                        << 7)).astype(np.uint8) for _ in range(ROT)]
        w2 = [{k: cp.asarray(v) for k, v in W2.quantize(rng.standard_normal((N, K), dtype=np.float32)).arrays.items()}
              for _ in range(2)] * 2 if WINT2 else None
        wsf = cp.asarray(rng.random((-(-N // 128), -(-K // 128)), dtype=np.float32))
        if os.environ.get("WINT2_ONLY") == "1":
            wb = None
        elif rows_only:
            wb = [(cp.random.standard_normal((N, K), dtype=np.float32) * 0.02).astype(BF16) for _ in range(ROT)]
        else:
            wb = None if packed else [cp.asarray((rng.standard_normal((N, K)) * 0.02).astype(BF16)) for _ in range(ROT)]
        for M in [int(v) for v in os.environ.get("GEMV_MS", "1,4,16,256").split(",")]:
            x = cp.asarray(rng.standard_normal((M, K)).astype(BF16))
            y = cp.empty((M, N), dtype=BF16)
            t_bf16 = bench_torch_bf16(M, N, K)
            gemv = M <= 16
            if os.environ.get("WINT2_ONLY") == "1":             # the WINT2 GEMVs on random CCQ tensors
                Kp = -(-K // 128) * 128
                w2r = [(cp.random.randint(0, 256, (Kp // 4, N), dtype=np.uint8),
                        cp.random.randint(0, 256, (Kp // 128, N), dtype=np.uint8),
                        (cp.random.random(N, dtype=np.float32) * 1e-3).astype(BF16),
                        cp.full(N, 120.0, np.float32), cp.full(N, 1084.0, np.float32)) for _ in range(ROT)]
                nb = N * Kp // 4 + N * Kp // 128 + 10 * N
                cands = [("wint2 tc", lambda i: gemv_wint2_tc(x, *w2r[i], out=y))]
                cands += [("wint2 tc w8", lambda i: gemv_wint2_tc(x, *w2r[i], out=y, warps=8))] if M <= 8 else []
                cands += [("wint2 tc d2", lambda i: gemv_wint2_tc(x, *w2r[i], out=y, depth=2)),
                          ("wint2 tc w8 d2", lambda i: gemv_wint2_tc(x, *w2r[i], out=y, warps=8, depth=2))]
                cands += [("wint2 cuda", lambda i: gemv_wint2(x, *w2r[i], out=y))] if M <= 4 else []
                rows.append({"shape": name, "N": N, "K": K, "M": M, "method": "bf16 cuBLAS*", "us": round(t_bf16, 2),
                             "GB_s": round(2 * N * K / t_bf16 / 1e3, 1), "speedup_vs_bf16": 1.0})
                for method, fn in cands:
                    t = bench(fn)
                    rows.append({"shape": name, "N": N, "K": K, "M": M, "method": method, "us": round(t, 2),
                                 "GB_s": round(nb / t / 1e3, 1), "speedup_vs_bf16": round(t_bf16 / t, 2)})
                del w2r
                continue
            int4_rows = os.environ.get("INT4_ROWS") == "1" and (M <= 8 or os.environ.get("ROWS16") == "1")
            if os.environ.get("ROWS_ONLY") == "1" and int4_rows:
                # gemv_rows' int4 modes (the byte buffers' first half as nibbles) against wint4's gemv_packed
                gr = gemv_rows
                nib = [f8[i].reshape(-1)[:N * K // 2].reshape(N, K // 2) for i in range(ROT)]
                ws4, ws64 = cp.ones((N, K // 128), np.float32), cp.ones((N, K // 64), np.float32)
                wsf8, wsc = cp.ones((-(-N // 128), K // 128), np.float32), cp.ones((N, 1), np.float32)
                pk = [repack(cp.random.randint(-8, 8, (N, K), dtype=np.int16), 4) for _ in range(2)] * 2
                b4, b64 = 0.5 + 4 / 128, 0.5 + 4 / 64                   # bytes per weight with the scales
                cands = [("wint4 packed", lambda i: gemm_packed(x, pk[i], ws4, N, 4, 128, out=y), b4),
                         ("w4a8 rows", lambda i: gr.gemv_rows_w4a8(x, nib[i], ws4, out=y), b4),
                         ("w4afp8 rows", lambda i: gr.gemv_rows_w4afp8(x, nib[i], ws4, out=y), b4),
                         ("nf4 rows", lambda i: gr.gemv_rows_nf4(x, nib[i], ws64, out=y), b64)]
                for r, wp in ((1, 4), (1, 8), (1, 16)):
                    cands.append((f"nf4 rows{r},{wp}", lambda i, r=r, wp=wp: gr.gemv_rows_nf4(
                        x, nib[i], ws64, out=y, rows=r, warps=wp), b64))
                cands.append(("w4afp8 rows1,4", lambda i: gr.gemv_rows_w4afp8(x, nib[i], ws4, out=y, rows=1,
                                                                              warps=4), b4))
                if os.environ.get("PRE") == "1":                    # x quantized once (PRE) against per block
                    cands = cands[:1]
                    for pre in (False, True):
                        tag, kw = "pre" if pre else "blk", {"out": y, "pre": pre}
                        i8 = [a.view(np.int8) for a in f8]
                        cands += [
                            (f"fp8 {tag}", lambda i, kw=kw: gr.gemv_rows_fp8(x, f8[i], wsf8, **kw), 1),
                            (f"channel {tag}", lambda i, kw=kw: gr.gemv_rows_fp8_channel(x, f8[i], wsc, **kw), 1),
                            (f"w8a8 {tag}", lambda i, kw=kw: gr.gemv_rows_int8(x, i8[i], wsc, **kw), 1),
                            (f"w4a8 {tag}", lambda i, kw=kw: gr.gemv_rows_w4a8(x, nib[i], ws4, **kw), b4),
                            (f"w4afp8 {tag}", lambda i, kw=kw: gr.gemv_rows_w4afp8(x, nib[i], ws4, **kw), b4)]
                    for wp in (4, 16):
                        cands.append((f"fp8 pre1,{wp}", lambda i, wp=wp: gr.gemv_rows_fp8(
                            x, f8[i], wsf8, out=y, pre=True, rows=1, warps=wp), 1))
                if os.environ.get("ROWS16") == "1":                 # 9-16 rows: two token fragments a launch
                    wb1 = [(cp.random.standard_normal((N, K), dtype=np.float32) * 0.02).astype(BF16)
                           for _ in range(2)] * 2
                    h = M // 2                                       # the same rows as two launches of M / 2

                    def twice(f):
                        return lambda i: (f(i, x[:h], y[:h]), f(i, x[h:], y[h:]))
                    cands = [cands[0],
                             ("bf16 rows", lambda i: gr.gemv_rows_bf16(x, wb1[i], out=y), 2),
                             ("bf16 mma", lambda i: mma_bf16(x, wb1[i], out=y), 2),
                             ("fp8 rows", lambda i: gr.gemv_rows_fp8(x, f8[i], wsf8, out=y), 1),
                             ("fp8 sk", lambda i: mma_sk_fp8(x, f8[i], wsf8, out=y), 1),
                             ("w8a8 rows", lambda i: gr.gemv_rows_int8(x, f8[i].view(np.int8), wsc, out=y), 1),
                             ("w8a8 2x", twice(lambda i, xx, yy: gr.gemv_rows_int8(xx, f8[i].view(np.int8), wsc,
                                                                                    out=yy)), 1),
                             ("nf4 rows", lambda i: gr.gemv_rows_nf4(x, nib[i], ws64, out=y), b64),
                             ("nf4 2x", twice(lambda i, xx, yy: gr.gemv_rows_nf4(xx, nib[i], ws64, out=yy)), b64)]
                if os.environ.get("NF4_ONLY") == "1":               # wint4's kernel and the nf4 variants
                    cands = [c for c in cands if c[0].startswith(("wint4", "nf4"))]
                for method, fn, bpw in [("bf16 cuBLAS*", None, 2)] + cands:
                    t = t_bf16 if fn is None else bench(fn)
                    rows.append({"shape": name, "N": N, "K": K, "M": M, "method": method, "us": round(t, 2),
                                 "GB_s": round(N * K * bpw / t / 1e3, 1), "speedup_vs_bf16": round(t_bf16 / t, 2)})
                del pk
                continue
            if os.environ.get("ROWS_ONLY") == "1":              # gemv_rows against the kernels it replaces
                cands = [("bf16 mma", lambda i: mma_bf16(x, wb[i], out=y), 2),
                         ("block fp8 sk", lambda i: mma_sk_fp8(x, f8[i], wsf, out=y), 1)]
                if M == 1:
                    cands.append(("bf16 gemv", lambda i: gemv_bf16(x, wb[i], out=y), 2))
                for r, wp in gemv_rows.SHAPES if M <= gemv_rows.MAX_M else ():
                    cands.append((f"bf16 rows{r},{wp}",
                                  lambda i, r=r, wp=wp: gemv_rows.gemv_rows_bf16(x, wb[i], out=y, rows=r, warps=wp), 2))
                    cands.append((f"fp8 rows{r},{wp}",
                                  lambda i, r=r, wp=wp: gemv_rows.gemv_rows_fp8(x, f8[i], wsf, out=y, rows=r, warps=wp),
                                  1))
                if M <= gemv_rows.MAX_M:                            # the plan's shape, under its own name
                    wsc = cp.ones((N, 1), np.float32)
                    cands += [("bf16 rows plan", lambda i: gemv_rows.gemv_rows_bf16(x, wb[i], out=y), 2),
                              ("fp8 rows plan", lambda i: gemv_rows.gemv_rows_fp8(x, f8[i], wsf, out=y), 1),
                              ("fp8 channel rows", lambda i: gemv_rows.gemv_rows_fp8_channel(x, f8[i], wsc, out=y), 1),
                              ("w8a8 rows", lambda i: gemv_rows.gemv_rows_int8(x, f8[i].view(np.int8), wsc, out=y), 1)]
                    if K % 256 == 0:                                # w4a8: the first half of the byte buffers as nibbles
                        ws4 = cp.ones((N, K // 128), np.float32)
                        cands.append(("w4a8 rows", lambda i: gemv_rows.gemv_rows_w4a8(
                            x, f8[i].reshape(-1)[:N * K // 2].reshape(N, K // 2), ws4, out=y), 0.5))
                for method, fn, bpw in [("bf16 cuBLAS*", None, 2)] + cands:
                    t = t_bf16 if fn is None else bench(fn)
                    rows.append({"shape": name, "N": N, "K": K, "M": M, "method": method, "us": round(t, 2),
                                 "GB_s": round(N * K * bpw / t / 1e3, 1), "speedup_vs_bf16": round(t_bf16 / t, 2)})
                continue
            only8 = os.environ.get("FP8_ONLY") == "1"            # just block_wise_fp8's kernels (and cuBLAS)
            B = (lambda f: nan) if only8 or packed else bench
            P = (lambda f: nan) if only8 else bench
            t_w8 = B(lambda i: gemv_wint8(x, q8[i], s8, out=y)) if gemv and rowmajor else nan
            t_w4 = B(lambda i: gemv_wint4(x, q4[i], s4, out=y)) if gemv and rowmajor else nan
            t_f8 = B(lambda i: gemv_block_fp8(x, f8[i], wsf, out=y)) if gemv else nan
            t_fk = (bench if not packed else B)(lambda i: mma_sk_fp8(x, f8[i], wsf, out=y))
            t_fs = (bench if not packed else B)(lambda i: mma_bf16(dequant_x(x), dequant_w(f8[i], wsf), out=y)) if M > 16 else nan
            t_w2 = B(lambda i: gemv_wint2(x, w2[i]["quant_weight"], w2[i]["weight_scale"], w2[i]["super_scales"],
                                          w2[i]["code_scale"], w2[i]["code_zp"], out=y)) if M <= 4 and WINT2 else nan
            t_m8 = P(lambda i: gemm_packed(x, p8[i], s8c, N, 8, K, out=y))
            t_m4 = P(lambda i: gemm_packed(x, p4[i], s4, N, 4, 128, out=y))
            t_t8 = B(lambda i: mma_wq(x, p8[i], s8c, N, 8, K, out=y)) if M == 1 else nan
            t_t4 = B(lambda i: mma_wq(x, p4[i], s4, N, 4, 128, out=y)) if M == 1 else nan
            t_gb = B(lambda i: gemv_bf16(x, wb[i], out=y)) if M == 1 else nan
            t_mb = B(lambda i: mma_bf16(x, wb[i], out=y))
            t_x8 = P(lambda i: gemv_xs(x, p8[i], s8c, N, 8, K, out=y)) if M <= 32 else nan
            t_x4 = P(lambda i: gemv_xs(x, p4[i], s4, N, 4, 128, out=y)) if M <= 32 else nan
            t_k8 = P(lambda i: mma_sk(x, p8[i], s8c, N, 8, K, out=y))
            t_k4 = P(lambda i: mma_sk(x, p4[i], s4, N, 4, 128, out=y))
            t_kb = B(lambda i: mma_sk_bf16(x, wb[i], out=y))
            t_k44 = B(lambda i: mma_sk(x, p4[i], s4, N, 4, 128, out=y, warps=4))
            for method, t, nbytes in (("bf16 cuBLAS*", t_bf16, N * K * 2), ("wint8 gemv", t_w8, N * K + 4 * N),
                                      ("wint4 gemv", t_w4, N * K // 2 + 4 * N * K // 128),
                                      ("block fp8", t_f8, N * K + 4 * N * K // 16384),
                                      ("block fp8 sk", t_fk, N * K + 4 * N * K // 16384),
                                      ("block fp8 stop-gap", t_fs, N * K + 4 * N * K // 16384),
                                      ("wint2", t_w2, N * K // 4 + N * K // 128 + 10 * N),
                                      ("wint8 packed", t_m8, N * K + 4 * N),
                                      ("wint4 packed", t_m4, N * K // 2 + 4 * N * K // 128),
                                      ("wint8 mma", t_t8, N * K + 4 * N),
                                      ("wint4 mma", t_t4, N * K // 2 + 4 * N * K // 128),
                                      ("wint8 xs", t_x8, N * K + 4 * N),
                                      ("wint4 xs", t_x4, N * K // 2 + 4 * N * K // 128),
                                      ("wint8 sk", t_k8, N * K + 4 * N),
                                      ("wint4 sk", t_k4, N * K // 2 + 4 * N * K // 128),
                                      ("wint4 sk w4", t_k44, N * K // 2 + 4 * N * K // 128),
                                      ("bf16 gemv", t_gb, N * K * 2), ("bf16 mma", t_mb, N * K * 2),
                                      ("bf16 sk", t_kb, N * K * 2)):
                if t == t:                                  # skip the combinations not run (nan)
                    rows.append({"shape": name, "N": N, "K": K, "M": M, "method": method, "us": round(t, 2),
                                 "GB_s": round(nbytes / t / 1e3, 1), "speedup_vs_bf16": round(t_bf16 / t, 2)})
            if os.environ.get("GEMV_TC") == "1" and M <= 16:     # gemv_packed's block shapes
                shapes = [(r, wp, mb, d) for d in TC_DEPTHS for r, wp, mb in TC_SHAPES]
                for r, wp, mb, d in shapes:
                    for bits, pw, sc, g, nb in ((4, p4, s4, 128, N * K // 2 + 4 * N * K // 128),
                                                (8, p8, s8c, K, N * K + 4 * N)):
                        try:
                            t = bench(lambda i: gemv_packed(x, pw[i], sc, N, bits, g, out=y, rows=r, warps=wp,
                                                            minb=mb, depth=d))
                        except (ValueError, RuntimeError) as e:   # a ring too large for one block
                            print(f"skipped tc{r},{wp},{mb},d{d}: {e}")
                            continue
                        rows.append({"shape": name, "N": N, "K": K, "M": M,
                                     "method": f"wint{bits} tc{r},{wp},{mb}" + (f",d{d}" if d else ""),
                                     "us": round(t, 2), "GB_s": round(nb / t / 1e3, 1),
                                     "speedup_vs_bf16": round(t_bf16 / t, 2)})
            if os.environ.get("GEMV_XS") == "1" and M <= 32:    # gemv_xs's warps per block, x chunk KiB
                for wx, ck in ((16, 64), (8, 32), (8, 64), (16, 16)):    # the plan's (P, S) for those warps
                    for bits, pw, sc, g, nb in ((4, p4, s4, 128, N * K // 2 + 4 * N * K // 128),
                                                (8, p8, s8c, K, N * K + 4 * N)):
                        t = bench(lambda i: gemv_xs(x, pw[i], sc, N, bits, g, out=y, warps=wx, chunk_kib=ck))
                        rows.append({"shape": name, "N": N, "K": K, "M": M, "method": f"wint{bits} xs w{wx} c{ck}",
                                     "us": round(t, 2), "GB_s": round(nb / t / 1e3, 1),
                                     "speedup_vs_bf16": round(t_bf16 / t, 2)})
            if os.environ.get("GEMV_XSK") == "1" and M <= 32:   # gemv_xs's K split over blocks (row pairs P)
                for ks, pp in ((1, None), (2, 16), (4, 16), (8, 16), (16, 16), (4, 8), (8, 8), (16, 8)):
                    for bits, pw, sc, g, nb in ((4, p4, s4, 128, N * K // 2 + 4 * N * K // 128),
                                                (8, p8, s8c, K, N * K + 4 * N)):
                        t = bench(lambda i: gemv_xs(x, pw[i], sc, N, bits, g, out=y, ksplit=ks, pairs_per_block=pp,
                                                    slices=None if pp is None else 16 // pp))
                        rows.append({"shape": name, "N": N, "K": K, "M": M, "method": f"wint{bits} xs k{ks},p{pp}",
                                     "us": round(t, 2), "GB_s": round(nb / t / 1e3, 1),
                                     "speedup_vs_bf16": round(t_bf16 / t, 2)})
            if os.environ.get("GEMV_SK") == "1":                 # mma_sk's plans: warps, block height, K splits
                for wp in (4, 8):
                    for mt in (1, 2, 4):
                        for sp in (1, 2, 4, 8):
                            t = bench(lambda i: mma_sk(x, p4[i], s4, N, 4, 128, out=y, mt=mt, splits=sp, warps=wp))
                            rows.append({"shape": name, "N": N, "K": K, "M": M, "method": f"wint4 sk{wp},{mt},{sp}",
                                         "us": round(t, 2), "GB_s": round(N * K / 2 / t / 1e3, 1),
                                         "speedup_vs_bf16": round(t_bf16 / t, 2)})
            if M > 16 and os.environ.get("GEMV_CFGS") == "1":     # mma_wq's block shapes, to set _BY_M
                from fdlite_kernels.mma_wq import _CONFIGS  # noqa: PLC0415
                for cfg in _CONFIGS:
                    for method, fn, nbytes in (
                            ("wint8", lambda i: mma_wq(x, p8[i], s8c, N, 8, K, out=y, cfg=cfg), N * K),
                            ("wint4", lambda i: mma_wq(x, p4[i], s4, N, 4, 128, out=y, cfg=cfg), N * K // 2),
                            ("bf16", lambda i: mma_bf16(x, wb[i], out=y, cfg=cfg), 2 * N * K)):
                        t = bench(fn)
                        rows.append({"shape": name, "N": N, "K": K, "M": M, "method": f"{method} {cfg}",
                                     "us": round(t, 2), "GB_s": round(nbytes / t / 1e3, 1),
                                     "speedup_vs_bf16": round(t_bf16 / t, 2)})
        del wb, q8, q4, p8, p4, f8, w2
        cp.get_default_memory_pool().free_all_blocks()
    roof = copy_roof()
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gemv.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"device-to-device copy: {roof:.0f} GB/s (read + write)")
    print("* cuBLAS via torch in a CUDA graph (reference only; fdlite does not use torch)")
    print(f"{'shape':8} {'M':>4} {'method':12} {'us':>8} {'GB/s':>7} {'x bf16':>7}")
    for r in rows:
        print(f"{r['shape']:8} {r['M']:>4} {r['method']:12} {r['us']:>8} {r['GB_s']:>7} {r['speedup_vs_bf16']:>7}")
    print("sum over the four projections of one layer (us):")
    sums = {}
    for r in rows:
        if r["shape"] != "lm_head":
            sums.setdefault((r["M"], r["method"]), []).append(r["us"])
    for (M, method), ts in sorted(sums.items()):
        if len(ts) == 4:
            print(f"  M={M:<4} {method:12} {sum(ts):8.1f}")


if __name__ == "__main__":
    main()
