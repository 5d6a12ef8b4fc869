"""Kernel benchmark: ``span_dynamic_conv`` forward / backward / forward+backward per provider.

Providers: every backend ``convbert_kernels.available_backends(device)`` lists (reference = the
Hugging Face unfold formulation, eager, triton, native), plus ``compiled-reference`` and
``compiled-eager`` (``torch.compile`` of the reference / eager backend's function: what
torch.compile makes of transformers' own formulation, and of the K shifted multiply-adds). On CPU
the triton backend only exists through the slow Triton interpreter (TRITON_INTERPRET=1) and is
left out unless ``--include-interpreted``.

Modes
    forward   the op on inputs that require grad (a training forward: it saves for backward)
    backward  ``out.backward(grad)`` of one retained forward (gradients reset between calls)
    full      forward + backward

On the CPU the providers of a case are timed in alternation, call by call, mode by mode
(``common.time_cpu_interleaved``; ``--no-interleave`` times them one after the other): a shared
machine's speed drifts by tens of percent over seconds, and alternation lets the drift fall on all
providers alike. ``--versus-dtype`` adds every provider in a second dtype to the same alternation
(e.g. whether native bf16 is faster than native fp32 on this CPU) and prints the two dtypes' ratios.

Every measurement is one JSON line in ``benchmarks/results/kernels-<device>.jsonl`` with the
device, dtype, shapes, versions and git commit (see ``benchmarks/common.py`` for the timing and
memory methods), and a speed-up table is printed at the end. Achieved bandwidth is given against
the op's memory-traffic floor (``floor_bytes`` / time = ``effective_gbps``), as a fraction of the
device's data-sheet DRAM bandwidth (``fraction_of_floor``, CUDA only) and of a device-to-device
copy measured once per run (``copy_gbps``, ``fraction_of_copy``; ``--copy-gbps`` gives it instead).

Examples::

    python -m benchmarks.bench_kernels --preset quick
    python -m benchmarks.bench_kernels --preset cpu
    python -m benchmarks.bench_kernels --preset gpu
    python -m benchmarks.bench_kernels --preset native-vs-compiled --threads 1 --baseline compiled-eager
    python -m benchmarks.bench_kernels --preset native-vs-compiled --threads 1 --providers native --versus-dtype bf16
    python -m benchmarks.bench_kernels --seq-lens 128,512 --batches 8 --dims 384,384,6,9 --dtype fp32
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import convbert_kernels
from benchmarks import common

PROVIDER_ORDER = ("reference", "compiled-reference", "eager", "compiled-eager", "triton", "native")
COMPILED_PROVIDERS = {"compiled-reference": "reference", "compiled-eager": "eager"}  # name -> backend compiled
MODES = ("forward", "backward", "full")

# Peak DRAM bandwidth (GB/s) by device-name fragment, to express the measured time as a fraction of
# the memory-traffic floor. Override with --peak-gbps.
PEAK_GBPS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0,
             "H100 NVL": 3900.0, "A100-SXM4-80GB": 2039.0, "A100 80GB PCIe": 1935.0,
             "A100-SXM4-40GB": 1555.0, "A100-PCIE-40GB": 1555.0, "L4": 300.0, "A10": 600.0}


@dataclass(frozen=True)
class Case:
    batch: int
    seq_len: int
    A: int  # all_head_size of query / key_conv
    C: int  # channels of values, heads * d
    heads: int
    K: int
    dtype: str

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    def floor_bytes(self, mode: str) -> int:
        """Memory-traffic floor of the fused op (docs: convbert-math.md): per token
        forward s*(A + 2C), backward s*(3C + 2A)."""
        s = torch.empty((), dtype=common.dtype_from_name(self.dtype)).element_size()
        fwd, bwd = s * (self.A + 2 * self.C), s * (3 * self.C + 2 * self.A)
        return self.tokens * {"forward": fwd, "backward": bwd, "full": fwd + bwd}[mode]

    def flops(self, mode: str) -> int:
        """Arithmetic of the fused op, counted as multiply-adds x 2 (docs: convbert-math.md): per token
        forward the product query * key_conv (A), the projection (2AR), softmax (~4R) and the window
        sum (2KC); backward the same product (A), d_ca = d_logits W and d_weight = d_logits^T ca (4AR),
        d_query and d_key_conv (2A), dp and the d_values gather (4KC), the softmax backward (~4R)."""
        R = self.heads * self.K
        fwd = self.A + 2 * self.A * R + 4 * R + 2 * self.K * self.C
        bwd = 3 * self.A + 4 * self.A * R + 4 * self.K * self.C + 4 * R
        return self.tokens * {"forward": fwd, "backward": bwd, "full": fwd + bwd}[mode]


PRESETS = {
    # a minute on a laptop CPU: the README's main command
    "quick": dict(cpu=dict(seq_lens=[128, 512], batches=[4], dims=[(384, 384, 6, 9)], dtype="fp32",
                           modes=["forward", "full"]),
                  cuda=dict(seq_lens=[512, 2048], batches=[8], dims=[(384, 384, 6, 9)], dtype="bf16",
                            modes=["forward", "full"])),
    # the committed CPU sweep (a few minutes on 2 cores) incl. the issue-5 point B=8, L=512
    "cpu": dict(cpu=dict(seq_lens=[128, 256, 512, 1024], batches=[8], dims=[(384, 384, 6, 9)], dtype="fp32",
                         modes=list(MODES), batch_sweep=dict(seq_len=256, batches=[1, 2, 4, 16]))),
    # the GPU sweep: base dims, bf16, L 128..4096 at B=32 and B 8..64 at L=512
    "gpu": dict(cuda=dict(seq_lens=[128, 256, 512, 1024, 2048, 4096], batches=[32], dims=[(384, 384, 6, 9)],
                          dtype="bf16", modes=list(MODES), batch_sweep=dict(seq_len=512, batches=[8, 16, 64]))),
    # issue 14's comparison: native vs torch.compile of the eager backend on CPU, ConvBERT-base's
    # branch (A = C = 384, 6 heads, K = 9), B = 8; run it with --threads 1 and again with all cores
    "native-vs-compiled": dict(cpu=dict(seq_lens=[128, 512, 2048], batches=[8], dims=[(384, 384, 6, 9)],
                                        dtype="fp32", modes=list(MODES)),
                               cuda=dict(seq_lens=[128, 512, 2048], batches=[32], dims=[(384, 384, 6, 9)],
                                         dtype="bf16", modes=list(MODES))),
    # issue 5's acceptance point
    "issue5": dict(cpu=dict(seq_lens=[512], batches=[8], dims=[(384, 384, 6, 9)], dtype="fp32",
                            modes=["forward", "full"]),
                   cuda=dict(seq_lens=[512], batches=[32], dims=[(384, 384, 6, 9)], dtype="bf16",
                             modes=["forward", "full"])),
}


def cases_from(spec: dict) -> list[Case]:
    cases = []
    for A, C, n, K in spec["dims"]:
        for B in spec["batches"]:
            for L in spec["seq_lens"]:
                cases.append(Case(B, L, A, C, n, K, spec["dtype"]))
        sweep = spec.get("batch_sweep")
        if sweep:
            for B in sweep["batches"]:
                case = Case(B, sweep["seq_len"], A, C, n, K, spec["dtype"])
                if case not in cases:
                    cases.append(case)
    return cases


# ----------------------------------------------------------------------------------------------
# Providers
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _compiled(backend: str):
    """``torch.compile`` of a pure-PyTorch backend's ``span_dynamic_conv`` (reference or eager)."""
    import importlib

    module = importlib.import_module(f"convbert_kernels.{backend}")
    # The backward mode replays one graph with retain_graph=True, which compiled backwards with
    # donated buffers refuse; donation only saves memory, the kernels stay the same.
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    # fullgraph: a graph break, or dynamo's recompile limit, raises (an error row) rather than letting
    # eager run, timed under the compiled name
    return torch.compile(module.span_dynamic_conv, fullgraph=True)


def providers(device: torch.device, include_interpreted: bool = False, wanted=None) -> dict:
    """name -> callable(query, key_conv, values, weight, bias, num_heads)."""
    found = {}
    available = convbert_kernels.available_backends(device)
    for name in PROVIDER_ORDER:
        if wanted and name not in wanted:
            continue
        if name in COMPILED_PROVIDERS:
            backend = COMPILED_PROVIDERS[name]
            # the backends' own functions take the window offset explicitly: the centred one here
            found[name] = lambda q, k, v, w, b, n, _backend=backend: _compiled(_backend)(
                q, k, v, w, b, n, (w.shape[0] // n - 1) // 2)
        elif name in available:
            if name == "triton" and device.type == "cpu" and not include_interpreted:
                continue
            found[name] = functools.partial(convbert_kernels.span_dynamic_conv, backend=name)
    return found


def make_inputs(case: Case, device: torch.device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    dtype = common.dtype_from_name(case.dtype)

    def randn(*shape, scale=1.0):
        t = (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)
        return t.requires_grad_(True)

    B, L, A, C, n, K = case.batch, case.seq_len, case.A, case.C, case.heads, case.K
    query, key_conv, values = randn(B, L, A), randn(B, L, A), randn(B, L, C)
    weight, bias = randn(n * K, A, scale=A**-0.5), randn(n * K, scale=0.1)
    grad = (torch.randn(B, L, C, generator=g)).to(device=device, dtype=dtype)
    return (query, key_conv, values, weight, bias), grad


def mode_fn(op, inputs, grad, n, mode):
    """The callable timed for ``mode`` (and a cleanup)."""
    if mode == "forward":
        return lambda: op(*inputs, n)
    if mode == "full":
        return lambda: op(*inputs, n).backward(grad)
    out = op(*inputs, n)  # backward: one forward, retained
    return lambda: out.backward(grad, retain_graph=True)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Prepared:
    """One provider's state for one case: its inputs, after the first call."""
    name: str
    op: object
    inputs: tuple
    grad: torch.Tensor
    base: dict  # the fields every row of this provider and case carries
    first_call_ms: float
    saved_bytes: int | None
    case: Case

    @property
    def key(self) -> str:
        """The name its timings go by: the provider, and the dtype (two dtypes can be timed together)."""
        return f"{self.name}:{self.case.dtype}"


def prepare(case: Case, name: str, op, device: torch.device) -> Prepared | dict:
    """The provider's inputs after one forward + backward (which compiles / autotunes / JIT-builds),
    or, when that call fails, the error text."""
    inputs, grad = make_inputs(case, device)
    base = dict(bench="kernel", provider=name, **asdict(case), **common.environment(device))
    t0 = time.perf_counter()
    try:
        op(*inputs, case.heads).backward(grad)
        _sync(device)
    except Exception as exc:  # noqa: BLE001 -- a provider that cannot run this case is a row too
        return dict(base, error=common.error_text(exc))
    first_call_ms = (time.perf_counter() - t0) * 1e3
    common.reset_grads(inputs)
    try:
        saved = common.saved_bytes(lambda: op(*inputs, case.heads))
    except Exception:  # noqa: BLE001
        saved = None
    return Prepared(name, op, inputs, grad, base, first_call_ms, saved, case)


def _timings(prepared: list[Prepared], fns: dict, device: torch.device, args) -> dict[str, dict | Exception]:
    """key (Prepared.key) -> time_fn's summary, or the exception the provider raised. On the CPU the providers
    are timed in alternation (common.time_cpu_interleaved: drift of a shared machine falls on all
    alike), each for at least --min-time; if one fails there, each is timed alone."""
    grads = {p.key: p.inputs for p in prepared}
    if device.type == "cpu" and args.interleave and len(fns) > 1:
        try:
            return common.time_cpu_interleaved(fns, warmup=args.warmup, repeats=args.repeats,
                                               min_time_s=args.min_time * len(fns), grad_to_none=grads)
        except Exception:  # noqa: BLE001 -- find which one fails, below
            if args.verbose:
                traceback.print_exc()
    out = {}
    for name, fn in fns.items():
        try:
            out[name] = common.time_fn(fn, device, grad_to_none=grads[name], cpu_warmup=args.warmup,
                                       cpu_repeats=args.repeats, cpu_min_time_s=args.min_time)
        except Exception as exc:  # noqa: BLE001
            out[name] = exc
    return out


def measure_case(case: Case, provs: dict, device: torch.device, modes, args) -> list[dict]:
    """Every provider's rows for one case, mode by mode (providers in PROVIDER_ORDER, modes in turn).
    With ``args.versus_dtype``, every provider runs the case in that dtype too, timed in the same
    alternation (on the CPU), so the two dtypes' times compare like with like."""
    variants = [(name, case) for name in provs]
    if getattr(args, "versus_dtype", None):  # main() leaves it None when it is the case's own dtype
        other = replace(case, dtype=args.versus_dtype)
        variants = [v for name in provs for v in ((name, case), (name, other))]
    rows: dict[tuple, list[dict]] = {(name, c.dtype): [] for name, c in variants}
    prepared = []
    for name, c in variants:
        p = prepare(c, name, provs[name], device)
        if isinstance(p, dict):
            rows[name, c.dtype] = [dict(p, mode=m) for m in modes]
        else:
            prepared.append(p)
    for mode in modes:
        fns, ready = {}, []
        for p in prepared:
            row = dict(p.base, mode=mode, first_call_ms=p.first_call_ms, saved_bytes=p.saved_bytes,
                       floor_bytes=p.case.floor_bytes(mode))
            try:
                fns[p.key] = mode_fn(p.op, p.inputs, p.grad, case.heads, mode)
                ready.append((p, row))
            except Exception as exc:  # noqa: BLE001
                rows[p.name, p.case.dtype].append(dict(row, error=common.error_text(exc)))
        timings = _timings([p for p, _ in ready], fns, device, args)
        for p, row in ready:
            timing = timings[p.key]
            try:
                if isinstance(timing, Exception):
                    raise timing
                row.update(timing)
                common.reset_grads(p.inputs)
                row["peak_bytes"] = common.peak_bytes(fns[p.key], device)
                common.reset_grads(p.inputs)
                _rates(row, p.case, mode, device, args)
            except Exception as exc:  # noqa: BLE001
                if args.verbose:
                    traceback.print_exc()
                row["error"] = common.error_text(exc)
            rows[p.name, p.case.dtype].append(row)
        fns = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return [row for key in rows for row in rows[key]]


def _rates(row: dict, case: Case, mode: str, device: torch.device, args) -> None:
    """The rows' derived figures: bandwidth and arithmetic rates, and their fractions of the ceilings."""
    row["effective_gbps"] = row["floor_bytes"] / (row["median_ms"] * 1e-3) / 1e9
    row["flops"] = case.flops(mode)
    row["gflops"] = row["flops"] / (row["median_ms"] * 1e-3) / 1e9
    mm_gflops = getattr(args, "mm_gflops_of", {}).get(case.dtype, getattr(args, "mm_gflops", None))
    if mm_gflops:  # the op's arithmetic rate against a large torch.mm's on this device, this thread count
        row["mm_gflops"] = mm_gflops
        row["fraction_of_mm"] = row["gflops"] / mm_gflops
    peak = args.peak_gbps or _peak_gbps(device)
    if peak:
        row["peak_gbps"] = peak
        row["fraction_of_floor"] = row["effective_gbps"] / peak
    copy_gbps = getattr(args, "copy_gbps", None)
    if copy_gbps:
        row["copy_gbps"] = copy_gbps
        row["fraction_of_copy"] = row["effective_gbps"] / copy_gbps


def _peak_gbps(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, gbps in PEAK_GBPS.items():
        if fragment in name:
            return gbps
    return None


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def _ints(text):
    return [int(x) for x in text.split(",") if x]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="a predefined sweep (other size flags override it)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--seq-lens", type=_ints, help="e.g. 128,256,512")
    p.add_argument("--batches", type=_ints, help="e.g. 8,32")
    p.add_argument("--dims", action="append", type=_ints, metavar="A,C,n,K",
                   help="all_head_size A, value channels C, heads n, kernel K (repeatable)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "fp64"])
    p.add_argument("--versus-dtype", choices=["fp32", "fp16", "bf16", "fp64"],
                   help="time every provider in this dtype too, in the same alternation (e.g. native bf16 "
                        "against fp32 on the CPU); prints the time ratios of the two dtypes")
    p.add_argument("--modes", type=lambda s: s.split(","), help="subset of forward,backward,full")
    p.add_argument("--providers", type=lambda s: s.split(","), help=f"subset of {','.join(PROVIDER_ORDER)}")
    p.add_argument("--include-interpreted", action="store_true", help="time triton on CPU via the interpreter")
    p.add_argument("--warmup", type=int, default=2, help="CPU warm-up calls (GPU: do_bench's 25 ms)")
    p.add_argument("--repeats", type=int, default=7, help="CPU timed calls at least")
    p.add_argument("--min-time", type=float, default=0.5,
                   help="CPU: keep timing until this many seconds (per provider)")
    p.add_argument("--no-interleave", dest="interleave", action="store_false",
                   help="CPU: time the providers one after the other, not in alternation (common.time_cpu_interleaved)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    p.add_argument("--peak-gbps", type=float, default=None, help="DRAM bandwidth for fraction_of_floor")
    p.add_argument("--copy-gbps", type=float, default=None,
                   help="device-to-device copy bandwidth (read + written) for fraction_of_copy; default: "
                        "measured once per run (0: do not measure)")
    p.add_argument("--mm-gflops", type=float, default=None,
                   help="FLOP ceiling for fraction_of_mm: a large torch.mm's GFLOP/s in the run's dtype and "
                        "thread count; default: measured once per run (0: do not measure)")
    p.add_argument("--baseline", default="reference",
                   help="provider the printed table's speed-ups are relative to (e.g. compiled-eager)")
    p.add_argument("--out", default=None, help="JSONL file to append to (default benchmarks/results/kernels-<device>.jsonl)")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def build_spec(args, device: torch.device) -> dict:
    spec = dict(seq_lens=[128, 512], batches=[8], dims=[(384, 384, 6, 9)],
                dtype="fp32" if device.type == "cpu" else "bf16", modes=list(MODES))
    if args.preset:
        preset = PRESETS[args.preset]
        spec = dict(preset.get(device.type) or preset.get("cuda") or preset.get("cpu"))
    if args.seq_lens or args.batches:  # an explicit grid replaces the preset's batch sweep
        spec.pop("batch_sweep", None)
    if args.seq_lens:
        spec["seq_lens"] = args.seq_lens
    if args.batches:
        spec["batches"] = args.batches
    if args.dims:
        spec["dims"] = [tuple(d) for d in args.dims]
    if args.dtype:
        spec["dtype"] = args.dtype
    if args.modes:
        spec["modes"] = args.modes
    return spec


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = build_spec(args, device)
    provs = providers(device, args.include_interpreted, args.providers)
    if args.copy_gbps is None:  # measured, not looked up: the ceiling a streaming kernel can reach here
        args.copy_gbps = common.copy_bandwidth_gbps(device)
    if args.mm_gflops is None:
        args.mm_gflops = common.mm_gflops(device, common.dtype_from_name(spec["dtype"]))
    if args.versus_dtype == spec["dtype"]:
        args.versus_dtype = None  # nothing to compare with
    args.mm_gflops_of = {spec["dtype"]: args.mm_gflops}
    if args.versus_dtype:  # the other dtype's own ceiling
        args.mm_gflops_of[args.versus_dtype] = (common.mm_gflops(device, common.dtype_from_name(args.versus_dtype))
                                                if args.mm_gflops else args.mm_gflops)
    cases = cases_from(spec)
    print(f"# span_dynamic_conv on {common.device_name(device)}: providers {list(provs)}, "
          f"{len(cases)} shapes, modes {spec['modes']}, dtype {spec['dtype']}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; copy bandwidth {args.copy_gbps or 0:.0f} GB/s, "
          f"torch.mm {args.mm_gflops or 0:.0f} GFLOP/s", flush=True)
    out_path = Path(args.out) if args.out else common.results_path("kernels", device)
    all_rows = []
    for case in cases:
        rows = measure_case(case, provs, device, spec["modes"], args)
        for row in rows:
            print(_line(row), flush=True)
        if not args.no_save:
            common.append_rows(out_path, rows)
        all_rows.extend(rows)
    from benchmarks import plot

    print()
    print(plot.kernel_speedup_table(all_rows, baseline=args.baseline))
    if args.versus_dtype:
        print()
        print(plot.dtype_ratio_table(all_rows, spec["dtype"], args.versus_dtype))
    if not args.no_save:
        print(f"\nrows appended to {out_path}")
    return all_rows


def _line(row: dict) -> str:
    shape = f"B={row['batch']} L={row['seq_len']} A={row['A']} C={row['C']} n={row['heads']} K={row['K']} {row['dtype']}"
    if "error" in row:
        return f"{row['provider']:>15} {row['mode']:>8} {shape}: ERROR {row['error']}"
    return (f"{row['provider']:>15} {row['mode']:>8} {shape}: median {row['median_ms']:.3f} ms "
            f"[p20 {row['p20_ms']:.3f}, p80 {row['p80_ms']:.3f}] peak {common.fmt_bytes(row['peak_bytes'])} "
            f"saved {common.fmt_bytes(row.get('saved_bytes'))}, {row['gflops']:.1f} GFLOP/s"
            + (f" ({row['fraction_of_mm']:.0%} of torch.mm)" if row.get("fraction_of_mm") else ""))


if __name__ == "__main__":
    main()
