"""Window benchmark: the causal and centred ``dynamic_conv`` and ``LightweightConv1d`` against
fairseq's unfold formulation and a depthwise ``F.conv1d``, forward and forward + backward.

Two ops, each at two window offsets (``padding_l``): ``centred`` = ``(K - 1) // 2`` (ConvBERT) and
``causal`` = ``K - 1`` (decoders; fairseq's DynamicConv / LightweightConv, "Pay Less Attention"):

``dynamic_conv``  ``convbert_kernels.dynamic_conv(values, logits, n, padding_l=...)``: one kernel
    per token and head. Providers: every backend ``available_backends(device)`` lists (reference =
    Hugging Face's unfold, eager, native; triton on CUDA only: on CPU it is the slow interpreter),
    ``compiled-eager``: ``torch.compile`` of the eager backend's ``dynamic_conv`` (what a user gets
    from compiling the pure-PyTorch path, the bar a hand-written kernel has to clear), and
    ``fairseq-unfold``: fairseq's CPU path (``DynamicConv1dTBC._forward_unfolded``) written here
    from its definition: pad the sequence by ``padding_l`` on the left and ``K - 1 - padding_l`` on
    the right, unfold it into ``[B, L, C, K]`` windows, softmax the taps and contract over K
    (``torch.einsum``, a batched matmul).
``LightweightConv1d``  one softmaxed kernel per head (``weight [n, K]``) shared by every position.
    Providers: ``module:<backend>`` = ``convbert_kernels.LightweightConv1d(..., backend=<backend>)``
    (it passes the op an expanded, stride-0 view of the kernel); ``module:compiled-eager`` =
    ``torch.compile`` of the ``backend="eager"`` module; ``fairseq-unfold`` (fairseq's
    ``LightweightConv1dTBC._forward_unfolded``: the shared softmaxed kernel against the unfolded
    windows); ``conv1d``: ``F.conv1d(groups=C)`` with the softmaxed kernel repeated per channel,
    input ``[B, L, C]`` transposed to channels-first and the output transposed back to a contiguous
    ``[B, L, C]`` (the same contract as the other providers); ``conv1d-BCL``: the same convolution
    on an input already channels-first, output left channels-first (no layout change timed: the
    best case for ``F.conv1d``).

Modes: ``forward`` and ``full`` (forward + backward, every input's gradient: values and logits,
or x and the kernel weight; gradients reset between calls).

The compiled providers (``COMPILED_PROVIDERS``) use ``torch.compile(fullgraph=True)``, their
graphs kept for the process on the compiled code object (a graph break or dynamo's recompile limit
raises, and the case is an error row, rather than eager being timed under the compiled name);
shapes, and the function's ``padding_l`` argument, turn dynamic at their first recompile, as
torch.compile does by default; K (the eager backend loops over the taps) and the module's
``padding_l`` (an attribute) take a graph each. Their first call on a case, which compiles when no
graph yet fits its shapes, is made before the checked call and is not timed (``compile_s`` in the
rows: that call's seconds). They are default providers in every preset but ``quick``, whose
``without`` key leaves them out of its default provider set: compiling for each of its K, window
and L would add minutes to the CI run on 2 cores; ``--providers`` naming them runs them there too.

Before any timing, every provider's output and gradients on the benchmarked inputs are compared
with a float64 oracle: the reference backend in float64 on the last batch elements whose unfolded
windows fit in ``--max-oracle-bytes`` (at least one: an output, and the gradients of the values,
logits and x of a batch element, depend on that element only; all of them in the small cases), and
LightweightConv1d's weight gradient over the whole batch (from the same call when it covers the
batch, else from the cross-correlation of the output gradient with x, by FFT, in float64). The
largest absolute error of the output and the largest error of each gradient relative to that
gradient's largest magnitude must stay under the dtype's tolerance, else the run stops with an
error (a fast wrong kernel is not a result). The errors are kept in the rows (``fwd_err``,
``grad_err``, ``oracle``).

Budgets, so that the CPU sweep takes minutes: the unfold providers (reference, fairseq-unfold)
materialise a K-times larger copy of the values and are not run where those windows pass
``--max-unfold-bytes``; every provider not on the fused kernels (all but native / triton and the
modules on them) is not run in a mode at larger L once its median call in that mode took more than
``--max-call-s``. Such cases are rows with ``skipped`` and the reason, in the tables too. On the
CPU, calls longer than ``--long-call-s`` are timed twice (after the checking call), others at
least ``--repeats`` times and for ``--target-s`` seconds.

Every measurement is one JSON line in ``benchmarks/results/window-<device>.jsonl`` (with ``--preset
quick``: ``.benchmarks/window-quick-<device>.jsonl``, git-ignored) with the device, dtype, shapes,
versions and git commit (timing and memory methods: ``benchmarks/common.py``; CPU peak memory is the
tensor memory allocated through PyTorch's allocator, seen by the profiler: memory a library
allocates by itself, e.g. a scratch buffer inside ``F.conv1d``'s oneDNN kernel, is not in it).
Markdown tables (median ms per call and speed-up over fairseq-unfold, per L; peak memory of a
training call) are printed at the end, and a PNG of time against L for the causal window is
written beside the JSONL file (``plot.plot_window``).

Examples::

    python -m benchmarks.bench_window --preset quick
    python -m benchmarks.bench_window --preset cpu
    python -m benchmarks.bench_window --preset gpu
    python -m benchmarks.bench_window --seq-lens 128,1024 --kernel-sizes 7 --ops LightweightConv1d --windows causal
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
import traceback
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The CPU memory figures come from torch.profiler, whose Kineto backend otherwise prints lines on
# stderr at every start and stop (as scripts/bench.sh silences them for the other benchmarks).
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convbert_kernels  # noqa: E402
from benchmarks import common  # noqa: E402

OPS = ("dynamic_conv", "LightweightConv1d")
WINDOWS = ("causal", "centred")
MODES = ("forward", "full")
BASELINE = "fairseq-unfold"
BACKEND_ORDER = ("reference", "eager", "triton", "native")
# Per op, the providers in table order (those not available on the device are left out).
PROVIDER_ORDER = {
    "dynamic_conv": (BASELINE, "reference", "eager", "compiled-eager", "triton", "native"),
    "LightweightConv1d": (BASELINE, "conv1d", "conv1d-BCL", "module:eager", "module:compiled-eager", "module:triton",
                          "module:native"),
}
# torch.compile of a backend's path: name -> the backend compiled (it must be available on the device)
COMPILED_PROVIDERS = {"compiled-eager": "eager", "module:compiled-eager": "eager"}
UNFOLD_PROVIDERS = {"fairseq-unfold", "reference"}  # materialise [B, L, C, K]
# On the fused kernels; every other provider (the compiled ones too: inductor generates the eager
# backend's math, not the fused kernels) is skipped at larger L once a call passes --max-call-s.
FUSED_PROVIDERS = {"native", "triton", "module:native", "module:triton"}
# dtype -> (largest |out - oracle|, largest |grad - oracle grad| / max |oracle grad|)
TOLERANCE = {"fp32": (1e-4, 1e-4), "fp64": (1e-10, 1e-10), "bf16": (5e-2, 5e-2), "fp16": (1e-2, 1e-2)}

PRESETS = {
    # tiny shapes, every op, window and provider but the compiled ones (``without``: providers left out
    # unless --providers names them; compiling for each K, window and L would take minutes on 2 cores):
    # well under a minute on 2 cores (the test's run)
    "quick": dict(cpu=dict(batch=2, C=32, heads=4, kernel_sizes=[3, 7], seq_lens=[16, 64], dtype="fp32",
                           target_s=0.05, without=sorted(COMPILED_PROVIDERS)),
                  cuda=dict(batch=2, C=64, heads=4, kernel_sizes=[3, 7], seq_lens=[64, 256], dtype="fp32",
                            without=sorted(COMPILED_PROVIDERS))),
    # the committed CPU sweep (issue 13.5): ConvBERT-like width, Pay-Less-Attention kernel sizes; one
    # torch thread timed by its CPU clock (common.time_cpu), as the kernel sweep: on 2 cores shared
    # with other jobs, waiting for a core is not counted
    "cpu": dict(cpu=dict(batch=8, C=512, heads=8, kernel_sizes=[7, 31], seq_lens=[128, 256, 512, 1024, 2048, 4096],
                         dtype="fp32", threads=1, target_s=0.15, max_unfold_bytes=2**30, max_call_s=0.5)),
    "gpu": dict(cuda=dict(batch=8, C=512, heads=8, kernel_sizes=[7, 31],
                          seq_lens=[128, 256, 512, 1024, 2048, 4096, 8192], dtype="bf16",
                          max_unfold_bytes=8 * 2**30, max_call_s=5.0)),
}


@dataclass(frozen=True)
class Case:
    op: str
    window: str
    batch: int
    seq_len: int
    C: int
    heads: int
    K: int
    dtype: str

    @property
    def padding_l(self) -> int:
        return self.K - 1 if self.window == "causal" else (self.K - 1) // 2

    def unfold_bytes(self) -> int:
        """Bytes of the unfolded windows ``[B, L, C, K]`` an unfold provider materialises."""
        s = torch.empty((), dtype=common.dtype_from_name(self.dtype)).element_size()
        return self.batch * self.seq_len * self.C * self.K * s

    def label(self) -> str:
        return (f"{self.op} {self.window} (padding_l={self.padding_l}) B={self.batch} L={self.seq_len} "
                f"C={self.C} n={self.heads} K={self.K} {self.dtype}")


# ----------------------------------------------------------------------------------------------
# The fairseq-style unfold formulations and the depthwise conv1d (written from their definitions)
# ----------------------------------------------------------------------------------------------


def unfold_windows(x: torch.Tensor, kernel_size: int, padding_l: int, num_heads: int) -> torch.Tensor:
    """``[B, L, C]`` -> ``[B, L, n, d, K]`` windows, ``w[b, t, h, :, k] = x[b, t + k - padding_l, h]``
    (zero outside the sequence): pad ``padding_l`` before and ``K - 1 - padding_l`` after, unfold."""
    batch, length, channels = x.shape
    padded = F.pad(x, (0, 0, padding_l, kernel_size - 1 - padding_l))  # [B, L + K - 1, C]
    windows = padded.unfold(1, kernel_size, 1)  # [B, L, C, K], a view
    return windows.reshape(batch, length, num_heads, channels // num_heads, kernel_size)


def fairseq_unfold_dynamic(values, logits, num_heads, padding_l):
    """Dynamic convolution as fairseq's CPU path computes it: unfold, softmax, contract over K."""
    batch, length, channels = values.shape
    kernel_size = logits.shape[-1] // num_heads
    probs = torch.softmax(logits.reshape(batch, length, num_heads, kernel_size), dim=-1)
    windows = unfold_windows(values, kernel_size, padding_l, num_heads)
    return torch.einsum("blhdk,blhk->blhd", windows, probs).reshape(batch, length, channels)


def fairseq_unfold_lightweight(x, weight, num_heads, padding_l):
    """Lightweight convolution the fairseq CPU way: the shared softmaxed [n, K] kernel against the
    unfolded windows."""
    batch, length, channels = x.shape
    probs = torch.softmax(weight, dim=-1)  # [n, K]
    windows = unfold_windows(x, weight.shape[-1], padding_l, num_heads)
    return torch.einsum("blhdk,hk->blhd", windows, probs).reshape(batch, length, channels)


def _depthwise_kernel(weight, channels):
    """softmax(weight [n, K]) repeated per channel -> ``[C, 1, K]`` (channel c uses head c // d)."""
    num_heads = weight.shape[0]
    return torch.softmax(weight, dim=-1).repeat_interleave(channels // num_heads, dim=0).unsqueeze(1)


def conv1d_bcl(x_bcl, weight, padding_l):
    """Depthwise ``F.conv1d`` on ``[B, C, L]``: ``y[b, c, t] = sum_k p[c, k] x[b, c, t + k - padding_l]``.
    Symmetric padding when the window is centred (odd K); otherwise the larger side on both ends and
    a slice of the L outputs needed (a view): no padded copy of the input."""
    channels, length = x_bcl.shape[1], x_bcl.shape[2]
    kernel_size = weight.shape[-1]
    pad = max(padding_l, kernel_size - 1 - padding_l)
    y = F.conv1d(x_bcl, _depthwise_kernel(weight, channels), padding=pad, groups=channels)
    start = pad - padding_l
    return y if (start == 0 and y.shape[-1] == length) else y[:, :, start:start + length]


def conv1d_blc(x, weight, padding_l):
    """``conv1d_bcl`` for a ``[B, L, C]`` input, returning a contiguous ``[B, L, C]``."""
    return conv1d_bcl(x.transpose(1, 2), weight, padding_l).transpose(1, 2).contiguous()


# ----------------------------------------------------------------------------------------------
# Providers: each builds, for a case, a runner with its own leaf inputs
# ----------------------------------------------------------------------------------------------


@dataclass
class Runner:
    forward: object  # () -> output
    leaves: list  # tensors whose .grad a training step fills (reset between calls)
    grad_out: torch.Tensor  # the output gradient, in the provider's output layout
    to_blc: object = None  # output layout -> [B, L, C] (for the check); None: already
    grads: object = None  # () -> the canonical gradients (values, logits) or (x, weight)


def make_inputs(case: Case, device: torch.device, seed: int = 0) -> dict:
    """The canonical inputs of a case in float64 (drawn on the CPU generator, so the same on every
    device), rounded to the case's dtype."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, L, C, n, K = case.batch, case.seq_len, case.C, case.heads, case.K
    inputs = {"x": torch.randn(B, L, C, generator=g, dtype=torch.float64),
              "grad": torch.randn(B, L, C, generator=g, dtype=torch.float64)}
    if case.op == "dynamic_conv":
        inputs["logits"] = torch.randn(B, L, n * K, generator=g, dtype=torch.float64)
    else:
        inputs["weight"] = torch.randn(n, K, generator=g, dtype=torch.float64)
    # rounded to the benchmarked dtype: the oracle then sees the very numbers the providers see
    dtype = common.dtype_from_name(case.dtype)
    return {k: v.to(dtype).to(device=device, dtype=torch.float64) for k, v in inputs.items()}


def _leaf(t: torch.Tensor, dtype) -> torch.Tensor:
    return t.detach().to(dtype).clone().requires_grad_(True)


def _compile(fn):
    """``torch.compile(fn, fullgraph=True)``: with a graph break, or past dynamo's recompile limit (8
    graphs per code object; the presets' sweeps take about one per K and window offset), it raises
    instead of quietly running eager, which would then be timed as the compiled provider.
    No ``donated_buffer = False`` (bench_kernels needs it for its backward mode, which replays one
    graph with retain_graph=True): here every backward follows its own forward."""
    return torch.compile(fn, fullgraph=True)


@functools.lru_cache(maxsize=None)
def _compiled_dynamic_conv():
    """The ``compiled-eager`` function, compiled once per process (dynamo keeps a graph per shape
    class on the function's code object; a new ``torch.compile`` wrapper would not start afresh)."""
    from convbert_kernels import eager

    return _compile(eager.dynamic_conv)


def build_runner(name: str, case: Case, inputs: dict, dtype: torch.dtype) -> Runner:
    n, pl = case.heads, case.padding_l
    grad = inputs["grad"].to(dtype)
    if case.op == "dynamic_conv":
        values, logits = _leaf(inputs["x"], dtype), _leaf(inputs["logits"], dtype)
        leaves = [values, logits]
        if name == BASELINE:
            fwd = lambda: fairseq_unfold_dynamic(values, logits, n, pl)  # noqa: E731
        elif name == "compiled-eager":
            fwd = lambda: _compiled_dynamic_conv()(values, logits, n, pl)  # noqa: E731
        else:
            fwd = lambda: convbert_kernels.dynamic_conv(values, logits, n, padding_l=pl, backend=name)  # noqa: E731
        return Runner(fwd, leaves, grad, grads=lambda: (values.grad, logits.grad))

    x, weight = _leaf(inputs["x"], dtype), _leaf(inputs["weight"], dtype)
    if name.startswith("module:"):
        backend = COMPILED_PROVIDERS.get(name, name.split(":", 1)[1])
        module = convbert_kernels.LightweightConv1d(case.C, case.K, n, padding_l=pl, backend=backend)
        module = module.to(device=x.device, dtype=dtype).train()
        with torch.no_grad():
            module.weight.copy_(weight)
        # a fresh wrapper per case costs nothing: the graphs live on the forward's code object, and the
        # parameters are graph inputs, so a new module of an already compiled shape is not recompiled
        call = _compile(module) if name in COMPILED_PROVIDERS else module
        return Runner(lambda: call(x), [x, module.weight], grad, grads=lambda: (x.grad, module.weight.grad))
    if name == BASELINE:
        return Runner(lambda: fairseq_unfold_lightweight(x, weight, n, pl), [x, weight], grad,
                      grads=lambda: (x.grad, weight.grad))
    if name == "conv1d":
        return Runner(lambda: conv1d_blc(x, weight, pl), [x, weight], grad, grads=lambda: (x.grad, weight.grad))
    if name == "conv1d-BCL":
        x_bcl = _leaf(inputs["x"].transpose(1, 2).contiguous(), dtype)
        return Runner(lambda: conv1d_bcl(x_bcl, weight, pl), [x_bcl, weight], grad.transpose(1, 2).contiguous(),
                      to_blc=lambda y: y.transpose(1, 2),
                      grads=lambda: (x_bcl.grad.transpose(1, 2), weight.grad))
    raise ValueError(f"unknown provider {name!r} for {case.op}")


def providers(device: torch.device, ops=OPS, wanted=None, without=()) -> dict[str, list[str]]:
    """op -> provider names available on ``device`` (triton only on CUDA: on CPU it is the interpreter):
    those in ``wanted`` if given, else all but those in ``without`` (a preset's)."""
    backends = [b for b in convbert_kernels.available_backends(device) if b != "triton" or device.type == "cuda"]
    found = {}
    for op in ops:
        names = []
        for name in PROVIDER_ORDER[op]:
            backend = COMPILED_PROVIDERS.get(name) or (name.split(":", 1)[1] if name.startswith("module:") else name)
            if backend in BACKEND_ORDER and backend not in backends:
                continue
            if (wanted and name not in wanted) or (not wanted and name in without):
                continue
            names.append(name)
        found[op] = names
    return found


# ----------------------------------------------------------------------------------------------
# The float64 oracle and the check
# ----------------------------------------------------------------------------------------------


class AccuracyError(RuntimeError):
    """A provider disagrees with the float64 oracle on the benchmarked inputs."""


@dataclass
class Oracle:
    """The float64 answer for the last ``batches`` batch elements of a case."""

    out: torch.Tensor  # [batches, L, C]
    grads: tuple  # the canonical gradients: values / x over the same batch elements; logits too,
    whole: tuple  # ... but a gradient flagged here covers the whole batch (LightweightConv1d's weight)
    batches: int
    name: str


def lightweight_weight_grad(x, grad, weight, padding_l):
    """float64 gradient of ``sum(grad * lightweight(x))`` with respect to ``weight [n, K]``, over the
    whole batch, without the unfolded windows: ``G[h, k] = sum_{b, t, j} grad[b, t, h, j] *
    x[b, t + k - padding_l, h, j]`` (x = 0 outside the sequence) is a cross-correlation along t,
    taken by FFT over a length ``N >= L + K`` (no wrap-around reaches a used lag), then the softmax's
    backward ``p * (G - sum_k p G)``."""
    batch, length, channels = x.shape
    num_heads, kernel_size = weight.shape
    n_fft = 1 << (length + kernel_size - 1).bit_length()
    corr = 0
    for b in range(batch):  # one batch element at a time: the spectra are [N / 2 + 1, C] complex
        g_hat = torch.fft.rfft(grad[b].double(), n=n_fft, dim=0)
        spectrum = g_hat.conj() * torch.fft.rfft(x[b].double(), n=n_fft, dim=0)
        corr = corr + spectrum.reshape(-1, num_heads, channels // num_heads).sum(-1)  # [N / 2 + 1, n]
    corr = torch.fft.irfft(corr, n=n_fft, dim=0)  # corr[s, h] = sum g[t] x[t + s], s mod N
    lags = (torch.arange(kernel_size, device=x.device) - padding_l) % n_fft
    g_probs = corr[lags].T  # [n, K]
    probs = torch.softmax(weight.double(), dim=-1)
    return probs * (g_probs - (probs * g_probs).sum(-1, keepdim=True))


def oracle(case: Case, inputs: dict, max_oracle_bytes: float) -> Oracle:
    """The reference backend in float64 on the last batch elements whose unfolded windows fit in
    ``max_oracle_bytes`` (at least one; every output and the gradients of values, logits and x of a
    batch element depend on that element only), LightweightConv1d's weight gradient over the
    whole batch (from the same reference call when it covers the batch, else by FFT)."""
    per_element = replace(case, dtype="fp64", batch=1).unfold_bytes()
    nb = min(case.batch, max(1, int(max_oracle_bytes // max(per_element, 1))))
    part = slice(case.batch - nb, case.batch)
    x = _leaf(inputs["x"][part], torch.float64)
    if case.op == "dynamic_conv":
        other = _leaf(inputs["logits"][part], torch.float64)
        logits = other
    else:
        other = _leaf(inputs["weight"], torch.float64)
        logits = other.reshape(1, 1, -1).expand(nb, case.seq_len, -1)
    out = convbert_kernels.dynamic_conv(x, logits, case.heads, padding_l=case.padding_l, backend="reference")
    out.backward(inputs["grad"][part])
    grads = [x.grad, other.grad]
    name = "reference fp64" + ("" if nb == case.batch else f" on batch elements {part.start}..{case.batch - 1}")
    if case.op != "dynamic_conv" and nb < case.batch:
        grads[1] = lightweight_weight_grad(inputs["x"], inputs["grad"], inputs["weight"], case.padding_l)
        name += ", weight gradient of the whole batch by FFT"
    return Oracle(out.detach(), tuple(grads), (False, case.op != "dynamic_conv"), nb, name)


def compare(runner: Runner, out, expected: Oracle, with_grads: bool) -> tuple[float, list[float]]:
    """(max |out - oracle|, per gradient max |g - oracle g| / max |oracle g|) over what the oracle covers."""
    out_blc = runner.to_blc(out) if runner.to_blc else out
    part = slice(out_blc.shape[0] - expected.batches, None)
    got = out_blc[part].detach().double()
    fwd_err = (got - expected.out).abs().max().item() if got.numel() else 0.0
    grad_errs = []
    if not with_grads:
        return fwd_err, grad_errs
    for got, want, whole in zip(runner.grads(), expected.grads, expected.whole):
        if want.numel() == 0:
            grad_errs.append(0.0)
        elif got is None:
            grad_errs.append(math.inf)
        else:
            got = got if whole else got[part]
            scale = max(want.abs().max().item(), 1e-30)
            grad_errs.append((got.double() - want).abs().max().item() / scale)
    return fwd_err, grad_errs


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(case: Case, name: str, runner: Runner, expected: Oracle, device: torch.device, modes, args,
            base: dict) -> list[dict]:
    """Check ``runner`` against the oracle on its first call (forward + backward when ``full`` is
    among ``modes``, else forward), then size and time each mode."""
    rows = []
    row0 = dict(base, provider=name, oracle=expected.name)
    with_grads = "full" in modes

    def reset():
        common.reset_grads(runner.leaves)

    box = {}

    def first_call():
        box["out"] = out = runner.forward()
        if with_grads:
            out.backward(runner.grad_out)
        _sync(device)

    if name in COMPILED_PROVIDERS:  # compile first: else the compilation would be in the first call's
        # time (which sizes the warm-up and repetitions) and in its peak memory
        reset()
        t0 = time.perf_counter()
        try:
            first_call()
        except Exception as exc:  # noqa: BLE001 -- a graph that does not compile is a row too
            if args.verbose:
                traceback.print_exc()
            return [dict(row0, mode=m, error=common.error_text(exc)) for m in modes]
        row0["compile_s"] = time.perf_counter() - t0
        box.pop("out")
    reset()
    t0 = time.perf_counter()
    try:  # on the CPU, the first call also gives the peak memory of forward + backward
        first_peak = common.cpu_peak_bytes(first_call) if device.type == "cpu" and with_grads else first_call()
    except Exception as exc:  # noqa: BLE001 -- a provider that cannot run this case is a row too
        if args.verbose:
            traceback.print_exc()
        return [dict(row0, mode=m, error=common.error_text(exc)) for m in modes]
    first_call_ms = (time.perf_counter() - t0) * 1e3
    fwd_err, grad_errs = compare(runner, box.pop("out"), expected, with_grads)
    fwd_tol, grad_tol = TOLERANCE[case.dtype]
    if not (fwd_err <= fwd_tol and all(e <= grad_tol for e in grad_errs)):
        raise AccuracyError(
            f"{name} on {case.label()}: max |out - oracle| = {fwd_err:.3g} (tolerance {fwd_tol:g}), gradient errors "
            f"relative to their largest magnitude {[f'{e:.3g}' for e in grad_errs]} (tolerance {grad_tol:g}); "
            f"oracle: {expected.name}")
    row0.update(first_call_ms=first_call_ms, fwd_err=fwd_err, fwd_tol=fwd_tol,
                grad_err=max(grad_errs) if grad_errs else None, grad_tol=grad_tol if grad_errs else None)

    saved = None
    fns = {"forward": runner.forward, "full": lambda: runner.forward().backward(runner.grad_out)}
    for mode in modes:
        row = dict(row0, mode=mode)
        fn = fns[mode]
        try:
            reset()
            t0 = time.perf_counter()
            if mode == "forward":  # one call gives the forward's peak and the bytes kept for backward

                def fwd_saved():
                    box["saved"] = common.saved_bytes(runner.forward)

                row["peak_bytes"] = common.peak_bytes(fwd_saved, device)
                saved = box.pop("saved", None)
                estimate_s = time.perf_counter() - t0
            else:
                row["peak_bytes"] = first_peak if device.type == "cpu" else common.peak_bytes(fn, device)
                estimate_s = first_call_ms / 1e3
            row["saved_bytes"] = saved
            reset()
            if device.type == "cuda":
                row.update(common.time_fn(fn, device, grad_to_none=runner.leaves))
            else:  # warm-up and repetitions by the size of the call: the run stays within minutes
                warmup = 2 if estimate_s < 0.05 else (1 if estimate_s < 0.5 else 0)
                repeats = args.repeats if estimate_s < args.long_call_s else min(args.repeats, 2)
                row.update(common.time_cpu(fn, warmup=warmup, repeats=repeats, min_time_s=args.target_s,
                                           max_time_s=max(args.target_s, 30.0), grad_to_none=runner.leaves))
            reset()
        except Exception as exc:  # noqa: BLE001
            if args.verbose:
                traceback.print_exc()
            row["error"] = common.error_text(exc)
        rows.append(row)
    reset()
    return rows


def cases_from(spec: dict, ops, windows) -> list[Case]:
    return [Case(op, window, spec["batch"], L, spec["C"], spec["heads"], K, spec["dtype"])
            for op in ops for K in spec["kernel_sizes"] for window in windows for L in spec["seq_lens"]]


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def _key(r):
    return (r["device"], r["dtype"], r["op"], r["window"], r["batch"], r["seq_len"], r["C"], r["heads"], r["K"],
            r["provider"], r["mode"])


def latest(rows: list[dict]) -> list[dict]:
    """The last row of each measurement (files are appended run after run)."""
    kept = {}
    for r in rows:
        if r.get("bench") == "window":
            kept[_key(r)] = r
    return list(kept.values())


def _rank(op):
    order = PROVIDER_ORDER.get(op, ())
    return lambda p: (order.index(p) if p in order else len(order), p)


def window_tables(rows: list[dict], baseline: str = BASELINE) -> str:
    """Markdown, one table per (device, dtype, op, mode, B, C, n): a line per (window, K, L); per
    provider the median ms per call and the speed-up over ``baseline``; then the peak memory of
    one forward + backward; skipped cases and their reasons under each table."""
    rows = latest(rows)
    if not rows:
        return "(no window rows)"
    tables = defaultdict(list)
    for r in rows:
        tables[(r["device"], r["dtype"], r["op"], r["batch"], r["C"], r["heads"])].append(r)
    out = []
    for (device, dtype, op, B, C, n), rs in sorted(tables.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                                   OPS.index(kv[0][2]), kv[0][3:])):
        provs = sorted({r["provider"] for r in rs}, key=_rank(op))
        by = {(r["window"], r["K"], r["seq_len"], r["mode"], r["provider"]): r for r in rs}
        lines_keys = sorted({(r["window"], r["K"], r["seq_len"]) for r in rs},
                            key=lambda k: (WINDOWS.index(k[0]) if k[0] in WINDOWS else 9, k[1], k[2]))
        clock = "/".join(sorted({r.get("clock", "?") for r in rs if "median_ms" in r})) or "-"
        threads = "/".join(str(t) for t in sorted({r.get("threads") for r in rs if r.get("threads") is not None}))
        notes = {}
        for mode in MODES:
            if not any(r["mode"] == mode for r in rs):
                continue
            lines = []
            for window, K, L in lines_keys:
                base = by.get((window, K, L, mode, baseline))
                base_ms = base.get("median_ms") if base else None
                cells = []
                for p in provs:
                    r = by.get((window, K, L, mode, p))
                    if r is None:
                        cells.append("-")
                    elif "skipped" in r:
                        notes[r["skipped"]] = None
                        cells.append("skipped")
                    elif "error" in r or "median_ms" not in r:
                        notes[f"{p}: {r.get('error', 'no time')}"] = None
                        cells.append("error")
                    else:
                        cell = f"{r['median_ms']:.3g}" if r["median_ms"] < 100 else f"{r['median_ms']:.0f}"
                        if base_ms and p != baseline:
                            cell += f" ({base_ms / r['median_ms']:.2g}x)"
                        cells.append(cell)
                pad = r0["padding_l"] if (r0 := next((r for r in rs if r["window"] == window and r["K"] == K), None)) \
                    else "?"
                lines.append([f"{window} ({pad})", str(K), str(L), *cells])
            what = "forward + backward" if mode == "full" else "forward"
            title = (f"{op}, {what}: median ms per call (speed-up over {baseline}) on {device}, "
                     f"torch threads {threads}, clock {clock}; B={B}, C={C}, n={n}, {dtype}")
            out.append(f"**{title}**\n\n" + common.markdown_table(["window (padding_l)", "K", "L", *provs], lines))
        # peak memory of one training call
        mem_lines = []
        for window, K, L in lines_keys:
            cells = []
            for p in provs:
                r = by.get((window, K, L, "full", p))
                cells.append(common.fmt_bytes(r.get("peak_bytes")) if r and "peak_bytes" in r else "-")
            mem_lines.append([window, str(K), str(L), *cells])
        if any(c != "-" for line in mem_lines for c in line[3:]):
            title = (f"{op}, forward + backward: peak tensor memory of one call (above the inputs) on {device}; "
                     f"B={B}, C={C}, n={n}, {dtype}")
            out.append(f"**{title}**\n\n" + common.markdown_table(["window", "K", "L", *provs], mem_lines))
        if notes:
            out.append("\n".join(f"- {note}" for note in notes))
    return "\n\n".join(out)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def _ints(text):
    return [int(x) for x in text.split(",") if x]


def _names(text):
    return [x for x in text.split(",") if x]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="a predefined sweep (other size flags override it)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--ops", type=_names, help=f"subset of {','.join(OPS)}")
    p.add_argument("--windows", type=_names, help=f"subset of {','.join(WINDOWS)}")
    p.add_argument("--providers", type=_names, help="subset of the provider names (both ops')")
    p.add_argument("--modes", type=_names, help=f"subset of {','.join(MODES)}")
    p.add_argument("--seq-lens", type=_ints, help="e.g. 128,256,512")
    p.add_argument("--kernel-sizes", type=_ints, help="e.g. 7,31")
    p.add_argument("--batch", type=int)
    p.add_argument("--channels", type=int, help="C")
    p.add_argument("--heads", type=int, help="n")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "fp64"])
    p.add_argument("--repeats", type=int, default=3, help="CPU timed calls at least")
    p.add_argument("--target-s", type=float, default=None,
                   help="CPU: keep timing a mode for this many seconds (default: the preset's, else 0.25)")
    p.add_argument("--max-unfold-bytes", type=float, default=None,
                   help="skip the unfold providers where their [B, L, C, K] windows pass this many bytes "
                        "(default: the preset's, else 1 GiB)")
    p.add_argument("--max-call-s", type=float, default=None,
                   help="skip a mode of a provider not on the fused kernels at larger L once its median call "
                        "took longer (default: the preset's, else 1.0)")
    p.add_argument("--long-call-s", type=float, default=0.5,
                   help="CPU: calls longer than this are timed twice (plus --target-s), not --repeats times")
    p.add_argument("--max-oracle-bytes", type=float, default=512 * 2**20,
                   help="the float64 oracle checks as many batch elements (at least one) as fit in this many "
                        "bytes of the reference's unfolded windows")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads on CPU (default: the preset's, else torch's); with 1, times are "
                        "the thread's CPU time")
    p.add_argument("--out", default=None,
                   help="JSONL file to append to (default benchmarks/results/window-<device>.jsonl; "
                        "with --preset quick .benchmarks/window-quick-<device>.jsonl)")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def build_spec(args, device: torch.device) -> dict:
    spec = dict(batch=8, C=512, heads=8, kernel_sizes=[7, 31], seq_lens=[128, 512],
                dtype="fp32" if device.type == "cpu" else "bf16")
    if args.preset:
        preset = PRESETS[args.preset]
        spec.update(preset.get(device.type) or preset.get("cuda") or preset.get("cpu"))
    for key, value in (("seq_lens", args.seq_lens), ("kernel_sizes", args.kernel_sizes), ("batch", args.batch),
                       ("C", args.channels), ("heads", args.heads), ("dtype", args.dtype),
                       ("target_s", args.target_s), ("max_unfold_bytes", args.max_unfold_bytes),
                       ("max_call_s", args.max_call_s)):
        if value is not None:
            spec[key] = value
    spec.setdefault("target_s", 0.25)
    spec.setdefault("max_unfold_bytes", 2**30)
    spec.setdefault("max_call_s", 1.0)
    if spec["C"] % spec["heads"]:
        raise SystemExit(f"C={spec['C']} is not divisible by n={spec['heads']}")
    return spec


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    spec = build_spec(args, device)
    threads = args.threads or (spec.get("threads") if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    args.target_s = spec["target_s"]
    ops = args.ops or list(OPS)
    windows = args.windows or list(WINDOWS)
    modes = args.modes or list(MODES)
    for name, values, allowed in (("op", ops, OPS), ("window", windows, WINDOWS), ("mode", modes, MODES)):
        bad = [v for v in values if v not in allowed]
        if bad:
            raise SystemExit(f"unknown {name} {bad}; one of {list(allowed)}")
    provs = providers(device, ops, args.providers, spec.get("without", ()))
    dtype = common.dtype_from_name(spec["dtype"])
    cases = cases_from(spec, ops, windows)
    memory_note = ("peak memory: torch.cuda.max_memory_allocated" if device.type == "cuda" else
                   "peak memory: tensor bytes allocated through PyTorch's CPU allocator (profiler); memory a "
                   "library allocates by itself (e.g. oneDNN scratch in F.conv1d) is not seen")
    print(f"# dynamic_conv / LightweightConv1d windows on {common.device_name(device)}: providers {provs}, "
          f"{len(cases)} cases, modes {modes}, {spec['dtype']}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; {memory_note}; unfold providers skipped above "
          f"{common.fmt_bytes(spec['max_unfold_bytes'])} of windows, providers not on the fused kernels at "
          f"larger L after a {spec['max_call_s']} s call",
          flush=True)
    if args.out:
        out_path = Path(args.out)
    elif args.preset == "quick":  # a smoke run: not among the figures of record
        out_path = common.results_path("window-quick", device, common.ROOT / ".benchmarks")
    else:
        out_path = common.results_path("window", device)
    env = common.environment(device)
    all_rows = []
    slow: dict[tuple, str] = {}  # (op, window, K, provider, mode) -> why larger L are skipped
    start = time.perf_counter()
    for i, case in enumerate(cases):
        inputs = make_inputs(case, device)
        expected = None
        base = dict(bench="window", **asdict(case), padding_l=case.padding_l, **env)
        for name in provs[case.op]:
            skips = {}
            for mode in modes:
                if name in UNFOLD_PROVIDERS and case.unfold_bytes() > spec["max_unfold_bytes"]:
                    skips[mode] = (f"{case.op} {name} skipped at K={case.K}, L>={case.seq_len}: its unfolded windows "
                                   f"[B, L, C, K] take {common.fmt_bytes(case.unfold_bytes())}, over the "
                                   f"{common.fmt_bytes(spec['max_unfold_bytes'])} budget")
                elif (case.op, case.window, case.K, name, mode) in slow:
                    skips[mode] = slow[(case.op, case.window, case.K, name, mode)]
            run_modes = [m for m in modes if m not in skips]
            rows = []
            if run_modes:
                if expected is None:
                    expected = oracle(case, inputs, args.max_oracle_bytes)
                runner = build_runner(name, case, inputs, dtype)
                rows = measure(case, name, runner, expected, device, run_modes, args, base)
                del runner
                for row in rows:
                    if name not in FUSED_PROVIDERS and row.get("median_ms", 0) > spec["max_call_s"] * 1e3:
                        what = "forward + backward" if row["mode"] == "full" else "forward"
                        slow[(case.op, case.window, case.K, name, row["mode"])] = (
                            f"{case.op} {name} {what} skipped at K={case.K}, L>{case.seq_len} ({case.window}): "
                            f"{row['median_ms']:.0f} ms per call at L={case.seq_len}, over the "
                            f"{spec['max_call_s']} s budget")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows += [dict(base, provider=name, mode=m, skipped=why) for m, why in skips.items()]
            rows.sort(key=lambda r: modes.index(r["mode"]))
            for row in rows:
                print(_line(row), flush=True)
            if not args.no_save:
                common.append_rows(out_path, rows)
            all_rows.extend(rows)
        print(f"# case {i + 1}/{len(cases)} done, {time.perf_counter() - start:.0f} s", flush=True)

    print()
    print(window_tables(all_rows))
    if not args.no_save:
        print(f"\nrows appended to {out_path}")
        if not args.no_plot:
            from benchmarks import plot

            for path in plot.plot_window(common.read_rows([out_path]), out_path.parent, out_path.stem):
                print(f"wrote {path}")
    print(f"# total {time.perf_counter() - start:.0f} s")
    return all_rows


def _line(row: dict) -> str:
    shape = f"{row['op']:>17} {row['window']:>7} K={row['K']:<2} L={row['seq_len']:<5}"
    head = f"{row['provider']:>21} {row['mode']:>7} {shape}"
    if "skipped" in row:
        return f"{head}: skipped ({row['skipped']})"
    if "error" in row:
        return f"{head}: ERROR {row['error']}"
    return (f"{head}: median {row['median_ms']:.3f} ms [p20 {row['p20_ms']:.3f}, p80 {row['p80_ms']:.3f}] "
            f"x{row['reps']} peak {common.fmt_bytes(row.get('peak_bytes'))} "
            f"saved {common.fmt_bytes(row.get('saved_bytes'))} err out {row['fwd_err']:.1e}"
            + (f" grad {row['grad_err']:.1e}" if row.get("grad_err") is not None else ""))


if __name__ == "__main__":
    result = main()
    sys.exit(1 if any("error" in r for r in result) else 0)
