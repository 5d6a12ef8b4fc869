"""DynamicConv1d and LightweightConv1d against a float64 oracle written from fairseq's definitions.

The oracle (``fairseq_*_tbc`` below) follows fairseq's ``DynamicConv1dTBC`` / ``LightweightConv1dTBC``
as written there: time-first ``[T, B, C]`` inputs, channels in ``H`` contiguous groups, the kernel
``softmax``-ed over K (``weight_softmax=True``), DropConnect on the softmaxed taps, taps outside
the sequence zero (``renorm_padding=False``), a padding mask with True for padding. The modules are
batch-first and take the Hugging Face mask convention (True for tokens); the tests convert.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import convbert_kernels as ck
from convbert_kernels import DynamicConv1d, LightweightConv1d
from test_backends import ALL_BACKENDS, require

# ---- the oracle: fairseq's definitions, time-first, float64 --------------------------------------


def _window_sum_tbc(x, taps, padding_l, key_padding_mask):
    """out[t, b, h*R + r] = sum_k taps[t, b, h, k] * x[t + k - padding_l, b, h*R + r]; x zero outside
    [0, T) and where key_padding_mask [B, T] is True."""
    length, batch, channels = x.shape
    heads, kernel_size = taps.shape[-2:]
    if key_padding_mask is not None:
        x = x.masked_fill(key_padding_mask.t()[:, :, None], 0)
    x = x.reshape(length, batch, heads, channels // heads)
    out = torch.zeros_like(x)
    for t in range(length):
        for k in range(kernel_size):
            s = t + k - padding_l
            if 0 <= s < length:
                out[t] = out[t] + taps[t, :, :, k, None] * x[s]
    return out.reshape(length, batch, channels)


def fairseq_dynamic_conv_tbc(x, query, weight, bias, conv_bias, heads, kernel_size, padding_l,
                             drop_mask=None, key_padding_mask=None):
    length, batch, _ = x.shape
    taps = torch.softmax(F.linear(query, weight, bias).view(length, batch, heads, kernel_size), dim=-1)
    if drop_mask is not None:
        taps = taps * drop_mask
    out = _window_sum_tbc(x, taps, padding_l, key_padding_mask)
    return out if conv_bias is None else out + conv_bias


def fairseq_lightweight_conv_tbc(x, weight, bias, padding_l, drop_mask=None, key_padding_mask=None):
    length, batch, _ = x.shape
    taps = torch.softmax(weight, dim=-1)
    if drop_mask is not None:
        taps = taps * drop_mask
    out = _window_sum_tbc(x, taps.expand(length, batch, *taps.shape), padding_l, key_padding_mask)
    return out if bias is None else out + bias


def _tbc(t):
    return None if t is None else t.detach().double().transpose(0, 1).requires_grad_(True)


def _leaf64(t):
    return None if t is None else t.detach().double().requires_grad_(True)


def _assert_close(got, want, dtype, what):
    tol = {torch.float64: 1e-10, torch.float32: 2e-5}[dtype]
    err = (got.double() - want.double()).abs().max().item() if want.numel() else 0.0
    scale = want.abs().max().item() if want.numel() else 1.0
    assert err <= tol * max(scale, 1e-30), f"{what}: max error {err:.3e} > {tol:.0e} x {scale:.3e}"


# (B, L, C, heads, K): L < K, L = 1, K = 1, even K, head sizes 3 and 5
SHAPES = [(2, 9, 12, 3, 4), (1, 3, 10, 2, 7), (3, 1, 6, 2, 3), (2, 11, 15, 3, 1), (2, 6, 8, 4, 5)]


def _offsets(kernel_size):
    return sorted({0, (kernel_size - 1) // 2, kernel_size - 1})


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_dynamic_conv1d_matches_fairseq_definition(backend, dtype, shape):
    """Forward, d_x, d_query and every parameter's gradient, at every kind of window offset."""
    require(backend)
    batch, length, channels, heads, kernel_size = shape
    for i, padding_l in enumerate(_offsets(kernel_size)):
        torch.manual_seed(i)
        separate_query = i % 2 == 1
        module = DynamicConv1d(channels, kernel_size, heads, padding_l=padding_l, bias=True, conv_bias=True,
                               query_size=5 if separate_query else None, backend=backend).to(dtype)
        with torch.no_grad():
            module.conv_bias.normal_()
            module.weight_linear.bias.normal_()
        x = torch.randn(batch, length, channels, dtype=dtype, requires_grad=True)
        query = torch.randn(batch, length, 5, dtype=dtype, requires_grad=True) if separate_query else None
        mask = torch.rand(batch, length, generator=torch.Generator().manual_seed(i)) > 0.3 if i != 1 else None
        out = module(x, query, padding_mask=mask)
        grad = torch.randn_like(out)
        params = [module.weight_linear.weight, module.weight_linear.bias, module.conv_bias]
        inputs = [x] + ([query] if separate_query else []) + params
        grads = torch.autograd.grad(out, inputs, grad)

        x64, q64 = _tbc(x), _tbc(query)
        params64 = [_leaf64(p) for p in params]
        want = fairseq_dynamic_conv_tbc(x64, x64 if q64 is None else q64, *params64, heads, kernel_size, padding_l,
                                        key_padding_mask=None if mask is None else ~mask)
        want_inputs = [x64] + ([q64] if separate_query else []) + params64
        want_grads = torch.autograd.grad(want, want_inputs, _tbc(grad))
        _assert_close(out, want.transpose(0, 1), dtype, f"{backend} padding_l={padding_l} forward")
        names = ["d_x"] + (["d_query"] if separate_query else []) + ["d_weight", "d_bias", "d_conv_bias"]
        for name, g, wg in zip(names, grads, want_grads):
            wg = wg.transpose(0, 1) if name in ("d_x", "d_query") else wg
            _assert_close(g, wg, dtype, f"{backend} padding_l={padding_l} {name}")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_lightweight_conv1d_matches_fairseq_definition(backend, dtype, shape):
    require(backend)
    batch, length, channels, heads, kernel_size = shape
    for i, padding_l in enumerate(_offsets(kernel_size)):
        torch.manual_seed(i)
        module = LightweightConv1d(channels, kernel_size, heads, padding_l=padding_l, bias=True,
                                   backend=backend).to(dtype)
        with torch.no_grad():
            module.bias.normal_()
            module.weight.mul_(3)  # a kernel far from flat
        x = torch.randn(batch, length, channels, dtype=dtype, requires_grad=True)
        mask = torch.rand(batch, length, generator=torch.Generator().manual_seed(i)) > 0.3 if i != 1 else None
        out = module(x, padding_mask=mask)
        grad = torch.randn_like(out)
        grads = torch.autograd.grad(out, [x, module.weight, module.bias], grad)

        x64, w64, b64 = _tbc(x), _leaf64(module.weight), _leaf64(module.bias)
        want = fairseq_lightweight_conv_tbc(x64, w64, b64, padding_l, key_padding_mask=None if mask is None else ~mask)
        want_grads = torch.autograd.grad(want, [x64, w64, b64], _tbc(grad))
        _assert_close(out, want.transpose(0, 1), dtype, f"{backend} padding_l={padding_l} forward")
        for name, g, wg in zip(["d_x", "d_weight", "d_bias"], grads, want_grads):
            wg = wg.transpose(0, 1) if name == "d_x" else wg
            _assert_close(g, wg, dtype, f"{backend} padding_l={padding_l} {name}")


def test_dropconnect_drops_softmaxed_taps_in_training_only():
    """DropConnect as fairseq applies it: dropout on the softmaxed taps (scaled by 1/(1-p)), with the
    same Bernoulli mask the oracle draws from the same seed; off in eval."""
    batch, length, channels, heads, kernel_size, p = 2, 8, 12, 3, 5, 0.4
    dyn = DynamicConv1d(channels, kernel_size, heads, padding_l=4, weight_dropout=p).double()
    light = LightweightConv1d(channels, kernel_size, heads, padding_l=2, weight_dropout=p).double()
    x = torch.randn(batch, length, channels, dtype=torch.float64)

    def drop_mask(shape):  # what F.dropout draws for a tensor of this shape and dtype
        return F.dropout(torch.ones(shape, dtype=torch.float64), p, training=True)

    torch.manual_seed(3)
    got = dyn(x)
    torch.manual_seed(3)
    mask = drop_mask((batch, length, heads, kernel_size)).transpose(0, 1)
    want = fairseq_dynamic_conv_tbc(_tbc(x), _tbc(x), dyn.weight_linear.weight.detach(), None, None, heads,
                                    kernel_size, 4, drop_mask=mask)
    torch.testing.assert_close(got, want.transpose(0, 1), rtol=1e-12, atol=1e-12)

    torch.manual_seed(4)
    got = light(x)
    torch.manual_seed(4)
    want = fairseq_lightweight_conv_tbc(_tbc(x), light.weight.detach(), None, 2,
                                        drop_mask=drop_mask((heads, kernel_size)))
    torch.testing.assert_close(got, want.transpose(0, 1), rtol=1e-12, atol=1e-12)

    for module in (dyn, light):
        module.eval()
        assert torch.equal(module(x), module(x))  # no dropout: deterministic
        module.train()
        assert not torch.equal(module(x), module(x))


# ---- step decoding ----------------------------------------------------------------------------


def _decode(module, x, **step_kwargs):
    """Feed x [B, L, C] one token at a time; return the stacked outputs [B, L, C]."""
    state, outs = None, []
    for t in range(x.shape[1]):
        kwargs = {k: v[:, t] for k, v in step_kwargs.items()}
        y, state = module.step(x[:, t], state, **kwargs)
        assert state.shape == (x.shape[0], module.kernel_size - 1, x.shape[2])
        outs.append(y)
    return torch.stack(outs, dim=1)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("kernel_size", [1, 4, 7])
def test_step_decoding_equals_the_full_call(backend, kernel_size):
    require(backend)
    torch.manual_seed(kernel_size)
    x = torch.randn(3, 10, 12)
    query = torch.randn(3, 10, 6)
    dyn = DynamicConv1d(12, kernel_size, 3, padding_l=kernel_size - 1, bias=True, conv_bias=True, query_size=6,
                        backend=backend).eval()
    light = LightweightConv1d(12, kernel_size, 4, padding_l=kernel_size - 1, bias=True, backend=backend).eval()
    with torch.no_grad():
        dyn.conv_bias.normal_()
        light.bias.normal_()
        torch.testing.assert_close(_decode(dyn, x, query_t=query), dyn(x, query), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(_decode(light, x), light(x), rtol=1e-5, atol=1e-5)
        # [B, 1, C] in, [B, 1, C] out
        y, state = light.step(x[:, :1])
        assert y.shape == (3, 1, 12) and state.shape == (3, kernel_size - 1, 12)


def test_step_state_can_be_reordered_and_sliced_like_a_batch():
    """Beam search reorders the cached state; decoding continues as for the reordered batch."""
    torch.manual_seed(0)
    module = DynamicConv1d(8, 5, 2, padding_l=4).double().eval()
    x = torch.randn(4, 9, 8, dtype=torch.float64)
    order = torch.tensor([2, 0, 0, 3])
    state = None
    for t in range(5):
        _, state = module.step(x[:, t], state)
    reordered = state.index_select(0, order)
    rest = []
    for t in range(5, 9):
        y, reordered = module.step(x[order, t], reordered)
        rest.append(y)
    full = module(x[order])
    torch.testing.assert_close(torch.stack(rest, 1), full[:, 5:])
    # a slice of the state decodes the slice of the batch
    y_slice, _ = module.step(x[1:3, 5], state[1:3])
    torch.testing.assert_close(y_slice, module(x[1:3, :6])[:, 5])


def test_step_refuses_a_window_that_reads_the_future():
    for module in (DynamicConv1d(8, 5, 2), LightweightConv1d(8, 5, 2, padding_l=3)):
        with pytest.raises(ValueError, match="causal"):
            module.step(torch.randn(2, 8))
    module = DynamicConv1d(8, 3, 2, padding_l=2)
    with pytest.raises(ValueError, match="state"):
        module.step(torch.randn(2, 8), torch.zeros(2, 3, 8))
    with pytest.raises(ValueError, match="x_t"):
        module.step(torch.randn(2, 4, 8))


# ---- memory and construction --------------------------------------------------------------------


def test_lightweight_kernel_reaches_the_op_without_a_per_token_copy(monkeypatch):
    """The shared kernel is an expanded view (stride 0 over B and L), not an L * K tensor."""
    import convbert_kernels.modules as modules

    seen = {}
    real = modules.dynamic_conv

    def spy(values, logits, *args, **kwargs):
        seen["strides"], seen["storage"] = logits.stride(), logits.untyped_storage().nbytes()
        return real(values, logits, *args, **kwargs)

    monkeypatch.setattr(modules, "dynamic_conv", spy)
    module = LightweightConv1d(16, 7, 4, padding_l=6).eval()
    module(torch.randn(3, 50, 16))
    assert seen["strides"][:2] == (0, 0)
    assert seen["storage"] == 4 * 7 * 4  # the [n, K] kernel's own bytes (float32)


@pytest.mark.parametrize("kwargs, match", [
    (dict(padding_l=5), "padding_l"),
    (dict(padding_l=-1), "padding_l"),
    (dict(weight_dropout=1.0), "weight_dropout"),
    (dict(backend="cuda-magic"), "unknown backend"),
])
def test_bad_construction_is_a_clear_error(kwargs, match):
    for cls in (DynamicConv1d, LightweightConv1d):
        with pytest.raises(ValueError, match=match):
            cls(8, 5, 2, **kwargs)
    with pytest.raises(ValueError, match="divisible"):
        DynamicConv1d(9, 5, 2)


def test_bad_input_is_a_clear_error():
    module = DynamicConv1d(8, 3, 2, query_size=4)
    with pytest.raises(ValueError, match=r"\[B, L, 8\]"):
        module(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="query"):
        module(torch.randn(2, 5, 8), torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="padding_mask"):
        LightweightConv1d(8, 3, 2)(torch.randn(2, 5, 8), padding_mask=torch.ones(2, 4))


def test_modules_are_exported_and_documented():
    assert ck.DynamicConv1d is DynamicConv1d and ck.LightweightConv1d is LightweightConv1d
    for cls in (DynamicConv1d, LightweightConv1d):
        assert "fairseq" in cls.__doc__ and cls.step.__doc__ and cls.forward.__doc__
        assert "padding_l" in repr(cls(8, 3, 2))
