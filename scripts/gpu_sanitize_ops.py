"""Run every op of one backend forward and backward once: the workload of gpu_check.sh's
``sanitize`` stage (under compute-sanitizer) and, with ``--base``, of its ``ncu`` stage.

Default (sanitize): ``span_dynamic_conv`` and ``dynamic_conv``, with and without a padding mask,
in fp32 and bf16, at three awkward cases -- (B, L, A, C, n, K) = (2, 37, 20, 21, 7, 31): head size 3,
K = 31 longer than a token tile's halo; (3, 70, 24, 48, 2, 9): several tiles, head size 24; and
(2, 45, 20, 30, 3, 8) with padding_l = 7: K even, a causal window, so the backward's value and
gradient windows differ -- each forward plus a backward that reaches every input; and, with the
mask, ``dynamic_conv`` with one kernel shared by every position (stride-0 logits, read in place);
without it, both ops on the same B * L tokens packed as sequences (``cu_seqlens``: an empty
sequence, lengths 1 and 2, then three long ones, so that token tiles span several sequences).
Each result is compared, loosely, with the eager backend on the same inputs in fp32 on the CPU (so
that, under the sanitizer, the GPU runs little besides the kernels checked), and a kernel that runs
cleanly but computes garbage is caught too. Prints ``gpu_sanitize_ops: ok`` at the end when every
op ran and matched.

``--base``: one forward and one backward of ``span_dynamic_conv`` at ConvBERT-base dims (B=32,
L=512, A=C=384, n=6, K=9) per backend and dtype, no comparison: what ncu profiles.

    python scripts/gpu_sanitize_ops.py --backends native            # CUDA, both dtypes
    python scripts/gpu_sanitize_ops.py --backends triton --device cpu --dtypes fp32   # interpreter
    python scripts/gpu_sanitize_ops.py --base --backends triton,native --dtypes bf16
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, when run as a file

import torch

import convbert_kernels as ck

# (shape, padding_l); padding_l None is the centred (K - 1) // 2
CASES = [((2, 37, 20, 21, 7, 31), None), ((3, 70, 24, 48, 2, 9), None), ((2, 45, 20, 30, 3, 8), 7)]
BASE_SHAPE = (32, 512, 384, 384, 6, 9)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Loose: this checks that the kernel computed the op at all, the tests check the precision.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
DONE = "gpu_sanitize_ops: ok"


def _mask(batch: int, length: int, device) -> torch.Tensor:
    """1 for tokens, 0 for padding: row b has its last b * (L // 5) positions padded."""
    mask = torch.ones(batch, length, dtype=torch.bool)
    for b in range(batch):
        pad = min(length - 1, b * (length // 5))
        if pad:
            mask[b, length - pad:] = False
    return mask.to(device)


def _cu_seqlens(total: int, device) -> torch.Tensor:
    """Packed sequences over ``total`` (>= 3) tokens: lengths 0, 1, 2, then the rest in three parts
    with an empty sequence between the first two."""
    rest = total - 3
    lengths = [0, 1, 2, rest // 3, 0, rest // 3, rest - 2 * (rest // 3)]
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)


def _leaves(shape, dtype, device, seed):
    B, L, A, C, n, K = shape
    g = torch.Generator().manual_seed(seed)

    def randn(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(device=device, dtype=dtype).requires_grad_(True)

    return [randn(B, L, A), randn(B, L, A), randn(B, L, C), randn(n * K, A, scale=A**-0.5), randn(n * K, scale=0.1)]


def _run(fn, leaves, grad):
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, grad)
    return [out.detach()] + [g.detach() for g in grads]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check_ops(backend: str, device, dtypes, cases) -> int:
    """Every op forward and backward; returns the number of mismatches against eager."""
    bad = 0
    for shape, padding_l in cases:
        B, L, A, C, n, K = shape
        for dtype in dtypes:
            for with_mask in (False, True):
                mask = _mask(B, L, device) if with_mask else None
                leaves = _leaves(shape, dtype, device, seed=sum(shape))
                grad = torch.randn(B, L, C, generator=torch.Generator().manual_seed(1)).to(device, dtype)
                logits = (torch.randn(B, L, n * K, generator=torch.Generator().manual_seed(2)) * 2).to(device, dtype)
                logits.requires_grad_(True)
                shared_kernel = logits.detach()[0, 0].clone().requires_grad_(True)  # [n * K]
                cpu_mask = None if mask is None else mask.cpu()
                ops = {
                    "span_dynamic_conv": (
                        lambda q, kc, v, w, b, be, m: ck.span_dynamic_conv(
                            q, kc, v, w, b, n, padding_l=padding_l, padding_mask=m, backend=be),
                        leaves, grad),
                    "dynamic_conv": (
                        lambda v, lg, be, m: ck.dynamic_conv(v, lg, n, padding_l=padding_l, padding_mask=m,
                                                             backend=be),
                        [leaves[2], logits], grad),
                }
                if with_mask:  # one kernel for every position, as LightweightConv1d passes it
                    ops["dynamic_conv shared"] = (
                        lambda v, w, be, m: ck.dynamic_conv(v, w.view(1, 1, -1).expand(B, L, -1), n,
                                                            padding_l=padding_l, padding_mask=m, backend=be),
                        [leaves[2], shared_kernel], grad)
                else:  # the same tokens packed as sequences [T, .] (cu_seqlens; no padding mask)
                    cu = _cu_seqlens(B * L, device)
                    packed = [t.detach().reshape(B * L, -1).requires_grad_(True) for t in leaves[:3]]
                    packed_logits = logits.detach().reshape(B * L, -1).requires_grad_(True)
                    packed_grad = grad.reshape(B * L, C)
                    ops["span_dynamic_conv packed"] = (
                        lambda q, kc, v, w, b, be, m: ck.span_dynamic_conv(
                            q, kc, v, w, b, n, padding_l=padding_l, cu_seqlens=cu.to(q.device), backend=be),
                        packed + leaves[3:], packed_grad)
                    ops["dynamic_conv packed"] = (
                        lambda v, lg, be, m: ck.dynamic_conv(v, lg, n, padding_l=padding_l,
                                                             cu_seqlens=cu.to(v.device), backend=be),
                        [packed[2], packed_logits], packed_grad)
                for op, (fn, inputs, op_grad) in ops.items():
                    got = _run(lambda *t: fn(*t, backend, mask), inputs, op_grad)
                    ref_inputs = [t.detach().float().cpu().requires_grad_(True) for t in inputs]
                    want = _run(lambda *t: fn(*t, "eager", cpu_mask), ref_inputs, op_grad.float().cpu())
                    errors = [_relative(a, b) for a, b in zip(got, want)]
                    worst = max(errors)
                    ok = all(torch.isfinite(t).all() for t in got) and worst <= TOLERANCE[dtype]
                    bad += int(not ok)
                    print(f"{backend:>6} {op:>24} {str(shape):>22} padding_l={padding_l} {str(dtype)[6:]:>8} "
                          f"mask={int(with_mask)} "
                          f"worst relative error vs eager {worst:.2e} {'ok' if ok else 'MISMATCH'}", flush=True)
    return bad


def run_base(backend: str, device, dtypes, shape) -> None:
    """One forward and one backward at ``shape``, nothing else (the ncu workload)."""
    B, L, A, C, n, K = shape
    for dtype in dtypes:
        leaves = _leaves(shape, dtype, device, seed=0)
        grad = torch.randn(B, L, C, generator=torch.Generator().manual_seed(1)).to(device, dtype)
        out = ck.span_dynamic_conv(*leaves, n, backend=backend)
        torch.autograd.grad(out, leaves, grad)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        print(f"{backend} {str(dtype)[6:]} {shape}: forward + backward ran", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="native", help="comma-separated: native, triton, eager, reference")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--base", action="store_true", help="one forward + backward at base dims (for ncu)")
    p.add_argument("--shape", default=None, metavar="B,L,A,C,n,K", help="override the shape(s)")
    p.add_argument("--padding-l", type=int, default=None, help="with --shape: the window offset (default centred)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtypes = [DTYPES[d] for d in args.dtypes.split(",") if d]
    backends = [b for b in args.backends.split(",") if b]
    shape = tuple(int(x) for x in args.shape.split(",")) if args.shape else None
    for backend in backends:
        if backend not in ck.available_backends(device):
            print(f"backend {backend} is not available on {device}: {ck.backend_load_error(backend)}", flush=True)
            return 1
    bad = 0
    for backend in backends:
        if args.base:
            run_base(backend, device, dtypes, shape or BASE_SHAPE)
        else:
            bad += check_ops(backend, device, dtypes, [(shape, args.padding_l)] if shape else CASES)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if bad:
        print(f"gpu_sanitize_ops: {bad} mismatches", flush=True)
        return 1
    print(DONE, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
