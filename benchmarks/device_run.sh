#!/usr/bin/env bash
# One device call (see /work/.library/device): install the carried wheels, then run the named stages in order.
# Each stage has its own time limit, so a slow one cannot eat the call; logs and JSON rows go to $OUT.
#   bash benchmarks/device_run.sh tests gemv e2e       (stages below; carry [".whl"] with gguf's wheel)
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
# (the TIMEOUT line goes to fd 3, the log itself: a stage's `T ... 2>&1 | grep` would filter it out of the pipe)
T() { local s=$1; shift; timeout "$s" "$@"; local rc=$?; [ $rc = 124 ] && echo "TIMEOUT after ${s}s: $*" >&3; return 0; }
PT="python3 -m pytest -m gpu -q --maxfail=10 --no-header -p no:cacheprovider"
NCU="ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --cache-control all --clock-control none"

exec > >(tee -a "${OUT:-/tmp}/device_run.log") 2>&1     # a call that runs out of time still brings its log
exec 3>&1
for stage in "$@"; do
  echo "== $stage $(date +%T)"
  case $stage in
    sk)             # the split-K GEMM against its twin, then its timings and plans on the 8B projections
      T 200 $PT tests/test_gpu_kernels.py -k "mma_sk" 2>&1 | tail -3
      T 300 env GEMV_MS=1,16,32,64 GEMV_SK=1 WINT2=0 python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1
      grep -A80 "sum over" $OUT/gemv.log ;;
    tests)          # every GPU test file (the kernels file is large: its mma matrix on four shapes)
      T 240 $PT tests/test_gpu_attention.py 2>&1 | tail -3
      T 150 $PT tests/test_gpu_model.py tests/test_gpu_sampling.py tests/test_quant_device_path.py 2>&1 | tail -3
      T 120 $PT tests/test_moe_gpu_path.py 2>&1 | tail -2
      T 240 $PT tests/test_gpu_kernels.py -k "not mma and not gemm_packed" 2>&1 | tail -2
      T 240 $PT tests/test_gpu_kernels.py -k "(mma or gemm_packed) and (4096-4096 or 576-576 or 96-160 or 4096-14336)" \
        2>&1 | tail -2 ;;
    tc)             # the tensor-core decode GEMV against its twin and through the routed entry, then its timings
      T 200 $PT tests/test_gpu_kernels.py -k "gemv_packed" 2>&1 | tail -3
      T 120 $PT tests/test_gpu_kernels.py -k "gemm_packed and (4096-4096 or 576-576 or 96-160 or 4096-14336)" 2>&1 \
        | tail -3
      T 240 env PACKED_ONLY=1 GEMV_TC=1 GEMV_MS=${TC_MS:-1,4,8,16} WINT2=0 python3 benchmarks/gpu_gemv.py \
        > $OUT/gemv.log 2>&1
      grep -A80 "sum over" $OUT/gemv.log ;;
    tcbench)        # only the timings of tc (GEMV_TC=1 block shapes), then the 8B end to end at batch 1 and 8
      T 300 env PACKED_ONLY=1 GEMV_TC=1 GEMV_MS=${TC_MS:-1,4,8,16} WINT2=0 python3 benchmarks/gpu_gemv.py \
        > $OUT/gemv.log 2>&1
      grep -A120 "sum over" $OUT/gemv.log
      T 200 python3 benchmarks/e2e.py --quant wint8,wint4 --kv bf16 --batch 1,8 --gen 128 2>&1 | grep "^|" ;;
    tcprobe)        # Nsight Compute on the routed one-row int4 GEMV: throughput, occupancy, warp stalls
      for shp in gate_up qkv; do
        T 90 ncu --launch-skip 2 --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats \
          --section MemoryWorkloadAnalysis python3 benchmarks/kernel_probe.py --kernel wint4 --M 1 --shape $shp \
          > $OUT/ncu_tc_$shp.txt 2>&1
        grep -E "Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers|Stall|Warp Cycles|Issued" \
          $OUT/ncu_tc_$shp.txt | head -30
      done ;;
    verify)         # the review refactor of mma_sk's launches (plain, dense, MoE gather), on the device
      T 220 $PT tests/test_gpu_kernels.py -k "mma_sk and not 128256 and not fp8" 2>&1 | tail -3
      T 150 $PT tests/test_moe_gpu_path.py 2>&1 | tail -2 ;;
    verify2)        # the fp8 launches and the wint2 device encoder
      T 150 $PT tests/test_gpu_kernels.py -k "block_fp8 or mma_sk_fp8" 2>&1 | tail -2
      T 100 $PT tests/ -k "wint2_device_quantization" 2>&1 | tail -2 ;;
    sktests)        # the routed GEMM entries (GEMV / mma_sk / mma_wq) and the dense kernels against their twins
      T 240 $PT tests/test_gpu_kernels.py -k "mma_sk or mma_bf16 or (gemm_packed and (576-576 or 96-160))" 2>&1 \
        | tail -3 ;;
    gemv)           # weight kernels vs cuBLAS on the 8B projections
      T 300 env GEMV_MS=1,16,32,64 WINT2=0 python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1
      grep -A80 "sum over" $OUT/gemv.log ;;
    e2e)            # the full 8B shape, every weight format that loads on the device, and the HF peer
      T 200 python3 benchmarks/e2e.py --quant dense,wint8,wint4 --kv bf16 --batch 1,32 --gen 128 2>&1 | grep "^|"
      [ "${E2E_ONLY_MAIN:-0}" = 1 ] && continue
      T 150 python3 benchmarks/e2e.py --quant wint4 --kv int8 --batch 1,32 --gen 64 2>&1 | grep "^|"
      T 150 python3 benchmarks/e2e.py --quant block_wise_fp8 --kv bf16 --batch 1,32 --gen 64 --layers 8 2>&1 | grep "^|"
      T 90 python3 benchmarks/hf_peer.py --batch 1,32 --gen 64 2>&1 | grep "^|\|skipped" ;;
    ernie)          # the MoE shape end to end
      T 200 python3 benchmarks/e2e.py --model ernie-4.5-21b-a3b --quant wint4,dense --kv bf16 --batch 1,32 --gen 64 \
        2>&1 | grep "^|" ;;
    profile)        # where a decode step goes: host vs graph time, then per-kernel durations under Nsight Compute
      T 60 python3 benchmarks/step_profile.py --quant wint8 --layers 32 --batch 1 --steps 48 2>&1 | tail -4
      T 120 $NCU python3 benchmarks/step_profile.py --quant wint8 --layers 2 --batch 1 --steps 4 --ncu \
        > $OUT/ncu_llama.csv 2>$OUT/ncu_llama.err
      python3 benchmarks/ncu_summary.py $OUT/ncu_llama.csv > $OUT/ncu_llama.txt; head -12 $OUT/ncu_llama.txt
      T 120 $NCU python3 benchmarks/step_profile.py --model ernie-4.5-21b-a3b --quant wint4 --layers 3 --batch 32 \
        --steps 4 --ncu > $OUT/ncu_ernie.csv 2>$OUT/ncu_ernie.err
      python3 benchmarks/ncu_summary.py $OUT/ncu_ernie.csv > $OUT/ncu_ernie.txt; head -12 $OUT/ncu_ernie.txt ;;
    profile32)      # the same at batch 32, wint4 (where the batch-32 step goes)
      T 60 python3 benchmarks/step_profile.py --quant wint4 --layers 32 --batch 32 --steps 24 2>&1 | tail -4
      T 120 $NCU python3 benchmarks/step_profile.py --quant wint4 --layers 2 --batch 32 --steps 4 --ncu \
        > $OUT/ncu_b32.csv 2>$OUT/ncu_b32.err
      python3 benchmarks/ncu_summary.py $OUT/ncu_b32.csv > $OUT/ncu_b32.txt; head -16 $OUT/ncu_b32.txt ;;
    attn)           # the one-kernel paged attention against its twin (every format), then plain vs PDL timings
      T 60 $PT tests/test_gpu_kernels.py -k "pdl" -x 2>&1 | grep -E "Error|error|assert|passed|failed" | head -20
      T 200 $PT tests/test_gpu_attention.py 2>&1 | grep -E "^FAILED|Error|passed|failed" | head -20
      T 100 $PT tests/test_gpu_model.py tests/test_gpu_sampling.py 2>&1 | tail -2
      T 60 python3 benchmarks/op_probe.py 2>&1 | tee $OUT/op_probe.log | grep "^|"
      for pdl in 0 1; do
        T 150 env FDLITE_PDL=$pdl python3 benchmarks/e2e.py --quant wint4,wint8 --kv bf16 --batch 1,8 --gen 128 2>&1 \
          | grep "^|" | sed "s/^/PDL=$pdl /"
      done ;;
    tcattn)         # paged_attn_tc against the twins (every paged test and launch plan), its timings, end to end
      T 300 $PT tests/test_gpu_attention.py -k "paged" 2>&1 | tail -4
      T 90 python3 benchmarks/op_probe.py --only paged --attn tc,cuda,tc:k32,tc:w8 2>&1 | tee $OUT/op_b1.log | grep "^|"
      T 90 python3 benchmarks/op_probe.py --only paged --batch 32 --ctx 200,1000 --attn tc,cuda,tc:k64,tc:k128 2>&1 \
        | tee $OUT/op_b32.log | grep "^|"
      T 200 python3 benchmarks/e2e.py --quant wint4 --kv bf16,int8 --batch 1,32 --gen 128 2>&1 | grep "^|" ;;
    tcattn2)        # paged_attn_tc with the next group's loads in flight: twins, timings at batch 1 / 8 / 32, end to end
      T 300 $PT tests/test_gpu_attention.py -k "paged" 2>&1 | tail -4
      T 60 python3 benchmarks/op_probe.py --only paged --attn tc,tc:w4 2>&1 | tee $OUT/op_b1.log | grep "^|"
      T 60 python3 benchmarks/op_probe.py --only paged --batch 8 --ctx 200,1000 --attn tc,cuda,tc:w8 2>&1 \
        | tee $OUT/op_b8.log | grep "^|"
      T 60 python3 benchmarks/op_probe.py --only paged --batch 32 --ctx 200,1000 --attn tc,tc:k128 2>&1 \
        | tee $OUT/op_b32.log | grep "^|"
      T 200 python3 benchmarks/e2e.py --quant wint4 --kv bf16 --batch 1,32 --gen 128 2>&1 | grep "^|" ;;
    tcattn3)        # the split grid cut to what cmin allows: twins, timings, end to end
      T 300 $PT tests/test_gpu_attention.py -k "paged" 2>&1 | tail -4
      T 60 python3 benchmarks/op_probe.py --only paged --ctx 64,200,1000 --max-len 264,4096 --attn tc 2>&1 \
        | tee $OUT/op_b1.log | grep "^|"
      T 60 python3 benchmarks/op_probe.py --only paged --batch 32 --ctx 200,1000 --max-len 264,512,4096 --attn tc,tc:w8 \
        2>&1 | tee $OUT/op_b32.log | grep "^|"
      T 200 python3 benchmarks/e2e.py --quant wint4 --kv bf16 --batch 1,32 --gen 128 2>&1 | grep "^|" ;;
    xsk)            # gemv_xs with K split over blocks: its twins, then the split sweep at 16 and 32 rows
      T 200 $PT tests/test_gpu_kernels.py -k "gemv_xs" 2>&1 | grep -E "^FAILED|Error|passed|failed|TIMEOUT" | head
      T 300 env GEMV_XSK=1 GEMV_MS=16,32 PACKED_ONLY=1 WINT2=0 python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1
      grep -E " xs|sk " $OUT/gemv.log | grep -v "wint8 sk\|sk w4" | head -150 ;;
    xsk2)           # down_proj at 9-32 rows routed to gemv_xs with K split: twins, the model, end to end
      T 200 $PT tests/test_gpu_kernels.py -k "gemv_xs or (mma_wq and 4096-14336) or (mma_sk and 4096-14336)" 2>&1 \
        | grep -E "^FAILED|Error|passed|failed|TIMEOUT" | head
      T 150 $PT tests/test_gpu_model.py tests/test_quant_device_path.py tests/test_moe_gpu_path.py 2>&1 | tail -2
      T 240 python3 benchmarks/e2e.py --quant wint4,wint8 --kv bf16 --batch 1,16,32 --gen 128 2>&1 | grep "^|" ;;
    xsk3)           # the routed down_proj at 9-32 rows (gemv_xs, K split) against the twin, then end to end A/B/A
      T 150 $PT tests/test_gpu_kernels.py -k "mma_wq and 4096-14336 and gemm_packed" 2>&1 \
        | grep -E "^FAILED|Error|passed|failed|TIMEOUT" | head
      for r in None 8192 None 8192; do
        T 100 python3 benchmarks/route_ab.py XS_MAX_K=$r -- --quant wint4 --kv bf16 --batch 16,32 --gen 128 2>&1 \
          | grep "^| llama" | sed "s/^/XS_MAX_K=$r /"
      done ;;
    overlap)        # the engine's overlapped decode: GPU tests that run graphs and the sampler, then end to end A/B/A
      T 200 $PT tests/test_gpu_sampling.py tests/test_gpu_model.py tests/test_quant_device_path.py > $OUT/ov.log 2>&1
      grep -E "^FAILED" $OUT/ov.log | head; tail -1 $OUT/ov.log
      for o in 1 0 1; do
        T 120 python3 benchmarks/e2e.py --quant wint4 --kv bf16 --batch 1,32 --gen 128 --overlap $o 2>&1 \
          | grep "^| llama" | sed "s/^/overlap=$o /"
      done ;;
    attnpf)         # split sizes at batch 32 / 8 / 1 (call 10 also timed a prefetch build, `:pf`; removed: no gain)
      T 200 $PT tests/test_gpu_attention.py -k "launch_plans" 2>&1 | tail -2
      T 60 python3 benchmarks/op_probe.py --only paged --batch 32 --ctx 200,1000 --max-len 264,4096 --attn tc,tc:k128 \
        2>&1 | grep "^|"
      T 60 python3 benchmarks/op_probe.py --only paged --batch 8 --ctx 200 --max-len 264 --attn tc,tc:k64 2>&1 | grep "^|"
      T 60 python3 benchmarks/op_probe.py --only paged --ctx 200,1000 --max-len 264,4096 --attn tc 2>&1 | grep "^|" ;;
    tests9)         # the ninth session's GPU tests in full: attention, graphs + sampler + model, MoE, parallel, kernels
      T 240 $PT tests/test_gpu_attention.py 2>&1 | tail -2
      T 200 $PT tests/test_gpu_model.py tests/test_gpu_sampling.py tests/test_quant_device_path.py \
        tests/test_moe_gpu_path.py tests/test_parallel_runtime.py 2>&1 | tail -2
      T 150 $PT tests/test_gpu_kernels.py -k "gemv_xs or (mma_wq and gemm_packed and (4096-14336 or 6144-4096))" 2>&1 \
        | tail -2 ;;
    tests10)        # the tenth session's first call: tests9, then the split-K kernels that last_to_arrive touched
      bash benchmarks/device_run.sh tests9
      T 200 $PT tests/test_gpu_kernels.py -k "mma_sk and (4096-4096 or 576-576 or 96-160 or 4096-14336)" 2>&1 | tail -2 ;;
    swiglu)         # SwiGLU in the decode GEMVs' epilogue, the overlap on by default: twins, model tests, end to end
      T 200 $PT tests/test_gpu_kernels.py -k "swiglu or (gemv_xs and k_split)" 2>&1 | tail -3
      T 120 $PT tests/test_gpu_model.py tests/test_gpu_sampling.py tests/test_moe_gpu_path.py \
        tests/test_gpu_attention.py -k "not paged" 2>&1 | tail -3
      T 150 python3 benchmarks/e2e.py --quant wint4,wint8 --kv bf16 --batch 1,16,32 --gen 128 2>&1 | grep "^| llama"
      T 60 python3 benchmarks/e2e.py --quant wint4 --kv int8 --batch 32 --gen 128 2>&1 | grep "^| llama"
      T 100 python3 benchmarks/e2e.py --model ernie-4.5-21b-a3b --quant wint4 --kv bf16 --batch 1,32 --gen 64 2>&1 \
        | grep "^| ernie" ;;
    e2e9)           # the ninth session's end to end: the 8B shape (bf16 / wint8 / wint4, bf16 and int8 KV), ERNIE
      T 300 python3 benchmarks/e2e.py --quant dense,wint8,wint4 --kv bf16 --batch 1,16,32 --gen 128 2>&1 | grep "^|"
      T 120 python3 benchmarks/e2e.py --quant wint4 --kv int8 --batch 1,32 --gen 128 2>&1 | grep "^| llama"
      T 150 python3 benchmarks/e2e.py --model ernie-4.5-21b-a3b --quant wint4 --kv bf16 --batch 1,32 --gen 64 2>&1 \
        | grep "^| ernie" ;;
    diag9)          # the batch-32 illegal address: which of overlap / kernels, then memcheck on 2 layers
      for o in 0 1; do
        T 90 python3 benchmarks/e2e.py --quant wint8 --kv bf16 --batch 32 --gen 64 --overlap $o 2>&1 | grep "^| llama" \
          | sed "s/^/overlap=$o /"
        T 90 python3 benchmarks/e2e.py --quant wint4 --kv int8 --batch 32 --gen 64 --overlap $o 2>&1 | grep "^| llama" \
          | sed "s/^/overlap=$o /"
      done
      T 200 compute-sanitizer --tool memcheck --print-limit 5 python3 benchmarks/e2e.py --quant wint8 --kv bf16 \
        --batch 32 --gen 8 --prompt 16 --layers 1 2>&1 | grep -vE "^\s*$" | head -60 ;;
    diag10)         # reproduce: batch 1 then 32 in one process, int8 KV, overlap on / off; then memcheck on 2 layers
      for o in 1 0; do
        T 100 python3 benchmarks/e2e.py --quant wint4 --kv int8 --batch 1,32 --gen 128 --overlap $o 2>&1 \
          | grep "^| llama" | sed "s/^/overlap=$o /"
      done
      T 300 compute-sanitizer --tool memcheck --print-limit 3 python3 benchmarks/e2e.py --quant wint4 --kv int8 \
        --batch 1,32 --gen 128 --layers 2 2>&1 | grep -vE "^\s*$" | head -80 ;;
    diag11)         # the e2e9 sequence that failed (dense then wint8, batches 1 / 16 / 32 in one process), overlap on / off
      for o in 1 0; do
        T 240 python3 benchmarks/e2e.py --quant dense,wint8 --kv bf16 --batch 1,16,32 --gen 128 --overlap $o 2>&1 \
          | grep "^| llama" | sed "s/^/overlap=$o /"
      done ;;
    stress)         # overlapped decode, repeated: every weight x KV format at 1 / 16 / 32 rows, twice
      for i in 1 2; do
        T 280 python3 benchmarks/e2e.py --quant wint4,wint8 --kv bf16,int8 --batch 1,16,32 --gen 128 \
          --overlap ${OV:-1} 2>&1 | grep "^| llama" | sed "s/^/run $i overlap=${OV:-1} /"
      done ;;
    ovtest)         # the overlap GPU test, then the multi-model stress with the overlap on (after the static-zeroing fix)
      T 150 $PT tests/test_gpu_attention.py -k "overlapped or graph_decode_equals_eager" 2>&1 | tail -2
      OV=1 bash benchmarks/device_run.sh stress 2>&1 | grep -E "FAILED|run [12]" | tail -30 ;;
    ovcheck)        # memcheck over the multi-model sequence that crashed with the overlap on (2 layers)
      T 420 compute-sanitizer --tool memcheck --print-limit 4 python3 benchmarks/e2e.py --quant wint4 --kv bf16,int8 \
        --batch 1,16,32 --gen 128 --layers 2 --overlap 1 2>&1 | grep -vE "^\s*$" | grep -v "^fdlite:" | head -70 ;;
    attnloop)       # paged_attn_tc CTAs looping over a row's splits: twins, timings at long max_len
      T 240 $PT tests/test_gpu_attention.py -k "paged" 2>&1 | tail -2
      T 90 python3 benchmarks/op_probe.py --only paged --batch 32 --ctx 200,1000 --max-len 264,4096 --attn tc,tc:c16 \
        2>&1 | grep "^|"
      T 60 python3 benchmarks/op_probe.py --only paged --ctx 200,4000 --max-len 4096 --attn tc 2>&1 | grep "^|"
      T 60 python3 benchmarks/op_probe.py --only paged --batch 8 --ctx 200 --max-len 4096 --attn tc,tc:c16 2>&1 \
        | grep "^|" ;;
    xsprof)         # Nsight Compute on the batched decode GEMMs at 16 and 32 rows (gemv_xs; mma_sk on down_proj)
      for ms in "32 gate_up" "32 qkv" "32 down" "16 gate_up"; do
        set -- $ms
        T 90 ncu --launch-skip 2 --launch-count 1 --section SpeedOfLight --section ComputeWorkloadAnalysis \
          --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section SchedulerStats \
          --section LaunchStats python3 benchmarks/kernel_probe.py --kernel wint4 --M $1 --shape $2 \
          > $OUT/ncu_xs_$1_$2.txt 2>&1
        echo "-- M=$1 $2"; grep -E "gemv|mma_sk|Duration|Throughput|Pipe|Issue Slots|Issued Ipc|Warp Cycles|Stall|Achieved Occ|Registers|Shared Memory Configuration Size|Block Size|Grid Size|Bank|L1/TEX Hit|L2 Hit|Eligible|No Eligible|Active Warps" \
          $OUT/ncu_xs_$1_$2.txt | grep -v "^    ---" | head -45
      done ;;
    rows)           # gemv_rows (decode GEMV over row-major bf16 / block fp8 weights): twins, the fp8 kernels it sits beside,
                    # its block shapes against mma_bf16 / gemv_bf16 / mma_sk_fp8 / cuBLAS, then the model tests it routes
      T 240 $PT tests/test_gpu_kernels.py -k "gemv_rows or act_quant or mma_sk_fp8 or block_fp8 or mma_bf16" 2>&1 | tail -3
      T 240 env ROWS_ONLY=1 LM_HEAD=1 WINT2=0 GEMV_MS=${ROWS_MS:-1,4,8} python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1
      grep -B2 -A200 "^shape" $OUT/gemv.log | grep -E "rows|mma|gemv|sk|cuBLAS|sum|M=" | head -150
      T 200 $PT tests/test_gpu_model.py tests/test_quant_device_path.py 2>&1 | tail -3 ;;
    rows2)          # gemv_rows after its fp8 prologue rework: its twins, the act-quant bits, block shapes at 1 / 4 / 8 rows, models
      T 150 $PT tests/test_gpu_kernels.py -k "gemv_rows or act_quant" 2>&1 | grep -E "passed|failed|Error|assert" | tail -8
      [ "${ROWS_BENCH:-1}" = 1 ] && T 200 env ROWS_ONLY=1 WINT2=0 GEMV_MS=${ROWS_MS:-1,4,8} python3 benchmarks/gpu_gemv.py \
        > $OUT/gemv.log 2>&1 && grep -A60 "sum over" $OUT/gemv.log
      T 150 $PT tests/test_gpu_model.py tests/test_quant_device_path.py 2>&1 | tail -3 ;;
    rows3)          # gemv_rows' wfp8afp8 mode: all gemv_rows twins, then the 8B end to end for wfp8afp8 (8 of 32 layers) A/B
      T 200 $PT tests/test_gpu_kernels.py -k "gemv_rows or act_quant" 2>&1 | grep -E "passed|failed|Error|assert" | tail -8
      T 100 $PT tests/test_quant_device_path.py 2>&1 | tail -2
      for AB in "" "fdlite.quant._gpu.FP8_ROWS_MAX_M=0"; do
        echo "-- routes changed: ${AB:-none}"
        T 200 python3 benchmarks/route_ab.py $AB -- --quant wfp8afp8 --kv bf16 --batch 1,8 --gen 64 --layers 8 2>&1 \
          | grep "^| llama"
      done ;;
    e2e11)          # the issue's end-to-end table at its settings (prompt 128, 256 generated): dense / wint8 / wint4, batch 1 and 32
      T 500 python3 benchmarks/e2e.py --quant dense,wint8,wint4 --kv bf16 --batch 1,32 --gen 256 2>&1 | grep "^| llama" ;;
    w2tc)           # the tensor-core WINT2 GEMV: twins (one-hot rows read the weights back bit for bit), the routed path and
                    # replays, wfp8afp8's chunked rows; its timings against cuBLAS and gemv_wint2; the 8B end to end A/B (8 layers)
      T 240 $PT tests/test_gpu_kernels.py -k "wint2 or fp8_channel or wfp8afp8" 2>&1 | grep -E "passed|failed|Error|assert" | tail -8
      T 150 $PT tests/test_gpu_kernels.py -k "(mma_wq or mma_sk) and (576-576 or 96-160)" 2>&1 | tail -2   # pack_bf16x2 shared
      T 150 env WINT2_ONLY=1 WINT2=0 GEMV_MS=${W2_MS:-1,4,16} python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1
      grep -A30 "sum over" $OUT/gemv.log
      for AB in "" "fdlite.quant._gpu.WINT2_TC=0"; do
        echo "-- routes changed: ${AB:-none}"
        T 200 python3 benchmarks/route_ab.py $AB -- --quant wint2 --kv bf16 --batch 1,8 --gen 64 --layers 8 2>&1 \
          | grep "^| llama"
      done ;;
    w2d)            # gemv_wint2_tc's register depth 2 (128 registers, 16 warps an SM) against 3: twins, then the timings
      T 120 $PT tests/test_gpu_kernels.py -k "wint2_tc" 2>&1 | grep -E "passed|failed|Error|assert" | tail -8
      T 200 env WINT2_ONLY=1 WINT2=0 GEMV_MS=${W2_MS:-1,16} python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1
      grep -A30 "sum over" $OUT/gemv.log ;;
    w2d2)           # gemv_wint2_tc with its new defaults (depth 2; 8 warps to 8 rows): twins, then the 8B end to end (8 layers)
      T 120 $PT tests/test_gpu_kernels.py -k "wint2_tc" 2>&1 | grep -E "passed|failed|Error|assert" | tail -8
      T 200 python3 benchmarks/e2e.py --quant wint2 --kv bf16 --batch 1,8 --gen 64 --layers 8 2>&1 | grep "^| llama" ;;
    w8a8)           # gemv_rows' int8 mode (w8a8) and the per-channel fp8 mode: twins and routes, timings of every byte mode
      T 200 $PT tests/test_gpu_kernels.py -k "gemv_rows or wfp8afp8" 2>&1 | grep -E "passed|failed|Error|assert" | tail -8
      T 200 $PT tests/test_quant_device_path.py tests/test_gpu_model.py 2>&1 | tail -2
      T 200 env ROWS_ONLY=1 WINT2=0 GEMV_MS=${ROWS_MS:-1,8} python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1
      grep -A60 "sum over" $OUT/gemv.log | grep -E "plan|channel|w8a8|w4a8|cuBLAS" ;;
    int4rows)       # gemv_rows' w4afp8 and nf4 modes (twelfth session): every gemv_rows twin, the wint2 tensor-core twins
                    # (the eleventh session's review), models and device quantization, then the int4 modes' timings
      T 240 $PT tests/test_gpu_kernels.py -k "gemv_rows or wfp8afp8 or wint2_tc" 2>&1 | grep -E "passed|failed|Error|assert" | tail -12
      T 200 $PT tests/test_quant_device_path.py tests/test_gpu_model.py 2>&1 | tail -2
      T 240 env ROWS_ONLY=1 INT4_ROWS=1 WINT2=0 GEMV_MS=${ROWS_MS:-1,8} python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1
      grep -A60 "sum over" $OUT/gemv.log ;;
    nf4ab)          # nf4's two level lookups (prmt byte tables, a shared-memory table per lane): twins, then timings
                    # (the table variant lost, 103 against 72.5 us, and was removed; this stage now times the block shapes)
      T 200 $PT tests/test_gpu_kernels.py -k "nf4 or gemv_rows_w4afp8" 2>&1 | grep -E "passed|failed|Error|assert" | tail -8
      T 200 env ROWS_ONLY=1 INT4_ROWS=1 NF4_ONLY=1 WINT2=0 GEMV_MS=${ROWS_MS:-1,8} python3 benchmarks/gpu_gemv.py \
        > $OUT/gemv.log 2>&1
      grep -A60 "sum over" $OUT/gemv.log ;;
    int4e2e)        # w4afp8 on 8 of the 8B's 32 layers, batch 1 and 8, against the reference formula (BYTE_ROWS_MAX_M=0);
                    # nf4 on 4 layers (host quantization), the tiny models on the GPU against the CPU
      T 150 $PT tests/test_gpu_model.py -k "w4afp8 or nf4" 2>&1 | tail -2
      for AB in "" "fdlite.quant._gpu.BYTE_ROWS_MAX_M=0"; do
        echo "-- routes changed: ${AB:-none}"
        T 150 python3 benchmarks/route_ab.py $AB -- --quant w4afp8 --kv bf16 --batch 1,8 --gen 64 --layers 8 2>&1 \
          | grep "^| llama"
      done
      T 200 python3 benchmarks/e2e.py --quant nf4 --kv bf16 --batch 1,8 --gen 64 --layers 4 2>&1 | grep "^| llama" ;;
    pre)            # the byte modes with x quantized once (gemv_rows_quant_x, PRE) against per block: twins, then timings
      T 240 $PT tests/test_gpu_kernels.py -k "gemv_rows or wfp8afp8 or pre" 2>&1 | grep -E "passed|failed|Error|assert" | tail -8
      T 240 env ROWS_ONLY=1 INT4_ROWS=1 PRE=1 WINT2=0 GEMV_MS=${ROWS_MS:-1,4,8} python3 benchmarks/gpu_gemv.py \
        > $OUT/gemv.log 2>&1
      grep -A80 "sum over" $OUT/gemv.log ;;
    pre2)           # pre's bit-identity at one block shape, the byte modes' routes and models, then the 8B end to end (8 layers)
                    # at batch 1 and 8: w4afp8, w8a8 and block_wise_fp8, each against PRE_MIN_M=9 (every block quantizes x)
      T 200 $PT tests/test_gpu_kernels.py -k "pre_equals or graph_replay or w4a8 or w4afp8 or int8_vs" 2>&1 | tail -2
      T 200 $PT tests/test_quant_device_path.py tests/test_gpu_model.py 2>&1 | tail -2
      for q in w4afp8 w8a8 block_wise_fp8; do
        for AB in "" "gemv_rows.PRE_MIN_M=9"; do
          echo "-- $q, routes changed: ${AB:-none}"
          T 120 python3 benchmarks/route_ab.py $AB -- --quant $q --kv bf16 --batch 1,8 --gen 64 --layers 8 2>&1 \
            | grep "^| llama"
        done
      done ;;
    rows16)         # gemv_rows at 9-16 rows (two token fragments): twins, routes and models, then timings
      T 300 $PT tests/test_gpu_kernels.py -k "gemv_rows or wfp8afp8" 2>&1 | grep -E "passed|failed|Error|assert" | tail -8
      T 150 $PT tests/test_quant_device_path.py tests/test_gpu_model.py 2>&1 | tail -2
      T 200 env ROWS_ONLY=1 INT4_ROWS=1 ROWS16=1 WINT2=0 GEMV_MS=12,16 python3 benchmarks/gpu_gemv.py \
        > $OUT/gemv.log 2>&1
      grep -A40 "sum over" $OUT/gemv.log ;;
    rows16e2e)      # the 8B end to end at batch 16 with 16 rows a gemv_rows launch, against 8 (the routes before)
      for spec in "dense 0 fdlite.quant._gpu.DENSE_ROWS_MAX_M=8" "block_wise_fp8 8 fdlite.quant._gpu.FP8_ROWS_MAX_M=8" \
                  "w8a8 8 gemv_rows.MAX_M=8"; do
        set -- $spec
        for AB in "" "$3"; do
          echo "-- $1, routes changed: ${AB:-none}"
          T 120 python3 benchmarks/route_ab.py $AB -- --quant $1 --kv bf16 --batch 16 --gen 64 --layers $2 2>&1 \
            | grep "^| llama"
        done
      done ;;
    final11)        # the eleventh session's last checks: attention after v_dequant was shared by both tails, the first WINT2
                    # kernel's tests (host-quantized shapes: slow), the models and device quantization, ERNIE end to end
      T 300 $PT tests/test_gpu_attention.py 2>&1 | tail -2
      T 300 $PT tests/test_gpu_kernels.py -k "test_gemv_wint2_vs_twin or wint2_batched" 2>&1 | tail -2
      T 200 $PT tests/test_gpu_model.py tests/test_quant_device_path.py tests/test_gpu_sampling.py 2>&1 | tail -2
      T 200 python3 benchmarks/e2e.py --model ernie-4.5-21b-a3b --quant wint4 --kv bf16 --batch 1,32 --gen 128 2>&1 \
        | grep "^| ernie" ;;
    rowse2e)        # the 8B end to end at batch 1 and 8 with gemv_rows (bf16; block_wise_fp8 on 8 of 32 layers, quantized on the
                    # host), A/B against the old routes in the same call
      for AB in "" "fdlite.quant._gpu.DENSE_ROWS_MAX_M=0 fdlite.quant._gpu.FP8_ROWS_MAX_M=0"; do
        echo "-- routes changed: ${AB:-none}"
        T 150 python3 benchmarks/route_ab.py $AB -- --quant dense --kv bf16 --batch 1,8 --gen 128 2>&1 | grep "^| llama"
        T 150 python3 benchmarks/route_ab.py $AB -- --quant block_wise_fp8 --kv bf16 --batch 1,8 --gen 64 --layers 8 2>&1 \
          | grep "^| llama"
      done ;;
    tp1)            # issue 9 on one GPU: a rank's build (RankPlan, world-1 NCCL) against one process, the NCCL world-1 tests
      T 200 $PT tests/test_parallel_runtime.py 2>&1 | tail -3 ;;
    tp)             # issue 9 on a multi-GPU kind (NCCL_NVLS_ENABLE=0 is set by fdlite): N-GPU tests, then the benchmarks
      T 240 $PT tests/test_parallel_runtime.py 2>&1 | tail -3
      T 200 python3 benchmarks/e2e.py --quant wint4 --kv bf16 --batch 1,32 --tp 1 2>&1 | grep "^| llama"
      T 200 python3 benchmarks/e2e.py --quant wint4 --kv bf16 --batch 1,32 --tp 2 2>&1 | grep "^| llama" ;;
    tp300)          # ERNIE-4.5-300B-A47B shape at WINT4 on 4 GPUs (each rank draws and quantizes its part on its host)
      T 580 python3 benchmarks/e2e.py --model ernie-4.5-300b-a47b --quant wint4 --kv bf16 --batch 1,32 --gen 64 \
        --tp ${TP:-4} 2>&1 | grep -E "^\| ernie|FAILED" ;;
    xsstall)        # gemv_xs at 16 / 32 rows: stall reasons per issued instruction, L2 and shared-memory traffic
      R=smsp__average_warps_issue_stalled; P=_per_issue_active.ratio
      MET="gpu__time_duration.sum,dram__bytes_read.sum,lts__t_bytes.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum"
      MET="$MET,sm__warps_active.avg.per_cycle_active,smsp__issue_active.avg.pct_of_peak_sustained_active"
      for r in barrier long_scoreboard short_scoreboard mio_throttle lg_throttle math_pipe_throttle wait \
               not_selected selected dispatch_stall no_instruction branch_resolving membar; do MET="$MET,${R}_${r}${P}"; done
      for ms in "32 o" "32 gate_up" "16 gate_up"; do
        set -- $ms
        T 70 ncu --launch-skip 2 --launch-count 1 --metrics "$MET" python3 benchmarks/kernel_probe.py --kernel wint4 \
          --M $1 --shape $2 > $OUT/ncu_stall_$1_$2.txt 2>&1
        echo "-- M=$1 $2"; grep -E "gemv|mma_sk|__" $OUT/ncu_stall_$1_$2.txt | grep -v "==PROF==" | head -24
      done ;;
    attnprobe)      # why a short-context attention call costs what it does: Nsight Compute on one launch
      T 60 $PT tests/test_gpu_kernels.py -k "pdl" -x 2>&1 | grep -E "Error|assert|passed|failed" | head -20
      T 60 python3 benchmarks/op_probe.py --ctx 32,64,300 --max-len 32,64,512 2>&1 | grep "^| paged"
      T 120 ncu --kernel-name regex:paged_attn --launch-skip 2 --launch-count 1 --section SpeedOfLight \
        --section WarpStateStats --section LaunchStats --section Occupancy --section SchedulerStats \
        python3 benchmarks/op_probe.py --ctx 64 --max-len 512 --reps 1 > $OUT/ncu_attn.txt 2>&1
      grep -E "Duration|Elapsed Cycles|Registers|Achieved Occupancy|Stall|Warp Cycles Per Issued|Issued Warp|Block Limit|Theoretical Occ|Eligible" \
        $OUT/ncu_attn.txt | head -40 ;;
    pdltests)       # every GPU test file touched by PDL and the one-kernel attention
      T 60 $PT tests/test_gpu_kernels.py -k "pdl" 2>&1 | grep -E "Error|assert|passed|failed" | head -20
      T 200 $PT tests/test_gpu_attention.py 2>&1 | grep -E "^FAILED|passed|failed" | head -10
      T 150 $PT tests/test_gpu_model.py tests/test_gpu_sampling.py tests/test_quant_device_path.py 2>&1 | grep -E "^FAILED|passed|failed" | head -10
      T 150 $PT tests/test_moe_gpu_path.py 2>&1 | grep -E "^FAILED|passed|failed" | head -10
      T 200 $PT tests/test_gpu_kernels.py -k "gemv_packed and not block_shapes or gemv_bf16 or (mma_sk and (4096-4096 or 96-160))" \
        2>&1 | grep -E "^FAILED|passed|failed" | head -10 ;;
    final)          # the session's final code: attention twins, probes, the 8B end to end at batch 1, 8 and 32
      T 120 $PT tests/test_gpu_attention.py -k "paged" 2>&1 | grep -E "^FAILED|passed|failed" | head -10
      T 60 python3 benchmarks/op_probe.py --ctx 64,1000,4000 --max-len 512,4096 2>&1 | grep "^| paged"
      T 240 python3 benchmarks/e2e.py --quant wint4,wint8 --kv bf16 --batch 1,8,32 --gen 128 2>&1 | grep "^|" ;;
    norm)           # the norm's weights loaded before pdl_wait: twins, PDL chain, probe, batch-1 end to end
      T 100 $PT tests/test_gpu_attention.py tests/test_gpu_kernels.py -k "fused or pdl" 2>&1 | grep -E "^FAILED|passed|failed"
      T 60 python3 benchmarks/op_probe.py --ctx 64 --max-len 512 2>&1 | grep "^|"
      T 150 python3 benchmarks/e2e.py --quant wint4,wint8 --kv bf16 --batch 1,8 --gen 128 2>&1 | grep "^|" ;;
    ring)           # gemv_packed's shared-memory weight ring against its twin, then its depths x block shapes
      T 240 $PT tests/test_gpu_kernels.py -k "gemv_packed or pdl" 2>&1 | grep -E "^FAILED|Error|passed|failed" | head -20
      T 100 $PT tests/test_gpu_kernels.py -k "mma_sk and (4096-4096 or 96-160)" 2>&1 | grep -E "^FAILED|passed|failed"
      T 300 env PACKED_ONLY=1 GEMV_TC=1 GEMV_MS=${TC_MS:-1,8} WINT2=0 GEMV_TC_DEPTHS=${TC_DEPTHS:-0,3,4,6,8} \
        GEMV_TC_SHAPES="${TC_SHAPES:-1.4.1;1.8.1;1.8.2;1.16.1}" python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1
      grep -A200 "sum over" $OUT/gemv.log ;;
    xs)             # gemv_xs (x staged in shared memory, 9-32 rows) against its twin, then timed with its block shapes;
                    # the int8 ring plan of gemv_packed against its twin and timed at 1 and 8 rows
      T 200 $PT tests/test_gpu_kernels.py -k "gemv_xs" 2>&1 | grep -E "^FAILED|Error|passed|failed" | head -20
      T 150 $PT tests/test_gpu_kernels.py -k "gemv_packed and not block_shapes and None" 2>&1 | grep -E "^FAILED|passed|failed" | head
      T 240 env PACKED_ONLY=1 GEMV_XS=1 GEMV_MS=${XS_MS:-16,32} WINT2=0 python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1
      cp $OUT/gemv.jsonl $OUT/gemv_xs.jsonl 2>/dev/null
      grep -A200 "sum over" $OUT/gemv.log | grep -E "M=|sum"
      T 100 env PACKED_ONLY=1 GEMV_MS=1,8 WINT2=0 python3 benchmarks/gpu_gemv.py > $OUT/gemv_tc.log 2>&1
      grep -A40 "sum over" $OUT/gemv_tc.log ;;
    xsfinal)        # gemv_xs routed for 9-32 rows: twins (direct and routed), its warps x chunk sweep, the model on the
                    # GPU, the 8B end to end at batch 1 (int8 ring) and 32 (gemv_xs)
      T 240 $PT tests/test_gpu_kernels.py -k "gemv_xs" 2>&1 | grep -E "^FAILED|Error|passed|failed|TIMEOUT" | head -20
      T 150 $PT tests/test_gpu_kernels.py -k "gemm_packed and (4096-4096 or 576-576 or 96-160 or 4096-14336)" \
        2>&1 | grep -E "^FAILED|Error|passed|failed|TIMEOUT" | head -20
      T 100 $PT tests/test_gpu_model.py tests/test_quant_device_path.py 2>&1 | grep -E "^FAILED|passed|failed" | head
      T 150 env PACKED_ONLY=1 GEMV_XS=1 GEMV_MS=16,32 WINT2=0 python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1
      cp $OUT/gemv.jsonl $OUT/gemv_xs2.jsonl 2>/dev/null
      grep -A200 "sum over" $OUT/gemv.log | grep -E "M=|sum"
      [ "${XS_E2E:-1}" = 1 ] && T 240 python3 benchmarks/e2e.py --quant wint4,wint8 --kv bf16 --batch 1,16,32 --gen 128 \
        2>&1 | grep "^|" ;;
    xs64)           # gemv_xs with 64 KiB chunks by default: its twins, the MoE path (mma_sk's helpers moved), the 8B end
                    # to end at batch 16 and 32, ERNIE at batch 32
      T 200 $PT tests/test_gpu_kernels.py -k "gemv_xs and not block_shapes" 2>&1 | grep -E "^FAILED|Error|passed|failed|TIMEOUT" | head
      T 150 $PT tests/test_moe_gpu_path.py 2>&1 | grep -E "^FAILED|passed|failed|TIMEOUT" | head
      T 200 python3 benchmarks/e2e.py --quant wint4,wint8 --kv bf16 --batch 16,32 --gen 128 2>&1 | grep "^|"
      T 150 python3 benchmarks/e2e.py --model ernie-4.5-21b-a3b --quant wint4 --kv bf16 --batch 32 --gen 64 2>&1 | grep "^|" ;;
    stalls)         # Nsight Compute stall reasons of the routed int4 GEMVs on gate_up: 1 row (gemv_packed), 16 and 32
                    # (gemv_xs): what holds each warp between instructions
      M_="smsp__average_warps_issue_stalled"
      MET="gpu__time_duration.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed"
      MET="$MET,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__warps_active.avg.per_cycle_active"
      for r in long_scoreboard barrier math_pipe_throttle mio_throttle short_scoreboard wait not_selected lg_throttle \
               dispatch_stall no_instruction selected; do MET="$MET,${M_}_${r}_per_issue_active.ratio"; done
      for m in 1 16 32; do
        T 90 ncu --launch-skip 2 --launch-count 1 --metrics $MET python3 benchmarks/kernel_probe.py --kernel wint4 --M $m \
          --shape gate_up > $OUT/ncu_stall_$m.txt 2>&1
        echo "-- M=$m gate_up"; grep -E "duration|pct|ratio|per_cycle" $OUT/ncu_stall_$m.txt | awk '{print $1, $NF}'
      done ;;
    nibble)         # int4 codes in the nibble order 0 2 4 6 1 3 5 7 (7 integer ops per 8 codes, was 9): every int4
                    # kernel against its twin, the MoE path and the model, the routed sums, the 8B end to end
      T 270 $PT tests/test_gpu_kernels.py -k "(gemv_packed and not block_shapes and None-4-) or (test_gemv_xs and not block_shapes and not 8--1) or (mma_sk and not fp8 and (4096-4096 or 96-160)) or ((mma_wq-4- or gemm_packed-4-) and (96-160 or 576-576))" \
        2>&1 | grep -E "^FAILED|Error|passed|failed|TIMEOUT" | head -20
      T 90 $PT tests/test_moe_gpu_path.py tests/test_gpu_model.py 2>&1 | grep -E "^FAILED|passed|failed|TIMEOUT" | head
      T 100 env PACKED_ONLY=1 GEMV_MS=1,16,32 WINT2=0 python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1
      grep -A30 "sum over" $OUT/gemv.log
      T 130 python3 benchmarks/e2e.py --quant wint4 --kv bf16 --batch 1,16,32 --gen 128 2>&1 | grep "^|" ;;
    nibble2)        # the rest the nibble order touches: device quantization and repack, block shapes, the PDL chain, MoE
      T 150 $PT tests/test_quant_device_path.py tests/test_gpu_model.py 2>&1 | grep -E "^FAILED|passed|failed|TIMEOUT" | head
      T 300 $PT tests/ -k "(block_shapes and not 8--1) or pdl or moe" > $OUT/nibble2.log 2>&1
      grep -E "^FAILED" $OUT/nibble2.log | head -10; tail -1 $OUT/nibble2.log ;;
    review)         # codes_of_step / ldmatrix_x4 shared from common.cuh: the kernels that use them against their twins
      T 270 $PT tests/test_gpu_kernels.py -k "(gemv_packed and not block_shapes and None) or (test_gemv_xs and not block_shapes and not 8--1) or (mma_sk and (4096-4096 or 96-160))" \
        > $OUT/review.log 2>&1; grep -E "^FAILED" $OUT/review.log | head; tail -1 $OUT/review.log
      T 90 $PT tests/test_moe_gpu_path.py 2>&1 | tail -1 ;;
    tcm1)           # gemv_packed's block shapes again at 1 and 4 rows, after the int4 nibble order changed its registers
      T 200 env PACKED_ONLY=1 GEMV_TC=1 GEMV_MS=1,4 WINT2=0 python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1
      grep -A80 "sum over" $OUT/gemv.log ;;
    skprobe)        # Nsight Compute on the routed 16- and 32-row int4 GEMM (mma_sk): why it moves 0.6-1.2 TB/s
      for m in 16 32; do for shp in gate_up qkv; do
        T 90 ncu --launch-skip 2 --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats \
          --section MemoryWorkloadAnalysis --section SchedulerStats --section LaunchStats python3 \
          benchmarks/kernel_probe.py --kernel wint4 --M $m --shape $shp > $OUT/ncu_sk_${m}_$shp.txt 2>&1
        echo "-- M=$m $shp"
        grep -E "Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Stall|Warp Cycles Per Issued|Issued Warp|Block Limit|Grid Size|Eligible|No Eligible" \
          $OUT/ncu_sk_${m}_$shp.txt | head -24
      done; done ;;
    loop1)          # gemv_packed's loop without the division, the register copies and the split lop3 (eighth session):
                    # its twin tests, the block shapes again (registers rose with the unrolled loop), the 8B end to end
      T 230 $PT tests/test_gpu_kernels.py -k "gemv_packed and not rejects" > $OUT/loop1.log 2>&1
      grep -E "^FAILED" $OUT/loop1.log | head; tail -1 $OUT/loop1.log
      T 200 env PACKED_ONLY=1 GEMV_TC=1 GEMV_MS=1,4 WINT2=0 GEMV_TC_SHAPES="1.8.1;1.4.1;1.4.4;1.4.5;1.8.2;1.16.1" \
        python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1
      grep -A80 "sum over" $OUT/gemv.log
      T 100 python3 benchmarks/e2e.py --quant wint4,wint8 --kv bf16 --batch 1 --gen 128 2>&1 | grep "^|" ;;
    prof1)          # the batch-1 wint4 step: host vs graph time, per-kernel durations, and the stalls of the new int4 GEMV
      T 60 python3 benchmarks/step_profile.py --quant wint4 --layers 32 --batch 1 --steps 48 2>&1 | tail -4
      T 120 $NCU python3 benchmarks/step_profile.py --quant wint4 --layers 2 --batch 1 --steps 4 --ncu \
        > $OUT/ncu_b1.csv 2>$OUT/ncu_b1.err
      python3 benchmarks/ncu_summary.py $OUT/ncu_b1.csv > $OUT/ncu_b1.txt; head -24 $OUT/ncu_b1.txt
      M_="smsp__average_warps_issue_stalled"
      MET="gpu__time_duration.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed"
      MET="$MET,smsp__warps_active.avg.per_cycle_active,smsp__inst_executed.sum,sm__cycles_elapsed.avg"
      for r in long_scoreboard barrier math_pipe_throttle mio_throttle short_scoreboard wait not_selected lg_throttle \
               dispatch_stall no_instruction selected; do MET="$MET,${M_}_${r}_per_issue_active.ratio"; done
      for shp in gate_up qkv; do
        T 90 ncu --launch-skip 2 --launch-count 1 --metrics $MET python3 benchmarks/kernel_probe.py --kernel wint4 --M 1 \
          --shape $shp > $OUT/ncu_stall_$shp.txt 2>&1
        echo "-- M=1 $shp"; grep -E "duration|pct|ratio|per_cycle|inst_executed|cycles_elapsed" $OUT/ncu_stall_$shp.txt | awk '{print $1, $NF}'
      done ;;
    loop2)          # gemv_packed with n tiles of weights in registers and 1-2 warp blocks: twins, then the block sweep
      T 200 $PT tests/test_gpu_kernels.py -k "gemv_packed_register_depths or (test_gemv_packed and None and (96-160 or 4096-14336))" \
        > $OUT/loop2.log 2>&1; grep -E "^FAILED" $OUT/loop2.log | head; tail -1 $OUT/loop2.log
      T 260 env PACKED_ONLY=1 GEMV_TC=1 GEMV_MS=1,4 WINT2=0 GEMV_TC_SHAPES="1.4.1;1.8.1;1.2.1;1.1.1;1.16.1" \
        GEMV_TC_DEPTHS=0,-4 python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1
      grep -A80 "sum over" $OUT/gemv.log ;;
    loop3)          # gemv_xs / mma_sk / moe without integer divisions, gemv_xs's register ring and 32-bit ldmatrix
                    # addresses: every touched kernel against its twin, then the routed sums at 1 / 16 / 32 rows
      T 300 $PT tests/test_gpu_kernels.py -k "(test_gemv_xs and not 8--1-1-) or (mma_sk and not fp8 and (4096-4096 or 96-160)) or ((gemm_packed-4- or gemm_packed-8-) and (96-160 or 576-576 or 4096-4096)) or (test_gemv_packed[None and (96-160 or 4096-14336))" \
        > $OUT/loop3.log 2>&1; grep -E "^FAILED" $OUT/loop3.log | head; tail -1 $OUT/loop3.log
      T 100 $PT tests/test_moe_gpu_path.py 2>&1 | grep -E "^FAILED|passed|failed" | head -5
      T 120 env PACKED_ONLY=1 GEMV_MS=1,16,32 WINT2=0 python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1
      grep -A30 "sum over" $OUT/gemv.log ;;
    e2e3)           # the 8B end to end at batch 1 / 16 / 32 and ERNIE at batch 32 with this round's kernels
      T 260 python3 benchmarks/e2e.py --quant wint4,wint8 --kv bf16 --batch 1,16,32 --gen 128 2>&1 | grep "^|"
      T 150 python3 benchmarks/e2e.py --model ernie-4.5-21b-a3b --quant wint4 --kv bf16 --batch 1,32 --gen 64 2>&1 | grep "^|" ;;
    host1)          # the engine's cheaper host step (pinned inputs, fewer padding writes, decode StepMeta shortcut): the
                    # GPU tests that run the graphs and the sampler, graphs on vs off, then host vs graph time per step
      T 240 $PT tests/test_gpu_sampling.py tests/test_gpu_model.py tests/test_moe_gpu_path.py tests/test_parallel_runtime.py \
        tests/test_quant_device_path.py > $OUT/host1.log 2>&1; grep -E "^FAILED" $OUT/host1.log | head; tail -1 $OUT/host1.log
      for b in 1 32; do T 60 python3 benchmarks/step_profile.py --quant wint4 --layers 32 --batch $b --steps 48 2>&1 | tail -4; done ;;
    minb1)          # gemv_packed's register caps after the loop rework (80 registers: int8 fits, int4 spills 200 bytes)
      T 240 env PACKED_ONLY=1 GEMV_TC=1 GEMV_MS=1,4 WINT2=0 GEMV_TC_SHAPES="1.4.1;1.4.6;1.8.1;1.8.3;1.4.3" \
        python3 benchmarks/gpu_gemv.py > $OUT/gemv.log 2>&1
      grep -A60 "sum over" $OUT/gemv.log ;;
    sampler1)       # the review's one-branch GPU sampler: its tests and the models that sample through it
      T 200 $PT tests/test_gpu_sampling.py tests/test_gpu_model.py 2>&1 | grep -E "^FAILED|passed|failed" | head ;;
    q8)             # the prefill GEMM of the x-quantizing methods (mma_q8) against its twins, the routes it changed, then
                    # its timings (every pipeline depth / unroll) against the decode kernels, mma_sk_fp8 and cuBLAS
      T 300 $PT tests/test_gpu_prefill.py > $OUT/q8.log 2>&1; grep -E "^FAILED|Error|error" $OUT/q8.log | head -20
      tail -1 $OUT/q8.log
      T 200 $PT tests/test_gpu_kernels.py -k "gemv_rows_pre or wfp8afp8_rows or block_fp8_above or int8_vs_twin or w4a8_vs_twin or w4afp8_vs_twin or gemv_rows_graph" \
        > $OUT/q8b.log 2>&1; grep -E "^FAILED" $OUT/q8b.log | head; tail -1 $OUT/q8b.log
      T 280 env PREFILL_VARIANTS=${PREFILL_VARIANTS:-1} PREFILL_MS=${PREFILL_MS:-16,32,64,128,256,1024,4096} \
        python3 benchmarks/gpu_prefill.py > $OUT/prefill.log 2>&1
      grep -A200 "sum over" $OUT/prefill.log; tail -3 $OUT/prefill.log ;;
    q8tests)        # the prefill routes in whole models: the GPU model, device-quantization and MoE files, the prefill twins
      T 300 $PT tests/test_gpu_prefill.py > $OUT/q8.log 2>&1; grep -E "^FAILED" $OUT/q8.log | head; tail -1 $OUT/q8.log
      T 280 $PT tests/test_gpu_model.py tests/test_quant_device_path.py tests/test_moe_gpu_path.py > $OUT/q8m.log 2>&1
      grep -E "^FAILED" $OUT/q8m.log | head; tail -1 $OUT/q8m.log ;;
    q8e2e)          # the 8B shape (8 layers), 1024-token prompts at batch 1 and 4: prefill time with mma_q8, then without
                    # (the routes before: gemv_rows per 16 rows to 64, above them the reference formula / bf16 stop-gap)
      OFF="fdlite.quant._gpu.Q8_MIN_M=1000000 fdlite.quant._gpu.Q8_INT4_MIN_M=1000000 fdlite.quant._gpu.Q8_FP8_MIN_M=1000000"
      OFF="$OFF fdlite.quant._gpu.NF4_MIN_M=1000000"
      for q in ${Q8_QUANTS:-w8a8 block_wise_fp8 w4afp8 wfp8afp8}; do
        for AB in "" "$OFF"; do
          echo "-- $q, routes changed: ${AB:-none}"
          T 150 python3 benchmarks/route_ab.py $AB -- --quant $q --kv bf16 --batch ${Q8_BATCH:-1,4} --prompt 1024 \
            --gen 16 --layers $([ $q = nf4 ] && echo 4 || echo 8) 2>&1 | grep "^|"
        done
      done ;;
    nf4q)           # nf4's prefill GEMM (mma_nf4) and the static activation scales: twins, the touched routes and models,
                    # then mma_nf4's timings against gemv_rows per 16 rows and cuBLAS
      T 280 $PT tests/test_gpu_prefill.py > $OUT/nf4q.log 2>&1; grep -E "^FAILED" $OUT/nf4q.log | head
      tail -1 $OUT/nf4q.log
      T 200 $PT tests/test_gpu_kernels.py -k "nf4 or int8_vs_twin or w4a8_vs_twin or gemv_rows_pre or gemv_rows_graph" \
        > $OUT/nf4k.log 2>&1; grep -E "^FAILED" $OUT/nf4k.log | head; tail -1 $OUT/nf4k.log
      T 150 $PT tests/test_gpu_model.py tests/test_quant_device_path.py > $OUT/nf4m.log 2>&1
      grep -E "^FAILED" $OUT/nf4m.log | head; tail -1 $OUT/nf4m.log
      T 150 env PREFILL_NF4=1 PREFILL_MS=16,32,64,128,256,1024,4096 python3 benchmarks/gpu_prefill.py \
        > $OUT/prefill.log 2>&1
      grep -A60 "sum over" $OUT/prefill.log; tail -3 $OUT/prefill.log ;;
    inflight)       # wgmma_q8 with one wgmma group in flight across K tiles: its twins, then its timings against the old loop
      T 200 $PT tests/test_gpu_prefill.py -k "(mma_q8_vs_twin and (fp8 or w8a8) and (1000-1024 or 4096-14336)) or large_m or graph or static" \
        > $OUT/infl.log 2>&1; grep -E "^FAILED" $OUT/infl.log | head; tail -1 $OUT/infl.log
      T 200 env PREFILL_WG=1 PREFILL_MS=128,1024,4096 python3 benchmarks/gpu_prefill.py > $OUT/prefill.log 2>&1
      grep -A60 "sum over" $OUT/prefill.log; tail -3 $OUT/prefill.log ;;
    *) echo "unknown stage $stage (q8 q8tests q8e2e nf4q inflight tc tcbench tcprobe verify verify2 sk sktests tests gemv e2e ernie profile profile32 attn attnprobe pdltests final norm ring skprobe xs xsfinal xs64 stalls nibble nibble2 tcm1 review loop1 prof1 loop2 loop3 e2e3 host1 minb1 sampler1)" ;;
  esac
done
