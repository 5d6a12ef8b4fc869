"""The reference backend: Hugging Face's formulation, with ``unfold``. The numerical oracle.

It materialises every token's K-wide value window (a K-times larger tensor) and contracts it
with the softmaxed kernel by a batched matmul, exactly as ``transformers``' ConvBertSelfAttention
does. Slow and memory-hungry on purpose: it is what the other backends are checked against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backends import Backend
from .eager import window_validity


def dynamic_conv(values, logits, num_heads, padding_l, padding_mask=None, seq_bounds=None):
    batch, length, channels = values.shape
    head_size = channels // num_heads
    kernel_size = logits.shape[-1] // num_heads
    rows = batch * length * num_heads
    if padding_mask is not None:  # padded values are zeros, even inf or NaN ones
        values = values.masked_fill(~padding_mask.unsqueeze(-1), 0)
    probs = torch.softmax(logits.reshape(rows, kernel_size, 1), dim=1)  # [B*L*n, K, 1]
    # [B, L + K, C] -> unfold -> [B, L, C, K]: tap k of token t reads t + k - padding_l (one spare
    # row of padding, so that L = 0 still unfolds)
    windows = F.pad(values, (0, 0, padding_l, kernel_size - padding_l)).unfold(1, kernel_size, 1)[:, :length]
    if seq_bounds is not None:  # packed sequences: rows of other sequences read as zero
        valid = window_validity(seq_bounds, batch, length, kernel_size, padding_l)
        windows = windows.masked_fill(~valid[:, :, None, :], 0)
    windows = windows.reshape(rows, head_size, kernel_size)  # [B*L*n, d, K], a K-times larger copy
    return torch.matmul(windows, probs).reshape(batch, length, channels)


def span_dynamic_conv(query, key_conv, values, weight, bias, num_heads, padding_l, padding_mask=None,
                      seq_bounds=None):
    logits = F.linear(key_conv * query, weight, bias)
    return dynamic_conv(values, logits, num_heads, padding_l, padding_mask, seq_bounds)


BACKEND = Backend(
    name="reference",
    dynamic_conv=dynamic_conv,
    span_dynamic_conv=span_dynamic_conv,
    is_available=lambda device: True,
)
