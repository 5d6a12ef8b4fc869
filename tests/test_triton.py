"""What only the Triton backend has: its tiling paths, 64-bit offsets and torch.compile.

The numerics of every backend against the float64 oracle are in test_backends.py.

CPU tests need ``TRITON_INTERPRET=1`` in the environment before Triton is imported
(scripts/test.sh sets it on machines without a GPU); without it they skip, saying so. Shapes are
small because the interpreter costs about a millisecond per program instance.
"""

from __future__ import annotations

import os

import pytest
import torch

import convbert_kernels as ck
from oracle import GRAD_NAMES, assert_close_to, check_dynamic_backend, check_span_backend, make_span_inputs, run_span

pytest.importorskip("triton", reason="the Triton backend needs the triton package")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()

interpreter = pytest.mark.skipif(
    not INTERPRET,
    reason="Triton kernels run on CPU only under the interpreter: set TRITON_INTERPRET=1 before "
    "triton is imported (scripts/test.sh does so on machines without a GPU)",
)

def _kernels():
    from convbert_kernels import triton_kernels

    return triton_kernels


# ---- availability ---------------------------------------------------------------------------


@interpreter
def test_listed_for_cpu_under_interpreter():
    assert "triton" in ck.available_backends("cpu"), ck.backend_load_error("triton")


def test_not_listed_for_cpu_without_interpreter():
    if INTERPRET:
        pytest.skip("TRITON_INTERPRET=1: CPU is served by the interpreter")
    assert "triton" not in ck.available_backends("cpu")


@interpreter
def test_many_tiles_and_a_chunks(monkeypatch):
    """Force 16-token tiles and 16-wide A blocks so halos cross tiles and the A-loop iterates."""
    k = _kernels()
    monkeypatch.setattr(k, "_token_tile", lambda length, width, itemsize, min_tokens=16: (16, 4))
    monkeypatch.setattr(k, "_proj_block_a", lambda a_dim, nkp, block_t: 16)
    monkeypatch.setattr(k, "_resident_programs", lambda device, kernel, args, meta: 6)  # several runs of tiles
    for shape in [(2, 37, 40, 12, 2, 9), (1, 33, 17, 10, 2, 31)]:
        check_span_backend("triton", make_span_inputs(*shape, with_mask=True, seed=3), torch.float32)
        check_dynamic_backend("triton", shape, torch.float32, with_mask=True)


@interpreter
@pytest.mark.parametrize("group", [1, 2])
def test_head_groups(monkeypatch, group):
    """Wide C is split over a grid axis of head groups (as on a GPU for d = 256); same results."""
    monkeypatch.setattr(_kernels(), "_head_group_cap", lambda d_pad: group)
    for shape in [(2, 7, 10, 12, 3, 5), (1, 5, 16, 20, 4, 31)]:
        check_span_backend("triton", make_span_inputs(*shape, with_mask=True, seed=4), torch.float32)
        check_dynamic_backend("triton", shape, torch.float32, with_mask=True)


@interpreter
def test_int64_offsets_path(monkeypatch):
    """The INT64 specialisation (taken when a tensor spans >= 2^31 elements) computes the same."""
    k = _kernels()
    inputs = make_span_inputs(2, 7, 10, 12, 3, 5, with_mask=True)
    out32, grads32 = run_span(inputs, "triton")
    monkeypatch.setattr(k, "_needs_int64", lambda *tensors: True)
    out64, grads64 = run_span(inputs, "triton")
    assert torch.equal(out32, out64)
    for a, b in zip(grads32, grads64):
        assert torch.equal(a, b)


def test_needs_int64_threshold():
    from convbert_kernels import triton_kernels as k

    small = torch.empty((2, 3, 4), device="meta")
    assert not k._needs_int64(small, None)
    big = torch.empty((1, 2**21, 1024), device="meta")  # exactly 2^31 elements
    assert k._needs_int64(big)
    # a view whose reach, not its element count, crosses 2^31
    strided = torch.empty_strided((2, 4, 8), (2**31, 1, 4), device="meta")
    assert k._needs_int64(strided)
    assert not k._needs_int64(torch.empty((1, 2**20, 2047), device="meta"))


# ---- determinism ------------------------------------------------------------------------------


@interpreter
def test_weight_gradient_partials_bitwise_deterministic(monkeypatch):
    """Several runs of tiles, so d_weight / d_bias really go through the partial-sum reduction."""
    monkeypatch.setattr(_kernels(), "_resident_programs", lambda device, kernel, args, meta: 3)
    inputs = make_span_inputs(3, 23, 12, 12, 3, 5, with_mask=True, seed=11)
    first, second = run_span(inputs, "triton"), run_span(inputs, "triton")
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1]):
        assert torch.equal(a, b), "gradients differ bitwise between two runs"


# ---- torch.compile -------------------------------------------------


@interpreter
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_no_graph_breaks(compile_backend):
    import torch._dynamo

    torch._dynamo.reset()
    # The registry imports backends lazily with importlib, which dynamo cannot trace: the backend
    # has to be loaded once before the first compiled call (any ck call or available_backends).
    assert "triton" in ck.available_backends("cpu")
    inputs = make_span_inputs(2, 7, 10, 12, 3, 5, with_mask=True)

    def layer(q, kc, v, w, b, mask):
        out = ck.span_dynamic_conv(q, kc, v, w, b, 3, padding_mask=mask, backend="triton")
        return (out * out).sum()

    compiled = torch.compile(layer, fullgraph=True, backend=compile_backend)
    args = (*inputs.tensors(), inputs.padding_mask)
    loss = compiled(*args)
    grads = torch.autograd.grad(loss, inputs.tensors())
    ref_loss = layer(*args)
    ref_grads = torch.autograd.grad(ref_loss, inputs.tensors())
    torch.testing.assert_close(loss, ref_loss)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    explanation = torch._dynamo.explain(layer)(*args)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@interpreter
def test_torch_compile_test_passes_alone_in_a_fresh_process():
    """No test order dependence: the compile test, run as the only test of a new process."""
    import subprocess
    import sys

    node = f"{__file__}::test_torch_compile_fullgraph_no_graph_breaks[aot_eager]"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


# ---- GPU ----------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_torch_compile_inductor():
    import torch._dynamo

    torch._dynamo.reset()
    # as in the CPU test: the backend is loaded before the first compiled call, so this test
    # passes alone (scripts/gpu_check.sh runs each compile test in a fresh process)
    assert "triton" in ck.available_backends("cuda")
    inputs = make_span_inputs(2, 64, 48, 48, 4, 9, device="cuda")

    def layer(q, kc, v, w, b):
        return ck.span_dynamic_conv(q, kc, v, w, b, 4, backend="triton").float().square().sum()

    compiled = torch.compile(layer, fullgraph=True)
    loss = compiled(*inputs.tensors())
    grads = torch.autograd.grad(loss, inputs.tensors())
    ref_grads = torch.autograd.grad(layer(*inputs.tensors()), inputs.tensors())
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
def test_gpu_64bit_offsets():
    """B*L*C > 2^31: compare the last tokens (forward and gradients) with eager on a slice."""
    free, _total = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs about 24 GiB of free GPU memory")
    num_heads, kernel_size, a_dim, channels = 8, 9, 16, 2048
    length = 2**31 // channels + 64  # one sequence: B * L * C = 2^31 + 64 * C
    half = (kernel_size - 1) // 2
    dtype, dev = torch.float16, "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    query = torch.randn(1, length, a_dim, device=dev, dtype=dtype, generator=g)
    key_conv = torch.randn(1, length, a_dim, device=dev, dtype=dtype, generator=g)
    values = torch.empty(1, length, channels, device=dev, dtype=dtype).normal_(generator=g)
    weight = torch.randn(num_heads * kernel_size, a_dim, device=dev, dtype=dtype, generator=g) * a_dim**-0.5
    bias = torch.randn(num_heads * kernel_size, device=dev, dtype=dtype, generator=g)
    leaves = [t.requires_grad_(True) for t in (query, key_conv, values, weight, bias)]
    out = ck.span_dynamic_conv(*leaves, num_heads, backend="triton")
    tail = 256
    grad_out = torch.zeros_like(out)
    grad_out[:, -(tail - 2 * half):] = torch.randn(1, tail - 2 * half, channels, device=dev, dtype=dtype, generator=g)
    grads = torch.autograd.grad(out, leaves, grad_out)
    del out

    # the same computation in float64 on the last `tail` tokens only (the inputs are fp16 already,
    # so the reference sees the kernel's numbers); the first `half` of them see a different left
    # context, so only later rows are compared, and grad_out is 0 on the first 2*half
    sl = [t.detach()[:, -tail:].double().requires_grad_(True) for t in (query, key_conv, values)]
    wb = [weight.detach().double().requires_grad_(True), bias.detach().double().requires_grad_(True)]
    ref = ck.span_dynamic_conv(*sl, *wb, num_heads, backend="reference")
    ref_grads = torch.autograd.grad(ref, sl + wb, grad_out[:, -tail:].double())
    full_out = ck.span_dynamic_conv(*[t.detach() for t in leaves], num_heads, backend="triton")
    assert_close_to(full_out[:, -(tail - half):], ref[:, half:], dtype, "forward, last tokens")
    for name, got, want in zip(GRAD_NAMES[:3], grads[:3], ref_grads[:3]):
        assert_close_to(got[:, -(tail - half):], want[:, half:], dtype, f"{name}, last tokens")
    for name, got, want in zip(GRAD_NAMES[3:], grads[3:], ref_grads[3:]):
        assert_close_to(got, want, dtype, name)
