"""The native (C++/CUDA extension) backend against the float64 oracle, plus registration checks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import convbert_kernels as ck
from convbert_kernels.backends import resolve_backend
from oracle import (
    AWKWARD_SHAPES,
    check_dynamic_backend,
    check_span_backend,
    gpu_cases,
    make_span_inputs,
    run_span,
)

OPS = ("dynamic_conv_fwd", "dynamic_conv_bwd", "span_dynamic_conv_fwd", "span_dynamic_conv_bwd")


def _native_or_fail():
    err = ck.backend_load_error("native")
    assert err is None, f"native backend failed to load: {err}"
    from convbert_kernels import native

    return native


@pytest.fixture(scope="module")
def native():
    return _native_or_fail()


# ---- loading and registration -------------------------------------------------------------------


def test_native_is_available_on_cpu_and_auto_picks_it(native):
    assert "native" in ck.available_backends("cpu")
    assert resolve_backend("auto", torch.device("cpu")).name == "native"


@pytest.mark.gpu
def test_auto_picks_native_on_cuda(native):
    """native measured faster than triton on an H200 in bf16 and fp32 (README, GPU tables)."""
    assert resolve_backend("auto", torch.device("cuda")).name == "native"


def test_cpu_kernels_registered(native):
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"convbert_kernels::{op}", "CPU"), op


def _cuda_build_expected() -> bool:
    if os.environ.get("CONVBERT_KERNELS_NO_CUDA", "") == "1" or torch.version.cuda is None:
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None


@pytest.mark.skipif(not _cuda_build_expected(), reason="torch without CUDA or no CUDA toolkit: CPU-only build")
def test_cuda_kernels_registered(native):
    """The CUDA part was compiled, linked and registered (CI builds it without a GPU)."""
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"convbert_kernels::{op}", "CUDA"), op
    assert native.HAS_CUDA_KERNELS
    assert native.BACKEND.is_available(torch.device("cuda")) == torch.cuda.is_available()


# ---- CPU numerics against the float64 oracle ----------------------------------------------------


@pytest.mark.parametrize("shape", AWKWARD_SHAPES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_span_fp32_matches_oracle(native, shape, with_mask):
    check_span_backend("native", make_span_inputs(*shape, with_mask=with_mask, seed=sum(shape)), torch.float32)


@pytest.mark.parametrize("shape", AWKWARD_SHAPES)
def test_span_fp64_matches_oracle(native, shape):
    check_span_backend("native", make_span_inputs(*shape, with_mask=True, seed=1), torch.float64)


@pytest.mark.parametrize("shape", AWKWARD_SHAPES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_span_bf16_matches_oracle(native, shape, with_mask):
    check_span_backend("native", make_span_inputs(*shape, with_mask=with_mask, seed=sum(shape)), torch.bfloat16)


def test_span_fp16_matches_oracle(native):
    check_span_backend("native", make_span_inputs(2, 7, 10, 12, 3, 5, with_mask=True), torch.float16)


@pytest.mark.parametrize("shape", AWKWARD_SHAPES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_dynamic_conv_fp32_and_fp64(native, shape, with_mask):
    check_dynamic_backend("native", shape, torch.float32, with_mask=with_mask, seed=3)
    check_dynamic_backend("native", shape, torch.float64, with_mask=with_mask, seed=4)


@pytest.mark.parametrize("shape", AWKWARD_SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_dynamic_conv_low_precision_matches_oracle(native, shape, dtype):
    check_dynamic_backend("native", shape, dtype, with_mask=True, seed=5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_no_bias_and_non_contiguous(native, dtype):
    inputs = make_span_inputs(2, 9, 10, 12, 3, 5, with_bias=False, non_contiguous=True, with_mask=True)
    assert not inputs.values.is_contiguous()
    check_span_backend("native", inputs, dtype)


@pytest.mark.parametrize(
    "shape",
    [
        (2, 40, 20, 7 * 3, 7, 31),  # K = 31 with L > K, d = 3
        (1, 33, 16, 5 * 2, 2, 1),  # K = 1, d = 5
        (2, 20, 24, 12 * 4, 4, 9),  # d = 12, A != C
        (1, 37, 64, 48 * 2, 2, 9),  # d = 48
        (2, 5, 8, 256, 1, 9),  # d = 256, L < K
        (1, 1, 4, 6, 2, 31),  # L = 1, K = 31
    ],
)
def test_feature_shapes(native, shape):
    check_span_backend("native", make_span_inputs(*shape, with_mask=True, seed=7), torch.float32)
    check_span_backend("native", make_span_inputs(*shape, with_mask=False, seed=8), torch.float32)


def test_padding_mask_zeroes_padded_values(native):
    inputs = make_span_inputs(1, 6, 4, 4, 1, 3)
    mask = torch.tensor([[True, True, True, False, False, False]])
    masked = ck.span_dynamic_conv(*inputs.tensors(), 1, padding_mask=mask, backend="native")
    values = inputs.values.detach().clone()
    values[:, 3:] = 0
    zeroed = ck.span_dynamic_conv(inputs.query, inputs.key_conv, values, inputs.weight, inputs.bias, 1, backend="native")
    torch.testing.assert_close(masked, zeroed, rtol=0, atol=0)
    (d_values,) = torch.autograd.grad(masked.sum(), [inputs.values])
    assert d_values[:, 3:].abs().max() == 0


@pytest.mark.parametrize("shape", [(2, 5, 6, 6, 2, 3), (1, 2, 4, 9, 3, 5), (2, 4, 3, 4, 2, 1)])
def test_gradcheck_float64(native, shape):
    inputs = make_span_inputs(*shape, dtype=torch.float64, with_mask=True)
    mask = inputs.padding_mask

    def fn(q, kc, v, w, b):
        return ck.span_dynamic_conv(q, kc, v, w, b, inputs.num_heads, padding_mask=mask, backend="native")

    assert torch.autograd.gradcheck(fn, tuple(inputs.tensors()))
    logits = torch.randn(shape[0], shape[1], shape[4] * shape[5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, lg: ck.dynamic_conv(v, lg, inputs.num_heads, padding_mask=mask, backend="native"),
        (inputs.values, logits),
    )


def test_gradcheck_through_probs_output(native):
    """The raw ops also return the softmaxed kernel; gradients through it are exact too."""
    inputs = make_span_inputs(2, 5, 6, 6, 2, 3, dtype=torch.float64, with_mask=True)
    op = torch.ops.convbert_kernels.span_dynamic_conv_fwd
    assert torch.autograd.gradcheck(
        lambda q, kc, v, w, b: op(q, kc, v, w, b, 2, inputs.padding_mask), tuple(inputs.tensors())
    )
    logits = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, lg: torch.ops.convbert_kernels.dynamic_conv_fwd(v, lg, 2, None), (inputs.values, logits)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_bitwise_reproducible(native, dtype):
    """Two runs give bit-identical forward and gradients (several token and weight tiles)."""
    inputs = make_span_inputs(3, 300, 40, 48, 4, 9, with_mask=True, seed=11).to(dtype)
    first = run_span(inputs, "native")
    second = run_span(inputs, "native")
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1]):
        assert torch.equal(a, b)


def test_weight_gradient_independent_of_thread_count(native):
    """The window backward and the tiled weight reduction give the same bits on 1 or 2+ threads."""
    inputs = make_span_inputs(2, 400, 24, 24, 3, 9, with_mask=True, seed=12)
    q, kc, v, w, b = (t.detach() for t in inputs.tensors())
    ops = torch.ops.convbert_kernels
    _out, probs = ops.span_dynamic_conv_fwd(q, kc, v, w, b, 3, inputs.padding_mask)
    g = torch.randn_like(v)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.span_dynamic_conv_bwd(g, None, q, kc, v, w, probs, 3, inputs.padding_mask)
        torch.set_num_threads(max(2, threads))
        many = ops.span_dynamic_conv_bwd(g, None, q, kc, v, w, probs, 3, inputs.padding_mask)
    finally:
        torch.set_num_threads(threads)
    for name, i in [("d_values", 2), ("d_weight", 3), ("d_bias", 4)]:
        assert torch.equal(one[i], many[i]), name


# ---- torch.library checks -----------------------------------------------------------------------


def test_opcheck_forward_ops(native):
    inputs = make_span_inputs(2, 7, 10, 12, 3, 5, with_mask=True)
    q, kc, v, w, b = inputs.tensors()
    torch.library.opcheck(
        torch.ops.convbert_kernels.span_dynamic_conv_fwd, (q, kc, v, w, b, 3, inputs.padding_mask)
    )
    torch.library.opcheck(torch.ops.convbert_kernels.span_dynamic_conv_fwd, (q, kc, v, w, None, 3, None))
    logits = torch.randn(2, 7, 15, requires_grad=True)
    torch.library.opcheck(torch.ops.convbert_kernels.dynamic_conv_fwd, (v, logits, 3, inputs.padding_mask))


def test_opcheck_backward_ops(native):
    inputs = make_span_inputs(2, 7, 10, 12, 3, 5, with_mask=True)
    q, kc, v, w, b = (t.detach() for t in inputs.tensors())
    _out, probs = torch.ops.convbert_kernels.span_dynamic_conv_fwd(q, kc, v, w, b, 3, None)
    g = torch.randn_like(v)
    gp = torch.randn_like(probs)
    ops = torch.ops.convbert_kernels
    torch.library.opcheck(ops.span_dynamic_conv_bwd, (g, None, q, kc, v, w, probs, 3, inputs.padding_mask))
    torch.library.opcheck(ops.span_dynamic_conv_bwd, (g, gp, q, kc, v, w, probs, 3, None))
    torch.library.opcheck(ops.dynamic_conv_bwd, (g, gp, v, probs, 3, inputs.padding_mask))


def _bad_native_calls():
    """(what is wrong, op, args) for inputs the C++ ops refuse."""
    inputs = make_span_inputs(2, 7, 10, 12, 3, 5)
    q, kc, v, w, b = (t.detach() for t in inputs.tensors())
    ops = torch.ops.convbert_kernels
    probs = torch.rand(2, 7, 15)
    return [
        ("even K", ops.span_dynamic_conv_fwd, (q, kc, v, w[:12], b[:12], 3, None)),
        ("C not divisible by heads", ops.span_dynamic_conv_fwd, (q, kc, v[..., :11], w, b, 3, None)),
        ("weight dtype", ops.span_dynamic_conv_fwd, (q, kc, v, w.double(), b, 3, None)),
        ("bias shape", ops.span_dynamic_conv_fwd, (q, kc, v, w, b[:5], 3, None)),
        ("mask shape", ops.span_dynamic_conv_fwd, (q, kc, v, w, b, 3, torch.ones(2, 6, dtype=torch.bool))),
        ("query shape", ops.span_dynamic_conv_fwd, (q[:, :5], kc[:, :5], v, w, b, 3, None)),
        ("logits B/L", ops.dynamic_conv_fwd, (v, torch.randn(2, 6, 15), 3, None)),
        ("even K (dynamic)", ops.dynamic_conv_fwd, (v, torch.randn(2, 7, 12), 3, None)),
        ("probs dtype", ops.dynamic_conv_bwd, (v, None, v, probs.double(), 3, None)),
        ("grad_out shape", ops.span_dynamic_conv_bwd, (v[:, :5], None, q, kc, v, w, probs, 3, None)),
    ]


@pytest.mark.parametrize("index", range(10))
def test_fakes_refuse_what_the_kernels_refuse(native, index):
    """The fake implementations check as the C++ ops do: a traced call fails where a real one would."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    what, op, args = _bad_native_calls()[index]
    with pytest.raises(RuntimeError):
        op(*args)
    mode = FakeTensorMode()
    fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
    with mode, pytest.raises(RuntimeError):
        op(*fake_args)


def test_one_op_namespace_for_both_compiled_backends(native):
    pytest.importorskip("triton")
    from convbert_kernels import triton_backend

    names = {"span_dynamic_conv_fwd", "dynamic_conv_fwd", "triton_span_fwd", "triton_dynamic_fwd"}
    assert names <= set(dir(torch.ops.convbert_kernels))
    assert triton_backend.triton_span_fwd._qualname == "convbert_kernels::triton_span_fwd"


# ---- a failed build is reported, not fatal ------------------------------------------------------


def test_jit_build_failure_is_reported(tmp_path):
    """With no prebuilt module and sources that do not compile, "native" is absent, the compiler's
    message is retrievable, and the other backends keep working."""
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    (csrc / "broken.cpp").write_text("#error deliberately broken for the test\n")
    script = textwrap.dedent(
        """
        import torch, convbert_kernels as ck
        assert "native" not in ck.available_backends("cpu")
        print("ERROR:", ck.backend_load_error("native"))
        x = torch.randn(1, 4, 6)
        ck.dynamic_conv(x, torch.randn(1, 4, 6), 2)  # auto falls back to eager
        """
    )
    env = dict(
        os.environ,
        CONVBERT_KERNELS_NATIVE="jit",
        CONVBERT_KERNELS_CSRC=str(csrc),
        CONVBERT_KERNELS_BUILD_DIR=str(tmp_path / "build"),
        CONVBERT_KERNELS_NO_CUDA="1",
    )
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ImportError: native backend: just-in-time build" in proc.stdout
    assert "deliberately broken" in proc.stdout


# ---- GPU (skipped without a CUDA device) --------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("case", gpu_cases("native"), ids=str)
def test_cuda_matches_oracle(native, case):
    """fp32/fp16/bf16 (and fp64), span and dynamic_conv, masks, no bias, non-contiguous inputs: the
    cases of oracle.GPU_CASES, whose fp16/bf16 tolerances tests/test_lowp_tolerance.py checks on CPU."""
    case.check(device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_gradients_bitwise_reproducible(native, dtype):
    inputs = make_span_inputs(4, 600, 64, 96, 2, 9, with_mask=True, seed=13).to(dtype, "cuda")
    first = run_span(inputs, "native")
    second = run_span(inputs, "native")
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1]):
        assert torch.equal(a, b)
