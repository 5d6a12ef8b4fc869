"""Shared numerical oracle for every backend's tests.

Inputs of awkward shapes, the float64 reference (Hugging Face's unfold formulation) for the
forward and every gradient, and one comparison that every backend must pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import convbert_kernels as ck

# (B, L, A, C, num_heads, K): odd lengths, L < K, L = 1, K = 1 and 31, head sizes that are not
# powers of two (d = 3, 5, 12, 48), A != C.
AWKWARD_SHAPES = [
    (2, 7, 10, 12, 3, 5),
    (1, 3, 8, 6, 2, 9),
    (2, 13, 24, 48, 1, 1),
    (3, 1, 6, 10, 2, 3),
    (2, 17, 12, 36, 3, 7),
    (1, 5, 16, 16, 4, 31),
]

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@dataclass
class SpanInputs:
    query: torch.Tensor
    key_conv: torch.Tensor
    values: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    num_heads: int
    padding_mask: torch.Tensor | None

    def tensors(self) -> list[torch.Tensor]:
        ts = [self.query, self.key_conv, self.values, self.weight]
        return ts + ([self.bias] if self.bias is not None else [])

    def to(self, dtype=None, device=None) -> "SpanInputs":
        def conv(t):
            return None if t is None else t.detach().to(dtype=dtype, device=device).requires_grad_(True)

        mask = None if self.padding_mask is None else self.padding_mask.to(device=device)
        return SpanInputs(
            conv(self.query), conv(self.key_conv), conv(self.values), conv(self.weight), conv(self.bias),
            self.num_heads, mask,
        )


def make_span_inputs(
    batch, length, a_dim, channels, num_heads, kernel_size, *, dtype=torch.float32, device="cpu",
    with_bias=True, with_mask=False, non_contiguous=False, seed=0,
) -> SpanInputs:
    """Random inputs; logits land in a range where the softmax is neither flat nor one-hot."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        if non_contiguous and len(shape) == 3:
            # A transposed buffer, so the [B, L, X] view has non-unit stride on X.
            t = torch.randn(shape[0], shape[2], shape[1], generator=g).transpose(1, 2)
        else:
            t = torch.randn(*shape, generator=g)
        return (t * scale).to(dtype=dtype, device=device).requires_grad_(True)

    query = rand(batch, length, a_dim)
    key_conv = rand(batch, length, a_dim)
    values = rand(batch, length, channels)
    weight = rand(num_heads * kernel_size, a_dim, scale=a_dim**-0.5)
    bias = rand(num_heads * kernel_size, scale=0.5) if with_bias else None
    mask = None
    if with_mask:
        lengths = torch.randint(1, length + 1, (batch,), generator=g)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).to(device)
    return SpanInputs(query, key_conv, values, weight, bias, num_heads, mask)


def run_span(inputs: SpanInputs, backend: str, grad_out: torch.Tensor | None = None):
    """Forward and the gradient of <out, grad_out> for every input: (out, [grads])."""
    out = ck.span_dynamic_conv(
        inputs.query, inputs.key_conv, inputs.values, inputs.weight, inputs.bias, inputs.num_heads,
        padding_mask=inputs.padding_mask, backend=backend,
    )
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(123)).to(out)
    grads = torch.autograd.grad(out, inputs.tensors(), grad_out.to(out))
    return out.detach(), [g.detach() for g in grads]


def run_dynamic(values, logits, num_heads, padding_mask, backend, grad_out=None):
    out = ck.dynamic_conv(values, logits, num_heads, padding_mask=padding_mask, backend=backend)
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(321)).to(out)
    grads = torch.autograd.grad(out, [values, logits], grad_out.to(out))
    return out.detach(), [g.detach() for g in grads]


def assert_close_to(actual: torch.Tensor, expected64: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """|actual - expected| <= tol * max|expected| elementwise, tol by dtype (relative to the scale)."""
    tol = TOLERANCE[dtype]
    expected = expected64.to(torch.float64).cpu()
    actual = actual.to(torch.float64).cpu()
    scale = expected.abs().max().clamp_min(1e-30).item()
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3e} exceeds {tol:.0e} x scale {scale:.3e}"


GRAD_NAMES = ["d_query", "d_key_conv", "d_values", "d_weight", "d_bias"]


def check_span_backend(backend: str, inputs: SpanInputs, dtype: torch.dtype, device="cpu") -> None:
    """The backend's forward and every gradient match the float64 reference."""
    ref_out, ref_grads = run_span(inputs.to(torch.float64, "cpu"), "reference")
    out, grads = run_span(inputs.to(dtype, device), backend, grad_out=None)
    # Same upstream gradient as the reference run (run_span draws it from a fixed seed).
    assert out.dtype == dtype and out.device.type == torch.device(device).type
    assert_close_to(out, ref_out, dtype, f"{backend} forward")
    for name, g, rg in zip(GRAD_NAMES, grads, ref_grads):
        assert g.shape == rg.shape, f"{name}: shape {tuple(g.shape)} != {tuple(rg.shape)}"
        assert_close_to(g, rg, dtype, f"{backend} {name}")


def check_dynamic_backend(backend: str, shape, dtype: torch.dtype, device="cpu", with_mask=False, seed=0) -> None:
    batch, length, _a, channels, num_heads, kernel_size = shape
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, length, channels, generator=g)
    logits = torch.randn(batch, length, num_heads * kernel_size, generator=g) * 2
    mask = None
    if with_mask:
        lengths = torch.randint(1, length + 1, (batch,), generator=g)
        mask = torch.arange(length)[None, :] < lengths[:, None]

    def prep(t, dt, dev):
        return t.to(dtype=dt, device=dev).requires_grad_(True)

    ref = run_dynamic(prep(values, torch.float64, "cpu"), prep(logits, torch.float64, "cpu"), num_heads, mask, "reference")
    m = None if mask is None else mask.to(device)
    got = run_dynamic(prep(values, dtype, device), prep(logits, dtype, device), num_heads, m, backend)
    assert_close_to(got[0], ref[0], dtype, f"{backend} dynamic_conv forward")
    for name, a, b in zip(["d_values", "d_logits"], got[1], ref[1]):
        assert_close_to(a, b, dtype, f"{backend} dynamic_conv {name}")
