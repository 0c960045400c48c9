"""Run one weight kernel a few times on a Llama-3-8B projection, for Nsight Compute to look at.

    ncu --launch-skip 2 --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats \
        python benchmarks/kernel_probe.py --kernel wint4 --M 1 --shape gate_up
"""
import argparse

import cupy as cp
import ml_dtypes
import numpy as np

from fdlite_kernels.mma_wq import gemm_packed, mma_bf16, repack

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", choices=("wint8", "wint4", "bf16"), default="wint4")
    ap.add_argument("--M", type=int, default=1)
    ap.add_argument("--shape", default="gate_up")
    a = ap.parse_args()
    N, K = SHAPES[a.shape]
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((a.M, K)).astype(ml_dtypes.bfloat16))
    if a.kernel == "bf16":
        w = cp.asarray((rng.standard_normal((N, K)) * 0.02).astype(ml_dtypes.bfloat16))
        run = lambda: mma_bf16(x, w)   # noqa: E731
    else:
        bits = 8 if a.kernel == "wint8" else 4
        lo, hi = (-128, 128) if bits == 8 else (-8, 8)
        qp = cp.asarray(repack(rng.integers(lo, hi, (N, K)), bits))
        s = cp.asarray(rng.random((N, 1 if bits == 8 else K // 128), dtype=np.float32))
        run = lambda: gemm_packed(x, qp, s, N, bits, K if bits == 8 else 128)   # noqa: E731
    for _ in range(4):
        run()
    cp.cuda.runtime.deviceSynchronize()


if __name__ == "__main__":
    main()
