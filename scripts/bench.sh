#!/usr/bin/env bash
# The quick benchmark on the machine at hand (GPU when there is one, else CPU): span_dynamic_conv
# per provider and a ConvBertForMaskedLM training step per provider, then the speed-up tables.
# Rows go to .benchmarks/ (git-ignored); the committed figures come from the full sweeps:
#   python -m benchmarks.bench_kernels --preset cpu|gpu ; python -m benchmarks.bench_model --preset cpu|gpu
# Environment: BENCH_THREADS=N (torch threads on CPU), BENCH_COMPILE=1 (also the torch.compile'd
# models on CPU, slow to compile), BENCH_OUT=DIR. Extra arguments go to bench_kernels.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
unset TRITON_INTERPRET  # never time the Triton interpreter
# The CPU memory figures come from torch.profiler, whose Kineto backend prints STAGE/USDT/ERROR lines
# on stderr at every start and stop (and "gpuGetDeviceCount failed" without a GPU): not here.
export KINETO_LOG_LEVEL="${KINETO_LOG_LEVEL:-6}"
out="${BENCH_OUT:-$ROOT/.benchmarks}"
mkdir -p "$out"
threads=()
[ -n "${BENCH_THREADS:-}" ] && threads=(--threads "$BENCH_THREADS")
slug="$(python -c 'import torch; from benchmarks.common import device_slug; print(device_slug("cuda" if torch.cuda.is_available() else "cpu"))')"
on_gpu="$(python -c 'import torch; print(int(torch.cuda.is_available()))')"

# Each benchmark's output (its stderr too: torch's one-off warnings) goes to its log; on failure, its end is shown.
logged() {
    local log="$1"
    shift
    "$@" > "$log" 2>&1 || { echo "failed: $* (the end of $log:)" >&2; tail -n 40 "$log" >&2; exit 1; }
}
logged "$out/quick-kernels-$slug.log" \
    python -m benchmarks.bench_kernels --preset quick "${threads[@]}" --out "$out/quick-kernels-$slug.jsonl" "$@"
model_providers=()
if [ "$on_gpu" = 0 ] && [ "${BENCH_COMPILE:-0}" != 1 ]; then
    model_providers=(--providers "$(python -c 'import torch; from benchmarks.bench_model import provider_names; print(",".join(provider_names(torch.device("cpu"), compiled=False)))')")
fi
logged "$out/quick-model-$slug.log" python -m benchmarks.bench_model --preset quick "${threads[@]}" \
    "${model_providers[@]}" --out "$out/quick-model-$slug.jsonl"

echo
python -m benchmarks.plot --no-plot "$out/quick-kernels-$slug.jsonl" "$out/quick-model-$slug.jsonl"
echo "(per-measurement lines: $out/quick-kernels-$slug.log, $out/quick-model-$slug.log)"
