#!/usr/bin/env bash
# Device call: MoE kernel rework checks (tests, per-kernel durations, ERNIE-21B end to end).
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
T() { local s=$1; shift; timeout "$s" "$@"; local rc=$?; [ $rc = 124 ] && echo "TIMEOUT after ${s}s: $*"; return 0; }
T 150 python3 -m pytest -m gpu -q --maxfail=10 --no-header -p no:cacheprovider tests/test_moe_gpu_path.py 2>&1 | tail -3
T 120 ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --cache-control all --clock-control none \
    python3 benchmarks/step_profile.py --model ernie-4.5-21b-a3b --quant wint4 --layers 3 --batch 32 --steps 4 --ncu \
    > $OUT/ncu_ernie_32.csv 2>$OUT/ncu_32.err
python3 benchmarks/ncu_summary.py $OUT/ncu_ernie_32.csv > $OUT/ncu_ernie_32.txt; head -8 $OUT/ncu_ernie_32.txt
T 200 python3 benchmarks/e2e.py --model ernie-4.5-21b-a3b --quant wint4,dense --kv bf16 --batch 1,32 --gen 64 2>&1 | grep "^|"
