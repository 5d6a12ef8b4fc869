#!/usr/bin/env bash
# GPU proof kit: build, test, sanitize, benchmark and profile the kernels on the lent GPU machine,
# and write the evidence to OUTDIR.
#
#   bash scripts/gpu_check.sh [--dry-run] [--stages LIST] OUTDIR
#
# Stages, in the order they run (most important first; each can run alone, e.g. --stages tests,sanitize):
#   setup          device, driver, versions, commit; installs the project with no download
#                  (pip install --no-build-isolation --no-deps --no-index -e ., MAX_JOBS=$(nproc),
#                  TORCH_CUDA_ARCH_LIST from the device) and checks the native CUDA kernels registered
#   tests          the whole suite on CUDA (Triton compiled, bf16 included): the gpu-marked tests first,
#                  then the rest; then every torch.compile test (pytest --collect-only -q -k compile
#                  tests) alone in a fresh process; a test that crashed its worker runs again alone (gdb
#                  or cuda-gdb backtrace), then scripts/throw_probe.py; logged
#   sanitize       compute-sanitizer memcheck, racecheck, synccheck, initcheck over every native CUDA op
#                  (scripts/gpu_sanitize_ops.py), and memcheck over the Triton kernels
#   bench-kernels  span_dynamic_conv at ConvBERT-base dims (B=32 L=512 A=C=384 n=6 K=9), bf16 and
#                  fp32, forward and full, every provider; GB/s against the op's floor and a measured copy
#   bench-model    ConvBertForMaskedLM-base training step (bf16, B=32, L=512) per provider with its 12
#                  longest kernels of one step (torch.profiler), and the longest L in 512..8192 each
#                  provider trains at B=8
#   ncu            ncu --clock-control none on the Triton and native CUDA kernels at base dims
#
# Recommended split on the GPU machine (one command may run 10 minutes and bring back 8 files; a
# machine kept warm between the commands reuses the build, convbert_kernels/_C*.so and its hash in
# build/; the tree there has no git history, so pass the commit):
#   1. CONVBERT_COMMIT=<sha> bash scripts/gpu_check.sh --stages setup,tests                 "$OUT"
#   2. CONVBERT_COMMIT=<sha> bash scripts/gpu_check.sh --stages sanitize,bench-kernels,ncu  "$OUT"
#   3. CONVBERT_COMMIT=<sha> bash scripts/gpu_check.sh --stages bench-model                 "$OUT"
# Measured on an H200 (2026-11-26, 16 cores): machine start ~30 s, build 42 s (setup 57), GPU tests
# 59-75 s with 8 pytest workers, the rest of the suite over 184 s, sanitize 62, bench-kernels 75,
# ncu 28, bench-model 137 with the compiled providers left out for time (fourth run: six providers,
# three of them compiled, 182 s without the length search; each compiled one's first step 36-61 s).
# The three commands fit one 15-minute lease only just: should time run short, command 3 goes
# first in the next one.
# Every stage stops in time: a stage gets at most GPU_CHECK_STAGE_S (450 s) and the command
# GPU_CHECK_BUDGET_S (570 s); a stage with too little time left is reported NOT RUN, to be run in a
# command of its own. On a GPU machine with pytest-xdist and 8+ cores the suite runs on 8 workers;
# GPU_CHECK_PYTEST_ARGS replaces that (e.g. "-n 0" for one process).
# Each command writes at most 8 files to OUTDIR: summary.md (device, versions and every table of
# the stages it ran), kernels.jsonl, model.jsonl, and one log per stage (setup.log, tests.log,
# sanitize.log, bench.log for both benchmarks, ncu.log); it prints summary.md last. A stage that
# fails is marked FAILED and the next one runs; the exit status is non-zero if any stage failed or
# was not run.
#
# --dry-run: on a machine without a GPU, every stage at tiny sizes on the CPU with the project's
# .venv (scripts/env.sh), Triton through the interpreter; the tests stage runs a subset (CI runs the
# whole suite); sanitize and ncu are skipped (no GPU) but run their workload script on CPU. CI runs
# `bash scripts/gpu_check.sh --dry-run <tmpdir>`; it takes about 2 minutes on 2 cores.
#
# Environment: PYTHON (GPU mode; default python3), CONVBERT_COMMIT (the commit to record where the
# tree has no git), COMPUTE_SANITIZER / NCU (tool paths when not on PATH or in /usr/local/cuda/bin).

# shellcheck disable=SC2054  # commas inside array elements are arguments (--dims 384,384,6,9)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ALL_STAGES=(setup tests sanitize bench-kernels bench-model ncu)

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
die() { echo "gpu_check.sh: $*" >&2; exit 2; }

# ---- options ------------------------------------------------------------------------------------
dry_run=0
stage_list=""
outdir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --stages) [ $# -ge 2 ] || die "--stages needs a comma-separated list"; stage_list="$2"; shift ;;
        --stages=*) stage_list="${1#--stages=}" ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *) [ -z "$outdir" ] || die "one OUTDIR only (got '$outdir' and '$1')"; outdir="$1" ;;
    esac
    shift
done
[ -n "$outdir" ] || die "missing OUTDIR (usage: gpu_check.sh [--dry-run] [--stages LIST] OUTDIR)"

# The stages asked for, checked, deduplicated and put in the kit's order (most important first).
declare -A wanted=()
if [ -n "$stage_list" ]; then
    IFS=',' read -r -a asked <<<"$stage_list"
    for s in "${asked[@]}"; do
        [ -z "$s" ] && continue
        case " ${ALL_STAGES[*]} " in
            *" $s "*) wanted[$s]=1 ;;
            *) die "unknown stage '$s'; stages: $(IFS=,; echo "${ALL_STAGES[*]}")" ;;
        esac
    done
    [ ${#wanted[@]} -gt 0 ] || die "--stages: no stage given"
else
    for s in "${ALL_STAGES[@]}"; do wanted[$s]=1; done
fi
STAGES=()
for s in "${ALL_STAGES[@]}"; do [ -n "${wanted[$s]:-}" ] && STAGES+=("$s"); done
STAGES_CSV="$(IFS=,; echo "${STAGES[*]}")"

# ---- environment --------------------------------------------------------------------------------
cd "$ROOT" || exit 2
if [ "$dry_run" = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""  # a dry run is the CPU path, even on a machine with a GPU
    # shellcheck disable=SC1091
    source "$ROOT/scripts/env.sh"  # creates / activates .venv (and sets -e, undone below)
    set +e
    PY=python
    export TRITON_INTERPRET=1
else
    PY="${PYTHON:-python3}"
    unset TRITON_INTERPRET  # Triton compiled for the GPU, never the interpreter
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
        echo "gpu_check.sh: no CUDA device: '$PY' cannot import torch or torch.cuda.is_available() is False." >&2
        echo "This kit is for the GPU machine; without a GPU, run: bash scripts/gpu_check.sh --dry-run OUTDIR" >&2
        exit 3
    fi
    if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi
    export PATH="$PATH:${CUDA_HOME:-/usr/local/cuda}/bin"
fi
export PYTHONUNBUFFERED=1
# the commit, found once (git may be missing there) and exported: result rows and the summary carry it
IFS=$'\t' read -r CONVBERT_COMMIT CONVBERT_COMMIT_SOURCE < <("$PY" -m benchmarks.gpu_summary commit 2>/dev/null \
    || printf 'unknown\tnone\n')
export CONVBERT_COMMIT="${CONVBERT_COMMIT:-unknown}" CONVBERT_COMMIT_SOURCE="${CONVBERT_COMMIT_SOURCE:-none}"

mkdir -p "$outdir" || die "cannot create OUTDIR '$outdir'"
OUTDIR="$(cd "$outdir" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK"/{setup,tests,sanitize,ncu}
: >"$WORK/stages.tsv"
rm -f "$OUTDIR/summary.md"

START=$(date +%s)
STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
BUDGET="${GPU_CHECK_BUDGET_S:-570}"
STAGE_CAP="${GPU_CHECK_STAGE_S:-450}"
RESERVE=25  # seconds kept for writing the summary

left() { echo $((START + BUDGET - $(date +%s) - RESERVE)); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }
# a limit for one command: the stage's cap, this stage's remaining time and the command's
# (at least 1: `timeout 0` would mean no limit at all)
limit() {
    local s
    s="$(min "$(min "${1:-$STAGE_CAP}" "$(left)")" "$((STAGE_END - $(date +%s)))")"
    if [ "$s" -lt 1 ]; then echo 1; else echo "$s"; fi
}
log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*"; }

# ---- the build ------------------------------------------------------------------------------------
# Hash of what the extension is built from: a warm machine keeps build outputs between commands, but
# gets a fresh copy of the tree each time, so reuse is decided by content, not by file times.
src_hash() { cat setup.py csrc/* 2>/dev/null | sha256sum | cut -d' ' -f1; }
HASH_FILE="$ROOT/build/.gpu-check-sources.sha256"

built_and_current() {
    [ "$(src_hash)" = "$(cat "$HASH_FILE" 2>/dev/null)" ] && "$PY" - <<'EOF' >/dev/null 2>&1
import importlib.metadata, sys, torch
import convbert_kernels._C  # the prebuilt extension, not a just-in-time build
importlib.metadata.version("convbert-kernels")  # installed (entry points), not only importable
ok = torch._C._dispatch_has_kernel_for_dispatch_key("convbert_kernels::native_span_fwd", "CUDA")
sys.exit(0 if ok else 1)
EOF
}

BUILD_HOW="not built"
BUILD_SECONDS=0
BUILD_FAILED=0
# Build (or reuse) the extension. A failed build is tried once per command: later stages still run
# (Triton, the eager backends and the tests of everything else), with "native" simply absent.
ensure_built() {
    if [ "$dry_run" = 1 ]; then BUILD_HOW="scripts/env.sh installed the project into .venv"; return 0; fi
    if [ "$BUILD_FAILED" = 1 ]; then log "the native extension failed to build earlier in this command"; return 1; fi
    if built_and_current; then
        BUILD_HOW="reused (sources unchanged since the last build on this machine)"
        log "reusing the installed extension"
        return 0
    fi
    local arch t0 rc
    arch="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
    TORCH_CUDA_ARCH_LIST="$arch"
    MAX_JOBS="$(nproc)"
    export TORCH_CUDA_ARCH_LIST MAX_JOBS
    log "building: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
    t0=$(date +%s)
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then
        log "pip install failed (exit $rc); building in place instead (setup.py build_ext --inplace)"
        "$PY" setup.py build_ext --inplace 2>&1
        rc=$?
        BUILD_HOW="setup.py build_ext --inplace (pip install failed)"
    else
        BUILD_HOW="pip install --no-build-isolation --no-deps --no-index -e ."
    fi
    BUILD_SECONDS=$(($(date +%s) - t0))
    if [ $rc -eq 0 ]; then
        mkdir -p "$(dirname "$HASH_FILE")" && src_hash >"$HASH_FILE"
    else
        # no just-in-time rebuild attempt in every process that imports the native backend
        BUILD_FAILED=1
        export CONVBERT_KERNELS_NATIVE=prebuilt
    fi
    return $rc
}

find_tool() {  # find_tool NAME ENVVAR: the tool's path, or nothing
    local name="$1" override="${!2:-}"
    if [ -n "$override" ]; then echo "$override"; return; fi
    command -v "$name" 2>/dev/null && return
    for p in "${CUDA_HOME:-/usr/local/cuda}/bin/$name" /usr/local/cuda/bin/"$name" /opt/nvidia/nsight-compute/*/"$name"; do
        [ -x "$p" ] && { echo "$p"; return; }
    done
}

# ---- stages ---------------------------------------------------------------------------------------
# Each writes its log to stdout (redirected by run_stage), raw results under $WORK, rows to $OUTDIR;
# its exit status says whether it ran; gpu_summary.py reads the results and decides PASSED/FAILED.

stage_setup() {
    log "device and driver"
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    "$PY" - <<'EOF'
import platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("torch", "triton", "transformers", "numpy"):
    try:
        module = __import__(name)
        print(name, module.__version__, getattr(getattr(module, "version", None), "cuda", "") or "")
    except Exception as exc:
        print(name, "not importable:", exc)
import torch
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "capability %d.%d" % (p.major, p.minor), p.multi_processor_count, "SMs", p.total_memory, "bytes")
EOF
    command -v nvcc >/dev/null && nvcc --version | tail -n 2
    # which libstdc++ the linker can take (a static one in the extension crashed its error messages
    # on the H200 machine; convbert_kernels/_link.py)
    local lib
    for lib in libstdc++.so libstdc++.so.6 libstdc++.a; do
        echo "${CXX:-c++} -print-file-name=$lib: $("${CXX:-c++}" -print-file-name="$lib" 2>&1)"
    done
    echo "commit $CONVBERT_COMMIT"
    ensure_built
    local rc=$? expect=()
    [ "$dry_run" = 0 ] && expect=(--expect-cuda)
    "$PY" -m benchmarks.gpu_summary native-check "${expect[@]}" --out "$WORK/setup/native.json" \
        --extra "build=$BUILD_HOW (exit $rc)" --extra "build_seconds=$BUILD_SECONDS" \
        --extra "torch_cuda_arch_list=${TORCH_CUDA_ARCH_LIST:-}" --extra "max_jobs=${MAX_JOBS:-}"
    local check=$?
    [ $rc -eq 0 ] && [ $check -eq 0 ]
}

stage_tests() {
    ensure_built || log "WARNING: no native extension; going on without the native backend"
    local collect extra=() more=() rc t0 i=0 suite_end
    if [ "$dry_run" = 1 ]; then
        collect=(tests/test_triton.py -k "compile and aot_eager")
    else
        collect=(tests -k compile)
    fi
    # a hung test then fails alone instead of eating the stage (pytest-timeout is on the GPU machine)
    "$PY" -c 'import pytest_timeout' 2>/dev/null && extra=(--timeout 300)
    # 8 workers where pytest-xdist and the cores are there (the GPU machine has both; the GPU
    # tests passed so, 59 s instead of minutes); GPU_CHECK_PYTEST_ARGS replaces the default
    local default_workers=""
    if [ "$dry_run" = 0 ] && [ "$(nproc)" -ge 8 ] && "$PY" -c 'import xdist' 2>/dev/null; then
        default_workers="-n 8"
    fi
    read -r -a more <<<"${GPU_CHECK_PYTEST_ARGS-$default_workers}"
    # the suite leaves two minutes of the stage (at least a third) to the torch.compile tests run alone
    suite_end=$(($(date +%s) + (STAGE_CAP - 120 > STAGE_CAP * 2 / 3 ? STAGE_CAP - 120 : STAGE_CAP * 2 / 3)))
    run_suite() {  # run_suite LABEL PYTEST-ARGS...: one pytest run, recorded in runs.tsv
        local label="$1"
        shift
        if [ $((suite_end - $(date +%s))) -lt 30 ]; then
            printf '%s\t\tnotime\t0\n' "$label" >>"$WORK/tests/runs.tsv"
            return
        fi
        log "pytest $* ${extra[*]} ${more[*]}"
        t0=$(date +%s)
        timeout -k 10 "$(limit $((suite_end - $(date +%s))))" "$PY" -m pytest -q -p no:cacheprovider "${extra[@]}" \
            "${more[@]}" "$@" --junitxml="$WORK/tests/$label.xml" 2>&1 | tee "$WORK/tests/$label.out"
        rc=${PIPESTATUS[0]}  # pytest's; the copy is read for workers lost to a crash (no junit entry)
        printf '%s\t%s\t%s\t%s\n' "$label" "$WORK/tests/$label.xml" "$rc" "$(($(date +%s) - t0))" >>"$WORK/tests/runs.tsv"
    }
    if [ "$dry_run" = 1 ]; then
        run_suite suite tests/test_backends.py -k "span_matches_oracle and float32"
    else
        # the GPU tests first: should time run short, what only the card can show is in hand
        # (CI runs the rest on CPU under this machine's stack too)
        run_suite gpu-tests tests -m gpu
        run_suite other-tests tests -m "not gpu"
    fi

    # A test that crashed its worker, again alone in one process (no xdist, -v names each case before
    # it runs), for its native backtrace: under gdb, else cuda-gdb (the GPU image has no gdb, and
    # cuda-gdb debugs host code too), else Python's faulthandler. Logged only (tests.log).
    local crashed debugger=""
    crashed="$("$PY" -m benchmarks.gpu_summary crashed "$WORK"/tests/*.out 2>/dev/null)"
    for d in gdb cuda-gdb; do
        command -v "$d" >/dev/null && debugger="$d" && break
    done
    while IFS= read -r nodeid; do
        [ -n "$nodeid" ] || continue
        if [ "$(limit)" -lt 60 ]; then
            log "crashed test not rerun (no time left): $nodeid"
            continue
        fi
        log "crashed test, alone in one process${debugger:+ under $debugger}: $nodeid"
        if [ -n "$debugger" ]; then
            timeout -k 10 "$(limit 90)" "$debugger" -q -batch -ex run -ex "thread apply all bt 30" --args \
                "$PY" -X faulthandler -m pytest -v -p no:cacheprovider -p no:xdist "${extra[@]}" "$nodeid" 2>&1 | tail -150
        else
            timeout -k 10 "$(limit 90)" "$PY" -X faulthandler -m pytest -v -p no:cacheprovider -p no:xdist \
                "${extra[@]}" "$nodeid" 2>&1 | tail -80
        fi
    done <<<"$crashed"
    # Which C++ exceptions crash: torch's own, this extension's, or this extension's only after CUDA
    # is initialised (each in a fresh process; exit 0 = raised and caught, 139 = segfault).
    if [ -n "$crashed" ] && [ "$(limit)" -ge 60 ]; then
        local probe
        for probe in torch native native-after-cuda; do
            timeout -k 5 "$(limit 30)" "$PY" -X faulthandler scripts/throw_probe.py "$probe" 2>&1 | tail -5
            log "throw probe $probe: exit ${PIPESTATUS[0]}"
        done
    fi

    log "torch.compile tests, each in a fresh process: pytest --collect-only -q ${collect[*]}"
    "$PY" -m pytest --collect-only -q -p no:cacheprovider "${collect[@]}" >"$WORK/tests/collect.txt" 2>&1
    rc=$?
    cat "$WORK/tests/collect.txt"
    printf 'collect\t\t%s\t\n' "$rc" >>"$WORK/tests/runs.tsv"
    while IFS= read -r nodeid; do
        i=$((i + 1))
        if [ "$(limit)" -lt 20 ]; then
            printf 'compile %s\t\tnotime\t0\n' "$nodeid" >>"$WORK/tests/runs.tsv"
            continue
        fi
        log "compile test $i: $nodeid"
        t0=$(date +%s)
        timeout -k 10 "$(limit 180)" "$PY" -m pytest -q -p no:cacheprovider "${extra[@]}" "$nodeid" \
            --junitxml="$WORK/tests/compile-$i.xml" 2>&1
        rc=$?
        printf 'compile %s\t%s\t%s\t%s\n' "$nodeid" "$WORK/tests/compile-$i.xml" "$rc" "$(($(date +%s) - t0))" \
            >>"$WORK/tests/runs.tsv"
    done < <(grep -E '^[^ ]+\.py::' "$WORK/tests/collect.txt")
    return 0  # pass/fail is read from the junit reports
}

stage_sanitize() {
    local rc t0 run tool backend out
    if [ "$dry_run" = 1 ]; then
        echo "sanitize: skipped, no GPU (compute-sanitizer needs one); running its op script on CPU instead"
        for backend in native triton; do
            out="$WORK/sanitize/cpu-smoke-$backend.txt"
            local more=(--dtypes fp32,bf16)
            # the interpreter has no bfloat16 and takes ~1 ms per program: one shape, fp32
            [ "$backend" = triton ] && more=(--dtypes fp32 --shape 2,37,20,21,7,31)
            timeout -k 10 "$(limit 120)" "$PY" scripts/gpu_sanitize_ops.py --device cpu --backends "$backend" \
                "${more[@]}" >"$out" 2>&1
            rc=$?
            cat "$out"
            printf 'cpu-smoke\t%s\t%s\t0\t%s\n' "$backend" "$rc" "$out" >>"$WORK/sanitize/runs.tsv"
        done
        return 0
    fi
    ensure_built || log "WARNING: no native extension; going on without the native backend"
    local cs
    cs="$(find_tool compute-sanitizer COMPUTE_SANITIZER)"
    [ -n "$cs" ] || { echo "compute-sanitizer not found (set COMPUTE_SANITIZER)"; return 1; }
    "$cs" --version 2>&1 | tail -n 1
    for run in "memcheck native" "racecheck native" "synccheck native" "initcheck native" "memcheck triton"; do
        read -r tool backend <<<"$run"
        out="$WORK/sanitize/$tool-$backend.txt"
        if [ "$(limit)" -lt 30 ]; then
            echo "$tool $backend: not run, no time left" >"$out"
            printf '%s\t%s\t%s\t0\t%s\n' "$tool" "$backend" notime "$out" >>"$WORK/sanitize/runs.tsv"
            continue
        fi
        log "compute-sanitizer --tool $tool, $backend"
        t0=$(date +%s)
        # no caching allocator: every tensor is its own allocation, so out-of-bounds accesses and
        # reads of never-written memory are seen at the tensor's edge, not inside a cached block
        PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 10 "$(limit 180)" "$cs" --tool "$tool" --error-exitcode 1 \
            "$PY" scripts/gpu_sanitize_ops.py --backends "$backend" --dtypes fp32,bf16 >"$out" 2>&1
        rc=$?
        cat "$out"
        printf '%s\t%s\t%s\t%s\t%s\n' "$tool" "$backend" "$rc" "$(($(date +%s) - t0))" "$out" >>"$WORK/sanitize/runs.tsv"
    done
    return 0
}

stage_bench_kernels() {
    ensure_built || log "WARNING: no native extension; going on without the native backend"
    local args dtypes rc=0
    if [ "$dry_run" = 1 ]; then
        args=(--device cpu --seq-lens 16 --batches 1 --dims 16,16,2,3 --include-interpreted
              --warmup 1 --repeats 2 --min-time 0 --mm-gflops 0)
        dtypes=(fp32)
    else
        args=(--seq-lens 512 --batches 32 --dims 384,384,6,9)
        dtypes=(bf16 fp32)
    fi
    for dtype in "${dtypes[@]}"; do
        log "bench_kernels $dtype"
        timeout -k 10 "$(limit)" "$PY" -m benchmarks.bench_kernels "${args[@]}" --dtype "$dtype" \
            --modes forward,full --out "$OUTDIR/kernels.jsonl" 2>&1 || rc=1
    done
    return $rc
}

stage_bench_model() {
    ensure_built || log "WARNING: no native extension; going on without the native backend"
    local args stage_s
    stage_s="$(limit)"
    if [ "$dry_run" = 1 ]; then
        # a few providers of the tiny model; inductor takes ~100 s to compile one on 2 cores, so the
        # compiled provider goes through aot_eager here (the same tracing, no code generation)
        args=(--device cpu --size tiny --batch 2 --seq-len 32 --dtype fp32 --warmup 0 --repeats 2
              --providers convbert:eager,convbert:native,hf,hf-patched,convbert-compiled:eager --compile-backend aot_eager
              --max-len 32,64,128 --max-len-batch 2 --max-len-providers convbert:native,hf --profile 5)
    else
        # compiled providers come last and their first step compiles (a minute or more each):
        # stop starting new providers two minutes before the stage's time is up
        # --profile: each provider's longest kernels of one step, to tell why two providers differ
        args=(--size base --batch 32 --seq-len 512 --dtype bf16 --profile 12
              --max-len 512,1024,2048,4096,8192 --max-len-batch 8 --budget-s "$((stage_s > 180 ? stage_s - 120 : 60))")
    fi
    log "bench_model ${args[*]}"
    timeout -k 10 "$stage_s" "$PY" -m benchmarks.bench_model "${args[@]}" --out "$OUTDIR/model.jsonl" 2>&1
}

NCU_METRICS="gpu__time_duration.sum,dram__bytes.sum.per_second,dram__throughput.avg.pct_of_peak_sustained_elapsed,\
sm__warps_active.avg.pct_of_peak_sustained_active,sm__maximum_warps_per_active_cycle_pct,launch__registers_per_thread,\
launch__occupancy_limit_registers,launch__occupancy_limit_shared_mem,\
l1tex__t_sectors_pipe_lsu_mem_local_op_ld.sum,l1tex__t_sectors_pipe_lsu_mem_local_op_st.sum"
NCU_CORE_METRICS="gpu__time_duration.sum,dram__bytes.sum.per_second,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread"
NCU_KERNELS="_fwd_kernel|_bwd_window_kernel|_bwd_proj_kernel|window_forward_kernel|window_backward_kernel|weight_grad_partial_kernel"

stage_ncu() {
    local rc t0 csv dtype backends=triton,native
    if [ "$dry_run" = 1 ]; then
        echo "ncu: skipped, no GPU (ncu needs one); running its workload on CPU at a tiny size instead"
        timeout -k 10 "$(limit 120)" "$PY" scripts/gpu_sanitize_ops.py --base --device cpu --backends native,triton \
            --dtypes fp32 --shape 2,16,16,16,2,3 2>&1
        rc=$?
        printf 'cpu-smoke\t%s\t0\t\n' "$rc" >>"$WORK/ncu/runs.tsv"
        return 0
    fi
    ensure_built || { log "WARNING: no native extension: profiling Triton only"; backends=triton; }
    local ncu
    ncu="$(find_tool ncu NCU)"
    [ -n "$ncu" ] || { echo "ncu not found (set NCU)"; return 1; }
    "$ncu" --version 2>&1 | tail -n 1
    for dtype in bf16 fp32; do
        csv="$WORK/ncu/$dtype.csv"
        log "ncu, $dtype: $NCU_KERNELS"
        t0=$(date +%s)
        # LC_ALL=C: no locale decimal commas in the numbers
        LC_ALL=C timeout -k 10 "$(limit 200)" "$ncu" --clock-control none --csv --print-units base --print-kernel-base function \
            --kernel-name "regex:$NCU_KERNELS" --metrics "$NCU_METRICS" --log-file "$csv" \
            "$PY" scripts/gpu_sanitize_ops.py --base --backends "$backends" --dtypes "$dtype" 2>&1
        rc=$?
        if [ $rc -ne 0 ] && ! grep -q '^"ID"' "$csv" 2>/dev/null && [ "$(limit)" -gt 60 ]; then
            log "ncu failed (exit $rc); once more with the core metrics and default printing"
            cat "$csv" 2>/dev/null
            LC_ALL=C timeout -k 10 "$(limit 200)" "$ncu" --clock-control none --csv --kernel-name "regex:$NCU_KERNELS" \
                --metrics "$NCU_CORE_METRICS" --log-file "$csv" \
                "$PY" scripts/gpu_sanitize_ops.py --base --backends "$backends" --dtypes "$dtype" 2>&1
            rc=$?
        fi
        cat "$csv" 2>/dev/null
        printf '%s\t%s\t%s\t%s\n' "$dtype" "$rc" "$(($(date +%s) - t0))" "$csv" >>"$WORK/ncu/runs.tsv"
    done
    return 0
}

# ---- run ------------------------------------------------------------------------------------------
declare -A LOG_OF=([setup]=setup.log [tests]=tests.log [sanitize]=sanitize.log [bench-kernels]=bench.log
                   [bench-model]=bench.log [ncu]=ncu.log)
declare -A FN_OF=([setup]=stage_setup [tests]=stage_tests [sanitize]=stage_sanitize
                  [bench-kernels]=stage_bench_kernels [bench-model]=stage_bench_model [ncu]=stage_ncu)
declare -A MIN_S=([setup]=60 [tests]=90 [sanitize]=60 [bench-kernels]=60 [bench-model]=90 [ncu]=45)

# this command's files start empty (rows are appended, logs of both benchmarks share bench.log)
for s in "${STAGES[@]}"; do
    rm -f "$OUTDIR/${LOG_OF[$s]}"
    [ "$s" = bench-kernels ] && rm -f "$OUTDIR/kernels.jsonl"
    [ "$s" = bench-model ] && rm -f "$OUTDIR/model.jsonl"
done

log "stages ${STAGES_CSV}; $([ "$dry_run" = 1 ] && echo "DRY RUN on CPU" || echo GPU); output $OUTDIR; python $(command -v "$PY")"
shell_failed=0
for s in "${STAGES[@]}"; do
    if [ "$(left)" -lt "${MIN_S[$s]}" ]; then
        note="not run: $(left) s left in this command, the stage needs at least ${MIN_S[$s]} s; run it in a command of its own"
        printf '%s\tnotime\t0\t%s\n' "$s" "$note" >>"$WORK/stages.tsv"
        log "$s: $note"
        continue
    fi
    STAGE_END=$(($(date +%s) + STAGE_CAP))
    log "$s: started ($(left) s left in this command) -> ${LOG_OF[$s]}"
    t0=$(date +%s)
    {
        echo "===== $s ($(date -u +%Y-%m-%dT%H:%M:%SZ)) ====="
        "${FN_OF[$s]}"
    } >>"$OUTDIR/${LOG_OF[$s]}" 2>&1
    rc=$?
    secs=$(($(date +%s) - t0))
    note=""
    [ $rc -ne 0 ] && { note="the stage script failed (exit $rc): see ${LOG_OF[$s]}"; shell_failed=1; }
    printf '%s\t%s\t%s\t%s\n' "$s" "$rc" "$secs" "$note" >>"$WORK/stages.tsv"
    log "$s: done in ${secs} s (exit $rc)"
done

dry_flag=()
[ "$dry_run" = 1 ] && dry_flag=(--dry-run)
"$PY" -m benchmarks.gpu_summary assemble --work "$WORK" --outdir "$OUTDIR" --stages "$STAGES_CSV" \
    --started "$STARTED" "${dry_flag[@]}" >/dev/null 2>"$WORK/assemble.err"
summary_rc=$?
if [ ! -s "$OUTDIR/summary.md" ]; then  # the summary writer itself broke: say so, with the raw status
    {
        echo "# GPU check: ${STAGES_CSV} (summary writer failed, exit $summary_rc)"
        echo
        echo '```'
        cat "$WORK/assemble.err" "$WORK/stages.tsv"
        echo '```'
    } >"$OUTDIR/summary.md"
    summary_rc=1
fi
echo
cat "$OUTDIR/summary.md"
[ $summary_rc -eq 0 ] && [ $shell_failed -eq 0 ]
