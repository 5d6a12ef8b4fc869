"""convbert_kernels.patch_transformers: transformers' ConvBERT keeps its outputs and gradients.

Small random-weight models on CPU, fp32; patched and unpatched runs of the very same model are
compared within 1e-5.
"""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.models.convbert import modeling_convbert  # noqa: E402

import convbert_kernels  # noqa: E402
from convbert_kernels import hf_patch  # noqa: E402
from convbert_kernels.hf_patch import patch_transformers, unpatch_transformers  # noqa: E402

SelfAttention = modeling_convbert.ConvBertSelfAttention
ORIGINAL_FORWARD = SelfAttention.__dict__["forward"]
TOL = dict(rtol=1e-5, atol=1e-5)
VOCAB, BATCH, LENGTH, CHOICES = 97, 2, 13, 3

HEADS = [
    "ConvBertModel",
    "ConvBertForMaskedLM",
    "ConvBertForSequenceClassification",
    "ConvBertForMultipleChoice",
    "ConvBertForTokenClassification",
    "ConvBertForQuestionAnswering",
]

# Backends worth running on CPU inside the unit tests (triton on CPU is the slow interpreter).
CPU_BACKENDS = [b for b in convbert_kernels.available_backends("cpu") if b != "triton"]


@pytest.fixture(autouse=True)
def _restore_class():
    yield
    unpatch_transformers()
    assert SelfAttention.__dict__["forward"] is ORIGINAL_FORWARD


def make_config(**overrides):
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=48,
        embedding_size=32,  # != hidden: embeddings_project is exercised
        num_hidden_layers=2,
        num_attention_heads=4,  # head_ratio 2 -> n = 2 conv heads, d = 12
        intermediate_size=64,
        max_position_embeddings=64,
        conv_kernel_size=5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    kwargs.update(overrides)
    return transformers.ConvBertConfig(**kwargs)


def make_model(head: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    if head == "ConvBertForQuestionAnswering":
        overrides.setdefault("num_labels", 2)  # start and end logits
    return getattr(transformers, head)(make_config(**overrides))


def make_inputs(head: str, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    shape = (BATCH, CHOICES, LENGTH) if head == "ConvBertForMultipleChoice" else (BATCH, LENGTH)
    ids = torch.randint(0, VOCAB, shape, generator=g)
    mask = torch.ones(shape, dtype=torch.long)
    mask[..., 0, LENGTH - 4 :] = 0  # padding in the first sequence: the conv branch ignores it
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    if head == "ConvBertForMaskedLM":
        labels = ids.clone()
        labels[mask == 0] = -100
        inputs["labels"] = labels
    elif head == "ConvBertForSequenceClassification":
        inputs["labels"] = torch.randint(0, 3, (BATCH,), generator=g)
    elif head == "ConvBertForMultipleChoice":
        inputs["labels"] = torch.randint(0, CHOICES, (BATCH,), generator=g)
    elif head == "ConvBertForTokenClassification":
        inputs["labels"] = torch.randint(0, 3, (BATCH, LENGTH), generator=g)
    elif head == "ConvBertForQuestionAnswering":
        inputs["start_positions"] = torch.randint(0, LENGTH, (BATCH,), generator=g)
        inputs["end_positions"] = torch.randint(0, LENGTH, (BATCH,), generator=g)
    return inputs


def run(model, inputs, backward=True):
    """Tensors of the output (+ parameter gradients), in a fixed order."""
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    tensors = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    if backward:
        loss = out["loss"] if "loss" in tensors else out[0].float().pow(2).mean()
        loss.backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                tensors["grad." + name] = p.grad.clone()
    return {k: v.detach().clone() for k, v in tensors.items()}


def assert_same(expected, actual):
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], **TOL, msg=lambda m, key=key: f"{key}: {m}")


def original_context_and_probs(module, x, mask=None):
    """The unpatched forward's (context, attention probs) under any transformers version."""
    import inspect

    if "output_attentions" in inspect.signature(ORIGINAL_FORWARD).parameters:
        return ORIGINAL_FORWARD(module, x, mask, output_attentions=True)
    return ORIGINAL_FORWARD(module, x, mask)


def num_self_attention(model):
    return sum(isinstance(m, SelfAttention) for m in model.modules())


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("head", HEADS)
def test_heads_keep_outputs_and_gradients(head, train):
    model = make_model(head).train(train)
    inputs = make_inputs(head)
    expected = run(model, inputs)
    assert patch_transformers(model) == 2
    assert_same(expected, run(model, inputs))
    assert unpatch_transformers(model) == 2
    assert_same(expected, run(model, inputs))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_every_cpu_backend(backend):
    model = make_model("ConvBertForMaskedLM").train()
    inputs = make_inputs("ConvBertForMaskedLM")
    expected = run(model, inputs)
    patch_transformers(model, backend=backend)
    assert_same(expected, run(model, inputs))


def test_conv_branch_goes_through_span_dynamic_conv(monkeypatch):
    calls = []
    from convbert_kernels import mixed_attention

    real = mixed_attention.span_dynamic_conv

    def spy(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return real(*args, **kwargs)

    monkeypatch.setattr(mixed_attention, "span_dynamic_conv", spy)
    model = make_model("ConvBertModel")
    inputs = make_inputs("ConvBertModel")
    patch_transformers(model, backend="eager")
    model(**inputs)
    assert calls == ["eager", "eager"]
    patch_transformers(model, backend="reference")  # re-patching swaps the backend
    model(**inputs)
    assert calls[2:] == ["reference", "reference"]
    unpatch_transformers(model)
    model(**inputs)
    assert len(calls) == 4  # the original forward never calls it


def test_output_attentions_and_hidden_states():
    model = make_model("ConvBertForMaskedLM").eval()
    inputs = make_inputs("ConvBertForMaskedLM")
    expected = model(**inputs, output_attentions=True, output_hidden_states=True)
    patch_transformers(model)
    actual = model(**inputs, output_attentions=True, output_hidden_states=True)
    assert len(actual.attentions) == len(expected.attentions) == 2
    for a, e in zip(actual.attentions, expected.attentions):
        torch.testing.assert_close(a, e, **TOL)
    assert len(actual.hidden_states) == len(expected.hidden_states) == 3
    for a, e in zip(actual.hidden_states, expected.hidden_states):
        torch.testing.assert_close(a, e, **TOL)


def test_self_attention_module_returns_what_the_original_returns():
    model = make_model("ConvBertModel").eval()
    module = model.encoder.layer[0].attention.self
    x = torch.randn(BATCH, LENGTH, 48)
    mask = torch.zeros(BATCH, 1, 1, LENGTH)
    mask[0, ..., -3:] = torch.finfo(torch.float32).min
    expected = module(x, mask)
    patch_transformers(model)
    actual = module(x, mask)
    assert type(actual) is type(expected) and len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **TOL)


def test_head_mask_through_the_model():
    """transformers 4.x models take head_mask [layers, heads]; 5.x dropped it."""
    import inspect

    model = make_model("ConvBertForSequenceClassification").train()
    if "head_mask" not in inspect.signature(model.forward).parameters:
        pytest.skip(f"transformers {transformers.__version__} has no head_mask")
    head_mask = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    inputs = dict(make_inputs("ConvBertForSequenceClassification"), head_mask=head_mask, output_attentions=True)
    expected = run(model, inputs)
    patch_transformers(model)
    assert_same(expected, run(model, inputs))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_gradient_checkpointing(train):
    model = make_model("ConvBertForMaskedLM").train(train)
    inputs = make_inputs("ConvBertForMaskedLM")
    expected = run(model, inputs)  # plain: no checkpointing, unpatched
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train(train)
    patch_transformers(model)
    assert_same(expected, run(model, inputs))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train(train)
    assert_same(expected, run(model, inputs))


def test_class_level_patch_covers_existing_and_new_models():
    before = make_model("ConvBertForTokenClassification")
    inputs = make_inputs("ConvBertForTokenClassification")
    expected = run(before, inputs)

    assert patch_transformers() == 1
    patched = SelfAttention.__dict__["forward"]
    assert patched is not ORIGINAL_FORWARD and patched.__wrapped__ is ORIGINAL_FORWARD
    assert_same(expected, run(before, inputs))  # an existing instance
    after = make_model("ConvBertForTokenClassification")  # a new one, same init
    assert_same(expected, run(after, inputs))
    assert all("forward" not in m.__dict__ for m in after.modules())  # class-level, not instance

    assert unpatch_transformers() == 1
    assert SelfAttention.forward is ORIGINAL_FORWARD
    assert unpatch_transformers() == 0  # nothing left to undo


def test_model_level_patch_leaves_other_models_alone():
    a = make_model("ConvBertModel", num_hidden_layers=3)
    b = make_model("ConvBertModel")
    assert patch_transformers(a) == num_self_attention(a) == 3
    assert all(hf_patch._is_patched(m.forward) for m in a.modules() if isinstance(m, SelfAttention))
    assert not any(hf_patch._is_patched(m.forward) for m in b.modules() if isinstance(m, SelfAttention))
    assert SelfAttention.__dict__["forward"] is ORIGINAL_FORWARD
    assert unpatch_transformers(b) == 0
    assert unpatch_transformers(a) == 3
    for m in a.modules():
        if isinstance(m, SelfAttention):
            assert "forward" not in m.__dict__ and m.forward.__func__ is ORIGINAL_FORWARD


def test_patching_is_idempotent():
    model = make_model("ConvBertModel")
    assert patch_transformers(model) == 2
    assert patch_transformers(model) == 2
    assert patch_transformers() == 1
    assert patch_transformers() == 1
    assert SelfAttention.__dict__["forward"].__wrapped__ is ORIGINAL_FORWARD
    for m in model.modules():
        if isinstance(m, SelfAttention):
            assert m.forward.__func__.__wrapped__ is ORIGINAL_FORWARD
    # model-level patch taken while the class is patched still wraps the true original
    other = make_model("ConvBertModel")
    patch_transformers(other)
    assert all(
        m.forward.__func__.__wrapped__ is ORIGINAL_FORWARD for m in other.modules() if isinstance(m, SelfAttention)
    )
    assert unpatch_transformers() == 1
    assert SelfAttention.forward is ORIGINAL_FORWARD


def test_copies_of_a_patched_model_stay_patched_and_independent():
    model = make_model("ConvBertForMaskedLM")
    patch_transformers(model)
    clone = copy.deepcopy(model)
    layer = clone.convbert.encoder.layer[0].attention.self
    assert hf_patch._is_patched(layer.forward) and layer.forward.__self__ is layer
    inputs = make_inputs("ConvBertForMaskedLM")
    assert_same(run(model, inputs), run(clone, inputs))


def test_head_mask_and_output_attentions_of_the_4x_signature():
    """transformers 4.x passes head_mask and output_attentions positionally; emulate that forward."""

    def forward_4x(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
                   output_attentions=False):
        raise AssertionError("the original is never called")

    model = make_model("ConvBertModel").eval()
    module = model.encoder.layer[0].attention.self
    x = torch.randn(BATCH, LENGTH, 48)
    context, probs = original_context_and_probs(module, x)
    forward = hf_patch._make_forward(forward_4x, "auto").__get__(module)

    (only_context,) = forward(x, None, None, None, False)
    torch.testing.assert_close(only_context, context, **TOL)
    head_mask = torch.ones(1, module.num_attention_heads, 1, 1)
    head_mask[0, 1] = 0.0
    masked, masked_probs = forward(x, None, head_mask, None, True)
    torch.testing.assert_close(masked_probs, probs * head_mask, **TOL)
    d = module.attention_head_size
    ctx = masked.view(BATCH, LENGTH, -1, d)  # [attention heads | conv heads]
    assert torch.all(ctx[:, :, 1] == 0)  # the masked attention head
    torch.testing.assert_close(ctx[:, :, 0], context.view(BATCH, LENGTH, -1, d)[:, :, 0], **TOL)
    torch.testing.assert_close(ctx[:, :, 2:], context.view(BATCH, LENGTH, -1, d)[:, :, 2:], **TOL)  # conv


def test_unknown_signature_is_refused_at_patch_time():
    def odd_forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, *, output_attentions=True):
        raise AssertionError("the original is never called")

    with pytest.raises(TypeError, match="not supported"):
        hf_patch._make_forward(odd_forward, "auto")


def test_trainer_losses_match():
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")
    import tempfile

    def train(patched):
        model = make_model("ConvBertForMaskedLM")
        if patched:
            assert patch_transformers(model) == 2
        data = [{k: v[i] for k, v in make_inputs("ConvBertForMaskedLM", seed=i).items()} for i in range(2)]
        data = [dict(d, labels=d["input_ids"].clone()) for d in data]
        with tempfile.TemporaryDirectory() as out:
            args = transformers.TrainingArguments(
                output_dir=out,
                max_steps=2,
                per_device_train_batch_size=2,
                learning_rate=1e-3,
                logging_steps=1,
                save_strategy="no",
                report_to=[],
                use_cpu=True,
                seed=0,
                dataloader_num_workers=0,
                disable_tqdm=True,
            )
            trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
            trainer.train()
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}

    plain_losses, plain_state = train(False)
    patched_losses, patched_state = train(True)
    assert len(plain_losses) == len(patched_losses) == 2
    assert patched_losses == pytest.approx(plain_losses, rel=1e-5, abs=1e-5)
    for key in plain_state:
        torch.testing.assert_close(patched_state[key], plain_state[key], rtol=1e-4, atol=1e-5)


def test_bad_backend_name():
    with pytest.raises(ValueError, match="unknown backend"):
        patch_transformers(backend="cudnn")


def test_clear_error_without_transformers(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers.models.convbert", None)
    with pytest.raises(ImportError, match="needs Hugging Face transformers"):
        patch_transformers()
    with pytest.raises(ImportError, match="needs Hugging Face transformers"):
        unpatch_transformers()
