"""ConvBERT in TensorFlow: Keras twins of the PyTorch models in :mod:`convbert.modeling`.

``TFConvBertModel``, ``TFConvBertForMaskedLM``, ``TFConvBertForSequenceClassification``,
``TFConvBertForMultipleChoice``, ``TFConvBertForTokenClassification`` and
``TFConvBertForQuestionAnswering`` are ``tf.keras.Model`` subclasses computing what their PyTorch
namesakes compute, with the same layer names and the same :class:`~convbert.ConvBertConfig`.
``from_pretrained`` reads the checkpoints the PyTorch classes and transformers write and
``save_pretrained`` writes checkpoints they read (:mod:`convbert.checkpoint_numpy`: safetensors
through NumPy, no torch).

The span-based dynamic convolution runs as K shifted multiply-adds (no ``unfold``), so the model
compiles with XLA (``tf.function(jit_compile=True)``).

Keras: TensorFlow >= 2.16 ships Keras 3 as ``tf.keras``; these models are written against it
(weights created up front in each layer, ``train_step`` overridden for ``fit`` on the models' own
losses) and use only APIs Keras 2 (``tf-keras``, ``TF_USE_LEGACY_KERAS=1``) has too. Keras 3 is
what ``pip install tensorflow`` brings, so the ``tf`` extra needs nothing more.

Processes that use PyTorch too: Triton's native library crashes the process when it is loaded
after TensorFlow, so import triton (or anything importing it: torch.compile, the Triton backend)
before TensorFlow. When torch is already imported, importing this module imports triton first.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

if "torch" in sys.modules and "tensorflow" not in sys.modules:
    # This process uses PyTorch as well: load Triton's native library before TensorFlow's, the
    # only order in which both can live in one process.
    try:
        import triton  # noqa: F401
    except Exception:  # not installed (or broken): nothing to protect
        pass

try:
    import tensorflow as tf
except ImportError as exc:  # pragma: no cover - exercised where TensorFlow is absent
    raise ImportError('The TensorFlow ConvBERT models need TensorFlow: pip install "convbert-kernels[tf]"') from exc

import numpy as np

from .checkpoint_numpy import (
    SAFE_WEIGHTS_NAME,
    CheckpointError,
    load_numpy_state_dict,
    map_checkpoint_keys,
    save_safetensors,
)
from .configuration import ConvBertConfig

keras = tf.keras
logger = logging.getLogger("convbert")

__all__ = [
    "TFConvBertModel",
    "TFConvBertPreTrainedModel",
    "TFConvBertForMaskedLM",
    "TFConvBertForSequenceClassification",
    "TFConvBertForMultipleChoice",
    "TFConvBertForTokenClassification",
    "TFConvBertForQuestionAnswering",
]

# ---- outputs ---------------------------------------------------------------------------------------


class TFModelOutput(OrderedDict):
    """Output fields by name (``out.logits``, ``out["logits"]``) or position (``out[0]``).

    As in transformers, positions and :meth:`to_tuple` skip fields that are None, so ``out[0]`` is
    the loss when labels were given and the logits otherwise.
    """

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                super().__setitem__(f.name, value)

    def __getitem__(self, key):
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
class TFBaseModelOutput(TFModelOutput):
    """``last_hidden_state`` [B, L, Hd]; ``hidden_states`` (embeddings + each layer) and ``attentions``
    ([B, n, L, L] per layer) when asked for."""

    last_hidden_state: tf.Tensor | None = None
    hidden_states: tuple[tf.Tensor, ...] | None = None
    attentions: tuple[tf.Tensor, ...] | None = None


@dataclass(eq=False)
class TFMaskedLMOutput(TFModelOutput):
    """``loss`` (n,) over the labels that are not -100; ``logits`` [B, L, V]."""

    loss: tf.Tensor | None = None
    logits: tf.Tensor | None = None
    hidden_states: tuple[tf.Tensor, ...] | None = None
    attentions: tuple[tf.Tensor, ...] | None = None


@dataclass(eq=False)
class TFSequenceClassifierOutput(TFMaskedLMOutput):
    """``loss`` (batch_size,); ``logits`` [B, num_labels]."""


@dataclass(eq=False)
class TFMultipleChoiceModelOutput(TFMaskedLMOutput):
    """``loss`` (batch_size,); ``logits`` [B, num_choices]."""


@dataclass(eq=False)
class TFTokenClassifierOutput(TFMaskedLMOutput):
    """``loss`` (n,) over the labels that are not -100; ``logits`` [B, L, num_labels]."""


@dataclass(eq=False)
class TFQuestionAnsweringModelOutput(TFModelOutput):
    """``loss`` (batch_size,); ``start_logits`` / ``end_logits`` [B, L]."""

    loss: tf.Tensor | None = None
    start_logits: tf.Tensor | None = None
    end_logits: tf.Tensor | None = None
    hidden_states: tuple[tf.Tensor, ...] | None = None
    attentions: tuple[tf.Tensor, ...] | None = None


# ---- layers -----------------------------------------------------------------------------------------

def _gelu(x):
    return tf.nn.gelu(x, approximate=False)


def _gelu_tanh(x):
    return tf.nn.gelu(x, approximate=True)


ACT2FN = {
    "gelu": _gelu,
    "relu": tf.nn.relu,
    "selu": tf.nn.selu,
    "silu": tf.nn.silu,
    "swish": tf.nn.silu,
    "tanh": tf.math.tanh,
    "gelu_new": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
}


def get_activation(name):
    """The activation a config's ``hidden_act`` names (or the callable itself)."""
    if callable(name):
        return name
    if name not in ACT2FN:
        raise ValueError(f"unsupported hidden_act {name!r}; supported: {sorted(ACT2FN)}")
    return ACT2FN[name]


# How a PyTorch tensor maps to the TF variable holding it: (to TF, back to PyTorch).
_LAYOUTS = {
    "same": (lambda w: w, lambda w: w),
    # nn.Linear weight [out, in] <-> Dense kernel [in, out]
    "linear": (lambda w: w.T, lambda w: w.T),
    # depthwise nn.Conv1d weight [C, 1, K] <-> [K, C]
    "depthwise": (lambda w: w[:, 0, :].T, lambda w: w.T[:, None, :]),
    # pointwise nn.Conv1d weight [A, C, 1] <-> [C, A]
    "pointwise": (lambda w: w[:, :, 0].T, lambda w: w.T[:, :, None]),
    # SeparableConv1D bias [A, 1] <-> [A]
    "column": (lambda w: w[:, 0], lambda w: w[:, None]),
}


class _Layer(keras.layers.Layer):
    """A layer whose weights exist from construction on and that lists them under PyTorch's names."""

    def __init__(self, name: str, initializer_range: float = 0.02):
        super().__init__(name=name)
        self._std = initializer_range

    def _weight(self, name, shape, init="normal"):
        initializer = {"normal": keras.initializers.RandomNormal(stddev=self._std),
                       "zeros": keras.initializers.Zeros(), "ones": keras.initializers.Ones()}[init]
        return self.add_weight(name=name, shape=tuple(shape), initializer=initializer, dtype="float32",
                               trainable=True)

    def torch_weights(self, prefix: str):
        """``(PyTorch state-dict key, variable, layout)`` for every weight, ``prefix`` included."""
        raise NotImplementedError


class _Dense(_Layer):
    """y = x W + b; PyTorch's ``nn.Linear`` (weight transposed)."""

    def __init__(self, in_features, out_features, name, std):
        super().__init__(name, std)
        self.kernel = self._weight("kernel", (in_features, out_features))
        self.bias = self._weight("bias", (out_features,), "zeros")
        self.built = True

    def call(self, x):
        return tf.matmul(x, self.kernel) + self.bias

    def torch_weights(self, prefix):
        return [(prefix + "weight", self.kernel, "linear"), (prefix + "bias", self.bias, "same")]


class _GroupedDense(_Layer):
    """A linear layer split into ``num_groups`` blocks (weight [G, in/G, out/G]); ``GroupedLinearLayer``."""

    def __init__(self, in_features, out_features, num_groups, name, std):
        super().__init__(name, std)
        self.num_groups, self.group_in, self.out_features = num_groups, in_features // num_groups, out_features
        self.kernel = self._weight("kernel", (num_groups, self.group_in, out_features // num_groups))
        self.bias = self._weight("bias", (out_features,), "zeros")
        self.built = True

    def call(self, x):
        leading = tf.shape(x)[:-1]
        groups = tf.reshape(x, [-1, self.num_groups, self.group_in])
        out = tf.einsum("ngi,gio->ngo", groups, self.kernel)
        return tf.reshape(out, tf.concat([leading, [self.out_features]], 0)) + self.bias

    def torch_weights(self, prefix):
        return [(prefix + "weight", self.kernel, "same"), (prefix + "bias", self.bias, "same")]


class _LayerNorm(_Layer):
    """LayerNorm over the last axis (biased variance, as PyTorch)."""

    def __init__(self, size, eps, name):
        super().__init__(name)
        self.eps = eps
        self.gamma = self._weight("gamma", (size,), "ones")
        self.beta = self._weight("beta", (size,), "zeros")
        self.built = True

    def call(self, x):
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + self.eps) * self.gamma + self.beta

    def torch_weights(self, prefix):
        return [(prefix + "weight", self.gamma, "same"), (prefix + "bias", self.beta, "same")]


def _dropout(x, rate, training):
    if training and rate > 0:
        return tf.nn.dropout(x, rate=rate)
    return x


def _check_ids(name, ids, upper):
    """``ids``, checked: out-of-range ids would index garbage (or zeros on a GPU), so fail clearly.

    Eagerly a ValueError; in a graph an assertion that runs before ``ids`` are used
    (InvalidArgumentError naming them); under XLA, which compiles assertions away, nothing.
    """
    if ids.shape.num_elements() == 0:
        return ids
    if tf.executing_eagerly():
        low, high = int(tf.reduce_min(ids)), int(tf.reduce_max(ids))
        if low < 0 or high >= upper:
            raise ValueError(f"{name} must lie in [0, {upper}), got values in [{low}, {high}]")
        return ids
    checks = [tf.debugging.assert_greater_equal(ids, tf.cast(0, ids.dtype), message=f"{name} must be >= 0"),
              tf.debugging.assert_less(ids, tf.cast(upper, ids.dtype), message=f"{name} must be < {upper}")]
    with tf.control_dependencies(checks):
        return tf.identity(ids)


def _check_labels(name, labels, upper, ignore=-100):
    """``labels``, checked: class labels must lie in [0, upper) or equal ``ignore`` (see :func:`_check_ids`)."""
    if not labels.dtype.is_integer or labels.shape.num_elements() == 0:
        return labels
    valid = tf.logical_or(tf.equal(labels, ignore), tf.logical_and(labels >= 0, labels < upper))
    if tf.executing_eagerly():
        if not bool(tf.reduce_all(valid)):
            bad = labels.numpy()[~valid.numpy()]
            raise ValueError(f"{name} must lie in [0, {upper}) (or be {ignore}), got {bad[:5].tolist()}")
        return labels
    check = tf.debugging.assert_equal(tf.reduce_all(valid), True,
                                      message=f"{name} must lie in [0, {upper}) or be {ignore}")
    with tf.control_dependencies([check]):
        return tf.identity(labels)


class TFConvBertEmbeddings(_Layer):
    """word + position + token type embeddings, LayerNorm, dropout."""

    def __init__(self, config: ConvBertConfig, name="embeddings"):
        super().__init__(name, config.initializer_range)
        self.config = config
        e = config.embedding_size
        self.word_embeddings = self._weight("word_embeddings", (config.vocab_size, e))
        pad = config.pad_token_id
        if pad is not None and 0 <= pad < config.vocab_size:  # as nn.Embedding(padding_idx=...) starts
            self.word_embeddings.assign(tf.tensor_scatter_nd_update(self.word_embeddings, [[pad]], tf.zeros([1, e])))
        self.position_embeddings = self._weight("position_embeddings", (config.max_position_embeddings, e))
        self.token_type_embeddings = self._weight("token_type_embeddings", (config.type_vocab_size, e))
        self.LayerNorm = _LayerNorm(e, config.layer_norm_eps, "LayerNorm")
        self.built = True

    def call(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, training=False):
        c = self.config
        if inputs_embeds is None:
            input_ids = _check_ids("input_ids", input_ids, c.vocab_size)
            inputs_embeds = tf.gather(self.word_embeddings, input_ids)
        shape = tf.shape(inputs_embeds)
        if position_ids is None:
            position_ids = tf.range(shape[1])[None, :]
        else:
            position_ids = _check_ids("position_ids", position_ids, c.max_position_embeddings)
        if token_type_ids is None:
            token_type_ids = tf.zeros(shape[:2], dtype=tf.int32)
        else:
            token_type_ids = _check_ids("token_type_ids", token_type_ids, c.type_vocab_size)
        embeddings = (inputs_embeds + tf.gather(self.position_embeddings, position_ids)
                      + tf.gather(self.token_type_embeddings, token_type_ids))
        return _dropout(self.LayerNorm(embeddings), c.hidden_dropout_prob, training)

    def torch_weights(self, prefix):
        return [(prefix + "word_embeddings.weight", self.word_embeddings, "same"),
                (prefix + "position_embeddings.weight", self.position_embeddings, "same"),
                (prefix + "token_type_embeddings.weight", self.token_type_embeddings, "same"),
                *self.LayerNorm.torch_weights(prefix + "LayerNorm.")]


def _shifted_sum(values, taps, kernel_size):
    """``out[:, t] = sum_k taps[..., k] * values[:, t + k - P]`` (P = (K - 1) // 2, zeros outside
    [0, L)) as K shifted multiply-adds. ``values`` [B, L, ...]; ``taps(k)`` broadcasts against them."""
    padding_l = (kernel_size - 1) // 2
    length = tf.shape(values)[1]
    pads = [[0, 0], [padding_l, kernel_size - 1 - padding_l]] + [[0, 0]] * (len(values.shape) - 2)
    padded = tf.pad(values, pads)
    out = taps(0) * padded[:, 0:length]
    for k in range(1, kernel_size):
        out = out + taps(k) * padded[:, k:k + length]
    return out


class TFConvBertSeparableConv1D(_Layer):
    """Depthwise convolution over the sequence (kernel K, zero padding), pointwise Hd -> A, plus bias."""

    def __init__(self, config: ConvBertConfig, input_filters, output_filters, kernel_size, name):
        super().__init__(name, config.initializer_range)
        self.kernel_size = kernel_size
        self.depthwise_kernel = self._weight("depthwise_kernel", (kernel_size, input_filters))
        self.pointwise_kernel = self._weight("pointwise_kernel", (input_filters, output_filters))
        self.bias = self._weight("bias", (output_filters,), "zeros")
        self.built = True

    def call(self, x):
        """[B, L, Hd] -> [B, L, A]."""
        depthwise = _shifted_sum(x, lambda k: self.depthwise_kernel[k], self.kernel_size)
        return tf.matmul(depthwise, self.pointwise_kernel) + self.bias

    def torch_weights(self, prefix):
        return [(prefix + "depthwise.weight", self.depthwise_kernel, "depthwise"),
                (prefix + "pointwise.weight", self.pointwise_kernel, "pointwise"),
                (prefix + "bias", self.bias, "column")]


def _span_dynamic_conv(values, logits, num_heads, kernel_size):
    """``out[b, t, h] = sum_k softmax(logits)[b, t, h, k] * values[b, t + k - P, h]``: [B, L, A]."""
    shape = tf.shape(values)
    batch, length = shape[0], shape[1]
    channels = values.shape[-1]
    probs = tf.nn.softmax(tf.reshape(logits, [batch, length, num_heads, kernel_size]), axis=-1)
    v = tf.reshape(values, [batch, length, num_heads, channels // num_heads])
    out = _shifted_sum(v, lambda k: probs[..., k:k + 1], kernel_size)
    return tf.reshape(out, [batch, length, channels])


class TFConvBertSelfAttention(_Layer):
    """The mixed block: n self-attention heads and n span-based dynamic convolution heads."""

    def __init__(self, config: ConvBertConfig, name="self"):
        super().__init__(name, config.initializer_range)
        self.config = config
        self.num_heads, self.head_size, self.all_head_size = config.num_heads, config.head_size, config.all_head_size
        hidden, std, a = config.hidden_size, config.initializer_range, config.all_head_size
        self.query = _Dense(hidden, a, "query", std)
        self.key = _Dense(hidden, a, "key", std)
        self.value = _Dense(hidden, a, "value", std)
        self.key_conv_attn_layer = TFConvBertSeparableConv1D(config, hidden, a, config.conv_kernel_size,
                                                             "key_conv_attn_layer")
        self.conv_kernel_layer = _Dense(a, self.num_heads * config.conv_kernel_size, "conv_kernel_layer", std)
        self.conv_out_layer = _Dense(hidden, a, "conv_out_layer", std)
        self.built = True

    def call(self, hidden_states, attention_mask=None, padding_mask=None, head_mask=None, output_attentions=False,
             training=False):
        """hidden_states [B, L, Hd]; attention_mask additive [B, 1, 1, L]; padding_mask [B, L, 1] float
        (1 = token), used only with ``conv_mask_padding``; head_mask [1, n, 1, 1].

        Returns (context [B, L, 2A], attention probabilities [B, n, L, L] or None).
        """
        n, d = self.num_heads, self.head_size
        query = self.query(hidden_states)
        conv_mask = padding_mask if self.config.conv_mask_padding else None
        conv_input = hidden_states if conv_mask is None else hidden_states * conv_mask
        key_conv = self.key_conv_attn_layer(conv_input)
        logits = self.conv_kernel_layer(key_conv * query)
        conv_values = self.conv_out_layer(hidden_states)
        if conv_mask is not None:
            conv_values = conv_values * conv_mask
        conv = _span_dynamic_conv(conv_values, logits, n, self.config.conv_kernel_size)

        shape = tf.shape(hidden_states)
        batch, length = shape[0], shape[1]

        def heads(x):  # [B, L, A] -> [B, n, L, d]
            return tf.transpose(tf.reshape(x, [batch, length, n, d]), [0, 2, 1, 3])

        scores = tf.matmul(heads(query), heads(self.key(hidden_states)), transpose_b=True) / math.sqrt(d)
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = tf.nn.softmax(scores, axis=-1)
        probs = _dropout(probs, self.config.attention_probs_dropout_prob, training)
        if head_mask is not None:
            probs = probs * head_mask
        context = tf.transpose(tf.matmul(probs, heads(self.value(hidden_states))), [0, 2, 1, 3])  # [B, L, n, d]
        mixed = tf.concat([context, tf.reshape(conv, [batch, length, n, d])], axis=2)
        return tf.reshape(mixed, [batch, length, 2 * n * d]), (probs if output_attentions else None)

    def torch_weights(self, prefix):
        out = []
        for name in ("query", "key", "value", "key_conv_attn_layer", "conv_kernel_layer", "conv_out_layer"):
            out += getattr(self, name).torch_weights(f"{prefix}{name}.")
        return out


class _DenseLayerNorm(_Layer):
    """LayerNorm(dropout(dense(x)) + residual): ``attention.output`` and ``output`` of a layer."""

    def __init__(self, config: ConvBertConfig, in_features, name, grouped=False):
        super().__init__(name, config.initializer_range)
        self.rate = config.hidden_dropout_prob
        self.dense = _feed_forward_dense(config, in_features, config.hidden_size, grouped)
        self.LayerNorm = _LayerNorm(config.hidden_size, config.layer_norm_eps, "LayerNorm")
        self.built = True

    def call(self, hidden_states, residual, training=False):
        return self.LayerNorm(_dropout(self.dense(hidden_states), self.rate, training) + residual)

    def torch_weights(self, prefix):
        return self.dense.torch_weights(prefix + "dense.") + self.LayerNorm.torch_weights(prefix + "LayerNorm.")


def _feed_forward_dense(config: ConvBertConfig, in_features, out_features, grouped):
    if grouped and config.num_groups > 1:
        return _GroupedDense(in_features, out_features, config.num_groups, "dense", config.initializer_range)
    return _Dense(in_features, out_features, "dense", config.initializer_range)


class TFConvBertAttention(_Layer):
    def __init__(self, config: ConvBertConfig, name="attention"):
        super().__init__(name)
        self.self_attention = TFConvBertSelfAttention(config, "self")
        self.dense_output = _DenseLayerNorm(config, config.hidden_size, "output")
        self.built = True

    def call(self, hidden_states, attention_mask=None, padding_mask=None, head_mask=None, output_attentions=False,
             training=False):
        context, probs = self.self_attention(hidden_states, attention_mask=attention_mask, padding_mask=padding_mask,
                                             head_mask=head_mask, output_attentions=output_attentions,
                                             training=training)
        return self.dense_output(context, hidden_states, training=training), probs

    def torch_weights(self, prefix):
        return self.self_attention.torch_weights(prefix + "self.") + self.dense_output.torch_weights(prefix + "output.")


class TFConvBertIntermediate(_Layer):
    def __init__(self, config: ConvBertConfig, name="intermediate"):
        super().__init__(name)
        self.dense = _feed_forward_dense(config, config.hidden_size, config.intermediate_size, grouped=True)
        self.intermediate_act_fn = get_activation(config.hidden_act)
        self.built = True

    def call(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))

    def torch_weights(self, prefix):
        return self.dense.torch_weights(prefix + "dense.")


class TFConvBertLayer(_Layer):
    """Mixed attention, then BERT's feed-forward block."""

    def __init__(self, config: ConvBertConfig, name):
        super().__init__(name)
        self.attention = TFConvBertAttention(config)
        self.intermediate = TFConvBertIntermediate(config)
        self.bert_output = _DenseLayerNorm(config, config.intermediate_size, "output", grouped=True)
        self.built = True

    def call(self, hidden_states, attention_mask=None, padding_mask=None, head_mask=None, output_attentions=False,
             training=False):
        attention_output, probs = self.attention(hidden_states, attention_mask=attention_mask,
                                                 padding_mask=padding_mask, head_mask=head_mask,
                                                 output_attentions=output_attentions, training=training)
        out = self.bert_output(self.intermediate(attention_output), attention_output, training=training)
        return out, probs

    def torch_weights(self, prefix):
        return (self.attention.torch_weights(prefix + "attention.")
                + self.intermediate.torch_weights(prefix + "intermediate.")
                + self.bert_output.torch_weights(prefix + "output."))


class TFConvBertMainLayer(_Layer):
    """The ConvBERT backbone: embeddings, optional projection E -> Hd, the encoder layers."""

    def __init__(self, config: ConvBertConfig, name="convbert"):
        super().__init__(name, config.initializer_range)
        self.config = config
        self.embeddings = TFConvBertEmbeddings(config)
        self.embeddings_project = None
        if config.embedding_size != config.hidden_size:
            self.embeddings_project = _Dense(config.embedding_size, config.hidden_size, "embeddings_project",
                                             config.initializer_range)
        self.layers_ = [TFConvBertLayer(config, f"layer_{i}") for i in range(config.num_hidden_layers)]
        self.built = True

    def runs_unpadded(self, attention_mask, head_mask, output_attentions) -> bool:
        """Whether the PyTorch model would drop the padding for this call (``config.unpad_inputs``): its
        outputs are then zeros at padding positions, which this model reproduces."""
        return bool(self.config.unpad_inputs and attention_mask is not None and not output_attentions
                    and head_mask is None)

    def _head_mask(self, head_mask):
        """[n] or [layers, n] (1 keeps a head, 0 drops it) -> [layers, 1, n, 1, 1]."""
        if head_mask is None:
            return None
        layers, heads = self.config.num_hidden_layers, self.config.num_heads
        head_mask = tf.cast(head_mask, tf.float32)
        if head_mask.shape.rank == 1 and head_mask.shape[0] == heads:
            head_mask = tf.broadcast_to(head_mask[None], [layers, heads])
        if head_mask.shape.rank != 2 or tuple(head_mask.shape) != (layers, heads):
            raise ValueError(f"head_mask must have shape [{heads}] or [{layers}, {heads}], "
                             f"got {tuple(head_mask.shape)}")
        return head_mask[:, None, :, None, None]

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=False, output_hidden_states=False, training=False):
        """Returns (last hidden state [B, L, Hd], hidden states or None, attentions or None)."""
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("pass either input_ids or inputs_embeds, not both")
        if input_ids is None and inputs_embeds is None:
            raise ValueError("pass input_ids or inputs_embeds")
        c = self.config
        if input_ids is not None:
            if input_ids.shape.rank != 2:
                raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
            if not input_ids.dtype.is_integer:
                raise TypeError(f"input_ids must be integers, got {input_ids.dtype.name}")
            shape = input_ids.shape
        else:
            if inputs_embeds.shape.rank != 3 or inputs_embeds.shape[-1] not in (None, c.embedding_size):
                raise ValueError(f"inputs_embeds must be [batch, length, {c.embedding_size}], "
                                 f"got shape {tuple(inputs_embeds.shape)}")
            shape = inputs_embeds.shape[:2]
        if shape[1] is not None and shape[1] > c.max_position_embeddings:
            raise ValueError(f"sequence length {shape[1]} exceeds max_position_embeddings={c.max_position_embeddings}")
        for name, value in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if value is not None and (value.shape.rank != 2 or not value.shape.is_compatible_with(shape)):
                raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")
        if position_ids is not None and (position_ids.shape.rank != 2
                                         or not position_ids.shape[1:].is_compatible_with(shape[1:])):
            raise ValueError(f"position_ids must have shape {tuple(shape)} (or [1, length]), "
                             f"got {tuple(position_ids.shape)}")

        hidden_states = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                                        inputs_embeds=inputs_embeds, training=training)
        if self.embeddings_project is not None:
            hidden_states = self.embeddings_project(hidden_states)

        additive_mask = padding_mask = None
        if attention_mask is not None:
            mask = tf.cast(attention_mask, hidden_states.dtype)
            if tf.executing_eagerly() and mask.shape.num_elements() and float(tf.reduce_max(mask)) > 1:
                raise ValueError("attention_mask numbers several documents per row (values > 1): the TensorFlow "
                                 "models do not pack documents; pass 1 for tokens and 0 for padding")
            additive_mask = (1.0 - mask[:, None, None, :]) * hidden_states.dtype.min
            padding_mask = mask[:, :, None]
        unpadded = self.runs_unpadded(attention_mask, head_mask, output_attentions)

        def padded(h):  # the unpadded PyTorch model returns zeros at padding
            return h * padding_mask if unpadded else h

        head_mask = self._head_mask(head_mask)
        all_hidden_states = (padded(hidden_states),) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for i, layer in enumerate(self.layers_):
            hidden_states, probs = layer(hidden_states, attention_mask=additive_mask, padding_mask=padding_mask,
                                         head_mask=None if head_mask is None else head_mask[i],
                                         output_attentions=output_attentions, training=training)
            if output_hidden_states:
                all_hidden_states += (padded(hidden_states),)
            if output_attentions:
                all_attentions += (probs,)
        return padded(hidden_states), all_hidden_states, all_attentions

    def torch_weights(self, prefix):
        out = self.embeddings.torch_weights(prefix + "embeddings.")
        if self.embeddings_project is not None:
            out += self.embeddings_project.torch_weights(prefix + "embeddings_project.")
        for i, layer in enumerate(self.layers_):
            out += layer.torch_weights(f"{prefix}encoder.layer.{i}.")
        return out


# ---- models -----------------------------------------------------------------------------------------

# The arguments of ``call`` in docstring order: a list or tuple as first argument maps onto them.
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "head_mask", "inputs_embeds",
                "output_attentions", "output_hidden_states", "return_dict")


class TFConvBertPreTrainedModel(keras.Model):
    """What every TF ConvBERT model shares: the input formats, checkpoints both ways, ``fit`` on the
    model's own loss.

    ``call`` accepts, as transformers' TF models do, all inputs as keyword arguments, or gathered in
    the first argument: one tensor (``input_ids``), a list or tuple in docstring order
    (``input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds, ...``,
    then the labels), or a dict keyed by argument names. NumPy arrays and tensors both work.
    """

    config_class = ConvBertConfig
    base_model_prefix = "convbert"
    #: names of the label arguments of ``call`` (what ``fit`` takes from the data)
    label_names: tuple[str, ...] = ("labels",)
    #: the PyTorch class of :mod:`convbert.modeling` with the same weights
    torch_class_name = "ConvBertModel"
    _tied_weights_keys: tuple[str, ...] = ()

    def __init__(self, config: ConvBertConfig, name: str | None = None, **kwargs):
        if not isinstance(config, ConvBertConfig):
            raise TypeError(f"config must be a ConvBertConfig, got {type(config).__name__}")
        super().__init__(name=name, **kwargs)
        self.config = config
        self._fit_loss_tracker = keras.metrics.Mean(name="loss")

    # ---- inputs ---------------------------------------------------------------------------------

    def _gather_inputs(self, first, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The inputs given in any of the three formats, as one dict keyed by argument names."""
        names = _INPUT_NAMES + self.label_names
        given = {}
        if isinstance(first, dict):
            unknown = sorted(set(first) - set(names))
            if unknown:
                raise ValueError(f"unknown input names {unknown}; {type(self).__name__} takes {list(names)}")
            given = dict(first)
        elif isinstance(first, (list, tuple)):
            if len(first) > len(names):
                raise ValueError(f"{type(self).__name__} takes at most {len(names)} inputs in a list "
                                 f"({list(names)}), got {len(first)}")
            given = dict(zip(names, first))
        elif first is not None:
            given = {"input_ids": first}
        for key, value in kwargs.items():
            if value is None:
                continue
            if given.get(key) is not None:
                raise ValueError(f"{key} given twice: in the first argument and as a keyword")
            given[key] = value
        out = {}
        for key in names:
            value = given.get(key)
            if value is None or key in ("output_attentions", "output_hidden_states", "return_dict"):
                out[key] = value
            else:
                out[key] = tf.convert_to_tensor(value)
        return out

    def _flags(self, inputs):
        c = self.config
        pick = lambda key, default: default if inputs[key] is None else bool(inputs[key])  # noqa: E731
        return (pick("output_attentions", c.output_attentions), pick("output_hidden_states", c.output_hidden_states),
                pick("return_dict", c.return_dict))

    def _backbone(self, inputs, training, flat=lambda t: t):
        output_attentions, output_hidden_states, _ = self._flags(inputs)
        return self.convbert(input_ids=flat(inputs["input_ids"]), attention_mask=flat(inputs["attention_mask"]),
                             token_type_ids=flat(inputs["token_type_ids"]), position_ids=flat(inputs["position_ids"]),
                             head_mask=inputs["head_mask"], inputs_embeds=flat(inputs["inputs_embeds"]),
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                             training=training)

    def _finish(self, output_cls, inputs, **fields_):
        out = output_cls(**fields_)
        return out if self._flags(inputs)[2] else out.to_tuple()

    # ---- losses ---------------------------------------------------------------------------------

    def _loss_terms(self, outputs, labels: dict[str, tf.Tensor]):
        """``[(per-item losses, weights)]``: the loss is the mean over terms of each term's weighted
        mean (weight 0: ignored). Heads override it."""
        raise NotImplementedError(f"{type(self).__name__} has no loss")

    def _documented_loss(self, terms):
        """The ``loss`` output: per example (batch_size,), the sum over terms of weighted losses / terms."""
        return tf.add_n([values * weights for values, weights in terms]) / len(terms)

    @staticmethod
    def reduce_loss(terms) -> tf.Tensor:
        """The scalar training loss (what the PyTorch heads return): per term, the mean over the items
        not ignored; then the mean over terms."""
        means = [tf.math.divide_no_nan(tf.reduce_sum(v * w), tf.reduce_sum(w)) for v, w in terms]
        return tf.add_n(means) / len(means)

    def _labels_given(self, inputs):
        given = [inputs[name] is not None for name in self.label_names]
        return all(given)

    def _token_loss(self, inputs, logits):
        """The per-token loss over the labels that are not -100 (shape (n,), as transformers' TF heads),
        or None without labels: masked LM and token classification."""
        if not self._labels_given(inputs):
            return None
        values, weights = self._loss_terms({"logits": logits}, inputs)[0]
        return tf.boolean_mask(values, weights > 0)

    # ---- Keras training ---------------------------------------------------------------------------

    def _split_data(self, data):
        unpack = getattr(keras.utils, "unpack_x_y_sample_weight")
        x, y, sample_weight = unpack(data)
        if sample_weight is not None:
            raise ValueError(f"{type(self).__name__}.fit trains on the model's own loss and takes no sample weights")
        if not isinstance(x, dict):
            x = {"input_ids": x} if not isinstance(x, (list, tuple)) else dict(zip(_INPUT_NAMES, x))
        inputs = {k: v for k, v in x.items() if k not in self.label_names}
        labels = {k: x[k] for k in self.label_names if k in x}
        if y is not None:
            if isinstance(y, dict):
                labels.update(y)
            elif isinstance(y, (list, tuple)):
                labels.update(zip(self.label_names, y))
            elif len(self.label_names) == 1:
                labels[self.label_names[0]] = y
            else:
                raise ValueError(f"give {list(self.label_names)} as a dict (in x or y)")
        missing = [k for k in self.label_names if labels.get(k) is None]
        if missing:
            raise ValueError(f"{type(self).__name__} trains on its own loss: the data must hold {missing} "
                             "(in the input dict, or as y)")
        return inputs, {k: tf.convert_to_tensor(labels[k]) for k in self.label_names}

    def _training_loss(self, data, training):
        inputs, labels = self._split_data(data)
        outputs = self(inputs, training=training, return_dict=True)
        return self.reduce_loss(self._loss_terms(outputs, labels))

    def train_step(self, data):
        """One optimizer step on the model's own loss (the PyTorch heads' scalar loss); no compiled
        loss needed: ``model.compile(optimizer=...)`` then ``model.fit(dict_with_labels)``."""
        with tf.GradientTape() as tape:
            loss = self._training_loss(data, training=True)
        variables = self.trainable_variables
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        self._fit_loss_tracker.update_state(loss)
        return {"loss": self._fit_loss_tracker.result()}

    def test_step(self, data):
        """``evaluate``: the model's own loss, dropout off."""
        self._fit_loss_tracker.update_state(self._training_loss(data, training=False))
        return {"loss": self._fit_loss_tracker.result()}

    def predict_step(self, data):
        """``predict``: the outputs as a plain dict of arrays (hidden states and attentions as tuples)."""
        x = keras.utils.unpack_x_y_sample_weight(data)[0]
        if not isinstance(x, dict):
            x = {"input_ids": x} if not isinstance(x, (list, tuple)) else dict(zip(_INPUT_NAMES, x))
        x = {k: v for k, v in x.items() if k not in self.label_names}
        return dict(self(x, training=False, return_dict=True))

    @property
    def metrics(self):
        return [self._fit_loss_tracker]

    # ---- checkpoints ------------------------------------------------------------------------------

    def torch_weights(self) -> dict[str, tuple[tf.Variable, str]]:
        """``{PyTorch state-dict key: (variable, layout)}``: where each weight of the PyTorch model lives."""
        return {key: (var, layout) for key, var, layout in self._torch_weight_list()}

    def _torch_weight_list(self):
        raise NotImplementedError

    def _tied_keys(self) -> set[str]:
        return set(self._tied_weights_keys) if self.config.tie_word_embeddings else set()

    def load_torch_state_dict(self, state_dict: dict[str, np.ndarray]) -> dict[str, list[str]]:
        """Load weights in the PyTorch layout and names; everything is checked before anything is assigned.

        Returns ``{"missing_keys": [...], "unexpected_keys": [...], "mismatched_keys": [], "error_msgs": []}``
        (as transformers' loading info). Raises CheckpointError for shapes that do not fit the config,
        non-floating weights, or a checkpoint none of whose keys is a weight of this model.
        """
        own = self.torch_weights()
        mapped = map_checkpoint_keys(state_dict, own, self.base_model_prefix)
        if not any(k in own for k in mapped):
            raise CheckpointError(
                f"none of the checkpoint's {len(state_dict)} tensors is a weight of {type(self).__name__} "
                f"(checkpoint keys: {sorted(state_dict)[:5]}; model keys: {list(own)[:5]}): not a ConvBERT checkpoint?")
        tied = self._tied_keys()
        info = {"missing_keys": sorted(k for k in own if k not in mapped and k not in tied),
                "unexpected_keys": sorted(k for k in mapped if k not in own and k not in tied),
                "mismatched_keys": [], "error_msgs": []}
        converted, mismatched, bad = {}, [], []
        for key, value in mapped.items():
            if key not in own or key in tied:  # a tied weight is loaded under the embedding's name
                continue
            variable, layout = own[key]
            value = np.asarray(value)
            if value.dtype.kind != "f":
                bad.append(f"{key} ({value.dtype})")
                continue
            expected = _LAYOUTS[layout][1](np.zeros(variable.shape, np.float32)).shape
            if value.shape != expected:
                mismatched.append(f"{key}: checkpoint {value.shape} vs model {expected}")
                continue
            converted[key] = (variable, _LAYOUTS[layout][0](value).astype(np.float32))
        if mismatched:
            raise CheckpointError("checkpoint shapes do not match the model config:\n  " + "\n  ".join(mismatched))
        if bad:
            raise CheckpointError(f"non-floating tensors where weights were expected: {bad}")
        for variable, value in converted.values():
            variable.assign(value)
        if info["missing_keys"]:
            logger.warning("%s: weights not in the checkpoint, newly initialised: %s", type(self).__name__,
                           info["missing_keys"])
        if info["unexpected_keys"]:
            logger.warning("%s: checkpoint weights not used: %s", type(self).__name__, info["unexpected_keys"])
        return info

    def torch_state_dict(self) -> dict[str, np.ndarray]:
        """The weights as the PyTorch model's state dict (NumPy arrays), tied weights stored once."""
        tied = self._tied_keys()
        return {key: np.ascontiguousarray(_LAYOUTS[layout][1](variable.numpy()))
                for key, (variable, layout) in self.torch_weights().items() if key not in tied}

    @classmethod
    def from_pretrained(cls, pretrained_path: str | os.PathLike, *, config: ConvBertConfig | None = None,
                        output_loading_info: bool = False, **config_overrides: Any):
        """Load a model from a checkpoint directory the PyTorch classes or transformers wrote.

        Args:
            pretrained_path: directory with ``config.json`` and ``model.safetensors`` (or a sharded
                ``model.safetensors.index.json``, ``pytorch_model.bin`` or ``pytorch_model.bin.index.json``;
                the pickle is read without torch and without running code).
            config: use this config instead of the directory's ``config.json``.
            output_loading_info: also return a dict with ``missing_keys``, ``unexpected_keys``,
                ``mismatched_keys`` and ``error_msgs``.
            **config_overrides: config keys to override, e.g. ``hidden_dropout_prob=0.0``.

        Backbone and head checkpoints load into either (the ``convbert.`` prefix is added or
        stripped); head weights missing from a backbone checkpoint stay freshly initialised (logged).

        Raises:
            FileNotFoundError: no such directory, or no config/weights in it.
            CheckpointError: unreadable weights, a malformed shard index, an interrupted save
                (``FINAL_SAVE_INCOMPLETE``), shapes that do not fit the config, or a checkpoint none
                of whose keys match the model.
            ValueError: an invalid config file or override.
        """
        directory = Path(pretrained_path)
        if not directory.is_dir():
            raise FileNotFoundError(f"checkpoint directory {pretrained_path!s} does not exist")
        if config is None:
            config = ConvBertConfig.from_pretrained(directory, **config_overrides)
        else:
            config = copy.deepcopy(config).apply_overrides(**config_overrides)
        state_dict = load_numpy_state_dict(directory)
        model = cls(config)
        try:
            info = model.load_torch_state_dict(state_dict)
        except CheckpointError as exc:
            raise CheckpointError(f"{directory}: {exc}") from exc
        return (model, info) if output_loading_info else model

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` in the PyTorch layout; return the directory.

        ``convbert.<PyTorch class>.from_pretrained`` and transformers load the result with the same
        numbers. Tied weights are stored once, under the embedding's name; the config records
        ``architectures`` (the PyTorch class) and ``dtype``. Files are written under temporary names
        and renamed.
        """
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{directory} exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.torch_state_dict(), directory / SAFE_WEIGHTS_NAME)
        config = copy.deepcopy(self.config)
        config.architectures = [self.torch_class_name]
        config.dtype = "float32"
        if getattr(config, "torch_dtype", None) is not None:
            config.torch_dtype = "float32"
        config.save_pretrained(directory)
        return directory

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(ConvBertConfig.from_dict(config["config"]), name=config.get("name"))

    def get_input_embeddings(self) -> tf.Variable:
        """The word embedding matrix [V, E]."""
        return self.convbert.embeddings.word_embeddings


def _call_doc(extra: str = "") -> str:
    return f"""Run the model.

        Args:
            input_ids: [B, L] token ids (NumPy array or tensor), or all inputs gathered in one tensor,
                list (docstring order) or dict.
            attention_mask: [B, L], 1 for tokens, 0 for padding.
            token_type_ids: [B, L] segment ids (default 0).
            position_ids: [B, L] positions (default 0..L-1).
            head_mask: [n] or [num_layers, n]; 0 silences a self-attention head.
            inputs_embeds: [B, L, E] instead of ``input_ids``.
            output_attentions, output_hidden_states, return_dict: default to the config's.{extra}
            training: dropout on when True.
        """


class TFConvBertModel(TFConvBertPreTrainedModel):
    """The bare ConvBERT encoder, outputting hidden states (``TFBaseModelOutput``)."""

    torch_class_name = "ConvBertModel"
    label_names = ()

    def __init__(self, config: ConvBertConfig, name: str | None = None, **kwargs):
        super().__init__(config, name=name, **kwargs)
        self.convbert = TFConvBertMainLayer(config, name="convbert")

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, training=False):
        inputs = self._gather_inputs(input_ids, dict(
            attention_mask=attention_mask, token_type_ids=token_type_ids, position_ids=position_ids,
            head_mask=head_mask, inputs_embeds=inputs_embeds, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=return_dict))
        last, hidden_states, attentions = self._backbone(inputs, training)
        return self._finish(TFBaseModelOutput, inputs, last_hidden_state=last, hidden_states=hidden_states,
                            attentions=attentions)

    call.__doc__ = _call_doc()

    def _torch_weight_list(self):
        return self.convbert.torch_weights("")


class _HeadModel(TFConvBertPreTrainedModel):
    """A backbone under ``convbert`` plus a head."""

    def __init__(self, config: ConvBertConfig, name: str | None = None, **kwargs):
        super().__init__(config, name=name, **kwargs)
        self.convbert = TFConvBertMainLayer(config, name="convbert")

    def _classifier_dropout(self):
        c = self.config
        return c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, labels=None,
             training=False):
        inputs = self._gather_inputs(input_ids, dict(
            attention_mask=attention_mask, token_type_ids=token_type_ids, position_ids=position_ids,
            head_mask=head_mask, inputs_embeds=inputs_embeds, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=return_dict, labels=labels))
        return self._head_call(inputs, training)

    call.__doc__ = _call_doc("\n            labels: the head's labels (see the class docstring); ``loss`` is returned "
                             "when they are given.")

    def _torch_weight_list(self):
        return self.convbert.torch_weights("convbert.") + self._head_weights()


def _sparse_ce(logits, labels, ignore=-100):
    """Per-item cross-entropy and weights (0 where ``labels == ignore``)."""
    labels = tf.cast(labels, tf.int32)
    keep = tf.not_equal(labels, ignore)
    safe = tf.where(keep, labels, tf.zeros_like(labels))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
    return ce, tf.cast(keep, ce.dtype)


class TFConvBertGeneratorPredictions(_Layer):
    """dense Hd -> E, gelu, LayerNorm(E): the transform before the tied output projection."""

    def __init__(self, config: ConvBertConfig, name="generator_predictions"):
        super().__init__(name, config.initializer_range)
        self.dense = _Dense(config.hidden_size, config.embedding_size, "dense", config.initializer_range)
        self.LayerNorm = _LayerNorm(config.embedding_size, config.layer_norm_eps, "LayerNorm")
        self.built = True

    def call(self, hidden_states):
        return self.LayerNorm(_gelu(self.dense(hidden_states)))

    def torch_weights(self, prefix):
        return self.dense.torch_weights(prefix + "dense.") + self.LayerNorm.torch_weights(prefix + "LayerNorm.")


class TFConvBertForMaskedLM(_HeadModel):
    """ConvBERT with a masked-language-modelling head (output weight tied to the word embeddings).

    ``loss`` has shape (n,): one cross-entropy per label that is not -100.
    """

    torch_class_name = "ConvBertForMaskedLM"
    _tied_weights_keys = ("generator_lm_head.weight",)

    def __init__(self, config: ConvBertConfig, name: str | None = None, **kwargs):
        super().__init__(config, name=name, **kwargs)
        self.generator_predictions = TFConvBertGeneratorPredictions(config)
        self.generator_lm_head_bias = self.add_weight(name="generator_lm_head_bias", shape=(config.vocab_size,),
                                                      initializer="zeros", dtype="float32")
        self.generator_lm_head_weight = None
        if not config.tie_word_embeddings:
            self.generator_lm_head_weight = self.add_weight(
                name="generator_lm_head_weight", shape=(config.vocab_size, config.embedding_size),
                initializer=keras.initializers.RandomNormal(stddev=config.initializer_range), dtype="float32")

    def _output_weight(self):
        if self.generator_lm_head_weight is not None:
            return self.generator_lm_head_weight
        return self.convbert.embeddings.word_embeddings

    def _head_call(self, inputs, training):
        last, hidden_states, attentions = self._backbone(inputs, training)
        logits = tf.matmul(self.generator_predictions(last), self._output_weight(), transpose_b=True)
        logits = logits + self.generator_lm_head_bias
        loss = self._token_loss(inputs, logits)
        return self._finish(TFMaskedLMOutput, inputs, loss=loss, logits=logits, hidden_states=hidden_states,
                            attentions=attentions)


    def _loss_terms(self, outputs, labels):
        logits, target = outputs["logits"], labels["labels"]
        target = _check_labels("labels", target, self.config.vocab_size)
        return [_sparse_ce(tf.reshape(logits, [-1, logits.shape[-1]]), tf.reshape(target, [-1]))]

    def _head_weights(self):
        out = self.generator_predictions.torch_weights("generator_predictions.")
        out.append(("generator_lm_head.bias", self.generator_lm_head_bias, "same"))
        out.append(("generator_lm_head.weight", self._output_weight(), "same"))
        return out


class TFConvBertClassificationHead(_Layer):
    """First token -> dropout -> dense -> activation -> dropout -> out_proj."""

    def __init__(self, config: ConvBertConfig, dropout: float, name="classifier"):
        super().__init__(name, config.initializer_range)
        std = config.initializer_range
        self.rate = dropout
        self.dense = _Dense(config.hidden_size, config.hidden_size, "dense", std)
        self.out_proj = _Dense(config.hidden_size, config.num_labels, "out_proj", std)
        self.activation = get_activation(config.hidden_act)
        self.built = True

    def call(self, hidden_states, training=False):
        x = _dropout(hidden_states[:, 0, :], self.rate, training)
        x = _dropout(self.activation(self.dense(x)), self.rate, training)
        return self.out_proj(x)

    def torch_weights(self, prefix):
        return self.dense.torch_weights(prefix + "dense.") + self.out_proj.torch_weights(prefix + "out_proj.")


class TFConvBertForSequenceClassification(_HeadModel):
    """Sequence classification or regression (``num_labels == 1``) from the first token.

    ``loss`` has shape (batch_size,): per example, the cross-entropy (0 for a label of -100), the
    squared error (regression) or the mean binary cross-entropy over the labels (multi-label), as
    ``config.problem_type`` says or, when it is None, as the PyTorch head infers it: regression for
    one label, single-label for integer labels, multi-label otherwise.
    """

    torch_class_name = "ConvBertForSequenceClassification"

    def __init__(self, config: ConvBertConfig, name: str | None = None, **kwargs):
        super().__init__(config, name=name, **kwargs)
        self.classifier = TFConvBertClassificationHead(config, self._classifier_dropout())

    def _head_call(self, inputs, training):
        last, hidden_states, attentions = self._backbone(inputs, training)
        logits = self.classifier(last, training=training)
        loss = None
        if self._labels_given(inputs):
            loss = self._documented_loss(self._loss_terms({"logits": logits}, inputs))
        return self._finish(TFSequenceClassifierOutput, inputs, loss=loss, logits=logits,
                            hidden_states=hidden_states, attentions=attentions)


    def _problem_type(self, labels):
        c = self.config
        if c.problem_type is not None:
            return c.problem_type
        if c.num_labels == 1:
            return "regression"
        return "single_label_classification" if labels.dtype.is_integer else "multi_label_classification"

    def _loss_terms(self, outputs, labels):
        logits, target = outputs["logits"], labels["labels"]
        problem = self._problem_type(target)
        if problem == "regression":
            target = tf.cast(target, logits.dtype)
            if self.config.num_labels == 1:
                errors = tf.square(tf.reshape(logits, [-1]) - tf.reshape(target, [-1]))
            else:
                errors = tf.reduce_mean(tf.square(logits - target), axis=-1)
            return [(errors, tf.ones_like(errors))]
        if problem == "single_label_classification":
            if target.shape.rank != 1:
                raise ValueError(f"single-label classification labels must be [batch_size], got {tuple(target.shape)}")
            target = _check_labels("labels", target, self.config.num_labels)
            return [_sparse_ce(logits, target)]
        if problem == "multi_label_classification":
            per_label = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(target, logits.dtype), logits=logits)
            per_example = tf.reduce_mean(per_label, axis=-1)
            return [(per_example, tf.ones_like(per_example))]
        raise ValueError(f"unknown problem_type {problem!r}")

    def _head_weights(self):
        return self.classifier.torch_weights("classifier.")


class TFConvBertForMultipleChoice(_HeadModel):
    """Scores each of C choices ([B, C, L] inputs) from the last token of its sequence.

    As the PyTorch head, the padded model reads position L - 1 (a padding position for a choice
    shorter than the batch); with ``config.unpad_inputs`` each choice's last real token.
    ``loss`` has shape (batch_size,).
    """

    torch_class_name = "ConvBertForMultipleChoice"

    def __init__(self, config: ConvBertConfig, name: str | None = None, **kwargs):
        super().__init__(config, name=name, **kwargs)
        self.classifier = _Dense(config.hidden_size, 1, "classifier", config.initializer_range)

    def _head_call(self, inputs, training):
        ids, embeds = inputs["input_ids"], inputs["inputs_embeds"]
        reference = ids if ids is not None else embeds
        if reference is None:
            raise ValueError("pass input_ids or inputs_embeds")
        rank = 3 if ids is not None else 4
        if reference.shape.rank != rank:
            raise ValueError(f"{'input_ids' if ids is not None else 'inputs_embeds'} must be "
                             f"[batch, num_choices, length{', E' if rank == 4 else ''}], got {tuple(reference.shape)}")
        num_choices = tf.shape(reference)[1]
        for name in ("attention_mask", "token_type_ids", "position_ids"):
            if inputs[name] is not None and inputs[name].shape.rank != 3:
                raise ValueError(f"{name} must be [batch, num_choices, length], got {tuple(inputs[name].shape)}")

        def flat(t):  # [B, C, ...] -> [B * C, ...]
            return None if t is None else tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0))

        last, hidden_states, attentions = self._backbone(inputs, training, flat)
        length = tf.shape(last)[1]
        output_attentions = self._flags(inputs)[0]
        if self.convbert.runs_unpadded(inputs["attention_mask"], inputs["head_mask"], output_attentions):
            mask = tf.cast(flat(inputs["attention_mask"]), tf.int32) > 0
            positions = tf.where(mask, tf.range(length)[None, :], -1)
            index = tf.reduce_max(positions, axis=1)  # -1: an empty choice reads the last position, as PyTorch
            index = tf.where(index < 0, length - 1, index)
            summary = tf.gather(last, index, batch_dims=1)
        else:
            summary = last[:, -1]
        logits = tf.reshape(self.classifier(summary), [-1, num_choices])
        loss = None
        if self._labels_given(inputs):
            loss = self._documented_loss(self._loss_terms({"logits": logits}, inputs))
        return self._finish(TFMultipleChoiceModelOutput, inputs, loss=loss, logits=logits,
                            hidden_states=hidden_states, attentions=attentions)


    def _loss_terms(self, outputs, labels):
        logits, target = outputs["logits"], labels["labels"]
        if logits.shape[-1] is not None:
            target = _check_labels("labels", target, logits.shape[-1])
        return [_sparse_ce(logits, target)]

    def _head_weights(self):
        return self.classifier.torch_weights("classifier.")


class TFConvBertForTokenClassification(_HeadModel):
    """Per-token labels (e.g. NER): dropout then a linear layer on every hidden state.

    ``loss`` has shape (n,): one cross-entropy per label that is not -100.
    """

    torch_class_name = "ConvBertForTokenClassification"

    def __init__(self, config: ConvBertConfig, name: str | None = None, **kwargs):
        super().__init__(config, name=name, **kwargs)
        self.classifier = _Dense(config.hidden_size, config.num_labels, "classifier", config.initializer_range)

    def _head_call(self, inputs, training):
        last, hidden_states, attentions = self._backbone(inputs, training)
        logits = self.classifier(_dropout(last, self._classifier_dropout(), training))
        loss = self._token_loss(inputs, logits)
        return self._finish(TFTokenClassifierOutput, inputs, loss=loss, logits=logits, hidden_states=hidden_states,
                            attentions=attentions)


    def _loss_terms(self, outputs, labels):
        logits, target = outputs["logits"], labels["labels"]
        target = _check_labels("labels", target, self.config.num_labels)
        return [_sparse_ce(tf.reshape(logits, [-1, self.config.num_labels]), tf.reshape(target, [-1]))]

    def _head_weights(self):
        return self.classifier.torch_weights("classifier.")


class TFConvBertForQuestionAnswering(_HeadModel):
    """Extractive QA: start and end logits over the tokens.

    ``loss`` has shape (batch_size,): per example, the mean of the start and end cross-entropies;
    positions are clamped to [0, L] and a position clamped to L (outside the sequence) adds nothing.
    Averaged over the positions that count, the losses give the PyTorch head's loss. With
    ``config.unpad_inputs`` the logits at padding are the lowest float32, as in the PyTorch head.
    """

    torch_class_name = "ConvBertForQuestionAnswering"
    label_names = ("start_positions", "end_positions")

    def __init__(self, config: ConvBertConfig, name: str | None = None, **kwargs):
        if config.num_labels != 2:
            raise ValueError(f"question answering needs num_labels=2 (start and end logits), got {config.num_labels}")
        super().__init__(config, name=name, **kwargs)
        self.qa_outputs = _Dense(config.hidden_size, config.num_labels, "qa_outputs", config.initializer_range)

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None,
             start_positions=None, end_positions=None, training=False):
        inputs = self._gather_inputs(input_ids, dict(
            attention_mask=attention_mask, token_type_ids=token_type_ids, position_ids=position_ids,
            head_mask=head_mask, inputs_embeds=inputs_embeds, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=return_dict, start_positions=start_positions,
            end_positions=end_positions))
        last, hidden_states, attentions = self._backbone(inputs, training)
        logits = self.qa_outputs(last)
        start_logits, end_logits = logits[..., 0], logits[..., 1]
        if self.convbert.runs_unpadded(inputs["attention_mask"], inputs["head_mask"], self._flags(inputs)[0]):
            padding = tf.equal(tf.cast(inputs["attention_mask"], tf.int32), 0)
            lowest = tf.fill(tf.shape(start_logits), start_logits.dtype.min)
            start_logits, end_logits = tf.where(padding, lowest, start_logits), tf.where(padding, lowest, end_logits)
        loss = None
        if self._labels_given(inputs):
            loss = self._documented_loss(self._loss_terms({"start_logits": start_logits, "end_logits": end_logits},
                                                          inputs))
        return self._finish(TFQuestionAnsweringModelOutput, inputs, loss=loss, start_logits=start_logits,
                            end_logits=end_logits, hidden_states=hidden_states, attentions=attentions)

    call.__doc__ = _call_doc("\n            start_positions, end_positions: [B] positions of the answer span; "
                             "clamped to [0, L], L (outside the sequence) is ignored.")

    def _loss_terms(self, outputs, labels):
        terms = []
        for logits, positions in ((outputs["start_logits"], labels["start_positions"]),
                                  (outputs["end_logits"], labels["end_positions"])):
            length = tf.shape(logits)[1]
            positions = tf.clip_by_value(tf.reshape(tf.cast(positions, tf.int32), [-1]), 0, length)
            ignored = tf.where(tf.equal(positions, length), tf.fill(tf.shape(positions), -100), positions)
            terms.append(_sparse_ce(logits, ignored))
        return terms

    def _head_weights(self):
        return self.qa_outputs.torch_weights("qa_outputs.")


MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (TFConvBertModel, TFConvBertForMaskedLM, TFConvBertForSequenceClassification,
                TFConvBertForMultipleChoice, TFConvBertForTokenClassification, TFConvBertForQuestionAnswering)
}
