#!/usr/bin/env bash
# Device call: GPU tests, kernel probes under Nsight Compute, weight-kernel timings, end to end + HF peer.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
T() { local s=$1; shift; timeout "$s" "$@"; local rc=$?; [ $rc = 124 ] && echo "TIMEOUT after ${s}s: $*"; return 0; }
PT="python3 -m pytest -m gpu -q --maxfail=10 --no-header -p no:cacheprovider"
date +%T
T 240 $PT tests/test_gpu_kernels.py -k "mma or gemm_packed" 2>&1 | tail -3
date +%T
T 150 $PT tests/test_gpu_attention.py -k "graph" tests/test_gpu_model.py 2>&1 | tail -3
date +%T
for k in "wint4 1 gate_up" "wint8 32 gate_up" "bf16 32 gate_up"; do set -- $k
  echo "== ncu $k"
  T 60 ncu --launch-skip 2 --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats \
    python3 benchmarks/kernel_probe.py --kernel $1 --M $2 --shape $3 2>&1 | grep -E "Duration|Memory Throughput|DRAM Throughput|Compute \(SM\)|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit Reg|Warp Cycles Per Issued|Stall|stall" | head -14
done
date +%T
T 60 env GEMV_MS=1 WINT2=0 python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1; grep -A20 "sum over" $OUT/gemv.log
date +%T
T 120 python3 benchmarks/e2e.py --quant dense --kv bf16 --batch 1,32 --gen 128 2>&1 | grep "^|"
T 150 python3 benchmarks/e2e.py --quant wint8,wint4 --kv bf16 --batch 1,32 --gen 128 2>&1 | grep "^|"
date +%T
T 90 python3 benchmarks/hf_peer.py --batch 1,32 --gen 64 2>&1 | grep "^|\|skipped"
date +%T
