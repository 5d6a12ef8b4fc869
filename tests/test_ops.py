"""The public op API: backend choice and clear errors on bad input (numerics: test_backends.py)."""

import pytest
import torch

import convbert_kernels as ck
from oracle import check_span_backend, make_span_inputs


def test_cpu_always_has_reference_and_eager():
    names = ck.available_backends("cpu")
    assert "reference" in names and "eager" in names


def test_auto_runs_and_matches():
    inputs = make_span_inputs(2, 7, 10, 12, 3, 5)
    check_span_backend("auto", inputs, torch.float32)


# ---- bad input -----------------------------------------------------------------------------


def _good():
    return make_span_inputs(2, 7, 10, 12, 3, 5)


def test_even_kernel_size_is_a_window_of_its_own():
    """Any K >= 1: an even K has one more tap after the token than before (padding_l = (K - 1) // 2)."""
    i = _good()
    w = torch.randn(3 * 4, 10)
    out = ck.span_dynamic_conv(i.query, i.key_conv, i.values, w, None, 3)
    assert torch.equal(out, ck.span_dynamic_conv(i.query, i.key_conv, i.values, w, None, 3, padding_l=1))
    with pytest.raises(ValueError, match="K must be >= 1"):
        ck.dynamic_conv(i.values, torch.randn(2, 7, 0), 3)


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
