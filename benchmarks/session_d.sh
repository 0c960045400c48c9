#!/usr/bin/env bash
# Device call: where ERNIE-21B's batch-32 decode step goes (per-kernel durations of one graph replay).
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
for b in 1 32; do
  echo "== ernie-4.5-21b-a3b wint4, 3 layers, batch $b"
  timeout 120 ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --cache-control all --clock-control none \
    python3 benchmarks/step_profile.py --model ernie-4.5-21b-a3b --quant wint4 --layers 3 --batch $b --steps 4 --ncu \
    > $OUT/ncu_ernie_$b.csv 2>$OUT/ncu_$b.err
  python3 benchmarks/ncu_summary.py $OUT/ncu_ernie_$b.csv | head -16
done
timeout 60 python3 benchmarks/step_profile.py --model ernie-4.5-21b-a3b --quant wint4 --layers 3 --batch 32 --steps 16 2>&1 | tail -4
