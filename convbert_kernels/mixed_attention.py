"""ConvBERT's mixed attention after its projections, shared by :mod:`convbert.modeling` and the
transformers patch (:mod:`convbert_kernels.hf_patch`), so both compute exactly the same thing.

For the projections of hidden states x (n heads of size d, A = n * d)::

    conv    = span_dynamic_conv(q, key_conv, conv_out, W, b)   [B, L, A]   (conv_branch)
    attn    = softmax(q k^T / sqrt(d) + mask) v                 [B, L, A]   (attention_branch)
    output  = concat(attn, conv) per head                       [B, L, 2A]  (mix_heads)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .ops import span_dynamic_conv


def conv_branch(query: torch.Tensor, key_conv: torch.Tensor, conv_out: torch.Tensor, conv_kernel_layer: nn.Linear,
                num_heads: int, *, padding_mask: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                backend: str = "auto") -> torch.Tensor:
    """The span-based dynamic convolution half: ``[B, L, A]`` (packed ``[T, A]`` with ``cu_seqlens``)
    in the dtype of ``query``.

    Under autocast the projections come out in the autocast dtype while fp32 parameters (the
    separable convolution's bias, ``conv_kernel_layer``) do not: they are cast as ``nn.Linear``
    would cast them. A no-op otherwise.
    """
    dtype = query.dtype
    bias = conv_kernel_layer.bias
    return span_dynamic_conv(
        query, key_conv.to(dtype), conv_out.to(dtype), conv_kernel_layer.weight.to(dtype),
        None if bias is None else bias.to(dtype), num_heads, padding_mask=padding_mask, cu_seqlens=cu_seqlens,
        backend=backend,
    )


def attention_branch(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int, *,
                     attention_mask: torch.Tensor | None = None, dropout: nn.Dropout | None = None,
                     head_mask: torch.Tensor | None = None, need_probs: bool = False):
    """The self-attention half: ``(context [B, L, n, d], probabilities [B, n, L, S] or None)``.

    ``query`` is ``[B, L, A]``; ``key`` and ``value`` ``[B, S, A]`` (S = L, or the encoder's
    length for cross-attention); ``attention_mask`` is additive, broadcastable to
    ``[B, n, L, S]``; ``head_mask`` multiplies the probabilities. Without ``need_probs`` or a
    head mask, this is one fused ``scaled_dot_product_attention``.
    """
    def heads(x):
        return x.view(x.shape[0], x.shape[1], num_heads, -1).transpose(1, 2)

    q, k, v = heads(query), heads(key), heads(value)
    training = dropout is not None and dropout.training
    if not need_probs and head_mask is None:
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask,
                                                 dropout_p=dropout.p if training else 0.0)
        return context.transpose(1, 2), None
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    if dropout is not None:
        probs = dropout(probs)
    if head_mask is not None:
        probs = probs * head_mask
    return (probs @ v).transpose(1, 2), probs


def mix_heads(context: torch.Tensor, conv: torch.Tensor) -> torch.Tensor:
    """Per token, the n attention heads then the n convolution heads: ``[B, L, 2A]``."""
    batch, length, num_heads, head_size = context.shape
    conv = conv.reshape(batch, length, num_heads, head_size).to(context.dtype)
    return torch.cat([context, conv], dim=2).reshape(batch, length, 2 * num_heads * head_size)
