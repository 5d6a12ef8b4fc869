"""Unpadded ("packed") batches: the real tokens of a padded batch, back to back, and how to run
ConvBERT's sequence-mixing parts on them without ever crossing from one sequence into the next.

``ConvBertConfig(unpad_inputs=True)`` drops padding once after the embeddings and restores it after
the last layer; in between every per-token layer (projections, feed-forward, LayerNorm) runs on the
``T`` real tokens only, and the three parts that mix tokens do so within each sequence:

* the dynamic convolution: :func:`convbert_kernels.span_dynamic_conv` with ``cu_seqlens``;
* the separable convolution: the tokens are spread into a buffer with ``K // 2`` zero rows between
  sequences, so one ``Conv1d`` over it reads exactly the zeros a sequence alone would read;
* self-attention: the varlen flash kernel (``torch.nn.attention.varlen``) on CUDA in fp16/bf16
  without attention dropout; elsewhere one ``scaled_dot_product_attention`` per sequence, which on
  CPU beats padding back to a rectangle (benchmarks/bench_unpad.py measured both).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PackedBatch:
    """Where the real tokens of a ``[B, L]`` batch sit, and what the packed layers need.

    Attributes:
        indices: ``[T]`` flattened positions ``b * L + t`` of the real tokens, in order.
        cu_seqlens: int32 ``[N + 1]``, the sequences' starts in the packed order (N = B, or more
            with document-packed rows; rows without tokens have no sequence).
        lengths: the N sequence lengths on the host (for per-sequence attention on CPU).
        batch, length: the padded shape.
        spaced_index: ``[T]``, each token's row in the separable convolution's spaced buffer.
        spaced_length: that buffer's rows.
    """

    indices: torch.Tensor
    cu_seqlens: torch.Tensor
    lengths: tuple[int, ...]
    batch: int
    length: int
    spaced_index: torch.Tensor
    spaced_length: int

    @classmethod
    def from_attention_mask(cls, attention_mask: torch.Tensor, conv_kernel_size: int) -> "PackedBatch":
        """Pack the tokens where ``attention_mask`` ``[B, L]`` is non-zero. Host synchronisations: the
        mask checks, the number of sequences and tokens, and the lengths (once per model call).

        A 0/1 mask holds one sequence per row. Document-packed rows (``convbert-train pretrain
        --pack-documents``) number their documents instead, ``1 1 1 2 2 3 0 0``: each run of one
        number is a sequence of its own, which no attention or window leaves. Each row's tokens
        must be one contiguous block (right or left padding), with non-decreasing numbers: anything
        else would pack tokens next to each other that are apart in the padded batch.
        """
        if attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be [B, L], got shape {tuple(attention_mask.shape)}")
        ids = attention_mask.long()
        batch, length = ids.shape
        real = ids != 0
        counts = real.sum(dim=1)
        positions = torch.arange(length, device=ids.device)
        first = torch.where(real, positions, length).amin(dim=1)
        last = torch.where(real, positions, -1).amax(dim=1)
        holes = (counts > 0) & (last - first + 1 != counts)  # one block: its span equals its count
        prev = F.pad(ids[:, :-1], (1, 0))
        decreasing = (real & (prev != 0) & (ids < prev)).any(dim=1) | (ids < 0).any(dim=1)
        # a sequence starts at a real token whose predecessor is padding, another document or the row's start
        starts = real & (ids != prev)
        flags = torch.cat([holes, decreasing]).tolist()
        if any(flags[:batch]):
            raise ValueError("unpad_inputs needs each row of attention_mask to be one contiguous block of non-zero "
                             "entries (right or left padding); a mask with holes would join tokens that are apart")
        if any(flags[batch:]):
            raise ValueError("document numbers in attention_mask must be positive and non-decreasing along a row "
                             "(1 1 2 2 3 0 0)")
        start_rows = starts.flatten().nonzero().squeeze(1)
        indices = real.flatten().nonzero().squeeze(1)
        total = indices.numel()
        # each sequence start's rank among the real tokens: cu_seqlens
        rank = torch.cumsum(real.flatten(), 0) - 1
        cu_seqlens = torch.cat([rank[start_rows], rank.new_tensor([total])]).to(torch.int32)
        seq_lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        lengths = tuple(seq_lengths.tolist())
        # sequence i's tokens move down by i * gap rows: gap zero rows between neighbours
        gap = conv_kernel_size // 2
        seq_ids = torch.repeat_interleave(torch.arange(len(lengths), device=ids.device), seq_lengths,
                                          output_size=total)
        spaced_index = torch.arange(total, device=ids.device) + gap * seq_ids
        return cls(indices, cu_seqlens, lengths, batch, length, spaced_index, total + gap * max(len(lengths) - 1, 0))

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """``[B, L, ...]`` -> ``[T, ...]``: the real tokens only."""
        return padded.flatten(0, 1).index_select(0, self.indices)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``[T, ...]`` -> ``[B, L, ...]`` with zeros at the padded positions."""
        out = packed.new_zeros(self.batch * self.length, *packed.shape[1:])
        return out.index_copy(0, self.indices, packed).view(self.batch, self.length, *packed.shape[1:])

    def depthwise_conv(self, conv: torch.nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        """A centred depthwise ``Conv1d`` (zero padding K // 2) over each sequence of ``x`` ``[T, C]``."""
        spaced = x.new_zeros(self.spaced_length, x.shape[1]).index_copy(0, self.spaced_index, x)
        out = conv(spaced.t().unsqueeze(0)).squeeze(0).t()  # [spaced_length, C]
        return out.index_select(0, self.spaced_index)

    def attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int,
                  dropout_p: float = 0.0) -> torch.Tensor:
        """Self-attention within each sequence: ``[T, A]`` projections -> ``[T, n, d]``."""
        total = query.shape[0]
        q, k, v = (x.view(total, num_heads, -1) for x in (query, key, value))
        if _flash_varlen_usable(q, dropout_p):
            from torch.nn.attention.varlen import varlen_attn

            length = self.length  # an upper bound of every sequence: no synchronisation for the true maximum
            return varlen_attn(q, k, v, self.cu_seqlens, self.cu_seqlens, length, length)
        outputs, start = [], 0
        for n in self.lengths:
            if n:
                qs, ks, vs = (x[start:start + n].transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # [1, n, L, d]
                outputs.append(F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout_p)[0].transpose(0, 1))
            start += n
        return torch.cat(outputs) if outputs else q.new_zeros(q.shape)


def _flash_varlen_usable(q: torch.Tensor, dropout_p: float) -> bool:
    """The varlen flash kernel: CUDA, fp16/bf16, no dropout (it takes none), where torch has it."""
    if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and dropout_p == 0.0):
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True
