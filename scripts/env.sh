# Sourced by the other scripts: make (once) and activate the project's virtual environment.
# torch 2.14.1 is a CUDA build that installs from this machine's local wheel cache; the
# project is then installed against it without build isolation so the C++/CUDA extension is
# compiled for that very torch.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CONVBERT_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

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
    echo "[env] installing torch and the project (with test extras)"
    python -m pip install -q --upgrade pip
    python -m pip install -q "torch==2.14.1" setuptools wheel ninja
    python -m pip install -q --no-build-isolation -e "$ROOT[test]"
    touch "$stamp"
fi
