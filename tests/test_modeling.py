"""The model's own behaviour: heads, head_mask, checkpointing, masking, bad input."""

import pytest
import torch

import convbert
from convbert import ConvBertConfig

SMALL = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
             embedding_size=24, max_position_embeddings=16, hidden_dropout_prob=0.0,
             attention_probs_dropout_prob=0.0, conv_kernel_size=5, conv_backend="eager")


def small(**overrides):
    return ConvBertConfig(**{**SMALL, **overrides})


def ids(batch=2, length=10, seed=0):
    return torch.randint(0, SMALL["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


def test_config_defaults_match_the_seed_doc():
    c = ConvBertConfig()
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (
        30522, 768, 12, 12, 3072)
    assert (c.hidden_act, c.hidden_dropout_prob, c.attention_probs_dropout_prob) == ("gelu", 0.1, 0.1)
    assert (c.max_position_embeddings, c.type_vocab_size, c.initializer_range, c.layer_norm_eps) == (512, 2, 0.02, 1e-12)
    assert (c.pad_token_id, c.bos_token_id, c.eos_token_id, c.embedding_size) == (1, 0, 2, 768)
    assert (c.head_ratio, c.conv_kernel_size, c.num_groups, c.classifier_dropout) == (2, 9, 1, None)
    assert (c.conv_backend, c.conv_mask_padding) == ("auto", False)
    assert (c.num_heads, c.head_size, c.all_head_size) == (6, 64, 384)


def test_config_json_round_trip_keeps_unknown_keys(tmp_path):
    c = small(num_labels=4, some_hf_key=[1, 2])
    c.save_pretrained(tmp_path)
    back = ConvBertConfig.from_pretrained(tmp_path)
    assert back == c and back.some_hf_key == [1, 2] and back.num_labels == 4
    assert ConvBertConfig.from_pretrained(tmp_path, conv_backend="reference").conv_backend == "reference"


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(conv_kernel_size=4), "odd"),
        (dict(hidden_size=30, num_attention_heads=8, head_ratio=2), "divisible"),
        (dict(num_groups=3), "num_groups"),
        (dict(hidden_size=4, num_attention_heads=4, head_ratio=1, embedding_size=4), "too small"),
        (dict(num_hidden_layers=0), "positive"),
    ],
)
def test_config_rejects_sizes_that_do_not_fit(overrides, match):
    with pytest.raises(ValueError, match=match):
        small(**overrides)


def test_config_wrong_model_type(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="model_type"):
        ConvBertConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("cls_name, shape", [
    ("ConvBertModel", (2, 10, 32)),
    ("ConvBertForMaskedLM", (2, 10, 50)),
    ("ConvBertForSequenceClassification", (2, 2)),
    ("ConvBertForTokenClassification", (2, 10, 2)),
    ("ConvBertForQuestionAnswering", (2, 10)),
])
def test_output_shapes_and_tuple_form(cls_name, shape):
    model = getattr(convbert, cls_name)(small()).eval()
    out = model(ids())
    assert tuple(out[0].shape) == shape
    as_tuple = model(ids(), return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out[0])


def test_multiple_choice_shapes_and_loss():
    model = convbert.ConvBertForMultipleChoice(small()).eval()
    out = model(ids(6).view(2, 3, 10), labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.loss.ndim == 0


def test_mlm_head_is_tied_to_word_embeddings():
    model = convbert.ConvBertForMaskedLM(small())
    assert model.generator_lm_head.weight is model.convbert.embeddings.word_embeddings.weight
    untied = convbert.ConvBertForMaskedLM(small(tie_word_embeddings=False))
    assert untied.generator_lm_head.weight is not untied.convbert.embeddings.word_embeddings.weight


def test_head_mask_silences_attention_heads():
    model = convbert.ConvBertModel(small()).eval()
    x = ids()
    n = model.config.num_heads
    ones = model(x, head_mask=torch.ones(n), output_attentions=True)
    plain = model(x)
    torch.testing.assert_close(ones.last_hidden_state, plain.last_hidden_state, atol=1e-5, rtol=1e-5)

    mask = torch.ones(model.config.num_hidden_layers, n)
    mask[0, 1] = 0
    out = model(x, head_mask=mask, output_attentions=True)
    assert out.attentions[0][:, 1].abs().max() == 0  # the silenced head's probabilities are zero
    assert out.attentions[0][:, 0].abs().max() > 0
    assert (out.last_hidden_state - plain.last_hidden_state).abs().max() > 1e-4

    # Silencing a head zeroes exactly that head's slice of the attention context (not the conv half).
    captured = {}
    layer = model.encoder.layer[0].attention.self
    handle = layer.register_forward_hook(lambda m, a, o: captured.__setitem__("ctx", o[0]))
    model(x, head_mask=mask)
    handle.remove()
    d = model.config.head_size
    ctx = captured["ctx"].view(2, 10, 2 * n, d)
    assert ctx[:, :, 1].abs().max() == 0 and ctx[:, :, n + 1].abs().max() > 0
    with pytest.raises(ValueError, match="head_mask"):
        model(x, head_mask=torch.ones(n + 1))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = convbert.ConvBertForMaskedLM(small()).train()
    labels = ids(seed=5)
    model(ids(), labels=labels).loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    model(ids(), labels=labels).loss.backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[k], atol=1e-6, rtol=1e-5)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    model.activation_checkpointing_enable()  # transformers' newer name
    assert model.is_gradient_checkpointing


def test_conv_mask_padding_isolates_tokens_from_padding():
    torch.manual_seed(0)
    x = ids(1, 10)
    mask = torch.ones(1, 10, dtype=torch.long)
    mask[0, 7:] = 0
    other_padding = x.clone()
    other_padding[0, 7:] = (x[0, 7:] + 1) % SMALL["vocab_size"]
    for masked in (False, True):
        torch.manual_seed(0)
        model = convbert.ConvBertModel(small(conv_mask_padding=masked)).eval()
        a = model(x, attention_mask=mask).last_hidden_state[0, :7]
        b = model(other_padding, attention_mask=mask).last_hidden_state[0, :7]
        if masked:  # real tokens no longer see what the padding holds
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        else:  # Hugging Face's behaviour: padding within K//2 leaks into nearby tokens
            assert (a - b).abs().max() > 1e-5


def _trained_scale(model, seed=0):
    """Weights at the scale training reaches (init std 0.02 hides a leak; trained ConvBERT weights are
    ~10x larger), so that padding leaking into a window would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 and "LayerNorm" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.mark.parametrize("backend", ["eager", "native", "reference"])
def test_masked_branch_is_padding_invariant_at_trained_scale(backend):
    """With conv_mask_padding=True each sequence gives the same hidden states alone as inside a
    right-padded batch, padding ids of any value; without it, the padding leaks (HF's behaviour)."""
    import convbert_kernels

    assert backend in convbert_kernels.available_backends("cpu"), f"{backend} should be available on CPU"
    lengths = [10, 7, 3]
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, SMALL["vocab_size"], (n,), generator=g) for n in lengths]
    batch = torch.randint(0, SMALL["vocab_size"], (3, 10), generator=g)  # random ids at the padding
    mask = torch.zeros(3, 10, dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = s
        mask[i, : len(s)] = 1
    for masked in (True, False):
        model = _trained_scale(convbert.ConvBertModel(small(conv_mask_padding=masked, conv_backend=backend))).eval()
        padded = model(batch, attention_mask=mask).last_hidden_state
        worst = max((model(s[None]).last_hidden_state[0] - padded[i, : len(s)]).abs().max().item()
                    for i, s in enumerate(seqs))
        if masked:
            assert worst < 1e-4, f"{backend}: a sequence alone and in the padded batch differ by {worst:.3e}"
        else:
            assert worst > 1e-2, "Hugging Face's unmasked branch should leak padding at this scale"


def test_every_backend_gives_the_same_model_outputs():
    import convbert_kernels

    backends = [b for b in convbert_kernels.available_backends("cpu") if b != "triton"]
    outs = {}
    for backend in backends:
        torch.manual_seed(0)
        model = convbert.ConvBertModel(small(conv_backend=backend)).eval()
        outs[backend] = model(ids()).last_hidden_state
    for backend, out in outs.items():
        torch.testing.assert_close(out, outs["reference"], atol=1e-5, rtol=1e-5, msg=backend)


def test_bad_inputs_raise_clear_errors():
    model = convbert.ConvBertModel(small()).eval()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(ids(1, 17))
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 50\)"):
        model(torch.tensor([[1, 50]]))
    with pytest.raises(ValueError, match="input_ids must lie"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="token_type_ids"):
        model(ids(), token_type_ids=torch.full((2, 10), 2))
    with pytest.raises(ValueError, match="not both"):
        model(ids(), inputs_embeds=torch.zeros(2, 10, 24))
    with pytest.raises(ValueError, match="pass input_ids or inputs_embeds"):
        model()
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids(), attention_mask=torch.ones(2, 9))
    with pytest.raises(ValueError, match="backend"):
        convbert.ConvBertModel(small(conv_backend="nope"))(ids())
    clf = convbert.ConvBertForSequenceClassification(small(num_labels=3))
    with pytest.raises(ValueError, match="labels"):
        clf(ids(), labels=torch.tensor([0, 3]))


def test_inputs_embeds_path_matches_ids():
    model = convbert.ConvBertModel(small()).eval()
    x = ids()
    torch.testing.assert_close(model(inputs_embeds=model.get_input_embeddings()(x)).last_hidden_state,
                               model(x).last_hidden_state)


def test_torch_compile_fullgraph_in_a_fresh_process():
    """Backends load when the model is built, so the first compiled call needs no import mid-trace."""
    import subprocess
    import sys

    code = (
        "import torch, convbert\n"
        f"config = convbert.ConvBertConfig(**{SMALL!r})\n"
        "model = convbert.ConvBertForMaskedLM(config).eval()\n"
        "x = torch.randint(0, 50, (2, 10))\n"
        "compiled = torch.compile(model, fullgraph=True, backend='aot_eager')\n"
        "torch.testing.assert_close(compiled(x).logits, model(x).logits)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_mixed_precision_forward_and_backward(dtype):
    """Under autocast the fp32 conv parameters are cast like nn.Linear's, so the op sees one dtype."""
    torch.manual_seed(0)
    model = convbert.ConvBertForMaskedLM(small()).train()
    x = ids()
    with torch.autocast("cpu", dtype=dtype):
        out = model(x, labels=x)
    assert out.logits.dtype == dtype and torch.isfinite(out.loss)
    out.loss.backward()
    grad = model.convbert.encoder.layer[0].attention.self.conv_kernel_layer.weight.grad
    assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all()
    with torch.no_grad():
        reference = model(x, labels=x).loss
    assert abs(out.loss.item() - reference.item()) < 0.05 * abs(reference.item())


def test_an_eager_model_never_touches_the_native_extension():
    """Building and running a model on another backend imports neither the extension nor Triton."""
    import subprocess
    import sys

    code = (
        "import sys, torch, convbert\n"
        "config = convbert.ConvBertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,"
        " intermediate_size=64, embedding_size=16, conv_backend='eager')\n"
        "model = convbert.ConvBertModel(config).eval()\n"
        "model(torch.randint(0, 50, (2, 9)))\n"
        "loaded = [m for m in ('convbert_kernels.native', 'convbert_kernels._C', 'convbert_kernels.triton_backend')"
        " if m in sys.modules]\n"
        "print('loaded:', loaded)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded: []" in proc.stdout
