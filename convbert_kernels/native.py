"""The native backend: the C++/CUDA extension in ``csrc/``, ops ``convbert_kernels::native_*``.

Loading, on first use (the registry imports this module lazily, never ``import convbert_kernels``):

1. ``convbert_kernels._C``, built by ``pip install --no-build-isolation -e .`` (setup.py);
2. failing that (a plain source checkout), a just-in-time build of ``csrc/`` with ninja through
   ``torch.utils.cpp_extension.load``, cached in ``CONVBERT_KERNELS_BUILD_DIR`` (default: PyTorch's
   extensions cache); the CUDA sources are included when torch has CUDA and a toolkit is found;
3. failing that, importing this module raises an ImportError that carries the build log's tail,
   so ``backend_load_error("native")`` says why, and ``"native"`` is simply not available.

``CONVBERT_KERNELS_NATIVE=jit`` skips step 1, ``=prebuilt`` skips step 2; ``CONVBERT_KERNELS_CSRC``
points the JIT build at another source folder and ``CONVBERT_KERNELS_NO_CUDA=1`` leaves CUDA out.
``CONVBERT_KERNELS_SANITIZE=address`` makes the JIT build a CPU-only AddressSanitizer build (the
process must preload libasan: ``scripts/asan_native.sh``).

The ops have the Triton backend's signatures; :mod:`._compiled_ops` states their contract and
registers their fakes and autograd for both backends.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch

from . import _compiled_ops as _contract

_NAMESPACE = _contract.NAMESPACE
_OPS = ("native_span_fwd", "native_span_bwd", "native_dynamic_fwd", "native_dynamic_bwd")
_CSRC = Path(os.environ.get("CONVBERT_KERNELS_CSRC", Path(__file__).resolve().parent.parent / "csrc"))


def _ops_registered() -> bool:
    try:
        return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"{_NAMESPACE}::{op}", "CPU") for op in _OPS)
    except RuntimeError:  # "operator ... does not exist"
        return False


def _cuda_toolkit() -> str | None:
    if torch.version.cuda is None:
        return None
    try:
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception:  # pragma: no cover - cpp_extension always importable with torch
        return None
    return CUDA_HOME


def jit_build(csrc: Path | str = _CSRC, build_dir: str | None = None, with_cuda: bool | None = None,
              verbose: bool = False) -> str:
    """Compile ``csrc`` with ninja and load it (registering the ops); returns the library path.

    Raises ImportError with the compiler's message when the build fails.
    """
    from torch.utils import cpp_extension

    csrc = Path(csrc)
    sources = sorted(str(p) for p in csrc.glob("*.cpp"))
    if not sources:
        raise ImportError(f"native backend: no compiled convbert_kernels._C and no C++ sources in {csrc}")
    sanitize = os.environ.get("CONVBERT_KERNELS_SANITIZE", "")
    if sanitize not in ("", "address"):
        raise ImportError(f"CONVBERT_KERNELS_SANITIZE must be 'address' or unset, got {sanitize!r}")
    if with_cuda is None:
        with_cuda = (_cuda_toolkit() is not None and os.environ.get("CONVBERT_KERNELS_NO_CUDA", "") != "1"
                     and not sanitize)
    cu_sources = sorted(str(p) for p in csrc.glob("*.cu")) if with_cuda else []
    # as setup.py: sm_80 and sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise (flags, not the environment)
    arch_flags = [] if os.environ.get("TORCH_CUDA_ARCH_LIST") else [
        "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
    build_dir = build_dir or os.environ.get("CONVBERT_KERNELS_BUILD_DIR")
    if build_dir:
        os.makedirs(build_dir, exist_ok=True)
    defines = ["-DCONVBERT_WITH_CUDA"] if cu_sources else []
    # AddressSanitizer: -O1 and frame pointers for usable reports; its own name so the cache keeps both
    optimise = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address"] if sanitize else ["-O3"]
    optimise.append("-fno-trapping-math")  # as setup.py: the CPU kernels' selects vectorise
    try:
        return cpp_extension.load(
            name="convbert_kernels_C" + ("_cuda" if cu_sources else "_cpu") + ("_asan" if sanitize else ""),
            sources=sources + cu_sources,
            extra_cflags=[*optimise, *_openmp_flags(), *defines],
            # as setup.py: a register spill in the project's kernels fails the build
            extra_cuda_cflags=["-O3", "-Xptxas=--warn-on-spills,--warning-as-error", *arch_flags, *defines],
            extra_ldflags=[*_link_flags(), *(["-fsanitize=address"] if sanitize else [])],
            build_directory=build_dir,
            with_cuda=bool(cu_sources),
            is_python_module=False,
            verbose=verbose,
        )
    except Exception as exc:
        message = str(exc)
        if len(message) > 4000:
            message = "...\n" + message[-4000:]
        raise ImportError(f"native backend: just-in-time build of {csrc} failed: {type(exc).__name__}: {message}") from exc


def _openmp_flags() -> list[str]:
    # at::parallel_for is an OpenMP loop in PyTorch's headers: without -fopenmp it runs serially.
    import sys

    return ["-fopenmp"] if sys.platform.startswith("linux") else []


def _link_flags() -> list[str]:
    # as setup.py: OpenMP, and the shared libstdc++ named ahead of the driver's own (_link.py)
    from ._link import shared_libstdcxx_flags

    return [*_openmp_flags(), *shared_libstdcxx_flags()]


def _load_library() -> str:
    """Make the ops available; return how ("prebuilt" or the JIT library path)."""
    if _ops_registered():
        return "already loaded"
    mode = os.environ.get("CONVBERT_KERNELS_NATIVE", "auto")
    prebuilt_error = None
    if mode != "jit":
        try:
            importlib.import_module("convbert_kernels._C")
            if not _ops_registered():
                raise RuntimeError("convbert_kernels._C was built from older sources (its ops differ): rebuild it "
                                   "with `pip install --no-build-isolation -e .`")
            return "prebuilt"
        except ImportError as exc:
            prebuilt_error = exc
        if mode == "prebuilt":
            raise ImportError(f"native backend: convbert_kernels._C is not built ({prebuilt_error})")
    return jit_build()


HOW_LOADED = _load_library()  # "prebuilt", "already loaded" or the path of the JIT-built library
HAS_CUDA_KERNELS = torch._C._dispatch_has_kernel_for_dispatch_key(f"{_NAMESPACE}::native_span_fwd", "CUDA")


def library_paths() -> list[str]:
    """The native extension's shared objects mapped into this process, prebuilt (``_C.*.so``) or
    just-in-time built (``convbert_kernels_C_*.so``); Linux only (reads /proc/self/maps), for
    diagnostics such as checking what the library links."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if line.rstrip().endswith(".so") and "/" in line}
    prebuilt = {p for p in paths if os.path.basename(p).startswith("_C.")
                and os.path.basename(os.path.dirname(p)) == "convbert_kernels"}
    jit = {p for p in paths if os.path.basename(p).startswith("convbert_kernels_C")}
    return sorted(prebuilt | jit)


def _is_available(device: torch.device) -> bool:
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return HAS_CUDA_KERNELS and torch.cuda.is_available()
    return False


BACKEND = _contract.make_backend("native", _is_available)
