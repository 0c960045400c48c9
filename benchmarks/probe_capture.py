"""Probe (device): can cuBLAS run inside a CUDA-graph capture from CuPy, through cupy.matmul or the low-level
binding? Prints one line per path."""
import ml_dtypes
import numpy as np
import cupy as cp
from cupy_backends.cuda.libs import cublas

BF16 = np.dtype(ml_dtypes.bfloat16)
M, N, K = 32, 4096, 4096
x = cp.random.standard_normal((M, K), dtype=cp.float32).astype(BF16)
w = (cp.random.standard_normal((N, K), dtype=cp.float32) * 0.02).astype(BF16)
ref = (x.astype(cp.float32) @ w.astype(cp.float32).T)
s = cp.cuda.Stream(non_blocking=True)
alpha, beta = np.ones(1, np.float32), np.zeros(1, np.float32)


def lowlevel(y):
    h = cp.cuda.device.get_cublas_handle()
    cublas.setStream(h, s.ptr)
    cublas.gemmEx(h, 1, 0, N, M, K, alpha.ctypes.data, w.data.ptr, 14, K, x.data.ptr, 14, K, beta.ctypes.data,
                  y.data.ptr, 14, N, 68, -1)


for name, fn in (("cupy.matmul", lambda y: cp.matmul(x, w.T, out=y)), ("cublas.gemmEx", lowlevel)):
    y = cp.zeros((M, N), BF16)
    try:
        with s:
            fn(y)
            s.synchronize()
            y[:] = 0
            s.begin_capture()
            try:
                fn(y)
            finally:
                g = s.end_capture()
            g.launch(s)
            s.synchronize()
        err = float(cp.linalg.norm(y.astype(cp.float32) - ref) / cp.linalg.norm(ref))
        print(f"{name}: captured, rel err {err:.2e}", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
print("is_capturing attr:", hasattr(cp.cuda.Stream, "is_capturing"))
