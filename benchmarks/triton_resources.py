"""Ahead-of-time resource check of every Triton kernel specialisation the launchers produce.

No GPU needed. The launchers of :mod:`convbert_kernels.triton_kernels` run on CPU tensors of the
benchmark shapes and the test extremes with a stand-in Triton driver that reports an sm_90 (or
sm_80) target, and ``_run`` compiles each kernel with ``warmup`` instead of launching it. So the
compiled specialisations are exactly the launchers' own: the same constexprs and warps, the
same pointer-alignment and divisible-by-16 hints that Triton derives from the real arguments,
and the same decision to lift ptxas's register cap where the default compile would spill.
Each cubin's registers, local memory (spills) and shared memory come from ``cuobjdump
--dump-resource-usage``; the occupancy follows CUDA's rules (:func:`programs_per_sm`).

Checks: no local memory or stack (no spills) and shared memory within the per-block limit, for
every specialisation on every architecture asked for.

    python -m benchmarks.triton_resources                    # sm_90 and sm_80, print the table
    python -m benchmarks.triton_resources --check --out benchmarks/results/triton-resources.md

Must run without ``TRITON_INTERPRET`` (the launchers' GPU configuration is wanted).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

# Per-SM and per-block limits by architecture (CUDA programming guide, compute capabilities).
ARCH_LIMITS = {
    90: dict(regs_per_sm=65536, max_threads_per_sm=2048, shared_per_sm=233472, shared_per_block=232448),
    80: dict(regs_per_sm=65536, max_threads_per_sm=2048, shared_per_sm=167936, shared_per_block=166912),
}


@dataclass(frozen=True)
class Case:
    """One call pattern of the launchers: shapes, dtype and the switches that specialise kernels."""

    label: str
    batch: int
    length: int
    a_dim: int
    channels: int
    heads: int
    taps: int
    dtype: torch.dtype
    mask: bool = False
    save_probs: bool = True
    bias: bool = True
    int64: bool = False  # force the 64-bit-offset variant (taken for tensors past 2^31 elements)
    tf32: bool = False  # fp32 with torch's TF32 switch on
    causal: bool = False  # padding_l = K - 1 (decoders) rather than the centred window
    packed: bool = False  # per-token sequence bounds (packed sequences, cu_seqlens)
    span: bool = True  # span_dynamic_conv's launchers too, not only dynamic_conv's

    @property
    def padding_l(self) -> int:
        return self.taps - 1 if self.causal else (self.taps - 1) // 2


def cases() -> list[Case]:
    """The benchmark shapes (kernel sweep and every model size) and the tests' extremes."""
    from convbert import ConvBertConfig
    from convbert.configuration import MODEL_SIZES

    out = []
    dtypes = (torch.bfloat16, torch.float16, torch.float32)
    # the kernel benchmark (base dims), every switch
    for dtype in dtypes:
        for mask in (False, True):
            for save in (True, False):
                out.append(Case("bench base", 32, 512, 384, 384, 6, 9, dtype, mask=mask, save_probs=save))
    out.append(Case("bench base L=4096", 8, 4096, 384, 384, 6, 9, torch.bfloat16))
    # the window benchmark's causal dynamic_conv (P a constexpr of its own): K = 7 and 31, d = 64;
    # and the causal span op at base dims
    for dtype in dtypes:
        for taps in (7, 31):
            out.append(Case("causal window", 8, 1024, 512, 512, 8, taps, dtype, causal=True, span=False))
        out.append(Case("causal base", 8, 512, 384, 384, 6, 9, dtype, causal=True))
        # packed sequences (the unpadded model at base dims): the kernels with sequence bounds
        out.append(Case("packed base", 1, 4096, 384, 384, 6, 9, dtype, packed=True))
    out.append(Case("bench base, TF32", 32, 512, 384, 384, 6, 9, torch.float32, tf32=True))
    # the model benchmark and training at every published size
    for size, kwargs in MODEL_SIZES.items():
        config = ConvBertConfig(**kwargs)
        for dtype in dtypes:
            for mask in (False, True):
                out.append(Case(f"model {size}", 8, 512, config.all_head_size, config.all_head_size,
                                config.num_heads, config.conv_kernel_size, dtype, mask=mask))
    # the tests' extremes
    for dtype in dtypes:
        for mask in (False, True):
            for save in (True, False):
                out.append(Case("K=31, d=3", 2, 37, 20, 21, 7, 31, dtype, mask=mask, save_probs=save))
                out.append(Case("d=256, 8 heads", 2, 70, 64, 2048, 8, 9, dtype, mask=mask, save_probs=save))
        out.append(Case("K=1, d=3, L=1", 3, 1, 6, 9, 3, 1, dtype, mask=True))
        out.append(Case("A=5, d=48, no bias", 1, 9, 5, 48, 1, 11, dtype, bias=False))
        out.append(Case("64-bit offsets", 2, 300, 384, 384, 6, 9, dtype, mask=True, int64=True))
    return out


@dataclass
class Specialisation:
    arch: int
    kernel: str
    dtype: str
    config: str
    num_warps: int
    regs: int
    local_bytes: int
    stack_bytes: int
    shared_bytes: int
    programs_per_sm: int
    cases: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        limits = ARCH_LIMITS[self.arch]
        found = []
        if self.local_bytes or self.stack_bytes:
            found.append(f"spills: {self.local_bytes} B local memory, {self.stack_bytes} B stack per thread")
        if self.shared_bytes > limits["shared_per_block"]:
            found.append(f"shared memory {self.shared_bytes} B > per-block limit {limits['shared_per_block']} B")
        return found


class _TargetDriver:
    """Just enough of a Triton driver for ``JITFunction.warmup`` to compile for ``arch``."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return self.arch  # a distinct device id per arch keeps Triton's per-device caches apart

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


def _cuobjdump() -> str:
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.exists() else "cuobjdump"


def cubin_resources(cubin: bytes) -> dict[str, int]:
    """``REG``, ``STACK``, ``SHARED``, ``LOCAL`` of the (single) function in ``cubin``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        text = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.unlink(f.name)
    return parse_resource_usage(text)


def parse_resource_usage(text: str) -> dict[str, int]:
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    if not {"REG", "STACK", "SHARED", "LOCAL"} <= fields.keys():
        raise RuntimeError(f"unexpected cuobjdump output:\n{text}")
    return {key: int(value) for key, value in fields.items()}


def _config_text(meta: dict) -> str:
    names = ("K", "P", "N_PAD", "K_PAD", "D_PAD", "BLOCK_T", "BLOCK_A")
    parts = [f"{n}={meta[n]}" for n in names if n in meta]
    flags = [n for n in ("FUSED", "HAS_BIAS", "HAS_MASK", "HAS_BOUNDS", "SAVE_PROBS", "INT64") if meta.get(n)]
    if meta.get("PREC") == "tf32":
        flags.append("TF32")
    if meta.get("maxnreg"):
        flags.append(f"maxnreg={meta['maxnreg']}")
    return " ".join(parts + flags)


def _inputs(case: Case):
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(case.dtype)

    q, kc = randn(case.batch, case.length, case.a_dim), randn(case.batch, case.length, case.a_dim)
    v = randn(case.batch, case.length, case.channels)
    w, b = randn(case.heads * case.taps, case.a_dim), randn(case.heads * case.taps)
    mask = None
    if case.mask:
        mask = torch.ones(case.batch, case.length, dtype=torch.bool)
        mask[0, case.length // 2 + 1:] = False
    return q, kc, v, w, (b if case.bias else None), mask


def _bounds(case: Case):
    """Per-token sequence bounds for a packed case: one packed row of the batch's sequences."""
    if not case.packed:
        return None
    rows = torch.arange(case.batch * case.length)
    start = rows - rows % case.length
    return torch.stack([start, start + case.length])


def _run_launchers(k, case: Case) -> None:
    """Every launcher the backend's ops call for this case: span and dynamic, forward and backward."""
    q, kc, v, w, b, mask = _inputs(case)
    bounds = _bounds(case)
    if case.span:
        k.span_forward(q, kc, v, w, b, case.heads, case.padding_l, mask, bounds, save_probs=case.save_probs)
    logits = torch.zeros(case.batch, case.length, case.heads * case.taps, dtype=case.dtype)
    out, probs = k.dynamic_forward(v, logits, case.heads, case.padding_l, mask, bounds, save_probs=case.save_probs)
    if case.save_probs:  # the backward exists only where the forward saved probabilities
        probs = torch.rand(case.batch, case.length, case.heads, case.taps, dtype=probs.dtype)
        if case.span:
            k.span_backward(out, q, kc, v, w, probs, case.heads, case.padding_l, mask, bounds)
        k.window_backward(out, v, probs, case.heads, case.padding_l, mask, bounds, case.dtype)


def collect(archs=(90, 80), progress=True) -> list[Specialisation]:
    """Compile every specialisation of :func:`cases` for each arch; one row per distinct cubin."""
    from triton.runtime import driver

    from convbert_kernels import triton_kernels as k

    if k.INTERPRET:
        raise RuntimeError("run without TRITON_INTERPRET=1: the interpreter's launch configuration is not the GPU's")
    found: dict[tuple, Specialisation] = {}

    def spills(compiled) -> bool:  # what _spills reads from the loaded binary on a GPU
        usage = cubin_resources(compiled.asm["cubin"])
        return bool(usage["LOCAL"] or usage["STACK"])

    def compile_instead(kernel, grid, args, meta):  # stands in for _run: compile, don't launch
        compiled = kernel.warmup(*args, grid=grid, **meta)
        key = (arch, compiled.hash)
        if key not in found:
            usage = cubin_resources(compiled.asm["cubin"])
            shared = compiled.metadata.shared + usage["SHARED"]
            limits = ARCH_LIMITS[arch]
            found[key] = Specialisation(
                arch=arch, kernel=kernel.__name__, dtype=str(case.dtype).replace("torch.", ""),
                config=_config_text(meta), num_warps=compiled.metadata.num_warps, regs=usage["REG"],
                local_bytes=usage["LOCAL"], stack_bytes=usage["STACK"], shared_bytes=shared,
                programs_per_sm=k.programs_per_sm(
                    usage["REG"], compiled.metadata.num_warps, shared, regs_per_sm=limits["regs_per_sm"],
                    max_threads_per_sm=limits["max_threads_per_sm"], shared_per_sm=limits["shared_per_sm"]),
            )
        if case.label not in found[key].cases:
            found[key].cases.append(case.label)

    all_cases = cases()
    previous = driver._active  # reset_active() would look for a real GPU driver
    for arch in archs:
        driver.set_active(_TargetDriver(arch))
        try:
            for i, case in enumerate(all_cases):
                if progress:
                    print(f"[sm_{arch}] {i + 1}/{len(all_cases)} {case.label} {case.dtype}", file=sys.stderr, flush=True)
                with contextlib.ExitStack() as stack:
                    stack.enter_context(_patched(k, "_run", compile_instead))
                    stack.enter_context(_patched(k, "_spills", spills))
                    stack.enter_context(_patched(k, "_CAP_LIFTED", {}))
                    if case.int64:
                        stack.enter_context(_patched(k, "_needs_int64", lambda *tensors: True))
                    stack.enter_context(_patched(k, "_matmul_allows_tf32", lambda: case.tf32))
                    _run_launchers(k, case)
        finally:
            driver._active = previous
    return sorted(found.values(), key=lambda s: (-s.arch, s.kernel, s.dtype, s.config))


@contextlib.contextmanager
def _patched(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def markdown(rows: list[Specialisation]) -> str:
    import triton

    lines = [
        "# Triton kernels: registers, spills, shared memory and occupancy per specialisation",
        "",
        f"Compiled ahead of time (no GPU) by `python -m benchmarks.triton_resources` with triton {triton.__version__}, "
        f"torch {torch.__version__}; resources from `cuobjdump --dump-resource-usage`; programs/SM by CUDA's "
        "occupancy rules (registers in 256-per-warp units, 1 KiB shared memory reserved per block). "
        "`local` is local memory per thread: 0 means no spills.",
        "",
        "| arch | kernel | dtype | specialisation | warps | regs | local B | shared B | programs/SM | occupancy | from |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        occupancy = r.programs_per_sm * r.num_warps * 32 / ARCH_LIMITS[r.arch]["max_threads_per_sm"]
        lines.append(
            f"| sm_{r.arch} | {r.kernel} | {r.dtype} | {r.config} | {r.num_warps} | {r.regs} | "
            f"{r.local_bytes + r.stack_bytes} | {r.shared_bytes} | {r.programs_per_sm} | {occupancy:.0%} | "
            f"{', '.join(r.cases)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="90,80", help="comma-separated compute capabilities, e.g. 90,80")
    p.add_argument("--out", default=None, help="write the markdown table here")
    p.add_argument("--check", action="store_true", help="exit 1 if any specialisation spills or exceeds shared memory")
    p.add_argument("--quiet", action="store_true", help="no per-case progress lines")
    args = p.parse_args(argv)
    rows = collect(tuple(int(a) for a in args.arch.split(",")), progress=not args.quiet)
    table = markdown(rows)
    if args.out:
        Path(args.out).write_text(table)
    print(table)
    problems = [f"sm_{r.arch} {r.kernel} {r.dtype} {r.config}: {issue}" for r in rows for issue in r.problems()]
    print(f"{len(rows)} specialisations, {len(problems)} with problems", flush=True)
    for line in problems:
        print("PROBLEM:", line)
    return 1 if (args.check and problems) else 0


if __name__ == "__main__":
    sys.exit(main())
