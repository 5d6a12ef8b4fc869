"""Input checks shared by every backend, so that bad input fails the same way everywhere."""

from __future__ import annotations

import operator

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(name: str, t: object, ndim: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def _check_same(reference_name: str, reference: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is None:
            continue
        if t.device != reference.device:
            raise ValueError(f"{name} is on {t.device} but {reference_name} is on {reference.device}")
        if t.dtype != reference.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but {reference_name} has dtype {reference.dtype}")


def check_num_heads(num_heads: object) -> int:
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    return num_heads


def check_kernel_size(kernel_size: int, what: str) -> None:
    if kernel_size < 1:
        raise ValueError(f"kernel size K must be >= 1, got K={kernel_size} {what}")


def resolve_padding_l(padding_l: object, kernel_size: int) -> int:
    """The window offset: ``None`` means ``(K - 1) // 2`` (centred); any int in ``[0, K - 1]``."""
    if padding_l is None:
        return (kernel_size - 1) // 2
    if isinstance(padding_l, bool) or not hasattr(padding_l, "__index__"):
        raise TypeError(f"padding_l must be an int in [0, K - 1] or None, got {type(padding_l).__name__}")
    padding_l = operator.index(padding_l)
    if not 0 <= padding_l <= kernel_size - 1:
        raise ValueError(
            f"padding_l must be in [0, K - 1] = [0, {kernel_size - 1}] (K={kernel_size}), got {padding_l}: "
            "0 puts every tap on the future, K - 1 on the past (causal), (K - 1) // 2 centres the window"
        )
    return padding_l


def normalize_padding_mask(padding_mask: torch.Tensor | None, values: torch.Tensor) -> torch.Tensor | None:
    """Return the mask as a bool [B, L] tensor (True = token), or None."""
    if padding_mask is None:
        return None
    _check_tensor("padding_mask", padding_mask, 2)
    if tuple(padding_mask.shape) != tuple(values.shape[:2]):
        raise ValueError(
            f"padding_mask must have shape [B, L] = {tuple(values.shape[:2])}, got {tuple(padding_mask.shape)}"
        )
    if padding_mask.device != values.device:
        raise ValueError(f"padding_mask is on {padding_mask.device} but values is on {values.device}")
    return padding_mask if padding_mask.dtype == torch.bool else padding_mask != 0


def check_dynamic_conv(values: torch.Tensor, logits: torch.Tensor, num_heads: int) -> int:
    """Validate dynamic_conv inputs; return the kernel size K."""
    check_num_heads(num_heads)
    _check_tensor("values", values, 3)
    _check_tensor("logits", logits, 3)
    if values.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"values must be a floating tensor (fp16, bf16, fp32, fp64), got {values.dtype}")
    _check_same("values", values, logits=logits)
    if tuple(logits.shape[:2]) != tuple(values.shape[:2]):
        raise ValueError(
            f"logits and values must share [B, L]: logits {tuple(logits.shape)}, values {tuple(values.shape)}"
        )
    channels = values.shape[2]
    if channels % num_heads != 0:
        raise ValueError(f"values' channel count C={channels} is not divisible by num_heads={num_heads}")
    if logits.shape[2] % num_heads != 0:
        raise ValueError(f"logits' last dimension {logits.shape[2]} is not num_heads * K (num_heads={num_heads})")
    kernel_size = logits.shape[2] // num_heads
    check_kernel_size(kernel_size, f"(logits last dim {logits.shape[2]} / num_heads {num_heads})")
    return kernel_size


def check_span_dynamic_conv(
    query: torch.Tensor,
    key_conv: torch.Tensor,
    values: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    num_heads: int,
) -> int:
    """Validate span_dynamic_conv inputs; return the kernel size K."""
    check_num_heads(num_heads)
    _check_tensor("query", query, 3)
    _check_tensor("key_conv", key_conv, 3)
    _check_tensor("values", values, 3)
    _check_tensor("weight", weight, 2)
    if bias is not None:
        _check_tensor("bias", bias, 1)
    if values.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"values must be a floating tensor (fp16, bf16, fp32, fp64), got {values.dtype}")
    _check_same("values", values, query=query, key_conv=key_conv, weight=weight, bias=bias)
    if query.shape != key_conv.shape:
        raise ValueError(f"query {tuple(query.shape)} and key_conv {tuple(key_conv.shape)} must have the same shape")
    if tuple(query.shape[:2]) != tuple(values.shape[:2]):
        raise ValueError(
            f"query and values must share [B, L]: query {tuple(query.shape)}, values {tuple(values.shape)}"
        )
    channels = values.shape[2]
    if channels % num_heads != 0:
        raise ValueError(f"values' channel count C={channels} is not divisible by num_heads={num_heads}")
    if weight.shape[1] != query.shape[2]:
        raise ValueError(f"weight must be [num_heads * K, A] with A={query.shape[2]}, got {tuple(weight.shape)}")
    if weight.shape[0] % num_heads != 0:
        raise ValueError(f"weight's first dimension {weight.shape[0]} is not num_heads * K (num_heads={num_heads})")
    kernel_size = weight.shape[0] // num_heads
    check_kernel_size(kernel_size, f"(weight rows {weight.shape[0]} / num_heads {num_heads})")
    if bias is not None and bias.shape[0] != weight.shape[0]:
        raise ValueError(f"bias must have shape [{weight.shape[0]}], got {tuple(bias.shape)}")
    return kernel_size


def _check_packed(name: str, t: object, width_name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"with cu_seqlens, {name} must be packed [T, {width_name}] (no batch dimension), "
                         f"got shape {tuple(t.shape)}")
    return t


def seq_bounds_from_cu_seqlens(cu_seqlens: object, total: int, max_seqlen: object, device: torch.device,
                               padding_mask: object) -> torch.Tensor:
    """Validate ``cu_seqlens`` (``[N+1]``, from 0, non-decreasing, ending at ``total``) and return the
    kernels' per-token bounds: int64 ``[2, total]``, each token's sequence as rows ``[start, end)``.

    On the CPU every property is checked with a clear ValueError. On a GPU, reading the values back
    would stall the stream, so they are checked by device-side assertions instead (a failure
    surfaces as a CUDA error carrying the same message at the next synchronisation).
    """
    if padding_mask is not None:
        raise ValueError("pass either padding_mask (padded [B, L] input) or cu_seqlens (packed [T] input), not both")
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"cu_seqlens must be 1-D [N + 1] with N >= 0, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but the inputs are on {device}")
    if max_seqlen is not None and (isinstance(max_seqlen, bool) or not hasattr(max_seqlen, "__index__")
                                   or operator.index(max_seqlen) < 0):
        raise ValueError(f"max_seqlen must be a non-negative int or None, got {max_seqlen!r}")
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]
    checks = (
        (cu[0] == 0, "cu_seqlens must start at 0"),
        ((lengths >= 0).all(), "cu_seqlens must be non-decreasing"),
        (cu[-1] == total, f"cu_seqlens must end at the number of packed tokens T = {total}"),
    )
    if max_seqlen is not None:
        longest = lengths.max() if lengths.numel() else cu.new_zeros(())
        checks += ((longest <= operator.index(max_seqlen), f"a sequence is longer than max_seqlen={max_seqlen}"),)
    if device.type == "cpu" and not torch.compiler.is_compiling():
        for ok, message in checks:
            if not bool(ok):
                raise ValueError(f"{message}; got cu_seqlens={cu_seqlens.tolist()[:16]}"
                                 f"{' ...' if cu_seqlens.numel() > 16 else ''}")
    else:
        for ok, message in checks:
            torch._assert_async(ok, message)
    # repeat_interleave with output_size: no device-to-host copy
    starts = torch.repeat_interleave(cu[:-1], lengths.clamp_min(0), output_size=total)
    ends = torch.repeat_interleave(cu[1:], lengths.clamp_min(0), output_size=total)
    return torch.stack([starts, ends])


def check_packed_dynamic_conv(values: object, logits: object) -> None:
    _check_packed("values", values, "C")
    _check_packed("logits", logits, "n*K")


def check_packed_span_dynamic_conv(query: object, key_conv: object, values: object) -> None:
    _check_packed("query", query, "A")
    _check_packed("key_conv", key_conv, "A")
    _check_packed("values", values, "C")
