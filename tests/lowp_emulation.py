"""A float64 emulation of the GPU kernels' arithmetic at fp16 / bf16, rounding where they round.

The low-precision tolerances in ``tests/oracle.py`` are justified by this emulation: a kernel that
is exact except for its own rounding points has the emulated error, so a correct kernel on a GPU
differs from it only by accumulation order (fp32 sums in another order: a few ulps of fp32, and
now and then the last bit of a result that sits on a rounding boundary).

Everything is computed in float64; ``rnd`` rounds to the storage dtype at the points where the
kernels store or convert to it. fp32 intermediates are kept in float64 (fp32 carries 2^-24 of
relative error against bf16's 2^-8 and fp16's 2^-11: far below what these checks resolve).

``kernel="triton"`` (convbert_kernels/triton_kernels.py):
  forward   ca = q * kc formed in fp32, rounded to the input dtype (tensor-core operand); logits
            = ca @ W^T accumulated in fp32, bias added in fp32; softmax in fp32, probabilities
            saved in fp32; window sum accumulated in fp32; output rounded.
  window bw dp and d_logits in fp32 (rounded to the logits' dtype for dynamic_conv only);
            d_values accumulated in fp32, rounded.
  proj bw   d_logits rounded to the dtype before both dots; d_ca = d_logits @ W in fp32;
            d_query = d_ca * kc and d_key_conv = d_ca * q rounded; ca = q * kc rounded;
            d_weight = d_logits^T ca accumulated in fp32, rounded to the weight dtype;
            d_bias = column sums of the fp32 (unrounded) d_logits, rounded.
``kernel="native"`` (csrc/span_dynamic_conv_cuda.cu): exactly as Triton (the same rounding points:
  tensor-core operands ca and d_logits rounded, d_bias from the fp32 d_logits).
``kernel="fp32-operands"``: as above, except that ca is never rounded (the projection runs in fp32
  on q * kc in fp32) and d_logits is never rounded in the span op (the backward products take it in
  fp32).
``kernel="native-cpu"`` (csrc/span_dynamic_conv_cpu_kernels.inc): bf16 as Triton (the projection
  GEMMs take bfloat16 operands, AVX512_BF16's vdpbf16ps or its emulation, d_bias from the unrounded
  d_logits); fp16 as "fp32-operands" (no fp16 dot product on these CPUs).
Inputs and the upstream gradient arrive in the dtype already, which :func:`rounded` reproduces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

F64 = torch.float64


def rnd(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` rounded to ``dtype`` (to nearest even), returned as float64."""
    return x.to(dtype).to(F64)


def _offset(padding_l, kernel_size):
    return (kernel_size - 1) // 2 if padding_l is None else padding_l


def _windows(values, mask, num_heads, kernel_size, padding_l=None):
    """[B, L, n, K, d]: the value at t + k - padding_l for every token t and tap k (0 outside / padding)."""
    batch, length, channels = values.shape
    left = _offset(padding_l, kernel_size)
    v = values.reshape(batch, length, num_heads, channels // num_heads)
    if mask is not None:
        v = v * mask[:, :, None, None].to(F64)
    vpad = F.pad(v, (0, 0, 0, 0, left, kernel_size - 1 - left))
    return torch.stack([vpad[:, k : k + length] for k in range(kernel_size)], dim=3)


def _window_fwd(values, logits, mask, num_heads, dtype, padding_l=None):
    """(out rounded to dtype, fp32-kept probabilities [B, L, n, K])."""
    batch, length, channels = values.shape
    kernel_size = logits.shape[-1] // num_heads
    p = torch.softmax(logits.reshape(batch, length, num_heads, kernel_size), dim=-1)
    win = _windows(values, mask, num_heads, kernel_size, padding_l)
    out = torch.einsum("blnk,blnkd->blnd", p, win).reshape(batch, length, channels)
    return rnd(out, dtype), p


def _window_bwd(grad_out, values, p, mask, num_heads, dtype, padding_l=None):
    """(d_values rounded to dtype, d_logits [B, L, n*K] kept in fp32)."""
    batch, length, channels = values.shape
    kernel_size = p.shape[-1]
    left = _offset(padding_l, kernel_size)
    g = grad_out.reshape(batch, length, num_heads, channels // num_heads)
    dp = torch.einsum("blnd,blnkd->blnk", g, _windows(values, mask, num_heads, kernel_size, padding_l))
    d_logits = p * (dp - (p * dp).sum(-1, keepdim=True))
    # token t sends p[t, k] * g[t] to value position t + k - padding_l
    dv = torch.zeros(batch, length + kernel_size - 1, num_heads, g.shape[-1], dtype=F64)
    for k in range(kernel_size):
        dv[:, k : k + length] += p[..., k, None] * g
    dv = dv[:, left : left + length]
    if mask is not None:
        dv = dv * mask[:, :, None, None].to(F64)
    return rnd(dv.reshape(batch, length, channels), dtype), d_logits.reshape(batch, length, -1)


def span_dynamic_conv(query, key_conv, values, weight, bias, num_heads, mask, grad_out, dtype, kernel="triton",
                      padding_l=None):
    """Emulated ``(out, [d_query, d_key_conv, d_values, d_weight, d_bias])`` (float64 tensors).

    The tensor arguments hold the dtype's numbers already (see :func:`rounded`); ``dtype`` picks
    the rounding (``torch.float64`` disables it, ``torch.float32`` rounds to fp32).
    """
    # whether the GEMM operands ca and d_logits are rounded to the dtype (the tensor-core operands)
    rounds_operands = {"triton": True, "native": True, "fp32-operands": False,
                       "native-cpu": dtype == torch.bfloat16}[kernel]
    ca = query * key_conv
    ca_op = rnd(ca, dtype) if rounds_operands else ca  # the projection's operand
    logits = ca_op @ weight.T + (bias if bias is not None else 0.0)
    out, p = _window_fwd(values, logits, mask, num_heads, dtype, padding_l)

    d_values, d_logits = _window_bwd(grad_out, values, p, mask, num_heads, dtype, padding_l)
    dl = d_logits.reshape(-1, weight.shape[0])
    dl_op = rnd(dl, dtype) if rounds_operands else dl  # operand of both backward dots
    d_ca = (dl_op @ weight).reshape(query.shape)
    d_query = rnd(d_ca * key_conv, dtype)
    d_key_conv = rnd(d_ca * query, dtype)
    d_weight = rnd(dl_op.T @ ca_op.reshape(-1, ca.shape[-1]), dtype)
    d_bias = rnd(dl.sum(0), dtype)
    grads = [d_query, d_key_conv, d_values, d_weight] + ([d_bias] if bias is not None else [])
    return out, grads


def dynamic_conv(values, logits, num_heads, mask, grad_out, dtype, padding_l=None):
    """Emulated ``(out, [d_values, d_logits])`` of ``dynamic_conv`` (Triton and native agree)."""
    out, p = _window_fwd(values, logits, mask, num_heads, dtype, padding_l)
    d_values, d_logits = _window_bwd(grad_out, values, p, mask, num_heads, dtype, padding_l)
    return out, [d_values, rnd(d_logits, dtype)]  # d_logits is stored in the logits' dtype


def rounded(tensors, dtype):
    """Detached float64 CPU copies of ``tensors`` rounded to ``dtype`` (None stays None)."""
    return [None if t is None else rnd(t.detach().cpu().to(F64), dtype) for t in tensors]
