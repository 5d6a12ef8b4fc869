"""The native backend: the C++/CUDA extension in ``csrc/`` (ops ``torch.ops.convbert_kernels.*``).

Loading, on first use (the registry imports this module lazily, never ``import convbert_kernels``):

1. ``convbert_kernels._C``, built by ``pip install --no-build-isolation -e .`` (setup.py);
2. failing that (a plain source checkout), a just-in-time build of ``csrc/`` with ninja through
   ``torch.utils.cpp_extension.load``, cached in ``CONVBERT_KERNELS_BUILD_DIR`` (default: PyTorch's
   extensions cache); the CUDA sources are included when torch has CUDA and a toolkit is found;
3. failing that, importing this module raises an ImportError that carries the build log's tail,
   so ``backend_load_error("native")`` says why, and ``"native"`` is simply not available.

``CONVBERT_KERNELS_NATIVE=jit`` skips step 1, ``=prebuilt`` skips step 2; ``CONVBERT_KERNELS_CSRC``
points the JIT build at another source folder and ``CONVBERT_KERNELS_NO_CUDA=1`` leaves CUDA out.

The compiled ops return the softmaxed kernel (``probs``) next to the output; autograd (saving
``probs``) and fake-tensor implementations are registered here with :mod:`torch.library`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch

from .backends import Backend

_NAMESPACE = "convbert_kernels"
_OPS = ("dynamic_conv_fwd", "dynamic_conv_bwd", "span_dynamic_conv_fwd", "span_dynamic_conv_bwd")
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
    if with_cuda is None:
        with_cuda = _cuda_toolkit() is not None and os.environ.get("CONVBERT_KERNELS_NO_CUDA", "") != "1"
    cu_sources = sorted(str(p) for p in csrc.glob("*.cu")) if with_cuda else []
    if cu_sources:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    build_dir = build_dir or os.environ.get("CONVBERT_KERNELS_BUILD_DIR")
    if build_dir:
        os.makedirs(build_dir, exist_ok=True)
    defines = ["-DCONVBERT_WITH_CUDA"] if cu_sources else []
    try:
        return cpp_extension.load(
            name="convbert_kernels_C" + ("_cuda" if cu_sources else "_cpu"),
            sources=sources + cu_sources,
            extra_cflags=["-O3", *_openmp_flags(), *defines],
            # as setup.py: a register spill in the project's kernels fails the build
            extra_cuda_cflags=["-O3", "-Xptxas=--warn-on-spills,--warning-as-error", *defines],
            extra_ldflags=_openmp_flags(),
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


def _load_library() -> str:
    """Make the ops available; return how ("prebuilt" or the JIT library path)."""
    if _ops_registered():
        return "already loaded"
    mode = os.environ.get("CONVBERT_KERNELS_NATIVE", "auto")
    prebuilt_error = None
    if mode != "jit":
        try:
            importlib.import_module("convbert_kernels._C")
            return "prebuilt"
        except ImportError as exc:
            prebuilt_error = exc
        if mode == "prebuilt":
            raise ImportError(f"native backend: convbert_kernels._C is not built ({prebuilt_error})")
    return jit_build()


_HOW_LOADED = _load_library()
_ops = getattr(torch.ops, _NAMESPACE)
HAS_CUDA_KERNELS = torch._C._dispatch_has_kernel_for_dispatch_key(f"{_NAMESPACE}::span_dynamic_conv_fwd", "CUDA")


# ---- fake (meta) implementations --------------------------------------------------------------


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake(f"{_NAMESPACE}::dynamic_conv_fwd")
def _dynamic_conv_fwd_fake(values, logits, num_heads, padding_mask):
    return torch.empty_like(values, memory_format=torch.contiguous_format), logits.new_empty(
        logits.shape, dtype=_acc_dtype(values.dtype)
    )


@torch.library.register_fake(f"{_NAMESPACE}::dynamic_conv_bwd")
def _dynamic_conv_bwd_fake(grad_out, grad_probs, values, probs, num_heads, padding_mask):
    return torch.empty_like(values, memory_format=torch.contiguous_format), probs.new_empty(
        probs.shape, dtype=values.dtype
    )


@torch.library.register_fake(f"{_NAMESPACE}::span_dynamic_conv_fwd")
def _span_fwd_fake(query, key_conv, values, weight, bias, num_heads, padding_mask):
    b, l, _ = values.shape
    return torch.empty_like(values, memory_format=torch.contiguous_format), values.new_empty(
        (b, l, weight.shape[0]), dtype=_acc_dtype(values.dtype)
    )


@torch.library.register_fake(f"{_NAMESPACE}::span_dynamic_conv_bwd")
def _span_bwd_fake(grad_out, grad_probs, query, key_conv, values, weight, probs, num_heads, padding_mask):
    return (
        torch.empty_like(query, memory_format=torch.contiguous_format),
        torch.empty_like(key_conv, memory_format=torch.contiguous_format),
        torch.empty_like(values, memory_format=torch.contiguous_format),
        torch.empty_like(weight, memory_format=torch.contiguous_format),
        weight.new_empty((weight.shape[0],)),
    )


# ---- autograd ---------------------------------------------------------------------------------


def _dynamic_setup(ctx, inputs, output):
    values, _logits, num_heads, padding_mask = inputs
    ctx.save_for_backward(values, output[1])
    ctx.num_heads = num_heads
    ctx.padding_mask = padding_mask
    ctx.set_materialize_grads(False)


def _dynamic_backward(ctx, grad_out, grad_probs):
    values, probs = ctx.saved_tensors
    if grad_out is None and grad_probs is None:
        return None, None, None, None
    if grad_out is None:
        grad_out = torch.zeros_like(values)
    d_values, d_logits = _ops.dynamic_conv_bwd(grad_out, grad_probs, values, probs, ctx.num_heads, ctx.padding_mask)
    return d_values, d_logits, None, None


def _span_setup(ctx, inputs, output):
    query, key_conv, values, weight, bias, num_heads, padding_mask = inputs
    ctx.save_for_backward(query, key_conv, values, weight, output[1])
    ctx.has_bias = bias is not None
    ctx.num_heads = num_heads
    ctx.padding_mask = padding_mask
    ctx.set_materialize_grads(False)


def _span_backward(ctx, grad_out, grad_probs):
    query, key_conv, values, weight, probs = ctx.saved_tensors
    if grad_out is None and grad_probs is None:
        return (None,) * 7
    if grad_out is None:
        grad_out = torch.zeros_like(values)
    d_query, d_key_conv, d_values, d_weight, d_bias = _ops.span_dynamic_conv_bwd(
        grad_out, grad_probs, query, key_conv, values, weight, probs, ctx.num_heads, ctx.padding_mask
    )
    return d_query, d_key_conv, d_values, d_weight, (d_bias if ctx.has_bias else None), None, None


torch.library.register_autograd(f"{_NAMESPACE}::dynamic_conv_fwd", _dynamic_backward, setup_context=_dynamic_setup)
torch.library.register_autograd(f"{_NAMESPACE}::span_dynamic_conv_fwd", _span_backward, setup_context=_span_setup)


# ---- the backend ------------------------------------------------------------------------------


def dynamic_conv(values, logits, num_heads, padding_mask=None):
    return _ops.dynamic_conv_fwd(values, logits, num_heads, padding_mask)[0]


def span_dynamic_conv(query, key_conv, values, weight, bias, num_heads, padding_mask=None):
    return _ops.span_dynamic_conv_fwd(query, key_conv, values, weight, bias, num_heads, padding_mask)[0]


def _is_available(device: torch.device) -> bool:
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return HAS_CUDA_KERNELS and torch.cuda.is_available()
    return False


BACKEND = Backend(
    name="native",
    dynamic_conv=dynamic_conv,
    span_dynamic_conv=span_dynamic_conv,
    is_available=_is_available,
)
