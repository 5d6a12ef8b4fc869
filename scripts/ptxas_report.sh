#!/usr/bin/env bash
# ptxas's resource report for the native CUDA kernels: compiles csrc/span_dynamic_conv_cuda.cu alone
# for sm_80 and sm_90 with the project's flags (setup.py's: a spill is an error) plus -Xptxas=-v,
# and prints one line per kernel and architecture: registers, spill bytes, stack, shared memory.
# Needs a CUDA toolkit (nvcc), not a GPU. Usage: scripts/ptxas_report.sh [OUT.md]
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
nvcc="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
if [ ! -x "$nvcc" ]; then
    echo "[ptxas] no nvcc at $nvcc: nothing to report (the CUDA part is not built here either)"
    exit 0
fi
includes=$(python - <<'EOF'
import sysconfig
from torch.utils.cpp_extension import include_paths
print(" ".join(f"-I{p}" for p in include_paths() + [sysconfig.get_paths()["include"]]))
EOF
)
log="$(mktemp)"
obj="$(mktemp --suffix=.o)"
# shellcheck disable=SC2086
"$nvcc" -DCONVBERT_WITH_CUDA $includes -I"${CUDA_HOME:-/usr/local/cuda}/include" -c csrc/span_dynamic_conv_cuda.cu \
    -o "$obj" -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
    -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr --compiler-options '-fPIC' -O3 -std=c++20 \
    -Xptxas=-v,--warn-on-spills,--warning-as-error -gencode=arch=compute_80,code=sm_80 \
    -gencode=arch=compute_90,code=sm_90 > "$log" 2>&1 || { cat "$log"; echo "[ptxas] compile failed"; exit 1; }
python - "$log" "${1:-}" <<'EOF'
import re, subprocess, sys
text = open(sys.argv[1]).read()
rows, kernel, arch = [], None, None
for line in text.splitlines():
    m = re.search(r"Compiling entry function '(\w+)' for '(sm_\d+)'", line)
    if m:
        kernel, arch = m.groups()
        continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m and kernel:
        stack, spill_st, spill_ld = m.groups()
        continue
    m = re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", line)
    if m and kernel:
        name = subprocess.run(["c++filt", kernel], capture_output=True, text=True).stdout.strip() or kernel
        name = re.sub(r"convbert_kernels::\(anonymous namespace\)::", "", name)
        name = re.sub(r"\((?:[^()]|\([^()]*\))*\)$", "", name).removeprefix("void ")  # no parameter list
        rows.append((arch, name, m.group(1), spill_st, spill_ld, stack, m.group(2) or "0"))
        kernel = None
lines = ["| arch | kernel | registers | spill stores | spill loads | stack | static smem |", "|---|---|---|---|---|---|---|"]
lines += [f"| {a} | `{k}` | {r} | {s} | {l} | {st} | {sm} |" for a, k, r, s, l, st, sm in sorted(rows)]
report = "\n".join(lines)
print(report)
spills = sum(int(r[3]) + int(r[4]) for r in rows)
print(f"\n[ptxas] {len(rows)} kernel compilations, {spills} bytes of spills")
if sys.argv[2]:
    open(sys.argv[2], "w").write(
        "# ptxas report of the native CUDA kernels (scripts/ptxas_report.sh)\n\n" + report + "\n")
if not rows or spills:
    sys.exit(1)
EOF
