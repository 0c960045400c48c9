#!/usr/bin/env bash
# Device call: GPU tests of the reworked kernels, the weight-kernel benchmark, the step profile, dense e2e.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
T() { local s=$1; shift; timeout "$s" "$@"; local rc=$?; [ $rc = 124 ] && echo "TIMEOUT after ${s}s: $*"; return 0; }
PT="python3 -m pytest -m gpu -q --maxfail=10 --no-header -p no:cacheprovider"
date +%T
T 150 $PT tests/test_gpu_attention.py -k "paged or fused or gemv_bf16" 2>&1 | tail -4
date +%T
T 120 $PT tests/test_gpu_kernels.py -k "mma or gemm_packed" 2>&1 | tail -4
date +%T
T 90 $PT tests/test_quant_device_path.py 2>&1 | tail -4
date +%T
T 100 env GEMV_MS=1,16,32,64 GEMV_CFGS=1 WINT2=0 python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1; grep -A80 "sum over" $OUT/gemv.log
date +%T
T 60 python3 benchmarks/step_profile.py --quant dense --layers 32 --batch 1 --steps 48 2>&1 | grep -v Warn | tail -4
T 60 python3 benchmarks/step_profile.py --quant dense --layers 32 --batch 32 --steps 24 2>&1 | grep -v Warn | tail -4
T 60 ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --cache-control all --clock-control none \
  python3 benchmarks/step_profile.py --quant wint8 --layers 2 --batch 1 --steps 4 --ncu > $OUT/ncu_wint8.csv 2>$OUT/ncu.err
python3 benchmarks/ncu_summary.py $OUT/ncu_wint8.csv | head -14
date +%T
