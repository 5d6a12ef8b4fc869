"""What only the native backend has: loading and building the extension, registration, thread counts,
the raw ops' window offset (padding_l) and broadcast (stride-0) logits.

The numerics of every backend against the float64 oracle are in test_backends.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import convbert_kernels as ck
from convbert_kernels.backends import resolve_backend
from oracle import DYNAMIC_GRAD_NAMES, GRAD_NAMES, assert_close_to, make_dynamic_inputs, make_span_inputs

OPS = ("native_span_fwd", "native_span_bwd", "native_dynamic_fwd", "native_dynamic_bwd")


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


@pytest.mark.parametrize("padding_l", [0, 4, 8])
def test_weight_gradient_independent_of_thread_count(native, padding_l):
    """The window backward and the tiled weight reduction give the same bits on 1 or 2+ threads."""
    inputs = make_span_inputs(2, 400, 24, 24, 3, 9, with_mask=True, seed=12)
    q, kc, v, w, b = (t.detach() for t in inputs.tensors())
    ops = torch.ops.convbert_kernels
    _out, probs = ops.native_span_fwd(q, kc, v, w, b, 3, padding_l, inputs.padding_mask, True)
    g = torch.randn_like(v)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.native_span_bwd(g, q, kc, v, w, probs, 3, padding_l, inputs.padding_mask)
        torch.set_num_threads(max(2, threads))
        many = ops.native_span_bwd(g, q, kc, v, w, probs, 3, padding_l, inputs.padding_mask)
    finally:
        torch.set_num_threads(threads)
    for name, i in [("d_values", 2), ("d_weight", 3), ("d_bias", 4)]:
        assert torch.equal(one[i], many[i]), name


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_cpu_instruction_set_matches_oracle(native, isa):
    """CONVBERT_KERNELS_CPU_ISA caps the instruction set the CPU kernels pick at their first call
    (never above what the CPU has), so the baseline and AVX2 loops run here too."""
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from oracle import check_dynamic_backend, check_span_backend, make_span_inputs
        for dtype in (torch.float32, torch.bfloat16):
            check_span_backend("native", make_span_inputs(2, 37, 20, 24, 3, 9, with_mask=True, seed=2), dtype)
            check_dynamic_backend("native", (2, 37, 20, 24, 3, 9), dtype, with_mask=True)
            # K even, windows entirely after / before the token
            check_span_backend("native", make_span_inputs(2, 37, 20, 24, 3, 8, with_mask=True, seed=3,
                                                          padding_l=0), dtype)
            check_dynamic_backend("native", (2, 37, 20, 24, 3, 8), dtype, with_mask=True, padding_l=7)
        print("ok")
        """
    )
    env = dict(os.environ, CONVBERT_KERNELS_CPU_ISA=isa)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-3000:]


def test_one_op_namespace_and_signatures_for_both_compiled_backends(native):
    pytest.importorskip("triton")
    from convbert_kernels import triton_backend  # noqa: F401  (registers the triton_* ops)

    ops = torch.ops.convbert_kernels
    for name in ("span_fwd", "span_bwd", "dynamic_fwd", "dynamic_bwd"):
        native_schema = getattr(ops, f"native_{name}").default._schema
        triton_schema = getattr(ops, f"triton_{name}").default._schema
        assert [(a.name, str(a.type)) for a in native_schema.arguments] == \
               [(a.name, str(a.type)) for a in triton_schema.arguments], name
        assert [str(r.type) for r in native_schema.returns] == [str(r.type) for r in triton_schema.returns], name


# ---- the window offset padding_l, K even, broadcast logits ------------------------------------------

# (B, L, A, C, num_heads, K): K even with L < K, L = 1, odd L over several CPU tiles (16 tokens) and
# across a CPU range boundary (256 tokens) mid-sequence; head sizes 5, 3, 6, 7, 3, 1; K = 1.
OFFSET_SHAPES = [
    (2, 3, 6, 10, 2, 4),
    (1, 1, 5, 6, 2, 4),
    (2, 13, 8, 18, 3, 4),
    (2, 37, 10, 14, 2, 6),
    (2, 7, 6, 9, 3, 1),
    (1, 261, 4, 2, 2, 4),
]
OFFSET_CASES = [(shape, padding_l) for shape in OFFSET_SHAPES for padding_l in range(shape[5])]


def _case_id(case):
    shape, padding_l = case
    return "x".join(map(str, shape)) + f"-pl{padding_l}"


@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("case", OFFSET_CASES, ids=[_case_id(c) for c in OFFSET_CASES])
def test_every_padding_l_matches_reference_in_float64(native, case, with_mask):
    """Every window offset of an even (and K = 1) kernel, through the public API: forward and every
    gradient equal the float64 reference up to float64 rounding."""
    shape, padding_l = case
    batch, length, _a, channels, num_heads, _k = shape
    grad_out = torch.randn(batch, length, channels, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    values, logits, mask = make_dynamic_inputs(shape, with_mask=with_mask, seed=padding_l)
    leaves = [values.double(), logits.double()]
    results = {}
    for backend in ("native", "reference"):
        inputs = [t.clone().requires_grad_(True) for t in leaves]
        out = ck.dynamic_conv(*inputs, num_heads, padding_l=padding_l, padding_mask=mask, backend=backend)
        results[backend] = [out] + list(torch.autograd.grad(out, inputs, grad_out))
    for name, got, want in zip(["forward"] + DYNAMIC_GRAD_NAMES, results["native"], results["reference"]):
        assert_close_to(got, want, torch.float64, f"dynamic_conv {name}")

    span = make_span_inputs(*shape, dtype=torch.float64, with_mask=with_mask, seed=padding_l)
    results = {}
    for backend in ("native", "reference"):
        inputs = [t.detach().clone().requires_grad_(True) for t in span.tensors()]
        out = ck.span_dynamic_conv(*inputs, num_heads, padding_l=padding_l, padding_mask=span.padding_mask,
                                   backend=backend)
        results[backend] = [out] + list(torch.autograd.grad(out, inputs, grad_out))
    for name, got, want in zip(["forward"] + GRAD_NAMES, results["native"], results["reference"]):
        assert_close_to(got, want, torch.float64, f"span_dynamic_conv {name}")


def _shared_kernel_logits(batch, length, num_heads, kernel_size, dtype, layout):
    """(leaf, logits): one kernel [n * K] for every position as an expanded view of the leaf, the
    way LightweightConv1d passes it; or that with a non-contiguous row; or, with B = 1, a [1, 1, n*K]
    leaf expanded along L only (strides (R, 0, 1): size 1 makes the batch stride irrelevant)."""
    rows = num_heads * kernel_size
    g = torch.Generator().manual_seed(rows)
    if layout == "expand":  # strides (0, 0, 1)
        leaf = (torch.randn(rows, generator=g) * 2).to(dtype).requires_grad_(True)
        return leaf, leaf.view(1, 1, rows).expand(batch, length, rows)
    if layout == "expand_strided_row":  # the shared row itself has stride 2
        leaf = (torch.randn(rows, 2, generator=g) * 2).to(dtype).requires_grad_(True)
        return leaf, leaf[:, 0].view(1, 1, rows).expand(batch, length, rows)
    assert layout == "batch_one" and batch == 1
    leaf = (torch.randn(1, 1, rows, generator=g) * 2).to(dtype).requires_grad_(True)
    return leaf, leaf.expand(1, length, rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["expand", "expand_strided_row", "batch_one"])
@pytest.mark.parametrize("kernel_size", [4, 5])
def test_broadcast_logits_equal_materialised_logits(native, kernel_size, layout, dtype):
    """Logits whose token strides are 0 (one kernel for every position) are read in place, and give
    the same bits as the same logits made contiguous: out, probs, and through autograd d_values and
    the shared kernel's gradient (d_logits reduced over the expand)."""
    batch, length, num_heads, head_size = (1 if layout == "batch_one" else 2), 37, 3, 6
    ops = torch.ops.convbert_kernels
    values = torch.randn(batch, length, num_heads * head_size, generator=torch.Generator().manual_seed(1)).to(dtype)
    mask = torch.arange(length)[None, :] < torch.tensor([[length], [length - 5]])[:batch]
    grad_out = torch.randn(values.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    for padding_l in sorted({0, (kernel_size - 1) // 2, kernel_size - 1}):
        leaf, logits = _shared_kernel_logits(batch, length, num_heads, kernel_size, dtype, layout)
        materialised = logits.detach().contiguous()
        for m in (None, mask):
            shared = ops.native_dynamic_fwd(values, logits.detach(), num_heads, padding_l, m, True)
            full = ops.native_dynamic_fwd(values, materialised, num_heads, padding_l, m, True)
            assert torch.equal(shared[0], full[0]) and torch.equal(shared[1], full[1]), (padding_l, m is None)

        grads = []
        for make in (lambda t: t, lambda t: t.contiguous()):
            leaf, logits = _shared_kernel_logits(batch, length, num_heads, kernel_size, dtype, layout)
            v = values.clone().requires_grad_(True)
            out = ck.dynamic_conv(v, make(logits), num_heads, padding_l=padding_l, padding_mask=mask,
                                  backend="native")
            grads.append([out.detach(), *torch.autograd.grad(out, [v, leaf], grad_out)])
        for name, a, b in zip(["out", "d_values", "d_kernel"], *grads):
            assert torch.equal(a, b), (name, padding_l)


def test_bad_padding_l_is_refused_by_the_raw_ops(native):
    """padding_l outside [0, K - 1] is a RuntimeError naming it, from each of the four ops."""
    ops = torch.ops.convbert_kernels
    inputs = make_span_inputs(2, 7, 6, 12, 3, 4)
    q, kc, v, w, b = (t.detach() for t in inputs.tensors())
    logits = torch.randn(2, 7, 12)
    probs = ops.native_dynamic_fwd(v, logits, 3, 1, None, True)[1]
    for padding_l in (-1, 4):
        calls = {
            "span_fwd": lambda: ops.native_span_fwd(q, kc, v, w, b, 3, padding_l, None, True),
            "span_bwd": lambda: ops.native_span_bwd(v, q, kc, v, w, probs, 3, padding_l, None),
            "dynamic_fwd": lambda: ops.native_dynamic_fwd(v, logits, 3, padding_l, None, True),
            "dynamic_bwd": lambda: ops.native_dynamic_bwd(v, v, probs, 3, padding_l, None),
        }
        for name, call in calls.items():
            with pytest.raises(RuntimeError, match=r"padding_l must be in \[0, K - 1\]") as err:
                call()
            assert "K=4" in str(err.value) and str(padding_l) in str(err.value), (name, str(err.value))


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
