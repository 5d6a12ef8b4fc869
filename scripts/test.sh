#!/usr/bin/env bash
# Set up the environment (first run only) and run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k triton -x
source "$(dirname "$0")/env.sh"
cd "$ROOT"
# Without a GPU, Triton kernels run on CPU tensors through the interpreter.
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    export TRITON_INTERPRET=1
fi
# pytest exits 5 when it collected no test; that must fail, and does, since it is non-zero.
exec python -m pytest "$@"
