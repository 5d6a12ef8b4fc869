"""Link flags of the native extension shared by setup.py (prebuilt) and native.py (just in time).

Plain Python, no torch import: setup.py loads this file by path before the package is importable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings


def shared_libstdcxx_flags() -> list[str]:
    """``-l:libstdc++.so.6`` where the C++ compiler finds that library, else nothing (with a warning).

    Named ahead of the driver's own ``-lstdc++``, the shared library wins even where the linker would
    otherwise take ``libstdc++.a``: on the H200 machine the extension came out with libstdc++ linked
    in statically (no libstdc++.so.6 among its NEEDED), a private copy whose stream locale is never
    set up, so formatting a number in a TORCH_CHECK message crashed the process (2026-11-26).
    """
    if not sys.platform.startswith("linux"):
        return []
    compiler = os.environ.get("CXX") or "c++"
    try:
        found = subprocess.run([compiler, "-print-file-name=libstdc++.so.6"], capture_output=True, text=True,
                               timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found = ""
    if not os.path.isabs(found) or not os.path.exists(found):
        warnings.warn(f"convbert_kernels: {compiler} does not find libstdc++.so.6; linking the extension with "
                      "the compiler's default libstdc++ (if that is the static one, its error messages can "
                      "crash: see convbert_kernels/_link.py)", stacklevel=2)
        return []
    return ["-l:libstdc++.so.6"]
