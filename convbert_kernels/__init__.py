"""Fused span-based dynamic convolution for ConvBERT.

Public API::

    dynamic_conv(values, logits, num_heads, *, padding_l=None, padding_mask=None, backend="auto")
    span_dynamic_conv(query, key_conv, values, weight, bias, num_heads, *, padding_l=None, padding_mask=None,
                      backend="auto")
    available_backends(device="cpu")
    DynamicConv1d, LightweightConv1d     (batch-first modules: any window offset, step decoding)

Backends: ``"reference"`` (Hugging Face's unfold formulation, the oracle), ``"eager"`` (K shifted
multiply-adds in PyTorch), ``"triton"`` (fused Triton kernels) and ``"native"`` (the C++/CUDA
extension), each present when it can run on the device at hand.
"""

from .backends import available_backends, backend_load_error, load_backends
from .hf_patch import patch_transformers, unpatch_transformers  # imports transformers only when called
from .modules import DynamicConv1d, LightweightConv1d
from .ops import dynamic_conv, span_dynamic_conv

__all__ = [
    "DynamicConv1d",
    "LightweightConv1d",
    "available_backends",
    "backend_load_error",
    "load_backends",
    "dynamic_conv",
    "patch_transformers",
    "span_dynamic_conv",
    "unpatch_transformers",
]
__version__ = "0.1.0"
