"""The TensorFlow (Keras) models: transformers' checkpoints give the same numbers, both ways.

TensorFlow is a CI dependency (the ``tf`` extra, installed by scripts/env.sh): on the ``ci`` stack
(``CONVBERT_STACK=ci``, exported by env.sh) a missing TensorFlow fails this module; elsewhere (the GPU
machine's stack, which has none) it skips.

Triton's native library crashes the process when it is loaded after TensorFlow's, and pytest runs
every test module in one process (others import triton), so triton is imported here first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

try:  # before TensorFlow, always (see the module docstring)
    import triton  # noqa: F401
except ImportError:
    pass
import torch

if os.environ.get("CONVBERT_STACK") == "ci":  # exported by scripts/env.sh for CI's stack
    import tensorflow as tf  # the ci stack installs the tf extra: its absence is a failure, not a skip
else:  # the gpu-machine stack, the GPU machine itself (scripts/gpu_check.sh), a bare checkout
    tf = pytest.importorskip("tensorflow", reason="TensorFlow (the tf extra) is installed only on CI's stack: "
                                                  'pip install "convbert-kernels[tf]"')

try:  # few threads: the test machines have two cores
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
except RuntimeError:  # TensorFlow already initialised by an earlier module
    pass

import convbert  # noqa: E402
from convbert.checkpoint_numpy import CheckpointError, read_torch_bin  # noqa: E402

transformers = pytest.importorskip("transformers", reason="transformers is a test extra: pip install -e .[test]")

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["ConvBertModel", "ConvBertForMaskedLM", "ConvBertForSequenceClassification", "ConvBertForMultipleChoice",
           "ConvBertForTokenClassification", "ConvBertForQuestionAnswering"]
BASE = dict(vocab_size=97, num_hidden_layers=2, intermediate_size=48, max_position_embeddings=40,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, type_vocab_size=3,
            initializer_range=0.3)  # large weights: softmax windows far from uniform, so tap order matters
CONFIGS = {
    # embedding_size != hidden_size (embeddings_project), grouped feed-forward, K = 9
    "proj-groups2-k9": dict(hidden_size=32, embedding_size=24, num_attention_heads=4, head_ratio=2, num_groups=2,
                            conv_kernel_size=9),
    # num_attention_heads // head_ratio < 1 (one head), K = 9 longer than the sequence below
    "one-head-k9": dict(hidden_size=20, embedding_size=20, num_attention_heads=2, head_ratio=4, conv_kernel_size=9),
}
LENGTH = {"proj-groups2-k9": 11, "one-head-k9": 6}
TOL = 1e-4


def _num_labels(cls_name):
    return 2 if cls_name == "ConvBertForQuestionAnswering" else 3


def _inputs(cls_name, length, seed=0, vocab=BASE["vocab_size"]):
    """NumPy inputs: a padded row in every batch."""
    rng = np.random.default_rng(seed)
    shape = (2, 3, length) if cls_name == "ConvBertForMultipleChoice" else (3, length)
    mask = np.ones(shape, np.int64)
    mask[..., 1, length - 3:] = 0
    return dict(input_ids=rng.integers(0, vocab, shape), attention_mask=mask,
                token_type_ids=rng.integers(0, BASE["type_vocab_size"], shape))


def _labels(cls_name, inputs, num_labels, seed=1):
    rng = np.random.default_rng(seed)
    ids = inputs["input_ids"]
    if cls_name == "ConvBertForMaskedLM":
        labels = rng.integers(0, BASE["vocab_size"], ids.shape)
        labels[:, ::2] = -100
        return dict(labels=labels)
    if cls_name == "ConvBertForTokenClassification":
        labels = rng.integers(0, num_labels, ids.shape)
        labels[0, :3] = -100
        return dict(labels=labels)
    if cls_name == "ConvBertForMultipleChoice":
        return dict(labels=rng.integers(0, ids.shape[1], (ids.shape[0],)))
    if cls_name == "ConvBertForQuestionAnswering":
        return dict(start_positions=np.array([0, 3, 1]), end_positions=np.array([2, 5, 1]))
    if cls_name == "ConvBertForSequenceClassification":
        return dict(labels=rng.integers(0, num_labels, (ids.shape[0],)))
    return {}


def _torch(arrays):
    return {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0


def _compare(ref, got, what, per_layer=True):
    """Max abs difference of every output field (torch ``ref`` vs TF ``got``), asserting TOL."""
    worst = 0.0
    for key in ("logits", "last_hidden_state", "start_logits", "end_logits"):
        a, b = getattr(ref, key, None), getattr(got, key, None)
        assert (a is None) == (b is None), f"{what}: {key} present on one side only"
        if a is not None:
            assert tuple(a.shape) == tuple(b.shape), f"{what}: {key} shape {tuple(b.shape)} != {tuple(a.shape)}"
            err = _max_diff(a.detach().numpy(), b.numpy())
            assert err <= TOL, f"{what}: {key} differs by {err:.2e}"
            worst = max(worst, err)
    for key in ("hidden_states", "attentions") if per_layer else ():
        a, b = getattr(ref, key), getattr(got, key)
        assert (a is None) == (b is None), f"{what}: {key} present on one side only"
        if a is None:
            continue
        assert len(a) == len(b), f"{what}: {key} count differs"
        for i, (x, y) in enumerate(zip(a, b)):
            err = _max_diff(x.detach().numpy(), y.numpy())
            assert err <= TOL, f"{what}: {key}[{i}] differs by {err:.2e}"
            worst = max(worst, err)
    return worst


@pytest.fixture(scope="module")
def hf_checkpoints(tmp_path_factory):
    """transformers-written checkpoints, {(config, class): (directory, transformers model)}."""
    made = {}

    def make(config_name, cls_name, **extra):
        key = (config_name, cls_name, tuple(sorted(extra.items())))
        if key not in made:
            torch.manual_seed(0)
            config = transformers.ConvBertConfig(**BASE, **CONFIGS[config_name],
                                                 **{"num_labels": _num_labels(cls_name), **extra})
            model = getattr(transformers, cls_name)(config).eval()
            directory = tmp_path_factory.mktemp(f"hf-{cls_name}")
            model.save_pretrained(directory)
            made[key] = (directory, model)
        return made[key]

    return make


# ---- transformers checkpoints, same numbers -----------------------------------------------------------

@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("cls_name", CLASSES)
def test_transformers_checkpoint_gives_same_outputs(hf_checkpoints, config_name, cls_name):
    directory, theirs = hf_checkpoints(config_name, cls_name)
    ours, info = getattr(convbert, "TF" + cls_name).from_pretrained(directory, output_loading_info=True)
    assert isinstance(ours, tf.keras.Model)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []

    inputs = _inputs(cls_name, LENGTH[config_name])
    labels = _labels(cls_name, inputs, _num_labels(cls_name))
    with torch.no_grad():
        ref = theirs(**_torch(inputs), **_torch(labels), output_hidden_states=True, output_attentions=True)
    got = ours(**inputs, **labels, output_hidden_states=True, output_attentions=True)
    what = f"TF{cls_name}/{config_name}"
    worst = _compare(ref, got, what)
    print(f"{what}: max abs diff {worst:.2e}")
    assert len(got.hidden_states) == BASE["num_hidden_layers"] + 1

    if labels:  # the documented loss shapes, and the PyTorch head's loss from them
        loss = got.loss.numpy()
        if cls_name in ("ConvBertForMaskedLM", "ConvBertForTokenClassification"):
            assert loss.shape == (int((labels["labels"] != -100).sum()),)  # (n,): the labels that count
        else:
            assert loss.shape == (inputs["input_ids"].shape[0],)  # (batch_size,)
        assert abs(loss.mean() - ref.loss.item()) <= TOL, f"{what}: loss {loss.mean()} vs {ref.loss.item()}"

    # return_dict=False: the same fields as a tuple
    plain = ours(**inputs, **labels, return_dict=False)
    assert isinstance(plain, tuple) and len(plain) == len(ours(**inputs, **labels))


def test_question_answering_positions_outside_the_sequence(hf_checkpoints):
    """Positions are clamped to [0, L]; L adds nothing to the loss. The training loss (evaluate) is the
    PyTorch head's, and a row whose both positions are outside has loss 0."""
    cls_name = "ConvBertForQuestionAnswering"
    directory, theirs = hf_checkpoints("proj-groups2-k9", cls_name)
    ours = convbert.TFConvBertForQuestionAnswering.from_pretrained(directory)
    inputs = _inputs(cls_name, 11)
    labels = dict(start_positions=np.array([0, 99, 40]), end_positions=np.array([-3, 5, 11]))
    with torch.no_grad():
        ref = theirs(**_torch(inputs), **_torch(labels)).loss.item()
    got = ours(**inputs, **labels).loss.numpy()
    assert got.shape == (3,) and got[2] == 0.0 and got[0] > 0
    ours.compile(optimizer="sgd")
    assert abs(ours.evaluate({**inputs, **labels}, batch_size=3, verbose=0) - ref) <= TOL


@pytest.mark.parametrize("problem, num_labels", [("regression", 1), ("single_label_classification", 3),
                                                 ("multi_label_classification", 3)])
def test_sequence_classification_losses_match(hf_checkpoints, problem, num_labels):
    extra = {} if problem == "regression" else {"problem_type": problem}  # regression: inferred from num_labels=1
    directory, theirs = hf_checkpoints("proj-groups2-k9", "ConvBertForSequenceClassification", num_labels=num_labels,
                                       **extra)
    ours = convbert.TFConvBertForSequenceClassification.from_pretrained(directory)
    inputs = _inputs("ConvBertForSequenceClassification", 11)
    rng = np.random.default_rng(5)
    labels = {"regression": rng.standard_normal(3).astype(np.float32),
              "single_label_classification": np.array([0, 2, 1]),
              "multi_label_classification": (rng.random((3, 3)) > 0.5).astype(np.float32)}[problem]
    with torch.no_grad():
        ref = theirs(**_torch(inputs), labels=torch.from_numpy(labels))
    got = ours(**inputs, labels=labels)
    assert got.loss.shape == (3,)
    assert _max_diff(ref.logits.numpy(), got.logits.numpy()) <= TOL
    assert abs(float(tf.reduce_mean(got.loss)) - ref.loss.item()) <= TOL


# ---- checkpoint formats ----------------------------------------------------------------------------------

def _weights_equal(a, b):
    sa, sb = a.torch_state_dict(), b.torch_state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_bin_and_sharded_checkpoints_load_without_running_code(hf_checkpoints, tmp_path):
    directory, theirs = hf_checkpoints("proj-groups2-k9", "ConvBertForMaskedLM")
    reference = convbert.TFConvBertForMaskedLM.from_pretrained(directory)
    config = theirs.config.to_dict()

    def checkpoint(name):
        out = tmp_path / name
        out.mkdir()
        (out / "config.json").write_text(json.dumps(config))
        return out

    state = {k: v.contiguous() for k, v in theirs.state_dict().items()}
    bin_dir = checkpoint("bin")  # the legacy pickle, with the tied weight stored twice as torch does
    torch.save(state, bin_dir / "pytorch_model.bin")
    assert _weights_equal(convbert.TFConvBertForMaskedLM.from_pretrained(bin_dir), reference)

    sharded_bin = checkpoint("sharded-bin")
    keys = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for shard, names in shards.items():
        torch.save({k: state[k] for k in names}, sharded_bin / shard)
    (sharded_bin / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: shard for shard, names in shards.items() for k in names}}))
    assert _weights_equal(convbert.TFConvBertForMaskedLM.from_pretrained(sharded_bin), reference)

    sharded_safe = tmp_path / "sharded-safe"
    theirs.save_pretrained(sharded_safe, max_shard_size="20KB")
    assert (sharded_safe / "model.safetensors.index.json").is_file()
    assert _weights_equal(convbert.TFConvBertForMaskedLM.from_pretrained(sharded_safe), reference)

    bf16 = checkpoint("bf16-bin")  # bfloat16, which NumPy lacks: read as float32, exactly
    torch.save({k: v.to(torch.bfloat16) for k, v in state.items()}, bf16 / "pytorch_model.bin")
    got = read_torch_bin(bf16 / "pytorch_model.bin")
    key = "convbert.embeddings.word_embeddings.weight"
    assert got[key].dtype == np.float32 and np.array_equal(got[key], state[key].to(torch.bfloat16).float().numpy())

    class Payload:  # a pickle that would run code: refused, and nothing ran
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    evil = checkpoint("evil")
    torch.save({**state, "x": Payload()}, evil / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing"):
        convbert.TFConvBertForMaskedLM.from_pretrained(evil)
    assert not (tmp_path / "pwned").exists()


def test_bad_checkpoints_fail_clearly(hf_checkpoints, tmp_path):
    directory, theirs = hf_checkpoints("proj-groups2-k9", "ConvBertForMaskedLM")
    with pytest.raises(FileNotFoundError):
        convbert.TFConvBertModel.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="do not match"):  # a config the weights do not fit
        convbert.TFConvBertForMaskedLM.from_pretrained(directory, intermediate_size=64)
    theirs.save_pretrained(tmp_path / "interrupted")
    (tmp_path / "interrupted" / "FINAL_SAVE_INCOMPLETE").write_text("moving files")
    with pytest.raises(CheckpointError, match="interrupted save"):
        convbert.TFConvBertForMaskedLM.from_pretrained(tmp_path / "interrupted")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(theirs.config.to_dict()))
    with pytest.raises(FileNotFoundError, match="no weights"):
        convbert.TFConvBertForMaskedLM.from_pretrained(tmp_path / "empty")


# ---- TF checkpoints in PyTorch -------------------------------------------------------------------------------

@pytest.mark.parametrize("cls_name", CLASSES)
def test_tf_saved_weights_load_in_pytorch(tmp_path, cls_name):
    config = convbert.ConvBertConfig(**BASE, **CONFIGS["proj-groups2-k9"], num_labels=_num_labels(cls_name))
    tf.keras.utils.set_random_seed(3)
    ours = getattr(convbert, "TF" + cls_name)(config)
    ours.save_pretrained(tmp_path)
    inputs = _inputs(cls_name, 9, seed=4)
    labels = _labels(cls_name, inputs, _num_labels(cls_name))
    got = ours(**inputs, **labels, output_hidden_states=True, output_attentions=True)
    pt = getattr(convbert, cls_name).from_pretrained(tmp_path, conv_backend="eager")
    hf = getattr(transformers, cls_name).from_pretrained(tmp_path).eval()
    for name, model in (("convbert", pt), ("transformers", hf)):
        with torch.no_grad():
            ref = model(**_torch(inputs), **_torch(labels), output_hidden_states=True, output_attentions=True)
        _compare(ref, got, f"TF{cls_name} -> {name}")
        if labels:
            assert abs(float(tf.reduce_mean(got.loss)) - ref.loss.item()) <= TOL


def test_untied_output_layer_round_trips(tmp_path):
    config = convbert.ConvBertConfig(**BASE, **CONFIGS["one-head-k9"], tie_word_embeddings=False,
                                     conv_backend="eager")
    torch.manual_seed(0)
    pt = convbert.ConvBertForMaskedLM(config).eval()
    pt.save_pretrained(tmp_path / "pt")
    ours = convbert.TFConvBertForMaskedLM.from_pretrained(tmp_path / "pt")
    assert ours.generator_lm_head_weight is not None
    inputs = _inputs("ConvBertForMaskedLM", 6)
    with torch.no_grad():
        ref = pt(**_torch(inputs))
    assert _max_diff(ref.logits.numpy(), ours(**inputs).logits.numpy()) <= TOL
    ours.save_pretrained(tmp_path / "tf")
    back = convbert.ConvBertForMaskedLM.from_pretrained(tmp_path / "tf")
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in pt.state_dict().items())


# ---- the call conventions ------------------------------------------------------------------------------------

def test_the_three_input_formats_agree(hf_checkpoints):
    directory, _ = hf_checkpoints("proj-groups2-k9", "ConvBertForMaskedLM")
    model = convbert.TFConvBertForMaskedLM.from_pretrained(directory)
    inputs = _inputs("ConvBertForMaskedLM", 11)
    labels = _labels("ConvBertForMaskedLM", inputs, 0)["labels"]
    ids, mask, types = inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]
    reference = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
    as_tensors = {k: tf.constant(v) for k, v in inputs.items()}
    calls = {
        "keywords, tensors": model(**as_tensors, labels=tf.constant(labels)),
        "list": model([ids, mask, types]),
        "tuple of tensors": model(tuple(as_tensors[k] for k in ("input_ids", "attention_mask", "token_type_ids"))),
        "dict": model({**inputs, "labels": labels}),
        "dict + keyword": model({"input_ids": ids, "token_type_ids": types}, attention_mask=mask),
    }
    for what, out in calls.items():
        assert np.array_equal(out.logits.numpy(), reference.logits.numpy()), what
    assert np.array_equal(calls["dict"].loss.numpy(), reference.loss.numpy())
    # one tensor is input_ids alone
    alone = model(ids)
    assert np.array_equal(alone.logits.numpy(), model(input_ids=ids).logits.numpy())
    assert not np.array_equal(alone.logits.numpy(), reference.logits.numpy())  # the mask mattered
    # return_dict=False gives (loss, logits)
    loss, logits = model(inputs, labels=labels, return_dict=False)
    assert np.array_equal(logits.numpy(), reference.logits.numpy())
    with pytest.raises(ValueError, match="given twice"):
        model({"input_ids": ids, "attention_mask": mask}, attention_mask=mask)
    with pytest.raises(ValueError, match="unknown input names"):
        model({"input_ids": ids, "mask": mask})


def test_bad_inputs_raise_clear_errors(hf_checkpoints):
    directory, _ = hf_checkpoints("proj-groups2-k9", "ConvBertForMaskedLM")
    model = convbert.TFConvBertForMaskedLM.from_pretrained(directory)
    ids = _inputs("ConvBertForMaskedLM", 11)["input_ids"]
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, length\]"):
        model(ids[0])
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 97\)"):
        model(ids + 97)
    with pytest.raises(ValueError, match="token_type_ids must lie in"):
        model(ids, token_type_ids=np.full(ids.shape, 5))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(ids, attention_mask=np.ones((3, 5)))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        model(np.zeros((1, 41), np.int64))
    with pytest.raises(ValueError, match="labels must lie in"):
        model(ids, labels=np.full(ids.shape, 500))
    with pytest.raises(ValueError, match="either input_ids or inputs_embeds"):
        model(ids, inputs_embeds=np.zeros((3, 11, 24), np.float32))
    with pytest.raises(ValueError, match="head_mask must have shape"):
        model(ids, head_mask=np.ones(5))
    mc = convbert.TFConvBertForMultipleChoice(model.config)
    with pytest.raises(ValueError, match="num_choices"):
        mc(ids)
    # in a graph, out-of-range ids fail when run, naming the input
    with pytest.raises(tf.errors.InvalidArgumentError, match="input_ids must be < 97"):
        tf.function(lambda x: model(x).logits)(tf.constant(ids + 97))


def test_head_mask_and_inputs_embeds_match_pytorch(hf_checkpoints):
    """Against this project's PyTorch model: transformers 5 no longer takes a head_mask."""
    directory, _ = hf_checkpoints("proj-groups2-k9", "ConvBertModel")
    theirs = convbert.ConvBertModel.from_pretrained(directory, conv_backend="eager")
    ours = convbert.TFConvBertModel.from_pretrained(directory)
    inputs = _inputs("ConvBertModel", 11)
    head_mask = np.array([[1.0, 0.0], [0.5, 1.0]], np.float32)
    embeds = np.random.default_rng(2).standard_normal((3, 11, 24)).astype(np.float32)
    with torch.no_grad():
        ref = theirs(attention_mask=torch.from_numpy(inputs["attention_mask"]), head_mask=torch.from_numpy(head_mask),
                     inputs_embeds=torch.from_numpy(embeds), output_attentions=True, output_hidden_states=True)
    got = ours(attention_mask=inputs["attention_mask"], head_mask=head_mask, inputs_embeds=embeds,
               output_attentions=True, output_hidden_states=True)
    _compare(ref, got, "head_mask + inputs_embeds")


def test_xla_compiles_and_matches_eager(hf_checkpoints):
    directory, _ = hf_checkpoints("proj-groups2-k9", "ConvBertForQuestionAnswering")
    model = convbert.TFConvBertForQuestionAnswering.from_pretrained(directory)
    inputs = {k: tf.constant(v) for k, v in _inputs("ConvBertForQuestionAnswering", 11).items()}

    @tf.function(jit_compile=True)
    def forward(ids, mask, types):
        out = model(ids, attention_mask=mask, token_type_ids=types, start_positions=tf.constant([0, 3, 99]),
                    end_positions=tf.constant([2, 5, 1]))
        return out.loss, out.start_logits

    loss, start = forward(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    eager = model(**inputs, start_positions=np.array([0, 3, 99]), end_positions=np.array([2, 5, 1]))
    assert _max_diff(start.numpy(), eager.start_logits.numpy()) <= 1e-5
    assert _max_diff(loss.numpy(), eager.loss.numpy()) <= 1e-5


# ---- Keras training --------------------------------------------------------------------------------------

def test_fit_lowers_the_models_own_loss():
    config = convbert.ConvBertConfig(**{**BASE, "hidden_dropout_prob": 0.1, "initializer_range": 0.02},
                                     **CONFIGS["proj-groups2-k9"])
    tf.keras.utils.set_random_seed(0)
    model = convbert.TFConvBertForMaskedLM(config)
    data = {**_inputs("ConvBertForMaskedLM", 11, seed=7)}
    data["labels"] = _labels("ConvBertForMaskedLM", data, 0)["labels"]
    # no loss: the model's own. (SGD: Keras takes much longer to build Adam's first step in a graph.)
    model.compile(optimizer=tf.keras.optimizers.SGD(learning_rate=0.1, momentum=0.9))
    losses = model.fit(data, batch_size=3, epochs=15, verbose=0).history["loss"]  # one step per epoch
    assert len(losses) == 15 and abs(losses[0] - np.log(BASE["vocab_size"])) < 0.5  # a fresh model: about ln V
    assert losses[-1] < 0.5 * losses[0], losses

    # labels as y work too, and predict gives the outputs as a dict
    clf = convbert.TFConvBertForSequenceClassification(
        convbert.ConvBertConfig(**BASE, **CONFIGS["proj-groups2-k9"], num_labels=3))
    clf.compile(optimizer="sgd")
    x = _inputs("ConvBertForSequenceClassification", 11)
    clf.fit(x, np.array([0, 1, 2]), batch_size=3, epochs=1, verbose=0)
    assert clf.predict(x, batch_size=3, verbose=0)["logits"].shape == (3, 3)


def test_training_applies_dropout():
    config = convbert.ConvBertConfig(**{**BASE, "hidden_dropout_prob": 0.3, "attention_probs_dropout_prob": 0.3},
                                     **CONFIGS["one-head-k9"])
    model = convbert.TFConvBertModel(config)
    ids = _inputs("ConvBertModel", 6)["input_ids"]
    first, second = (model(ids, training=True).last_hidden_state.numpy() for _ in range(2))
    assert not np.allclose(first, second)
    assert np.array_equal(model(ids).last_hidden_state.numpy(), model(ids, training=False).last_hidden_state.numpy())


# ---- imports -------------------------------------------------------------------------------------------------

def _run(code, **env):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1",
                "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", **env}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_tf_path_imports_neither_torch_nor_triton(hf_checkpoints, tmp_path):
    directory, theirs = hf_checkpoints("proj-groups2-k9", "ConvBertForMaskedLM")
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    torch.save(theirs.state_dict(), tmp_path / "pytorch_model.bin")
    out = _run(f"""
        import sys
        import tensorflow
        import numpy as np
        import convbert
        for path in ({str(directory)!r}, {str(tmp_path)!r}):  # safetensors, then pytorch_model.bin
            model = convbert.TFConvBertForMaskedLM.from_pretrained(path)
            logits = model(np.array([[5, 6, 7, 8]]), attention_mask=np.array([[1, 1, 1, 0]])).logits
            assert logits.shape == (1, 4, 97)
        model.save_pretrained({str(tmp_path / "saved")!r})
        print("torch" in sys.modules, "triton" in sys.modules)
    """)
    assert out.split() == ["False", "False"]


def test_import_convbert_is_lazy_and_names_the_tf_extra():
    out = _run("""
        import sys
        import convbert
        assert "tensorflow" not in sys.modules and "torch" not in sys.modules
        sys.modules["tensorflow"] = None  # as if TensorFlow were not installed
        try:
            convbert.TFConvBertModel
        except ImportError as exc:
            print(exc)
        else:
            raise AssertionError("no ImportError")
    """)
    assert 'pip install "convbert-kernels[tf]"' in out


# ---- this project's options ------------------------------------------------------------------------------

@pytest.mark.parametrize("cls_name", ["ConvBertModel", "ConvBertForMultipleChoice", "ConvBertForQuestionAnswering"])
def test_masked_padding_and_unpadded_outputs_match_pytorch(tmp_path, cls_name):
    """conv_mask_padding (padding never enters the convolution) and unpad_inputs (PyTorch drops the
    padding: zeros there, multiple choice reads each choice's last real token, QA masks padding)."""
    config = convbert.ConvBertConfig(**BASE, **CONFIGS["proj-groups2-k9"], num_labels=_num_labels(cls_name),
                                     conv_mask_padding=True, unpad_inputs=True, conv_backend="eager")
    torch.manual_seed(5)
    pt = getattr(convbert, cls_name)(config).eval()
    pt.save_pretrained(tmp_path)
    ours = getattr(convbert, "TF" + cls_name).from_pretrained(tmp_path)
    inputs = _inputs(cls_name, 11, seed=6)
    for kwargs in ({"output_hidden_states": True}, {"output_hidden_states": True, "output_attentions": True}):
        with torch.no_grad():  # without attentions PyTorch runs unpadded, with them padded
            ref = pt(**_torch(inputs), **kwargs)
        got = ours(**inputs, **kwargs)
        _compare(ref, got, f"TF{cls_name} {sorted(kwargs)}")
