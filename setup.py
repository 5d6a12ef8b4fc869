"""Build script: the pure-Python packages, plus the C++/CUDA extension ``convbert_kernels._C``.

The extension (csrc/) always gets its CPU part; the CUDA part is added when PyTorch is a CUDA
build (``torch.version.cuda``) and a CUDA toolkit is found (``CUDA_HOME``/nvcc). Environment:

- ``TORCH_CUDA_ARCH_LIST``: target GPU architectures, default ``"8.0;9.0"`` (A100, H100).
- ``CONVBERT_KERNELS_NO_CUDA=1``: build the CPU part only.
- ``CONVBERT_KERNELS_NO_EXTENSION=1``: build no extension at all (the package then compiles it
  just in time on first use of the "native" backend, see convbert_kernels/native.py).
- ``MAX_JOBS``: parallel compile jobs (ninja).

Install with ``pip install --no-build-isolation -e .`` so the extension is built against the
torch already installed in the environment.
"""

import os
import sys
import warnings
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
# A register spill in any of the project's kernels fails the build (ptxas warns, then errors).
NVCC_PTXAS_FLAGS = ["-Xptxas=--warn-on-spills,--warning-as-error"]
# Without TORCH_CUDA_ARCH_LIST: A100 and H100 (sm_80, sm_90), not every architecture nvcc knows.
# Given as flags, since PyTorch adds its own only when none are given; the environment is left alone.
DEFAULT_ARCH_FLAGS = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]


def _link_module():
    """convbert_kernels/_link.py, loaded by path (the package is not importable while it is built)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("convbert_kernels_link", ROOT / "convbert_kernels" / "_link.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extensions():
    if os.environ.get("CONVBERT_KERNELS_NO_EXTENSION", "") == "1":
        return [], {}
    try:
        with warnings.catch_warnings():  # built without build isolation before numpy is installed: harmless
            warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
            import torch
            from torch.utils import cpp_extension
    except ImportError:  # metadata-only invocations without torch: nothing to compile
        print("convbert_kernels: torch not importable, building without the native extension", file=sys.stderr)
        return [], {}

    sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.cpp"))
    cuda_sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.cu"))
    # Headers and the textually included kernel file: rebuild triggers and sdist contents.
    depends = sorted(str(p.relative_to(ROOT)) for p in [*CSRC.glob("*.h"), *CSRC.glob("*.inc")])
    with_cuda = (
        bool(cuda_sources)
        and torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and os.environ.get("CONVBERT_KERNELS_NO_CUDA", "") != "1"
    )
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    link_flags = [*openmp, *_link_module().shared_libstdcxx_flags()]
    # -fno-trapping-math (as PyTorch's own build): lets the CPU kernels' branch-free selects vectorise
    cxx_flags = ["-O3", "-fno-trapping-math", *openmp]
    define_macros = []
    if with_cuda:
        arch_flags = [] if os.environ.get("TORCH_CUDA_ARCH_LIST") else DEFAULT_ARCH_FLAGS
        define_macros.append(("CONVBERT_WITH_CUDA", None))
        ext = cpp_extension.CUDAExtension(
            name="convbert_kernels._C",
            sources=sources + cuda_sources,
            depends=depends,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo", *NVCC_PTXAS_FLAGS, *arch_flags]},
            extra_link_args=link_flags,
        )
    else:
        ext = cpp_extension.CppExtension(
            name="convbert_kernels._C",
            sources=sources,
            depends=depends,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    print(f"convbert_kernels: building the native extension ({'CPU + CUDA' if with_cuda else 'CPU only'})",
          file=sys.stderr)
    return [ext], {"build_ext": cpp_extension.BuildExtension}


def _license() -> dict:
    """Apache-2.0: an SPDX ``license_expression`` where setuptools takes one (>= 77 deprecates the
    ``license`` text), else ``license``. Builds without isolation (CI's second stack, the GPU machine)
    use whatever setuptools is installed there."""
    import setuptools

    new = int(setuptools.__version__.split(".")[0]) >= 77
    return {"license_expression" if new else "license": "Apache-2.0"}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass, **_license())
