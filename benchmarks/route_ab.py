"""Run benchmarks/e2e.py with one routing constant of fdlite_kernels.mma_wq changed, for an A/B in one call:

    python benchmarks/route_ab.py XS_MAX_K=8192 -- --quant wint4 --batch 32 --gen 128
"""
import runpy
import sys

import fdlite_kernels.mma_wq as route

if __name__ == "__main__":
    i = sys.argv.index("--")
    for kv in sys.argv[1:i]:
        k, v = kv.split("=")
        assert hasattr(route, k), f"fdlite_kernels.mma_wq has no {k}"
        setattr(route, k, None if v == "None" else int(v))
    sys.argv = ["benchmarks/e2e.py"] + sys.argv[i + 1:]
    runpy.run_path("benchmarks/e2e.py", run_name="__main__")
