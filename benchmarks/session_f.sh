#!/usr/bin/env bash
# Final device call: the GPU tests of everything this round touched, at the committed state.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
T() { local s=$1; shift; timeout "$s" "$@"; local rc=$?; [ $rc = 124 ] && echo "TIMEOUT after ${s}s: $*"; return 0; }
PT="python3 -m pytest -m gpu -q --maxfail=10 --no-header -p no:cacheprovider"
T 240 $PT tests/test_gpu_attention.py 2>&1 | tail -3
T 120 $PT tests/test_gpu_model.py tests/test_gpu_sampling.py tests/test_quant_device_path.py 2>&1 | tail -3
T 120 $PT tests/test_moe_gpu_path.py 2>&1 | tail -2
