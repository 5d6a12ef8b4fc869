"""Hugging Face checkpoints both ways: ``from_pretrained`` and ``save_pretrained``.

Layout: ``config.json`` plus ``model.safetensors`` (or a sharded ``model.safetensors.index.json``,
or the legacy ``pytorch_model.bin``). Backbone keys carry the ``convbert.`` prefix in head models
and none in a bare backbone; either loads into either. Loading is all-or-nothing: every key and
shape is checked before a single weight is copied.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .configuration import ConvBertConfig

logger = logging.getLogger("convbert")

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"

# Buffers that older checkpoints carry and this implementation derives instead.
_IGNORED_KEYS = re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into this model (wrong shapes, unreadable file)."""


@dataclass
class LoadingInfo:
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncation/corruption
        raise CheckpointError(f"could not read weights from {path} (truncated or corrupt?): {exc}") from exc


def load_state_dict_from_directory(directory: Path) -> dict[str, torch.Tensor]:
    """Read every weight of a checkpoint directory into CPU tensors."""
    if (directory / SAFE_WEIGHTS_NAME).is_file():
        return _read_safetensors(directory / SAFE_WEIGHTS_NAME)
    if (directory / SAFE_WEIGHTS_INDEX_NAME).is_file():
        index = json.loads((directory / SAFE_WEIGHTS_INDEX_NAME).read_text())
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(_read_safetensors(directory / shard))
        return state
    if (directory / WEIGHTS_NAME).is_file():
        try:
            return torch.load(directory / WEIGHTS_NAME, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"could not read weights from {directory / WEIGHTS_NAME}: {exc}") from exc
    raise FileNotFoundError(
        f"no weights in {directory}: expected {SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME} or {WEIGHTS_NAME}"
    )


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
        dtype: torch.dtype | None = None,
        output_loading_info: bool = False,
        **config_overrides: Any,
    ):
        """Load a model from a Hugging Face checkpoint directory.

        Args:
            pretrained_path: directory with ``config.json`` and the weights.
            config: use this config instead of the directory's ``config.json``.
            dtype: cast the loaded model to this dtype.
            output_loading_info: also return a :class:`LoadingInfo` with missing/unexpected keys.
            **config_overrides: config keys to override, e.g. ``conv_backend="eager"``.

        Returns the model in eval mode (and the loading info when asked). Missing and unexpected
        keys are logged; head weights missing from a backbone checkpoint stay freshly initialised.

        Raises:
            FileNotFoundError: no such directory, or no config/weights in it.
            CheckpointError: unreadable weights or shapes that do not fit this config.
        """
        directory = Path(pretrained_path)
        if not directory.is_dir():
            raise FileNotFoundError(f"checkpoint directory {pretrained_path!s} does not exist")
        if config is None:
            config = ConvBertConfig.from_pretrained(directory, **config_overrides)
        else:
            for key, value in config_overrides.items():
                setattr(config, key, value)
        state_dict = load_state_dict_from_directory(directory)
        model = cls(config)
        info = model.load_pretrained_state_dict(state_dict)
        if dtype is not None:
            model.to(dtype)
        model.eval()
        return (model, info) if output_loading_info else model

    def _map_checkpoint_keys(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add or strip the ``convbert.`` prefix so the checkpoint's keys name this model's parameters."""
        prefix = self.base_model_prefix + "."
        model_is_head = any(k.startswith(prefix) for k in self.state_dict())
        checkpoint_is_head = any(k.startswith(prefix) for k in state_dict)
        mapped = {}
        for key, value in state_dict.items():
            if _IGNORED_KEYS.search(key):
                continue
            if model_is_head and not checkpoint_is_head:
                key = prefix + key
            elif not model_is_head and checkpoint_is_head and key.startswith(prefix):
                key = key[len(prefix):]
            mapped[key] = value
        return mapped

    def load_pretrained_state_dict(self, state_dict: dict[str, torch.Tensor]) -> LoadingInfo:
        """Load Hugging Face-layout weights; check everything first so a failure changes nothing."""
        mapped = self._map_checkpoint_keys(state_dict)
        own = self.state_dict()
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

        Tied weights are stored once (under the embedding's name), as transformers does. Files are
        written to a temporary name and renamed, so a crash never leaves a half-written checkpoint.
        """
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{directory} exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
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
