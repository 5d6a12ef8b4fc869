"""Shared numerical oracle for every backend's tests.

Inputs of awkward shapes, the float64 reference (Hugging Face's unfold formulation) for the
forward and every gradient, one comparison that every backend must pass, and the list of GPU
cases (shared by the GPU tests and tests/test_lowp_tolerance.py, so they cannot drift apart).

The reference runs in float64 on the inputs and the upstream gradient rounded to the tested
dtype: on the very numbers the kernel sees, so only the kernel's own arithmetic is measured.
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

# More awkward cases (the Triton GPU cases use them too).
TRITON_EXTRA_SHAPES = [
    (2, 4, 16, 24, 2, 15),  # L < K, d = 12
    (1, 1, 8, 5, 1, 31),  # L = 1, K = 31, d = 5
    (2, 6, 20, 9, 3, 1),  # K = 1, d = 3, A != C
    (1, 9, 5, 48, 1, 11),  # d = 48 (ConvBERT medium-small), A = 5 < 16
]

# Every backend, fp32: the above plus K = 31 with L > K, d = 256, d = 48 over several tiles.
MORE_SHAPES = TRITON_EXTRA_SHAPES + [
    (2, 40, 20, 7 * 3, 7, 31),  # K = 31 with L > K, d = 3
    (2, 20, 24, 12 * 4, 4, 9),  # d = 12, A != C
    (1, 37, 64, 48 * 2, 2, 9),  # d = 48
    (2, 5, 8, 256, 1, 9),  # d = 256, L < K
]

LOW_PRECISION = (torch.float16, torch.bfloat16)

# How close a backend must be to the float64 reference, by dtype.
# * float64, float32: max|out - ref| <= tol * max|ref| (elementwise against the tensor's scale).
#   1e-10 and 1e-5 leave a wide margin over the worst errors measured (fp32: 4.3e-7 Triton in the
#   interpreter, 3.9e-7 native on CPU).
# * float16, bfloat16: ||out - ref|| <= tol * ||ref|| (Frobenius norm over the whole tensor), the
#   reference computed from the inputs and upstream gradient rounded to the dtype. A kernel that is
#   exact but for its own rounding points still has errors of a few units of roundoff (fp16 2^-11,
#   bf16 2^-8); a float64 emulation of the Triton and CUDA kernels' rounding (tests/lowp_emulation.py)
#   over every low-precision case of GPU_CASES, forward and every gradient, has worst errors of
#   fp16 7.9e-4 (Triton d_key_conv) and bf16 5.4e-3 (Triton d_weight, L = 1). The tolerances are
#   those rounded up to leave a factor of 2 for the GPU's fp32 accumulation order (2.5 and 2.2);
#   tests/test_lowp_tolerance.py asserts that margin on every CI run. On CPU the eager backend
#   (autograd in the dtype, which also rounds the logits) reaches fp16 4.8e-4, bf16 4.3e-3.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.2e-2}


@dataclass
class SpanInputs:
    query: torch.Tensor
    key_conv: torch.Tensor
    values: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    num_heads: int
    padding_mask: torch.Tensor | None
    padding_l: int | None = None  # None: the centred window

    def tensors(self) -> list[torch.Tensor]:
        ts = [self.query, self.key_conv, self.values, self.weight]
        return ts + ([self.bias] if self.bias is not None else [])

    def to(self, dtype=None, device=None) -> "SpanInputs":
        def conv(t):
            return None if t is None else t.detach().to(dtype=dtype, device=device).requires_grad_(True)

        mask = None if self.padding_mask is None else self.padding_mask.to(device=device)
        return SpanInputs(
            conv(self.query), conv(self.key_conv), conv(self.values), conv(self.weight), conv(self.bias),
            self.num_heads, mask, self.padding_l,
        )


def make_span_inputs(
    batch, length, a_dim, channels, num_heads, kernel_size, *, dtype=torch.float32, device="cpu",
    with_bias=True, with_mask=False, non_contiguous=False, seed=0, padding_l=None,
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
    weight = rand(num_heads * kernel_size, a_dim, scale=max(a_dim, 1) ** -0.5)
    bias = rand(num_heads * kernel_size, scale=0.5) if with_bias else None
    mask = None
    if with_mask:
        lengths = torch.randint(1, length + 1, (batch,), generator=g)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).to(device)
    return SpanInputs(query, key_conv, values, weight, bias, num_heads, mask, padding_l)


def span_grad_out(shape) -> torch.Tensor:
    """The fixed upstream gradient (fp32, CPU) that :func:`run_span` uses by default."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(123))


def dynamic_grad_out(shape) -> torch.Tensor:
    """The fixed upstream gradient (fp32, CPU) that :func:`run_dynamic` uses by default."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(321))


def make_dynamic_inputs(shape, *, with_mask=False, seed=0):
    """(values [B, L, C], logits [B, L, n*K], mask [B, L] or None), fp32 on CPU, for ``shape``."""
    batch, length, _a, channels, num_heads, kernel_size = shape
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, length, channels, generator=g)
    logits = torch.randn(batch, length, num_heads * kernel_size, generator=g) * 2
    mask = None
    if with_mask:
        lengths = torch.randint(1, length + 1, (batch,), generator=g)
        mask = torch.arange(length)[None, :] < lengths[:, None]
    return values, logits, mask


def run_span(inputs: SpanInputs, backend: str, grad_out: torch.Tensor | None = None):
    """Forward and the gradient of <out, grad_out> for every input: (out, [grads]).

    ``grad_out`` is cast to the output's dtype (rounded, for fp16/bf16) before the backward.
    """
    out = ck.span_dynamic_conv(
        inputs.query, inputs.key_conv, inputs.values, inputs.weight, inputs.bias, inputs.num_heads,
        padding_l=inputs.padding_l, padding_mask=inputs.padding_mask, backend=backend,
    )
    if grad_out is None:
        grad_out = span_grad_out(out.shape)
    grads = torch.autograd.grad(out, inputs.tensors(), grad_out.to(out))
    return out.detach(), [g.detach() for g in grads]


def run_dynamic(values, logits, num_heads, padding_mask, backend, grad_out=None, padding_l=None):
    out = ck.dynamic_conv(values, logits, num_heads, padding_l=padding_l, padding_mask=padding_mask, backend=backend)
    if grad_out is None:
        grad_out = dynamic_grad_out(out.shape)
    grads = torch.autograd.grad(out, [values, logits], grad_out.to(out))
    return out.detach(), [g.detach() for g in grads]


def direct_dynamic_conv(values, logits, num_heads, padding_l=None, padding_mask=None):
    """The op's definition, written out as loops in float64: an oracle for the reference itself.

    ``out[b, t, h] = sum_k softmax(logits[b, t, h])[k] * values[b, t + k - padding_l, h]``, values
    zero outside ``[0, L)`` and where ``padding_mask`` is False.
    """
    batch, length, channels = values.shape
    kernel_size = logits.shape[-1] // num_heads
    padding_l = (kernel_size - 1) // 2 if padding_l is None else padding_l
    probs = torch.softmax(logits.double().reshape(batch, length, num_heads, kernel_size), dim=-1)
    v = values.double().reshape(batch, length, num_heads, channels // num_heads)
    if padding_mask is not None:
        v = v.masked_fill(~padding_mask[:, :, None, None], 0)
    out = torch.zeros_like(v)
    for t in range(length):
        for k in range(kernel_size):
            s = t + k - padding_l
            if 0 <= s < length:
                out[:, t] = out[:, t] + probs[:, t, :, k, None] * v[:, s]
    return out.reshape(batch, length, channels)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| (Frobenius, in float64): 0 where equal, NaN with NaNs."""
    actual, expected = actual.detach().cpu().double(), expected.detach().cpu().double()
    diff, ref = (actual - expected).norm().item(), expected.norm().item()
    return 0.0 if diff == 0 else diff / ref if ref else float("inf")


def assert_close_to(actual: torch.Tensor, expected64: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """``actual`` is within ``TOLERANCE[dtype]`` of the float64 ``expected64`` (metric: see TOLERANCE)."""
    tol = TOLERANCE[dtype]
    assert actual.shape == expected64.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected64.shape)}"
    if dtype in LOW_PRECISION:
        err = relative_error(actual, expected64)
        assert err <= tol, f"{what}: norm-relative error {err:.3e} exceeds {tol:.1e}"
        return
    expected = expected64.to(torch.float64).cpu()
    actual = actual.to(torch.float64).cpu()
    scale = expected.abs().max().clamp_min(1e-30).item() if expected.numel() else 0.0
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3e} exceeds {tol:.0e} x scale {scale:.3e}"


GRAD_NAMES = ["d_query", "d_key_conv", "d_values", "d_weight", "d_bias"]
DYNAMIC_GRAD_NAMES = ["d_values", "d_logits"]


def check_span_backend(backend: str, inputs: SpanInputs, dtype: torch.dtype, device="cpu") -> None:
    """The backend's forward and every gradient match the float64 reference on the rounded inputs."""
    grad_out = span_grad_out(inputs.values.shape).to(dtype)  # the kernel's (rounded) upstream gradient
    ref_out, ref_grads = run_span(inputs.to(dtype, "cpu").to(torch.float64), "reference", grad_out.double())
    out, grads = run_span(inputs.to(dtype, device), backend, grad_out.to(device))
    assert out.dtype == dtype and out.device.type == torch.device(device).type
    assert_close_to(out, ref_out, dtype, f"{backend} forward")
    for name, g, rg in zip(GRAD_NAMES, grads, ref_grads):
        assert_close_to(g, rg, dtype, f"{backend} {name}")


def check_dynamic_backend(backend: str, shape, dtype: torch.dtype, device="cpu", with_mask=False, seed=0,
                          padding_l=None) -> None:
    """``dynamic_conv``'s forward, d_values and d_logits match the float64 reference on the rounded inputs."""
    values, logits, mask = make_dynamic_inputs(shape, with_mask=with_mask, seed=seed)
    num_heads = shape[4]
    grad_out = dynamic_grad_out(values.shape).to(dtype)

    def prep(t, dt, dev):
        return t.to(dtype).to(dtype=dt, device=dev).requires_grad_(True)

    ref = run_dynamic(prep(values, torch.float64, "cpu"), prep(logits, torch.float64, "cpu"), num_heads, mask,
                      "reference", grad_out.double(), padding_l)
    m = None if mask is None else mask.to(device)
    got = run_dynamic(prep(values, dtype, device), prep(logits, dtype, device), num_heads, m, backend,
                      grad_out.to(device), padding_l)
    assert got[0].dtype == dtype
    assert_close_to(got[0], ref[0], dtype, f"{backend} dynamic_conv forward")
    for name, a, b in zip(DYNAMIC_GRAD_NAMES, got[1], ref[1]):
        assert_close_to(a, b, dtype, f"{backend} dynamic_conv {name}")


# ---- the GPU cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuCase:
    """One GPU comparison with the oracle; tests/test_lowp_tolerance.py emulates exactly this one."""

    backend: str  # "triton" or "native": also whose rounding tests/lowp_emulation.py reproduces
    op: str  # "span" (span_dynamic_conv) or "dynamic" (dynamic_conv)
    shape: tuple  # (B, L, A, C, num_heads, K)
    dtype: torch.dtype
    with_mask: bool
    seed: int
    with_bias: bool = True
    non_contiguous: bool = False
    padding_l: int | None = None  # the window offset; None: centred

    def __str__(self) -> str:
        flags = ("-mask" if self.with_mask else "") + ("" if self.with_bias else "-nobias")
        flags += "-noncontig" if self.non_contiguous else ""
        flags += "" if self.padding_l is None else f"-padl{self.padding_l}"
        dims = "x".join(map(str, self.shape))
        return f"{self.backend}-{self.op}-{str(self.dtype).removeprefix('torch.')}-{dims}{flags}-s{self.seed}"

    def span_inputs(self) -> SpanInputs:
        return make_span_inputs(*self.shape, with_mask=self.with_mask, seed=self.seed, with_bias=self.with_bias,
                                non_contiguous=self.non_contiguous, padding_l=self.padding_l)

    def check(self, device="cuda") -> None:
        if self.op == "span":
            check_span_backend(self.backend, self.span_inputs(), self.dtype, device=device)
        else:
            check_dynamic_backend(self.backend, self.shape, self.dtype, device=device, with_mask=self.with_mask,
                                  seed=self.seed, padding_l=self.padding_l)


_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BASE = (2, 300, 384, 384, 6, 9)  # ConvBERT-base dims, several token tiles
_MASKS = (False, True)

GPU_CASES = (
    [GpuCase("triton", "span", s, dt, m, seed=5) for dt in _DTYPES
     for s in AWKWARD_SHAPES + TRITON_EXTRA_SHAPES + [_BASE, (1, 129, 96, 768, 3, 31)] for m in _MASKS]
    + [GpuCase("triton", "dynamic", s, dt, True, seed=0) for dt in _DTYPES for s in AWKWARD_SHAPES + [_BASE]]
    + [GpuCase("triton", "span", (2, 70, 40, 48, 1, 9), dt, True, seed=0, with_bias=False, non_contiguous=True)
       for dt in _DTYPES]
    + [GpuCase("native", "span", s, dt, m, seed=sum(s)) for dt in _DTYPES
       for s in AWKWARD_SHAPES + [(2, 40, 20, 7 * 3, 7, 31), (2, 70, 64, 256, 1, 9)] for m in _MASKS]
    + [GpuCase("native", "dynamic", s, dt, True, seed=0) for dt in _DTYPES for s in AWKWARD_SHAPES]
    + [GpuCase("native", "span", (2, 9, 10, 12, 3, 5), dt, True, seed=0, with_bias=False, non_contiguous=True)
       for dt in _DTYPES + (torch.float64,)]
    # other window offsets (causal, all taps ahead) and even K, on both backends and both ops
    + [GpuCase(b, op, s, dt, m, seed=9, padding_l=pl) for b in ("triton", "native") for dt in _DTYPES
       for op, s, pl, m in (("span", (2, 300, 384, 384, 6, 9), 8, True), ("span", (2, 37, 20, 21, 7, 31), 0, False),
                            ("dynamic", (2, 70, 64, 256, 4, 4), 3, True), ("span", (1, 3, 8, 6, 2, 8), 7, False))]
)


def gpu_cases(backend: str) -> list[GpuCase]:
    return [c for c in GPU_CASES if c.backend == backend]
