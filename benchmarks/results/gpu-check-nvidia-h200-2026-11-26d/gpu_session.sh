#!/usr/bin/env bash
# one-off driver for this session's GPU run (not committed)
set -u
export PYTHONUNBUFFERED=1
O="$1"; part="$2"; PY=python3
export CONVBERT_COMMIT=$(cat .commit_sha)  # the full sha, written beside it before the run
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
if [ "$part" = 1 ]; then
  GPU_CHECK_BUDGET_S=200 GPU_CHECK_STAGE_S=190 bash scripts/gpu_check.sh --stages setup "$O/c1" > /dev/null 2>&1
  el "setup exit $?"
  {
  for p in torch native native-after-cuda; do
    timeout -k 5 40 $PY -X faulthandler scripts/throw_probe.py $p 2>&1 | tail -25; el "probe $p exit ${PIPESTATUS[0]}"
  done
  el "cuda-gdb on throw_probe native"
  timeout -k 5 120 cuda-gdb -q -batch -ex run -ex "info sharedlibrary" -ex "thread apply all bt 40" --args $PY scripts/throw_probe.py native 2>&1 | grep -v '^\[New Thread\|^\[Thread' | tail -220
  el "cuda-gdb done"
  $PY - <<'PY'
import torch, convbert_kernels, glob, os, subprocess
convbert_kernels.load_backends("native")
so = [p for p in glob.glob(os.path.join(os.path.dirname(convbert_kernels.__file__), "_C*.so"))]
print("so:", so)
for s in so:
    print(subprocess.run(["ldd", s], capture_output=True, text=True).stdout)
    print(subprocess.run(["bash", "-c", f"nm -D --defined-only {s} | grep -ci typeinfo; readelf -d {s} | head -30"], capture_output=True, text=True).stdout)
print("torch lib:", os.path.dirname(torch.__file__))
print(torch.__config__.show())
print("torch._C._GLIBCXX_USE_CXX11_ABI", torch._C._GLIBCXX_USE_CXX11_ABI, "abi", getattr(torch._C, "_PYBIND11_BUILD_ABI", None), getattr(torch._C, "_PYBIND11_COMPILER_TYPE", None))
PY
  g++ --version | head -1; ls -la /usr/lib/x86_64-linux-gnu/libstdc++* 2>&1 | head; $PY -c "import sys; print(sys.version)"
  } > "$O/diag.log" 2>&1
  el "diag done"
  timeout -k 10 170 $PY -m pytest -q -p no:cacheprovider -n 8 -m gpu tests > "$O/gpu-tests.log" 2>&1
  el "gpu tests exit $? $(tail -1 $O/gpu-tests.log)"
  NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  LC_ALL=C timeout -k 10 150 $NCU --clock-control none --kernel-name regex:'span_forward_kernel|window_forward_kernel|_fwd_kernel' --set full \
     $PY scripts/gpu_sanitize_ops.py --base --backends native,triton --dtypes bf16 > "$O/ncu-forward.log" 2>&1
  el "ncu exit $?"
  timeout -k 10 $(( 500 - ( $(date +%s) - T0 ) )) $PY -m benchmarks.bench_window --preset gpu --no-plot --out "$O/window.jsonl" > "$O/window.log" 2>&1
  el "window exit $?"
  ls $O/window* $O/*.png 2>/dev/null
else
  timeout -k 10 $(( ${3:-250} )) $PY -m benchmarks.bench_model --size base --batch 32 --seq-len 512 --dtype bf16 \
     --providers convbert:native,convbert:triton,hf,convbert-compiled:native,convbert-compiled:triton,hf-compiled --budget-s $(( ${3:-250} - 20 )) \
     --out "$O/model.jsonl" > "$O/model.log" 2>&1
  el "bench_model exit $?"
fi
