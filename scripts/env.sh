# Sourced by the other scripts: make (once) and activate the project's virtual environment.
# torch 2.14.1 is a CUDA build that installs from this machine's local wheel cache; the
# project is then installed against it without build isolation so the C++/CUDA extension is
# compiled for that very torch.
# CONVBERT_STACK=gpu-machine builds .venv-gpu-stack instead, with the lent GPU machine's stack
# (torch 2.11.0, triton 3.6.0, transformers 5.17.0, numpy < 2.4: Triton 3.6's interpreter fails
# with numpy >= 2.4), so an API that exists only in the newer stack fails here, not on the card.
# The ci stack also installs the tf extra (tensorflow-cpu, for tests/test_modeling_tf.py); the
# gpu-machine stack does not (that machine has no TensorFlow, and the TF tests skip there).
# CONVBERT_STACK is exported: tests/test_modeling_tf.py fails without TensorFlow on the ci stack only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
export CONVBERT_STACK="${CONVBERT_STACK:-ci}"
case "$CONVBERT_STACK" in
    ci) VENV="${CONVBERT_VENV:-$ROOT/.venv}"; PINS=("torch==2.14.1" "tensorflow-cpu==2.21.0"); EXTRAS="test,tf" ;;
    gpu-machine) VENV="${CONVBERT_VENV:-$ROOT/.venv-gpu-stack}"
                 PINS=("torch==2.11.0" "triton==3.6.0" "transformers==5.17.0" "numpy<2.4"); EXTRAS="test"
                 # the in-tree convbert_kernels/_C belongs to .venv's torch: this stack builds its
                 # own copy just in time, into the venv, on first use of the native backend
                 export CONVBERT_KERNELS_NO_EXTENSION=1 CONVBERT_KERNELS_NATIVE=jit
                 export CONVBERT_KERNELS_BUILD_DIR="$VENV/native-build" ;;
    *) echo "CONVBERT_STACK must be 'ci' or 'gpu-machine', not '$CONVBERT_STACK'" >&2; exit 2 ;;
esac

if [ -d /usr/local/cuda ] && [ -z "${CUDA_HOME:-}" ]; then
    export CUDA_HOME=/usr/local/cuda
fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export MAX_JOBS="${MAX_JOBS:-2}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[env] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

stamp="$VENV/.convbert-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || [ "$ROOT/setup.py" -nt "$stamp" ] \
    || [ -n "$(find "$ROOT/csrc" -newer "$stamp" -type f 2>/dev/null | head -n 1)" ]; then
    echo "[env] installing torch and the project (with the $EXTRAS extras)"
    python -m pip install -q --upgrade pip
    python -m pip install -q "${PINS[@]}" setuptools wheel ninja
    python -m pip install -q --no-build-isolation -e "$ROOT[$EXTRAS]" "${PINS[@]}"
    touch "$stamp"
fi
