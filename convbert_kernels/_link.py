"""How the native extension links libstdc++: the flags shared by setup.py (prebuilt) and native.py
(just in time), and the check of a built library.

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


def links_shared_libstdcxx(libraries: list[str]) -> bool | str:
    """Whether every shared object in ``libraries`` needs libstdc++.so.6 (its ELF NEEDED list, read
    by readelf): False for one that carries libstdc++ inside, or a string saying why it is unknown."""
    import shutil

    readelf = shutil.which("readelf")
    if not libraries or readelf is None:
        return "unknown: " + ("no library given" if not libraries else "readelf (binutils) is not installed")
    for path in libraries:
        dynamic = subprocess.run([readelf, "-d", path], capture_output=True, text=True, check=True).stdout
        if not any("(NEEDED)" in line and "[libstdc++.so.6]" in line for line in dynamic.splitlines()):
            return False
    return True
