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

The forward matches the signature and return value of the installed ``transformers``; the two
supported generations are:

* 5.x: ``forward(hidden_states, attention_mask=None, encoder_hidden_states=None, **kwargs)``
  returning ``(context, attention_probs)``; attentions are recorded by transformers' own forward
  hooks, which still fire on the patched module.
* 4.x (4.40 and later): ``forward(hidden_states, attention_mask=None, head_mask=None,
  encoder_hidden_states=None, output_attentions=False)`` returning ``(context, attention_probs)``
  when ``output_attentions`` else ``(context,)``; ``head_mask`` multiplies the attention
  probabilities.

Any other signature raises ``TypeError`` at patch time, naming these two.

As in transformers, neither the attention mask nor the head mask touches the convolution branch.

``transformers`` is imported only when one of the two functions is called.
"""

from __future__ import annotations

import inspect
import types

from torch import nn

from .backends import load_backends
from .mixed_attention import attention_branch, conv_branch, mix_heads

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


def _compute(module, hidden_states, attention_mask, head_mask, encoder_hidden_states, backend):
    """transformers' ConvBertSelfAttention arithmetic on its own layers: (context [B, L, 2A], probs)."""
    query = module.query(hidden_states)
    # transformers' SeparableConv1D takes [B, Hd, L]
    key_conv = module.key_conv_attn_layer(hidden_states.transpose(1, 2)).transpose(1, 2)
    conv = conv_branch(query, key_conv, module.conv_out_layer(hidden_states), module.conv_kernel_layer,
                       module.num_attention_heads, backend=backend)
    source = encoder_hidden_states if encoder_hidden_states is not None else hidden_states
    context, probs = attention_branch(
        query, module.key(source), module.value(source), module.num_attention_heads,
        attention_mask=attention_mask, dropout=module.dropout, head_mask=head_mask, need_probs=True,
    )
    return mix_heads(context, conv), probs


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

    else:
        raise TypeError(
            f"convbert_kernels.patch_transformers supports ConvBertSelfAttention.forward{_SIG_V5} (transformers "
            f"5.x) and {_SIG_V4} (4.40 and later), not {names}: this transformers version is not supported"
        )

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
