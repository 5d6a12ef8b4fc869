"""What only the native backend has: loading and building the extension, registration, thread counts.

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
from oracle import make_span_inputs

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


def test_weight_gradient_independent_of_thread_count(native):
    """The window backward and the tiled weight reduction give the same bits on 1 or 2+ threads."""
    inputs = make_span_inputs(2, 400, 24, 24, 3, 9, with_mask=True, seed=12)
    q, kc, v, w, b = (t.detach() for t in inputs.tensors())
    ops = torch.ops.convbert_kernels
    _out, probs = ops.native_span_fwd(q, kc, v, w, b, 3, inputs.padding_mask, True)
    g = torch.randn_like(v)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.native_span_bwd(g, q, kc, v, w, probs, 3, inputs.padding_mask)
        torch.set_num_threads(max(2, threads))
        many = ops.native_span_bwd(g, q, kc, v, w, probs, 3, inputs.padding_mask)
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
