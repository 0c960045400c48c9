"""Run benchmarks/e2e.py with routing constants of fdlite_kernels changed, for an A/B in one call. A bare NAME is
fdlite_kernels.mma_wq's; MODULE.NAME names another module's (gemv_xs.LONG_K), a module under fdlite by its full
name (fdlite.quant._gpu.DENSE_ROWS_MAX_M):

    python benchmarks/route_ab.py XS_MAX_K=8192 -- --quant wint4 --batch 32 --gen 128
    python benchmarks/route_ab.py gemv_xs.LONG_K=16384 -- --quant wint4 --batch 16,32
"""
import importlib
import runpy
import sys

if __name__ == "__main__":
    i = sys.argv.index("--")
    for kv in sys.argv[1:i]:
        k, v = kv.split("=")
        mod, _, name = k.rpartition(".")
        module = importlib.import_module(mod if mod.startswith("fdlite.") else "fdlite_kernels." + (mod or "mma_wq"))
        assert hasattr(module, name), f"{module.__name__} has no {name}"
        setattr(module, name, None if v == "None" else int(v))
    sys.argv = ["benchmarks/e2e.py"] + sys.argv[i + 1:]
    runpy.run_path("benchmarks/e2e.py", run_name="__main__")
