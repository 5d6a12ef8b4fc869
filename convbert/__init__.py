"""ConvBERT in PyTorch, with the fused span-based dynamic convolution of ``convbert_kernels``.

Names are imported lazily from their modules so ``import convbert`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ConvBertConfig": "convbert.configuration",
    "ConvBertModel": "convbert.modeling",
    "ConvBertPreTrainedModel": "convbert.modeling",
    "ConvBertForMaskedLM": "convbert.modeling",
    "ConvBertForSequenceClassification": "convbert.modeling",
    "ConvBertForMultipleChoice": "convbert.modeling",
    "ConvBertForTokenClassification": "convbert.modeling",
    "ConvBertForQuestionAnswering": "convbert.modeling",
    "ConvBertTokenizer": "convbert.tokenization",
    "ConvBertTokenizerFast": "convbert.tokenization_fast",
    "train_wordpiece_vocab": "convbert.wordpiece_trainer",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'convbert' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
