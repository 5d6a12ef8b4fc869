#!/usr/bin/env bash
# one-off driver for this session's GPU run (fifth run)
set -u
export PYTHONUNBUFFERED=1
O="$1"; part="$2"; PY=python3
export CONVBERT_COMMIT=$(cat .commit_sha)
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
left() { echo $(( $1 - ( $(date +%s) - T0 ) )); }
KARGS="--seq-lens 512 --batches 32 --dims 384,384,6,9 --dtype bf16 --modes forward,full --providers native,triton --copy-gbps 0 --mm-gflops 0"
if [ "$part" = 1 ]; then
  GPU_CHECK_BUDGET_S=200 GPU_CHECK_STAGE_S=190 bash scripts/gpu_check.sh --stages setup /tmp/c1 > /dev/null 2>&1
  el "setup exit $?"; cp /tmp/c1/summary.md "$O/summary-setup.md"; cp /tmp/c1/setup.log "$O/setup.log"
  grep -i "libstdc" /tmp/c1/setup.log /tmp/c1/summary.md | head -5
  timeout -k 10 100 $PY -m pytest -q -p no:cacheprovider -n 8 -rfE tests/test_native.py > "$O/native-tests.log" 2>&1
  el "test_native exit $? $(tail -1 $O/native-tests.log)"
  timeout -k 10 150 $PY -m pytest -q -p no:cacheprovider -n 8 -rfE -m gpu tests > "$O/gpu-tests.log" 2>&1
  el "gpu tests exit $? $(tail -1 $O/gpu-tests.log)"
  {
  el "baseline bench (prebuilt, __launch_bounds__(256, 2))"
  timeout -k 5 60 $PY -m benchmarks.bench_kernels $KARGS --out "$O/kernels.jsonl"
  el "variant build: span_forward_kernel __launch_bounds__(kThreads, 4)"
  rm -rf /tmp/v /tmp/vb; mkdir -p /tmp/v /tmp/vb; cp -r csrc /tmp/v/csrc
  sed -i '509s/__launch_bounds__(kThreads, kMinBlocks)/__launch_bounds__(kThreads, 4)/' /tmp/v/csrc/span_dynamic_conv_cuda.cu
  sed -n 509p /tmp/v/csrc/span_dynamic_conv_cuda.cu
  export CONVBERT_KERNELS_NATIVE=jit CONVBERT_KERNELS_CSRC=/tmp/v/csrc CONVBERT_KERNELS_BUILD_DIR=/tmp/vb MAX_JOBS=16
  timeout -k 5 150 $PY -c "import torch, convbert_kernels.native as n; import convbert_kernels; convbert_kernels.load_backends('native'); print('variant loaded', n.library_paths())" 2>&1 | tail -5
  el "variant bench"
  timeout -k 5 60 $PY -m benchmarks.bench_kernels $KARGS --out "$O/kernels-lb4.jsonl"
  el "variant ncu"
  NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  LC_ALL=C timeout -k 5 60 $NCU --clock-control none --kernel-name regex:'span_forward_kernel' \
    --metrics gpu__time_duration.sum,launch__registers_per_thread,launch__occupancy_limit_registers,sm__warps_active.avg.pct_of_peak_sustained_active,l1tex__t_sectors_pipe_lsu_mem_local_op_ld.sum \
    $PY scripts/gpu_sanitize_ops.py --base --backends native --dtypes bf16 2>&1 | tail -40
  unset CONVBERT_KERNELS_NATIVE CONVBERT_KERNELS_CSRC CONVBERT_KERNELS_BUILD_DIR
  el "baseline bench again"
  timeout -k 5 60 $PY -m benchmarks.bench_kernels $KARGS --out "$O/kernels.jsonl"
  el "variant done"
  } > "$O/variant.log" 2>&1
  el "variant part done"
  timeout -k 10 $(left 470) $PY -m pytest -v -p no:cacheprovider -n 14 -rfE -m "not gpu" --ignore=tests/test_native.py tests > "$O/suite.log" 2>&1
  el "rest of suite exit $? $(tail -1 $O/suite.log)"
  grep -c PASSED "$O/suite.log"; grep -E "FAILED|ERROR|crashed|worker" "$O/suite.log" | head -20
else
  timeout -k 10 $(( ${3:-220} )) $PY -m benchmarks.bench_model --size base --batch 32 --seq-len 512 --dtype bf16 --profile 12 \
     --providers convbert:native,convbert:triton,hf --budget-s $(( ${3:-220} - 20 )) \
     --out "$O/model.jsonl" > "$O/model.log" 2>&1
  el "bench_model exit $?"
fi
