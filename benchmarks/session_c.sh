#!/usr/bin/env bash
# Device call: MoE kernels and ERNIE-21B end to end, the other weight/KV rows, remaining GPU tests, GEMV timings.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
T() { local s=$1; shift; timeout "$s" "$@"; local rc=$?; [ $rc = 124 ] && echo "TIMEOUT after ${s}s: $*"; return 0; }
PT="python3 -m pytest -m gpu -q --maxfail=10 --no-header -p no:cacheprovider"
date +%T
T 200 $PT tests/test_moe_gpu_path.py 2>&1 | tail -15
date +%T
T 200 python3 benchmarks/e2e.py --model ernie-4.5-21b-a3b --quant wint4,dense --kv bf16 --batch 1,32 --gen 64 2>&1 | grep "^|"
date +%T
T 150 python3 benchmarks/e2e.py --quant wint4 --kv int8 --batch 1,32 --gen 64 2>&1 | grep "^|"
T 150 python3 benchmarks/e2e.py --quant block_wise_fp8,wint2 --kv bf16 --batch 1,32 --gen 64 --layers 8 2>&1 | grep "^|"
date +%T
T 150 $PT tests/test_gpu_kernels.py -k "(mma or gemm_packed) and (4096-4096 or 576-576 or 96-160 or 4096-14336)" 2>&1 | tail -3
date +%T
T 120 env GEMV_MS=1 WINT2=0 python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1; grep -A12 "sum over" $OUT/gemv.log
date +%T
