"""Hugging Face checkpoints both ways: ``from_pretrained`` and ``save_pretrained``.

Layout: ``config.json`` plus ``model.safetensors`` (or a sharded ``model.safetensors.index.json``,
or the legacy ``pytorch_model.bin``). Backbone keys carry the ``convbert.`` prefix in head models
and none in a bare backbone; either loads into either. Loading is all-or-nothing: every key and
shape is checked before a single weight is copied, and a checkpoint none of whose keys name a
parameter of the model is an error. Nothing loaded can run code: safetensors, JSON, and
``torch.load(weights_only=True)`` for the legacy format.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

# File names, the interrupted-save marker, the ignored buffers, the error type and the shard-index
# reader are shared with the TensorFlow models' torch-free reader (callers import them from here too).
from .checkpoint_numpy import (  # noqa: F401
    INCOMPLETE_SAVE_MARKER,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    map_checkpoint_keys,
    read_sharded,
    refuse_incomplete_save,
)
from .configuration import ConvBertConfig

logger = logging.getLogger("convbert")


class LoadingInfo(dict):
    """What ``from_pretrained(..., output_loading_info=True)`` returns beside the model.

    A dict with transformers' keys ``missing_keys``, ``unexpected_keys``, ``mismatched_keys`` and
    ``error_msgs`` (lists; the last two stay empty because mismatches raise), each also readable as
    an attribute (``info.missing_keys``).
    """

    def __init__(self, missing_keys=(), unexpected_keys=(), mismatched_keys=(), error_msgs=()):
        super().__init__(missing_keys=list(missing_keys), unexpected_keys=list(unexpected_keys),
                         mismatched_keys=list(mismatched_keys), error_msgs=list(error_msgs))

    missing_keys = property(lambda self: self["missing_keys"])
    unexpected_keys = property(lambda self: self["unexpected_keys"])
    mismatched_keys = property(lambda self: self["mismatched_keys"])
    error_msgs = property(lambda self: self["error_msgs"])


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncation/corruption
        raise CheckpointError(f"could not read weights from {path} (truncated or corrupt?): {exc}") from exc


def load_state_dict_from_directory(directory: Path) -> dict[str, torch.Tensor]:
    """Read every weight of a checkpoint directory into CPU tensors.

    Raises FileNotFoundError when there are no weights, CheckpointError (naming the file) when they
    cannot be read or a shard index is malformed, leaves the directory, or has overlapping shards,
    and when the directory is marked as an interrupted save (``FINAL_SAVE_INCOMPLETE``).
    """
    directory = Path(directory)
    refuse_incomplete_save(directory)
    if (directory / SAFE_WEIGHTS_NAME).is_file():
        return _read_safetensors(directory / SAFE_WEIGHTS_NAME)
    if (directory / SAFE_WEIGHTS_INDEX_NAME).is_file():
        return read_sharded(directory / SAFE_WEIGHTS_INDEX_NAME, _read_safetensors)
    if (directory / WEIGHTS_NAME).is_file():
        path = directory / WEIGHTS_NAME
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"could not read weights from {path}: {exc}") from exc
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a dict of tensors")
        for key, value in state.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a named tensor")
        return state
    raise FileNotFoundError(
        f"no weights in {directory}: expected {SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME} or {WEIGHTS_NAME}"
    )


def _float_dtype(value: Any, what: str) -> torch.dtype:
    """``value`` (a torch dtype or its name, "float16" or "torch.float16") as a floating torch dtype."""
    dtype = getattr(torch, value.removeprefix("torch."), None) if isinstance(value, str) else value
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{what} must be \"auto\", a floating torch.dtype or its name "
                         f"(\"float32\", \"float16\", \"bfloat16\", ...), got {value!r}")
    return dtype


def _auto_dtype(config: ConvBertConfig, state_dict: dict[str, torch.Tensor]) -> torch.dtype:
    """``dtype="auto"`` as transformers resolves it: the config's ``dtype`` (or older ``torch_dtype``)
    key, else the first floating tensor of the checkpoint, else float32."""
    for key in ("dtype", "torch_dtype"):
        stored = getattr(config, key, None)
        if stored is not None:
            return _float_dtype(stored, f"the config's {key!r}")
    return next((t.dtype for t in state_dict.values() if t.is_floating_point()), torch.float32)


class PreTrainedMixin:
    """``from_pretrained`` / ``save_pretrained`` for the ConvBERT model classes."""

    base_model_prefix = "convbert"
    _tied_weights_keys: dict[str, str] = {}

    def _tied_keys(self) -> set[str]:
        return set(self._tied_weights_keys) if self.config.tie_word_embeddings else set()

    @classmethod
    def from_pretrained(
        cls,
        pretrained_path: str | os.PathLike,
        *,
        config: ConvBertConfig | None = None,
        dtype: torch.dtype | str | None = None,
        output_loading_info: bool = False,
        torch_dtype: torch.dtype | str | None = None,
        **config_overrides: Any,
    ):
        """Load a model from a Hugging Face checkpoint directory.

        Args:
            pretrained_path: directory with ``config.json`` and the weights.
            config: use this config instead of the directory's ``config.json``.
            dtype: cast the loaded model to this dtype: a floating ``torch.dtype``, its name
                ("float32", "float16", "bfloat16", ...), or "auto" for the config's ``dtype`` /
                ``torch_dtype`` key, else the checkpoint's own dtype, else float32. Default: float32.
            output_loading_info: also return a :class:`LoadingInfo`, a dict with ``missing_keys``,
                ``unexpected_keys``, ``mismatched_keys`` and ``error_msgs``, as transformers does.
            torch_dtype: the older name of ``dtype`` (give one of the two).
            **config_overrides: config keys to override, e.g. ``conv_backend="eager"``.

        Returns the model in eval mode (and the loading info when asked). Missing and unexpected
        keys are logged; head weights missing from a backbone checkpoint stay freshly initialised.

        Raises:
            FileNotFoundError: no such directory, or no config/weights in it.
            CheckpointError: unreadable weights, a malformed shard index, shapes that do not fit
                this config, or a checkpoint none of whose keys match the model.
            ValueError: an invalid config file or override, or an invalid dtype.
        """
        if torch_dtype is not None:
            if dtype is not None:
                raise ValueError("give dtype or its older name torch_dtype, not both")
            dtype = torch_dtype
        directory = Path(pretrained_path)
        if not directory.is_dir():
            raise FileNotFoundError(f"checkpoint directory {pretrained_path!s} does not exist")
        if config is None:
            config = ConvBertConfig.from_pretrained(directory, **config_overrides)
        else:
            config.apply_overrides(**config_overrides)
        if dtype is not None and dtype != "auto":
            dtype = _float_dtype(dtype, "dtype")  # a bad dtype fails before the weights are read
        state_dict = load_state_dict_from_directory(directory)
        if dtype == "auto":
            dtype = _auto_dtype(config, state_dict)
        model = cls(config)
        try:
            info = model.load_pretrained_state_dict(state_dict)
        except CheckpointError as exc:
            raise CheckpointError(f"{directory}: {exc}") from exc
        if dtype is not None:
            model.to(dtype)
        model.eval()
        return (model, info) if output_loading_info else model

    def _map_checkpoint_keys(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add or strip the ``convbert.`` prefix so the checkpoint's keys name this model's parameters."""
        return map_checkpoint_keys(state_dict, self.state_dict(), self.base_model_prefix)

    def load_pretrained_state_dict(self, state_dict: dict[str, torch.Tensor]) -> LoadingInfo:
        """Load Hugging Face-layout weights; check everything first so a failure changes nothing."""
        mapped = self._map_checkpoint_keys(state_dict)
        own = self.state_dict()
        if not any(k in own for k in mapped):
            raise CheckpointError(
                f"none of the checkpoint's {len(state_dict)} tensors is a weight of {type(self).__name__} "
                f"(checkpoint keys: {sorted(state_dict)[:5]}; model keys: {list(own)[:5]}): not a ConvBERT checkpoint?"
            )
        tied = self._tied_keys()
        info = LoadingInfo(
            missing_keys=sorted(k for k in own if k not in mapped and k not in tied),
            unexpected_keys=sorted(k for k in mapped if k not in own),
        )
        mismatched = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in mapped.items() if k in own and tuple(v.shape) != tuple(own[k].shape)
        ]
        if mismatched:
            raise CheckpointError(
                "checkpoint shapes do not match the model config:\n  " + "\n  ".join(mismatched)
            )
        bad = [k for k, v in mapped.items() if k in own and not (v.is_floating_point() or v.dtype == own[k].dtype)]
        if bad:
            raise CheckpointError(f"non-floating tensors where parameters were expected: {bad}")
        with torch.no_grad():
            for key, value in mapped.items():
                if key in own:
                    own[key].copy_(value)
        self.tie_weights()
        if info.missing_keys:
            logger.warning("%s: weights not in the checkpoint, newly initialised: %s",
                           type(self).__name__, info.missing_keys)
        if info.unexpected_keys:
            logger.warning("%s: checkpoint weights not used: %s", type(self).__name__, info.unexpected_keys)
        return info

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True) -> Path:
        """Write ``config.json`` and the weights in the Hugging Face layout; return the directory.

        Tied weights are stored once (under the embedding's name), as transformers does, and the
        config records the weights' ``dtype``. Files are
        written to a temporary name and renamed, so a crash never leaves a half-written checkpoint.
        """
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{directory} exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        self.config.dtype = str(self.dtype).removeprefix("torch.")  # read by dtype="auto", as transformers writes it
        if getattr(self.config, "torch_dtype", None) is not None:
            self.config.torch_dtype = self.config.dtype  # the older key must not contradict it
        tied = self._tied_keys()
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k not in tied}
        if safe_serialization:
            from safetensors.torch import save_file

            target = directory / SAFE_WEIGHTS_NAME
            tmp = directory / (SAFE_WEIGHTS_NAME + ".tmp")
            save_file(state, str(tmp), metadata={"format": "pt"})
        else:
            target = directory / WEIGHTS_NAME
            tmp = directory / (WEIGHTS_NAME + ".tmp")
            torch.save(state, tmp)
        tmp.replace(target)
        self.config.save_pretrained(directory)
        return directory
