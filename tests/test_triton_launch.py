"""How the Triton backend launches its kernels: device guard, TF32 switch, occupancy, bf16 refusal,
and the ahead-of-time resource check of every specialisation (sm_90 and sm_80, no GPU needed)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import convbert_kernels as ck
from oracle import make_span_inputs, run_span

pytest.importorskip("triton", reason="the Triton backend needs the triton package")

ROOT = Path(__file__).resolve().parent.parent
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
interpreter = pytest.mark.skipif(not INTERPRET, reason="Triton kernels run on CPU only under TRITON_INTERPRET=1")


def _kernels():
    from convbert_kernels import triton_kernels

    return triton_kernels


def _env_without_interpreter() -> dict:
    """This environment minus TRITON_INTERPRET (the launchers' GPU configuration), with the checkout importable."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_without_interpreter(code: str, tmp_path) -> subprocess.CompletedProcess:
    env = _env_without_interpreter()
    env["TRITON_CACHE_DIR"] = env.get("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=1200, cwd=ROOT)


# ---- the fp32 TF32 switch, in every flag state ---------------------------------------------------

_TF32_STATES = {
    # state: (code that sets it, expected precision of fp32 dots)
    "default": ("", "ieee"),
    "legacy on": ("torch.backends.cuda.matmul.allow_tf32 = True", "tf32"),
    "legacy off": ("torch.backends.cuda.matmul.allow_tf32 = False", "ieee"),
    "new tf32": ("torch.backends.cuda.matmul.fp32_precision = 'tf32'", "tf32"),
    "new ieee": ("torch.backends.cuda.matmul.fp32_precision = 'ieee'", "ieee"),
    "global tf32": ("torch.backends.fp32_precision = 'tf32'", "tf32"),
    # transformers' TrainingArguments(tf32=...) sets the new API after other code used the old one:
    # reading the legacy flag then raises "mix of the legacy and new APIs"
    "mixed": ("torch.backends.cuda.matmul.allow_tf32 = False\ntorch.backends.cuda.matmul.fp32_precision = 'tf32'",
              "tf32"),
}


@pytest.mark.parametrize("state", list(_TF32_STATES))
def test_fp32_dot_precision_follows_torch_in_every_flag_state(state, tmp_path):
    setter, expected = _TF32_STATES[state]
    if "fp32_precision" in setter and not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("this torch has only the legacy TF32 switch")
    # a fresh process: the flag state is process-wide and the mixed state cannot be undone
    proc = _run_without_interpreter(f"""
        import torch
        {setter.replace(chr(10), chr(10) + ' ' * 8)}
        from convbert_kernels import triton_kernels as k
        print(k._dot_precision(torch.float32), k._dot_precision(torch.bfloat16))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [expected, "ieee"]


# ---- occupancy of the projection backward --------------------------------------------------------


def test_programs_per_sm_follows_cuda_occupancy_rules():
    per_sm = _kernels().programs_per_sm
    # 8 warps at 173-255 registers: 8192 registers per warp, 8 warps per SM, one program
    assert per_sm(173, 8, 0) == 1 and per_sm(255, 8, 0) == 1
    assert per_sm(128, 8, 0) == 2  # 4096 per warp: 16 warps
    assert per_sm(168, 8, 0) == 1  # 168 * 32 = 5376 per warp: 12 warps, not a second program
    assert per_sm(32, 4, 0) == 16  # thread-bound: 2048 threads / 128
    assert per_sm(16, 1, 0) == 32  # the 32-block cap
    assert per_sm(64, 4, 100_000) == 2  # shared-memory-bound: 233472 // (100000 + 1024)
    assert per_sm(64, 4, 100_000, shared_per_sm=167936) == 1  # sm_80 holds less
    assert per_sm(255, 16, 0) == 1  # never below one


@interpreter
def test_projection_grid_is_sized_by_resident_programs(monkeypatch):
    """The number of weight-gradient partials (programs along tokens) follows the occupancy."""
    k = _kernels()
    grids = []
    real_launch = k._launch

    def recording_launch(kernel, grid, device, *args, **meta):
        if kernel is k._bwd_proj_kernel:
            grids.append(grid)
        real_launch(kernel, grid, device, *args, **meta)

    monkeypatch.setattr(k, "_launch", recording_launch)
    inputs = make_span_inputs(2, 128, 10, 12, 3, 5, seed=2)  # 256 tokens: 4 tiles of 64, one A block
    for resident in (1, 2, 4):
        monkeypatch.setattr(k, "_resident_programs", lambda device, kernel, args, meta, r=resident: r)
        run_span(inputs, "triton")
    assert grids == [(1, 1), (2, 1), (4, 1)]


# ---- the device guard ----------------------------------------------------------------------------


def test_device_guard_selects_the_tensors_device():
    k = _kernels()
    guard = k._device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1  # built without touching CUDA
    assert isinstance(k._device_guard(torch.device("cpu")), contextlib.nullcontext)


@interpreter
def test_every_launch_happens_inside_the_device_guard(monkeypatch):
    k = _kernels()
    state = {"inside": False, "launched": []}

    @contextlib.contextmanager
    def recording_guard(device):
        assert device.type == "cpu"
        state["inside"] = True
        try:
            yield
        finally:
            state["inside"] = False

    class CheckedKernel:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            assert state["inside"], f"{self.kernel.__name__} launched outside the device guard"
            state["launched"].append(self.kernel.__name__)
            return self.kernel[grid]

    monkeypatch.setattr(k, "_device_guard", recording_guard)
    for name in ("_fwd_kernel", "_bwd_window_kernel", "_bwd_proj_kernel"):
        monkeypatch.setattr(k, name, CheckedKernel(getattr(k, name)))
    inputs = make_span_inputs(2, 7, 10, 12, 3, 5, with_mask=True)
    run_span(inputs, "triton")
    values = torch.randn(2, 7, 12, requires_grad=True)
    logits = torch.randn(2, 7, 15, requires_grad=True)
    ck.dynamic_conv(values, logits, 3, backend="triton").sum().backward()
    assert sorted(set(state["launched"])) == ["_bwd_proj_kernel", "_bwd_window_kernel", "_fwd_kernel"]
    assert len(state["launched"]) == 5


@pytest.mark.gpu
def test_gpu_tensors_on_a_second_device_while_the_first_is_current():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    from oracle import check_span_backend

    with torch.cuda.device(0):
        check_span_backend("triton", make_span_inputs(2, 70, 40, 48, 4, 9, with_mask=True), torch.float32,
                           device="cuda:1")


# ---- bf16 under the interpreter: refused, never wrong ---------------------------------------------


@interpreter
def test_bf16_refused_under_the_interpreter():
    inputs = make_span_inputs(2, 7, 10, 12, 3, 5).to(torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16 is not supported under the Triton interpreter"):
        ck.span_dynamic_conv(*inputs.tensors(), 3, backend="triton")
    with pytest.raises(ValueError, match="bfloat16"):
        ck.dynamic_conv(inputs.values, torch.randn(2, 7, 15, dtype=torch.bfloat16), 3, backend="triton")
    k = _kernels()
    probs = torch.rand(2, 7, 3, 5)
    with pytest.raises(ValueError, match="bfloat16"):
        k.window_backward(inputs.values.detach(), inputs.values.detach(), probs, 3, 2, None, None, torch.float32)
    with pytest.raises(ValueError, match="bfloat16"):
        k.projection_backward(probs.reshape(2, 7, 15), inputs.query.detach(), inputs.key_conv.detach(),
                              inputs.weight.detach(), 3)


# ---- ahead-of-time resources of every specialisation (sm_90, sm_80) -------------------------------


def test_parse_resource_usage():
    from benchmarks.triton_resources import parse_resource_usage

    text = " Function _fwd_kernel:\n  REG:99 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:688 TEXTURE:0\n"
    assert parse_resource_usage(text) == {"REG": 99, "STACK": 0, "SHARED": 1024, "LOCAL": 0}
    with pytest.raises(RuntimeError, match="unexpected cuobjdump output"):
        parse_resource_usage("nothing here")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CI check for machines without a GPU; on a GPU the "
                    "loaded kernels are checked instead (test_gpu_no_kernel_spills_at_base_dims)")
def test_every_specialisation_compiles_without_spills_for_sm90_and_sm80(tmp_path):
    """The launchers' real specialisations for the benchmark shapes and the tests' extremes,
    compiled for sm_90 and sm_80 (a process per architecture, in parallel): no spills, shared
    memory within the per-block limit. The committed table is benchmarks/results/triton-resources.md."""
    env = _env_without_interpreter()
    procs = {}
    for arch in ("90", "80"):
        out = tmp_path / f"sm{arch}.md"
        procs[arch] = (out, subprocess.Popen(
            [sys.executable, "-m", "benchmarks.triton_resources", "--check", "--quiet", "--arch", arch,
             "--out", str(out)], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for arch, (out, proc) in procs.items():
        log, _ = proc.communicate(timeout=1800)
        if proc.returncode != 0 and "cuobjdump" in log and "No such file" in log:
            pytest.skip("no cuobjdump available")
        assert proc.returncode == 0, log[-4000:]
        assert "0 with problems" in log, log[-4000:]
        rows = [line for line in out.read_text().splitlines() if line.startswith(f"| sm_{arch} |")]
        for kernel in ("_fwd_kernel", "_bwd_window_kernel", "_bwd_proj_kernel"):
            assert any(f"| {kernel} |" in row for row in rows), f"sm_{arch}: no {kernel} specialisation"
        for dtype in ("bfloat16", "float16", "float32"):
            assert any(f"| {dtype} |" in row for row in rows), f"sm_{arch}: no {dtype} specialisation"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_no_kernel_spills_at_base_dims(dtype, monkeypatch):
    """On the card: every kernel the base-dims forward and backward launch loads without spills."""
    k = _kernels()
    launched = []
    real_run = k._run

    def recording_run(kernel, grid, args, options):
        launched.append(k._loaded(kernel.warmup(*args, grid=grid, **options)))
        real_run(kernel, grid, args, options)

    monkeypatch.setattr(k, "_run", recording_run)
    run_span(make_span_inputs(4, 512, 384, 384, 6, 9, seed=1).to(dtype, "cuda"), "triton")
    assert {c.name for c in launched} == {"_fwd_kernel", "_bwd_window_kernel", "_bwd_proj_kernel"}
    for compiled in launched:
        assert compiled.n_spills == 0, f"{compiled.name}: {compiled.n_spills} spilled registers"
