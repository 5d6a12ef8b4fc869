"""Drop-in modules on the fused op: the dynamic and lightweight convolutions of "Pay Less Attention".

Both are batch-first (``[B, L, C]``), run on any backend of :func:`dynamic_conv`, take any window
offset ``padding_l`` (``K - 1`` for a decoder) and decode one token at a time with :meth:`step`.

How they relate to fairseq's ``DynamicConv1dTBC`` / ``LightweightConv1dTBC`` (Wu et al., 2019):

* The same: the parameters and their names (``weight_linear``, ``conv_bias``; ``weight``,
  ``bias``), their initialisation (Xavier-uniform kernels, zero biases), channels grouped into
  ``num_heads`` contiguous blocks of ``C / num_heads``, a separate ``query`` for the dynamic
  kernel, ``padding_l`` with taps outside the sequence counting as zero (fairseq's
  ``renorm_padding=False``: the softmax still runs over all K taps), and DropConnect as dropout on
  the softmaxed taps (scaled by ``1 / (1 - p)``) during training only.
* Different: inputs are ``[B, L, C]``, not ``[T, B, C]``; the softmax over the taps is always on
  (fairseq's ``weight_softmax=True``, the setting its models use); the padding mask is
  ``[B, L]`` with True (or 1) for tokens, as in Hugging Face's ``attention_mask``, where fairseq
  passes True for padding; padded positions count as zero in every window; decoding state is a
  plain tensor returned by :meth:`step` (no ``incremental_state`` dictionary); any kernel size K
  and every dtype the backends take (fairseq's CUDA kernels: eight fixed odd K, no bfloat16).

With ``weight_dropout > 0`` in training the taps are changed after the softmax, which the fused
kernels (softmax inside) cannot do: those calls run the PyTorch window sum of
:func:`convbert_kernels.eager.window_sum`; evaluation, and training without DropConnect, use the
chosen backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import _validation
from .backends import known_backends, load_backends
from .eager import window_sum
from .ops import dynamic_conv


def _check_module_args(input_size, kernel_size, num_heads, padding_l, weight_dropout, backend) -> int:
    """Validate the shared constructor arguments; return the resolved ``padding_l``."""
    for name, value in (("input_size", input_size), ("kernel_size", kernel_size), ("num_heads", num_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if input_size % num_heads != 0:
        raise ValueError(f"input_size={input_size} is not divisible by num_heads={num_heads}")
    if not 0.0 <= weight_dropout < 1.0:
        raise ValueError(f"weight_dropout must be in [0, 1), got {weight_dropout!r}")
    if backend != "auto" and backend not in known_backends():
        raise ValueError(f"unknown backend {backend!r}; known backends: {['auto', *known_backends()]}")
    return _validation.resolve_padding_l(padding_l, kernel_size)


def _check_input(x: torch.Tensor, input_size: int, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != input_size:
        raise ValueError(f"{name} must be [B, L, {input_size}] (batch first), got shape {tuple(x.shape)}")


class _CausalStep:
    """Token-at-a-time decoding, shared by both modules.

    The state is the last ``K - 1`` inputs, ``[B, K - 1, C]``, oldest first: with the causal
    window, the output at the newest token reads exactly those and the token itself. A caller can
    keep it in a cache, reorder it for beam search (``state.index_select(0, order)``) and slice
    it like any batch-first tensor.
    """

    kernel_size: int
    padding_l: int
    input_size: int

    def _window(self, x_t: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
        """(the K inputs the new output reads, [B, K, C]; whether x_t came as [B, 1, C])."""
        if self.padding_l != self.kernel_size - 1:
            raise ValueError(
                f"step() decodes causal windows only (padding_l = K - 1 = {self.kernel_size - 1}); this module "
                f"has padding_l={self.padding_l}, whose outputs read tokens that have not been fed yet"
            )
        if not isinstance(x_t, torch.Tensor) or x_t.dim() not in (2, 3) or x_t.shape[-1] != self.input_size or (
            x_t.dim() == 3 and x_t.shape[1] != 1
        ):
            shape = tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__
            raise ValueError(f"x_t must be [B, {self.input_size}] or [B, 1, {self.input_size}], got {shape}")
        was_3d = x_t.dim() == 3
        x_t = x_t.reshape(x_t.shape[0], 1, self.input_size)
        if state is None:
            state = x_t.new_zeros(x_t.shape[0], self.kernel_size - 1, self.input_size)
        expected = (x_t.shape[0], self.kernel_size - 1, self.input_size)
        if not isinstance(state, torch.Tensor) or tuple(state.shape) != expected:
            shape = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
            raise ValueError(f"state must be [B, K - 1, C] = {list(expected)} (as step() returned it), got {shape}")
        return torch.cat([state.to(x_t.dtype), x_t], dim=1), was_3d

    def _apply_taps(self, window: torch.Tensor, probs: torch.Tensor, num_heads: int) -> torch.Tensor:
        """sum_k probs[b, h, k] * window[b, k, h, :] -> [B, C], accumulated in at least float32."""
        batch = window.shape[0]
        v = window.reshape(batch, self.kernel_size, num_heads, -1).to(probs.dtype)
        return torch.einsum("bhk,bkhd->bhd", probs.expand(batch, -1, -1), v).reshape(batch, -1)


class DynamicConv1d(_CausalStep, nn.Module):
    """Dynamic convolution (Wu et al., 2019): a K-tap kernel per token and head, predicted from the input.

    ``out[b, t, h] = sum_k softmax(weight_linear(query)[b, t, h])[k] * x[b, t + k - padding_l, h]``
    (plus ``conv_bias``), with ``query = x`` unless given; positions outside the sequence, and padded
    ones, count as zero. See the module docstring for how this relates to fairseq's ``DynamicConv``.

    Args:
        input_size: channels C of the input and the output.
        kernel_size: taps K (any K >= 1).
        num_heads: heads n; channels are grouped into n contiguous blocks of C / n sharing a kernel.
        padding_l: taps before the token: ``None`` is ``(K - 1) // 2`` (centred), ``K - 1`` causal.
        weight_dropout: DropConnect probability on the softmaxed taps (training only).
        bias: give ``weight_linear`` a bias.
        conv_bias: add a learned per-channel bias ``conv_bias`` ``[C]`` to the output.
        query_size: width of a separate ``query`` input (default ``input_size``).
        backend: the op's backend (``"auto"``, ``"native"``, ``"triton"``, ``"eager"``, ``"reference"``).
    """

    def __init__(self, input_size: int, kernel_size: int, num_heads: int, *, padding_l: int | None = None,
                 weight_dropout: float = 0.0, bias: bool = False, conv_bias: bool = False,
                 query_size: int | None = None, backend: str = "auto"):
        super().__init__()
        self.padding_l = _check_module_args(input_size, kernel_size, num_heads, padding_l, weight_dropout, backend)
        if query_size is not None and (isinstance(query_size, bool) or not isinstance(query_size, int)
                                       or query_size < 1):
            raise ValueError(f"query_size must be a positive int or None, got {query_size!r}")
        self.input_size, self.kernel_size, self.num_heads = input_size, kernel_size, num_heads
        self.query_size = query_size or input_size
        self.weight_dropout, self.backend = float(weight_dropout), backend
        self.weight_linear = nn.Linear(self.query_size, num_heads * kernel_size, bias=bias)
        self.conv_bias = nn.Parameter(torch.empty(input_size)) if conv_bias else None
        self.reset_parameters()
        load_backends(backend)  # import now: torch.compile cannot trace the first import

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight_linear.weight)
        if self.weight_linear.bias is not None:
            nn.init.zeros_(self.weight_linear.bias)
        if self.conv_bias is not None:
            nn.init.zeros_(self.conv_bias)

    def _logits(self, query: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # under autocast the projection may come back in the autocast dtype: the op takes one dtype
        return self.weight_linear(query).to(dtype)

    def forward(self, x: torch.Tensor, query: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, L, C]``; ``query`` ``[B, L, query_size]`` (default ``x``); ``padding_mask``
        ``[B, L]``, True (or 1) for tokens. Returns ``[B, L, C]`` in the dtype of ``x``."""
        _check_input(x, self.input_size)
        if query is None:
            query = x
        else:
            _check_input(query, self.query_size, "query")
            if query.shape[:2] != x.shape[:2]:
                raise ValueError(f"query {tuple(query.shape)} and x {tuple(x.shape)} must share [B, L]")
        logits = self._logits(query, x.dtype)
        if self.training and self.weight_dropout > 0:
            _validation.check_dynamic_conv(x, logits, self.num_heads)
            mask = _validation.normalize_padding_mask(padding_mask, x)
            compute_dtype = torch.promote_types(x.dtype, torch.float32)
            probs = torch.softmax(logits.to(compute_dtype).unflatten(-1, (self.num_heads, self.kernel_size)), dim=-1)
            out = window_sum(x, F.dropout(probs, self.weight_dropout, training=True), self.padding_l, mask)
        else:
            out = dynamic_conv(x, logits, self.num_heads, padding_l=self.padding_l, padding_mask=padding_mask,
                               backend=self.backend)
        return out if self.conv_bias is None else out + self.conv_bias.to(out.dtype)

    def step(self, x_t: torch.Tensor, state: torch.Tensor | None = None,
             query_t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoding step of the causal convolution (``padding_l = K - 1``; other offsets raise).

        Args:
            x_t: the new token's input, ``[B, C]`` or ``[B, 1, C]``.
            state: what the previous call returned (``[B, K - 1, C]``, the last K - 1 inputs), or
                None at the start of a sequence.
            query_t: the new token's query (default ``x_t``), shaped as ``x_t`` with ``query_size``.

        Returns:
            ``(y_t, state)``: the output at the new token, shaped as ``x_t``, equal to the full
            forward's output at that position; and the state for the next call.
        """
        window, was_3d = self._window(x_t, state)
        batch = window.shape[0]
        query = window[:, -1] if query_t is None else query_t.reshape(batch, -1)
        if query.shape[-1] != self.query_size:
            raise ValueError(f"query_t must have {self.query_size} channels, got shape {tuple(query_t.shape)}")
        compute_dtype = torch.promote_types(window.dtype, torch.float32)
        logits = self._logits(query, window.dtype).to(compute_dtype).reshape(batch, self.num_heads, self.kernel_size)
        probs = torch.softmax(logits, dim=-1)
        if self.training and self.weight_dropout > 0:
            probs = F.dropout(probs, self.weight_dropout, training=True)
        y = self._apply_taps(window, probs, self.num_heads).to(window.dtype)
        if self.conv_bias is not None:
            y = y + self.conv_bias.to(y.dtype)
        return (y[:, None] if was_3d else y), window[:, 1:]

    def extra_repr(self) -> str:
        return (f"{self.input_size}, kernel_size={self.kernel_size}, num_heads={self.num_heads}, "
                f"padding_l={self.padding_l}, weight_dropout={self.weight_dropout}, "
                f"conv_bias={self.conv_bias is not None}, query_size={self.query_size}, backend={self.backend!r}")


class LightweightConv1d(_CausalStep, nn.Module):
    """Lightweight convolution (Wu et al., 2019): one softmaxed K-tap kernel per head, shared by every position.

    ``out[b, t, h] = sum_k softmax(weight[h])[k] * x[b, t + k - padding_l, h]`` (plus ``bias``);
    positions outside the sequence, and padded ones, count as zero. The shared kernel reaches the
    op as an expanded (stride-0) view, never copied per token, so memory beyond the op's own does
    not grow with L * K. See the module docstring for how this relates to fairseq's
    ``LightweightConv``.

    Args:
        input_size: channels C of the input and the output.
        kernel_size: taps K (any K >= 1).
        num_heads: heads n; ``weight`` is ``[n, K]``, channels grouped into n contiguous blocks.
        padding_l: taps before the token: ``None`` is ``(K - 1) // 2`` (centred), ``K - 1`` causal.
        weight_dropout: DropConnect probability on the softmaxed kernel (training only; one mask
            per call, shared by every position, as in fairseq).
        bias: add a learned per-channel bias ``bias`` ``[C]`` to the output.
        backend: the op's backend (``"auto"``, ``"native"``, ``"triton"``, ``"eager"``, ``"reference"``).
    """

    def __init__(self, input_size: int, kernel_size: int, num_heads: int, *, padding_l: int | None = None,
                 weight_dropout: float = 0.0, bias: bool = False, backend: str = "auto"):
        super().__init__()
        self.padding_l = _check_module_args(input_size, kernel_size, num_heads, padding_l, weight_dropout, backend)
        self.input_size, self.kernel_size, self.num_heads = input_size, kernel_size, num_heads
        self.weight_dropout, self.backend = float(weight_dropout), backend
        self.weight = nn.Parameter(torch.empty(num_heads, kernel_size))
        self.bias = nn.Parameter(torch.empty(input_size)) if bias else None
        self.reset_parameters()
        load_backends(backend)

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _taps(self) -> torch.Tensor:
        """The softmaxed kernel [n, K] in float32 (float64 for a float64 module), DropConnect applied."""
        weight = self.weight if self.weight.dtype == torch.float64 else self.weight.float()
        probs = torch.softmax(weight, dim=-1)
        if self.training and self.weight_dropout > 0:
            probs = F.dropout(probs, self.weight_dropout, training=True)
        return probs

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, L, C]``; ``padding_mask`` ``[B, L]``, True (or 1) for tokens. Returns ``[B, L, C]``."""
        _check_input(x, self.input_size)
        batch, length, _ = x.shape
        if self.training and self.weight_dropout > 0:
            mask = _validation.normalize_padding_mask(padding_mask, x)
            out = window_sum(x, self._taps(), self.padding_l, mask)
        else:
            # the shared kernel as [B, L, n*K] logits without a copy: every token row is the same memory
            logits = self.weight.to(x.dtype).reshape(1, 1, -1).expand(batch, length, -1)
            out = dynamic_conv(x, logits, self.num_heads, padding_l=self.padding_l, padding_mask=padding_mask,
                               backend=self.backend)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def step(self, x_t: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoding step of the causal convolution (``padding_l = K - 1``; other offsets raise).

        ``x_t`` ``[B, C]`` or ``[B, 1, C]``; ``state`` as the previous call returned it (``[B, K - 1, C]``)
        or None. Returns ``(y_t, state)``, ``y_t`` equal to the full forward's output at that position.
        """
        window, was_3d = self._window(x_t, state)
        y = self._apply_taps(window, self._taps()[None], self.num_heads).to(window.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return (y[:, None] if was_3d else y), window[:, 1:]

    def extra_repr(self) -> str:
        return (f"{self.input_size}, kernel_size={self.kernel_size}, num_heads={self.num_heads}, "
                f"padding_l={self.padding_l}, weight_dropout={self.weight_dropout}, "
                f"bias={self.bias is not None}, backend={self.backend!r}")


__all__ = ["DynamicConv1d", "LightweightConv1d"]
