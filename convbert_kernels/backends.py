"""The backend registry: which implementations of the op exist and which one ``"auto"`` picks.

A backend is a module exposing ``BACKEND``, a :class:`Backend`. Backends with heavy imports
(Triton, the compiled extension) are imported on first use, so ``import convbert_kernels`` stays
cheap and a broken optional backend never breaks the others; why one failed to load is kept and
shown by :func:`backend_load_error`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Backend:
    """One implementation of the two ops.

    Both callables receive inputs already checked by :mod:`convbert_kernels._validation`
    (same device and dtype, consistent shapes, K >= 1, ``padding_l`` an int in ``[0, K - 1]``, bool
    ``padding_mask`` or None; ``seq_bounds``, packed sequences' per-token bounds, see
    :mod:`._compiled_ops`) and must support autograd with respect to every floating tensor input.
    """

    name: str
    # (values, logits, num_heads, padding_l, padding_mask=None, seq_bounds=None)
    dynamic_conv: Callable[..., torch.Tensor]
    # (query, key_conv, values, weight, bias, num_heads, padding_l, padding_mask=None, seq_bounds=None)
    span_dynamic_conv: Callable[..., torch.Tensor]
    is_available: Callable[[torch.device], bool]


# name -> module that defines BACKEND. Order is the listing order of available_backends().
_BACKEND_MODULES = {
    "reference": "convbert_kernels.reference",
    "eager": "convbert_kernels.eager",
    "triton": "convbert_kernels.triton_backend",
    "native": "convbert_kernels.native",
}

# What "auto" tries, fastest first, per device type. On CUDA, native before triton: faster in both
# dtypes on an H200 (benchmarks/results/kernels-nvidia-h200.jsonl, 2026-11-26).
_AUTO_ORDER = {
    "cuda": ("native", "triton", "eager"),
    "cpu": ("native", "eager"),
}
_AUTO_FALLBACK = ("eager",)

_loaded: dict[str, Backend | None] = {}
_load_errors: dict[str, str] = {}


def _load(name: str) -> Backend | None:
    if name not in _loaded:
        if torch.compiler.is_compiling():
            # Dynamo cannot trace an import; the model preloads its backends at construction.
            raise RuntimeError(
                f"convbert_kernels backend {name!r} was first needed inside torch.compile; call "
                "convbert_kernels.load_backends() once before compiling"
            )
        try:
            module = importlib.import_module(_BACKEND_MODULES[name])
            _loaded[name] = module.BACKEND
        except Exception as exc:  # an optional backend must not take the others down
            _loaded[name] = None
            _load_errors[name] = f"{type(exc).__name__}: {exc}"
    return _loaded[name]


def known_backends() -> list[str]:
    """Every backend name this package defines, available here or not (``"auto"`` not included)."""
    return list(_BACKEND_MODULES)


def _auto_candidates() -> list[str]:
    """What ``"auto"`` may reach in this process: its choices for the CPU, and for CUDA if present."""
    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    names = []
    for device_type in device_types:
        for candidate in _AUTO_ORDER[device_type]:
            backend = _load(candidate)
            if backend is not None and backend.is_available(torch.device(device_type)):
                names.append(candidate)
                break
    return names


def load_backends(backend: str | None = None) -> None:
    """Import backends now (Triton, the native extension) rather than on first use.

    Needed before ``torch.compile`` traces a call to the ops, since tracing cannot import
    modules; the ConvBERT models and :func:`patch_transformers` call it with their backend.

    Args:
        backend: one name: load that backend only; ``"auto"``: the backends ``"auto"`` can pick in
            this process (for the CPU, and for CUDA when a GPU is present), trying them in order;
            None: every backend. Loading never fails: why a backend is missing is kept for
            :func:`backend_load_error`.
    """
    if backend == "auto":
        _auto_candidates()
        return
    if backend is not None and backend not in _BACKEND_MODULES:
        raise ValueError(f"unknown backend {backend!r}; known backends: {['auto', *_BACKEND_MODULES]}")
    for name in [backend] if backend else _BACKEND_MODULES:
        _load(name)


def backend_load_error(name: str) -> str | None:
    """Why backend ``name`` could not be loaded (None if it loaded or was never tried)."""
    if name not in _BACKEND_MODULES:
        raise ValueError(f"unknown backend {name!r}; known backends: {list(_BACKEND_MODULES)}")
    _load(name)
    return _load_errors.get(name)


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Names of the backends usable for tensors on ``device`` (``"auto"`` not included)."""
    device = torch.device(device)
    names = []
    for name in _BACKEND_MODULES:
        backend = _load(name)
        if backend is not None and backend.is_available(device):
            names.append(name)
    return names


def resolve_backend(name: str, device: torch.device) -> Backend:
    """The :class:`Backend` to run for ``name`` on ``device``; ValueError if there is none."""
    if name == "auto":
        for candidate in _AUTO_ORDER.get(device.type, _AUTO_FALLBACK):
            backend = _load(candidate)
            if backend is not None and backend.is_available(device):
                return backend
        raise ValueError(f"no backend is available for device {device}")
    if name not in _BACKEND_MODULES:
        raise ValueError(
            f"unknown backend {name!r}; available for {device}: {available_backends(device) + ['auto']}"
        )
    backend = _load(name)
    if backend is None or not backend.is_available(device):
        reason = f" ({_load_errors[name]})" if name in _load_errors else ""
        raise ValueError(
            f"backend {name!r} is not available for device {device}{reason}; "
            f"available: {available_backends(device) + ['auto']}"
        )
    return backend
