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
                               "--repeats", "2", "--min-time", "0", "--no-save", "--mm-gflops", "1"])
    assert {r["provider"] for r in rows} == {"reference", "eager"} and not any("error" in r for r in rows)
    assert all(r["fraction_of_mm"] == r["gflops"] and r["gflops"] > 0 for r in rows)  # against --mm-gflops 1
    table = benchmark(plot.kernel_speedup_table, rows)
    assert "| 1 | 64 | 32/32/2/3 |" in table
    paths = plot.plot_kernels(rows, tmp_path, "kernels-test")
    assert len(paths) == 1 and paths[0].stat().st_size > 0


def test_versus_dtype_times_both_dtypes_together(device):
    """--versus-dtype: every provider in both dtypes, timed in one alternation on the CPU, each row
    carrying its own dtype and ceiling, and the ratio table pairing them."""
    rows = bench_kernels.main(["--device", str(device), "--seq-lens", "48", "--batches", "1", "--dims", "32,32,2,3",
                               "--providers", "eager,native", "--modes", "full", "--dtype", "fp32",
                               "--versus-dtype", "bf16", "--repeats", "2", "--min-time", "0", "--no-save",
                               "--mm-gflops", "1"])
    assert not any("error" in r for r in rows)
    assert sorted((r["provider"], r["dtype"]) for r in rows) == [
        ("eager", "bf16"), ("eager", "fp32"), ("native", "bf16"), ("native", "fp32")]
    if device.type == "cpu":  # the four callables alternate
        assert all(r["interleaved_with"] == 3 for r in rows)
    table = plot.dtype_ratio_table(rows, "fp32", "bf16")
    by = {(r["provider"], r["dtype"]): r["median_ms"] for r in rows}
    assert f"| native | 1 | 48 | 32/32/2/3 | forward + backward | {by['native', 'fp32']:.2f} |" in table
    assert table.count("| forward + backward |") == 2


@pytest.mark.slow
def test_window_quick_preset(benchmark, device, tmp_path):
    """bench_window --preset quick: both ops and windows, every provider checked against the float64
    oracle before it is timed, a finite time per mode, the rows in the file, the tables and the PNG."""
    import math

    from benchmarks import bench_window

    out = tmp_path / "window-test.jsonl"
    rows = bench_window.main(["--preset", "quick", "--device", str(device), "--out", str(out),
                              "--repeats", "2", "--target-s", "0"])
    every = bench_window.providers(device)
    # the compiled providers are default elsewhere, but the quick preset leaves them out (minutes of compiling)
    assert set(bench_window.COMPILED_PROVIDERS) <= {p for names in every.values() for p in names}
    expected = {(op, p) for op, names in every.items() for p in names if p not in bench_window.COMPILED_PROVIDERS}
    assert {(r["op"], r["provider"]) for r in rows} == expected
    assert {"fairseq-unfold", "conv1d", "conv1d-BCL"} <= {p for _, p in expected}
    assert {(r["window"], r["mode"]) for r in rows} == {
        (w, m) for w in bench_window.WINDOWS for m in bench_window.MODES}
    for r in rows:
        assert "error" not in r and "skipped" not in r, r
        assert math.isfinite(r["median_ms"]) and r["median_ms"] > 0, r
        assert r["fwd_err"] <= r["fwd_tol"] and r["grad_err"] <= r["grad_tol"], r
        assert r["padding_l"] == (r["K"] - 1 if r["window"] == "causal" else (r["K"] - 1) // 2)
        assert r["commit"] and r["torch"] and r["device"] and r["peak_bytes"] > 0
    assert len(common.read_rows([out])) == len(rows)
    tables = benchmark(bench_window.window_tables, rows)
    assert "| causal (6) | 7 | 64 |" in tables and "LightweightConv1d, forward + backward" in tables
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("op, window, compiled, plain", [
    ("dynamic_conv", "causal", "compiled-eager", "eager"),
    ("LightweightConv1d", "centred", "module:compiled-eager", "module:eager"),
])
def test_window_compiled_eager(device, op, window, compiled, plain):
    """A compiled provider named by --providers: compiled (untimed) before its checked call, it passes
    the float64 oracle check and has a time per mode, like the eager provider beside it (one tiny case:
    the quick preset leaves the compiled providers out)."""
    import math

    from benchmarks import bench_window

    rows = bench_window.main(["--device", str(device), "--batch", "2", "--channels", "32", "--heads", "4",
                              "--kernel-sizes", "3", "--seq-lens", "16", "--dtype", "fp32", "--ops", op,
                              "--windows", window, "--providers", f"{compiled},{plain}", "--repeats", "2",
                              "--target-s", "0", "--no-save"])
    assert {(r["provider"], r["mode"]) for r in rows} == {(p, m) for p in (compiled, plain)
                                                          for m in bench_window.MODES}
    for r in rows:
        assert "error" not in r and "skipped" not in r, r
        assert math.isfinite(r["median_ms"]) and r["median_ms"] > 0, r
        assert r["fwd_err"] <= r["fwd_tol"] and r["grad_err"] <= r["grad_tol"], r
        assert ("compile_s" in r) == (r["provider"] == compiled), r
    assert compiled in bench_window.window_tables(rows)


def test_window_compiled_providers_by_preset(device):
    """The compiled providers are default on the command line and in the real presets; the quick
    preset's ``without`` leaves them out unless --providers names them."""
    from benchmarks import bench_window

    def chosen(argv):
        args = bench_window.parse_args(argv)
        spec = bench_window.build_spec(args, device)
        return {p for names in bench_window.providers(device, wanted=args.providers,
                                                      without=spec.get("without", ())).values() for p in names}

    compiled = set(bench_window.COMPILED_PROVIDERS)
    preset = "gpu" if device.type == "cuda" else "cpu"
    assert compiled <= chosen([]) and compiled <= chosen(["--preset", preset])
    assert not compiled & chosen(["--preset", "quick"])
    assert chosen(["--preset", "quick", "--providers", "compiled-eager,eager"]) == {"compiled-eager", "eager"}


def test_window_checks_and_skips(device, monkeypatch):
    """A provider that disagrees with the oracle stops the run; over-budget unfold cases are
    recorded as skipped with the reason, not dropped."""
    from benchmarks import bench_window

    small = ["--device", str(device), "--batch", "2", "--channels", "32", "--heads", "4", "--kernel-sizes", "3",
             "--dtype", "fp32", "--repeats", "1", "--target-s", "0", "--no-save", "--modes", "full"]
    rows = bench_window.main(small + ["--seq-lens", "16,64", "--ops", "dynamic_conv", "--windows", "causal",
                                      "--providers", "fairseq-unfold,reference,eager",
                                      "--max-unfold-bytes", str(2 * 16 * 32 * 3 * 4)])
    by = {(r["provider"], r["seq_len"]): r for r in rows}
    assert "median_ms" in by["fairseq-unfold", 16] and "median_ms" in by["eager", 64]
    assert "windows" in by["fairseq-unfold", 64]["skipped"] and "skipped" in by["reference", 64]
    fused = [p for p in bench_window.providers(device)["LightweightConv1d"] if p in bench_window.FUSED_PROVIDERS]
    rows = bench_window.main(small + ["--seq-lens", "16,32", "--ops", "LightweightConv1d", "--windows", "centred",
                                      "--providers", ",".join(["fairseq-unfold", "conv1d", *fused]),
                                      "--max-call-s", "0", "--max-oracle-bytes", "1"])  # the FFT weight gradient
    by = {(r["provider"], r["seq_len"]): r for r in rows}
    assert "median_ms" in by["conv1d", 16] and "FFT" in by["conv1d", 16]["oracle"]
    assert "over the 0.0 s budget" in by["fairseq-unfold", 32]["skipped"] and "skipped" in by["conv1d", 32]
    assert all("median_ms" in by[p, 32] for p in fused)
    assert "skipped" in bench_window.window_tables(rows)

    wrong = bench_window.fairseq_unfold_dynamic
    monkeypatch.setattr(bench_window, "fairseq_unfold_dynamic", lambda v, lg, n, pl: wrong(v, lg, n, pl) * 1.001)
    with pytest.raises(bench_window.AccuracyError, match="fairseq-unfold"):
        bench_window.main(small + ["--seq-lens", "16", "--ops", "dynamic_conv", "--providers", "fairseq-unfold"])


@pytest.mark.slow
def test_unpad_quick_preset(tmp_path):
    """bench_unpad --preset quick: padded and unpadded ConvBERT (tiny) on the stdlib corpus' lengths, both
    modes, checked against each other before timing; finite figures, the rows in the file, the tables and
    the length histogram."""
    import math

    from benchmarks import bench_unpad

    out = tmp_path / "unpad-test.jsonl"
    rows = bench_unpad.main(["--preset", "quick", "--backend", "eager", "--out", str(out)])
    model = [r for r in rows if r["bench"] == "unpad"]
    assert {(r["mode"], r["provider"]) for r in model} == {(m, p) for m in bench_unpad.MODES
                                                           for p in bench_unpad.PROVIDERS}
    for r in model:
        assert "error" not in r, r
        assert math.isfinite(r["real_tokens_per_s"]) and r["real_tokens_per_s"] > 0, r
        assert r["peak_bytes"] > 0 and 0 < r["real_tokens"] < r["padded_tokens"], r
        assert r["max_rel_diff"] <= r["tol"], r  # the two models agreed at the real tokens
        assert r["batch"] == 32 and r["max_len"] == 512 and r["commit"] and r["threads"] >= 1
    attention = [r for r in rows if r["bench"] == "unpad-attention"]
    assert {(r["mode"], r["impl"]) for r in attention} == {(m, i) for m in ("forward", "forward+backward")
                                                           for i in ("per-sequence", "rectangle")}
    assert all(math.isfinite(r["time_s"]) and r["time_s"] > 0 for r in attention)
    (lengths,) = [r for r in rows if r["bench"] == "unpad-lengths"]
    assert sum(lengths["bin_counts"]) == lengths["documents"] > 1000 and lengths["max"] <= 512
    assert len(common.read_rows([out])) == len(rows)
    tables = bench_unpad.unpad_tables(rows)
    assert "| ConvBERT-tiny | inference |" in tables and "per-sequence" in tables
    assert out.with_name("unpad-test-lengths.png").stat().st_size > 0


def test_time_cpu_interleaved_alternates_calls():
    """common.time_cpu_interleaved: round after round one call of each callable, the turn order
    rotated, the gradients of each reset before its own call; each gets its own summary."""
    calls = []
    leaf = torch.zeros(2, requires_grad=True)

    def make(name):
        def fn():
            assert leaf.grad is None or name == "b"  # "a"'s grads are reset before each of its calls
            calls.append(name)
            leaf.grad = torch.ones(2)
        return fn

    timings = common.time_cpu_interleaved({"a": make("a"), "b": make("b")}, warmup=1, repeats=4,
                                          grad_to_none={"a": [leaf]}, clock="thread")
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then rotated rounds
    assert set(timings) == {"a", "b"}
    for summary in timings.values():
        assert summary["reps"] == 4 and summary["clock"] == "thread" and summary["interleaved_with"] == 1
        assert 0 <= summary["min_ms"] <= summary["median_ms"]
