"""Shared pieces of the benchmark suite: environment record, timing, memory, JSON-lines rows.

Timing
    CUDA: ``triton.testing.do_bench`` (CUDA events, L2 flushed between calls, warm-up and
    repetitions sized by time), quantiles 0.5 / 0.2 / 0.8. Without triton: CUDA events around
    each call. CPU: a clock read around each call after warm-up calls, ``repeats`` calls (and
    more until ``min_time_s``), median / 20th / 80th percentile. The clock is the wall clock
    (``time.perf_counter``) when PyTorch runs several threads, and the calling thread's CPU time
    (``time.thread_time``) when it runs one (``torch.set_num_threads(1)``): every op then runs on
    the calling thread, so that clock measures the same work but ignores the time the thread
    waits for a core on a shared machine. Rows say which (``clock``: ``wall`` or ``thread``).

Peak memory (bytes above what was allocated before the measured call)
    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
    CPU: PyTorch's CPU allocator reports every allocation and free to the profiler when
    ``profile_memory=True``; the running sum of those events, in time order, over one call gives
    the peak of tensor memory allocated by that call. It counts only memory PyTorch allocates
    (tensors, including those allocated inside C++ extensions through ATen), not the Python heap
    nor allocator caches; RSS deltas are useless here because glibc keeps freed pages.
    Both: ``saved_bytes``, the bytes of distinct tensor storages autograd keeps for backward
    (``torch.autograd.graph.saved_tensors_hooks``) -- the activation memory a training step holds.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
QUANTILES = (0.5, 0.2, 0.8)


# ----------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return re.sub(r"\s+", " ", line.split(":", 1)[1]).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} cores)"


def device_slug(device: torch.device | str) -> str:
    """File-name-safe device id, e.g. ``cpu-intel-xeon-platinum-8488c`` or ``cuda-nvidia-h100-80gb-hbm3``."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    name = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$", "", name, flags=re.I)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{device.type}-{slug}"


@functools.lru_cache(maxsize=None)
def git_commit() -> str:
    """``git rev-parse --short=12 HEAD`` (``-dirty`` when tracked files changed); without git or
    a ``.git`` folder (e.g. a copied tree on a GPU machine), ``$CONVBERT_COMMIT`` or "unknown"."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("CONVBERT_COMMIT") or "unknown"


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def environment(device: torch.device | str) -> dict:
    """What every result row carries about where it was measured."""
    device = torch.device(device)
    env = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "python": platform.python_version(),
        "commit": git_commit(),
        "threads": torch.get_num_threads(),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
    return env


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(times_ms: Iterable[float]) -> dict:
    values = sorted(times_ms)
    return {
        "median_ms": statistics.median(values),
        "p20_ms": _quantile(values, 0.2),
        "p80_ms": _quantile(values, 0.8),
        "min_ms": values[0],
        "reps": len(values),
    }


def error_text(exc: BaseException) -> str:
    """A failed measurement's ``error`` field: the exception's type and first line, at most 300 chars."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def reset_grads(tensors: Sequence[torch.Tensor] | None) -> None:
    """Set ``.grad`` of each tensor to None (between timed calls of a backward)."""
    for t in tensors or ():
        t.grad = None


def cpu_clock(clock: str = "auto") -> tuple[str, Callable[[], float]]:
    """("wall", perf_counter) or ("thread", thread_time); "auto": thread when torch runs one thread."""
    if clock == "auto":
        clock = "thread" if torch.get_num_threads() == 1 else "wall"
    return clock, {"wall": time.perf_counter, "thread": time.thread_time}[clock]


def time_cpu(fn: Callable[[], object], *, warmup: int = 2, repeats: int = 7, min_time_s: float = 0.0,
             max_time_s: float = 60.0, grad_to_none: Sequence[torch.Tensor] | None = None,
             clock: str = "auto") -> dict:
    """Time of ``fn()`` per call, in ms: ``warmup`` untimed calls, then at least ``repeats``
    timed ones (more while ``min_time_s`` of wall time is not reached, never past ``max_time_s``)."""
    return time_cpu_interleaved({"fn": fn}, warmup=warmup, repeats=repeats, min_time_s=min_time_s,
                                max_time_s=max_time_s, grad_to_none={"fn": grad_to_none}, clock=clock)["fn"]


def time_cpu_interleaved(fns: dict[str, Callable[[], object]], *, warmup: int = 2, repeats: int = 7,
                         min_time_s: float = 0.0, max_time_s: float = 120.0,
                         grad_to_none: dict[str, Sequence[torch.Tensor] | None] | None = None,
                         clock: str = "auto") -> dict[str, dict]:
    """``time_cpu`` for several callables at once, timed in alternation: round after round, one call
    of each (in turn order, rotated each round). A shared machine's speed drifts by tens of percent
    over seconds (other tenants' memory traffic); timed one after the other, one provider could get
    the quiet minute and the next the busy one. Alternated, drift falls on all of them alike, and the
    medians compare like with like. Returns name -> the summary ``time_cpu`` returns (with
    ``interleaved_with``, the number of other callables, when there are several)."""
    clock, now = cpu_clock(clock)
    names = list(fns)
    grads = grad_to_none or {}
    for _ in range(warmup):
        for name in names:
            reset_grads(grads.get(name))
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    rounds = 0
    while rounds < repeats or (time.perf_counter() - start < min_time_s):
        order = names[rounds % len(names):] + names[:rounds % len(names)]
        for name in order:
            reset_grads(grads.get(name))
            t0 = now()
            fns[name]()
            times[name].append((now() - t0) * 1e3)
        rounds += 1
        if time.perf_counter() - start > max_time_s and rounds >= 3:
            break
    extra = dict(interleaved_with=len(names) - 1) if len(names) > 1 else {}
    return {name: dict(summarize(times[name]), clock=clock, **extra) for name in names}


def time_cuda(fn: Callable[[], object], *, warmup_ms: int = 25, rep_ms: int = 100,
              grad_to_none: Sequence[torch.Tensor] | None = None) -> dict:
    """GPU time of ``fn()`` per call, in ms, from CUDA events via ``triton.testing.do_bench``."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        median, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none,
                                    quantiles=list(QUANTILES))
        return {"median_ms": median, "p20_ms": p20, "p80_ms": p80, "reps": None, "clock": "cuda-events"}
    return time_cuda_events(fn, warmup=5, repeats=max(10, rep_ms // 5), grad_to_none=grad_to_none)


def time_cuda_events(fn: Callable[[], object], *, warmup: int = 3, repeats: int = 10,
                     grad_to_none: Sequence[torch.Tensor] | None = None) -> dict:
    """GPU time per call from a pair of CUDA events around each call (for long calls, e.g. a
    training step, where do_bench's cache flush and time-sized repetition add nothing)."""
    for _ in range(warmup):
        reset_grads(grad_to_none)
        fn()
    torch.cuda.synchronize()
    pairs = []
    for _ in range(repeats):
        reset_grads(grad_to_none)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return dict(summarize(s.elapsed_time(e) for s, e in pairs), clock="cuda-events")


def time_fn(fn: Callable[[], object], device: torch.device | str, *, grad_to_none=None, long_calls=False,
            cpu_warmup: int = 2, cpu_repeats: int = 7, cpu_min_time_s: float = 0.0) -> dict:
    device = torch.device(device)
    if device.type == "cuda":
        if long_calls:
            return time_cuda_events(fn, grad_to_none=grad_to_none)
        return time_cuda(fn, grad_to_none=grad_to_none)
    return time_cpu(fn, warmup=cpu_warmup, repeats=cpu_repeats, min_time_s=cpu_min_time_s,
                    grad_to_none=grad_to_none)


def copy_bandwidth_gbps(device: torch.device | str, nbytes: int | None = None) -> float:
    """Achieved bandwidth of one large device-to-device copy (``dst.copy_(src)``), in GB/s
    (1e9 bytes/s), counting the bytes read plus the bytes written (2 * ``nbytes``).

    A practical ceiling for a memory-bound kernel, measured on the machine at hand rather than
    taken from a data sheet: ``effective_gbps / copy_gbps`` says how close a kernel gets to
    just streaming its bytes. Default size: 1 GiB on CUDA (far above any L2), 64 MiB on CPU.
    """
    device = torch.device(device)
    if nbytes is None:
        nbytes = 2**30 if device.type == "cuda" else 64 * 2**20
    numel = max(1, nbytes // 4)
    src = torch.ones(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    fn = functools.partial(dst.copy_, src)
    if device.type == "cuda":
        median_ms = time_cuda(fn)["median_ms"]
    else:
        median_ms = time_cpu(fn, warmup=1, repeats=5, clock="wall")["median_ms"]
    return 2 * numel * 4 / (median_ms * 1e-3) / 1e9


def mm_gflops(device: torch.device | str, dtype: torch.dtype = torch.float32, size: int | None = None) -> float:
    """Achieved GFLOP/s (1e9 multiply-adds x 2 per second) of one large square ``torch.mm`` in
    ``dtype`` at the current thread count: the arithmetic ceiling the op is compared with.

    Default size: 8192 on CUDA, 2048 on CPU (a few seconds at one core's vector peak at most).
    """
    device = torch.device(device)
    if size is None:
        size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    fn = functools.partial(torch.mm, a, b)
    if device.type == "cuda":
        median_ms = time_cuda(fn)["median_ms"]
    else:
        median_ms = time_cpu(fn, warmup=1, repeats=3)["median_ms"]
    return 2 * size**3 / (median_ms * 1e-3) / 1e9


# ----------------------------------------------------------------------------------------------
# Where a call's time goes
# ----------------------------------------------------------------------------------------------


def profile_top(fn: Callable[[], object], device: torch.device | str, top: int = 15) -> tuple[list[dict], float]:
    """The ``top`` kernels (CUDA) or operators (CPU) of one ``fn()`` call by self time, from
    torch.profiler, and the sum of every one's self time in ms: on CUDA the device's busy time, to
    set against the call's wall time (a GPU waiting on the host shows as a gap between the two).

    On CUDA only the device's own events count (kernels, copies, memsets): an operator's row carries
    the device time of the kernels it launched, so operators and kernels mixed would count it twice.
    Each entry: ``name`` (at most 100 characters), ``calls`` and ``self_ms``; longest first."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        fn()
        if on_cuda:
            torch.cuda.synchronize(device)
    kept = DeviceType.CUDA if on_cuda else DeviceType.CPU
    entries = []
    for event in prof.key_averages():
        self_us = event.self_device_time_total if on_cuda else event.self_cpu_time_total
        if event.device_type == kept and self_us > 0:
            entries.append(dict(name=event.key[:100], calls=int(event.count), self_ms=self_us / 1e3))
    entries.sort(key=lambda e: e["self_ms"], reverse=True)
    return entries[:top], sum(e["self_ms"] for e in entries)


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak tensor bytes allocated on the CPU by ``fn()`` above the level before it (profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return int(peak)


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device | str) -> int:
    """Peak bytes allocated on the GPU by ``fn()`` above the level before it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def peak_bytes(fn: Callable[[], object], device: torch.device | str) -> int:
    device = torch.device(device)
    if device.type == "cuda":
        return cuda_peak_bytes(fn, device)
    return cpu_peak_bytes(fn)


def saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            seen[(t.device.type, storage.data_ptr())] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. tensors without storage
            seen[(id(t),)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return int(sum(seen.values()))


# ----------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------


def results_path(kind: str, device: torch.device | str, results_dir: Path | str | None = None) -> Path:
    """``benchmarks/results/<kind>-<device slug>.jsonl``."""
    return Path(results_dir or RESULTS_DIR) / f"{kind}-{device_slug(device)}.jsonl"


def append_rows(path: Path | str, rows: Iterable[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def read_rows(paths: Iterable[Path | str]) -> list[dict]:
    rows = []
    for path in paths:
        with open(path) as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return rows


def dtype_from_name(name: str) -> torch.dtype:
    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp64": torch.float64, "float64": torch.float64}
    try:
        return names[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; one of {sorted(names)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}[dtype]


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
