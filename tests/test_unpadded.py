"""The unpadded model (``ConvBertConfig(unpad_inputs=True)``) against the padded one with
``conv_mask_padding=True``: the same outputs at real tokens, losses and gradients, for every head,
at trained-weight scale (where a leak of padding would show)."""

from __future__ import annotations

import pytest
import torch

import convbert
from convbert import ConvBertConfig
from convbert.packing import PackedBatch

SMALL = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
             embedding_size=24, max_position_embeddings=16, hidden_dropout_prob=0.0,
             attention_probs_dropout_prob=0.0, conv_kernel_size=5, conv_mask_padding=True, num_labels=3)


def _pair(cls, backend="eager", **overrides):
    """(padded model, unpadded model) with the same weights at trained-weight scale."""
    torch.manual_seed(0)
    padded = cls(ConvBertConfig(**{**SMALL, "conv_backend": backend, **overrides}))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in padded.named_parameters():
            if p.dim() > 1 and "LayerNorm" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    unpadded = cls(ConvBertConfig(**{**SMALL, "conv_backend": backend, "unpad_inputs": True, **overrides}))
    unpadded.load_state_dict(padded.state_dict())
    return padded.eval(), unpadded.eval()


def _batch(lengths, length=12, left=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, SMALL["vocab_size"], (len(lengths), length), generator=g)
    mask = torch.zeros(len(lengths), length, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            mask[i, length - n:] = 1
        else:
            mask[i, :n] = 1
    return ids, mask


def _grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b, what, tol=2e-5):
    err = (a - b).abs().max().item() if a.numel() else 0.0
    scale = max(b.abs().max().item() if b.numel() else 0.0, 1.0)
    assert err <= tol * scale, f"{what}: max difference {err:.3e} (scale {scale:.2e})"


@pytest.mark.parametrize("backend", ["eager", "native"])
@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_model_outputs_at_real_tokens_and_gradients_equal_the_padded_model(backend, left):
    padded, unpadded = _pair(convbert.ConvBertModel, backend)
    ids, mask = _batch([12, 7, 1, 3, 0], left=left)  # full, shorter, L = 1, L < K, empty
    real = mask.bool()
    out_p = padded(ids, attention_mask=mask, output_hidden_states=True)
    out_u = unpadded(ids, attention_mask=mask, output_hidden_states=True)
    for i, (hp, hu) in enumerate(zip(out_p.hidden_states, out_u.hidden_states)):
        _assert_same(hu[real], hp[real], f"hidden state {i}")
        assert hu[~real].abs().max() == 0, "padded positions are zeros"
    upstream = torch.randn(out_p.last_hidden_state.shape, generator=torch.Generator().manual_seed(2)) * real[..., None]
    (out_p.last_hidden_state * upstream).sum().backward()
    (out_u.last_hidden_state * upstream).sum().backward()
    grads_p, grads_u = _grads(padded), _grads(unpadded)
    assert grads_p.keys() == grads_u.keys()
    for name in grads_p:
        _assert_same(grads_u[name], grads_p[name], f"d {name}")


HEADS = [
    (convbert.ConvBertForMaskedLM, "mlm"),
    (convbert.ConvBertForSequenceClassification, "seq"),
    (convbert.ConvBertForTokenClassification, "tok"),
    (convbert.ConvBertForQuestionAnswering, "qa"),
    (convbert.ConvBertForMultipleChoice, "mc"),
]


def _head_inputs(kind, ids, mask):
    g = torch.Generator().manual_seed(3)
    batch, length = ids.shape
    if kind == "mlm":
        return dict(labels=ids.masked_fill(mask == 0, -100))
    if kind == "seq":
        return dict(labels=torch.randint(0, 3, (batch,), generator=g))
    if kind == "tok":
        return dict(labels=torch.randint(0, 3, (batch, length), generator=g).masked_fill(mask == 0, -100))
    if kind == "qa":
        lengths = mask.sum(1)  # answers inside the real tokens
        return dict(start_positions=(torch.rand(batch, generator=g) * lengths).long(),
                    end_positions=(torch.rand(batch, generator=g) * lengths).long())
    return dict(labels=torch.randint(0, 2, (batch // 2,), generator=g))


@pytest.mark.parametrize("cls, kind", HEADS, ids=[k for _, k in HEADS])
def test_every_head_gives_the_padded_models_loss_and_gradients(cls, kind):
    padded, unpadded = _pair(cls, **({"num_labels": 2} if kind == "qa" else {}))
    ids, mask = _batch([12, 7, 12, 4])
    if kind == "mc":  # two questions of two choices, left-padded: position L - 1 is real on both paths
        ids, mask = _batch([12, 7, 12, 4], left=True)
        ids, mask = ids.view(2, 2, -1), mask.view(2, 2, -1)
    extra = _head_inputs(kind, ids.view(-1, ids.shape[-1]), mask.view(-1, mask.shape[-1]))
    out_p = padded(ids, attention_mask=mask, **extra)
    out_u = unpadded(ids, attention_mask=mask, **extra)
    if kind == "qa":  # the unpadded head leaves padding out of the softmax (see its docstring): so does the reference
        padding = mask == 0
        start = out_p.start_logits.masked_fill(padding, torch.finfo(torch.float32).min)
        end = out_p.end_logits.masked_fill(padding, torch.finfo(torch.float32).min)
        _assert_same(out_u.start_logits[~padding], start[~padding], "qa start logits")
        out_p.loss = (torch.nn.functional.cross_entropy(start, extra["start_positions"])
                      + torch.nn.functional.cross_entropy(end, extra["end_positions"])) / 2
    _assert_same(out_u.loss, out_p.loss, f"{kind} loss")
    out_p.loss.backward()
    out_u.loss.backward()
    grads_p, grads_u = _grads(padded), _grads(unpadded)
    for name in grads_p:
        _assert_same(grads_u[name], grads_p[name], f"{kind} d {name}")


def test_multiple_choice_reads_each_choices_last_real_token():
    padded, unpadded = _pair(convbert.ConvBertForMultipleChoice)
    ids, mask = _batch([12, 5, 9, 1])
    ids, mask = ids.view(2, 2, 12), mask.view(2, 2, 12)
    logits = unpadded(ids, attention_mask=mask).logits
    hidden = padded.convbert(ids.view(4, 12), attention_mask=mask.view(4, 12)).last_hidden_state
    last = torch.tensor([11, 4, 8, 0])
    want = padded.classifier(hidden[torch.arange(4), last]).view(2, 2)
    _assert_same(logits, want, "multiple-choice logits")


def test_attention_probabilities_and_head_mask_take_the_padded_path():
    padded, unpadded = _pair(convbert.ConvBertModel)
    ids, mask = _batch([12, 6])
    assert not unpadded.runs_unpadded(mask, output_attentions=True)
    assert not unpadded.runs_unpadded(mask, head_mask=torch.ones(2))
    assert unpadded.runs_unpadded(mask) and not padded.runs_unpadded(mask)
    a = unpadded(ids, attention_mask=mask, output_attentions=True)
    b = padded(ids, attention_mask=mask, output_attentions=True)
    assert len(a.attentions) == SMALL["num_hidden_layers"]
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state)


def test_gradient_checkpointing_on_packed_tokens():
    _, unpadded = _pair(convbert.ConvBertForMaskedLM)
    ids, mask = _batch([12, 5, 8])
    labels = ids.masked_fill(mask == 0, -100)
    unpadded.train()
    unpadded(ids, attention_mask=mask, labels=labels).loss.backward()
    plain = _grads(unpadded)
    unpadded.zero_grad()
    unpadded.gradient_checkpointing_enable()
    unpadded(ids, attention_mask=mask, labels=labels).loss.backward()
    for name, g in _grads(unpadded).items():
        torch.testing.assert_close(g, plain[name])


def test_torch_compile_runs_the_unpadded_model():
    _, unpadded = _pair(convbert.ConvBertModel)
    ids, mask = _batch([12, 5, 8])
    want = unpadded(ids, attention_mask=mask).last_hidden_state
    compiled = torch.compile(unpadded, backend="aot_eager")
    got = compiled(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want)


def test_packing_errors_are_clear():
    with pytest.raises(ValueError, match="conv_mask_padding=True"):
        ConvBertConfig(**{**SMALL, "conv_mask_padding": False, "unpad_inputs": True})
    with pytest.raises(ValueError, match="unpad_inputs must be a bool"):
        ConvBertConfig(**{**SMALL, "unpad_inputs": "yes"})
    _, unpadded = _pair(convbert.ConvBertModel)
    ids, mask = _batch([12, 6])
    mask[0, 4] = 0  # a hole
    with pytest.raises(ValueError, match="contiguous block"):
        unpadded(ids, attention_mask=mask)


def test_packed_separable_convolution_stops_at_sequence_ends():
    """PackedBatch.depthwise_conv equals the padded Conv1d run on each sequence alone."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, 5, groups=6, padding=2, bias=False)
    _, mask = _batch([7, 0, 1, 3, 12])
    packed = PackedBatch.from_attention_mask(mask, 5)
    x = torch.randn(int(mask.sum()), 6)
    got = packed.depthwise_conv(conv, x)
    start = 0
    for n in packed.lengths:
        if n:
            alone = conv(x[start:start + n].t()[None])[0].t()
            torch.testing.assert_close(got[start:start + n], alone)
        start += n


def test_document_packed_rows_equal_each_document_alone():
    """attention_mask numbering documents (1 1 1 2 2 3 0): no attention or window crosses a document;
    with positions restarting per document, each equals the same document in a row of its own."""
    _, unpadded = _pair(convbert.ConvBertModel)
    docs = [torch.randint(0, SMALL["vocab_size"], (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 2, 4)]
    ids = torch.cat(docs + [torch.zeros(1, dtype=torch.long)])[None]
    mask = torch.tensor([[1] * 5 + [2] * 2 + [3] * 4 + [0]])
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 0, 1, 2, 3, 0]])
    packed = unpadded(ids, attention_mask=mask, position_ids=positions).last_hidden_state[0]
    start = 0
    for doc in docs:
        alone = unpadded(doc[None], attention_mask=torch.ones(1, len(doc), dtype=torch.long)).last_hidden_state[0]
        _assert_same(packed[start:start + len(doc)], alone, f"document at {start}")
        start += len(doc)
    with pytest.raises(ValueError, match="non-decreasing"):
        unpadded(ids, attention_mask=torch.tensor([[2] * 5 + [1] * 7]))
    padded, _ = _pair(convbert.ConvBertModel)
    with pytest.raises(ValueError, match="unpad_inputs=True"):
        padded(ids, attention_mask=mask)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["triton", "native"])
def test_gpu_unpadded_model_equals_the_padded_model(dtype, backend):
    """On CUDA: bf16 runs attention through the varlen flash kernel, fp32 one SDPA per sequence.

    cuDNN runs fp32 convolutions in TF32 by default (``torch.backends.cudnn.conv.fp32_precision`` is
    "tf32"), which put a 2e-4 relative difference between the padded and unpadded separable
    convolutions on an H200: the fp32 comparison runs them in IEEE fp32 so that 2e-5 holds.
    """
    conv_precision = torch.backends.cudnn.conv.fp32_precision
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    try:
        _compare_padded_and_unpadded_on_cuda(dtype, backend)
    finally:
        torch.backends.cudnn.conv.fp32_precision = conv_precision


def _compare_padded_and_unpadded_on_cuda(dtype, backend):
    padded, unpadded = _pair(convbert.ConvBertForMaskedLM, backend)
    padded, unpadded = padded.to("cuda", dtype), unpadded.to("cuda", dtype)
    ids, mask = _batch([12, 7, 1, 3, 0])
    ids, mask = ids.cuda(), mask.cuda()
    labels = ids.masked_fill(mask == 0, -100)
    out_p = padded(ids, attention_mask=mask, labels=labels)
    out_u = unpadded(ids, attention_mask=mask, labels=labels)
    real = mask.bool()
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    _assert_same(out_u.logits[real].float(), out_p.logits[real].float(), f"{dtype} logits", tol)
    _assert_same(out_u.loss.float(), out_p.loss.float(), f"{dtype} loss", tol)
    out_p.loss.backward()
    out_u.loss.backward()
    grads_p, grads_u = _grads(padded), _grads(unpadded)
    for name in grads_p:
        _assert_same(grads_u[name].float(), grads_p[name].float(), f"{dtype} d {name}", 10 * tol)
