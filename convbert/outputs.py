"""Model outputs with Hugging Face's field names: attribute access, ``out[0]``, ``out["logits"]``."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any

import torch


class ModelOutput(OrderedDict):
    """A dataclass that is also an ordered mapping of its non-None fields.

    Like Hugging Face's ModelOutput: integer indexing and :meth:`to_tuple` skip fields that are
    None, so ``out[0]`` is the loss when labels were given and the logits otherwise.
    """

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                super().__setitem__(f.name, value)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in self.__dataclass_fields__ and value is not None:
            super().__setitem__(name, value)

    def to_tuple(self) -> tuple:
        return tuple(self[k] for k in self.keys())


@dataclass(eq=False)
class BaseModelOutputWithCrossAttentions(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class MaskedLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class SequenceClassifierOutput(MaskedLMOutput):
    pass


@dataclass(eq=False)
class MultipleChoiceModelOutput(MaskedLMOutput):
    pass


@dataclass(eq=False)
class TokenClassifierOutput(MaskedLMOutput):
    pass


@dataclass(eq=False)
class QuestionAnsweringModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
