"""The pure-Python parts of the GPU proof kit (scripts/gpu_check.sh): the summary written from
given results, the ncu CSV and compute-sanitizer log parsers, the copy-bandwidth measurement,
the longest-trainable-length search, and the script's refusals (unknown stage, no CUDA)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import bench_kernels, bench_model, common, gpu_summary

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"

# What `ncu --csv --print-units base --print-kernel-base function --metrics ...` printed, cut down
# (details page, long format; ncu's ==PROF== lines and the program's own output around it).
NCU_LONG = """\
==PROF== Connected to process 4242 (/opt/torch/.venv/bin/python3.12)
triton bfloat16 (32, 512, 384, 384, 6, 9): forward + backward ran
==PROF== Profiling "_fwd_kernel" - 0: 0%....50%....100% - 3 passes
==PROF== Profiling "window_forward_kernel" - 1: 0%....50%....100% - 3 passes
==PROF== Disconnected from process 4242
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","4242","python3.12","127.0.0.1","_fwd_kernel","1","7","(128, 1, 1)","(512, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes.sum.per_second","byte/second","2,512,345,678,901.5"
"0","4242","python3.12","127.0.0.1","_fwd_kernel","1","7","(128, 1, 1)","(512, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","nsecond","41,216"
"0","4242","python3.12","127.0.0.1","_fwd_kernel","1","7","(128, 1, 1)","(512, 1, 1)","0","9.0","Command line profiler metrics","launch__registers_per_thread","register/thread","128"
"0","4242","python3.12","127.0.0.1","_fwd_kernel","1","7","(128, 1, 1)","(512, 1, 1)","0","9.0","Command line profiler metrics","l1tex__t_sectors_pipe_lsu_mem_local_op_ld.sum","sector","0"
"0","4242","python3.12","127.0.0.1","_fwd_kernel","1","7","(128, 1, 1)","(512, 1, 1)","0","9.0","Command line profiler metrics","sm__warps_active.avg.pct_of_peak_sustained_active","%","23.51"
"1","4242","python3.12","127.0.0.1","void window_forward_kernel<c10::BFloat16, float, float>(const c10::BFloat16 *, int)","1","7","(256, 1, 1)","(1024, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes.sum.per_second","Gbyte/second","1,900.25"
"1","4242","python3.12","127.0.0.1","void window_forward_kernel<c10::BFloat16, float, float>(const c10::BFloat16 *, int)","1","7","(256, 1, 1)","(1024, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","usecond","55.5"
"1","4242","python3.12","127.0.0.1","void window_forward_kernel<c10::BFloat16, float, float>(const c10::BFloat16 *, int)","1","7","(256, 1, 1)","(1024, 1, 1)","0","9.0","Command line profiler metrics","l1tex__t_sectors_pipe_lsu_mem_local_op_st.sum","sector","1,024"
"""

# The same kind of data from `--page raw` (wide: one column per metric, a row of units).
NCU_WIDE = """\
==PROF== Disconnected from process 77
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","dram__bytes.sum.per_second","launch__registers_per_thread"
"","","","","","","","","","","","Tbyte/second","register/thread"
"0","77","python3","h","_bwd_proj_kernel","1","7","(256, 1, 1)","(132, 3, 1)","0","9.0","1.5","96"
"""


def _kernel_row(provider, mode, median_ms, **extra):
    row = dict(bench="kernel", provider=provider, mode=mode, dtype="bf16", batch=32, seq_len=512, A=384, C=384,
               heads=6, K=9, device="NVIDIA H100 80GB HBM3", median_ms=median_ms, p20_ms=median_ms * 0.9,
               p80_ms=median_ms * 1.1, effective_gbps=1500.0, fraction_of_floor=1500 / 3350, peak_gbps=3350.0, copy_gbps=3000.0,
               fraction_of_copy=0.5, peak_bytes=2**20, first_call_ms=1200.0)
    row.update(extra)
    return row


def _write_junit(path: Path, passed: int, failed: list[str], skipped: int) -> None:
    cases = [f'<testcase classname="tests.test_x" name="test_ok_{i}" time="0.1"/>' for i in range(passed)]
    cases += [f'<testcase classname="tests.test_x" name="{name}" time="0.1"><failure message="assert 1 == 2&#10;more">'
              f"trace</failure></testcase>" for name in failed]
    cases += [f'<testcase classname="tests.test_y" name="test_skip_{i}"><skipped message="no"/></testcase>'
              for i in range(skipped)]
    path.write_text('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" '
                    f'failures="{len(failed)}" skipped="{skipped}" tests="{passed + len(failed) + skipped}">'
                    + "".join(cases) + "</testsuite></testsuites>")


# ---- summary from given results -----------------------------------------------------------------


def test_summary_from_given_results(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    for sub in ("setup", "tests", "sanitize", "ncu"):
        (work / sub).mkdir(parents=True)
    out.mkdir()
    (work / "stages.tsv").write_text("".join(f"{s}\t0\t{10 + i}\t\n" for i, s in enumerate(gpu_summary.STAGES)))
    (work / "setup" / "native.json").write_text(json.dumps(dict(
        ok=True, load_error=None, how_loaded="prebuilt", cuda_kernels_registered=True,
        backends_cuda=["reference", "eager", "triton", "native"], backends_cpu=["reference", "eager", "native"])))
    _write_junit(work / "tests" / "suite.xml", passed=5, failed=["test_bad[bf16]"], skipped=2)
    _write_junit(work / "tests" / "c1.xml", passed=1, failed=[], skipped=0)
    (work / "tests" / "runs.tsv").write_text(
        f"suite\t{work}/tests/suite.xml\t1\t300\ncollect\t\t0\t\n"
        f"compile tests/test_x.py::test_compile\t{work}/tests/c1.xml\t0\t40\n"
        f"compile tests/test_x.py::test_compile_2\t{work}/tests/missing.xml\t124\t240\n")
    clean = work / "sanitize" / "memcheck.txt"
    clean.write_text("========= COMPUTE-SANITIZER\ngpu_sanitize_ops: ok\n========= ERROR SUMMARY: 0 errors\n")
    racy = work / "sanitize" / "racecheck.txt"
    racy.write_text("========= Error: Race reported between Write access at window_backward_kernel<float>+0x10\n"
                    "=========     and Read access at window_backward_kernel<float>+0x20 [3 hazards]\n"
                    "gpu_sanitize_ops: ok\n========= RACECHECK SUMMARY: 2 hazards displayed (2 errors, 0 warnings)\n")
    (work / "sanitize" / "runs.tsv").write_text(f"memcheck\tnative\t0\t30\t{clean}\nracecheck\tnative\t1\t50\t{racy}\n")
    (work / "ncu" / "bf16.csv").write_text(NCU_LONG)
    (work / "ncu" / "runs.tsv").write_text(f"bf16\t0\t20\t{work}/ncu/bf16.csv\n")
    common.append_rows(out / "kernels.jsonl", [
        _kernel_row("reference", "forward", 4.0), _kernel_row("triton", "forward", 0.5),
        _kernel_row("compiled-reference", "forward", 0.0, error="RuntimeError: boom")])
    base = dict(device="NVIDIA H100 80GB HBM3", size="base", batch=32, seq_len=512, dtype="bf16")
    common.append_rows(out / "model.jsonl", [
        dict(base, bench="model", provider="hf", median_ms=200.0, p20_ms=190.0, p80_ms=210.0, tokens_per_s=81920.0,
             peak_bytes=2**33, peak_total_bytes=2**34, first_step_ms=3000.0, eval_loss=10.5),
        dict(base, bench="model", provider="convbert:triton", median_ms=100.0, p20_ms=95.0, p80_ms=105.0,
             tokens_per_s=163840.0, peak_bytes=2**32, first_step_ms=2000.0, eval_loss=10.5004),
        dict(base, bench="model", provider="hf-compiled", error="skipped: the time budget of 300 s was used up"),
        dict(base, bench="model-max-len", provider="hf", batch=8, lengths=[512, 1024, 2048], max_len=1024,
             failed_len=2048, failed_error_type="OutOfMemoryError", failed_error="CUDA out of memory.", oom=True,
             peak_total_bytes_at_max_len=70 * 2**30),
    ])

    info = dict(device="NVIDIA H100 80GB HBM3", capability="9.0", sms=132, gpu_memory="79.1 GiB", driver="580.1",
                torch="2.11.0+cu130", torch_cuda="13.0", triton="3.6.0", transformers="5.17.0", python="3.12.3",
                commit="abc123", commit_source="CONVBERT_COMMIT")
    rc, text = gpu_summary.assemble(work, out, list(gpu_summary.STAGES), dry_run=False, started="t0", info=info)

    assert rc == 1  # a test failed, a race was found, a kernel provider errored
    assert text == (out / "summary.md").read_text()
    assert "NVIDIA H100 80GB HBM3 (sm 9.0, 132 SMs, 79.1 GiB); driver 580.1" in text
    assert "torch 2.11.0+cu130 (CUDA 13.0), triton 3.6.0, transformers 5.17.0" in text
    assert "commit abc123 (from CONVBERT_COMMIT)" in text
    assert "| setup | **PASSED** | 10 | native CUDA kernels registered |" in text
    # suite: 5 passed, 1 failed, 2 skipped; one compile test passed, one was killed (no report)
    assert "| tests | **FAILED** | 11 | 5 passed, 1 failed, 0 errors, 2 skipped; compile tests alone: 1/2 ok |" in text
    assert "| suite | tests/test_x.py::test_bad[bf16] | failed | assert 1 == 2 |" in text
    assert "compile tests/test_x.py::test_compile_2: no junit report (exit 124, timed out)" in text
    assert "| memcheck | native | 0 | pass | - | - | 0 | 30 |" in text
    assert "| racecheck | native | 2 | FAIL | window_backward_kernel | - | 1 | 50 |" in text
    assert "| sanitize | **FAILED** | 12 | 1/2 sanitizer runs clean |" in text
    # kernels: speed-up over the reference, GB/s, fraction of DRAM peak and of the measured copy
    assert "copy bandwidth 3000 GB/s, data-sheet DRAM 3350 GB/s" in text
    assert "| forward | triton | 0.500 [0.450, 0.550] | 8.0x | 1500 | 45% | 50% | 1.0 MiB | 1.2 |  |" in text
    assert "| forward | compiled-reference | error |" in text
    assert "| bench-kernels | **FAILED** | 13 | 3 rows; errors: compiled-reference |" in text
    # model: tokens/s against hf, eval-loss difference, the skipped provider and the length search
    assert "| convbert:triton | 100.0 [95.0, 105.0] | 163,840 | 2.00x | 4.0 GiB | - | 2.0 | +0.0004 |  |" in text
    assert "| hf | 1024 | 2048 | OutOfMemoryError | 70.0 GiB | CUDA out of memory. |" in text
    assert "skipped for time: hf-compiled" in text and "| bench-model | **PASSED** |" in text
    assert "Left out of the length search: convbert:triton, hf-compiled" in text
    # ncu: both kernels, time in us, bandwidth in GB/s, spills
    assert "| bf16 | _fwd_kernel | (512, 1, 1) | (128, 1, 1) | 41.2 | 2,512 |" in text
    assert "| ncu | **FAILED** |" in text and "not profiled: _bwd_window_kernel" in text
    assert text.index("## setup") < text.index("## tests") < text.index("## sanitize") < text.index("## ncu")


def test_summary_marks_stages_not_run_and_dry_run_skips(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "sanitize").mkdir(parents=True)
    (work / "ncu").mkdir()
    out.mkdir()
    smoke = work / "sanitize" / "smoke.txt"
    smoke.write_text("native ... ok\ngpu_sanitize_ops: ok\n")
    (work / "sanitize" / "runs.tsv").write_text(f"cpu-smoke\tnative\t0\t0\t{smoke}\n")
    (work / "ncu" / "runs.tsv").write_text("cpu-smoke\t0\t0\t\n")
    (work / "stages.tsv").write_text("sanitize\t0\t5\t\nncu\t0\t3\t\nbench-model\tnotime\t0\tnot run: 20 s left\n")
    rc, text = gpu_summary.assemble(work, out, ["sanitize", "bench-model", "ncu"], dry_run=True, info={})
    assert "| sanitize | **SKIPPED** | 5 | no GPU |" in text
    assert "| ncu | **SKIPPED** | 3 | no GPU |" in text
    assert "| bench-model | **NOT RUN** | 0 | not run: 20 s left |" in text
    assert "DRY RUN on CPU" in text
    assert rc == 1  # a stage that could not run fails the command
    (work / "stages.tsv").write_text("sanitize\t0\t5\t\nncu\t0\t3\t\n")
    rc, _ = gpu_summary.assemble(work, out, ["sanitize", "ncu"], dry_run=True, info={})
    assert rc == 0


# ---- parsers ------------------------------------------------------------------------------------


_CRASH_LOG = """\
..s.sFatal Python error: Segmentation fault

Thread 0x00007f1a3d7d96c0 (most recent call first):
  <no Python frame>

Current thread 0x00007f1d826c3140 (most recent call first):
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/_ops.py", line 872 in redispatch
  File "/work/main/tests/test_backends.py", line 537 in test_fakes_refuse_what_the_ops_refuse
  File "/opt/torch/.venv/lib/python3.12/site-packages/_pytest/python.py", line 167 in pytest_pyfunc_call

Extension modules: numpy._core._multiarray_umath, torch._C (total: 2)
.[gw4] node down: Not properly terminated
F....Fatal Python error: Aborted

Current thread 0x00007f1d826c3141 (most recent call first):
  File "/work/main/tests/test_native.py", line 244 in test_bad_padding_l_is_refused_by_the_raw_ops
[gw6] node down: Not properly terminated
F....
FAILED tests/test_backends.py::test_fakes_refuse_what_the_ops_refuse[3-native]
worker 'gw4' crashed while running 'tests/test_backends.py::test_fakes_refuse_what_the_ops_refuse[3-native]'
worker 'gw7' crashed while running 'tests/test_other.py::test_elsewhere'
"""


def test_worker_crashes_name_each_lost_test():
    """A segfaulting xdist worker leaves no junit entry: the summary finds it in the run's output."""
    assert gpu_summary.worker_crashes(_CRASH_LOG) == [
        ("tests/test_backends.py::test_fakes_refuse_what_the_ops_refuse[3-native]", "Segmentation fault"),
        ("tests/test_native.py::test_bad_padding_l_is_refused_by_the_raw_ops (line 244)", "Aborted"),
        ("tests/test_other.py::test_elsewhere", "worker crashed"),
    ]
    assert gpu_summary.worker_crashes("....F.. 3 passed\n") == []


def test_crashed_command_lists_tests_to_rerun(tmp_path, capsys):
    """gpu_check.sh reruns each crashed test alone: the node ids come from `gpu_summary crashed`."""
    (tmp_path / "a.out").write_text(_CRASH_LOG)
    (tmp_path / "b.out").write_text(_CRASH_LOG)  # the same crashes twice: listed once
    assert gpu_summary.main(["crashed", str(tmp_path / "a.out"), str(tmp_path / "b.out"),
                             str(tmp_path / "missing.out")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "tests/test_backends.py::test_fakes_refuse_what_the_ops_refuse[3-native]",
        "tests/test_native.py::test_bad_padding_l_is_refused_by_the_raw_ops",
        "tests/test_other.py::test_elsewhere",
    ]


def test_summary_counts_crashed_workers_as_failures(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "tests").mkdir(parents=True)
    out.mkdir()
    (work / "stages.tsv").write_text("tests\t0\t60\t\n")
    _write_junit(work / "tests" / "gpu-tests.xml", passed=4, failed=[], skipped=0)
    (work / "tests" / "gpu-tests.out").write_text(_CRASH_LOG)
    # the second run was killed by its time limit: no junit report, but its crash still counts
    (work / "tests" / "other-tests.out").write_text(_CRASH_LOG.split("F....Fatal")[0])
    (work / "tests" / "runs.tsv").write_text(f"gpu-tests\t{work}/tests/gpu-tests.xml\t0\t50\n"
                                             f"other-tests\t{work}/tests/other-tests.xml\t124\t10\n")
    rc, text = gpu_summary.assemble(work, out, ["tests"], dry_run=False, info={})
    assert rc == 1
    assert "| tests | **FAILED** | 60 | 4 passed, 0 failed, 0 errors, 4 crashed, 0 skipped;" in text
    assert ("| gpu-tests | tests/test_backends.py::test_fakes_refuse_what_the_ops_refuse[3-native] | crashed | "
            "Segmentation fault |") in text
    assert ("| other-tests | tests/test_backends.py::test_fakes_refuse_what_the_ops_refuse (line 537) | crashed | "
            "Segmentation fault |") in text


def test_parse_ncu_csv_long_format():
    launches = gpu_summary.parse_ncu_csv(NCU_LONG)
    assert [e["kernel"] for e in launches] == ["_fwd_kernel", "window_forward_kernel"]
    fwd, native = launches
    assert fwd["grid"] == "(512, 1, 1)" and fwd["block"] == "(128, 1, 1)"
    assert fwd["metrics"]["launch__registers_per_thread"] == (128.0, "register/thread")
    value, unit = fwd["metrics"]["dram__bytes.sum.per_second"]
    assert value == pytest.approx(2512345678901.5)  # thousands separators dropped
    assert gpu_summary._convert("dram__bytes.sum.per_second", value, unit) == pytest.approx(2512.3456789015)
    value, unit = native["metrics"]["dram__bytes.sum.per_second"]
    assert gpu_summary._convert("dram__bytes.sum.per_second", value, unit) == pytest.approx(1900.25)
    assert gpu_summary._convert("gpu__time_duration.sum", *fwd["metrics"]["gpu__time_duration.sum"]) == pytest.approx(41.216)
    assert native["metrics"]["l1tex__t_sectors_pipe_lsu_mem_local_op_st.sum"][0] == 1024
    table = gpu_summary.ncu_table({"bf16": launches})
    assert "| bf16 | window_forward_kernel | (1024, 1, 1) | (256, 1, 1) | 55.5 | 1,900 |" in table
    assert table.count("\n") == 3  # header, rule, two launches


def test_parse_ncu_csv_wide_format_and_garbage():
    (launch,) = gpu_summary.parse_ncu_csv(NCU_WIDE)
    assert launch["kernel"] == "_bwd_proj_kernel"
    value, unit = launch["metrics"]["dram__bytes.sum.per_second"]
    assert unit == "Tbyte/second" and gpu_summary._convert("dram__bytes.sum.per_second", value, unit) == 1500.0
    assert launch["metrics"]["launch__registers_per_thread"][0] == 96
    assert gpu_summary.parse_ncu_csv("==PROF== ERR_NVGPUCTRPERM\nno csv here\n") == []


def test_parse_sanitizer_log():
    text = ("========= Invalid __global__ read of size 4 bytes\n"
            "=========     at weight_grad_partial_kernel<float, float>(...)+0x1a0\n"
            "=========     by thread (3,0,0) in block (1,0,0)\n"
            "=========     at at::native::vectorized_elementwise_kernel<4>+0x20\n"
            "========= ERROR SUMMARY: 1,024 errors\n")
    parsed = gpu_summary.parse_sanitizer_log(text)
    assert parsed["errors"] == 1024 and not parsed["completed"]
    assert parsed["kernels"] == ["weight_grad_partial_kernel", "vectorized_elementwise_kernel"]
    assert gpu_summary.parse_sanitizer_log("killed")["errors"] is None


def test_parse_racecheck_summary():
    """racecheck's summary line differs from the other tools' (as printed on the H200, 2026-11-26)."""
    clean = "gpu_sanitize_ops: ok\n========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n"
    assert gpu_summary.parse_sanitizer_log(clean)["errors"] == 0
    warned = "========= RACECHECK SUMMARY: 1 hazard displayed (0 errors, 1 warning)\n"
    assert gpu_summary.parse_sanitizer_log(warned)["errors"] == 1


def test_junit_classname_to_nodeid():
    assert gpu_summary._nodeid("tests.test_ops", "test_a[1]") == "tests/test_ops.py::test_a[1]"
    assert gpu_summary._nodeid("tests.test_ops.TestX", "test_b") == "tests/test_ops.py::TestX::test_b"
    assert gpu_summary._nodeid("", "test_c") == "test_c"


def test_short_kernel_name():
    assert gpu_summary.short_kernel_name("void window_backward_kernel<float, float, float>(const float *)") == \
        "window_backward_kernel"
    assert gpu_summary.short_kernel_name("_bwd_window_kernel") == "_bwd_window_kernel"


# ---- measurement helpers ------------------------------------------------------------------------


def test_copy_bandwidth_on_cpu_is_positive():
    gbps = common.copy_bandwidth_gbps("cpu", nbytes=4 * 2**20)
    assert isinstance(gbps, float) and 0.01 < gbps < 10_000


def test_kernel_rows_carry_copy_fraction_and_new_provider():
    assert "compiled-reference" in bench_kernels.providers(torch.device("cpu"))
    rows = bench_kernels.main(["--device", "cpu", "--seq-lens", "16", "--batches", "1", "--dims", "8,8,2,3",
                               "--providers", "eager", "--modes", "forward", "--repeats", "2", "--min-time", "0",
                               "--copy-gbps", "10", "--no-save"])
    (row,) = rows
    assert row["copy_gbps"] == 10
    assert row["fraction_of_copy"] == pytest.approx(row["effective_gbps"] / 10)


def test_model_provider_names():  # (no 'compile' in the name: -k compile would pick it)
    names = bench_model.provider_names(torch.device("cpu"))
    assert "convbert-compiled:eager" in names and "hf-compiled" in names
    assert all(not bench_model.is_compiled(n) for n in bench_model.provider_names(torch.device("cpu"), compiled=False))
    assert bench_model.is_compiled("convbert-compiled:native") and not bench_model.is_compiled("convbert:native")


def test_longest_trainable_stops_at_the_first_oom():
    tried = []

    def try_length(length):
        tried.append(length)
        if length >= 4096:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")
        return {"step_ms": length / 10}

    result = bench_model.longest_trainable(try_length, [8192, 512, 1024, 2048, 4096])
    assert tried == [512, 1024, 2048, 4096]  # shortest first, nothing after the failure
    assert result["max_len"] == 2048 and result["failed_len"] == 4096
    assert result["failed_error_type"] == "OutOfMemoryError" and result["oom"] is True
    assert result["failed_error"].startswith("CUDA out of memory") and result["info"] == {"step_ms": 204.8}

    def other_error(length):
        raise ValueError("position ids past max_position_embeddings")

    result = bench_model.longest_trainable(other_error, [512])
    assert result["max_len"] is None and result["failed_len"] == 512 and result["oom"] is False
    assert result["failed_error_type"] == "ValueError"
    assert bench_model.longest_trainable(lambda length: {}, [64, 32]) ["max_len"] == 64


# ---- the script's options -----------------------------------------------------------------------

needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils")


def _run_script(*args, **env):
    full_env = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=120)


@needs_bash
def test_script_refuses_unknown_stages_and_options(tmp_path):
    out = tmp_path / "out"
    proc = _run_script("--stages", "tests,bogus", str(out))
    assert proc.returncode == 2 and "unknown stage 'bogus'" in proc.stderr
    assert "setup,tests,sanitize,bench-kernels,bench-model,ncu" in proc.stderr
    proc = _run_script("--verbose", str(out))
    assert proc.returncode == 2 and "unknown option '--verbose'" in proc.stderr
    proc = _run_script("--stages", "tests")
    assert proc.returncode == 2 and "missing OUTDIR" in proc.stderr
    assert not out.exists()  # refused before touching anything


@needs_bash
def test_script_refuses_to_run_without_cuda_unless_dry_run(tmp_path):
    out = tmp_path / "out"
    proc = _run_script("--stages", "setup", str(out), CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 3
    assert "no CUDA device" in proc.stderr and "--dry-run" in proc.stderr
    assert not out.exists()


@needs_bash
def test_script_help():
    proc = _run_script("--help")
    assert proc.returncode == 0
    assert "--stages" in proc.stdout and "Recommended split" in proc.stdout


def test_profile_top_names_the_longest_work_first():
    """common.profile_top: the operators of one call by self time, longest first, at most ``top``."""
    a, b = torch.randn(256, 256), torch.randn(256, 256)

    def work():
        for _ in range(4):
            torch.mm(a, b)
        return a + b

    entries, total_ms = common.profile_top(work, "cpu", top=3)
    assert 1 <= len(entries) <= 3
    assert total_ms >= sum(e["self_ms"] for e in entries) > 0
    assert entries[0]["name"] == "aten::mm" and entries[0]["calls"] == 4, entries
    assert [e["self_ms"] for e in entries] == sorted((e["self_ms"] for e in entries), reverse=True)
    assert all(e["self_ms"] > 0 for e in entries)
    table = gpu_summary.profile_table(entries)
    assert "aten::mm" in table and "share of these" in table


def test_bench_model_profile_keeps_each_providers_top_in_its_row(capsys):
    pytest.importorskip("transformers")
    rows = bench_model.main(["--device", "cpu", "--size", "tiny", "--batch", "2", "--seq-len", "16", "--dtype", "fp32",
                             "--warmup", "0", "--repeats", "1", "--providers", "convbert:eager", "--profile", "5",
                             "--no-save"])
    assert len(rows) == 1 and "error" not in rows[0], rows
    top = rows[0]["profile_top"]
    assert 1 <= len(top) <= 5 and all({"name", "calls", "self_ms"} <= set(e) for e in top)
    assert rows[0]["profile_total_ms"] >= sum(e["self_ms"] for e in top)
    out = capsys.readouterr().out
    assert "one step's longest operators" in out and "Summed operator self time of the profiled step" in out


def test_profile_busy_line_sets_kernel_time_against_the_step():
    row = dict(device_type="cuda", median_ms=80.0, profile_total_ms=60.0)
    assert gpu_summary.profile_busy_line(row) == (
        "Summed kernel self time of the profiled step: 60.0 ms, 75% of the median step (80.0 ms).")
    assert gpu_summary.profile_busy_line(dict(device_type="cuda", median_ms=80.0)) == ""
