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
    # as setup.py: sm_80 and sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise (flags, not the environment)
    arch_flags = [] if os.environ.get("TORCH_CUDA_ARCH_LIST") else [
        "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
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
            extra_cuda_cflags=["-O3", "-Xptxas=--warn-on-spills,--warning-as-error", *arch_flags, *defines],
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
# They check what the C++ ops check (csrc/ops.cpp), with torch._check, so that a traced or
# fake-tensor call fails on bad input as the real one does rather than inventing a shape.


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_like(t, values, name):
    torch._check(t.device == values.device, lambda: f"{name} is on {t.device} but values is on {values.device}")
    torch._check(t.dtype == values.dtype, lambda: f"{name} has dtype {t.dtype} but values has {values.dtype}")


def _check_heads(values, num_heads, rows):
    torch._check(values.is_floating_point(), lambda: f"values must be a floating tensor, got {values.dtype}")
    torch._check(values.dim() == 3, lambda: f"values must be [B, L, C], got {tuple(values.shape)}")
    torch._check(num_heads >= 1, lambda: f"num_heads must be positive, got {num_heads}")
    torch._check(values.shape[2] % num_heads == 0,
                 lambda: f"C={values.shape[2]} is not divisible by num_heads={num_heads}")
    torch._check(rows % num_heads == 0 and (rows // num_heads) % 2 == 1,
                 lambda: f"the kernel dimension {rows} is not num_heads * K with K odd")


def _check_mask(padding_mask, values):
    if padding_mask is not None:
        torch._check(padding_mask.dim() == 2 and tuple(padding_mask.shape) == tuple(values.shape[:2]),
                     lambda: f"padding_mask must be [B, L] = {list(values.shape[:2])}, got {tuple(padding_mask.shape)}")


def _check_span(query, key_conv, values, weight, bias, num_heads, padding_mask):
    torch._check(query.dim() == 3 and query.shape == key_conv.shape, lambda: "query and key_conv must be [B, L, A]")
    torch._check(query.shape[:2] == values.shape[:2], lambda: "query and values must share [B, L]")
    torch._check(weight.dim() == 2 and weight.shape[1] == query.shape[2], lambda: "weight must be [n*K, A]")
    for t, name in ((query, "query"), (key_conv, "key_conv"), (weight, "weight")):
        _check_like(t, values, name)
    _check_heads(values, num_heads, weight.shape[0])
    if bias is not None:
        _check_like(bias, values, "bias")
        torch._check(bias.dim() == 1 and bias.shape[0] == weight.shape[0], lambda: "bias must be [n*K]")
    _check_mask(padding_mask, values)


def _check_probs(probs, values, rows):
    torch._check(probs.dim() == 3 and tuple(probs.shape) == (*values.shape[:2], rows), lambda: "probs must be [B, L, n*K]")
    torch._check(probs.dtype == _acc_dtype(values.dtype), lambda: f"probs must be {_acc_dtype(values.dtype)}")


def _contiguous_like(t):
    return torch.empty_like(t, memory_format=torch.contiguous_format)


@torch.library.register_fake(f"{_NAMESPACE}::dynamic_conv_fwd")
def _dynamic_conv_fwd_fake(values, logits, num_heads, padding_mask):
    torch._check(logits.dim() == 3 and logits.shape[:2] == values.shape[:2],
                 lambda: "logits must be [B, L, n*K] with the values' B and L")
    _check_like(logits, values, "logits")
    _check_heads(values, num_heads, logits.shape[2])
    _check_mask(padding_mask, values)
    return _contiguous_like(values), logits.new_empty(logits.shape, dtype=_acc_dtype(values.dtype))


@torch.library.register_fake(f"{_NAMESPACE}::dynamic_conv_bwd")
def _dynamic_conv_bwd_fake(grad_out, grad_probs, values, probs, num_heads, padding_mask):
    torch._check(probs.dim() == 3, lambda: "probs must be [B, L, n*K]")
    _check_heads(values, num_heads, probs.shape[2])
    _check_probs(probs, values, probs.shape[2])
    torch._check(grad_out.shape == values.shape, lambda: "grad_out must have the shape of values")
    _check_mask(padding_mask, values)
    return _contiguous_like(values), probs.new_empty(probs.shape, dtype=values.dtype)


@torch.library.register_fake(f"{_NAMESPACE}::span_dynamic_conv_fwd")
def _span_fwd_fake(query, key_conv, values, weight, bias, num_heads, padding_mask):
    _check_span(query, key_conv, values, weight, bias, num_heads, padding_mask)
    b, l, _ = values.shape
    return _contiguous_like(values), values.new_empty((b, l, weight.shape[0]), dtype=_acc_dtype(values.dtype))


@torch.library.register_fake(f"{_NAMESPACE}::span_dynamic_conv_bwd")
def _span_bwd_fake(grad_out, grad_probs, query, key_conv, values, weight, probs, num_heads, padding_mask):
    _check_span(query, key_conv, values, weight, None, num_heads, padding_mask)
    _check_probs(probs, values, weight.shape[0])
    torch._check(grad_out.shape == values.shape, lambda: "grad_out must have the shape of values")
    return (_contiguous_like(query), _contiguous_like(key_conv), _contiguous_like(values),
            _contiguous_like(weight), weight.new_empty((weight.shape[0],)))


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
