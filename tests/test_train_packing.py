"""convbert-train and unpadding: ``finetune --unpad/--no-unpad`` (default: unpad when the model masks
padding) and ``pretrain --pack-documents`` (several whole documents per block, none seeing another).
Tiny models, CPU, the eager backend, a few steps."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

import convbert
from convbert.configuration import MODEL_SIZES
from convbert.train import run
from convbert.train.data import pack_whole_documents
from convbert.train.electra import ElectraPretrainer, MlmPretrainer, mask_tokens

TINY = ["--model-size", "tiny", "--backend", "eager", "--no-progress", "--log-every", "100"]
NO_DROPOUT = ["--set", "hidden_dropout_prob=0", "--set", "attention_probs_dropout_prob=0"]
_WORDS = ("the cat sees a red ball in the park while my old dog likes the green house near the long river "
          "under an old bridge and our team builds a wooden table").split()


def _text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(low, high)))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("packing")


@pytest.fixture(scope="module")
def corpus(work) -> Path:
    """Documents of very different lengths, some longer than a 32-token block."""
    rng = random.Random(0)
    path = work / "corpus.txt"
    path.write_text("\n".join(_text(rng, 2, 50) for _ in range(200)) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer(work, corpus):
    from convbert import ConvBertTokenizerFast, train_wordpiece_vocab

    return ConvBertTokenizerFast.from_pretrained(train_wordpiece_vocab([str(corpus)], 80, str(work / "tokenizer")))


def _metrics(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r.get("type", "train") == "train"]


# --------------------------------------------------------------------------- packing whole documents


def test_blocks_hold_whole_numbered_documents_with_their_own_positions(tokenizer):
    rng = random.Random(1)
    documents = [_text(rng, 1, 40) for _ in range(60)] + ["the " * 70]  # the last one spans three blocks
    seq_len = 32
    blocks = pack_whole_documents(tokenizer, documents, seq_len)
    ids, mask, positions = blocks["input_ids"], blocks["attention_mask"], blocks["position_ids"]
    assert ids.shape == mask.shape == positions.shape and ids.shape[1] == seq_len
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    expected = []  # every document's tokens, cut into pieces of seq_len - 2
    for tokens in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        expected += [tuple(tokens[i:i + seq_len - 2]) for i in range(0, len(tokens), seq_len - 2)]
    found = []
    for row in range(len(ids)):
        m, p, x = mask[row].tolist(), positions[row].tolist(), ids[row].tolist()
        filled = sum(v != 0 for v in m)
        assert all(v == 0 for v in m[filled:]) and all(v == pad for v in x[filled:]) and not any(p[filled:])
        numbers = m[:filled]
        assert numbers[0] == 1 and all(b - a in (0, 1) for a, b in zip(numbers, numbers[1:]))  # 1 1 2 2 2 3 ...
        for number in range(1, max(numbers) + 1):
            span = [i for i, v in enumerate(m) if v == number]
            piece = [x[i] for i in span]
            assert [p[i] for i in span] == list(range(len(span)))  # positions restart at 0
            assert piece[0] == cls and piece[-1] == sep and cls not in piece[1:-1] and sep not in piece[1:-1]
            found.append(tuple(piece[1:-1]))
    assert sorted(found) == sorted(expected)  # each document (piece) exactly once
    assert sum(1 for f in found if len(f) == seq_len - 2) >= 2  # the long document was cut
    assert float((mask != 0).float().mean()) > 0.9  # best fit leaves little unfilled


def _documents_of(blocks, row: int) -> list[slice]:
    m = blocks["attention_mask"][row].tolist()
    return [slice(m.index(n), len(m) - m[::-1].index(n)) for n in range(1, max(m) + 1)]


def test_packed_documents_never_see_each_other(tokenizer):
    """Through the model: a document in a block gives the hidden states it gives alone, and changing
    one document of a block changes no other document's hidden states."""
    rng = random.Random(2)
    blocks = pack_whole_documents(tokenizer, [_text(rng, 3, 12) for _ in range(12)], 48)
    row = max(range(len(blocks["input_ids"])), key=lambda r: int(blocks["attention_mask"][r].max()))
    docs = _documents_of(blocks, row)
    assert len(docs) >= 3
    torch.manual_seed(0)
    config = convbert.ConvBertConfig(**MODEL_SIZES["tiny"], vocab_size=len(tokenizer),
                                     max_position_embeddings=64, conv_backend="eager", conv_mask_padding=True,
                                     unpad_inputs=True)
    model = convbert.ConvBertModel(config).eval()
    with torch.no_grad():  # weights at trained scale, where a leak would show
        for name, p in model.named_parameters():
            if p.dim() > 1 and "LayerNorm" not in name:
                p.normal_(0, 0.3)
    inputs = {k: v[row:row + 1] for k, v in blocks.items()}
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state[0]
        for doc in docs:
            alone = model(input_ids=inputs["input_ids"][:, doc]).last_hidden_state[0]
            torch.testing.assert_close(hidden[doc], alone, atol=2e-5, rtol=1e-5)
        changed = dict(inputs, input_ids=inputs["input_ids"].clone())
        middle = docs[1]
        changed["input_ids"][0, middle.start + 1:middle.stop - 1] = tokenizer.mask_token_id
        after = model(**changed).last_hidden_state[0]
    assert not torch.allclose(after[middle], hidden[middle])
    for doc in docs[:1] + docs[2:]:
        torch.testing.assert_close(after[doc], hidden[doc], atol=1e-6, rtol=0)


def test_masking_skips_special_tokens_and_padding_of_packed_blocks(tokenizer):
    rng = random.Random(3)
    blocks = pack_whole_documents(tokenizer, [_text(rng, 2, 20) for _ in range(40)], 32)
    ids, mask = blocks["input_ids"], blocks["attention_mask"]
    special = [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id]
    _, labels = mask_tokens(ids, mask, special_ids=special, mask_id=tokenizer.mask_token_id,
                            vocab_size=len(tokenizer), rng=torch.Generator().manual_seed(0), rate=0.5)
    chosen = labels != -100
    assert chosen.any() and not (chosen & (mask == 0)).any()
    for sid in special:
        assert not (chosen & (ids == sid)).any()
    assert MlmPretrainer.tokens_in(blocks) == int((mask != 0).sum()) < int(mask.sum())


def test_electra_on_packed_blocks_weighs_every_token_once(tokenizer):
    """The discriminator loss averages over the real tokens (not weighted by document numbers), and
    position_ids reach both models: the loss equals the one of each row's documents as separate rows."""
    rng = random.Random(4)
    blocks = pack_whole_documents(tokenizer, [_text(rng, 2, 10) for _ in range(10)], 40)
    torch.manual_seed(0)
    config = convbert.ConvBertConfig(**MODEL_SIZES["tiny"], vocab_size=len(tokenizer),
                                     max_position_embeddings=64, conv_backend="eager", conv_mask_padding=True,
                                     unpad_inputs=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    special = [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id]
    module = ElectraPretrainer(config, special_ids=special, mask_id=tokenizer.mask_token_id,
                               pad_id=tokenizer.pad_token_id).eval()
    batch = module.make_batch({k: v[:1] for k, v in blocks.items()}, torch.Generator().manual_seed(0))
    assert "position_ids" in batch
    packed = module(**batch)
    # the same tokens, one document per row, padded: the same mean over real tokens
    docs = _documents_of(blocks, 0)
    width = max(d.stop - d.start for d in docs)
    rows = {k: torch.zeros(len(docs), width, dtype=torch.long) for k in ("input_ids", "attention_mask", "labels")}
    rows["labels"].fill_(-100)
    for i, d in enumerate(docs):
        n = d.stop - d.start
        rows["input_ids"][i, :n] = batch["input_ids"][0, d]
        rows["attention_mask"][i, :n] = 1
        rows["labels"][i, :n] = batch["labels"][0, d]
    separate = module(**rows, sample_seed=batch["sample_seed"])
    for key in ("gen_loss", "disc_loss", "disc_acc"):
        torch.testing.assert_close(packed[key], separate[key], atol=1e-5, rtol=1e-5)


def test_pretrain_with_pack_documents_end_to_end(work, corpus, tokenizer, capsys):
    out = work / "packed-mlm"
    summary = run(["pretrain", "--train-file", str(corpus), "--tokenizer", str(work / "tokenizer"),
                   "--output-dir", str(out), *TINY, "--seq-len", "32", "--objective", "mlm", "--max-steps", "3",
                   "--batch-size", "4", "--pack-documents", "--held-out", "0.05"])
    assert summary["steps"] == 3 and summary["eval"]["eval_masked_tokens"] > 0
    printed = capsys.readouterr().out
    assert "packed whole" in printed and "padding: dropped after the embeddings" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["conv_mask_padding"] is True and config["unpad_inputs"] is True
    records = _metrics(out)
    assert all(0 < r["tokens"] <= 4 * 32 for r in records)  # real tokens, not a sum of document numbers
    loaded = convbert.ConvBertForMaskedLM.from_pretrained(out, conv_backend="eager")
    assert loaded.config.unpad_inputs

    electra = work / "packed-electra"
    summary = run(["pretrain", "--train-file", str(corpus), "--tokenizer", str(work / "tokenizer"),
                   "--output-dir", str(electra), *TINY, "--seq-len", "32", "--max-steps", "2", "--batch-size", "4",
                   "--pack-documents", "--held-out", "0", "--save-every", "1"])
    assert summary["steps"] == 2 and all(torch.isfinite(torch.tensor(r["disc_loss"])) for r in _metrics(electra))
    # resuming with --no-unpad is refused (documents share a block); without the flag it continues
    with pytest.raises(SystemExit, match="--pack-documents needs the unpadded model"):
        run(["pretrain", "--train-file", str(corpus), "--tokenizer", str(work / "tokenizer"), "--output-dir",
             str(work / "refused"), *TINY, "--seq-len", "32", "--max-steps", "1", "--pack-documents", "--no-unpad"])
    summary = run(["pretrain", "--train-file", str(corpus), "--tokenizer", str(work / "tokenizer"),
                   "--output-dir", str(electra), *TINY, "--seq-len", "32", "--max-steps", "3", "--batch-size", "4",
                   "--pack-documents", "--held-out", "0", "--save-every", "1", "--resume"])
    assert summary["steps"] == 3


# --------------------------------------------------------------------------- finetune --unpad


@pytest.fixture(scope="module")
def labelled(work) -> Path:
    """Texts of 2 to 40 words (so batches carry much padding); label: whether "cat" occurs."""
    rng = random.Random(5)
    path = work / "train.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        for _ in range(48):
            text = _text(rng, 2, 40)
            w.writerow({"text": text, "label": int("cat" in text.split())})
    return path


def _finetune(work, labelled, name: str, *extra: str) -> tuple[Path, dict]:
    out = work / name
    summary = run(["finetune", "--train-file", str(labelled), "--tokenizer", str(work / "tokenizer"),
                   "--output-dir", str(out), *TINY, "--seq-len", "48", "--batch-size", "8", "--max-steps", "2",
                   "--lr", "1e-3", *extra])
    return out, summary


def test_finetune_unpads_by_default_when_the_model_masks_padding(work, labelled, tokenizer, capsys):
    masked = ["--set", "conv_mask_padding=true", *NO_DROPOUT]
    unpadded, _ = _finetune(work, labelled, "ft-default", *masked, "--save-every", "1")
    assert "padding: dropped after the embeddings" in capsys.readouterr().out
    padded, _ = _finetune(work, labelled, "ft-no-unpad", *masked, "--no-unpad")
    assert "padding: kept, masked out of the convolutions" in capsys.readouterr().out
    config_u = json.loads((unpadded / "config.json").read_text())
    config_p = json.loads((padded / "config.json").read_text())
    assert config_u["unpad_inputs"] is True and config_u["conv_mask_padding"] is True
    assert config_p["unpad_inputs"] is False and config_p["conv_mask_padding"] is True
    first_u, first_p = _metrics(unpadded)[0], _metrics(padded)[0]
    assert first_u["tokens"] == first_p["tokens"]  # the same real tokens
    assert first_u["loss"] == pytest.approx(first_p["loss"], rel=1e-5, abs=1e-6)
    assert first_u["grad_norm"] == pytest.approx(first_p["grad_norm"], rel=1e-4)
    assert _metrics(unpadded)[1]["loss"] == pytest.approx(_metrics(padded)[1]["loss"], rel=1e-4)
    # unpadding is how, not what, the model computes: a run resumes with the other choice
    summary = run(["finetune", "--train-file", str(labelled), "--tokenizer", str(work / "tokenizer"),
                   "--output-dir", str(unpadded), *TINY, "--seq-len", "48", "--batch-size", "8", "--max-steps", "3",
                   "--lr", "1e-3", *masked, "--no-unpad", "--resume"])
    assert summary["steps"] == 3
    assert json.loads((unpadded / "config.json").read_text())["unpad_inputs"] is False


def test_finetune_keeps_hugging_face_padding_unless_asked(work, labelled, tokenizer, capsys):
    """A model without conv_mask_padding (any Hugging Face checkpoint) trains padded by default;
    --unpad masks the padding and drops it (both keys saved)."""
    default, _ = _finetune(work, labelled, "ft-hf", *NO_DROPOUT)
    assert "Hugging Face semantics" in capsys.readouterr().out
    config = json.loads((default / "config.json").read_text())
    assert config["unpad_inputs"] is False and config["conv_mask_padding"] is False
    asked, _ = _finetune(work, labelled, "ft-unpad", *NO_DROPOUT, "--unpad")
    config = json.loads((asked / "config.json").read_text())
    assert config["unpad_inputs"] is True and config["conv_mask_padding"] is True
    # from a checkpoint: the flag applies to --init-from's config too, and finetuning from the
    # unpadded checkpoint keeps unpadding
    again, _ = _finetune(work, labelled, "ft-from-unpadded", "--init-from", str(asked))
    assert json.loads((again / "config.json").read_text())["unpad_inputs"] is True
    off, _ = _finetune(work, labelled, "ft-from-unpadded-off", "--init-from", str(asked), "--no-unpad")
    config = json.loads((off / "config.json").read_text())
    assert config["unpad_inputs"] is False and config["conv_mask_padding"] is True
