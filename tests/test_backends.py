"""Every backend against the float64 oracle: one suite, parametrised over backend x dtype x shape.

Forward and every gradient at awkward shapes, with and without padding masks, no bias and
non-contiguous inputs, gradcheck, bitwise determinism; for the two compiled backends also
opcheck, fakes that refuse what the real ops refuse, and probabilities saved only for a backward.
What one backend alone has (Triton's tiling paths and torch.compile, the native build and thread
counts) lives in test_triton.py and test_native.py.

On CPU the Triton backend runs through the interpreter (``TRITON_INTERPRET=1``, set by
scripts/test.sh on machines without a GPU) and skips without it, saying so; it has no bfloat16
there. The native backend must load: a failed build fails these tests.
"""

from __future__ import annotations

import os

import pytest
import torch

import convbert_kernels as ck
from oracle import (
    AWKWARD_SHAPES,
    DYNAMIC_GRAD_NAMES,
    GRAD_NAMES,
    MORE_SHAPES,
    assert_close_to,
    check_dynamic_backend,
    check_span_backend,
    direct_dynamic_conv,
    gpu_cases,
    make_dynamic_inputs,
    make_span_inputs,
    run_span,
)

COMPILED = ("triton", "native")
# what each backend is checked in on CPU (reference is the oracle; it is checked by gradcheck)
CPU_DTYPES = {
    "eager": (torch.float64, torch.float32, torch.float16, torch.bfloat16),
    "triton": (torch.float64, torch.float32, torch.float16),  # the interpreter has no bfloat16
    "native": (torch.float64, torch.float32, torch.float16, torch.bfloat16),
}
ALL_BACKENDS = ["reference", *CPU_DTYPES]
BACKEND_DTYPES = [pytest.param(b, dt, id=f"{b}-{str(dt).removeprefix('torch.')}")
                  for b, dts in CPU_DTYPES.items() for dt in dts]


def require(backend: str, device: str = "cpu") -> None:
    """Skip where the backend cannot run here by design; fail where it should and does not."""
    if backend == "triton":
        pytest.importorskip("triton", reason="the Triton backend needs the triton package")
        if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton kernels run on CPU only under the interpreter: set TRITON_INTERPRET=1 before "
                        "triton is imported (scripts/test.sh does so on machines without a GPU)")
    assert ck.backend_load_error(backend) is None, f"{backend} failed to load: {ck.backend_load_error(backend)}"
    assert backend in ck.available_backends(device), f"{backend} is not available for {device}"


# ---- forward and every gradient against the oracle ----------------------------------------------


@pytest.mark.parametrize("backend, dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("shape", AWKWARD_SHAPES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_span_matches_oracle(backend, dtype, shape, with_mask):
    require(backend)
    check_span_backend(backend, make_span_inputs(*shape, with_mask=with_mask, seed=sum(shape)), dtype)


@pytest.mark.parametrize("backend, dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("shape", AWKWARD_SHAPES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_dynamic_matches_oracle(backend, dtype, shape, with_mask):
    require(backend)
    check_dynamic_backend(backend, shape, dtype, with_mask=with_mask, seed=3)


# (B, L, A, C, num_heads, K): K even, L < K, L = 1, K = 1, d not a power of two
WINDOW_SHAPES = [(2, 7, 10, 12, 3, 5), (1, 3, 8, 6, 2, 4), (3, 1, 6, 10, 2, 3), (2, 11, 12, 15, 3, 8), (2, 6, 5, 9, 3, 1)]


def _offsets(kernel_size):
    """Every window offset from 0 (all taps ahead) to K - 1 (causal), the centred one (None) included."""
    return [None, *range(kernel_size)]


@pytest.mark.parametrize("shape", WINDOW_SHAPES, ids=str)
def test_reference_matches_the_definition_at_every_offset(shape):
    """The oracle itself: the unfold formulation equals the op's definition written as loops."""
    values, logits, mask = make_dynamic_inputs(shape, with_mask=True, seed=4)
    for padding_l in _offsets(shape[5]):
        for m in (None, mask):
            got = ck.dynamic_conv(values.double(), logits.double(), shape[4], padding_l=padding_l, padding_mask=m,
                                  backend="reference")
            want = direct_dynamic_conv(values, logits, shape[4], padding_l, m)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend, dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("shape", WINDOW_SHAPES, ids=str)
def test_every_window_offset_matches_oracle(backend, dtype, shape):
    """padding_l in [0, K - 1] (causal included), K even or odd, with and without a mask: forward and
    every gradient of both ops against the float64 reference."""
    require(backend)
    for i, padding_l in enumerate(_offsets(shape[5])):
        with_mask = i % 2 == 1
        inputs = make_span_inputs(*shape, with_mask=with_mask, seed=i, padding_l=padding_l)
        check_span_backend(backend, inputs, dtype)
        check_dynamic_backend(backend, shape, dtype, with_mask=not with_mask, seed=i, padding_l=padding_l)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_causal_window_never_reads_the_future(backend):
    """With padding_l = K - 1, output t and every gradient reaching t depend on tokens <= t only."""
    require(backend)
    values, logits, _ = make_dynamic_inputs((1, 9, 0, 6, 2, 4), seed=1)
    out = ck.dynamic_conv(values, logits, 2, padding_l=3, backend=backend)
    changed = values.clone()
    changed[:, 5:] = torch.randn(1, 4, 6)  # the future of token 4
    out_changed = ck.dynamic_conv(changed, logits, 2, padding_l=3, backend=backend)
    assert torch.equal(out[:, :5], out_changed[:, :5])
    assert not torch.equal(out[:, 5:], out_changed[:, 5:])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("padding_l", [-1, 5, 2.0, True], ids=str)
def test_bad_padding_l_is_a_clear_error(backend, padding_l):
    require(backend)
    values, logits, _ = make_dynamic_inputs((1, 6, 0, 6, 2, 5))
    with pytest.raises((ValueError, TypeError), match="padding_l"):
        ck.dynamic_conv(values, logits, 2, padding_l=padding_l, backend=backend)
    inputs = make_span_inputs(1, 6, 4, 6, 2, 5)
    with pytest.raises((ValueError, TypeError), match="padding_l"):
        ck.span_dynamic_conv(*inputs.tensors(), 2, padding_l=padding_l, backend=backend)


# ---- packed sequences (cu_seqlens) ---------------------------------------------------------------

# (lengths of the packed sequences, C, num_heads, K): empty sequences, L = 1, L < K, even K, K = 1
PACKED_CASES = [([3, 0, 1, 7, 2], 12, 3, 5), ([9], 6, 2, 4), ([0, 4, 4, 0], 10, 2, 1), ([2, 17, 5], 15, 3, 7)]


def _cu_seqlens(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def _per_sequence_reference(fn, packed, lengths, grad_out):
    """Each sequence alone through the float64 reference, outputs concatenated; the gradients of
    <out, grad_out> for every packed input (shared parameters summed over the sequences)."""
    leaves = [t.detach().double().requires_grad_(True) for t in packed]
    outs, start = [], 0
    for n in lengths:
        outs.append(fn(*(t[start:start + n][None] if t.dim() == 2 and t.shape[0] == sum(lengths) else t
                         for t in leaves))[0])
        start += n
    out = torch.cat(outs)
    return out, torch.autograd.grad(out, leaves, grad_out.double())


@pytest.mark.parametrize("backend, dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("case", PACKED_CASES, ids=str)
def test_packed_sequences_equal_each_sequence_alone(backend, dtype, case):
    """cu_seqlens: both ops, forward and every gradient, at three window offsets, equal each sequence
    run alone by the float64 reference (on the inputs rounded to the dtype)."""
    require(backend)
    check_packed(backend, dtype, case)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", PACKED_CASES + [([300, 0, 1, 211, 9], 384, 6, 9)], ids=str)
def test_gpu_packed_sequences_equal_each_sequence_alone(backend, dtype, case):
    require(backend, "cuda")
    check_packed(backend, dtype, case, device="cuda")


def check_packed(backend, dtype, case, device="cpu"):
    lengths, channels, num_heads, kernel_size = case
    total, a_dim = sum(lengths), 6
    cu = _cu_seqlens(lengths)
    g = torch.Generator().manual_seed(len(lengths))

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    for padding_l in sorted({0, (kernel_size - 1) // 2, kernel_size - 1}):
        values, logits = rand(total, channels), rand(total, num_heads * kernel_size, scale=2)
        grad_out = rand(total, channels)
        want, want_grads = _per_sequence_reference(
            lambda v, lg: ck.dynamic_conv(v, lg, num_heads, padding_l=padding_l, backend="reference"),
            [values, logits], lengths, grad_out)
        leaves = [t.to(device).requires_grad_(True) for t in (values, logits)]
        got = ck.dynamic_conv(*leaves, num_heads, padding_l=padding_l, cu_seqlens=cu.to(device),
                              max_seqlen=max(lengths), backend=backend)
        got_grads = torch.autograd.grad(got, leaves, grad_out.to(device))
        assert_close_to(got, want, dtype, f"{backend} packed dynamic_conv forward, padding_l={padding_l}")
        for name, a, b in zip(DYNAMIC_GRAD_NAMES, got_grads, want_grads):
            assert_close_to(a, b, dtype, f"{backend} packed dynamic_conv {name}, padding_l={padding_l}")

        span = [rand(total, a_dim), rand(total, a_dim), values, rand(num_heads * kernel_size, a_dim, scale=0.4),
                rand(num_heads * kernel_size, scale=0.5)]
        want, want_grads = _per_sequence_reference(
            lambda q, kc, v, w, b: ck.span_dynamic_conv(q, kc, v, w, b, num_heads, padding_l=padding_l,
                                                        backend="reference"),
            span, lengths, grad_out)
        leaves = [t.to(device).requires_grad_(True) for t in span]
        got = ck.span_dynamic_conv(*leaves, num_heads, padding_l=padding_l, cu_seqlens=cu.long().to(device),
                                   backend=backend)
        got_grads = torch.autograd.grad(got, leaves, grad_out.to(device))
        assert_close_to(got, want, dtype, f"{backend} packed span forward, padding_l={padding_l}")
        for name, a, b in zip(GRAD_NAMES, got_grads, want_grads):
            assert_close_to(a, b, dtype, f"{backend} packed span {name}, padding_l={padding_l}")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_packed_sequences_never_read_their_neighbours(backend):
    """Changing one sequence (even to inf) changes no other sequence's outputs or gradients."""
    require(backend)
    cu = _cu_seqlens([4, 3, 5])
    values, logits = torch.randn(12, 6), torch.randn(12, 2 * 5)
    out = ck.dynamic_conv(values, logits, 2, cu_seqlens=cu, backend=backend)
    changed = values.clone()
    changed[4:7] = float("inf")
    out_changed = ck.dynamic_conv(changed, logits, 2, cu_seqlens=cu, backend=backend)
    assert torch.equal(out[:4], out_changed[:4]) and torch.equal(out[7:], out_changed[7:])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("cu, match", [
    (torch.tensor([1, 4, 12]), "start at 0"),
    (torch.tensor([0, 8, 4, 12]), "non-decreasing"),
    (torch.tensor([0, 4, 11]), "end at the number of packed tokens"),
    (torch.tensor([[0, 12]]), "1-D"),
    (torch.tensor([0.0, 12.0]), "int32 or int64"),
], ids=["start", "decreasing", "end", "2-D", "float"])
def test_malformed_cu_seqlens_is_a_clear_error(backend, cu, match):
    require(backend)
    values, logits = torch.randn(12, 6), torch.randn(12, 2 * 5)
    with pytest.raises(ValueError, match=match):
        ck.dynamic_conv(values, logits, 2, cu_seqlens=cu, backend=backend)


def test_packed_input_errors():
    values, logits, cu = torch.randn(12, 6), torch.randn(12, 10), _cu_seqlens([5, 7])
    with pytest.raises(ValueError, match="not both"):
        ck.dynamic_conv(values, logits, 2, cu_seqlens=cu, padding_mask=torch.ones(1, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"packed \[T, C\]"):
        ck.dynamic_conv(values[None], logits[None], 2, cu_seqlens=cu)
    with pytest.raises(ValueError, match="longer than max_seqlen=6"):
        ck.dynamic_conv(values, logits, 2, cu_seqlens=cu, max_seqlen=6)
    q = torch.randn(12, 4)
    with pytest.raises(ValueError, match="query"):
        ck.span_dynamic_conv(q[None], q, values, torch.randn(10, 4), None, 2, cu_seqlens=cu)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", COMPILED)
def test_gpu_packed_sequences_never_synchronise(backend):
    """No device-to-host copy on the packed path (torch's sync debug mode raises on one)."""
    require(backend, "cuda")
    cu = _cu_seqlens([300, 0, 1, 211]).cuda()
    inputs = [torch.randn(512, 384, device="cuda", requires_grad=True) for _ in range(3)]
    weight = torch.randn(6 * 9, 384, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = ck.span_dynamic_conv(*inputs, weight, None, 6, cu_seqlens=cu, max_seqlen=300, backend=backend)
        out.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(inputs[0].grad).all()


@pytest.mark.parametrize("backend", CPU_DTYPES)
@pytest.mark.parametrize("shape", MORE_SHAPES)
def test_more_shapes_fp32(backend, shape):
    require(backend)
    check_span_backend(backend, make_span_inputs(*shape, with_mask=True, seed=7), torch.float32)
    check_span_backend(backend, make_span_inputs(*shape, with_mask=False, seed=8), torch.float32)
    check_dynamic_backend(backend, shape, torch.float32, with_mask=True)


@pytest.mark.parametrize("backend, dtype", BACKEND_DTYPES)
def test_no_bias_and_non_contiguous(backend, dtype):
    require(backend)
    inputs = make_span_inputs(2, 9, 10, 12, 3, 5, with_bias=False, with_mask=True, non_contiguous=True)
    # a transposed weight and a strided mask as well
    inputs.weight = inputs.weight.detach().t().contiguous().t().requires_grad_(True)
    inputs.padding_mask = torch.cat([inputs.padding_mask, inputs.padding_mask], dim=1)[:, ::2]
    assert not inputs.values.is_contiguous() and not inputs.query.is_contiguous()
    assert not inputs.weight.is_contiguous() and not inputs.padding_mask.is_contiguous()
    check_span_backend(backend, inputs, dtype)


@pytest.mark.parametrize("backend", CPU_DTYPES)
def test_non_contiguous_grad_out_and_logits(backend):
    require(backend)
    inputs = make_span_inputs(2, 7, 10, 12, 3, 5, with_mask=True)
    g = torch.randn(2, 12, 7).transpose(1, 2)  # a non-contiguous upstream gradient
    out_a, grads_a = run_span(inputs, backend, grad_out=g)
    out_b, grads_b = run_span(inputs, backend, grad_out=g.contiguous())
    assert torch.equal(out_a, out_b)
    for a, b in zip(grads_a, grads_b):
        assert torch.equal(a, b)
    values = torch.randn(2, 12, 7).transpose(1, 2).requires_grad_(True)
    logits = torch.randn(2, 15, 7).transpose(1, 2).requires_grad_(True)
    out = ck.dynamic_conv(values, logits, 3, backend=backend)
    dv, dl = torch.autograd.grad(out, [values, logits], g)
    v64, l64 = (t.detach().double().requires_grad_(True) for t in (values, logits))
    ref = ck.dynamic_conv(v64, l64, 3, backend="reference")
    rdv, rdl = torch.autograd.grad(ref, [v64, l64], g.double())
    for got, want, what in ((out, ref, "forward"), (dv, rdv, "d_values"), (dl, rdl, "d_logits")):
        assert_close_to(got, want, torch.float32, f"{backend} non-contiguous dynamic_conv {what}")


@pytest.mark.parametrize("backend", ["reference", *CPU_DTYPES])
@pytest.mark.parametrize("shape", [(2, 5, 6, 6, 2, 3), (1, 2, 4, 9, 3, 5), (2, 4, 3, 4, 2, 1)])
def test_gradcheck_float64(backend, shape):
    require(backend)
    inputs = make_span_inputs(*shape, dtype=torch.float64, with_mask=True)
    mask = inputs.padding_mask
    # the interpreter runs each of the full check's ~500 launches slowly: a random projection there
    fast = backend == "triton"

    def span(q, kc, v, w, b):
        return ck.span_dynamic_conv(q, kc, v, w, b, inputs.num_heads, padding_mask=mask, backend=backend)

    assert torch.autograd.gradcheck(span, tuple(inputs.tensors()), fast_mode=fast)
    logits = torch.randn(shape[0], shape[1], shape[4] * shape[5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, lg: ck.dynamic_conv(v, lg, inputs.num_heads, padding_mask=mask, backend=backend),
        (inputs.values, logits), fast_mode=fast,
    )


@pytest.mark.parametrize("backend", CPU_DTYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_gradients_bitwise_deterministic(backend, dtype):
    """Two runs give the same bits, over several token tiles and weight-gradient partials."""
    require(backend)
    inputs = make_span_inputs(3, 300, 16, 24, 3, 9, with_mask=True, seed=11).to(dtype)
    out1, grads1 = run_span(inputs, backend)
    out2, grads2 = run_span(inputs, backend)
    assert torch.equal(out1, out2)
    for a, b in zip(grads1, grads2):
        assert torch.equal(a, b), "gradients differ bitwise between two runs"


@pytest.mark.parametrize("backend", ["reference", *CPU_DTYPES])
def test_padding_mask_zeroes_padded_values(backend):
    require(backend)
    inputs = make_span_inputs(1, 6, 4, 4, 1, 3)
    mask = torch.tensor([[True, True, True, False, False, False]])
    masked = ck.span_dynamic_conv(*inputs.tensors(), 1, padding_mask=mask, backend=backend)
    values = inputs.values.detach().clone()
    values[:, 3:] = 0
    zeroed = ck.span_dynamic_conv(inputs.query, inputs.key_conv, values, inputs.weight, inputs.bias, 1,
                                  backend=backend)
    torch.testing.assert_close(masked, zeroed)
    (d_values,) = torch.autograd.grad(masked.sum(), [inputs.values])
    assert d_values[:, 3:].abs().max() == 0
    # and the padding changes the output next to it (the mask is not a no-op)
    plain = ck.span_dynamic_conv(*inputs.tensors(), 1, backend=backend)
    assert (plain[0, 2] - masked[0, 2]).abs().max() > 1e-4


@pytest.mark.parametrize("backend", ["reference", *CPU_DTYPES])
def test_ignores_an_enclosing_autocast(backend):
    """The ops take one dtype; internal GEMMs must not be re-cast by an autocast region around them."""
    require(backend)
    inputs = make_span_inputs(2, 9, 16, 16, 2, 5, seed=7)
    plain = ck.span_dynamic_conv(*inputs.tensors(), 2, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ck.span_dynamic_conv(*inputs.tensors(), 2, backend=backend)
        inside.sum().backward()
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=1e-6, atol=1e-6)
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in inputs.tensors())


# ---- edge cases: one documented answer on every backend -----------------------------------------

ALL = ["reference", *CPU_DTYPES]


@pytest.mark.parametrize("backend", ALL)
def test_padded_values_are_zeros_even_when_inf_or_nan(backend):
    require(backend)
    inputs = make_span_inputs(2, 8, 6, 6, 2, 3, seed=5)
    mask = torch.tensor([[True] * 5 + [False] * 3, [True] * 8])
    poisoned = inputs.values.detach().clone()
    poisoned[0, 5], poisoned[0, 6] = float("inf"), float("nan")
    zeroed = inputs.values.detach().clone()
    zeroed[0, 5:] = 0
    args = (inputs.query, inputs.key_conv)
    got = ck.span_dynamic_conv(*args, poisoned, inputs.weight, inputs.bias, 2, padding_mask=mask, backend=backend)
    want = ck.span_dynamic_conv(*args, zeroed, inputs.weight, inputs.bias, 2, padding_mask=mask, backend=backend)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", ALL)
def test_all_minus_inf_logits_give_nan_as_softmax_does(backend):
    require(backend)
    values = torch.randn(1, 6, 4)
    logits = torch.randn(1, 6, 2 * 3)
    logits[0, 2, :3] = float("-inf")  # every tap of head 0 at token 2
    out = ck.dynamic_conv(values, logits, 2, backend=backend)
    assert torch.isnan(out[0, 2, :2]).all()  # head 0 of token 2
    assert torch.isfinite(out[0, 2, 2:]).all() and torch.isfinite(out[0, [0, 1, 3, 4, 5]]).all()


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("shape", [(0, 5, 4, 6, 2, 3), (2, 0, 4, 6, 2, 3), (2, 5, 4, 0, 2, 3), (2, 5, 0, 6, 2, 3)],
                         ids=["B=0", "L=0", "C=0", "A=0"])
def test_empty_dimensions(backend, shape):
    """Empty outputs and gradients of the right shapes; with A = 0 the logits are the bias alone,
    and d_bias still flows."""
    require(backend)
    inputs = make_span_inputs(*shape, dtype=torch.float64 if backend != "triton" else torch.float32, seed=2)
    dtype = inputs.values.dtype
    got_out, got_grads = run_span(inputs, backend)
    ref_out, ref_grads = run_span(inputs.to(torch.float64), "reference")
    assert got_out.shape == (shape[0], shape[1], shape[3])
    assert_close_to(got_out, ref_out, dtype, f"{backend} forward")
    for name, got, want in zip(GRAD_NAMES, got_grads, ref_grads):
        assert_close_to(got, want, dtype, f"{backend} {name}")


@pytest.mark.parametrize("backend", ALL)
def test_second_order_gradients_or_a_clear_error(backend):
    require(backend)
    inputs = make_span_inputs(1, 4, 3, 4, 2, 3, dtype=torch.float64, seed=1)

    def span(*tensors):
        return ck.span_dynamic_conv(*tensors, 2, backend=backend)

    if backend in COMPILED:
        out = span(*inputs.tensors())
        with pytest.raises(RuntimeError, match="second-order"):
            torch.autograd.grad(out.square().sum(), inputs.tensors(), create_graph=True)
    else:
        assert torch.autograd.gradgradcheck(span, tuple(inputs.tensors()))


# ---- the compiled backends' ops: one contract (convbert_kernels/_compiled_ops.py) ----------------


def _ops(backend):
    ops = torch.ops.convbert_kernels
    return {name: getattr(ops, f"{backend}_{name}") for name in ("span_fwd", "span_bwd", "dynamic_fwd", "dynamic_bwd")}


@pytest.mark.parametrize("backend", COMPILED)
def test_opcheck(backend):
    require(backend)
    op = _ops(backend)
    inputs = make_span_inputs(2, 5, 6, 6, 2, 3, with_mask=True)
    span_args = (*inputs.tensors(), 2, 1, inputs.padding_mask, None)  # K = 3, centred (padding_l = 1)
    torch.library.opcheck(op["span_fwd"], (*span_args, True))
    torch.library.opcheck(op["span_fwd"], (*span_args[:4], None, 2, 2, None, None, True))  # causal
    torch.library.opcheck(op["span_fwd"], (*(t.detach() for t in inputs.tensors()), 2, 0, None, None, False))
    _out, probs = op["span_fwd"](*span_args, True)
    g = torch.randn(2, 5, 6)
    plain = [t.detach() for t in inputs.tensors()[:4]]
    torch.library.opcheck(op["span_bwd"], (g, *plain, probs, 2, 1, inputs.padding_mask, None))
    logits = torch.randn(2, 5, 6, requires_grad=True)
    torch.library.opcheck(op["dynamic_fwd"], (inputs.values, logits, 2, 2, inputs.padding_mask, None, True))
    torch.library.opcheck(op["dynamic_fwd"], (inputs.values.detach(), logits.detach(), 2, 0, None, None, False))
    _out, probs = op["dynamic_fwd"](inputs.values, logits, 2, 2, None, None, True)
    torch.library.opcheck(op["dynamic_bwd"], (g, inputs.values.detach(), probs, 2, 2, None, None))
    # packed sequences: per-token bounds of the sequences [0, 4) and [4, 10) of one [1, 10] row
    bounds = torch.tensor([[0] * 4 + [4] * 6, [4] * 4 + [10] * 6])
    packed = [t.detach().reshape(1, 10, -1).requires_grad_(True) for t in inputs.tensors()[:3]] + inputs.tensors()[3:]
    torch.library.opcheck(op["span_fwd"], (*packed, 2, 2, None, bounds, True))
    _out, probs = op["span_fwd"](*packed, 2, 2, None, bounds, True)
    torch.library.opcheck(op["span_bwd"], (g.reshape(1, 10, 6), *(t.detach() for t in packed[:4]), probs, 2, 2,
                                           None, bounds))


@pytest.mark.parametrize("backend", COMPILED)
def test_probs_saved_only_for_a_backward_and_not_differentiable(backend):
    require(backend)
    op = _ops(backend)
    inputs = make_span_inputs(2, 7, 10, 12, 3, 5, with_mask=True)
    args = (*inputs.tensors(), 3, 2, inputs.padding_mask, None)
    _out, probs = op["span_fwd"](*args, True)
    assert probs.shape == (2, 7, 3, 5) and probs.dtype == torch.float32 and not probs.requires_grad
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 7, 3))
    with torch.no_grad():
        out = ck.span_dynamic_conv(*inputs.tensors(), 3, padding_mask=inputs.padding_mask, backend=backend)
        ref = ck.span_dynamic_conv(*(t.double() for t in inputs.tensors()), 3, padding_mask=inputs.padding_mask,
                                   backend="reference")
        _, unsaved = op["span_fwd"](*args, False)
        _, unsaved_dynamic = op["dynamic_fwd"](inputs.values, torch.randn(2, 7, 15), 3, 2, None, None, False)
    assert unsaved.numel() == 0 and unsaved_dynamic.numel() == 0
    assert_close_to(out, ref, torch.float32, "no-grad forward")


@pytest.mark.parametrize("backend", COMPILED)
def test_eager_autograd_path_equals_the_ops_registered_autograd(backend):
    """The backend's eager calls use plain autograd.Functions (no torch.library wrapper per call);
    the ops called directly, and torch.compile, use the ops' registered autograd. Both run the same
    ops with the same saved tensors: identical outputs and gradients, bit for bit, and the same
    refusal of second-order gradients."""
    require(backend)
    op = _ops(backend)
    backend_impl = ck.backends.resolve_backend(backend, torch.device("cpu"))
    inputs = make_span_inputs(2, 9, 10, 12, 3, 5, with_mask=True, seed=5)
    g = torch.randn(2, 9, 12)
    for bias in (inputs.bias, None):
        leaves = [t.detach().requires_grad_(True) for t in (*inputs.tensors()[:4], *([bias] if bias is not None else []))]
        q, kc, v, w, *b = leaves
        b = b[0] if b else None
        via_function = backend_impl.span_dynamic_conv(q, kc, v, w, b, 3, 2, inputs.padding_mask)
        grads_function = torch.autograd.grad(via_function, leaves, g)
        via_op = op["span_fwd"](q, kc, v, w, b, 3, 2, inputs.padding_mask, None, True)[0]
        grads_op = torch.autograd.grad(via_op, leaves, g)
        assert torch.equal(via_function, via_op)
        for got, want in zip(grads_function, grads_op):
            assert torch.equal(got, want)
    logits = torch.randn(2, 9, 15, requires_grad=True)
    values = inputs.values.detach().requires_grad_(True)
    via_function = backend_impl.dynamic_conv(values, logits, 3, 2, inputs.padding_mask)
    via_op = op["dynamic_fwd"](values, logits, 3, 2, inputs.padding_mask, None, True)[0]
    assert torch.equal(via_function, via_op)
    for got, want in zip(torch.autograd.grad(via_function, (values, logits), g),
                         torch.autograd.grad(via_op, (values, logits), g)):
        assert torch.equal(got, want)
    for out in (backend_impl.dynamic_conv(values, logits, 3, 2),
                op["dynamic_fwd"](values, logits, 3, 2, None, None, True)[0]):
        with pytest.raises(RuntimeError, match="second-order"):
            torch.autograd.grad(out.square().sum(), (values, logits), create_graph=True)


def _bad_calls(backend):
    """(what is wrong, op, args): calls every backend's ops must refuse, real or fake."""
    op = _ops(backend)
    q, kc, v, w, b = (t.detach() for t in make_span_inputs(2, 7, 10, 12, 3, 5).tensors())
    probs = torch.rand(2, 7, 3, 5)
    return [
        ("padding_l = K", op["span_fwd"], (q, kc, v, w, b, 3, 5, None, None, True)),
        ("C not divisible by heads", op["span_fwd"], (q, kc, v[..., :11], w, b, 3, 2, None, None, True)),
        ("weight dtype", op["span_fwd"], (q, kc, v, w.double(), b, 3, 2, None, None, True)),
        ("bias shape", op["span_fwd"], (q, kc, v, w, b[:5], 3, 2, None, None, True)),
        ("mask shape", op["span_fwd"], (q, kc, v, w, b, 3, 2, torch.ones(2, 6, dtype=torch.bool), None, True)),
        ("query shape", op["span_fwd"], (q[:, :5], kc[:, :5], v, w, b, 3, 2, None, None, True)),
        ("logits B/L", op["dynamic_fwd"], (v, torch.randn(2, 6, 15), 3, 2, None, None, True)),
        ("logits not n*K", op["dynamic_fwd"], (v, torch.randn(2, 7, 14), 3, 2, None, None, True)),
        ("padding_l < 0 (dynamic)", op["dynamic_fwd"], (v, torch.randn(2, 7, 15), 3, -1, None, None, True)),
        ("padding_l = K (backward)", op["dynamic_bwd"], (v, v, probs, 3, 5, None, None)),
        ("probs dtype", op["dynamic_bwd"], (v, v, probs.double(), 3, 2, None, None)),
        ("probs not saved", op["span_bwd"], (v, q, kc, v, w, torch.empty(0), 3, 2, None, None)),
        ("grad_out shape", op["span_bwd"], (v[:, :5], q, kc, v, w, probs, 3, 2, None, None)),
        ("seq_bounds dtype", op["dynamic_fwd"], (v, torch.randn(2, 7, 15), 3, 2, None,
                                                 torch.zeros(2, 14, dtype=torch.int32), True)),
        ("seq_bounds shape", op["span_bwd"], (v, q, kc, v, w, probs, 3, 2, None, torch.zeros(2, 7, dtype=torch.long))),
    ]


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("index", range(15))
def test_fakes_refuse_what_the_ops_refuse(backend, index):
    """A traced (fake-tensor) call fails where a real one does: the fakes check what the kernels do."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    require(backend)
    what, op, args = _bad_calls(backend)[index]
    with pytest.raises(RuntimeError):
        op(*args)
    mode = FakeTensorMode()
    fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
    with mode, pytest.raises(RuntimeError):
        op(*fake_args)


# ---- GPU ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("case", gpu_cases("triton") + gpu_cases("native"), ids=str)
def test_gpu_matches_oracle(case):
    """fp32/fp16/bf16 (and fp64 native), span and dynamic_conv, masks, no bias, non-contiguous: the
    cases of oracle.GPU_CASES, whose fp16/bf16 tolerances tests/test_lowp_tolerance.py checks on CPU."""
    require(case.backend, "cuda")
    case.check(device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_gradients_bitwise_deterministic(backend, dtype):
    require(backend, "cuda")
    for shape in [(4, 257, 384, 384, 6, 9), (4, 600, 64, 96, 2, 9)]:  # ConvBERT-base; many weight partials
        inputs = make_span_inputs(*shape, with_mask=True, seed=13).to(dtype, "cuda")
        first = run_span(inputs, backend)
        second = run_span(inputs, backend)
        assert torch.equal(first[0], second[0])
        for a, b in zip(first[1], second[1]):
            assert torch.equal(a, b), f"{shape}: gradients differ bitwise between two runs"
