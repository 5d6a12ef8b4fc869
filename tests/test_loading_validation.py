"""Checkpoint and config input is validated: clear errors naming the file and key (issue 11, deliverable 5)."""

import json

import pytest
import torch
from safetensors.torch import save_file

import convbert
from convbert import ConvBertConfig
from convbert.pretrained import CheckpointError

SMALL = dict(vocab_size=40, hidden_size=24, num_hidden_layers=1, num_attention_heads=4, intermediate_size=30,
             embedding_size=16, max_position_embeddings=12, conv_kernel_size=3, conv_backend="eager")


def _model(cls=convbert.ConvBertModel, **kw):
    torch.manual_seed(0)
    return cls(ConvBertConfig(**{**SMALL, **kw})).eval()


def _sharded(tmp_path, model=None):
    """A two-shard checkpoint of ``model`` in ``tmp_path``; returns (state, weight_map)."""
    model = model or _model()
    model.config.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / shard))
        weight_map.update(dict.fromkeys(keys, shard))
    _write_index(tmp_path, weight_map)
    return state, weight_map


def _write_index(directory, weight_map):
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


# --------------------------------------------------------------------------- checkpoints


def test_sharded_checkpoint_loads(tmp_path):
    model = _model()
    _sharded(tmp_path, model)
    back = convbert.ConvBertModel.from_pretrained(tmp_path)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("escape", ["../outside.safetensors", "ABSOLUTE", "sub/../../outside.safetensors"])
def test_shard_paths_must_stay_in_the_checkpoint_directory(tmp_path, escape):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    state, weight_map = _sharded(ckpt)
    outside = tmp_path / "outside.safetensors"
    save_file(state, str(outside))  # a complete, loadable file outside the directory
    shard = str(outside) if escape == "ABSOLUTE" else escape
    _write_index(ckpt, dict.fromkeys(weight_map, shard))
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json.*not a file inside"):
        convbert.ConvBertModel.from_pretrained(ckpt)


@pytest.mark.parametrize("text, match", [
    ("{not json", "not a valid JSON file"),
    (b"\xff\xfe\x00binary", "not a valid JSON file"),
    ('{"metadata": {}}', '"weight_map"'),
    ('[1, 2]', '"weight_map"'),
    ('{"weight_map": ["a"]}', '"weight_map"'),
    ('{"weight_map": {"w": 3}}', '"weight_map" entry \'w\''),
])
def test_malformed_shard_index_is_a_clear_error(tmp_path, text, match):
    _sharded(tmp_path)
    index = tmp_path / "model.safetensors.index.json"
    index.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(CheckpointError, match=match) as err:
        convbert.ConvBertModel.from_pretrained(tmp_path)
    assert "model.safetensors.index.json" in str(err.value)


def test_overlapping_shards_are_an_error(tmp_path):
    state, weight_map = _sharded(tmp_path)
    name = sorted(weight_map)[0]  # in shard 1; put a different copy into shard 2 as well
    second = "model-00002-of-00002.safetensors"
    keys = [k for k, s in weight_map.items() if s == second]
    save_file({**{k: state[k] for k in keys}, name: torch.zeros_like(state[name])}, str(tmp_path / second))
    with pytest.raises(CheckpointError, match=f"{name!r} is in two shards"):
        convbert.ConvBertModel.from_pretrained(tmp_path)


def test_index_and_shards_must_agree(tmp_path):
    _, weight_map = _sharded(tmp_path)
    name = sorted(weight_map)[0]
    _write_index(tmp_path, {**weight_map, name: "model-00002-of-00002.safetensors"})
    with pytest.raises(CheckpointError, match=f"{name!r}.*does not hold it"):
        convbert.ConvBertModel.from_pretrained(tmp_path)
    _write_index(tmp_path, {**weight_map, name: "model-00003-of-00002.safetensors"})
    with pytest.raises(CheckpointError, match="model-00003-of-00002.safetensors"):
        convbert.ConvBertModel.from_pretrained(tmp_path)


def test_checkpoint_with_no_matching_key_is_an_error(tmp_path):
    ConvBertConfig(**SMALL).save_pretrained(tmp_path)
    save_file({"bert.foo.weight": torch.zeros(3), "cls.bias": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="none of the checkpoint's 2 tensors") as err:
        convbert.ConvBertForMaskedLM.from_pretrained(tmp_path)
    assert str(tmp_path) in str(err.value)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="none of"):
        model.load_pretrained_state_dict({"embeddings.position_ids": torch.arange(12)[None]})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_legacy_bin_must_be_a_dict_of_tensors(tmp_path):
    ConvBertConfig(**SMALL).save_pretrained(tmp_path)
    torch.save({"state_dict": {"a": torch.zeros(1)}}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: entry 'state_dict'"):
        convbert.ConvBertModel.from_pretrained(tmp_path)
    torch.save([torch.zeros(1)], tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="not a dict of tensors"):
        convbert.ConvBertModel.from_pretrained(tmp_path)


def test_legacy_bin_never_unpickles_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('ran code')",))

    ConvBertConfig(**SMALL).save_pretrained(tmp_path)
    torch.save({"w": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="could not read weights"):
        convbert.ConvBertModel.from_pretrained(tmp_path)


# --------------------------------------------------------------------------- dtype and loading info


@pytest.mark.parametrize("name, want", [("float16", torch.float16), ("bfloat16", torch.bfloat16),
                                        ("float32", torch.float32), ("torch.float64", torch.float64),
                                        (torch.bfloat16, torch.bfloat16)])
def test_dtype_names_are_accepted(tmp_path, name, want):
    _model().save_pretrained(tmp_path)
    assert convbert.ConvBertModel.from_pretrained(tmp_path, dtype=name).dtype == want
    assert convbert.ConvBertModel.from_pretrained(tmp_path, torch_dtype=name).dtype == want


def test_bad_dtypes_are_clear_errors(tmp_path):
    _model().save_pretrained(tmp_path)
    for bad in ("float17", "int8", torch.int64, "cuda"):
        with pytest.raises(ValueError, match="dtype must be"):
            convbert.ConvBertModel.from_pretrained(tmp_path, dtype=bad)
    with pytest.raises(ValueError, match="not both"):
        convbert.ConvBertModel.from_pretrained(tmp_path, dtype="float16", torch_dtype="float16")


def test_dtype_auto_follows_config_then_checkpoint(tmp_path):
    model = _model().to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    assert convbert.ConvBertModel.from_pretrained(tmp_path).dtype == torch.float32  # no dtype: float32
    assert convbert.ConvBertModel.from_pretrained(tmp_path, dtype="auto").dtype == torch.bfloat16
    # Without a dtype key: the checkpoint's dtype; an older config's torch_dtype key is read too.
    config = json.loads((tmp_path / "config.json").read_text())
    del config["dtype"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert convbert.ConvBertModel.from_pretrained(tmp_path, dtype="auto").dtype == torch.bfloat16
    (tmp_path / "config.json").write_text(json.dumps({**config, "torch_dtype": "float16"}))
    assert convbert.ConvBertModel.from_pretrained(tmp_path, torch_dtype="auto").dtype == torch.float16
    (tmp_path / "config.json").write_text(json.dumps({**config, "dtype": "float99"}))
    with pytest.raises(ValueError, match="config's 'dtype' must be"):
        convbert.ConvBertModel.from_pretrained(tmp_path, dtype="auto")


def test_output_loading_info_is_a_transformers_style_dict(tmp_path):
    _model().save_pretrained(tmp_path)
    model, info = convbert.ConvBertForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(model, convbert.ConvBertForSequenceClassification)
    assert isinstance(info, dict)
    assert set(info) == {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}
    assert all(isinstance(v, list) for v in info.values())
    assert "classifier.dense.weight" in info["missing_keys"] and info["unexpected_keys"] == []
    assert info.missing_keys is info["missing_keys"]  # attribute access still works


# --------------------------------------------------------------------------- config


def _write_config(tmp_path, **changes):
    values = {**ConvBertConfig(**SMALL).to_dict(), **changes}
    (tmp_path / "config.json").write_text(json.dumps(values))


@pytest.mark.parametrize("key, value", [
    ("conv_mask_padding", "false"), ("tie_word_embeddings", 1), ("return_dict", None),
    ("hidden_size", 24.0), ("num_hidden_layers", "1"), ("vocab_size", True),
    ("layer_norm_eps", "1e-12"), ("hidden_dropout_prob", "0.1"), ("pad_token_id", 1.5),
    ("conv_backend", 3), ("architectures", "ConvBertModel"), ("id2label", ["a", "b"]),
    ("id2label", {"x": "a"}), ("num_labels", "2"),
])
def test_config_rejects_wrong_types(tmp_path, key, value):
    _write_config(tmp_path, **{key: value})
    with pytest.raises(ValueError, match=key) as err:
        ConvBertConfig.from_pretrained(tmp_path)
    assert "config.json" in str(err.value)
    with pytest.raises(ValueError, match=key):
        ConvBertConfig.from_dict({**SMALL, key: value})


@pytest.mark.parametrize("key, value", [
    ("layer_norm_eps", -1e-12), ("layer_norm_eps", 0), ("layer_norm_eps", float("nan")),
    ("hidden_dropout_prob", 1.5), ("attention_probs_dropout_prob", -0.1), ("classifier_dropout", 2),
    ("initializer_range", -0.02), ("initializer_range", float("inf")), ("type_vocab_size", 0),
    ("problem_type", "ranking"),
])
def test_config_rejects_out_of_range_values(tmp_path, key, value):
    _write_config(tmp_path, **{key: value})
    with pytest.raises(ValueError, match=key) as err:
        ConvBertConfig.from_json_file(tmp_path / "config.json")
    assert "config.json" in str(err.value)


@pytest.mark.parametrize("key", ["num_heads", "head_size", "validate", "to_dict", "from_pretrained", "__class__",
                                 "_extra"])
def test_config_refuses_keys_that_hide_properties_or_methods(tmp_path, key):
    _write_config(tmp_path, **{key: 3})
    with pytest.raises(ValueError, match=f"{key!r} is reserved") as err:
        ConvBertConfig.from_pretrained(tmp_path)
    assert "config.json" in str(err.value)
    with pytest.raises(ValueError, match="reserved"):
        ConvBertConfig.from_dict({**SMALL, key: 3})


def test_model_overrides_are_validated_too(tmp_path):
    _model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="reserved"):
        convbert.ConvBertModel.from_pretrained(tmp_path, config=ConvBertConfig(**SMALL), validate=1)
    with pytest.raises(ValueError, match="conv_mask_padding"):
        convbert.ConvBertModel.from_pretrained(tmp_path, config=ConvBertConfig(**SMALL), conv_mask_padding="no")
    with pytest.raises(ValueError, match="conv_mask_padding"):
        convbert.ConvBertModel.from_pretrained(tmp_path, conv_mask_padding="no")


@pytest.mark.parametrize("content, match", [
    (b"[1, 2, 3]", "JSON object"),
    (b'"convbert"', "JSON object"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a valid JSON file"),
    (b"{broken", "not a valid JSON file"),
])
def test_config_file_that_is_not_a_json_object(tmp_path, content, match):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        ConvBertConfig.from_pretrained(tmp_path)
    assert "config.json" in str(err.value)
    with pytest.raises(ValueError, match=match):
        convbert.ConvBertModel.from_pretrained(tmp_path)
    with pytest.raises(TypeError, match="must be a dict"):
        ConvBertConfig.from_dict([1, 2, 3])


def test_valid_hf_style_configs_still_load(tmp_path):
    # Keys transformers writes (and private ones older versions wrote) keep loading and round-trip.
    _write_config(tmp_path, _name_or_path="x/y", transformers_version="5.0.0", dtype="float32", hidden_dropout_prob=0,
                  classifier_dropout=None, eos_token_id=[2, 3], id2label={"0": "neg", "1": "pos"})
    config = ConvBertConfig.from_pretrained(tmp_path)
    assert config.hidden_dropout_prob == 0 and config.id2label == {0: "neg", 1: "pos"}
    assert config.to_dict()["_name_or_path"] == "x/y"
    assert ConvBertConfig(model_type="convbert", **SMALL).num_heads == 2
