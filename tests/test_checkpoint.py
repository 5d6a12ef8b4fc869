"""from_pretrained / save_pretrained: layouts, prefixes, and failures that must be loud."""

import logging

import pytest
import torch
from safetensors.torch import save_file

import convbert
from convbert import ConvBertConfig
from convbert.pretrained import CheckpointError

SMALL = dict(vocab_size=40, hidden_size=24, num_hidden_layers=1, num_attention_heads=4, intermediate_size=30,
             embedding_size=16, max_position_embeddings=12, conv_kernel_size=3, conv_backend="eager")


def _model(cls=convbert.ConvBertForMaskedLM, **kw):
    torch.manual_seed(0)
    return cls(ConvBertConfig(**{**SMALL, **kw})).eval()


def _same_params(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_safetensors_and_bin(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path / "safe")
    assert sorted(p.name for p in (tmp_path / "safe").iterdir()) == ["config.json", "model.safetensors"]
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    for sub in ("safe", "bin"):
        back = convbert.ConvBertForMaskedLM.from_pretrained(tmp_path / sub)
        assert _same_params(model, back)
        assert back.generator_lm_head.weight is back.convbert.embeddings.word_embeddings.weight
        assert not back.training


def test_backbone_and_head_checkpoints_load_into_each_other(tmp_path, caplog):
    head = _model()
    head.save_pretrained(tmp_path / "head")
    with caplog.at_level(logging.WARNING, logger="convbert"):
        backbone, info = convbert.ConvBertModel.from_pretrained(tmp_path / "head", output_loading_info=True)
    assert any(k.startswith("generator_predictions") for k in info.unexpected_keys)
    assert info.missing_keys == [] and "not used" in caplog.text
    assert _same_params(backbone, head.convbert)

    backbone.save_pretrained(tmp_path / "bare")
    clf, info = convbert.ConvBertForSequenceClassification.from_pretrained(tmp_path / "bare", output_loading_info=True)
    assert set(info.missing_keys) == {"classifier.dense.weight", "classifier.dense.bias",
                                      "classifier.out_proj.weight", "classifier.out_proj.bias"}
    assert info.unexpected_keys == []
    assert _same_params(clf.convbert, head.convbert)


def test_old_position_id_buffers_are_ignored(tmp_path):
    model = _model(convbert.ConvBertModel)
    model.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["embeddings.position_ids"] = torch.arange(12)[None]
    state["embeddings.token_type_ids"] = torch.zeros(1, 12, dtype=torch.long)
    save_file(state, str(tmp_path / "model.safetensors"))
    _, info = convbert.ConvBertModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info.unexpected_keys == [] and info.missing_keys == []


def test_config_overrides(tmp_path):
    _model().save_pretrained(tmp_path)
    m = convbert.ConvBertForMaskedLM.from_pretrained(tmp_path, conv_backend="reference")
    assert m.config.conv_backend == "reference"
    assert convbert.ConvBertForMaskedLM.from_pretrained(tmp_path, dtype=torch.float64).dtype == torch.float64


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convbert.ConvBertModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        convbert.ConvBertModel.from_pretrained(tmp_path)
    ConvBertConfig(**SMALL).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights"):
        convbert.ConvBertModel.from_pretrained(tmp_path)


def test_truncated_and_corrupt_weights(tmp_path):
    _model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        convbert.ConvBertForMaskedLM.from_pretrained(tmp_path)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        convbert.ConvBertForMaskedLM.from_pretrained(tmp_path)


def test_shape_mismatch_is_an_error_and_changes_nothing(tmp_path):
    _model(hidden_size=32).save_pretrained(tmp_path)
    target = _model()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    from convbert.pretrained import load_state_dict_from_directory

    with pytest.raises(CheckpointError, match="shapes do not match"):
        target.load_pretrained_state_dict(load_state_dict_from_directory(tmp_path))
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    with pytest.raises(CheckpointError, match="encoder.layer.0"):
        convbert.ConvBertForMaskedLM.from_pretrained(tmp_path, config=ConvBertConfig(**SMALL))


def test_save_into_a_file_path_fails(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError):
        _model().save_pretrained(f)
