#!/usr/bin/env bash
# One device call: install carried wheels, run the GPU tests, then the kernel benchmarks. Logs go to $OUT.
# Usage (device): bash benchmarks/gpu_session.sh [quick]   ("quick": benchmarks only)
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ "${1:-}" != quick ]; then
  python3 benchmarks/gpu_probe.py 2>&1 | tee $OUT/probe.log
  python3 -m pytest -m gpu -q --maxfail=30 --no-header -p no:cacheprovider tests/test_gpu_kernels.py tests/test_gpu_model.py 2>&1 | tail -40 | tee $OUT/pytest_gpu.log
fi
python3 benchmarks/gpu_gemv.py 2>&1 | tee $OUT/gemv.log
