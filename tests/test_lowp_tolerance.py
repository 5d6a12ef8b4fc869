"""The fp16/bf16 tolerances of tests/oracle.py, justified on CPU for exactly the GPU tests' cases.

For every low-precision case in ``oracle.GPU_CASES`` a float64 emulation of the kernel's
arithmetic with its rounding points (tests/lowp_emulation.py) must stay within half the
tolerance of the float64 reference on the rounded inputs; the other half is the margin for the
GPU's fp32 accumulation order. The emulation itself is checked against the float64 reference
(no rounding, and rounding to fp32), against the Triton interpreter at fp16 and against the
native CPU kernels (the CUDA path's arithmetic) at fp16 and bf16. Run with ``-s`` to see the
worst errors.
"""

from __future__ import annotations

import functools
import os
from dataclasses import replace

import pytest
import torch

import convbert_kernels as ck
import lowp_emulation as emu
from oracle import (
    AWKWARD_SHAPES,
    DYNAMIC_GRAD_NAMES,
    GPU_CASES,
    GRAD_NAMES,
    LOW_PRECISION,
    TOLERANCE,
    TRITON_EXTRA_SHAPES,
    GpuCase,
    dynamic_grad_out,
    make_dynamic_inputs,
    relative_error,
    run_dynamic,
    run_span,
    span_grad_out,
)

F64 = torch.float64
LOWP_CASES = [c for c in GPU_CASES if c.dtype in LOW_PRECISION]


@pytest.fixture(autouse=True)
def _one_thread():
    """Hundreds of small tensors: intra-op threads only add synchronisation (7x slower on a busy
    2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _names(case):
    return ["out"] + (GRAD_NAMES if case.op == "span" else DYNAMIC_GRAD_NAMES)


def _reference(case, round_to):
    """Float64 reference (out, grads) of ``case`` on inputs and grad_out rounded to ``round_to``."""
    if case.op == "span":
        inputs = case.span_inputs().to(round_to).to(F64)
        return run_span(inputs, "reference", span_grad_out(inputs.values.shape).to(round_to).double())
    values, logits, mask = make_dynamic_inputs(case.shape, with_mask=case.with_mask, seed=case.seed)
    v, lg = (t.to(round_to).double().requires_grad_(True) for t in (values, logits))
    return run_dynamic(v, lg, case.shape[4], mask, "reference", dynamic_grad_out(values.shape).to(round_to).double(),
                       case.padding_l)


def _emulate(case, dtype, kernel=None):
    """Emulated (out, grads) of ``case`` with rounding to ``dtype`` (float64: none)."""
    if case.op == "span":
        inputs = case.span_inputs()
        q, kc, v, w, b = emu.rounded([inputs.query, inputs.key_conv, inputs.values, inputs.weight, inputs.bias],
                                     case.dtype)
        (g,) = emu.rounded([span_grad_out(v.shape)], case.dtype)
        return emu.span_dynamic_conv(q, kc, v, w, b, case.shape[4], inputs.padding_mask, g, dtype,
                                     kernel or case.backend, case.padding_l)
    values, logits, mask = make_dynamic_inputs(case.shape, with_mask=case.with_mask, seed=case.seed)
    v, lg, g = emu.rounded([values, logits, dynamic_grad_out(values.shape)], case.dtype)
    return emu.dynamic_conv(v, lg, case.shape[4], mask, g, dtype, case.padding_l)


def _old_criterion_ratio(actual, unrounded_ref):
    """The old check's max|actual - ref| / (1e-2 * max|ref|), ref from the unrounded inputs (> 1 fails)."""
    scale = unrounded_ref.abs().max().clamp_min(1e-30)
    return ((actual - unrounded_ref).abs().max() / (1e-2 * scale)).item()


@functools.lru_cache(maxsize=None)
def _emulated_errors():
    """[(case, output name, emulated norm-relative error, old-criterion ratio)] for LOWP_CASES."""
    # the reference depends on neither the backend nor, unrounded, the dtype: share it between cases
    reference = functools.lru_cache(maxsize=None)(_reference)
    rows = []
    for case in LOWP_CASES:
        e_out, e_grads = _emulate(case, case.dtype)
        r_out, r_grads = reference(replace(case, backend=""), case.dtype)
        # what the old check compared with: float64 of the unrounded (fp32) inputs and grad_out
        o_out, o_grads = reference(replace(case, backend="", dtype=torch.float32), torch.float32)
        for name, e, r, o in zip(_names(case), [e_out, *e_grads], [r_out, *r_grads], [o_out, *o_grads]):
            rows.append((case, name, relative_error(e, r), _old_criterion_ratio(e, o)))
    return rows


def _report(title, rows, value):
    """Print the worst row per (backend, dtype, output)."""
    worst = {}
    for row in rows:
        case, name = row[0], row[1]
        key = (case.backend, str(case.dtype).removeprefix("torch."), name)
        if key not in worst or value(row) > value(worst[key]):
            worst[key] = row
    print(f"\n{title}")
    for key, row in sorted(worst.items()):
        print(f"  {'/'.join(key):32s} {value(row):.3e}  ({row[0]})")


def test_emulated_errors_are_at_most_half_the_tolerance():
    rows = _emulated_errors()
    assert {case.dtype for case, *_ in rows} == set(LOW_PRECISION)
    _report("worst emulated norm-relative error (tolerance: fp16 %.1e, bf16 %.1e)"
            % (TOLERANCE[torch.float16], TOLERANCE[torch.bfloat16]), rows, lambda r: r[2])
    bad = [f"{case} {name}: {err:.3e} > {TOLERANCE[case.dtype] / 2:.2e}"
           for case, name, err, _ in rows if not err <= TOLERANCE[case.dtype] / 2]
    assert not bad, "emulated error above half the tolerance:\n" + "\n".join(bad)
    # and the tolerance is not needlessly loose: the worst case uses more than a quarter of it
    for dtype in LOW_PRECISION:
        assert max(err for case, _, err, _ in rows if case.dtype == dtype) > TOLERANCE[dtype] / 4, dtype


def test_old_criterion_fails_an_exact_bf16_kernel():
    """The old check (max error vs the unrounded inputs' reference <= 1e-2 x max|ref|) fails a
    kernel that does nothing wrong but round as it must: the fault the new comparison removes."""
    rows = _emulated_errors()
    _report("old criterion, max error / (1e-2 x max|ref|), > 1 fails", rows, lambda r: r[3])
    failing = {str(case) for case, _, _, ratio in rows if case.dtype == torch.bfloat16 and ratio > 1}
    print(f"  the old criterion fails {len(failing)} of {sum(c.dtype == torch.bfloat16 for c in LOWP_CASES)} "
          "bf16 GPU cases of an exact kernel")
    assert failing, "the old criterion passed every emulated bf16 case"


# ---- the emulation itself ---------------------------------------------------------------------

# a few cases of each kind (op, backend, mask, bias, contiguity), small enough for the interpreter
_CHECK_SHAPES = AWKWARD_SHAPES + TRITON_EXTRA_SHAPES[:2] + [(2, 37, 40, 12, 2, 9)]
_VALIDATION_CASES = [GpuCase(kernel, "span", s, torch.float16, with_mask=i % 2 == 1, seed=i)
                     for i, s in enumerate(_CHECK_SHAPES) for kernel in ("triton", "native")]
_VALIDATION_CASES += [GpuCase(kernel, "dynamic", s, torch.float16, True, seed=i)
                      for i, s in enumerate(AWKWARD_SHAPES) for kernel in ("triton", "native")]
_VALIDATION_CASES += [GpuCase(kernel, "span", (2, 9, 10, 12, 3, 5), torch.float16, True, seed=0, with_bias=False,
                              non_contiguous=True) for kernel in ("triton", "native")]


@pytest.mark.parametrize("case", _VALIDATION_CASES[::2] + LOWP_CASES[::25], ids=str)  # a sample of both
def test_emulation_without_rounding_is_the_reference(case):
    """Rounding off (float64) the emulation is the float64 reference; rounding to fp32, within 1e-6."""
    for dtype, tol in [(F64, 1e-12), (torch.float32, 1e-6)]:
        e_out, e_grads = _emulate(case, dtype)
        r_out, r_grads = _reference(case, case.dtype)
        for name, e, r in zip(_names(case), [e_out, *e_grads], [r_out, *r_grads]):
            assert relative_error(e, r) <= tol, (dtype, name)


def _run_kernel(case):
    """(out, grads) of ``case``'s backend on CPU (the Triton interpreter or the native CPU kernels)."""
    if case.op == "span":
        inputs = case.span_inputs().to(case.dtype)
        return run_span(inputs, case.backend, span_grad_out(inputs.values.shape).to(case.dtype))
    values, logits, mask = make_dynamic_inputs(case.shape, with_mask=case.with_mask, seed=case.seed)
    v, lg = (t.to(case.dtype).requires_grad_(True) for t in (values, logits))
    return run_dynamic(v, lg, case.shape[4], mask, case.backend, dynamic_grad_out(values.shape))


def _kernel_vs_emulations(cases, kernels):
    """{emulated kernel: {output: ||kernel - emulation|| / ||emulation|| / tolerance}} for each of
    ``kernels``, each norm pooled over ``cases`` (so one ulp flipped in a 5-element tensor does not
    dominate)."""
    sums = {kernel: {} for kernel in kernels}
    for case in cases:
        got = _run_kernel(case)
        for kernel, acc in sums.items():
            want = _emulate(case, case.dtype, kernel)
            for name, k, e in zip(_names(case), [got[0], *got[1]], [want[0], *want[1]]):
                diff, ref = acc.get(name, (0.0, 0.0))
                acc[name] = (diff + (k.double() - e).square().sum().item(), ref + e.square().sum().item())
    tol = TOLERANCE[cases[0].dtype]
    return {kernel: {name: (d / r) ** 0.5 / tol for name, (d, r) in acc.items()} for kernel, acc in sums.items()}


def _check_kernel_matches_its_emulation(cases):
    """The kernel matches the emulation of its own rounding points within 2% of the tolerance, and
    the other kernel's emulation (other rounding points) clearly does not: the check can tell."""
    # on CPU the native backend runs the CPU kernels ("native-cpu": bf16 GEMM operands rounded as
    # Triton's, fp16 ones in fp32); the other model is the one of the two that differs from it
    own = {"triton": "triton", "native": "native-cpu"}[cases[0].backend]
    rounds_operands = own == "triton" or cases[0].dtype == torch.bfloat16
    other = "fp32-operands" if rounds_operands else "triton"
    fractions = _kernel_vs_emulations(cases, (own, other))
    print(f"\n{own} {cases[0].dtype} on CPU vs emulation, fraction of the tolerance: "
          + ", ".join(f"{n} {f:.1e}" for n, f in fractions[own].items())
          + f"; vs the {other} emulation: up to {max(fractions[other].values()):.2f}")
    assert max(fractions[own].values()) <= 0.02, fractions[own]
    assert max(fractions[other].values()) >= 0.1, fractions[other]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or "triton" not in ck.available_backends("cpu"),
                    reason="needs the Triton interpreter (TRITON_INTERPRET=1)")
def test_emulation_matches_triton_interpreter_fp16():
    """The interpreter computes fp16 tl.dot as the GPU does (bf16 it does not)."""
    _check_kernel_matches_its_emulation([c for c in _VALIDATION_CASES if c.backend == "triton"])


@pytest.mark.skipif("native" not in ck.available_backends("cpu"), reason="native backend not built")
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_emulation_matches_native_cpu(dtype):
    """The native CPU kernels round where the "native-cpu" emulation does: bf16 where Triton and the CUDA
    kernels do (bfloat16 GEMM operands), fp16 with fp32 inside (inputs and outputs in the dtype); and
    clearly not where the other rounding model does."""
    _check_kernel_matches_its_emulation(
        [GpuCase("native", c.op, c.shape, dtype, c.with_mask, c.seed, c.with_bias, c.non_contiguous)
         for c in _VALIDATION_CASES if c.backend == "native"])
