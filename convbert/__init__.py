"""ConvBERT in PyTorch, with the fused span-based dynamic convolution of ``convbert_kernels``, and its
TensorFlow (Keras) twins ``TFConvBert*``.

Names are imported lazily from their modules so ``import convbert`` stays cheap: it imports neither
torch nor TensorFlow, and the ``TFConvBert*`` names import TensorFlow (never torch) when first used.
They need the ``tf`` extra (``pip install "convbert-kernels[tf]"``); without it they raise ImportError.
"""

from __future__ import annotations

import importlib
import importlib.util

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
    "TFConvBertModel": "convbert.modeling_tf",
    "TFConvBertPreTrainedModel": "convbert.modeling_tf",
    "TFConvBertForMaskedLM": "convbert.modeling_tf",
    "TFConvBertForSequenceClassification": "convbert.modeling_tf",
    "TFConvBertForMultipleChoice": "convbert.modeling_tf",
    "TFConvBertForTokenClassification": "convbert.modeling_tf",
    "TFConvBertForQuestionAnswering": "convbert.modeling_tf",
}
_TF_EXTRA_HINT = 'pip install "convbert-kernels[tf]"'

# ``from convbert import *`` must not fail without TensorFlow: the TF names are listed only when it is installed
# (found without importing it).
__all__ = sorted(k for k, v in _EXPORTS.items()
                 if v != "convbert.modeling_tf" or importlib.util.find_spec("tensorflow") is not None)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        try:
            module = importlib.import_module(_EXPORTS[name])
        except ModuleNotFoundError as exc:
            if _EXPORTS[name] == "convbert.modeling_tf" and exc.name is not None and exc.name.split(".")[0] in (
                    "tensorflow", "keras"):
                raise ImportError(
                    f"convbert.{name} needs TensorFlow, which is not installed: {_TF_EXTRA_HINT}") from exc
            raise
        return getattr(module, name)
    raise AttributeError(f"module 'convbert' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
