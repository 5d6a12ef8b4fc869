"""ConvBertConfig: the model's hyper-parameters, read and written as Hugging Face config.json."""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"

#: Hyper-parameters of the published ConvBERT sizes (the paper's small, medium-small and base),
#: plus "tiny" for tests; ``ConvBertConfig(**MODEL_SIZES["small"], vocab_size=...)``.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                 embedding_size=32, num_groups=1, head_ratio=2, conv_kernel_size=9),
    "small": dict(hidden_size=256, num_hidden_layers=12, num_attention_heads=4, intermediate_size=1024,
                  embedding_size=128, num_groups=1, head_ratio=2, conv_kernel_size=9),
    "medium-small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=8, intermediate_size=1536,
                         embedding_size=128, num_groups=2, head_ratio=2, conv_kernel_size=9),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 embedding_size=768, num_groups=1, head_ratio=2, conv_kernel_size=9),
}

# Keys Hugging Face configs carry that this project reads or round-trips, with their defaults.
_GENERIC_DEFAULTS: dict[str, Any] = {
    "output_hidden_states": False,
    "output_attentions": False,
    "return_dict": True,
    "tie_word_embeddings": True,
    "is_decoder": False,
    "add_cross_attention": False,
    "problem_type": None,
    "architectures": None,
}

_POSITIVE_INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings", "type_vocab_size", "embedding_size", "head_ratio", "conv_kernel_size",
                  "num_groups")
_BOOLS = ("conv_mask_padding", "unpad_inputs", "output_hidden_states", "output_attentions", "return_dict",
          "tie_word_embeddings", "is_decoder", "add_cross_attention")
_PROBABILITIES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")  # the last may be None
_PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


def _is_real(value: Any) -> bool:
    """A finite int or float (bools excluded): what JSON numbers load as."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_token_id(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _is_int_like(key: Any) -> bool:
    """An id2label key: an int, or its decimal string (JSON object keys are strings)."""
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        return False
    try:
        int(key)
    except ValueError:
        return False
    return True


class ConvBertConfig:
    """Configuration of a ConvBERT model (Hugging Face compatible).

    Args:
        vocab_size: number of token ids.
        hidden_size: width Hd of the encoder layers.
        num_hidden_layers: number of encoder layers.
        num_attention_heads: heads before the head ratio; the layer has
            ``n = num_attention_heads // head_ratio`` self-attention heads and as many
            convolution heads, each of size ``d = (hidden_size // n) // 2``.
        intermediate_size: width of the feed-forward layer.
        hidden_act: activation of the feed-forward layer and classifier ("gelu", "relu", ...).
        hidden_dropout_prob: dropout of embeddings and fully connected layers.
        attention_probs_dropout_prob: dropout of the attention probabilities.
        max_position_embeddings: longest sequence the position embeddings cover.
        type_vocab_size: number of token type (segment) ids.
        initializer_range: standard deviation of the normal weight initialisation.
        layer_norm_eps: LayerNorm epsilon.
        pad_token_id, bos_token_id, eos_token_id: special ids (pad only affects initialisation).
        embedding_size: width E of the embeddings; projected to ``hidden_size`` when different.
        head_ratio: the ratio gamma by which attention heads are reduced.
        conv_kernel_size: the span K of the dynamic convolution (odd).
        num_groups: groups of the grouped feed-forward linear layers.
        classifier_dropout: dropout of the classification heads (default: hidden_dropout_prob).
        conv_backend: ``convbert_kernels`` backend of the convolution branch ("auto", "eager",
            "reference", "triton", "native"). Not a Hugging Face key; transformers ignores it.
        conv_mask_padding: when True the whole convolution branch (the separable convolution that
            makes ``key_conv`` and the dynamic convolution's value windows) treats padding positions
            as zeros, so a sequence gives the same outputs alone as in any right-padded batch.
            Hugging Face does not (padding leaks into the windows of nearby tokens), so the
            default False keeps checkpoint parity.
        unpad_inputs: when True (with ``conv_mask_padding=True``), a batch with an ``attention_mask``
            drops its padding once after the embeddings and every layer runs on the real tokens only
            (:mod:`convbert.packing`): the outputs at real tokens, the losses and the gradients are
            those of the padded model, the padded positions of the returned hidden states are zeros.
            ``output_attentions`` and ``head_mask`` run the padded path instead.
        num_labels / id2label / label2id: classification labels (default 2).
        **kwargs: any other Hugging Face config key; kept and written back.
    """

    model_type = "convbert"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int | None = 1,
        bos_token_id: int | None = 0,
        eos_token_id: int | None = 2,
        embedding_size: int = 768,
        head_ratio: int = 2,
        conv_kernel_size: int = 9,
        num_groups: int = 1,
        classifier_dropout: float | None = None,
        conv_backend: str = "auto",
        conv_mask_padding: bool = False,
        unpad_inputs: bool = False,
        **kwargs: Any,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.embedding_size = embedding_size
        self.head_ratio = head_ratio
        self.conv_kernel_size = conv_kernel_size
        self.num_groups = num_groups
        self.classifier_dropout = classifier_dropout
        self.conv_backend = conv_backend
        self.conv_mask_padding = conv_mask_padding
        self.unpad_inputs = unpad_inputs

        model_type = kwargs.pop("model_type", self.model_type)
        if model_type != self.model_type:
            raise ValueError(f"config has model_type {model_type!r}, expected {self.model_type!r}")
        id2label = kwargs.pop("id2label", None)
        label2id = kwargs.pop("label2id", None)
        num_labels = kwargs.pop("num_labels", None)
        for key in kwargs:
            if key.startswith("__") or key == "_extra" or hasattr(type(self), key):
                raise ValueError(f"config key {key!r} is reserved: it would hide ConvBertConfig.{key}")
        if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int)
                                       or num_labels < 0):
            raise ValueError(f"num_labels must be a non-negative int, got {num_labels!r}")
        if id2label is None:
            id2label = {i: f"LABEL_{i}" for i in range(num_labels if num_labels is not None else 2)}
        if not isinstance(id2label, dict) or not all(_is_int_like(k) for k in id2label):
            raise ValueError(f"id2label must map label ids (ints) to names, got {id2label!r}")
        if label2id is not None and not isinstance(label2id, dict):
            raise ValueError(f"label2id must map label names to ids, got {label2id!r}")
        self.id2label = {int(k): v for k, v in id2label.items()}
        self.label2id = dict(label2id) if label2id is not None else {v: k for k, v in self.id2label.items()}
        if num_labels is not None and num_labels != len(self.id2label):
            raise ValueError(f"num_labels={num_labels} disagrees with id2label of {len(self.id2label)} labels")

        for key, default in _GENERIC_DEFAULTS.items():
            setattr(self, key, kwargs.pop(key, default))
        self._extra = kwargs  # other Hugging Face keys, written back unchanged
        for key, value in kwargs.items():
            setattr(self, key, value)
        self.validate()

    # ---- derived sizes -------------------------------------------------------------------

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        self.id2label = {i: f"LABEL_{i}" for i in range(value)}
        self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def num_heads(self) -> int:
        """n: attention heads per layer after the head ratio (as many convolution heads)."""
        return max(self.num_attention_heads // self.head_ratio, 1)

    @property
    def head_size(self) -> int:
        """d = (hidden_size // n) // 2."""
        return (self.hidden_size // self.num_heads) // 2

    @property
    def all_head_size(self) -> int:
        """A = n * d, the width of each branch."""
        return self.num_heads * self.head_size

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict

    def validate(self) -> None:
        """Raise ValueError, naming the key, if a known key has the wrong type or range or the sizes do not fit."""
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in _BOOLS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool (JSON true/false), got {value!r} ({type(value).__name__})")
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if not (value is None and name == "classifier_dropout") and not (_is_real(value) and 0 <= value <= 1):
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        if not (_is_real(self.layer_norm_eps) and self.layer_norm_eps > 0):
            raise ValueError(f"layer_norm_eps must be a positive number, got {self.layer_norm_eps!r}")
        if not (_is_real(self.initializer_range) and self.initializer_range >= 0):
            raise ValueError(f"initializer_range must be a non-negative number, got {self.initializer_range!r}")
        if not _is_token_id(self.pad_token_id):
            raise ValueError(f"pad_token_id must be an int or null, got {self.pad_token_id!r}")
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if not (_is_token_id(value) or (isinstance(value, list) and all(map(_is_token_id, value)))):
                raise ValueError(f"{name} must be an int, a list of ints or null, got {value!r}")
        if not (isinstance(self.hidden_act, str) or callable(self.hidden_act)):
            raise ValueError(f"hidden_act must be an activation name, got {self.hidden_act!r}")
        if not isinstance(self.conv_backend, str):
            raise ValueError(f"conv_backend must be a backend name (str), got {self.conv_backend!r}")
        if self.problem_type not in _PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {_PROBLEM_TYPES}, got {self.problem_type!r}")
        if self.architectures is not None and not (
                isinstance(self.architectures, list) and all(isinstance(a, str) for a in self.architectures)):
            raise ValueError(f"architectures must be a list of class names or null, got {self.architectures!r}")
        if self.unpad_inputs is True and self.conv_mask_padding is not True:
            raise ValueError("unpad_inputs=True computes what conv_mask_padding=True does (no token sees padding); "
                             "set conv_mask_padding=True as well, so the padded fallback gives the same numbers")
        if self.conv_kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel_size must be odd (a centred window), got {self.conv_kernel_size}")
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by the {self.num_heads} heads "
                f"(num_attention_heads={self.num_attention_heads} // head_ratio={self.head_ratio})"
            )
        if self.head_size < 1:
            raise ValueError(
                f"hidden_size={self.hidden_size} is too small for {self.num_heads} heads: head size "
                f"(hidden_size // heads) // 2 would be 0"
            )
        if self.hidden_size % self.num_groups or self.intermediate_size % self.num_groups:
            raise ValueError(
                f"num_groups={self.num_groups} must divide hidden_size={self.hidden_size} and "
                f"intermediate_size={self.intermediate_size}"
            )

    # ---- serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """All keys as written to config.json."""
        out = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if not k.startswith("_")}
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["model_type"] = self.model_type
        out.update({k: copy.deepcopy(getattr(self, k)) for k in self._extra})
        return dict(sorted(out.items()))

    def apply_overrides(self, **overrides: Any) -> "ConvBertConfig":
        """Set config keys in place (``from_pretrained(..., config=c, **overrides)``), then validate.

        Raises ValueError for a key that would hide a property or method, or a value of the wrong
        type or range.
        """
        for key, value in overrides.items():
            if key.startswith("__") or key == "_extra" or callable(getattr(type(self), key, None)):
                raise ValueError(f"config key {key!r} is reserved: it would hide ConvBertConfig.{key}")
            setattr(self, key, value)
        self.validate()
        return self

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **overrides: Any) -> "ConvBertConfig":
        """Build a config from a dict of config.json keys; keyword arguments override keys.

        Raises ValueError (naming the key) for a wrong ``model_type``, a key that would hide a
        property or method (``num_heads``, ``to_dict``, ...), or a known key of the wrong type or range.
        """
        if not isinstance(config_dict, Mapping):
            raise TypeError(f"a config must be a dict (a JSON object), got {type(config_dict).__name__}")
        return cls(**{**config_dict, **overrides})

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike, **overrides: Any) -> "ConvBertConfig":
        """Read a config.json file; keyword arguments override keys.

        Raises FileNotFoundError if there is no such file, and ValueError naming the file (and the key)
        if it is not UTF-8 JSON, not a JSON object, or not a valid config.
        """
        path = Path(json_file)
        if not path.is_file():
            raise FileNotFoundError(f"no config file {path}")
        try:
            config_dict = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a valid JSON file: {exc}") from exc
        if not isinstance(config_dict, dict):
            raise ValueError(f"{path} must hold a JSON object of config keys, not a {type(config_dict).__name__}")
        try:
            return cls.from_dict(config_dict, **overrides)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid config {path}: {exc}") from exc

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``config.json`` into ``save_directory`` (created if needed); return its path."""
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{directory} exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CONFIG_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json_string())
        tmp.replace(path)
        return path

    @classmethod
    def from_pretrained(cls, pretrained_path: str | os.PathLike, **overrides: Any) -> "ConvBertConfig":
        """Read ``config.json`` from a directory (or the file itself); keyword arguments override keys.

        Raises FileNotFoundError if there is none, ValueError naming the file for a bad one (see
        :meth:`from_json_file`).
        """
        path = Path(pretrained_path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} at {pretrained_path}")
        return cls.from_json_file(path, **overrides)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConvBertConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"
