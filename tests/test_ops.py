"""The op API, and the reference and eager backends, against the float64 oracle."""

import pytest
import torch

import convbert_kernels as ck
from oracle import AWKWARD_SHAPES, check_dynamic_backend, check_span_backend, make_span_inputs


def test_cpu_always_has_reference_and_eager():
    names = ck.available_backends("cpu")
    assert "reference" in names and "eager" in names


@pytest.mark.parametrize("shape", AWKWARD_SHAPES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_eager_matches_reference_fp32(shape, with_mask):
    inputs = make_span_inputs(*shape, with_mask=with_mask, seed=sum(shape))
    check_span_backend("eager", inputs, torch.float32)


@pytest.mark.parametrize("shape", AWKWARD_SHAPES[:3])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_eager_fp16_and_bf16(shape, dtype):
    check_span_backend("eager", make_span_inputs(*shape, with_mask=True), dtype)
    check_dynamic_backend("eager", shape, dtype, with_mask=True)


@pytest.mark.parametrize("shape", AWKWARD_SHAPES)
def test_dynamic_conv_eager(shape):
    check_dynamic_backend("eager", shape, torch.float32, with_mask=True)


def test_no_bias_and_non_contiguous():
    inputs = make_span_inputs(2, 9, 10, 12, 3, 5, with_bias=False, non_contiguous=True)
    assert not inputs.values.is_contiguous()
    check_span_backend("eager", inputs, torch.float32)


@pytest.mark.parametrize("backend", ["reference", "eager"])
@pytest.mark.parametrize("shape", [(2, 5, 6, 6, 2, 3), (1, 2, 4, 9, 3, 5)])
def test_gradcheck_float64(backend, shape):
    inputs = make_span_inputs(*shape, dtype=torch.float64, with_mask=True)

    def fn(q, kc, v, w, b):
        return ck.span_dynamic_conv(q, kc, v, w, b, inputs.num_heads, padding_mask=inputs.padding_mask, backend=backend)

    assert torch.autograd.gradcheck(fn, tuple(inputs.tensors()))

    values = inputs.values
    logits = torch.randn(shape[0], shape[1], shape[4] * shape[5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, lg: ck.dynamic_conv(v, lg, inputs.num_heads, backend=backend), (values, logits)
    )


def test_padding_mask_zeroes_padded_values():
    inputs = make_span_inputs(1, 6, 4, 4, 1, 3, with_bias=True)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]])
    masked = ck.span_dynamic_conv(*inputs.tensors(), 1, padding_mask=mask, backend="eager")
    values = inputs.values.detach().clone()
    values[:, 3:] = 0
    zeroed = ck.span_dynamic_conv(inputs.query, inputs.key_conv, values, inputs.weight, inputs.bias, 1, backend="eager")
    torch.testing.assert_close(masked, zeroed)
    # and padding changes the output next to it (the mask is not a no-op)
    plain = ck.span_dynamic_conv(*inputs.tensors(), 1, backend="eager")
    assert (plain[0, 2] - masked[0, 2]).abs().max() > 1e-4


def test_auto_runs_and_matches():
    inputs = make_span_inputs(2, 7, 10, 12, 3, 5)
    check_span_backend("auto", inputs, torch.float32)


# ---- bad input -----------------------------------------------------------------------------


def _good():
    return make_span_inputs(2, 7, 10, 12, 3, 5)


def test_even_kernel_size_rejected():
    i = _good()
    w = torch.randn(3 * 4, 10)
    with pytest.raises(ValueError, match="odd"):
        ck.span_dynamic_conv(i.query, i.key_conv, i.values, w, None, 3)
    with pytest.raises(ValueError, match="odd"):
        ck.dynamic_conv(i.values, torch.randn(2, 7, 12), 3)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda i: setattr(i, "values", torch.randn(2, 7, 13)), "divisible"),
        (lambda i: setattr(i, "values", torch.randn(2, 8, 12)), "share"),
        (lambda i: setattr(i, "key_conv", torch.randn(2, 7, 11)), "same shape"),
        (lambda i: setattr(i, "weight", torch.randn(15, 11)), "weight"),
        (lambda i: setattr(i, "bias", torch.randn(14)), "bias"),
        (lambda i: setattr(i, "values", i.values.detach().double()), "dtype"),
        (lambda i: setattr(i, "query", i.query.detach()[0]), "dimensions"),
        (lambda i: setattr(i, "padding_mask", torch.ones(2, 8)), "padding_mask"),
        (lambda i: setattr(i, "values", i.values.detach().long()), "floating"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, match):
    i = _good()
    mutate(i)
    with pytest.raises(ValueError, match=match):
        ck.span_dynamic_conv(
            i.query, i.key_conv, i.values, i.weight, i.bias, i.num_heads, padding_mask=i.padding_mask, backend="eager"
        )


def test_bad_num_heads():
    i = _good()
    with pytest.raises(ValueError, match="num_heads"):
        ck.dynamic_conv(i.values, torch.randn(2, 7, 15), 0)


def test_device_mismatch_is_reported():
    i = _good()
    meta_values = torch.empty(2, 7, 12, device="meta")
    with pytest.raises(ValueError, match="meta"):
        ck.dynamic_conv(meta_values, torch.randn(2, 7, 15), 3)


def test_unknown_and_unavailable_backends():
    i = _good()
    with pytest.raises(ValueError, match="unknown backend 'nope'.*eager"):
        ck.span_dynamic_conv(*i.tensors(), 3, backend="nope")
    with pytest.raises(ValueError, match="unknown backend"):
        ck.available_backends and ck.backend_load_error("nope")


@pytest.mark.parametrize("backend", ck.available_backends("cpu"))
def test_backends_ignore_an_enclosing_autocast(backend):
    """The ops take one dtype; internal GEMMs must not be re-cast by an autocast region around them."""
    inputs = make_span_inputs(2, 9, 16, 16, 2, 5, seed=7)
    plain = ck.span_dynamic_conv(*inputs.tensors(), 2, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ck.span_dynamic_conv(*inputs.tensors(), 2, backend=backend)
        inside.sum().backward()
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=1e-6, atol=1e-6)
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in inputs.tensors())
