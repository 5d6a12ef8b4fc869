"""A small version of the benchmark suite for pytest-benchmark.

    pytest benchmarks/ --benchmark-only                    # CPU (or the GPU when there is one)
    pytest benchmarks/ --benchmark-only --bench-compile    # plus the torch.compile providers

Each benchmark first checks its provider against the reference, so a fast wrong kernel fails.
The figures of record come from ``bench_kernels.py`` / ``bench_model.py``; these are for quick
comparisons (``--benchmark-compare``) between commits.
"""

from __future__ import annotations

import pytest
import torch

import convbert_kernels
from benchmarks import bench_kernels, bench_model, common, plot

KERNEL_PROVIDERS = bench_kernels.PROVIDER_ORDER
MODEL_PROVIDERS = ["convbert:reference", "convbert:eager", "convbert:triton", "convbert:native",
                   "hf", "hf-patched", "hf-compiled"]
COMPILED = {"compiled-reference", "compiled-eager", "hf-compiled"}


def small_case(device) -> bench_kernels.Case:
    dtype = "fp32" if device.type == "cpu" else "bf16"
    return bench_kernels.Case(batch=2, seq_len=256, A=96, C=96, heads=4, K=9, dtype=dtype)


def _skip_unavailable(name, device, with_compile):
    if name in COMPILED and not with_compile:
        pytest.skip("torch.compile providers need --bench-compile")
    backend = name.split(":", 1)[-1]
    if backend in convbert_kernels.backends.known_backends():
        if backend not in convbert_kernels.available_backends(device):
            pytest.skip(f"backend {backend} is not available on {device}")
        if backend == "triton" and device.type == "cpu":
            pytest.skip("triton on CPU is the interpreter: not benchmarked")


def _info(benchmark, device, **shape):
    env = common.environment(device)
    benchmark.extra_info.update({k: env[k] for k in ("device", "torch", "triton", "commit", "threads")})
    benchmark.extra_info.update(shape)


@pytest.mark.parametrize("mode", bench_kernels.MODES)
@pytest.mark.parametrize("provider", KERNEL_PROVIDERS)
def test_kernel(benchmark, device, with_compile, sync, provider, mode):
    _skip_unavailable(provider, device, with_compile)
    case = small_case(device)
    op = bench_kernels.providers(device, wanted=[provider])[provider]
    inputs, grad = bench_kernels.make_inputs(case, device)
    tol = dict(rtol=1e-4, atol=1e-4) if case.dtype == "fp32" else dict(rtol=2e-2, atol=2e-2)
    expected = convbert_kernels.span_dynamic_conv(*inputs, case.heads, backend="reference")
    torch.testing.assert_close(op(*inputs, case.heads), expected, **tol)

    fn = sync(bench_kernels.mode_fn(op, inputs, grad, case.heads, mode))

    def reset():
        for t in inputs:
            t.grad = None

    _info(benchmark, device, provider=provider, mode=mode, **vars(case))
    benchmark.pedantic(fn, setup=reset, rounds=10, warmup_rounds=2)


@pytest.mark.parametrize("provider", MODEL_PROVIDERS)
def test_model_training_step(benchmark, device, with_compile, sync, provider):
    pytest.importorskip("transformers")
    _skip_unavailable(provider, device, with_compile)
    size, B, L = "tiny", 2, 64
    state = bench_model._hf_reference_state(size)
    batch = bench_model.make_batch(size, B, L, device)
    model, fn = bench_model.build(provider, size, state, device)
    reference, _ = bench_model.build("hf", size, state, device)
    model.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).loss, reference(**batch).loss, rtol=1e-4, atol=1e-4)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        fn(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    _info(benchmark, device, provider=provider, size=size, batch=B, seq_len=L, dtype="fp32")
    benchmark.extra_info["tokens"] = B * L
    benchmark.pedantic(sync(step), rounds=5, warmup_rounds=1)


def test_tables_and_plot(benchmark, device, tmp_path):
    """bench_kernels' rows -> plot.py's table and PNG (tiny sweep, no file written to results/)."""
    rows = bench_kernels.main(["--device", str(device), "--seq-lens", "32,64", "--batches", "1",
                               "--dims", "32,32,2,3", "--providers", "reference,eager", "--modes", "full",
                               "--repeats", "2", "--min-time", "0", "--no-save"])
    assert {r["provider"] for r in rows} == {"reference", "eager"} and not any("error" in r for r in rows)
    table = benchmark(plot.kernel_speedup_table, rows)
    assert "| 1 | 64 | 32/32/2/3 |" in table
    paths = plot.plot_kernels(rows, tmp_path, "kernels-test")
    assert len(paths) == 1 and paths[0].stat().st_size > 0
