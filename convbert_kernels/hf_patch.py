"""One-line drop-in for Hugging Face ``transformers``' ConvBERT.

    import convbert_kernels
    convbert_kernels.patch_transformers()            # every ConvBertSelfAttention, present and future
    convbert_kernels.patch_transformers(model)       # only the modules of this model
    convbert_kernels.unpatch_transformers()          # restore the original forward exactly

The patched ``ConvBertSelfAttention.forward`` runs the module's own layers (query / key / value,
``key_conv_attn_layer``, ``conv_out_layer``, ``conv_kernel_layer``, dropout) and the unchanged
attention half, and replaces only the span-based dynamic convolution -- ``conv_kernel_layer`` on
``key_conv * query``, softmax over K, ``unfold`` of the values and the batched matmul -- by one call
to :func:`convbert_kernels.span_dynamic_conv`. No parameter, buffer or state-dict key changes.

The forward is picked to match the installed ``transformers`` version's signature and return
value:

* 5.x: ``forward(hidden_states, attention_mask=None, encoder_hidden_states=None, **kwargs)``
  returning ``(context, attention_probs)``; attentions are recorded by transformers' own forward
  hooks, which still fire on the patched module.
* 4.x: ``forward(hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
  output_attentions=False)`` returning ``(context, attention_probs)`` when ``output_attentions``
  else ``(context,)``; ``head_mask`` multiplies the attention probabilities.
* any other signature: the arguments are bound by name against the original signature (slower
  per call, same semantics as far as the parameters above go).

As in transformers, neither the attention mask nor the head mask touches the convolution branch.

``transformers`` is imported only when one of the two functions is called.
"""

from __future__ import annotations

import inspect
import math
import types

import torch
from torch import nn

from .backends import load_backends
from .ops import span_dynamic_conv

__all__ = ["patch_transformers", "unpatch_transformers"]

_MARK = "_convbert_kernels_patch"  # attribute set on every forward this module creates
# class -> the forward found in its __dict__ before the class-level patch
_ORIGINAL_CLASS_FORWARD: dict[type, object] = {}


def _self_attention_class():
    try:
        from transformers.models.convbert import modeling_convbert
    except ImportError as exc:  # transformers missing, or too old to have ConvBERT
        raise ImportError(
            "convbert_kernels.patch_transformers needs Hugging Face transformers with ConvBERT "
            "(pip install 'transformers>=4.40', or the project's [hf] extra)"
        ) from exc
    return modeling_convbert.ConvBertSelfAttention


# --------------------------------------------------------------------------------------------
# The two halves of the layer
# --------------------------------------------------------------------------------------------


def _conv_branch(module, hidden_states, query, backend):
    """ConvBERT's convolution branch via span_dynamic_conv; [B, L, A] in the dtype of the values."""
    key_conv = module.key_conv_attn_layer(hidden_states.transpose(1, 2)).transpose(1, 2)
    values = module.conv_out_layer(hidden_states)
    weight = module.conv_kernel_layer.weight
    bias = module.conv_kernel_layer.bias
    dtype = values.dtype
    # Under autocast the projections come out in the autocast dtype while the parameters stay
    # fp32; nn.Linear would cast them, so do the same. A no-op otherwise.
    if query.dtype != dtype:
        query = query.to(dtype)
    if key_conv.dtype != dtype:
        key_conv = key_conv.to(dtype)
    if weight.dtype != dtype:
        weight = weight.to(dtype)
    if bias is not None and bias.dtype != dtype:
        bias = bias.to(dtype)
    return span_dynamic_conv(query, key_conv, values, weight, bias, module.num_attention_heads, backend=backend)


def _attention_and_concat(module, hidden_states, mixed_query, attention_mask, head_mask, encoder_hidden_states, conv):
    """The unchanged attention half, then [attention context | conv] per head, as transformers does."""
    batch, length = hidden_states.shape[:2]
    heads, head_size = module.num_attention_heads, module.attention_head_size
    source = encoder_hidden_states if encoder_hidden_states is not None else hidden_states
    query = mixed_query.view(batch, length, -1, head_size).transpose(1, 2)
    key = module.key(source).view(batch, source.shape[1], -1, head_size).transpose(1, 2)
    value = module.value(source).view(batch, source.shape[1], -1, head_size).transpose(1, 2)

    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(head_size)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1)
    probs = module.dropout(probs)
    if head_mask is not None:
        probs = probs * head_mask
    context = torch.matmul(probs, value).permute(0, 2, 1, 3).contiguous()

    conv = conv.reshape(batch, length, heads, head_size).to(context.dtype)
    context = torch.cat([context, conv], 2)
    return context.view(batch, length, -1), probs


def _compute(module, hidden_states, attention_mask, head_mask, encoder_hidden_states, backend):
    mixed_query = module.query(hidden_states)
    conv = _conv_branch(module, hidden_states, mixed_query, backend)
    return _attention_and_concat(
        module, hidden_states, mixed_query, attention_mask, head_mask, encoder_hidden_states, conv
    )


# --------------------------------------------------------------------------------------------
# Forward functions with each transformers generation's signature
# --------------------------------------------------------------------------------------------

_SIG_V5 = ("hidden_states", "attention_mask", "encoder_hidden_states")
_SIG_V4 = ("hidden_states", "attention_mask", "head_mask", "encoder_hidden_states", "output_attentions")


def _named_parameters(func) -> tuple[str, ...]:
    params = list(inspect.signature(func).parameters.values())[1:]  # drop self
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def _make_forward(original, backend: str):
    names = _named_parameters(original)

    if names == _SIG_V5:

        def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, **kwargs):
            return _compute(self, hidden_states, attention_mask, None, encoder_hidden_states, backend)

    elif names == _SIG_V4:

        def forward(
            self,
            hidden_states,
            attention_mask=None,
            head_mask=None,
            encoder_hidden_states=None,
            output_attentions=False,
            **kwargs,
        ):
            context, probs = _compute(self, hidden_states, attention_mask, head_mask, encoder_hidden_states, backend)
            return (context, probs) if output_attentions else (context,)

    else:  # an unforeseen signature: bind against the original's
        signature = inspect.signature(original)
        returns_tuple_always = "output_attentions" not in signature.parameters

        def forward(self, *args, **kwargs):
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            for p in signature.parameters.values():  # fold a **kwargs catch-all into the rest
                if p.kind is p.VAR_KEYWORD:
                    arguments.update(arguments.pop(p.name, {}) or {})
            context, probs = _compute(
                self,
                arguments["hidden_states"],
                arguments.get("attention_mask"),
                arguments.get("head_mask"),
                arguments.get("encoder_hidden_states"),
                backend,
            )
            if returns_tuple_always or arguments.get("output_attentions"):
                return context, probs
            return (context,)

    forward.__name__ = "forward"
    forward.__qualname__ = "ConvBertSelfAttention.forward"
    forward.__doc__ = f"ConvBertSelfAttention.forward with the conv branch run by convbert_kernels (backend={backend!r})."
    forward.__wrapped__ = original
    setattr(forward, _MARK, {"backend": backend, "original": original})
    return forward


def _is_patched(func) -> bool:
    return hasattr(getattr(func, "__func__", func), _MARK)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def patch_transformers(model: nn.Module | None = None, backend: str = "auto") -> int:
    """Run transformers' ConvBERT convolution branch with :func:`convbert_kernels.span_dynamic_conv`.

    Args:
        model: None to patch the ``ConvBertSelfAttention`` class itself (every instance, existing
            and future); otherwise only the ``ConvBertSelfAttention`` modules inside ``model``
            (an instance-level ``forward``), leaving other models untouched.
        backend: the ``span_dynamic_conv`` backend (``"auto"`` picks the fastest for each call's
            device). Patching again with another backend replaces it; nothing is wrapped twice.

    Returns:
        The number of modules patched (with ``model``) or of classes patched (1, without it).
        Modules or a class already patched count too: the call is idempotent.

    Raises:
        ImportError: transformers (with ConvBERT) is not installed.
        ValueError: ``backend`` is not ``"auto"`` and not a known backend.
    """
    cls = _self_attention_class()
    _check_backend_name(backend)
    load_backends(backend)  # import the backend(s) now: torch.compile cannot import mid-trace
    if model is None:
        current = cls.__dict__["forward"]
        original = _ORIGINAL_CLASS_FORWARD.get(cls, current) if _is_patched(current) else current
        _ORIGINAL_CLASS_FORWARD[cls] = original
        cls.forward = _make_forward(original, backend)
        return 1

    count = 0
    for module in model.modules():
        if isinstance(module, cls):
            original = _original_class_forward(type(module))
            module.forward = types.MethodType(_make_forward(original, backend), module)
            count += 1
    return count


def unpatch_transformers(model: nn.Module | None = None) -> int:
    """Undo :func:`patch_transformers`.

    Without ``model``, the class gets back the very function object it had before; instance-level
    patches made with a model stay until that model is unpatched. With ``model``, the
    instance-level ``forward`` of its modules is removed, so they use the class's forward again.

    Returns:
        The number of modules (with ``model``) or classes (without) that were patched and are now
        restored; 0 when there was nothing to undo.
    """
    cls = _self_attention_class()
    if model is None:
        if cls in _ORIGINAL_CLASS_FORWARD and _is_patched(cls.__dict__.get("forward")):
            cls.forward = _ORIGINAL_CLASS_FORWARD.pop(cls)
            return 1
        return 0
    count = 0
    for module in model.modules():
        if isinstance(module, cls) and _is_patched(module.__dict__.get("forward")):
            del module.forward
            count += 1
    return count


def _original_class_forward(klass: type):
    """The unpatched forward a (sub)class of ConvBertSelfAttention resolves to."""
    for base in klass.__mro__:
        if "forward" in base.__dict__:
            func = base.__dict__["forward"]
            if _is_patched(func):
                return getattr(func, _MARK)["original"]
            return func
    raise TypeError(f"{klass} has no forward")  # unreachable for nn.Module subclasses


def _check_backend_name(backend: str) -> None:
    from .backends import known_backends

    if backend != "auto" and backend not in known_backends():
        raise ValueError(f"unknown backend {backend!r}; known backends: {['auto', *known_backends()]}")
