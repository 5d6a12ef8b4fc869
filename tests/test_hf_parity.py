"""Checkpoints both ways with transformers' own ConvBERT: same numbers within 1e-5 (float32)."""

import pytest
import torch

import convbert
import convbert_kernels

transformers = pytest.importorskip("transformers", reason="transformers is a test extra: pip install -e .[test]")

CLASSES = [
    "ConvBertModel",
    "ConvBertForMaskedLM",
    "ConvBertForSequenceClassification",
    "ConvBertForMultipleChoice",
    "ConvBertForTokenClassification",
    "ConvBertForQuestionAnswering",
]

BASE = dict(vocab_size=97, num_hidden_layers=2, intermediate_size=48, max_position_embeddings=40,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, type_vocab_size=3)
CONFIGS = {
    # embedding_size != hidden_size, grouped feed-forward, the default K
    "proj-groups2-k9": dict(hidden_size=32, embedding_size=24, num_attention_heads=4, head_ratio=2, num_groups=2,
                            conv_kernel_size=9),
    # head_ratio 1, head size 3, K = 3
    "ratio1-d3-k3": dict(hidden_size=36, embedding_size=36, num_attention_heads=6, head_ratio=1, conv_kernel_size=3),
    # head_ratio 4, K = 1
    "ratio4-k1": dict(hidden_size=32, embedding_size=16, num_attention_heads=8, head_ratio=4, conv_kernel_size=1),
    # num_attention_heads // head_ratio < 1: one head
    "one-head-k9": dict(hidden_size=20, embedding_size=20, num_attention_heads=2, head_ratio=4, conv_kernel_size=9),
}
# CPU backends the model can run on; the Triton interpreter is too slow for whole models.
BACKENDS = [b for b in convbert_kernels.available_backends("cpu") if b != "triton"]
TOL = 1e-5


def _hf_config(name, **extra):
    return transformers.ConvBertConfig(**BASE, **CONFIGS[name], **extra)


def _inputs(cls_name, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, length) if cls_name == "ConvBertForMultipleChoice" else (3, length)
    ids = torch.randint(0, BASE["vocab_size"], shape, generator=g)
    mask = torch.ones(shape, dtype=torch.long)
    mask[..., 1, length - 3:] = 0  # a padded row in every batch
    types = torch.randint(0, BASE["type_vocab_size"], shape, generator=g)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types)


def _labels(cls_name, inputs, num_labels, problem, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = inputs["input_ids"]
    if cls_name == "ConvBertForMaskedLM":
        labels = torch.randint(0, BASE["vocab_size"], ids.shape, generator=g)
        labels[:, ::2] = -100
        return dict(labels=labels)
    if cls_name == "ConvBertForTokenClassification":
        return dict(labels=torch.randint(0, num_labels, ids.shape, generator=g))
    if cls_name == "ConvBertForMultipleChoice":
        return dict(labels=torch.randint(0, ids.shape[1], (ids.shape[0],), generator=g))
    if cls_name == "ConvBertForQuestionAnswering":
        return dict(start_positions=torch.tensor([0, 3, 99]), end_positions=torch.tensor([2, 5, 1]))
    if cls_name == "ConvBertForSequenceClassification":
        if problem == "regression":
            return dict(labels=torch.randn(ids.shape[0], generator=g))
        if problem == "multi_label_classification":
            return dict(labels=(torch.rand(ids.shape[0], num_labels, generator=g) > 0.5).float())
        return dict(labels=torch.randint(0, num_labels, (ids.shape[0],), generator=g))
    return {}


def _default_labels(cls_name):
    return 2 if cls_name == "ConvBertForQuestionAnswering" else 3  # QA splits its logits into start and end


def _assert_outputs_match(theirs, ours, what, per_layer=True):
    for key in ("loss", "logits", "last_hidden_state", "start_logits", "end_logits"):
        a, b = getattr(theirs, key, None), getattr(ours, key, None)
        assert (a is None) == (b is None), f"{what}: {key} present on one side only"
        if a is not None:
            err = (a - b).abs().max().item()
            assert err <= TOL, f"{what}: {key} differs by {err:.2e}"
    for key in ("hidden_states", "attentions") if per_layer else ():
        a, b = getattr(theirs, key, None), getattr(ours, key, None)
        if a is None:
            continue
        assert b is not None and len(a) == len(b), f"{what}: {key} count differs"
        for i, (x, y) in enumerate(zip(a, b)):
            err = (x - y).abs().max().item()
            assert err <= TOL, f"{what}: {key}[{i}] differs by {err:.2e}"


def _cases():
    for config_name in CONFIGS:
        for cls_name in CLASSES:
            problems = ["single_label_classification"]
            if cls_name == "ConvBertForSequenceClassification":
                problems = ["regression", "single_label_classification", "multi_label_classification"]
            for problem in problems:
                yield config_name, cls_name, problem


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config_name, cls_name, problem", list(_cases()))
def test_transformers_checkpoint_loads_with_same_outputs(tmp_path, backend, config_name, cls_name, problem):
    num_labels = 1 if problem == "regression" else _default_labels(cls_name)
    torch.manual_seed(0)
    theirs = getattr(transformers, cls_name)(_hf_config(config_name, num_labels=num_labels)).eval()
    theirs.save_pretrained(tmp_path)
    ours, info = getattr(convbert, cls_name).from_pretrained(tmp_path, conv_backend=backend, output_loading_info=True)
    assert info.missing_keys == [] and info.unexpected_keys == []

    length = 6 if CONFIGS[config_name]["conv_kernel_size"] == 9 and config_name == "one-head-k9" else 11  # L < K too
    inputs = _inputs(cls_name, length)
    inputs.update(_labels(cls_name, inputs, num_labels, problem))
    with torch.no_grad():
        ref = theirs(**inputs, output_hidden_states=True, output_attentions=True)
        got = ours(**inputs, output_hidden_states=True, output_attentions=True)
        # The default path (scaled_dot_product_attention, no probabilities) must agree too.
        got_fast = ours(**inputs)
    what = f"{cls_name}/{config_name}/{backend}/{problem}"
    _assert_outputs_match(ref, got, what)
    _assert_outputs_match(ref, got_fast, what + " (sdpa)", per_layer=False)
    assert got_fast.attentions is None and got_fast.hidden_states is None


@pytest.mark.parametrize("config_name", ["proj-groups2-k9", "one-head-k9"])
@pytest.mark.parametrize("cls_name", CLASSES)
def test_our_checkpoint_loads_in_transformers(tmp_path, config_name, cls_name):
    torch.manual_seed(1)
    config = convbert.ConvBertConfig(**BASE, **CONFIGS[config_name], num_labels=_default_labels(cls_name),
                                     conv_backend="eager")
    ours = getattr(convbert, cls_name)(config).eval()
    ours.save_pretrained(tmp_path)
    theirs = getattr(transformers, cls_name).from_pretrained(tmp_path).eval()
    inputs = _inputs(cls_name, 9, seed=3)
    inputs.update(_labels(cls_name, inputs, 3, "single_label_classification"))
    with torch.no_grad():
        _assert_outputs_match(theirs(**inputs, output_hidden_states=True), ours(**inputs, output_hidden_states=True),
                              f"{cls_name}/{config_name} reverse")


def test_gradients_match_transformers(tmp_path):
    torch.manual_seed(2)
    theirs = transformers.ConvBertForMaskedLM(_hf_config("proj-groups2-k9")).train()
    theirs.save_pretrained(tmp_path)
    ours = convbert.ConvBertForMaskedLM.from_pretrained(tmp_path, conv_backend="eager").train()
    inputs = _inputs("ConvBertForMaskedLM", 11)
    inputs.update(_labels("ConvBertForMaskedLM", inputs, 0, None))
    theirs(**inputs).loss.backward()
    ours(**inputs).loss.backward()
    theirs_grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        err = (p.grad - theirs_grads[name].grad).abs().max().item()
        assert err <= TOL, f"grad of {name} differs by {err:.2e}"
