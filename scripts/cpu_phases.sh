#!/usr/bin/env bash
# Where the native CPU span op spends its time, phase by phase (benchmarks/cpu_phases.cpp): compiles
# the CPU kernels with their phase hooks into a standalone program (needs g++ and torch's headers,
# from the project's venv) and runs it on one thread; arguments go to the program:
#   scripts/cpu_phases.sh [--batch B] [--seq-len L] [--dims A,C,n,K] [--rounds N]
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
includes=$(python -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I' + p for p in include_paths()))")
mkdir -p build
# shellcheck disable=SC2086
g++ -O3 -std=c++17 -fno-trapping-math $includes benchmarks/cpu_phases.cpp -o build/cpu_phases
exec build/cpu_phases "$@"
