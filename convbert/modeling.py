"""ConvBERT (Jiang et al., 2020): BERT whose layers mix self-attention heads with span-based
dynamic convolution heads.

Module and parameter names follow Hugging Face's implementation so checkpoints load both ways.
The convolution branch runs through :func:`convbert_kernels.span_dynamic_conv`, on the backend
named by ``config.conv_backend``.

One mixed-attention layer, for hidden states x [B, L, Hd] (n heads of size d, A = n * d):

    q, k, v   = query(x), key(x), value(x)                          [B, L, A]
    ks        = SeparableConv1D(x)                                  [B, L, A]
    conv      = span_dynamic_conv(q, ks, conv_out_layer(x), W, b)   [B, L, A]
    attn      = softmax(q k^T / sqrt(d) + mask) v                   [B, L, A]
    self_out  = concat(attn, conv) per head                         [B, L, 2A]
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from convbert_kernels import load_backends
from convbert_kernels.mixed_attention import attention_branch, conv_branch, mix_heads

from .configuration import ConvBertConfig
from .packing import PackedBatch
from .outputs import (
    BaseModelOutputWithCrossAttentions,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from .pretrained import PreTrainedMixin

ACT2FN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "selu": F.selu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def get_activation(name: str | Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    if callable(name):
        return name
    if name not in ACT2FN:
        raise ValueError(f"unsupported hidden_act {name!r}; supported: {sorted(ACT2FN)}")
    return ACT2FN[name]


class ConvBertEmbeddings(nn.Module):
    """word + position + token type embeddings, LayerNorm, dropout."""

    def __init__(self, config: ConvBertConfig):
        super().__init__()
        self.config = config
        pad = config.pad_token_id
        padding_idx = pad if pad is not None and 0 <= pad < config.vocab_size else None
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=padding_idx)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.embedding_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.embedding_size)
        self.LayerNorm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None) -> torch.Tensor:
        if inputs_embeds is None:
            _check_ids("input_ids", input_ids, self.config.vocab_size)
            inputs_embeds = self.word_embeddings(input_ids)
        batch, length = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(length, device=inputs_embeds.device).unsqueeze(0)
        else:
            _check_ids("position_ids", position_ids, self.config.max_position_embeddings)
        if token_type_ids is None:
            token_type_ids = torch.zeros((batch, length), dtype=torch.long, device=inputs_embeds.device)
        else:
            _check_ids("token_type_ids", token_type_ids, self.config.type_vocab_size)
        embeddings = inputs_embeds + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings))


def _check_ids(name: str, ids: torch.Tensor, upper: int) -> None:
    """Out-of-range ids would index garbage (or assert inside a CUDA kernel): fail clearly.

    Skipped under torch.compile, where a data-dependent branch cannot be traced into one graph.
    """
    if ids.numel() == 0 or torch.compiler.is_compiling():
        return
    low, high = torch.aminmax(ids)
    if low.item() < 0 or high.item() >= upper:
        raise ValueError(f"{name} must lie in [0, {upper}), got values in [{low.item()}, {high.item()}]")


class SeparableConv1D(nn.Module):
    """Depthwise conv over the sequence (kernel K, zero padding) then pointwise Hd -> A, plus bias."""

    def __init__(self, config: ConvBertConfig, input_filters: int, output_filters: int, kernel_size: int):
        super().__init__()
        self.depthwise = nn.Conv1d(input_filters, input_filters, kernel_size, groups=input_filters,
                                   padding=kernel_size // 2, bias=False)
        self.pointwise = nn.Conv1d(input_filters, output_filters, kernel_size=1, bias=False)
        self.bias = nn.Parameter(torch.zeros(output_filters, 1))

    def forward(self, hidden_states: torch.Tensor, packed: PackedBatch | None = None) -> torch.Tensor:
        """[B, L, Hd] -> [B, L, A]; or packed tokens [T, Hd] -> [T, A], each sequence on its own."""
        if packed is not None:
            x = packed.depthwise_conv(self.depthwise, hidden_states)
            return F.linear(x, self.pointwise.weight.squeeze(-1)) + self.bias.squeeze(-1)
        x = self.pointwise(self.depthwise(hidden_states.transpose(1, 2))) + self.bias
        return x.transpose(1, 2)


class ConvBertSelfAttention(nn.Module):
    """The mixed block: n self-attention heads and n span-based dynamic convolution heads."""

    def __init__(self, config: ConvBertConfig):
        super().__init__()
        self.config = config
        self.num_attention_heads = config.num_heads
        self.attention_head_size = config.head_size
        self.all_head_size = config.all_head_size
        self.conv_kernel_size = config.conv_kernel_size
        hidden = config.hidden_size

        self.query = nn.Linear(hidden, self.all_head_size)
        self.key = nn.Linear(hidden, self.all_head_size)
        self.value = nn.Linear(hidden, self.all_head_size)
        self.key_conv_attn_layer = SeparableConv1D(config, hidden, self.all_head_size, self.conv_kernel_size)
        self.conv_kernel_layer = nn.Linear(self.all_head_size, self.num_attention_heads * self.conv_kernel_size)
        self.conv_out_layer = nn.Linear(hidden, self.all_head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(self, hidden_states, attention_mask=None, padding_mask=None, head_mask=None, output_attentions=False,
                packed: PackedBatch | None = None):
        """hidden_states [B, L, Hd]; attention_mask additive [B, 1, 1, L]; padding_mask [B, L] (1 = token).
        Or, with ``packed``, the real tokens alone, [T, Hd] (the masks unused).

        Returns (context [B, L, 2A] or [T, 2A], attention probabilities [B, n, L, L] or None).
        """
        if packed is not None:
            return self._forward_packed(hidden_states, packed), None
        query = self.query(hidden_states)
        conv_mask = padding_mask if self.config.conv_mask_padding else None
        conv_input = hidden_states
        if conv_mask is not None:
            # the separable convolution reads K neighbours too: padding must be zeros there as well,
            # or a sequence's outputs depend on the padding around it
            conv_input = hidden_states.masked_fill(~conv_mask.bool()[..., None], 0)
        conv = conv_branch(
            query, self.key_conv_attn_layer(conv_input), self.conv_out_layer(hidden_states), self.conv_kernel_layer,
            self.num_attention_heads, padding_mask=conv_mask, backend=self.config.conv_backend,
        )
        context, probs = attention_branch(
            query, self.key(hidden_states), self.value(hidden_states), self.num_attention_heads,
            attention_mask=attention_mask, dropout=self.dropout, head_mask=head_mask, need_probs=output_attentions,
        )
        return mix_heads(context, conv), probs

    def _forward_packed(self, hidden_states: torch.Tensor, packed: PackedBatch) -> torch.Tensor:
        """The same block on packed tokens [T, Hd]: no token reads across a sequence boundary."""
        query = self.query(hidden_states)
        conv = conv_branch(
            query, self.key_conv_attn_layer(hidden_states, packed), self.conv_out_layer(hidden_states),
            self.conv_kernel_layer, self.num_attention_heads, cu_seqlens=packed.cu_seqlens,
            backend=self.config.conv_backend,
        )
        dropout_p = self.dropout.p if self.training else 0.0
        context = packed.attention(query, self.key(hidden_states), self.value(hidden_states),
                                   self.num_attention_heads, dropout_p)
        return mix_heads(context.unsqueeze(0), conv.unsqueeze(0)).squeeze(0)


class ConvBertSelfOutput(nn.Module):
    def __init__(self, config: ConvBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class ConvBertAttention(nn.Module):
    def __init__(self, config: ConvBertConfig):
        super().__init__()
        self.self = ConvBertSelfAttention(config)
        self.output = ConvBertSelfOutput(config)

    def forward(self, hidden_states, attention_mask=None, padding_mask=None, head_mask=None, output_attentions=False,
                packed=None):
        context, probs = self.self(hidden_states, attention_mask, padding_mask, head_mask, output_attentions, packed)
        return self.output(context, hidden_states), probs


class GroupedLinearLayer(nn.Module):
    """A linear layer split into ``num_groups`` independent blocks (weight [G, in/G, out/G])."""

    def __init__(self, input_size: int, output_size: int, num_groups: int):
        super().__init__()
        self.num_groups = num_groups
        self.group_in_dim = input_size // num_groups
        self.output_size = output_size
        self.weight = nn.Parameter(torch.empty(num_groups, self.group_in_dim, output_size // num_groups))
        self.bias = nn.Parameter(torch.empty(output_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        leading = hidden_states.shape[:-1]
        x = hidden_states.reshape(-1, self.num_groups, self.group_in_dim).transpose(0, 1)  # [G, N, in/G]
        x = torch.bmm(x, self.weight).transpose(0, 1)  # [N, G, out/G]
        return x.reshape(*leading, self.output_size) + self.bias


def _feed_forward_dense(config: ConvBertConfig, input_size: int, output_size: int) -> nn.Module:
    if config.num_groups == 1:
        return nn.Linear(input_size, output_size)
    return GroupedLinearLayer(input_size, output_size, config.num_groups)


class ConvBertIntermediate(nn.Module):
    def __init__(self, config: ConvBertConfig):
        super().__init__()
        self.dense = _feed_forward_dense(config, config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = get_activation(config.hidden_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class ConvBertOutput(nn.Module):
    def __init__(self, config: ConvBertConfig):
        super().__init__()
        self.dense = _feed_forward_dense(config, config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class ConvBertLayer(nn.Module):
    """Mixed attention, then BERT's feed-forward block."""

    def __init__(self, config: ConvBertConfig):
        super().__init__()
        self.attention = ConvBertAttention(config)
        self.intermediate = ConvBertIntermediate(config)
        self.output = ConvBertOutput(config)

    def forward(self, hidden_states, attention_mask=None, padding_mask=None, head_mask=None, output_attentions=False,
                packed=None):
        attention_output, probs = self.attention(hidden_states, attention_mask, padding_mask, head_mask,
                                                 output_attentions, packed)
        return self.output(self.intermediate(attention_output), attention_output), probs


class ConvBertEncoder(nn.Module):
    def __init__(self, config: ConvBertConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([ConvBertLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, hidden_states, attention_mask=None, padding_mask=None, head_mask=None,
                output_attentions=False, output_hidden_states=False, return_dict=True, packed=None):
        """``packed``: run on the packed real tokens [T, Hd] (see :mod:`convbert.packing`); the
        returned hidden states are padded back to [B, L, Hd], zeros at padding."""
        def padded(h):
            return h if packed is None else packed.unpack(h)

        all_hidden_states = (padded(hidden_states),) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for i, layer in enumerate(self.layer):
            layer_head_mask = head_mask[i] if head_mask is not None else None
            if self.gradient_checkpointing and self.training:
                hidden_states, probs = checkpoint(layer, hidden_states, attention_mask, padding_mask, layer_head_mask,
                                                  output_attentions, packed, use_reentrant=False)
            else:
                hidden_states, probs = layer(hidden_states, attention_mask, padding_mask, layer_head_mask,
                                             output_attentions, packed)
            if output_hidden_states:
                all_hidden_states += (padded(hidden_states),)
            if output_attentions:
                all_attentions += (probs,)
        out = BaseModelOutputWithCrossAttentions(
            last_hidden_state=padded(hidden_states), hidden_states=all_hidden_states, attentions=all_attentions
        )
        return out if return_dict else out.to_tuple()


class ConvBertPreTrainedModel(PreTrainedMixin, nn.Module):
    """Weight initialisation, gradient checkpointing and the checkpoint round trip shared by all models."""

    config_class = ConvBertConfig
    base_model_prefix = "convbert"

    def __init__(self, config: ConvBertConfig):
        super().__init__()
        if not isinstance(config, ConvBertConfig):
            raise TypeError(f"config must be a ConvBertConfig, got {type(config).__name__}")
        self.config = config
        # the conv backend is imported now (only it: an eager model never builds the native
        # extension), so torch.compile never has to import one mid-trace
        load_backends(config.conv_backend)

    def post_init(self) -> None:
        self.apply(self._init_weights)
        self.tie_weights()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, SeparableConv1D):
            nn.init.zeros_(module.bias)
        elif isinstance(module, GroupedLinearLayer):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            nn.init.zeros_(module.bias)

    def tie_weights(self) -> None:
        """Share the output projection with the word embeddings where the model has one."""

    def get_input_embeddings(self) -> nn.Embedding:
        """The word embeddings (``embeddings.word_embeddings`` of the ConvBERT backbone)."""
        backbone = getattr(self, self.base_model_prefix, None)
        if isinstance(backbone, ConvBertPreTrainedModel) and backbone is not self:
            return backbone.get_input_embeddings()
        raise NotImplementedError(f"{type(self).__name__} has no word embeddings")

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        """Replace the word embeddings of the ConvBERT backbone."""
        backbone = getattr(self, self.base_model_prefix, None)
        if isinstance(backbone, ConvBertPreTrainedModel) and backbone is not self:
            return backbone.set_input_embeddings(value)
        raise NotImplementedError(f"{type(self).__name__} has no word embeddings")

    def get_output_embeddings(self) -> nn.Linear | None:
        """The output projection onto the vocabulary, ``None`` for a model without one."""
        return None

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Resize the word embeddings (and the masked-LM output layer) to ``new_num_tokens`` ids.

        Call it after adding tokens to the tokenizer: ``model.resize_token_embeddings(len(tokenizer))``. The rows of
        the existing ids are kept; growing adds rows at the end, shrinking removes the last ones. Then
        ``config.vocab_size`` is the new size, and the output layer of :class:`ConvBertForMaskedLM`, tied to the
        embeddings, stays tied (its bias gets 0 for the new ids, as in ``transformers``).

        New rows are initialised as in ``transformers`` 5: with ``mean_resizing`` (the default) from a normal
        distribution with the old rows' mean and a ``1e-9``-scaled covariance (so, very nearly their mean: a new
        token starts as an "average" token and changes the model's outputs little); with
        ``mean_resizing=False`` like ``_init_weights``: normal with mean 0 and std ``config.initializer_range``.
        An output layer not tied to the embeddings gets new rows the same way, and new bias entries equal to the
        old bias' mean (``mean_resizing``) or 0.

        Args:
            new_num_tokens: the new number of ids; ``None`` keeps the current one (only ``pad_to_multiple_of``
                applies then, if given).
            pad_to_multiple_of: round the number of ids up to a multiple of this (e.g. 64 for tensor cores).
            mean_resizing: initialise new rows around the old rows' mean (see above).

        Returns:
            The word embedding module (the same module, holding a new weight ``Parameter``: rebuild optimizers).
        """
        for name, value in (("new_num_tokens", new_num_tokens), ("pad_to_multiple_of", pad_to_multiple_of)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        embeddings = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return embeddings
        size = embeddings.num_embeddings if new_num_tokens is None else new_num_tokens
        if pad_to_multiple_of is not None:
            size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
        old_size = embeddings.num_embeddings

        output = self.get_output_embeddings()
        tied = output is not None and output.weight is embeddings.weight
        embeddings.weight = nn.Parameter(self._resized_rows(embeddings.weight, size, mean_resizing),
                                         requires_grad=embeddings.weight.requires_grad)
        embeddings.num_embeddings = size
        if embeddings.padding_idx is not None and embeddings.padding_idx >= size:
            embeddings.padding_idx = None
        if output is not None:
            if not tied:
                output.weight = nn.Parameter(self._resized_rows(output.weight, size, mean_resizing),
                                             requires_grad=output.weight.requires_grad)
            if output.bias is not None:
                bias = output.bias.detach()
                grown = torch.zeros(max(size - old_size, 0), dtype=bias.dtype, device=bias.device)
                if mean_resizing and not tied and grown.numel():
                    grown += bias.float().mean().to(bias.dtype)
                output.bias = nn.Parameter(torch.cat([bias[:size], grown]), requires_grad=output.bias.requires_grad)
            output.out_features = size
        self.config.vocab_size = size
        self.tie_weights()
        return embeddings

    def _resized_rows(self, weight: torch.Tensor, size: int, mean_resizing: bool) -> torch.Tensor:
        """``weight`` [V, E] cut or grown to [size, E]; see :meth:`resize_token_embeddings` for the new rows."""
        old = weight.detach()
        added = size - old.shape[0]
        if added <= 0:
            return old[:size].clone()
        if mean_resizing:
            rows = old.float()
            mean = rows.mean(0)
            centred = rows - mean
            covariance = 1e-9 * (centred.T @ centred) / rows.shape[0]
            factor, info = torch.linalg.cholesky_ex(covariance)
            new = mean.expand(added, -1).clone()
            if info.item() == 0:  # positive definite: sample around the mean, else use the mean alone
                new += torch.randn(added, rows.shape[1], device=rows.device) @ factor.T
        else:
            new = torch.empty(added, old.shape[1], device=old.device).normal_(0.0, self.config.initializer_range)
        return torch.cat([old, new.to(old.dtype)])

    def _encoders(self):
        return [m for m in self.modules() if isinstance(m, ConvBertEncoder)]

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each layer's activations in backward instead of storing them."""
        for encoder in self._encoders():
            encoder.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for encoder in self._encoders():
            encoder.gradient_checkpointing = False

    # transformers' newer names for the same switches
    activation_checkpointing_enable = gradient_checkpointing_enable
    activation_checkpointing_disable = gradient_checkpointing_disable

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(e.gradient_checkpointing for e in self._encoders())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _flags(self, output_attentions, output_hidden_states, return_dict):
        c = self.config
        return (
            c.output_attentions if output_attentions is None else output_attentions,
            c.output_hidden_states if output_hidden_states is None else output_hidden_states,
            c.return_dict if return_dict is None else return_dict,
        )


class ConvBertModel(ConvBertPreTrainedModel):
    """The bare ConvBERT encoder, outputting hidden states."""

    def __init__(self, config: ConvBertConfig):
        super().__init__(config)
        self.embeddings = ConvBertEmbeddings(config)
        if config.embedding_size != config.hidden_size:
            self.embeddings_project = nn.Linear(config.embedding_size, config.hidden_size)
        self.encoder = ConvBertEncoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def _head_mask(self, head_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """[n] or [layers, n] (1 keeps a head, 0 drops it) -> [layers, 1, n, 1, 1]."""
        if head_mask is None:
            return None
        layers, heads = self.config.num_hidden_layers, self.config.num_heads
        if head_mask.dim() == 1 and head_mask.shape[0] == heads:
            head_mask = head_mask.expand(layers, -1)
        if head_mask.dim() != 2 or tuple(head_mask.shape) != (layers, heads):
            raise ValueError(
                f"head_mask must have shape [{heads}] or [{layers}, {heads}], got {tuple(head_mask.shape)}")
        return head_mask[:, None, :, None, None].to(dtype)

    def runs_unpadded(self, attention_mask, head_mask=None, output_attentions=None) -> bool:
        """Whether a call with these arguments drops the padding (``config.unpad_inputs``): it does
        when there is an ``attention_mask`` and neither attention probabilities nor a ``head_mask``
        are asked for (those run the padded path, which gives the same numbers)."""
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        return bool(self.config.unpad_inputs and attention_mask is not None and not output_attentions
                    and head_mask is None)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        """Encode a batch; returns ``BaseModelOutputWithCrossAttentions`` (or a tuple).

        Args:
            input_ids: [B, L] token ids (or ``inputs_embeds`` [B, L, E], not both).
            attention_mask: [B, L], 1 for tokens, 0 for padding. With ``config.unpad_inputs`` a row
                may number several packed documents instead (``1 1 2 2 2 0``): none then sees another.
            token_type_ids: [B, L] segment ids (default 0).
            position_ids: [B, L] positions (default 0..L-1).
            head_mask: [n] or [num_layers, n]; 0 silences a self-attention head.
            output_attentions, output_hidden_states, return_dict: as in Hugging Face.
        """
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict)
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("pass either input_ids or inputs_embeds, not both")
        if input_ids is None and inputs_embeds is None:
            raise ValueError("pass input_ids or inputs_embeds")
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        if len(shape) != 2:
            raise ValueError(f"inputs must be [batch, length], got shape {tuple(shape)}")
        if shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {shape[1]} exceeds max_position_embeddings={self.config.max_position_embeddings}"
            )
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(shape):
            raise ValueError(f"attention_mask must have shape {tuple(shape)}, got {tuple(attention_mask.shape)}")

        hidden_states = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        if hasattr(self, "embeddings_project"):
            hidden_states = self.embeddings_project(hidden_states)

        if self.runs_unpadded(attention_mask, head_mask, output_attentions):
            # drop the padding once; every layer then runs on the real tokens only
            packed = PackedBatch.from_attention_mask(attention_mask, self.config.conv_kernel_size)
            return self.encoder(packed.pack(hidden_states), output_hidden_states=output_hidden_states,
                                return_dict=return_dict, packed=packed)

        additive_mask = None
        if attention_mask is not None:
            if not torch.compiler.is_compiling() and attention_mask.numel() and attention_mask.max() > 1:
                raise ValueError("attention_mask numbers several documents per row (values > 1): that needs "
                                 "unpad_inputs=True, without output_attentions or head_mask")
            # Broadcast over heads and queries; masked keys get the dtype's most negative value.
            mask = attention_mask[:, None, None, :].to(hidden_states.dtype)
            additive_mask = (1.0 - mask) * torch.finfo(hidden_states.dtype).min

        return self.encoder(
            hidden_states,
            attention_mask=additive_mask,
            padding_mask=attention_mask,
            head_mask=self._head_mask(head_mask, hidden_states.dtype),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )


def _finish(output_cls, return_dict: bool, **fields_):
    out = output_cls(**fields_)
    return out if return_dict else out.to_tuple()


class ConvBertGeneratorPredictions(nn.Module):
    """dense Hd -> E, gelu, LayerNorm(E): the transform before the tied output projection."""

    def __init__(self, config: ConvBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)
        self.LayerNorm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(hidden_states)))


class ConvBertForMaskedLM(ConvBertPreTrainedModel):
    """ConvBERT with a masked-language-modelling head (output weight tied to the word embeddings)."""

    _tied_weights_keys = {"generator_lm_head.weight": "convbert.embeddings.word_embeddings.weight"}

    def __init__(self, config: ConvBertConfig):
        super().__init__(config)
        self.convbert = ConvBertModel(config)
        self.generator_predictions = ConvBertGeneratorPredictions(config)
        self.generator_lm_head = nn.Linear(config.embedding_size, config.vocab_size)
        self.post_init()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.generator_lm_head.weight = self.convbert.embeddings.word_embeddings.weight

    def get_output_embeddings(self) -> nn.Linear:
        """The output projection onto the vocabulary (its weight is the word embeddings when tied)."""
        return self.generator_lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        """Replace the output projection onto the vocabulary."""
        self.generator_lm_head = value

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        """``labels`` [B, L]: target ids, -100 where no loss is taken. Returns ``MaskedLMOutput``."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        backbone = self.convbert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                 position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                                 output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                 return_dict=True)
        sequence = backbone.last_hidden_state
        logits = self.generator_lm_head(self.generator_predictions(sequence))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.config.vocab_size), labels.view(-1), ignore_index=-100)
        return _finish(MaskedLMOutput, return_dict, loss=loss, logits=logits, hidden_states=backbone.hidden_states,
                       attentions=backbone.attentions)


class ConvBertClassificationHead(nn.Module):
    """First token -> dropout -> dense -> activation -> dropout -> out_proj."""

    def __init__(self, config: ConvBertConfig):
        super().__init__()
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)
        self.activation = get_activation(config.hidden_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = self.dropout(hidden_states[:, 0, :])
        x = self.dropout(self.activation(self.dense(x)))
        return self.out_proj(x)


class ConvBertForSequenceClassification(ConvBertPreTrainedModel):
    """Sequence classification or regression (``num_labels == 1``) from the first token."""

    def __init__(self, config: ConvBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.convbert = ConvBertModel(config)
        self.classifier = ConvBertClassificationHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        """``labels``: [B] class ids, [B] floats (regression) or [B, num_labels] (multi-label)."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        backbone = self.convbert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                 position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                                 output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                 return_dict=True)
        sequence = backbone.last_hidden_state
        logits = self.classifier(sequence)
        loss = None if labels is None else self._loss(logits, labels)
        return _finish(SequenceClassifierOutput, return_dict, loss=loss, logits=logits,
                       hidden_states=backbone.hidden_states, attentions=backbone.attentions)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        config = self.config
        if config.problem_type is None:
            if self.num_labels == 1:
                config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                config.problem_type = "single_label_classification"
            else:
                config.problem_type = "multi_label_classification"
        if config.problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if config.problem_type == "single_label_classification":
            if labels.numel() and not torch.compiler.is_compiling() and (
                    labels.max() >= self.num_labels or labels.min() < -100):
                raise ValueError(
                    f"labels must lie in [0, {self.num_labels}) (or be -100), got max {labels.max().item()}")
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        if config.problem_type == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        raise ValueError(f"unknown problem_type {config.problem_type!r}")


class ConvBertForMultipleChoice(ConvBertPreTrainedModel):
    """Scores each of C choices ([B, C, L] inputs) from the last token of its sequence.

    As Hugging Face's, the padded model reads position L - 1: for a choice shorter than the batch
    that is a padding position. The unpadded model (``config.unpad_inputs``) computes nothing at
    padding, so it reads each choice's last real token instead; the two agree wherever no choice
    is padded at its end.
    """

    def __init__(self, config: ConvBertConfig):
        super().__init__(config)
        self.convbert = ConvBertModel(config)
        self.sequence_summary = nn.Identity()  # Hugging Face's "last token" summary has no weights
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        """Inputs [B, C, L] (``inputs_embeds`` [B, C, L, E]); ``labels`` [B] the right choice."""
        num_choices = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]

        def flat(t):
            return None if t is None else t.reshape(-1, *t.shape[2:])

        return_dict = self.config.return_dict if return_dict is None else return_dict
        backbone = self.convbert(input_ids=flat(input_ids), attention_mask=flat(attention_mask),
                                 token_type_ids=flat(token_type_ids), position_ids=flat(position_ids),
                                 head_mask=head_mask, inputs_embeds=flat(inputs_embeds),
                                 output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                 return_dict=True)
        sequence = backbone.last_hidden_state
        last = sequence.shape[1] - 1
        if self.convbert.runs_unpadded(attention_mask, head_mask, output_attentions):
            positions = torch.arange(sequence.shape[1], device=sequence.device)
            last = torch.where(flat(attention_mask).bool(), positions, -1).amax(dim=1)  # -1: an empty choice
        summary = sequence[torch.arange(sequence.shape[0], device=sequence.device), last]
        logits = self.classifier(self.sequence_summary(summary)).view(-1, num_choices)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return _finish(MultipleChoiceModelOutput, return_dict, loss=loss, logits=logits,
                       hidden_states=backbone.hidden_states, attentions=backbone.attentions)


class ConvBertForTokenClassification(ConvBertPreTrainedModel):
    """Per-token labels (e.g. NER): dropout then a linear layer on every hidden state."""

    def __init__(self, config: ConvBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.convbert = ConvBertModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        """``labels`` [B, L] class ids, -100 where no loss is taken."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        backbone = self.convbert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                 position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                                 output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                 return_dict=True)
        sequence = backbone.last_hidden_state
        logits = self.classifier(self.dropout(sequence))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1), ignore_index=-100)
        return _finish(TokenClassifierOutput, return_dict, loss=loss, logits=logits,
                       hidden_states=backbone.hidden_states, attentions=backbone.attentions)


class ConvBertForQuestionAnswering(ConvBertPreTrainedModel):
    """Extractive QA: start and end logits over the tokens.

    As Hugging Face's, the padded model scores padding positions too (its logits there come from
    the hidden states computed at padding). The unpadded model (``config.unpad_inputs``) computes
    nothing at padding: its logits there are the dtype's lowest value, so no answer starts or ends
    in padding and the loss is the padded model's with padding positions left out of the softmax.
    """

    def __init__(self, config: ConvBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.convbert = ConvBertModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, start_positions=None, end_positions=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        """``start_positions`` / ``end_positions`` [B]; positions outside [0, L) are ignored."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        backbone = self.convbert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                 position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                                 output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                 return_dict=True)
        sequence = backbone.last_hidden_state
        start_logits, end_logits = self.qa_outputs(sequence).split(1, dim=-1)
        start_logits, end_logits = start_logits.squeeze(-1).contiguous(), end_logits.squeeze(-1).contiguous()
        if self.convbert.runs_unpadded(attention_mask, head_mask, output_attentions):
            padding = attention_mask == 0
            lowest = torch.finfo(start_logits.dtype).min
            start_logits, end_logits = start_logits.masked_fill(padding, lowest), end_logits.masked_fill(padding, lowest)
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.size(1)  # a clamped out-of-range position becomes L, the ignore index
            start = start_positions.reshape(-1).clamp(0, ignored)
            end = end_positions.reshape(-1).clamp(0, ignored)
            loss = (F.cross_entropy(start_logits, start, ignore_index=ignored)
                    + F.cross_entropy(end_logits, end, ignore_index=ignored)) / 2
        return _finish(QuestionAnsweringModelOutput, return_dict, loss=loss, start_logits=start_logits,
                       end_logits=end_logits, hidden_states=backbone.hidden_states, attentions=backbone.attentions)


MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (ConvBertModel, ConvBertForMaskedLM, ConvBertForSequenceClassification, ConvBertForMultipleChoice,
                ConvBertForTokenClassification, ConvBertForQuestionAnswering)
}
