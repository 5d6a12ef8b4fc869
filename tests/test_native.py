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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps and ELF headers (Linux)")
def test_native_extension_links_the_shared_libstdcxx(native):
    """The extension needs libstdc++.so.6 instead of carrying a static copy: on the H200 machine a
    static one crashed every check message that formats a number (_link.py). The check itself (the
    GPU kit's setup stage uses it): False for a C library without libstdc++ (as a static link looks),
    and a reason when there is nothing to read."""
    import shutil

    import _ctypes  # a C extension module: libc and libffi, no libstdc++

    from convbert_kernels._link import links_shared_libstdcxx

    libraries = native.library_paths()
    assert libraries, "the native extension is loaded but no mapped library looks like it"
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed: cannot read the extension's NEEDED list")
    assert links_shared_libstdcxx(libraries) is True, libraries
    assert links_shared_libstdcxx([_ctypes.__file__]) is False
    assert links_shared_libstdcxx([*libraries, _ctypes.__file__]) is False
    assert links_shared_libstdcxx([]).startswith("unknown")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the libstdc++ link flag is added on Linux only")
def test_libstdcxx_flag_only_where_the_compiler_finds_the_library(monkeypatch):
    """_link.shared_libstdcxx_flags: the flag with a compiler that finds libstdc++.so.6 (the one that
    builds the extension here), nothing and a warning with one that does not."""
    import shutil

    from convbert_kernels import _link

    compiler = shutil.which(os.environ.get("CXX") or "c++")
    assert compiler, "no C++ compiler: the native extension could not have been built"
    monkeypatch.setenv("CXX", compiler)
    assert _link.shared_libstdcxx_flags() == ["-l:libstdc++.so.6"]
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.warns(UserWarning, match="does not find libstdc"):
        assert _link.shared_libstdcxx_flags() == []


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
    _out, probs = ops.native_span_fwd(q, kc, v, w, b, 3, padding_l, inputs.padding_mask, None, True)
    g = torch.randn_like(v)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.native_span_bwd(g, q, kc, v, w, probs, 3, padding_l, inputs.padding_mask, None)
        torch.set_num_threads(max(2, threads))
        many = ops.native_span_bwd(g, q, kc, v, w, probs, 3, padding_l, inputs.padding_mask, None)
    finally:
        torch.set_num_threads(threads)
    for name, i in [("d_values", 2), ("d_weight", 3), ("d_bias", 4)]:
        assert torch.equal(one[i], many[i]), name


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512", "avx512bf16"])
def test_every_cpu_instruction_set_matches_oracle(native, isa):
    """CONVBERT_KERNELS_CPU_ISA caps the instruction set the CPU kernels pick at their first call
    (never above what the CPU has), so the baseline and AVX2 loops run here too, for the general
    tap count and for the K = 9 loops (dots_fixed)."""
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from oracle import check_dynamic_backend, check_span_backend, make_span_inputs
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            check_span_backend("native", make_span_inputs(2, 37, 20, 24, 3, 9, with_mask=True, seed=2), dtype)
            # K = 9 has its own compiled loops: heads of 20 channels (one register and a tail on
            # AVX-512, two and a tail on AVX2), and a sequence shorter than the window; heads of 16
            # channels: float32 outputs written with streaming stores on every instruction set (the
            # test streams every output that can be, see env below)
            check_span_backend("native", make_span_inputs(2, 37, 40, 60, 3, 9, with_mask=True, seed=4), dtype)
            check_span_backend("native", make_span_inputs(2, 21, 48, 48, 3, 9, with_mask=True, seed=5), dtype)
            check_dynamic_backend("native", (3, 5, 60, 60, 3, 9), dtype, with_mask=True, padding_l=2)
            check_dynamic_backend("native", (2, 37, 20, 24, 3, 9), dtype, with_mask=True)
            # K even, windows entirely after / before the token
            check_span_backend("native", make_span_inputs(2, 37, 20, 24, 3, 8, with_mask=True, seed=3,
                                                          padding_l=0), dtype)
            check_dynamic_backend("native", (2, 37, 20, 24, 3, 8), dtype, with_mask=True, padding_l=7)
        # two ranges of tokens (256 + 45: an odd last range, padded to pairs of tokens in bf16)
        check_span_backend("native", make_span_inputs(1, 301, 20, 24, 3, 9, with_mask=True, seed=6), torch.bfloat16)
        # bfloat16 in and out: the window kernels compute in fp32 and their vectorised conversions
        # round to bfloat16 bit for bit as torch does (NaN stays NaN), streamed (heads of 32
        # channels) or not. (The span op's projection takes bfloat16 operands: its own test below.)
        import convbert_kernels as ck
        g = torch.Generator().manual_seed(0)
        v, lg = torch.randn(2, 37, 64, generator=g).bfloat16(), torch.randn(2, 37, 10, generator=g).bfloat16()
        with torch.no_grad():
            low = ck.dynamic_conv(v, lg, 2, backend="native")
            full = ck.dynamic_conv(v.float(), lg.float(), 2, backend="native")
            v[0, 5, 3] = float("nan")
            with_nan = ck.dynamic_conv(v, lg, 2, backend="native")
        assert torch.equal(low.view(torch.int16), full.bfloat16().view(torch.int16))
        # K = 5 centred taps: value 5 is read by tokens 3..7, in its own channel only
        assert with_nan[0, 3:8, 3].isnan().all() and with_nan.isnan().sum() == 5
        print("ok")
        """
    )
    # every output streamed that can be (by default only those of half the L2 or more are)
    env = dict(os.environ, CONVBERT_KERNELS_CPU_ISA=isa, CONVBERT_KERNELS_STREAM_BYTES="0")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-3000:]


def _cpu_has_avx512_bf16():
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_bf16" in f.read().split()
    except OSError:
        return False


@pytest.mark.skipif(not _cpu_has_avx512_bf16(), reason="the CPU has no AVX512_BF16 (vdpbf16ps); its emulation, "
                    "the path such CPUs run, is checked against the oracle on every instruction set above")
def test_bf16_gemm_instruction_equals_its_emulation(native, tmp_path):
    """The span op's bfloat16 projection GEMMs with vdpbf16ps (CONVBERT_KERNELS_CPU_ISA=avx512bf16) and
    with the two-FMA emulation that CPUs without it run (avx512: the same kernels otherwise) give the
    same outputs and gradients bit for bit: odd A, odd n * K and odd token counts (padded pairs), two
    ranges of tokens, a mask, a bias."""
    script = textwrap.dedent(
        """
        import sys, torch, convbert_kernels as ck
        g = torch.Generator().manual_seed(0)
        results = []
        for B, L, A, C, n, K in [(2, 37, 41, 24, 3, 7), (1, 301, 64, 48, 6, 9), (1, 5, 9, 6, 3, 9)]:
            q, kc = torch.randn(B, L, A, generator=g), torch.randn(B, L, A, generator=g)
            v, w, b = torch.randn(B, L, C, generator=g), torch.randn(n * K, A, generator=g) / A**0.5, torch.randn(n * K, generator=g)
            mask = torch.rand(B, L, generator=g) > 0.2
            leaves = [t.bfloat16().requires_grad_() for t in (q, kc, v, w, b)]
            out = ck.span_dynamic_conv(*leaves, n, padding_mask=mask, backend="native")
            out.backward(torch.randn(out.shape, generator=g).bfloat16())
            results += [out.detach()] + [t.grad for t in leaves]
        torch.save(results, sys.argv[1])
        """
    )
    runs = {}
    for isa in ("avx512bf16", "avx512"):
        path = tmp_path / f"{isa}.pt"
        env = dict(os.environ, CONVBERT_KERNELS_CPU_ISA=isa)
        proc = subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[isa] = torch.load(path)
    assert len(runs["avx512"]) == 18
    for i, (dp, emulated) in enumerate(zip(runs["avx512bf16"], runs["avx512"])):
        assert dp.dtype == torch.bfloat16 and torch.equal(dp.view(torch.int16), emulated.view(torch.int16)), i


@pytest.mark.parametrize("name, value", [("CONVBERT_KERNELS_STREAM_BYTES", "4MiB"),
                                         ("CONVBERT_KERNELS_STREAM_BYTES", "-1"),
                                         ("CONVBERT_KERNELS_CPU_ISA", "avx9000")])
def test_malformed_cpu_kernel_settings_are_refused(native, name, value):
    """A malformed override of the CPU kernels (read at their first call) is a RuntimeError naming
    the variable and its value, not silently another setting (atoll read '4MiB' as 4 bytes)."""
    script = textwrap.dedent(
        """
        import torch, convbert_kernels as ck
        v, lg = torch.randn(1, 5, 4), torch.randn(1, 5, 6)
        for _ in range(2):  # refused at every call, not only the first
            try:
                ck.dynamic_conv(v, lg, 2, backend="native")
            except RuntimeError as err:
                print("refused:", err)
            else:
                print("accepted")
        """
    )
    env = dict(os.environ, **{name: value})
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("refused", "accepted"))]
    assert proc.returncode == 0 and len(lines) == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert all(line.startswith("refused") and name in line and f"'{value}'" in line for line in lines), lines


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
            shared = ops.native_dynamic_fwd(values, logits.detach(), num_heads, padding_l, m, None, True)
            full = ops.native_dynamic_fwd(values, materialised, num_heads, padding_l, m, None, True)
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
    probs = ops.native_dynamic_fwd(v, logits, 3, 1, None, None, True)[1]
    for padding_l in (-1, 4):
        calls = {
            "span_fwd": lambda: ops.native_span_fwd(q, kc, v, w, b, 3, padding_l, None, None, True),
            "span_bwd": lambda: ops.native_span_bwd(v, q, kc, v, w, probs, 3, padding_l, None, None),
            "dynamic_fwd": lambda: ops.native_dynamic_fwd(v, logits, 3, padding_l, None, None, True),
            "dynamic_bwd": lambda: ops.native_dynamic_bwd(v, v, probs, 3, padding_l, None, None),
        }
        for name, call in calls.items():
            with pytest.raises(RuntimeError, match=r"padding_l must be in \[0, K - 1\]") as err:
                call()
            assert "K=4" in str(err.value) and str(padding_l) in str(err.value), (name, str(err.value))


# ---- packed sequences: the raw ops' seq_bounds ----------------------------------------------------

# cu_seqlens of packed rows: empty sequences (first, inside, last), length 1, lengths below K, one
# sequence over several CPU tiles (16 tokens); one sequence covering everything; a sequence across
# the CPU range boundary (256 tokens); and a random packing.
PACKINGS = {
    "mixed": [0, 0, 1, 3, 3, 20, 21, 25, 40, 40],
    "single": [0, 37],
    "range_boundary": [0, 100, 250, 262, 263, 300],
    "random": None,
}
# (K, padding_l): K = 1, even and odd K, each at padding_l 0, centred and K - 1
TAPS = [(k, pl) for k in (1, 4, 5) for pl in sorted({0, (k - 1) // 2, k - 1})]


def _cu_seqlens(packing: str) -> torch.Tensor:
    if PACKINGS[packing] is not None:
        return torch.tensor(PACKINGS[packing])
    lengths = torch.randint(0, 9, (14,), generator=torch.Generator().manual_seed(5))
    return torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])


def _seq_bounds(cu: torch.Tensor) -> torch.Tensor:
    """int64 [2, T]: per packed token, its sequence's [start, end) (what the Python layer passes)."""
    lengths = cu[1:] - cu[:-1]
    starts = torch.repeat_interleave(cu[:-1], lengths)
    ends = torch.repeat_interleave(cu[1:], lengths)
    return torch.stack([starts, ends]).long()


def _batch_bounds(batch: int, length: int) -> torch.Tensor:
    """The seq_bounds of a plain [B, L] batch: every row its own sequence."""
    row = torch.arange(batch * length) // length * length
    return torch.stack([row, row + length])


def _packed_mask(total: int, seed: int) -> torch.Tensor:
    """[1, T] bool with about a quarter of the tokens padding, scattered."""
    return torch.rand(1, total, generator=torch.Generator().manual_seed(seed)) > 0.25


def _each_sequence_alone(cu, fn, token_inputs, shared_inputs, grad_out, mask):
    """Each sequence [1, len, .] alone through ``fn`` (the float64 reference), in float64: the
    outputs and the gradients of <out, grad_out> for every input, concatenated along the tokens
    (token_inputs) or summed over the sequences (shared_inputs)."""
    outs, token_grads = [], [[] for _ in token_inputs]
    shared_grads = [torch.zeros(t.shape, dtype=torch.float64) for t in shared_inputs]
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if b == a:
            continue
        tokens = [t[:, a:b].double().requires_grad_(True) for t in token_inputs]
        shared = [t.double().requires_grad_(True) for t in shared_inputs]
        out = fn(*tokens, *shared, None if mask is None else mask[:, a:b])
        grads = torch.autograd.grad(out, tokens + shared, grad_out[:, a:b].double())
        outs.append(out.detach())
        for acc, g in zip(token_grads, grads[: len(tokens)]):
            acc.append(g)
        for acc, g in zip(shared_grads, grads[len(tokens):]):
            acc += g
    return torch.cat(outs, 1), [torch.cat(g, 1) for g in token_grads] + shared_grads


def _packed_case_id(case):
    return f"K{case[0]}-pl{case[1]}"


@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("packing", list(PACKINGS))
@pytest.mark.parametrize("taps", TAPS, ids=_packed_case_id)
def test_packed_dynamic_ops_equal_each_sequence_alone(native, taps, packing, dtype, with_mask):
    """native_dynamic_fwd / _bwd on one packed row [1, T, C] with seq_bounds: out, d_values and
    d_logits equal each sequence run alone by the float64 reference; probs is the plain softmax."""
    kernel_size, padding_l = taps
    cu = _cu_seqlens(packing)
    total, num_heads, head_size = int(cu[-1]), 2, 5
    g = torch.Generator().manual_seed(total + kernel_size)
    values = torch.randn(1, total, num_heads * head_size, generator=g, dtype=torch.float64).to(dtype)
    logits = (torch.randn(1, total, num_heads * kernel_size, generator=g, dtype=torch.float64) * 2).to(dtype)
    grad_out = torch.randn(1, total, num_heads * head_size, generator=g, dtype=torch.float64).to(dtype)
    mask = _packed_mask(total, kernel_size) if with_mask else None
    ops = torch.ops.convbert_kernels
    out, probs = ops.native_dynamic_fwd(values, logits, num_heads, padding_l, mask, _seq_bounds(cu), True)
    d_values, d_logits = ops.native_dynamic_bwd(grad_out, values, probs, num_heads, padding_l, mask,
                                                _seq_bounds(cu))

    want, want_grads = _each_sequence_alone(
        cu, lambda v, lg, m: ck.dynamic_conv(v, lg, num_heads, padding_l=padding_l, padding_mask=m,
                                             backend="reference"),
        [values, logits], [], grad_out, mask)
    what = f"packed dynamic_conv K={kernel_size} padding_l={padding_l}"
    assert_close_to(out, want, dtype, f"{what} forward")
    softmax = torch.softmax(logits.double().view(1, total, num_heads, kernel_size), -1)
    assert_close_to(probs, softmax, dtype, f"{what} probs")
    for name, got, expected in zip(DYNAMIC_GRAD_NAMES, [d_values, d_logits], want_grads):
        assert_close_to(got, expected, dtype, f"{what} {name}")


@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("packing", list(PACKINGS))
@pytest.mark.parametrize("taps", TAPS, ids=_packed_case_id)
def test_packed_span_ops_equal_each_sequence_alone(native, taps, packing, dtype, with_mask):
    """native_span_fwd / _bwd on one packed row with seq_bounds: out and every gradient equal each
    sequence run alone by the float64 reference (d_weight, d_bias summed over the sequences)."""
    kernel_size, padding_l = taps
    cu = _cu_seqlens(packing)
    total, num_heads, head_size, a_dim = int(cu[-1]), 2, 5, 6
    g = torch.Generator().manual_seed(total * kernel_size)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    rows = num_heads * kernel_size
    inputs = [rand(1, total, a_dim), rand(1, total, a_dim), rand(1, total, num_heads * head_size),
              rand(rows, a_dim, scale=0.4), rand(rows, scale=0.5)]
    grad_out = rand(1, total, num_heads * head_size)
    mask = _packed_mask(total, kernel_size + 1) if with_mask else None
    ops = torch.ops.convbert_kernels
    out, probs = ops.native_span_fwd(*inputs, num_heads, padding_l, mask, _seq_bounds(cu), True)
    grads = ops.native_span_bwd(grad_out, *inputs[:4], probs, num_heads, padding_l, mask, _seq_bounds(cu))

    want, want_grads = _each_sequence_alone(
        cu, lambda q, kc, v, w, b, m: ck.span_dynamic_conv(q, kc, v, w, b, num_heads, padding_l=padding_l,
                                                           padding_mask=m, backend="reference"),
        inputs[:3], inputs[3:], grad_out, mask)
    what = f"packed span_dynamic_conv K={kernel_size} padding_l={padding_l}"
    assert_close_to(out, want, dtype, f"{what} forward")
    for name, got, expected in zip(GRAD_NAMES, grads, want_grads):
        assert_close_to(got, expected, dtype, f"{what} {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
def test_batch_row_seq_bounds_equal_no_seq_bounds(native, with_mask, dtype):
    """seq_bounds [b * L, b * L + L) on a [B, L, C] batch is what no seq_bounds means: the same bits
    from all four ops."""
    batch, length, num_heads, kernel_size = 3, 37, 3, 5
    span = make_span_inputs(batch, length, 8, 12, num_heads, kernel_size, with_mask=with_mask, seed=4)
    q, kc, v, w, b = (t.detach().to(dtype) for t in span.tensors())
    logits = (torch.randn(batch, length, num_heads * kernel_size, generator=torch.Generator().manual_seed(3))
              * 2).to(dtype)
    grad_out = torch.randn(v.shape, generator=torch.Generator().manual_seed(8)).to(dtype)
    mask, rows = span.padding_mask, _batch_bounds(batch, length)
    ops = torch.ops.convbert_kernels
    for padding_l in (0, 2, 4):
        results = []
        for sb in (None, rows):
            span_out = ops.native_span_fwd(q, kc, v, w, b, num_heads, padding_l, mask, sb, True)
            dyn_out = ops.native_dynamic_fwd(v, logits, num_heads, padding_l, mask, sb, True)
            results.append([*span_out, *dyn_out,
                            *ops.native_span_bwd(grad_out, q, kc, v, w, span_out[1], num_heads, padding_l, mask, sb),
                            *ops.native_dynamic_bwd(grad_out, v, dyn_out[1], num_heads, padding_l, mask, sb)])
        for i, (a, b_) in enumerate(zip(*results)):
            assert torch.equal(a, b_), (padding_l, i)


def test_packed_sequences_never_read_their_neighbours_raw_ops(native):
    """inf values and upstream gradients in one packed sequence change no bit of any other
    sequence's outputs or gradients (rows outside a sequence are skipped, not multiplied by 0)."""
    cu = torch.tensor([0, 6, 9, 30])
    sb, num_heads, kernel_size, padding_l = _seq_bounds(cu), 2, 5, 2
    g = torch.Generator().manual_seed(0)
    values, grad_out = torch.randn(1, 30, 6, generator=g), torch.randn(1, 30, 6, generator=g)
    logits = torch.randn(1, 30, num_heads * kernel_size, generator=g)
    ops = torch.ops.convbert_kernels

    def run(v, go):
        out, probs = ops.native_dynamic_fwd(v, logits, num_heads, padding_l, None, sb, True)
        return [out, *ops.native_dynamic_bwd(go, v, probs, num_heads, padding_l, None, sb)]

    clean = run(values, grad_out)
    poisoned_v, poisoned_g = values.clone(), grad_out.clone()
    poisoned_v[:, 6:9] = float("inf")
    poisoned_g[:, 6:9] = float("nan")
    poisoned = run(poisoned_v, poisoned_g)
    for name, a, b in zip(["out", "d_values", "d_logits"], clean, poisoned):
        assert torch.equal(a[:, :6], b[:, :6]) and torch.equal(a[:, 9:], b[:, 9:]), name


@pytest.mark.parametrize("padding_l", [0, 4, 8])
def test_packed_results_independent_of_thread_count(native, padding_l):
    """With seq_bounds too, every output of the four ops has the same bits on 1 or 2+ threads
    (sequences across tiles and the 256-token ranges)."""
    lengths = torch.tensor([3, 0, 250, 1, 17, 300, 9, 0, 120])
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    total, sb = int(cu[-1]), _seq_bounds(cu)
    span = make_span_inputs(1, total, 24, 24, 3, 9, seed=13)
    q, kc, v, w, b = (t.detach() for t in span.tensors())
    logits = torch.randn(1, total, 27, generator=torch.Generator().manual_seed(1))
    mask = _packed_mask(total, 2)
    g = torch.randn_like(v)
    ops = torch.ops.convbert_kernels

    def run():
        span_out = ops.native_span_fwd(q, kc, v, w, b, 3, padding_l, mask, sb, True)
        dyn_out = ops.native_dynamic_fwd(v, logits, 3, padding_l, mask, sb, True)
        return [*span_out, *dyn_out, *ops.native_span_bwd(g, q, kc, v, w, span_out[1], 3, padding_l, mask, sb),
                *ops.native_dynamic_bwd(g, v, dyn_out[1], 3, padding_l, mask, sb)]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(max(2, threads))
        many = run()
    finally:
        torch.set_num_threads(threads)
    for i, (a, b_) in enumerate(zip(one, many)):
        assert torch.equal(a, b_), i


def test_bad_seq_bounds_is_refused_by_the_raw_ops(native):
    """seq_bounds of another dtype or shape than int64 [2, B*L] is a RuntimeError naming it, from
    each of the four ops."""
    ops = torch.ops.convbert_kernels
    inputs = make_span_inputs(2, 7, 6, 12, 3, 4)
    q, kc, v, w, b = (t.detach() for t in inputs.tensors())
    logits = torch.randn(2, 7, 12)
    probs = ops.native_dynamic_fwd(v, logits, 3, 1, None, None, True)[1]
    good = _batch_bounds(2, 7)
    shape = r"seq_bounds must be \[2, B\*L\] = \[2, 14\]"
    bad = [
        ("seq_bounds must be int64", good.int()),
        ("seq_bounds must be int64", good.double()),
        (shape, good[:, :7]),
        (shape, good.t().contiguous()),
        (shape, torch.cat([good, good[:1]])),
        (shape, good.reshape(-1)),
    ]
    for match, sb in bad:
        calls = {
            "span_fwd": lambda: ops.native_span_fwd(q, kc, v, w, b, 3, 1, None, sb, True),
            "span_bwd": lambda: ops.native_span_bwd(v, q, kc, v, w, probs, 3, 1, None, sb),
            "dynamic_fwd": lambda: ops.native_dynamic_fwd(v, logits, 3, 1, None, sb, True),
            "dynamic_bwd": lambda: ops.native_dynamic_bwd(v, v, probs, 3, 1, None, sb),
        }
        for name, call in calls.items():
            with pytest.raises(RuntimeError, match=match):
                call()
    # and the good one runs
    ops.native_dynamic_fwd(v, logits, 3, 1, None, good, True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_packed_ops_equal_cpu_ops(native, dtype):
    """The CUDA kernels with seq_bounds (tiles spanning several sequences) against the CPU kernels,
    tested above against each sequence alone: all four ops, at three window offsets, with and
    without a padding mask; and inf / NaN in one sequence reach no other one."""
    assert native.HAS_CUDA_KERNELS
    lengths = torch.tensor([3, 0, 70, 1, 17, 2, 45, 0, 9])
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    total, sb, num_heads, kernel_size = int(cu[-1]), _seq_bounds(cu), 3, 9
    span = make_span_inputs(1, total, 20, 24, num_heads, kernel_size, seed=21)
    cpu_inputs = [t.detach().to(dtype) for t in span.tensors()]
    logits = (torch.randn(1, total, num_heads * kernel_size, generator=torch.Generator().manual_seed(2)) * 2).to(dtype)
    grad_out = torch.randn(1, total, 24, generator=torch.Generator().manual_seed(3)).to(dtype)
    ops = torch.ops.convbert_kernels
    tol = 1e-5 if dtype == torch.float32 else 2e-2

    def run(device, inputs, lg, go, m, padding_l):
        q, kc, v, w, b = (t.to(device) for t in inputs)
        lg, go, bounds = lg.to(device), go.to(device), sb.to(device)
        m = None if m is None else m.to(device)
        span_out = ops.native_span_fwd(q, kc, v, w, b, num_heads, padding_l, m, bounds, True)
        dyn_out = ops.native_dynamic_fwd(v, lg, num_heads, padding_l, m, bounds, True)
        return [t.cpu() for t in (
            *span_out, *dyn_out,
            *ops.native_span_bwd(go, q, kc, v, w, span_out[1], num_heads, padding_l, m, bounds),
            *ops.native_dynamic_bwd(go, v, dyn_out[1], num_heads, padding_l, m, bounds))]

    for padding_l in (0, 4, 8):
        for m in (None, _packed_mask(total, 1)):
            want = run("cpu", cpu_inputs, logits, grad_out, m, padding_l)
            got = run("cuda", cpu_inputs, logits, grad_out, m, padding_l)
            for i, (a, b) in enumerate(zip(got, want)):
                scale = b.double().abs().max().clamp_min(1e-30)
                err = (a.double() - b.double()).abs().max()
                assert err <= tol * scale, (padding_l, m is None, i, float(err), float(scale))
    # inf / NaN in sequence [73, 74) (length 1) and [74, 91): no other token changes
    poisoned_v, poisoned_g = cpu_inputs[2].clone(), grad_out.clone()
    poisoned_v[:, 73:91], poisoned_g[:, 73:91] = float("inf"), float("nan")
    clean = run("cuda", cpu_inputs, logits, grad_out, None, 4)
    poisoned = run("cuda", cpu_inputs[:2] + [poisoned_v] + cpu_inputs[3:], logits, poisoned_g, None, 4)
    for i in (0, 2, 4, 5, 6, 9, 10):  # every per-token output but probs: out, d_query, ..., d_logits
        assert torch.equal(clean[i][:, :73], poisoned[i][:, :73]), i
        assert torch.equal(clean[i][:, 91:], poisoned[i][:, 91:]), i


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the phase harness builds with g++ on Linux")
def test_cpu_phase_harness_builds_and_accounts_for_the_op(tmp_path):
    """benchmarks/cpu_phases.cpp (scripts/cpu_phases.sh): the CPU kernels with their phase hooks
    compiled into a standalone program; on an awkward small case every phase is timed, the phases
    add up to no more than the forward + backward CPU time, and the outputs are finite and nonzero."""
    import re
    import shutil

    from torch.utils.cpp_extension import include_paths

    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no g++ on PATH (the extension's own build needs one too)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    exe = tmp_path / "cpu_phases"
    subprocess.run([compiler, "-O1", "-std=c++17", "-fno-trapping-math", *(f"-I{p}" for p in include_paths()),
                    os.path.join(root, "benchmarks", "cpu_phases.cpp"), "-o", str(exe)], check=True)
    for isa in ("base", "avx2", "avx512"):  # the program falls back to what the CPU has, as the extension
        run = subprocess.run([str(exe), "--batch", "2", "--seq-len", "37", "--dims", "20,20,4,5", "--rounds", "2"],
                             check=True, capture_output=True, text=True,
                             env={**os.environ, "CONVBERT_KERNELS_CPU_ISA": isa})
        rows = dict(re.findall(r"^\| ([a-z][^|]*?) \| ([0-9.]+) \|", run.stdout, flags=re.M))
        phases = {name: float(ms) for name, ms in rows.items() if ":" in name}
        assert len(phases) == 7 and all(ms >= 0 for ms in phases.values()), run.stdout
        total = float(rows["forward (thread CPU time)"]) + float(rows["backward (thread CPU time)"])
        assert 0 < sum(phases.values()) <= total * 1.001 + 1e-3, run.stdout  # sub-intervals of the totals
        checksum = float(re.search(r"^checksum (\S+)$", run.stdout, flags=re.M).group(1))
        assert checksum > 0, run.stdout
