"""The Triton backend: the kernels of :mod:`convbert_kernels.triton_kernels` as torch custom ops.

Four ops, ``convbert_kernels::triton_{span,dynamic}_{fwd,bwd}``, with the signatures, fakes and
autograd of the native backend's ``native_*`` ops (:mod:`._compiled_ops` has the contract and
registers both). ``torch.library.custom_op`` is used rather than ``triton_op``/``wrap_triton``:
the latter fails under torch.compile with the Triton interpreter on CPU tensors (the CI
configuration), while a custom op launching the same kernels works on both CPU (interpreter) and
CUDA. The price is that Inductor cannot fuse into the kernels.

Availability: CUDA devices whenever Triton imports and CUDA is present; CPU devices only when
``TRITON_INTERPRET=1`` was set before Triton was imported. Importing this module raises if Triton
is missing; the registry records that as the reason the backend is unavailable.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _compiled_ops as _contract
from . import triton_kernels as _k

# ---- the ops: check as the native ops do, then launch ------------------------------------------


@torch.library.custom_op(f"{_contract.NAMESPACE}::triton_span_fwd", mutates_args=())
def triton_span_fwd(
    query: Tensor, key_conv: Tensor, values: Tensor, weight: Tensor, bias: Optional[Tensor],
    num_heads: int, padding_l: int, padding_mask: Optional[Tensor], seq_bounds: Optional[Tensor], save_probs: bool,
) -> tuple[Tensor, Tensor]:
    _contract.check_span_fwd(query, key_conv, values, weight, bias, num_heads, padding_l, padding_mask, seq_bounds)
    return _k.span_forward(query, key_conv, values, weight, bias, num_heads, padding_l, padding_mask, seq_bounds,
                           save_probs)


@torch.library.custom_op(f"{_contract.NAMESPACE}::triton_span_bwd", mutates_args=())
def triton_span_bwd(
    grad_out: Tensor, query: Tensor, key_conv: Tensor, values: Tensor, weight: Tensor, probs: Tensor,
    num_heads: int, padding_l: int, padding_mask: Optional[Tensor], seq_bounds: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    _contract.check_span_bwd(grad_out, query, key_conv, values, weight, probs, num_heads, padding_l, padding_mask,
                             seq_bounds)
    return _k.span_backward(grad_out, query, key_conv, values, weight, probs, num_heads, padding_l, padding_mask,
                            seq_bounds)


@torch.library.custom_op(f"{_contract.NAMESPACE}::triton_dynamic_fwd", mutates_args=())
def triton_dynamic_fwd(
    values: Tensor, logits: Tensor, num_heads: int, padding_l: int, padding_mask: Optional[Tensor],
    seq_bounds: Optional[Tensor], save_probs: bool,
) -> tuple[Tensor, Tensor]:
    _contract.check_dynamic_fwd(values, logits, num_heads, padding_l, padding_mask, seq_bounds)
    return _k.dynamic_forward(values, logits, num_heads, padding_l, padding_mask, seq_bounds, save_probs)


@torch.library.custom_op(f"{_contract.NAMESPACE}::triton_dynamic_bwd", mutates_args=())
def triton_dynamic_bwd(
    grad_out: Tensor, values: Tensor, probs: Tensor, num_heads: int, padding_l: int, padding_mask: Optional[Tensor],
    seq_bounds: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    _contract.check_dynamic_bwd(grad_out, values, probs, num_heads, padding_l, padding_mask, seq_bounds)
    return _k.window_backward(grad_out, values, probs, num_heads, padding_l, padding_mask, seq_bounds, values.dtype)


# ---- the backend ------------------------------------------------------------------------------


def is_available(device: torch.device) -> bool:
    """CUDA devices when CUDA works (asked each time, not at import); CPU devices only under the
    Triton interpreter."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "cpu":
        return _k.INTERPRET
    return False


BACKEND = _contract.make_backend("triton", is_available)
