#!/usr/bin/env bash
# Device call: block_wise_fp8 above 16 rows (bf16 expansion + mma_bf16 in graphs): tests and the e2e row.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
T() { local s=$1; shift; timeout "$s" "$@"; local rc=$?; [ $rc = 124 ] && echo "TIMEOUT after ${s}s: $*"; return 0; }
PT="python3 -m pytest -m gpu -q --maxfail=10 --no-header -p no:cacheprovider"
T 150 $PT tests/test_gpu_kernels.py -k "block_fp8" tests/test_gpu_model.py 2>&1 | tail -3
T 150 python3 benchmarks/e2e.py --quant block_wise_fp8 --kv bf16 --batch 1,32 --gen 64 --layers 8 2>&1 | grep "^|"
