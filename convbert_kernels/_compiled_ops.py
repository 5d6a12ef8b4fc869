"""What the two compiled backends (triton, native) share: their ops' contract, fakes and autograd.

Both compiled backends register four ops with the same signatures in the ``convbert_kernels``
namespace (``triton_*`` in :mod:`.triton_backend`, ``native_*`` in csrc/ops.cpp)::

    *_span_fwd(query, key_conv, values, weight, bias?, num_heads, padding_l, padding_mask?, seq_bounds?,
               save_probs) -> (out, probs)
    *_span_bwd(grad_out, query, key_conv, values, weight, probs, num_heads, padding_l, padding_mask?,
               seq_bounds?) -> (d_query, d_key_conv, d_values, d_weight, d_bias)
    *_dynamic_fwd(values, logits, num_heads, padding_l, padding_mask?, seq_bounds?, save_probs) -> (out, probs)
    *_dynamic_bwd(grad_out, values, probs, num_heads, padding_l, padding_mask?, seq_bounds?)
        -> (d_values, d_logits)

Tap ``k`` of token ``t`` reads value ``t + k - padding_l`` (``0 <= padding_l <= K - 1``; the public
ops resolve ``None`` to ``(K - 1) // 2``). ``seq_bounds`` (packed sequences), int64 ``[2, B*L]``:
for the token at flattened row ``f = b * L + t``, its sequence's rows ``[seq_bounds[0, f],
seq_bounds[1, f])``; window rows outside it count as zero (the ops do not check its contents:
that would cost a device sync; :func:`convbert_kernels.ops.dynamic_conv` validates ``cu_seqlens``). ``probs``, the softmaxed taps, is ``[B, L, n, K]`` in float32 (float64 for float64 inputs), or an
empty ``[0]`` tensor when ``save_probs`` is false; it is not differentiable. ``d_bias`` is always
returned. The fake (meta) implementations below check with ``torch._check`` what the real ops
check (csrc/ops.cpp; the Triton ops call the same checks before launching), so a traced call
fails on bad input exactly where a real one would. :func:`make_backend` registers the fakes and
the autograd formulas of one backend's ops and returns the backend.
"""

from __future__ import annotations

from typing import Callable

import torch

from .backends import Backend

NAMESPACE = "convbert_kernels"


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the softmax, the accumulators and ``probs``: float64 stays, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(condition, message) -> None:
    """``torch._check``, with a shortcut for a condition that is plainly true: the real Triton ops run
    these checks before every launch, where torch._check costs a few microseconds each. Symbolic
    conditions (tracing with dynamic shapes) and failures still go through torch._check."""
    if condition is True:
        return
    torch._check(condition, message)


def _check_like(t, values, name):
    _check(t.device == values.device, lambda: f"{name} is on {t.device} but values is on {values.device}")
    _check(t.dtype == values.dtype, lambda: f"{name} has dtype {t.dtype} but values has {values.dtype}")


def _check_heads(values, num_heads, rows) -> int:
    """Check values [B, L, C] against ``rows = n * K`` logits per token; return K."""
    _check(values.is_floating_point(), lambda: f"values must be a floating tensor, got {values.dtype}")
    _check(values.dim() == 3, lambda: f"values must be [B, L, C], got {tuple(values.shape)}")
    _check(num_heads >= 1, lambda: f"num_heads must be positive, got {num_heads}")
    _check(values.shape[2] % num_heads == 0,
                 lambda: f"C={values.shape[2]} is not divisible by num_heads={num_heads}")
    _check(rows % num_heads == 0 and rows // num_heads >= 1,
                 lambda: f"the kernel dimension {rows} is not num_heads * K with K >= 1")
    return rows // num_heads


def _check_padding_l(padding_l, kernel_size):
    _check(0 <= padding_l and padding_l < kernel_size,
           lambda: f"padding_l must be in [0, K - 1] = [0, {kernel_size - 1}], got {padding_l}")


def _check_mask(padding_mask, values):
    if padding_mask is not None:
        _check(padding_mask.dim() == 2 and tuple(padding_mask.shape) == tuple(values.shape[:2]),
                     lambda: f"padding_mask must be [B, L] = {list(values.shape[:2])}, got {tuple(padding_mask.shape)}")
        _check(padding_mask.device == values.device,
                     lambda: f"padding_mask is on {padding_mask.device} but values is on {values.device}")


def _check_bounds(seq_bounds, values):
    if seq_bounds is not None:
        tokens = values.shape[0] * values.shape[1]
        _check(seq_bounds.dtype == torch.int64, lambda: f"seq_bounds must be int64, got {seq_bounds.dtype}")
        _check(seq_bounds.dim() == 2 and seq_bounds.shape[0] == 2 and seq_bounds.shape[1] == tokens,
               lambda: f"seq_bounds must be [2, B*L] = [2, {tokens}], got {tuple(seq_bounds.shape)}")
        _check(seq_bounds.device == values.device,
               lambda: f"seq_bounds is on {seq_bounds.device} but values is on {values.device}")


def _check_span(query, key_conv, values, weight, bias, num_heads, padding_l, padding_mask) -> int:
    _check(query.dim() == 3 and query.shape == key_conv.shape, lambda: "query and key_conv must be [B, L, A]")
    _check(query.shape[:2] == values.shape[:2], lambda: "query and values must share [B, L]")
    _check(weight.dim() == 2 and weight.shape[1] == query.shape[2], lambda: "weight must be [n*K, A]")
    for t, name in ((query, "query"), (key_conv, "key_conv"), (weight, "weight")):
        _check_like(t, values, name)
    kernel_size = _check_heads(values, num_heads, weight.shape[0])
    _check_padding_l(padding_l, kernel_size)
    if bias is not None:
        _check_like(bias, values, "bias")
        _check(bias.dim() == 1 and bias.shape[0] == weight.shape[0], lambda: "bias must be [n*K]")
    _check_mask(padding_mask, values)
    return kernel_size


def _check_probs(probs, values, num_heads, kernel_size):
    expected = (*values.shape[:2], num_heads, kernel_size)
    _check(probs.dim() == 4 and tuple(probs.shape) == expected,
                 lambda: f"probs must be [B, L, n, K] = {list(expected)}, got {tuple(probs.shape)} "
                         "(run the forward with save_probs=True)")
    _check(probs.dtype == acc_dtype(values.dtype),
                 lambda: f"probs must be {acc_dtype(values.dtype)}, got {probs.dtype}")
    _check(probs.device == values.device, lambda: "probs must be on the device of values")


def _new_probs(values, num_heads, kernel_size, save_probs):
    shape = (*values.shape[:2], num_heads, kernel_size) if save_probs else (0,)
    return values.new_empty(shape, dtype=acc_dtype(values.dtype))


def _contiguous_like(t):
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def check_span_fwd(query, key_conv, values, weight, bias, num_heads, padding_l, padding_mask, seq_bounds) -> int:
    """Check a ``*_span_fwd`` call; return K."""
    _check_bounds(seq_bounds, values)
    return _check_span(query, key_conv, values, weight, bias, num_heads, padding_l, padding_mask)


def check_span_bwd(grad_out, query, key_conv, values, weight, probs, num_heads, padding_l, padding_mask,
                   seq_bounds) -> None:
    _check_bounds(seq_bounds, values)
    kernel_size = _check_span(query, key_conv, values, weight, None, num_heads, padding_l, padding_mask)
    _check_probs(probs, values, num_heads, kernel_size)
    _check(grad_out.shape == values.shape, lambda: "grad_out must have the shape of values")


def check_dynamic_fwd(values, logits, num_heads, padding_l, padding_mask, seq_bounds) -> int:
    """Check a ``*_dynamic_fwd`` call; return K."""
    _check(logits.dim() == 3 and logits.shape[:2] == values.shape[:2],
                 lambda: "logits must be [B, L, n*K] with the values' B and L")
    _check_like(logits, values, "logits")
    kernel_size = _check_heads(values, num_heads, logits.shape[2])
    _check_padding_l(padding_l, kernel_size)
    _check_mask(padding_mask, values)
    _check_bounds(seq_bounds, values)
    return kernel_size


def check_dynamic_bwd(grad_out, values, probs, num_heads, padding_l, padding_mask, seq_bounds) -> None:
    _check(probs.dim() == 4, lambda: f"probs must be [B, L, n, K], got {tuple(probs.shape)} "
                                           "(run the forward with save_probs=True)")
    kernel_size = _check_heads(values, num_heads, num_heads * probs.shape[3])
    _check_probs(probs, values, num_heads, kernel_size)
    _check_padding_l(padding_l, kernel_size)
    _check(grad_out.shape == values.shape, lambda: "grad_out must have the shape of values")
    _check_mask(padding_mask, values)
    _check_bounds(seq_bounds, values)


def span_fwd(query, key_conv, values, weight, bias, num_heads, padding_l, padding_mask, seq_bounds, save_probs):
    kernel_size = check_span_fwd(query, key_conv, values, weight, bias, num_heads, padding_l, padding_mask,
                                 seq_bounds)
    return _contiguous_like(values), _new_probs(values, num_heads, kernel_size, save_probs)


def span_bwd(grad_out, query, key_conv, values, weight, probs, num_heads, padding_l, padding_mask, seq_bounds):
    check_span_bwd(grad_out, query, key_conv, values, weight, probs, num_heads, padding_l, padding_mask, seq_bounds)
    return (_contiguous_like(query), _contiguous_like(key_conv), _contiguous_like(values),
            _contiguous_like(weight), weight.new_empty((weight.shape[0],)))


def dynamic_fwd(values, logits, num_heads, padding_l, padding_mask, seq_bounds, save_probs):
    kernel_size = check_dynamic_fwd(values, logits, num_heads, padding_l, padding_mask, seq_bounds)
    return _contiguous_like(values), _new_probs(values, num_heads, kernel_size, save_probs)


def dynamic_bwd(grad_out, values, probs, num_heads, padding_l, padding_mask, seq_bounds):
    check_dynamic_bwd(grad_out, values, probs, num_heads, padding_l, padding_mask, seq_bounds)
    return _contiguous_like(values), values.new_empty((*values.shape[:2], probs.shape[2] * probs.shape[3]))


# ---- autograd and the backend ------------------------------------------------------------------


def _needs_grad(*tensors) -> bool:
    """Whether autograd will want the backward: only then does the forward save ``probs``."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def make_backend(prefix: str, is_available: Callable[[torch.device], bool]) -> Backend:
    """Register fakes and autograd for the ops ``convbert_kernels::{prefix}_*`` (already defined)
    and return the backend that calls them (its inputs validated by :mod:`.ops`)."""
    ops = getattr(torch.ops, NAMESPACE)
    span_fwd_op, span_bwd_op = getattr(ops, f"{prefix}_span_fwd"), getattr(ops, f"{prefix}_span_bwd")
    dynamic_fwd_op, dynamic_bwd_op = getattr(ops, f"{prefix}_dynamic_fwd"), getattr(ops, f"{prefix}_dynamic_bwd")
    for name, fake in (("span_fwd", span_fwd), ("span_bwd", span_bwd),
                       ("dynamic_fwd", dynamic_fwd), ("dynamic_bwd", dynamic_bwd)):
        torch.library.register_fake(f"{NAMESPACE}::{prefix}_{name}", fake)

    def save_span(ctx, inputs, probs):
        query, key_conv, values, weight, bias, num_heads, padding_l, padding_mask, seq_bounds, _save_probs = inputs
        ctx.save_for_backward(query, key_conv, values, weight, probs, padding_mask, seq_bounds)
        ctx.num_heads, ctx.padding_l = num_heads, padding_l
        ctx.has_bias = bias is not None

    def span_grads(ctx, grad_out):
        refuse_double_backward()
        query, key_conv, values, weight, probs, padding_mask, seq_bounds = ctx.saved_tensors
        d_query, d_key_conv, d_values, d_weight, d_bias = span_bwd_op(
            grad_out, query, key_conv, values, weight, probs, ctx.num_heads, ctx.padding_l, padding_mask, seq_bounds)
        return (d_query, d_key_conv, d_values, d_weight, (d_bias if ctx.has_bias else None),
                None, None, None, None, None)

    def save_dynamic(ctx, inputs, probs):
        values, _logits, num_heads, padding_l, padding_mask, seq_bounds, _save_probs = inputs
        ctx.save_for_backward(values, probs, padding_mask, seq_bounds)
        ctx.num_heads, ctx.padding_l = num_heads, padding_l

    def dynamic_grads(ctx, grad_out):
        refuse_double_backward()
        values, probs, padding_mask, seq_bounds = ctx.saved_tensors
        d_values, d_logits = dynamic_bwd_op(grad_out, values, probs, ctx.num_heads, ctx.padding_l, padding_mask,
                                            seq_bounds)
        return d_values, d_logits, None, None, None, None, None

    def refuse_double_backward():
        # the backward ops have no derivative of their own: say so rather than return None grads
        if torch.is_grad_enabled():
            raise RuntimeError(f"the {prefix} backend has no second-order gradients (backward with "
                               "create_graph=True); use backend='eager' or 'reference' for those")

    # The ops' registered autograd (direct calls of the ops, and torch.compile's traces).
    def span_setup(ctx, inputs, output):
        save_span(ctx, inputs, output[1])
        ctx.mark_non_differentiable(output[1])

    def dynamic_setup(ctx, inputs, output):
        save_dynamic(ctx, inputs, output[1])
        ctx.mark_non_differentiable(output[1])

    torch.library.register_autograd(f"{NAMESPACE}::{prefix}_span_fwd",
                                    lambda ctx, grad_out, _grad_probs: span_grads(ctx, grad_out),
                                    setup_context=span_setup)
    torch.library.register_autograd(f"{NAMESPACE}::{prefix}_dynamic_fwd",
                                    lambda ctx, grad_out, _grad_probs: dynamic_grads(ctx, grad_out),
                                    setup_context=dynamic_setup)

    # The same formulas (save_* / *_grads) as plain autograd.Functions, for the backend's eager
    # calls: the registered autograd goes through torch.library's per-call Python wrapper (a
    # generated Function with a second output, defaults filled in from the schema, a redispatch),
    # about 0.5 ms of a 6 ms forward + backward measured on CPU at B=8, L=128. probs stays inside.
    def eager_function(name, fwd_op, save, grads):
        def forward(ctx, *inputs):
            with torch._C._AutoDispatchBelowAutograd():
                out, probs = fwd_op(*inputs)
            save(ctx, inputs, probs)
            return out

        def backward(ctx, grad_out):
            return grads(ctx, grad_out)

        # a class of its own name, so autograd's node reads e.g. NativeSpanFunctionBackward
        return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward),
                                                        "backward": staticmethod(backward)})

    span_function = eager_function(f"{prefix.capitalize()}SpanFunction", span_fwd_op, save_span, span_grads)
    dynamic_function = eager_function(f"{prefix.capitalize()}DynamicFunction", dynamic_fwd_op, save_dynamic,
                                      dynamic_grads)

    def span_dynamic_conv(query, key_conv, values, weight, bias, num_heads, padding_l, padding_mask=None,
                          seq_bounds=None):
        save = _needs_grad(query, key_conv, values, weight, bias)
        inputs = (query, key_conv, values, weight, bias, num_heads, padding_l, padding_mask, seq_bounds, save)
        if save and not torch.compiler.is_compiling():
            return span_function.apply(*inputs)
        return span_fwd_op(*inputs)[0]

    def dynamic_conv(values, logits, num_heads, padding_l, padding_mask=None, seq_bounds=None):
        save = _needs_grad(values, logits)
        inputs = (values, logits, num_heads, padding_l, padding_mask, seq_bounds, save)
        if save and not torch.compiler.is_compiling():
            return dynamic_function.apply(*inputs)
        return dynamic_fwd_op(*inputs)[0]

    return Backend(name=prefix, dynamic_conv=dynamic_conv, span_dynamic_conv=span_dynamic_conv,
                   is_available=is_available)
