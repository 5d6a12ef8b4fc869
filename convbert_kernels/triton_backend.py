"""The Triton backend: the kernels of :mod:`convbert_kernels.triton_kernels` as torch custom ops.

Four ops live in the ``convbert_kernels`` namespace, beside the native backend's::

    convbert_kernels::triton_span_fwd(query, key_conv, values, weight, bias?, num_heads, padding_mask?, save_probs)
        -> (out, probs)
    convbert_kernels::triton_span_bwd(grad_out, query, key_conv, values, weight, probs, num_heads, padding_mask?)
        -> (d_query, d_key_conv, d_values, d_weight, d_bias)
    convbert_kernels::triton_dynamic_fwd(values, logits, num_heads, padding_mask?, save_probs) -> (out, probs)
    convbert_kernels::triton_dynamic_bwd(grad_out, values, probs, num_heads, padding_mask?) -> (d_values, d_logits)

Each has a fake (meta) implementation, and the forward ops carry autograd formulas that call the
backward ops, so ``torch.compile(fullgraph=True)`` traces them as opaque nodes and
``torch.library.opcheck`` passes. ``torch.library.custom_op`` is used rather than
``triton_op``/``wrap_triton``: the latter fails under torch.compile with the Triton interpreter
on CPU tensors (the CI configuration), while a custom op launching the same kernels works on
both CPU (interpreter) and CUDA. The price is that Inductor cannot fuse into the kernels.

Availability: CUDA devices whenever Triton imports and CUDA is present; CPU devices only when
``TRITON_INTERPRET=1`` was set before Triton was imported. Importing this module raises if Triton
is missing; the registry records that as the reason the backend is unavailable.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import triton_kernels as _k
from .backends import Backend

_NS = "convbert_kernels"  # the native backend's namespace too


# ---- span_dynamic_conv ------------------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::triton_span_fwd", mutates_args=())
def triton_span_fwd(
    query: Tensor, key_conv: Tensor, values: Tensor, weight: Tensor, bias: Optional[Tensor],
    num_heads: int, padding_mask: Optional[Tensor], save_probs: bool = True,
) -> tuple[Tensor, Tensor]:
    """Fused forward; returns ``(out [B, L, C], probs [B, L, n, K] fp32, or [0] if not saved)``."""
    return _k.span_forward(query, key_conv, values, weight, bias, num_heads, padding_mask, save_probs)


def _probs_like(values, num_heads, kernel_size, save_probs):
    _, probs_dtype = _k._acc_dtypes(values.dtype)
    shape = (values.shape[0], values.shape[1], num_heads, kernel_size) if save_probs else (0,)
    return values.new_empty(shape, dtype=probs_dtype)


@triton_span_fwd.register_fake
def _(query, key_conv, values, weight, bias, num_heads, padding_mask, save_probs=True):
    return values.new_empty(values.shape), _probs_like(values, num_heads, weight.shape[0] // num_heads, save_probs)


@torch.library.custom_op(f"{_NS}::triton_span_bwd", mutates_args=())
def triton_span_bwd(
    grad_out: Tensor, query: Tensor, key_conv: Tensor, values: Tensor, weight: Tensor, probs: Tensor,
    num_heads: int, padding_mask: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward; returns ``(d_query, d_key_conv, d_values, d_weight, d_bias)`` (d_bias always)."""
    return _k.span_backward(grad_out, query, key_conv, values, weight, probs, num_heads, padding_mask)


@triton_span_bwd.register_fake
def _(grad_out, query, key_conv, values, weight, probs, num_heads, padding_mask):
    return (
        query.new_empty(query.shape),
        key_conv.new_empty(key_conv.shape),
        values.new_empty(values.shape),
        weight.new_empty(weight.shape),
        weight.new_empty((weight.shape[0],)),
    )


def _span_setup_context(ctx, inputs, output):
    query, key_conv, values, weight, bias, num_heads, padding_mask, _save_probs = inputs
    _out, probs = output
    ctx.save_for_backward(query, key_conv, values, weight, probs, padding_mask)
    ctx.num_heads = num_heads
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(probs)


def _check_saved(probs):
    if probs.dim() != 4:
        raise RuntimeError("convbert triton op: backward needs the forward to run with save_probs=True")


def _span_backward(ctx, grad_out, _grad_probs):
    query, key_conv, values, weight, probs, padding_mask = ctx.saved_tensors
    _check_saved(probs)
    d_query, d_key_conv, d_values, d_weight, d_bias = triton_span_bwd(
        grad_out, query, key_conv, values, weight, probs, ctx.num_heads, padding_mask
    )
    return d_query, d_key_conv, d_values, d_weight, (d_bias if ctx.has_bias else None), None, None, None


triton_span_fwd.register_autograd(_span_backward, setup_context=_span_setup_context)


# ---- dynamic_conv -------------------------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::triton_dynamic_fwd", mutates_args=())
def triton_dynamic_fwd(
    values: Tensor, logits: Tensor, num_heads: int, padding_mask: Optional[Tensor], save_probs: bool = True
) -> tuple[Tensor, Tensor]:
    """Forward from given logits; returns ``(out [B, L, C], probs [B, L, n, K] fp32, or [0])``."""
    return _k.dynamic_forward(values, logits, num_heads, padding_mask, save_probs)


@triton_dynamic_fwd.register_fake
def _(values, logits, num_heads, padding_mask, save_probs=True):
    return values.new_empty(values.shape), _probs_like(values, num_heads, logits.shape[2] // num_heads, save_probs)


@torch.library.custom_op(f"{_NS}::triton_dynamic_bwd", mutates_args=())
def triton_dynamic_bwd(
    grad_out: Tensor, values: Tensor, probs: Tensor, num_heads: int, padding_mask: Optional[Tensor]
) -> tuple[Tensor, Tensor]:
    """Backward; returns ``(d_values [B, L, C], d_logits [B, L, n*K])`` in the values' dtype."""
    return _k.dynamic_backward(grad_out, values, probs, num_heads, padding_mask, values.dtype)


@triton_dynamic_bwd.register_fake
def _(grad_out, values, probs, num_heads, padding_mask):
    batch, length, _ = values.shape
    return (
        values.new_empty(values.shape),
        values.new_empty((batch, length, num_heads * probs.shape[3])),
    )


def _dynamic_setup_context(ctx, inputs, output):
    values, _logits, num_heads, padding_mask, _save_probs = inputs
    _out, probs = output
    ctx.save_for_backward(values, probs, padding_mask)
    ctx.num_heads = num_heads
    ctx.mark_non_differentiable(probs)


def _dynamic_backward(ctx, grad_out, _grad_probs):
    values, probs, padding_mask = ctx.saved_tensors
    _check_saved(probs)
    d_values, d_logits = triton_dynamic_bwd(grad_out, values, probs, ctx.num_heads, padding_mask)
    return d_values, d_logits, None, None, None


triton_dynamic_fwd.register_autograd(_dynamic_backward, setup_context=_dynamic_setup_context)


# ---- the backend ------------------------------------------------------------------------------


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def span_dynamic_conv(query, key_conv, values, weight, bias, num_heads, padding_mask=None):
    """``span_dynamic_conv`` through the fused Triton kernels (inputs already validated)."""
    save = _needs_grad(query, key_conv, values, weight, bias)
    return triton_span_fwd(query, key_conv, values, weight, bias, num_heads, padding_mask, save)[0]


def dynamic_conv(values, logits, num_heads, padding_mask=None):
    """``dynamic_conv`` through the Triton kernels (inputs already validated)."""
    return triton_dynamic_fwd(values, logits, num_heads, padding_mask, _needs_grad(values, logits))[0]


def is_available(device: torch.device) -> bool:
    """CUDA devices when CUDA works (asked each time, not at import); CPU devices only under the
    Triton interpreter."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "cpu":
        return _k.INTERPRET
    return False


BACKEND = Backend(
    name="triton",
    dynamic_conv=dynamic_conv,
    span_dynamic_conv=span_dynamic_conv,
    is_available=is_available,
)
