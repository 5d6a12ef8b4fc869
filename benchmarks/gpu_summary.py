"""The Python side of ``scripts/gpu_check.sh``: environment record, parsers and ``summary.md``.

The shell script runs the stages and leaves their raw results in a work folder; this module turns
them into markdown tables and decides each stage's status, so the bash stays thin. It imports only
the standard library at module level (torch only inside :func:`environment_info`), so the summary
can still be written when torch itself is what broke.

Work folder layout (``--work``; written by gpu_check.sh)::

    stages.tsv               stage, shell status (0 = ran, 1 = failed, skip, notime), seconds, note
    setup/native.json        what ``native-check`` found (backend load error, CUDA kernels, ...)
    tests/runs.tsv           label, junit xml, exit code, seconds (label "suite" or "compile <nodeid>")
    sanitize/runs.tsv        tool, backend, exit code, seconds, log file
    ncu/runs.tsv             label, exit code, seconds, csv file
    (kernels.jsonl and model.jsonl are read from the output folder)

Subcommands (``python -m benchmarks.gpu_summary <cmd> -h``): ``commit``, ``native-check``,
``assemble``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STAGES = ("setup", "tests", "sanitize", "bench-kernels", "bench-model", "ncu")
TRITON_KERNELS = ("_fwd_kernel", "_bwd_window_kernel", "_bwd_proj_kernel")
NATIVE_KERNELS = ("window_forward_kernel", "window_backward_kernel", "weight_grad_partial_kernel")
NATIVE_ALL_KERNELS = NATIVE_KERNELS + ("sum_partials_kernel",)
SANITIZE_DONE = "gpu_sanitize_ops: ok"  # printed by scripts/gpu_sanitize_ops.py when every op ran


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def md_table(header, rows) -> str:
    """A markdown table; ``|`` inside cells is escaped so a message cannot break the layout."""

    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def read_jsonl(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a killed process
                continue
    return rows


def _read_text(path) -> str:
    """A log's text, or "" when there is none (an older run, or a stage that did not start)."""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def read_tsv(path) -> list[list[str]]:
    path = Path(path)
    if not path.exists():
        return []
    return [line.split("\t") for line in path.read_text().splitlines() if line.strip()]


def _run(cmd, timeout=20) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# ----------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------


def git_commit(root: Path = ROOT) -> tuple[str, str]:
    """(commit, where it came from). ``$CONVBERT_COMMIT`` wins (the GPU machine gets the tree
    without git history); then ``git``; then ``.git/HEAD`` read as files (git itself missing);
    else "unknown"."""
    if os.environ.get("CONVBERT_COMMIT"):  # gpu_check.sh exports what it found, and where, once
        return os.environ["CONVBERT_COMMIT"], os.environ.get("CONVBERT_COMMIT_SOURCE", "CONVBERT_COMMIT")
    out = _run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"])
    if out:
        dirty = _run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"])
        return out + ("-dirty" if dirty else ""), "git"
    head = root / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            name = ref[5:]
            ref_file = root / ".git" / name
            if ref_file.exists():
                return ref_file.read_text().strip()[:12], ".git files"
            packed = root / ".git" / "packed-refs"
            for line in packed.read_text().splitlines() if packed.exists() else []:
                if line.endswith(" " + name):
                    return line.split()[0][:12], ".git files"
        elif re.fullmatch(r"[0-9a-f]{40}", ref):
            return ref[:12], ".git files"
    except OSError:
        pass
    return "unknown", "none"


def environment_info() -> dict:
    """Device, driver and versions for the summary's header (every failure is just 'unknown')."""
    info: dict = {"python": sys.version.split()[0], "executable": sys.executable}
    info["commit"], info["commit_source"] = git_commit()
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    if smi:
        info["nvidia_smi"] = smi.splitlines()[0]
        parts = [p.strip() for p in info["nvidia_smi"].split(",")]
        if len(parts) >= 2:
            info["driver"] = parts[1]
    nvcc = _run(["nvcc", "--version"])
    if nvcc:
        info["nvcc"] = nvcc.splitlines()[-1].strip()
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["device"] = props.name
            info["capability"] = "%d.%d" % (props.major, props.minor)
            info["sms"] = props.multi_processor_count
            info["gpu_memory"] = fmt_bytes(props.total_memory)
        else:
            info["device"] = "CPU only (no CUDA device)"
    except Exception as exc:  # noqa: BLE001
        info["torch"] = f"not importable: {type(exc).__name__}: {exc}"[:200]
    for module in ("triton", "transformers"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001
            info[module] = None
    return info


def header_lines(info: dict) -> list[str]:
    device = info.get("device", "unknown")
    if info.get("capability"):
        device += f" (sm {info['capability']}, {info.get('sms')} SMs, {info.get('gpu_memory')})"
    return [
        f"- device: {device}; driver {info.get('driver', 'unknown')}",
        f"- torch {info.get('torch')} (CUDA {info.get('torch_cuda')}), triton {info.get('triton')}, "
        f"transformers {info.get('transformers')}, python {info.get('python')}; nvcc: {info.get('nvcc', 'not found')}",
        f"- commit {info.get('commit')} (from {info.get('commit_source')})",
    ]


# ----------------------------------------------------------------------------------------------
# native-check: the setup stage's question "is the extension built and are its CUDA kernels in?"
# ----------------------------------------------------------------------------------------------


def native_check(expect_cuda: bool) -> tuple[bool, dict]:
    """(ok, facts): the native backend loads, and with ``expect_cuda`` its CUDA kernels are
    registered and usable on the GPU."""
    facts: dict = {}
    try:
        import torch

        import convbert_kernels as ck

        facts["load_error"] = ck.backend_load_error("native")
        facts["triton_load_error"] = ck.backend_load_error("triton")
        if facts["load_error"] is None:
            from convbert_kernels import native

            facts["how_loaded"] = native.HOW_LOADED
            facts["cuda_kernels_registered"] = bool(native.HAS_CUDA_KERNELS)
            from convbert_kernels._link import links_shared_libstdcxx

            facts["shared_libstdcxx"] = links_shared_libstdcxx(native.library_paths())
        facts["backends_cpu"] = ck.available_backends("cpu")
        if torch.cuda.is_available():
            facts["backends_cuda"] = ck.available_backends("cuda")
    except Exception as exc:  # noqa: BLE001
        facts["error"] = f"{type(exc).__name__}: {exc}"[:500]
    # a static libstdc++ in the extension crashed its error messages on the H200 machine (_link.py)
    ok = "error" not in facts and facts.get("load_error") is None and facts.get("shared_libstdcxx") is not False
    if expect_cuda:
        ok = ok and facts.get("cuda_kernels_registered") is True and "native" in facts.get("backends_cuda", [])
    facts["ok"] = ok
    return ok, facts


def setup_section(work: Path, dry_run: bool):
    facts = {}
    path = work / "setup" / "native.json"
    if path.exists():
        facts = json.loads(path.read_text())
    if not facts:
        return "FAILED", "no native-check result", "(the native check did not run)"
    rows = [
        ["native backend load error", facts.get("load_error") or "none"],
        ["native loaded as", facts.get("how_loaded", "-")],
        ["native CUDA kernels registered", facts.get("cuda_kernels_registered", "-")],
        ["native links the shared libstdc++", facts.get("shared_libstdcxx", "-")],
        ["backends on cuda", ", ".join(facts.get("backends_cuda", [])) or "-"],
        ["backends on cpu", ", ".join(facts.get("backends_cpu", [])) or "-"],
        ["triton load error", facts.get("triton_load_error") or "none"],
    ]
    for key in ("build", "build_seconds", "torch_cuda_arch_list", "max_jobs"):
        if key in facts:
            rows.append([key.replace("_", " "), facts[key]])
    if facts.get("error"):
        rows.append(["error", facts["error"]])
    status = "PASSED" if facts.get("ok") else "FAILED"
    if facts.get("ok"):
        note = "native CUDA kernels registered" if facts.get("cuda_kernels_registered") else "native loads"
        if dry_run and not facts.get("cuda_kernels_registered"):
            note += " (CPU only)"
    else:
        note = "native backend missing or without CUDA kernels"
        if facts.get("shared_libstdcxx") is False:
            note = "the native extension links a static libstdc++ (its error messages crash): see convbert_kernels/_link.py"
    return status, note, md_table(["check", "result"], rows)


# ----------------------------------------------------------------------------------------------
# tests: junit xml -> counts and failures
# ----------------------------------------------------------------------------------------------


def _nodeid(classname: str, name: str) -> str:
    """pytest's junit ``classname`` (``tests.test_ops.TestX``) and ``name`` back to a node id
    (``tests/test_ops.py::TestX::name``): the module is the first dotted part named like a test
    module (``test_*`` or ``*_test``), else the last."""
    parts = classname.split(".") if classname else []
    module = next((i for i, p in enumerate(parts) if p.startswith("test_") or p.endswith("_test")), len(parts) - 1)
    path = "/".join(parts[: module + 1]) + ".py" if parts else ""
    return "::".join([p for p in [path, *parts[module + 1:], name] if p])


def parse_junit(path) -> dict | None:
    """Counts (passed, failed, errors, skipped, total) and failing test ids of a pytest junit
    report, or None when the file is missing or unreadable (pytest killed before writing it)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = dict(passed=0, failed=0, errors=0, skipped=0, total=0)
    failures = []
    for suite in suites:
        for case in suite.iter("testcase"):
            counts["total"] += 1
            name = _nodeid(case.get("classname", ""), case.get("name", ""))
            failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
            if failure is not None:
                counts["failed"] += 1
                failures.append((name, "failed", (failure.get("message") or "").splitlines()[:1]))
            elif error is not None:
                counts["errors"] += 1
                failures.append((name, "error", (error.get("message") or "").splitlines()[:1]))
            elif skipped is not None:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
        # a collection error has no testcase but counts in the suite's "errors" attribute
        extra = int(suite.get("errors", 0) or 0) - sum(1 for f in failures if f[1] == "error")
        if extra > 0 and not list(suite.iter("testcase")):
            counts["errors"] += extra
    counts["failures"] = [(n, kind, (msg[0] if msg else "")[:160]) for n, kind, msg in failures]
    return counts


_FATAL = re.compile(r"Fatal Python error: ([^\n]+)")
_TEST_FRAME = re.compile(r'File "(?:[^"]*/)?(tests/[^"]+\.py)", line (\d+) in (test_\w+)')
_XDIST_CRASH = re.compile(r"worker '?(gw\d+)'? crashed while running '?([^'\s]+)'?")


def worker_crashes(text: str) -> list[tuple[str, str]]:
    """(test, what) for each process a pytest run lost to a fatal signal: pytest-xdist replaces a
    worker killed by, say, a segmentation fault and goes on, and the test it was running is in no
    junit report. The test is the innermost test frame of the faulthandler traceback that follows
    "Fatal Python error", as the node id xdist gives it ("crashed while running", printed when the
    run ends) where there is one for that function."""
    named = [m.group(2) for m in _XDIST_CRASH.finditer(text)]
    crashes = []
    fatals = list(_FATAL.finditer(text))
    for i, fatal in enumerate(fatals):
        end = fatals[i + 1].start() if i + 1 < len(fatals) else len(text)
        frame = _TEST_FRAME.search(text, fatal.end(), end)
        test = "unknown test"
        if frame:
            path, line, function = frame.groups()
            test = next((n for n in named if n.split("[")[0] == f"{path}::{function}"), f"{path}::{function} (line {line})")
            if test in named:
                named.remove(test)
        crashes.append((test, fatal.group(1).strip()))
    return crashes + [(test, "worker crashed") for test in named]


def tests_section(work: Path, dry_run: bool):
    runs = read_tsv(work / "tests" / "runs.tsv")
    if not runs:
        return "FAILED", "pytest did not run", "(no pytest run recorded)"
    table, failures, problems = [], [], []
    # of the suite run(s), not the compile tests alone; "crashed": workers lost to a fatal signal
    totals = dict(passed=0, failed=0, errors=0, skipped=0, crashed=0)
    compile_runs = compile_ok = compile_bad = 0
    for label, xml, rc, seconds in (r + [""] * (4 - len(r)) for r in runs):
        counts = parse_junit(xml)
        is_compile = label.startswith("compile ")
        shown = "torch.compile, own process: " + label.split(" ", 1)[1] if is_compile else label
        if label == "collect":
            if rc != "0":
                problems.append("collecting the torch.compile tests failed")
            continue
        if counts is None:
            if not is_compile:
                crashes = worker_crashes(_read_text(work / "tests" / f"{label}.out"))
                failures += [(label, test, "crashed", what) for test, what in crashes]
                totals["crashed"] += len(crashes)
            why = ("not run: no time left" if rc == "notime" else
                   f"no junit report (exit {rc}{', timed out' if rc in ('124', '137') else ''})")
            problems.append(f"{label}: {why}")
            table.append([shown, "-", "-", "-", "-", rc, seconds])
            if is_compile:
                compile_runs += 1
            continue
        failures += [(label,) + f for f in counts["failures"]]
        if not is_compile:
            crashes = worker_crashes(_read_text(work / "tests" / f"{label}.out"))
            failures += [(label, test, "crashed", what) for test, what in crashes]
            totals["crashed"] += len(crashes)
        if is_compile:
            compile_runs += 1
            compile_ok += int(rc == "0")
            compile_bad += counts["failed"] + counts["errors"]
        else:
            for key in ("passed", "failed", "errors", "skipped"):
                totals[key] += counts[key]
        if rc not in ("0",) and not counts["failures"]:
            problems.append(f"{label}: exit {rc}")
        table.append([shown, counts["passed"], counts["failed"], counts["errors"], counts["skipped"], rc, seconds])
    body = md_table(["pytest run", "passed", "failed", "errors", "skipped", "exit", "seconds"], table)
    if failures:
        body += "\n\n**Failures**\n\n" + md_table(["run", "test", "kind", "message"],
                                                  [[r, n, k, m] for r, n, k, m in failures[:60]])
        if len(failures) > 60:
            body += f"\n\n... and {len(failures) - 60} more (tests.log)"
    if problems:
        body += "\n\n" + "\n".join(f"- {p}" for p in problems)
    if dry_run:
        body += ("\n\nDry run: only a subset on CPU (Triton through the interpreter); "
                 "the whole suite runs on the GPU machine and in CI.")
    bad = totals["failed"] + totals["errors"] + totals["crashed"] + compile_bad
    status = "FAILED" if bad or problems else "PASSED"
    crashed = f", {totals['crashed']} crashed" if totals["crashed"] else ""
    note = (f"{totals['passed']} passed, {totals['failed']} failed, {totals['errors']} errors{crashed}, "
            f"{totals['skipped']} skipped; compile tests alone: {compile_ok}/{compile_runs} ok")
    return status, note, body


# ----------------------------------------------------------------------------------------------
# sanitize: compute-sanitizer logs
# ----------------------------------------------------------------------------------------------

_KERNEL_IN_LINE = re.compile(r"\b([A-Za-z_]\w*kernel\w*)")


def parse_sanitizer_log(text: str) -> dict:
    """Error count, whether the op script finished, and the kernel names mentioned in the reports
    (to tell this project's kernels from PyTorch's). memcheck, synccheck and initcheck end with
    ``ERROR SUMMARY: N errors``; racecheck with ``RACECHECK SUMMARY: H hazards displayed
    (E errors, W warnings)``, where a hazard of either severity counts."""
    m = re.findall(r"ERROR SUMMARY:\s*([\d,]+)\s+error", text)
    race = re.findall(r"RACECHECK SUMMARY:\s*([\d,]+)\s+hazard", text)
    counts = m or race
    errors = int(counts[-1].replace(",", "")) if counts else None
    kernels = []
    for line in text.splitlines():
        if line.startswith("=========") and "SUMMARY" not in line:
            for name in _KERNEL_IN_LINE.findall(line):
                if name not in kernels:
                    kernels.append(name)
    return dict(errors=errors, completed=SANITIZE_DONE in text, kernels=kernels,
                unsupported=("Device not supported" in text or "not supported on this" in text))


def sanitize_section(work: Path, dry_run: bool):
    runs = read_tsv(work / "sanitize" / "runs.tsv")
    if not runs:
        return "FAILED", "nothing ran", "(no sanitizer run recorded)"
    table, bad, smoke = [], 0, []
    for tool, backend, rc, seconds, log in (r + [""] * (5 - len(r)) for r in runs):
        text = Path(log).read_text(errors="replace") if log and Path(log).exists() else ""
        parsed = parse_sanitizer_log(text)
        if tool == "cpu-smoke":  # dry run: the op script on CPU, no sanitizer
            ok = rc == "0" and parsed["completed"]
            smoke.append(f"{backend}: {'ok' if ok else f'FAILED (exit {rc})'}")
            bad += int(not ok)
            continue
        ok = rc == "0" and parsed["errors"] == 0 and parsed["completed"]
        bad += int(not ok)
        if ok:
            result = "pass"
        elif rc in ("124", "137"):
            result = "FAIL (timed out)"
        elif not parsed["completed"]:
            result = f"FAIL (the op script did not finish: exit {rc})"
        else:
            result = "FAIL"
        if parsed["unsupported"]:
            result += " (sanitizer: device not supported)"
        ours = [k for k in parsed["kernels"] if k in NATIVE_ALL_KERNELS + TRITON_KERNELS]
        others = [k for k in parsed["kernels"] if k not in ours]
        table.append([tool, backend, "-" if parsed["errors"] is None else parsed["errors"], result,
                      ", ".join(ours) or "-", ", ".join(others[:4]) or "-", rc, seconds])
    if dry_run and not table:
        body = ("Skipped: no GPU (compute-sanitizer needs one). The op script "
                "(scripts/gpu_sanitize_ops.py) ran on CPU instead: " + "; ".join(smoke) + ".")
        return ("FAILED" if bad else "SKIPPED"), "no GPU" + (f"; CPU smoke run failed" if bad else ""), body
    body = md_table(["tool", "backend", "errors", "result", "our kernels in reports", "other kernels",
                     "exit", "seconds"], table)
    body += ("\n\nEvery native CUDA op forward and backward (span_dynamic_conv and dynamic_conv, with and "
             "without padding_mask, fp32 and bf16) at (B,L,A,C,n,K) = (2,37,20,21,7,31) and (3,70,24,48,2,9); "
             "the Triton kernels under memcheck only.")
    status = "FAILED" if bad else "PASSED"
    return status, f"{len(table) - bad}/{len(table)} sanitizer runs clean", body


# ----------------------------------------------------------------------------------------------
# bench-kernels / bench-model
# ----------------------------------------------------------------------------------------------

KERNEL_PROVIDERS = ("reference", "compiled-reference", "eager", "compiled-eager", "triton", "native")


def _provider_rank(name, order):
    return order.index(name) if name in order else len(order)


def kernels_table(rows: list[dict]) -> str:
    """One table per (shape, dtype): per mode and provider the median time, speed-up over the
    reference, achieved GB/s over the op's memory floor and its fraction of the data-sheet DRAM
    bandwidth and of the measured device-to-device copy."""
    rows = [r for r in rows if r.get("bench") == "kernel"]
    if not rows:
        return "(no kernel rows)"
    latest = {}
    for r in rows:  # the last row of a measurement wins (files are appended)
        latest[(r.get("dtype"), r.get("batch"), r.get("seq_len"), r.get("A"), r.get("C"), r.get("heads"),
                r.get("K"), r.get("mode"), r.get("provider"))] = r
    groups: dict = {}
    for key, r in latest.items():
        groups.setdefault(key[:7], []).append(r)
    out = []
    for (dtype, B, L, A, C, n, K), rs in sorted(groups.items(), key=lambda kv: [str(x) for x in kv[0]]):
        copy = next((r["copy_gbps"] for r in rs if r.get("copy_gbps")), None)
        peak = next((r["peak_gbps"] for r in rs if r.get("peak_gbps")), None)
        lines = []
        for mode in ("forward", "backward", "full"):
            mode_rows = sorted((r for r in rs if r.get("mode") == mode),
                               key=lambda r: _provider_rank(r.get("provider"), KERNEL_PROVIDERS))
            base = next((r for r in mode_rows if r.get("provider") == "reference" and "median_ms" in r), None)
            for r in mode_rows:
                if "error" in r or "median_ms" not in r:
                    lines.append([mode, r.get("provider"), "error", "-", "-", "-", "-", "-", "-",
                                  str(r.get("error", "no timing"))[:90]])
                    continue
                speed = f"{base['median_ms'] / r['median_ms']:.1f}x" if base else "-"
                lines.append([
                    mode, r["provider"], f"{r['median_ms']:.3f} [{r['p20_ms']:.3f}, {r['p80_ms']:.3f}]", speed,
                    f"{r.get('effective_gbps', 0):.0f}", _pct(r.get("fraction_of_floor")),
                    _pct(r.get("fraction_of_copy")), fmt_bytes(r.get("peak_bytes")),
                    f"{r.get('first_call_ms', 0) / 1e3:.1f}", ""])
        device = rs[0].get("device", "?")
        title = (f"span_dynamic_conv on {device}, B={B} L={L} A={A} C={C} n={n} K={K}, {dtype}; "
                 f"copy bandwidth {copy:.0f} GB/s" if copy else f"span_dynamic_conv on {device}, B={B} L={L} "
                 f"A={A} C={C} n={n} K={K}, {dtype}")
        if peak:
            title += f", data-sheet DRAM {peak:.0f} GB/s"
        out.append(f"**{title}**\n\n" + md_table(
            ["mode", "provider", "ms median [p20, p80]", "vs reference", "GB/s (floor bytes / time)",
             "of DRAM peak", "of copy", "peak memory", "first call s", "error"], lines))
    return "\n\n".join(out)


def kernels_section(work: Path, outdir: Path, dry_run: bool):
    rows = [r for r in read_jsonl(outdir / "kernels.jsonl") if r.get("bench") == "kernel"]
    if not rows:
        return "FAILED", "no kernel rows", "(bench_kernels wrote no rows: see bench.log)"
    errors = sorted({r["provider"] for r in rows if "error" in r})
    status = "FAILED" if errors else "PASSED"
    note = f"{len(rows)} rows" + (f"; errors: {', '.join(errors)}" if errors else "")
    body = kernels_table(rows)
    body += ("\n\nGB/s = the op's memory-traffic floor (bytes it must read and write once) / median time; "
             "'of copy' divides that by the bandwidth of a large device-to-device copy measured in the same run "
             "(bytes read + written; 1 GiB on a GPU); 'of DRAM peak' by the data-sheet bandwidth.")
    if dry_run:
        body += " Dry run: tiny CPU shapes, numbers mean nothing."
    return status, note, body


def model_table(rows: list[dict]) -> str:
    rows = [r for r in rows if r.get("bench") == "model"]
    if not rows:
        return "(no model rows)"
    groups: dict = {}
    for r in rows:
        groups.setdefault((r.get("device"), r.get("size"), r.get("batch"), r.get("seq_len"), r.get("dtype")), {})[
            r.get("provider")] = r
    out = []
    for (device, size, B, L, dtype), by in groups.items():
        base = by.get("hf") if by.get("hf") and "median_ms" in by["hf"] else None
        lines = []
        for name, r in by.items():
            if "median_ms" not in r:
                lines.append([name, "error", "-", "-", "-", "-", "-", "-", str(r.get("error", ""))[:100]])
                continue
            loss_diff = (f"{r['eval_loss'] - base['eval_loss']:+.4f}" if base and "eval_loss" in r
                         and "eval_loss" in base else "-")
            lines.append([name, f"{r['median_ms']:.1f} [{r['p20_ms']:.1f}, {r['p80_ms']:.1f}]",
                          f"{r['tokens_per_s']:,.0f}",
                          f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-",
                          fmt_bytes(r.get("peak_bytes")), fmt_bytes(r.get("peak_total_bytes")),
                          f"{r.get('first_step_ms', 0) / 1e3:.1f}", loss_diff, ""])
        title = f"ConvBertForMaskedLM training step (forward, backward, AdamW) on {device}: {size}, B={B}, L={L}, {dtype}"
        out.append(f"**{title}**\n\n" + md_table(
            ["provider", "step ms median [p20, p80]", "tokens/s", "vs hf", "peak memory of a step",
             "peak allocated", "first step s", "eval loss - hf", "error"], lines))
    return "\n\n".join(out)


def max_len_table(rows: list[dict]) -> str:
    """Per provider: the longest sequence length that trained, the first that did not and why."""
    rows = [r for r in rows if r.get("bench") == "model-max-len"]
    if not rows:
        return "(no max-length rows)"
    lines = []
    for r in rows:
        if "error" in r:
            lines.append([r.get("provider"), "-", "-", "-", "-", str(r["error"])[:100]])
            continue
        failed = r.get("failed_len")
        lines.append([r.get("provider"), r.get("max_len") if r.get("max_len") is not None else "none",
                      failed if failed is not None else "none failed", r.get("failed_error_type") or "-",
                      fmt_bytes(r.get("peak_total_bytes_at_max_len")), (r.get("failed_error") or "")[:100]])
    first = rows[0]
    title = (f"Longest trainable sequence length on {first.get('device')}: {first.get('size')}, "
             f"B={first.get('batch')}, {first.get('dtype')}, lengths tried {first.get('lengths')}")
    return f"**{title}**\n\n" + md_table(
        ["provider", "max L", "failed at L", "error type", "peak allocated at max L", "error at the failed L"], lines)


def profile_table(entries: list[dict]) -> str:
    """``common.profile_top``'s entries (bench_model ``--profile``) as a table, with each one's share
    of their sum."""
    total = sum(e["self_ms"] for e in entries) or 1.0
    return md_table(["operator / kernel", "calls", "self ms", "share of these"],
                    [[e["name"], e["calls"], f"{e['self_ms']:.3f}", f"{e['self_ms'] / total:.0%}"] for e in entries])


def profile_busy_line(row: dict) -> str:
    """One line setting a profiled step's summed kernel (or operator) time against its median wall
    time: well under 100% on CUDA means the GPU waits on the host."""
    total = row.get("profile_total_ms")
    if total is None:
        return ""
    what = "kernel" if row.get("device_type") == "cuda" else "operator"
    return (f"Summed {what} self time of the profiled step: {total:.1f} ms, "
            f"{total / row['median_ms']:.0%} of the median step ({row['median_ms']:.1f} ms).")


def model_section(work: Path, outdir: Path, dry_run: bool):
    rows = read_jsonl(outdir / "model.jsonl")
    timed = [r for r in rows if r.get("bench") == "model"]
    search = [r for r in rows if r.get("bench") == "model-max-len"]
    if not timed:
        return "FAILED", "no model rows", "(bench_model wrote no rows: see bench.log)"
    skipped = [r["provider"] for r in rows if str(r.get("error", "")).startswith("skipped")]
    errors = sorted({r["provider"] for r in rows if "error" in r and r["provider"] not in skipped})
    body = model_table(timed)
    if search:
        body += "\n\n" + max_len_table(search)
        searched = {r["provider"] for r in search}
        left_out = [r["provider"] for r in timed if r["provider"] not in searched]
        if left_out:
            body += ("\n\nLeft out of the length search: " + ", ".join(left_out) +
                     " (torch.compile would compile again for every length).")
    profiled = [r for r in timed if r.get("profile_top")]
    if profiled:
        # one table per provider (kernels differ by name across providers, so no shared columns)
        body += "\n\nOne step's longest kernels (CUDA) or operators (CPU) by self time, per provider (`--profile`):"
        for r in profiled:
            body += f"\n\n*{r['provider']}*\n\n" + profile_table(r["profile_top"])
            busy = profile_busy_line(r)
            body += f"\n\n{busy}" if busy else ""
    if dry_run:
        body += "\n\nDry run: the tiny model on CPU, a few providers; numbers mean nothing."
    status = "FAILED" if errors else "PASSED"
    note = f"{len(timed)} providers timed, {len(search)} searched"
    if errors:
        note += f"; errors: {', '.join(errors)}"
    if skipped:
        note += f"; skipped for time: {', '.join(skipped)}"
    return status, note, body


# ----------------------------------------------------------------------------------------------
# ncu: csv -> table
# ----------------------------------------------------------------------------------------------

NCU_METRICS = {
    # metric: (column title, kind)
    "gpu__time_duration.sum": ("time us", "time"),
    "dram__bytes.sum.per_second": ("DRAM GB/s", "rate"),
    "dram__throughput.avg.pct_of_peak_sustained_elapsed": ("DRAM % of peak", "pct"),
    "sm__warps_active.avg.pct_of_peak_sustained_active": ("achieved occupancy %", "pct"),
    "sm__maximum_warps_per_active_cycle_pct": ("theoretical occupancy %", "pct"),
    "launch__registers_per_thread": ("regs/thread", "int"),
    "launch__occupancy_limit_registers": ("block limit (regs)", "int"),
    "launch__occupancy_limit_shared_mem": ("block limit (smem)", "int"),
    "l1tex__t_sectors_pipe_lsu_mem_local_op_ld.sum": ("local ld sectors", "int"),
    "l1tex__t_sectors_pipe_lsu_mem_local_op_st.sum": ("local st sectors", "int"),
}

_RATE_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIME_SCALE = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3,
               "second": 1e6, "s": 1e6}


def _number(text: str) -> float | None:
    text = (text or "").strip().replace(",", "")
    try:
        return float(text)
    except ValueError:
        return None


def _convert(metric: str, value: float | None, unit: str):
    """A metric value in the table's unit: GB/s for byte rates, microseconds for durations."""
    if value is None:
        return None
    kind = NCU_METRICS.get(metric, ("", ""))[1]
    unit = (unit or "").strip()
    if kind == "rate":
        m = re.fullmatch(r"([KkMmGgTt]?)byte/s(?:econd)?", unit)
        return value * _RATE_SCALE[m.group(1).lower()] / 1e9 if m else value
    if kind == "time":
        return value * _TIME_SCALE.get(unit, 1.0)
    return value


def short_kernel_name(name: str) -> str:
    """``void window_forward_kernel<float, float>(const float*, ...)`` -> ``window_forward_kernel``."""
    name = re.sub(r"^\s*(void\s+)", "", name or "")
    return re.split(r"[<(\s]", name.strip(), maxsplit=1)[0] or name


def parse_ncu_csv(text: str) -> list[dict]:
    """Kernel launches from ``ncu --csv`` output, in launch order: ``{"id", "kernel", "block",
    "grid", "metrics": {metric: (value, unit)}}``.

    Reads the long format of the details page (one row per metric: "Metric Name", "Metric Unit",
    "Metric Value") and the wide format of ``--page raw`` (one column per metric, units in the
    row under the header). ncu's own ``==PROF==`` lines and the program's output are skipped;
    thousands separators in values are dropped."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"') or line.startswith('"Kernel Name"')), None)
    if start is None:
        return []
    body = [line for line in lines[start:] if line.startswith('"')]
    reader = list(csv.reader(io.StringIO("\n".join(body))))
    header, data = reader[0], reader[1:]
    col = {name: i for i, name in enumerate(header)}
    launches: dict[str, dict] = {}

    def launch(row, index):
        key = row[col["ID"]] if "ID" in col else str(index)
        if key not in launches:
            get = lambda name: row[col[name]] if name in col and col[name] < len(row) else ""  # noqa: E731
            launches[key] = dict(id=key, kernel=short_kernel_name(get("Kernel Name")), block=get("Block Size"),
                                 grid=get("Grid Size"), metrics={})
        return launches[key]

    if "Metric Name" in col:
        for index, row in enumerate(data):
            if len(row) < len(header):
                continue
            entry = launch(row, index)
            entry["metrics"][row[col["Metric Name"]]] = (_number(row[col["Metric Value"]]), row[col["Metric Unit"]])
    else:
        units = {}
        if data and "ID" in col and data[0][col["ID"]] == "":  # --page raw: a row of units
            units = dict(zip(header, data[0]))
            data = data[1:]
        metric_cols = [h for h in header if "__" in h]
        for index, row in enumerate(data):
            if len(row) < len(header):
                continue
            entry = launch(row, index)
            for h in metric_cols:
                entry["metrics"][h] = (_number(row[col[h]]), units.get(h, ""))
    return list(launches.values())


def ncu_table(launches_by_label: dict[str, list[dict]]) -> str:
    """A markdown table: one row per profiled kernel launch, labelled (e.g. by dtype)."""
    metrics = list(NCU_METRICS)
    header = ["run", "kernel", "grid", "block"] + [NCU_METRICS[m][0] for m in metrics]
    rows = []
    for label, launches in launches_by_label.items():
        for entry in launches:
            cells = [label, entry["kernel"], entry.get("grid", ""), entry.get("block", "")]
            for m in metrics:
                value, unit = entry["metrics"].get(m, (None, ""))
                value = _convert(m, value, unit)
                kind = NCU_METRICS[m][1]
                if value is None:
                    cells.append("-")
                elif kind == "int":
                    cells.append(f"{value:,.0f}")
                elif kind == "rate":
                    cells.append(f"{value:,.0f}")
                else:
                    cells.append(f"{value:.1f}")
            rows.append(cells)
    return md_table(header, rows) if rows else "(no kernel profiled)"


def ncu_section(work: Path, dry_run: bool):
    runs = read_tsv(work / "ncu" / "runs.tsv")
    if dry_run:
        smoke = [r for r in runs if r and r[0] == "cpu-smoke"]
        ok = all(len(r) > 1 and r[1] == "0" for r in smoke)
        body = ("Skipped: no GPU (ncu needs one). The profiled workload (scripts/gpu_sanitize_ops.py --base) "
                f"ran on CPU at a tiny size: {'ok' if ok else 'FAILED'}.")
        return ("SKIPPED" if ok else "FAILED"), "no GPU", body
    if not runs:
        return "FAILED", "nothing ran", "(no ncu run recorded)"
    by_label, problems = {}, []
    for label, rc, seconds, path in (r + [""] * (4 - len(r)) for r in runs):
        text = Path(path).read_text(errors="replace") if path and Path(path).exists() else ""
        launches = parse_ncu_csv(text)
        if rc != "0":
            problems.append(f"{label}: ncu exit {rc}" + (" (timed out)" if rc in ("124", "137") else ""))
        if launches:
            by_label[label] = launches
        if "ERR_NVGPUCTRPERM" in text or "LibraryNotLoaded" in text:
            problems.append(f"{label}: ncu could not read the performance counters here")
    seen = {e["kernel"] for launches in by_label.values() for e in launches}
    missing = [k for k in TRITON_KERNELS + NATIVE_KERNELS if k not in seen]
    body = ncu_table(by_label)
    body += ("\n\n`ncu --clock-control none`, one launch of each kernel per dtype at base dims (B=32, L=512, "
             "A=C=384, n=6, K=9), forward then backward; DRAM GB/s = dram__bytes.sum.per_second; "
             "occupancy = sm__warps_active.avg.pct_of_peak_sustained_active; local ld/st sectors > 0 "
             "means register spills.")
    if missing:
        problems.append("not profiled: " + ", ".join(missing))
    if problems:
        body += "\n\n" + "\n".join(f"- {p}" for p in problems)
    status = "FAILED" if problems else "PASSED"
    return status, f"{sum(len(v) for v in by_label.values())} kernel launches profiled", body


# ----------------------------------------------------------------------------------------------
# assemble
# ----------------------------------------------------------------------------------------------


def assemble(work: Path, outdir: Path, stages: list[str], dry_run: bool, started: str | None = None,
             info: dict | None = None) -> tuple[int, str]:
    """Write ``summary.md`` from the work folder; returns (exit code, text). Exit 1 when a stage
    failed or could not run."""
    info = info if info is not None else environment_info()
    recorded = {r[0]: (r + [""] * (4 - len(r))) for r in read_tsv(work / "stages.tsv")}
    builders = {
        "setup": lambda: setup_section(work, dry_run),
        "tests": lambda: tests_section(work, dry_run),
        "sanitize": lambda: sanitize_section(work, dry_run),
        "bench-kernels": lambda: kernels_section(work, outdir, dry_run),
        "bench-model": lambda: model_section(work, outdir, dry_run),
        "ncu": lambda: ncu_section(work, dry_run),
    }
    overview, sections, failed = [], [], False
    for stage in stages:
        _, shell, seconds, shell_note = recorded.get(stage, [stage, "missing", "", "the stage did not record a result"])
        if shell in ("notime", "missing"):
            status, note, body = "NOT RUN", shell_note or "not run", shell_note or ""
        elif shell == "skip":
            status, note, body = "SKIPPED", shell_note, shell_note
        else:
            try:
                status, note, body = builders[stage]()
            except Exception as exc:  # noqa: BLE001 -- a summary bug must not hide the other stages
                status, note, body = "FAILED", f"summary error: {type(exc).__name__}: {exc}", ""
            if shell not in ("0", "") and status != "FAILED":
                status = "FAILED"
                note = (shell_note or f"exit {shell}") + "; " + note
            elif shell_note and shell not in ("0", ""):
                note = shell_note + "; " + note
        failed |= status in ("FAILED", "NOT RUN")
        overview.append([stage, f"**{status}**", seconds or "-", note])
        sections.append(f"## {stage}: {status}\n\n{body}".rstrip())
    mode = "DRY RUN on CPU (tiny sizes, Triton through the interpreter)" if dry_run else "GPU"
    text = "\n".join([
        f"# GPU check: {', '.join(stages)}",
        "",
        f"- mode: {mode}; started {started or '?'}",
        *header_lines(info),
        "",
        md_table(["stage", "status", "seconds", "note"], overview),
        "",
        "\n\n".join(sections),
        "",
    ])
    (outdir / "summary.md").write_text(text)
    return (1 if failed else 0), text


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("commit", help="print the commit and where it came from ($CONVBERT_COMMIT, git, .git "
                                  "files or unknown), tab-separated")
    nc = sub.add_parser("native-check", help="check the native backend; write JSON facts; exit 1 if not ok")
    nc.add_argument("--expect-cuda", action="store_true")
    nc.add_argument("--out", required=True)
    nc.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE", help="extra facts to record")
    c = sub.add_parser("crashed", help="print the test of each worker a pytest run lost to a crash, one per line")
    c.add_argument("logs", nargs="+", help="the runs' output")
    a = sub.add_parser("assemble", help="write OUTDIR/summary.md; exit 1 if a stage failed")
    a.add_argument("--work", required=True)
    a.add_argument("--outdir", required=True)
    a.add_argument("--stages", required=True)
    a.add_argument("--dry-run", action="store_true")
    a.add_argument("--started", default=None)
    args = p.parse_args(argv)
    if args.cmd == "commit":
        print("\t".join(git_commit()))
        return 0
    if args.cmd == "crashed":
        # node ids to rerun: a test named by its frame only ("path::function (line N)") loses the line
        tests = [test.split(" (line ")[0] for log in args.logs for test, _ in worker_crashes(_read_text(log))]
        print("\n".join(dict.fromkeys(tests)))
        return 0
    if args.cmd == "native-check":
        ok, facts = native_check(args.expect_cuda)
        for item in args.extra:
            key, _, value = item.partition("=")
            facts[key] = value
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(facts, indent=1, default=str))
        print(json.dumps(facts, indent=1, default=str))
        return 0 if ok else 1
    rc, _text = assemble(Path(args.work), Path(args.outdir), [s for s in args.stages.split(",") if s],
                         args.dry_run, args.started)
    return rc


if __name__ == "__main__":
    sys.exit(main())
