"""What CuPy on the device supports for bf16 (ml_dtypes): printed once per GPU session, for the notes."""
import ml_dtypes
import numpy as np

import cupy as cp

BF16 = np.dtype(ml_dtypes.bfloat16)
print("cupy", cp.__version__, "device", cp.cuda.runtime.getDeviceProperties(0)["name"])
a = cp.asarray(np.ones((4, 8), BF16))
for what, f in [("astype f32", lambda: a.astype(cp.float32)), ("f32->bf16", lambda: a.astype(cp.float32).astype(BF16)),
                ("matmul", lambda: a @ a.T), ("add", lambda: a + a), ("mul f32", lambda: a * cp.float32(2)),
                ("mix bf16*f32", lambda: a * a.astype(cp.float32)), ("fancy idx", lambda: a[cp.asarray([0, 2])]),
                ("scatter", lambda: a.__setitem__(cp.asarray([1]), a[0])), ("concat", lambda: cp.concatenate([a, a])),
                ("exp", lambda: cp.exp(a)), ("sum", lambda: a.sum(-1))]:
    try:
        r = f()
        print(f"{what:14} ok", getattr(r, "dtype", ""))
    except Exception as e:
        print(f"{what:14} FAIL {type(e).__name__}: {str(e)[:100]}")
