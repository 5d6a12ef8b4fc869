"""The eager backend: pure PyTorch, K shifted multiply-adds instead of ``unfold``.

out[t] = sum_k p[t, k] * v[t + k - padding_l], v = 0 outside [0, L) (and, for packed sequences,
outside the token's own sequence).

Memory stays O(B*L*C): the values are zero-padded once along the sequence and each tap reads
a shifted view of them. Softmax and accumulation run in at least float32. Autograd is PyTorch's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backends import Backend


def window_validity(seq_bounds, batch, length, kernel_size, padding_l):
    """Bool ``[B, L, K]``: whether tap k of token t reads a row of t's own sequence.

    ``seq_bounds`` is int64 ``[2, B*L]``: per flattened token ``f = b * L + t``, its sequence's
    rows ``[start, end)`` (see :mod:`convbert_kernels._compiled_ops`).
    """
    rows = torch.arange(batch * length, device=seq_bounds.device).view(batch, length, 1)
    src = rows + torch.arange(kernel_size, device=seq_bounds.device) - padding_l
    start, end = (bound.view(batch, length, 1) for bound in seq_bounds)
    return (src >= start) & (src < end)


def window_sum(values, probs, padding_l, padding_mask=None, seq_bounds=None):
    """``out[b, t, h] = sum_k probs[b, t, h, k] * values[b, t + k - padding_l, h]`` from given taps.

    The window sum without the softmax, for callers that change the taps after it (DropConnect
    in :class:`convbert_kernels.DynamicConv1d`). ``probs`` broadcasts to ``[B, L, n, K]`` (a
    ``[n, K]`` kernel shared by every position is not expanded); ``values`` is ``[B, L, n * d]``.
    With ``seq_bounds`` (packed sequences) a tap reading outside its token's sequence reads zero.
    Accumulates in ``probs``' dtype (at least float32); returns the values' dtype.
    """
    batch, length, channels = values.shape
    num_heads, kernel_size = probs.shape[-2:]
    compute_dtype = torch.promote_types(probs.dtype, torch.float32)
    probs = probs.to(compute_dtype)
    v = values.reshape(batch, length, num_heads, channels // num_heads)
    if padding_mask is not None:  # padded values are zeros, even inf or NaN ones
        v = v.masked_fill(~padding_mask[:, :, None, None], 0)
    v = F.pad(v, (0, 0, 0, 0, padding_l, kernel_size - 1 - padding_l))  # [B, L + K - 1, n, d]
    valid = None if seq_bounds is None else window_validity(seq_bounds, batch, length, kernel_size, padding_l)

    def tap(k):  # the values tap k reads, [B, L, n, d]
        shifted = v[:, k : k + length]
        return shifted if valid is None else shifted.masked_fill(~valid[:, :, k, None, None], 0)

    out = probs[..., 0:1] * tap(0)
    for k in range(1, kernel_size):
        out = out + probs[..., k : k + 1] * tap(k)
    return out.reshape(batch, length, channels).to(values.dtype)


def dynamic_conv(values, logits, num_heads, padding_l, padding_mask=None, seq_bounds=None):
    batch, length, _channels = values.shape
    kernel_size = logits.shape[-1] // num_heads
    compute_dtype = torch.promote_types(values.dtype, torch.float32)
    probs = torch.softmax(logits.reshape(batch, length, num_heads, kernel_size).to(compute_dtype), dim=-1)
    return window_sum(values, probs, padding_l, padding_mask, seq_bounds)


def span_dynamic_conv(query, key_conv, values, weight, bias, num_heads, padding_l, padding_mask=None,
                      seq_bounds=None):
    logits = F.linear(key_conv * query, weight, bias)
    return dynamic_conv(values, logits, num_heads, padding_l, padding_mask, seq_bounds)


BACKEND = Backend(
    name="eager",
    dynamic_conv=dynamic_conv,
    span_dynamic_conv=span_dynamic_conv,
    is_available=lambda device: True,
)
