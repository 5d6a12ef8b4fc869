"""pytest-benchmark fixtures for ``pytest benchmarks/ --benchmark-only`` (a small version of the suite).

Options:
    --bench-device cpu|cuda   where to run (default: cuda when available)
    --bench-threads N         torch.set_num_threads(N); with 1, add --benchmark-timer time.thread_time
                              for CPU time that ignores waiting for a core on a busy machine
    --bench-compile           also benchmark the torch.compile providers (compiled-reference,
                              compiled-eager, hf-compiled);
                              off by default because compiling takes tens of seconds on a small CPU
"""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser):
    group = parser.getgroup("convbert-bench")
    group.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda when available)")
    group.addoption("--bench-threads", type=int, default=None, help="torch.set_num_threads for the run")
    group.addoption("--bench-compile", action="store_true", help="include the torch.compile providers")


@pytest.fixture(scope="session")
def device(request):
    name = request.config.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    threads = request.config.getoption("--bench-threads")
    if threads:
        torch.set_num_threads(threads)
    return torch.device(name)


@pytest.fixture(scope="session")
def with_compile(request):
    return request.config.getoption("--bench-compile")


@pytest.fixture
def sync(device):
    """Wrap a callable so that pytest-benchmark's wall clock covers the GPU work."""

    def wrap(fn):
        if device.type != "cuda":
            return fn

        def synced():
            out = fn()
            torch.cuda.synchronize(device)
            return out

        return synced

    return wrap
