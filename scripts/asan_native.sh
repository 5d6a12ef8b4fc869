#!/usr/bin/env bash
# The native backend's C++ CPU kernels under AddressSanitizer: builds csrc/ for the CPU with
# -fsanitize=address (a JIT build in its own cache folder) and runs every test of the native
# backend on it, bad-input calls included; any out-of-bounds access or use-after-free stops the
# run with ASan's report. CI runs it; about 5 minutes on 2 cores.
#
#   bash scripts/asan_native.sh [extra pytest arguments]
source "$(dirname "$0")/env.sh"
cd "$ROOT"
build_dir="${CONVBERT_ASAN_BUILD_DIR:-$ROOT/build/asan}"
export CONVBERT_KERNELS_NATIVE=jit CONVBERT_KERNELS_SANITIZE=address CONVBERT_KERNELS_NO_CUDA=1
export CONVBERT_KERNELS_BUILD_DIR="$build_dir" TRITON_INTERPRET=1
libasan="$(${CXX:-c++} -print-file-name=libasan.so)"
[ -f "$libasan" ] || { echo "asan_native.sh: no libasan.so for ${CXX:-c++} (got '$libasan')" >&2; exit 2; }
# libasan first; libstdc++ right after it, so that ASan's __cxa_throw interceptor finds the real one
# when a library that throws at import time (triton's) loads. The build's compilers inherit the
# preload too (harmless: leak detection is off).
export LD_PRELOAD="$libasan $(${CXX:-c++} -print-file-name=libstdc++.so.6)"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
python -c 'import convbert_kernels.native as n; print("asan_native.sh: native backend built:", n.HOW_LOADED)'
exec python -m pytest -q -p no:cacheprovider tests/test_native.py tests/test_backends.py tests/test_modules.py \
    tests/test_unpadded.py -k "native and not cuda_kernels_registered" "$@"
