"""The public ops: validate once, then hand the work to the chosen backend."""

from __future__ import annotations

import contextlib

import torch

from . import _validation
from .backends import resolve_backend


@contextlib.contextmanager
def _without_autocast(device: torch.device):
    """The ops compute in their inputs' dtype on every backend, autocast region or not.

    Custom-op backends are untouched by autocast anyway; this keeps the pure-PyTorch ones (whose
    F.linear autocast would re-cast) giving the same numbers. Callers under autocast cast the
    inputs to the autocast dtype themselves, as ConvBERT's attention layer does.
    """
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        with torch.autocast(device.type, enabled=False):
            yield
    else:
        yield


def dynamic_conv(
    values: torch.Tensor,
    logits: torch.Tensor,
    num_heads: int,
    *,
    padding_l: int | None = None,
    padding_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Span-based dynamic convolution from precomputed kernel logits.

    For every token ``t`` and head ``h`` the K logits are softmaxed and used as the taps of a
    window over the sequence that starts ``padding_l`` tokens before ``t``::

        out[b, t, h, :] = sum_k softmax(logits[b, t, h, :])[k] * values[b, t + k - padding_l, h, :]

    with values taken as zero outside ``[0, L)``.

    Args:
        values: ``[B, L, C]``, ``C = num_heads * d``.
        logits: ``[B, L, num_heads * K]``, pre-softmax. Any strides: a kernel shared by every
            position may be passed as an expanded (stride-0) view, which the native and Triton
            backends read in place (reference and eager expand it).
        num_heads: number of convolution heads ``n``.
        padding_l: taps before the token: ``None`` (default) is ``(K - 1) // 2``, ConvBERT's centred
            window (for even K, one more tap after the token than before); ``K - 1`` is causal
            (every tap on the past, as a decoder needs); any int in ``[0, K - 1]``.
        padding_mask: optional ``[B, L]``, 1 (or True) for tokens, 0 for padding; values at padded
            positions then count as zero.
        cu_seqlens: packed sequences instead of a padded batch (as flash-attention's varlen
            functions): ``values`` ``[T, C]`` and ``logits`` ``[T, n*K]`` hold N sequences back to
            back, ``cu_seqlens`` (int32/int64 ``[N + 1]``, from 0, non-decreasing, ending at T;
            empty sequences allowed) where they start; no window reaches outside its token's own
            sequence. Not together with ``padding_mask``.
        max_seqlen: the longest sequence's length, optional, as flash-attention takes it: checked
            against ``cu_seqlens``; the kernels do not need it.
        backend: ``"auto"`` (fastest available for the inputs' device) or one of
            :func:`available_backends`.

    Returns:
        ``[B, L, C]`` (``[T, C]`` with ``cu_seqlens``) in the dtype of ``values``.

    Every backend gives the same answer at the edges: padded values count as zero even when they
    are inf or NaN; a head whose K logits are all ``-inf`` gives NaN, as ``torch.softmax`` does;
    empty dimensions (B, L or C = 0) give empty outputs and gradients. Second-order gradients
    (``create_graph=True``) exist on ``eager`` and ``reference``; the compiled backends raise.

    Raises:
        ValueError: inconsistent shapes, devices or dtypes, ``padding_l`` outside ``[0, K - 1]``, or an
            unavailable backend.
    """
    if cu_seqlens is not None:
        _validation.check_packed_dynamic_conv(values, logits)
        values, logits = values.unsqueeze(0), logits.unsqueeze(0)  # one row of T tokens
    kernel_size = _validation.check_dynamic_conv(values, logits, num_heads)
    padding_l = _validation.resolve_padding_l(padding_l, kernel_size)
    impl = resolve_backend(backend, values.device)
    if cu_seqlens is not None:
        bounds = _validation.seq_bounds_from_cu_seqlens(cu_seqlens, values.shape[1], max_seqlen, values.device,
                                                        padding_mask)
        with _without_autocast(values.device):
            return impl.dynamic_conv(values, logits, num_heads, padding_l, None, bounds)[0]
    mask = _validation.normalize_padding_mask(padding_mask, values)
    with _without_autocast(values.device):
        return impl.dynamic_conv(values, logits, num_heads, padding_l, mask)


def span_dynamic_conv(
    query: torch.Tensor,
    key_conv: torch.Tensor,
    values: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    num_heads: int,
    *,
    padding_l: int | None = None,
    padding_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """ConvBERT's whole convolution branch after its projections, fused where the backend can.

    Equivalent to ``dynamic_conv(values, (key_conv * query) @ weight.T + bias, num_heads)``:
    the span-aware kernel is generated from the product of the key convolution and the query,
    projected to ``num_heads * K`` logits, softmaxed over K and applied to the value window.

    Args:
        query: ``[B, L, A]`` (the query projection, bias included).
        key_conv: ``[B, L, A]`` (the separable convolution of the hidden states).
        values: ``[B, L, C]`` (``conv_out_layer`` of the hidden states), ``C = num_heads * d``.
        weight: ``[num_heads * K, A]`` (``conv_kernel_layer.weight``).
        bias: ``[num_heads * K]`` or None.
        num_heads: number of convolution heads ``n``.
        padding_l: the window offset, as for :func:`dynamic_conv` (default: centred).
        padding_mask: optional ``[B, L]`` (1 = token, 0 = padding); padded values count as zero.
        cu_seqlens, max_seqlen: packed sequences, as for :func:`dynamic_conv`: ``query`` and
            ``key_conv`` ``[T, A]``, ``values`` ``[T, C]``, output ``[T, C]``.
        backend: ``"auto"`` or one of :func:`available_backends`.

    Returns:
        ``[B, L, C]`` (``[T, C]`` with ``cu_seqlens``) in the dtype of ``values``. All inputs share one dtype; the op computes in it
        (accumulating in at least fp32) whether or not an autocast region encloses the call.
        Edge cases as for :func:`dynamic_conv`; with A = 0 the logits are the bias alone.

    Raises:
        ValueError: inconsistent shapes, devices or dtypes, ``padding_l`` outside ``[0, K - 1]``, or an
            unavailable backend.
    """
    if cu_seqlens is not None:
        _validation.check_packed_span_dynamic_conv(query, key_conv, values)
        query, key_conv, values = query.unsqueeze(0), key_conv.unsqueeze(0), values.unsqueeze(0)
    kernel_size = _validation.check_span_dynamic_conv(query, key_conv, values, weight, bias, num_heads)
    padding_l = _validation.resolve_padding_l(padding_l, kernel_size)
    impl = resolve_backend(backend, values.device)
    if cu_seqlens is not None:
        bounds = _validation.seq_bounds_from_cu_seqlens(cu_seqlens, values.shape[1], max_seqlen, values.device,
                                                        padding_mask)
        with _without_autocast(values.device):
            return impl.span_dynamic_conv(query, key_conv, values, weight, bias, num_heads, padding_l, None,
                                          bounds)[0]
    mask = _validation.normalize_padding_mask(padding_mask, values)
    with _without_autocast(values.device):
        return impl.span_dynamic_conv(query, key_conv, values, weight, bias, num_heads, padding_l, mask)
