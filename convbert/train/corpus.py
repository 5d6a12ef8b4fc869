"""The embedded default corpus: docstrings of Python's standard library, gathered at run time.

Every machine with Python has this text, so ``convbert-train`` with no arguments needs no download.
The modules are imported in a child process (some stdlib modules print, start threads or touch
signal handlers when imported), walked in sorted order, and each distinct docstring of a module,
class, function or method becomes one document. The order is deterministic for a given Python
version; modules that fail to import (no tkinter, no display, platform-only modules) are skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Importing these has visible side effects (opening a browser, printing, GUI demos) or is slow.
_SKIP_MODULES = {
    "antigravity", "this", "__hello__", "__phello__", "idlelib", "turtledemo", "turtle", "tkinter",
    "lib2to3", "test", "ensurepip", "venv", "pydoc_data", "msilib", "winreg", "winsound", "_winapi",
    "nturl2path", "msvcrt", "xxsubtype", "xxlimited",
}
# Submodule names never worth walking into.
_SKIP_PARTS = {"test", "tests", "idle_test", "__main__", "_test", "demo", "samples"}

_GATHER_SCRIPT = r'''
import importlib, inspect, io, os, pkgutil, re, sys, warnings, contextlib
skip_modules = set(sys.argv[2].split(","))
skip_parts = set(sys.argv[3].split(","))
out_path = sys.argv[1]
warnings.simplefilter("ignore")

def module_names():
    names = sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in skip_modules)
    for name in names:
        yield name
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                mod = importlib.import_module(name)
        except BaseException:
            continue
        path = getattr(mod, "__path__", None)
        if not path:
            continue
        subs = []
        for info in pkgutil.walk_packages(path, prefix=name + ".", onerror=lambda _n: None):
            parts = info.name.split(".")
            if any(p.startswith("_") or p in skip_parts for p in parts[1:]):
                continue
            subs.append(info.name)
        yield from sorted(subs)

def clean(doc):
    if not doc:
        return None
    text = " ".join(line.strip() for line in doc.strip().splitlines())
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) >= 20 else None

seen = set()
docs = []
def add(doc):
    text = clean(doc)
    if text and text not in seen:
        seen.add(text)
        docs.append(text)

for name in module_names():
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            mod = importlib.import_module(name)
    except BaseException:
        continue
    add(inspect.getdoc(mod))
    try:
        members = sorted(vars(mod).items())
    except Exception:
        continue
    for attr, obj in members:
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if inspect.isclass(obj):
            add(inspect.getdoc(obj))
            for _meth_name, meth in sorted(vars(obj).items()):
                if _meth_name.startswith("_") and _meth_name != "__init__":
                    continue
                if inspect.isfunction(meth) or inspect.ismethoddescriptor(meth) or isinstance(meth, (classmethod, staticmethod, property)):
                    add(getattr(meth, "__doc__", None))
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
            add(inspect.getdoc(obj))

with open(out_path, "w", encoding="utf-8") as f:
    for d in docs:
        f.write(d + "\n\n")
'''


def write_stdlib_corpus(path: str | os.PathLike, timeout: float = 300.0) -> Path:
    """Gather the stdlib docstrings into ``path`` (one document per paragraph); return the path.

    Raises:
        RuntimeError: the gathering child process failed or produced no text.
    """
    path = Path(path).resolve()  # the child process runs in another working directory
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")  # a killed run's leftover: cleaned at the next start
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")
    env["DISPLAY"] = ""  # never open a window
    with tempfile.TemporaryDirectory() as cwd:  # a clean working directory: no local module shadows stdlib
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _GATHER_SCRIPT, str(tmp), ",".join(sorted(_SKIP_MODULES)),
             ",".join(sorted(_SKIP_PARTS))],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=timeout, text=True,
        )
    if proc.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"gathering the standard-library docstrings failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    tmp.replace(path)
    return path


def stdlib_documents() -> list[str]:
    """The docstring corpus as a list of documents (convenience for tests and notebooks)."""
    with tempfile.TemporaryDirectory() as d:
        p = write_stdlib_corpus(Path(d) / "stdlib.txt")
        return [doc for doc in p.read_text(encoding="utf-8").split("\n\n") if doc.strip()]
