"""Tokenizer tests: parity with transformers' BERT tokenizers, robust vocabularies, save/load, training.

References (looked up by name so the tests work across transformers 4.x / 5.x):
  slow: the pure-Python BERT tokenizer (``BertTokenizerLegacy`` in transformers 5, ``BertTokenizer`` in 4)
  fast: the tokenizers-backed BERT tokenizer (``BertTokenizer`` in transformers 5, ``BertTokenizerFast`` in 4)
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import unicodedata

import pytest
import torch

from convbert import ConvBertTokenizer, ConvBertTokenizerFast, train_wordpiece_vocab
from convbert.tokenization_base import BatchEncoding, VocabularyError

# transformers warns when padding=True meets max_length without truncation (a combination tested on purpose)
pytestmark = pytest.mark.filterwarnings("ignore:`max_length` is ignored:UserWarning")

# ---------------------------------------------------------------------------------------------- corpus
LONG_101 = "a" * 101
LONG_136 = "supercalifragilisticexpialidocious" * 4
EXACT_100 = "b" * 100

CORPUS = [
    "Hello, World! The quick brown fox jumps over the lazy dog.",
    "Café naïve résumé Ångström Żółć façade coöperate ÉCOLE Straße İstanbul ß ﬁ Ⅻ ① ²",
    "Cafe\u0301 n\u0303o e\u0301\u0301 a\u0308 o\u0328\u0304 \u0301leading combining",
    "我爱北京天安门。東京は日本の首都です 한국어 텍스트 \U00020000\U0002a700 ㄅ カタカナ",
    "Привет, мир! Γειά σου κόσμε مرحبا بالعالم שלום עולם नमस्ते दुनिया ภาษาไทย ქართული",
    'He said: "wait..." — (really?) [yes] {no} <maybe> ¿Qué? ¡Sí! «quote» \'single\' `tick` ~^$|@#%&*_+=\\/',
    "zero\u200bwidth\u200cnon\u200djoin x\ufeffbom \x00null \x07bell \x1b[0m \ufffdrepl soft\u00adhyphen \ue000pua",
    "tab\there\r\nCRLF\rCR\u3000ideo\u00a0nbsp\u2003emsp \u2028line\u2029para \x0bvt \x0cff \x85nel\n",
    "I \u2764\ufe0f 🤗 👍🏽 🇫🇷 👨\u200d👩\u200d👧 ☕ emoji!",
    f"{LONG_101} {LONG_136} {EXACT_100} ok",
    "[CLS] hello [SEP] world [MASK]x[PAD] [unused1] [UNK] hello[MASK]world [mask] [Mask] C++ c++",
    "Numbers 3.14 1,000 2nd 10% $5 and tokenization convolution unaffable UNAFFABLE",
    "",
    "   \t\r\n  ",
]

NEVER_SPLIT = ["[unused1]", "C++", "Hello"]

EXTRA_WORDS = [
    "hello", "world", "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "cafe", "café",
    "naive", "resume", "token", "##ization", "conv", "##olution", "un", "##aff", "##able", "una",
    "C++", "c++", "Hello", "World", "The", "ok", "emoji", "##s", "##ing", "said", "wait", "really",
    "straße", "strasse", "ecole", "école", "numbers", "and", "mask", "cls", "sep", "##ll", "he", "##llo",
]


def _vocab_tokens() -> list[str]:
    """BERT-uncased layout, then words and every character (and its case/accent variants) of the corpus."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars: set[str] = set()
    for text in CORPUS:
        for variant in (text, text.lower(), unicodedata.normalize("NFD", text), unicodedata.normalize("NFC", text.lower())):
            chars.update(c for c in variant if not c.isspace())
    skip = {"🤗", "☕", "ქ"}  # some characters stay unknown on purpose
    words = list(dict.fromkeys(EXTRA_WORDS))
    for c in sorted(chars - skip):
        words += [c, "##" + c]
    return tokens + words


def write_vocab(path, tokens, newline="\r\n"):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("".join(t + newline for t in tokens))
    return str(path)


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    """vocab.txt with CRLF line endings and duplicated entries (like the published ConvBERT vocabulary)."""
    d = tmp_path_factory.mktemp("vocab")
    tokens = _vocab_tokens()
    dups = ["hello", "##s", "the", "a", "##a", "world"]  # appear earlier too: the last line must win
    write_vocab(d / "vocab.txt", tokens + dups)
    return d


@pytest.fixture(scope="module")
def vocab_file(vocab_dir):
    return str(vocab_dir / "vocab.txt")


# ---------------------------------------------------------------------------------------------- references
def _find_reference(kind: str):
    transformers = pytest.importorskip("transformers")
    candidates = {
        "slow": [
            ("transformers.models.bert.tokenization_bert_legacy", "BertTokenizerLegacy"),
            ("transformers", "BertTokenizerLegacy"),
            ("transformers.models.bert.tokenization_bert", "BertTokenizer"),  # transformers 4: the slow one
        ],
        "fast": [
            ("transformers.models.bert.tokenization_bert_fast", "BertTokenizerFast"),  # transformers 4
            ("transformers.models.bert.tokenization_bert", "BertTokenizer"),  # transformers 5: tokenizers-backed
        ],
    }[kind]
    for module, name in candidates:
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if cls is None:
            continue
        if kind == "slow" and "tokenizers" in " ".join(c.__name__ for c in cls.__mro__).lower():
            continue
        if kind == "fast" and not any("Fast" in c.__name__ or "Tokenizers" in c.__name__ for c in cls.__mro__):
            continue
        return cls
    pytest.skip(f"transformers {transformers.__version__} has no {kind} BERT tokenizer class among {candidates}")


@pytest.fixture(scope="module")
def ref_slow_cls():
    return _find_reference("slow")


@pytest.fixture(scope="module")
def ref_fast_cls():
    return _find_reference("fast")


def make_ref_slow(cls, vocab_file, **opts):
    tok = cls(vocab_file=vocab_file, **opts)
    assert not tok.is_fast
    return tok


def make_ref_fast(cls, vocab_dir, **opts):
    tok = cls.from_pretrained(str(vocab_dir), **opts)
    assert tok.is_fast
    norm = repr(tok.backend_tokenizer.normalizer)
    assert f"lowercase={opts.get('do_lower_case', True)}" in norm, norm  # the options reached the reference
    return tok


CONFIGS = [
    dict(do_lower_case=dl, strip_accents=sa, tokenize_chinese_chars=tc)
    for dl, sa, tc in itertools.product([True, False], [None, True, False], [True, False])
]
CONFIG_IDS = [f"lower={c['do_lower_case']}-strip={c['strip_accents']}-cjk={c['tokenize_chinese_chars']}" for c in CONFIGS]

# ---------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("opts", CONFIGS, ids=CONFIG_IDS)
def test_slow_parity_tokens_ids_decode(opts, vocab_file, ref_slow_cls):
    ours = ConvBertTokenizer(vocab_file, never_split=NEVER_SPLIT, **opts)
    ref = make_ref_slow(ref_slow_cls, vocab_file, never_split=NEVER_SPLIT, **opts)
    for text in CORPUS:
        assert ours.tokenize(text) == ref.tokenize(text), repr(text)
        ids = ours.encode(text)
        assert ids == ref.encode(text), repr(text)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), repr(text)
    assert ours.decode(list(range(len(ours._vocab_lines)))) == ref.decode(list(range(len(ours._vocab_lines))))


@pytest.mark.parametrize("opts", CONFIGS, ids=CONFIG_IDS)
def test_fast_parity_tokens_ids_decode(opts, vocab_dir, vocab_file, ref_fast_cls):
    ours = ConvBertTokenizerFast(vocab_file, **opts)
    ref = make_ref_fast(ref_fast_cls, vocab_dir, **opts)
    for text in CORPUS:
        assert ours.tokenize(text) == ref.tokenize(text), repr(text)
        ids = ours.encode(text)
        assert ids == ref.encode(text), repr(text)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), repr(text)


def test_slow_and_fast_agree_where_the_references_agree(vocab_file):
    """Default options: both of ours give the same ids on the corpus (the references do too)."""
    slow, fast = ConvBertTokenizer(vocab_file), ConvBertTokenizerFast(vocab_file)
    for text in CORPUS:
        assert slow.encode(text) == fast.encode(text), repr(text)


PAIR_A = [
    "The quick brown fox jumps over the lazy dog again and again and again.",
    "Café naïve résumé, hello world!",
    "我爱北京天安门 hello world 東京",
    "short",
    "token ization conv olution una ff able he llo wor ld",
]
PAIR_B = [
    "Hello world, the lazy dog sleeps while the fox jumps.",
    "[MASK] hello [SEP] world emoji 🤗 ☕ and more words here too",
    "Привет мир hello hello hello hello hello",
    "a much longer second sequence with many many words in it for truncation",
    "una ff able he llo wor ld token ization conv olution",  # same length as its first: odd budgets split differently
]
PADDINGS = [False, True, "longest", "max_length"]
TRUNCATIONS = [None, False, True, "longest_first", "only_first", "only_second"]


def _call(tok, *args, **kwargs):
    try:
        out = tok(*args, return_token_type_ids=True, return_attention_mask=True, **kwargs)
    except Exception as exc:  # a strategy that cannot be satisfied must fail in both
        return ("error",)
    return {k: out[k] for k in ("input_ids", "token_type_ids", "attention_mask")}


@pytest.mark.parametrize("which", ["slow", "fast"])
def test_batched_pairs_padding_truncation_parity(which, vocab_dir, vocab_file, request):
    if which == "slow":
        ref = make_ref_slow(request.getfixturevalue("ref_slow_cls"), vocab_file)
        ours = ConvBertTokenizer(vocab_file)
    else:
        ref = make_ref_fast(request.getfixturevalue("ref_fast_cls"), vocab_dir)
        ours = ConvBertTokenizerFast(vocab_file)
    n_cases = n_ok = 0
    for padding, truncation, max_length in itertools.product(PADDINGS, TRUNCATIONS, [None, 17, 24]):
        kw = dict(padding=padding, truncation=truncation, max_length=max_length)
        expected = _call(ref, PAIR_A, PAIR_B, **kw)
        assert _call(ours, PAIR_A, PAIR_B, **kw) == expected, kw
        assert _call(ours, list(zip(PAIR_A, PAIR_B)), **kw) == expected, kw
        assert _call(ours, PAIR_A, **kw) == _call(ref, PAIR_A, **kw), kw  # batch of single texts
        assert _call(ours, PAIR_A[0], PAIR_B[0], **kw) == _call(ref, PAIR_A[0], PAIR_B[0], **kw), kw  # one pair
        n_cases += 1
        n_ok += expected != ("error",)
    # padding options beyond the basic strategies
    for kw in (
        dict(padding=True, pad_to_multiple_of=8),
        dict(padding="max_length", max_length=40, padding_side="left"),
        dict(padding=True, truncation=True, max_length=16, pad_to_multiple_of=8),
    ):
        assert _call(ours, PAIR_A, PAIR_B, **kw) == _call(ref, PAIR_A, PAIR_B, **kw), kw
    assert n_cases == len(PADDINGS) * len(TRUNCATIONS) * 3
    assert n_ok >= n_cases * 3 // 4, (n_ok, n_cases)  # most combinations are satisfiable and compared


def test_known_slow_fast_longest_first_divergence_follows_references(vocab_dir, vocab_file, ref_slow_cls, ref_fast_cls):
    """For a pair of equal lengths and an odd number of tokens to keep, the Python reference gives the extra
    token to the first sequence (5 + 4) and the tokenizers one to the second (4 + 5); each of ours follows its reference."""
    a = b = "hello world the quick brown fox"
    kw = dict(truncation="longest_first", max_length=3 + 9, return_token_type_ids=True)
    slow = ConvBertTokenizer(vocab_file)(a, b, **kw)["token_type_ids"]
    fast = ConvBertTokenizerFast(vocab_file)(a, b, **kw)["token_type_ids"]
    assert slow == make_ref_slow(ref_slow_cls, vocab_file)(a, b, **kw)["token_type_ids"]
    assert fast == make_ref_fast(ref_fast_cls, vocab_dir)(a, b, **kw)["token_type_ids"]
    assert (slow.count(0), slow.count(1)) == (7, 5) and (fast.count(0), fast.count(1)) == (6, 6)


@pytest.mark.parametrize("cls_name", ["slow", "fast"])
def test_return_tensors_pt(cls_name, vocab_file):
    tok = (ConvBertTokenizer if cls_name == "slow" else ConvBertTokenizerFast)(vocab_file)
    enc = tok(PAIR_A, PAIR_B, padding=True, truncation=True, max_length=20, return_tensors="pt")
    assert isinstance(enc, BatchEncoding) and isinstance(enc, dict)
    assert set(enc) == {"input_ids", "token_type_ids", "attention_mask"}
    for value in enc.values():
        assert isinstance(value, torch.Tensor) and value.dtype == torch.long and value.shape == (len(PAIR_A), 20)
    assert torch.equal(enc.input_ids, enc["input_ids"])
    single = tok("hello world", return_tensors="pt")
    assert single["input_ids"].shape == (1, 4)
    with pytest.raises(ValueError, match="different lengths"):
        tok(PAIR_A, return_tensors="pt")
    no_extra = tok("hello", return_token_type_ids=False, return_attention_mask=False)
    assert list(no_extra) == ["input_ids"]


def test_special_token_helpers_match_reference(vocab_file, ref_slow_cls):
    ref = make_ref_slow(ref_slow_cls, vocab_file)
    for tok in (ConvBertTokenizer(vocab_file), ConvBertTokenizerFast(vocab_file)):
        assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 100, 101, 102, 103)
        a, b = [7, 8, 9], [10, 11]
        assert tok.build_inputs_with_special_tokens(a) == ref.build_inputs_with_special_tokens(a)
        assert tok.build_inputs_with_special_tokens(a, b) == ref.build_inputs_with_special_tokens(a, b)
        assert tok.create_token_type_ids_from_sequences(a, b) == ref.create_token_type_ids_from_sequences(a, b)
        assert tok.create_token_type_ids_from_sequences(a) == ref.create_token_type_ids_from_sequences(a)
        assert tok.get_special_tokens_mask(a, b) == ref.get_special_tokens_mask(a, b)
        full = tok.build_inputs_with_special_tokens(a, b)
        assert tok.get_special_tokens_mask(full, already_has_special_tokens=True) == [1, 0, 0, 0, 1, 0, 0, 1]
        assert tok.get_special_tokens_mask(full, already_has_special_tokens=True) == ref.get_special_tokens_mask(
            full, already_has_special_tokens=True
        )
        assert tok.num_special_tokens_to_add(pair=True) == 3
        assert tok.convert_tokens_to_ids(["hello", "notaword"]) == ref.convert_tokens_to_ids(["hello", "notaword"])
        assert tok.decode(tok.encode("Hello, world!"), skip_special_tokens=True) == "hello, world!"
        assert tok.batch_decode([tok.encode("hello"), tok.encode("world")]) == ["[CLS] hello [SEP]", "[CLS] world [SEP]"]


# ---------------------------------------------------------------------------------------------- vocabularies
def test_crlf_and_duplicates_load_like_reference(vocab_dir, vocab_file, ref_slow_cls, ref_fast_cls):
    n_lines = len(_vocab_tokens()) + 6
    n_distinct = len(set(_vocab_tokens()))
    slow, fast = ConvBertTokenizer(vocab_file), ConvBertTokenizerFast(vocab_file)
    rs, rf = make_ref_slow(ref_slow_cls, vocab_file), make_ref_fast(ref_fast_cls, vocab_dir)
    assert not any("\r" in t for t in slow.get_vocab())
    assert slow.vocab_size == rs.vocab_size == n_distinct < n_lines
    assert fast.vocab_size == rf.vocab_size == n_distinct
    assert len(slow) == len(rs) and len(fast) == len(rf)
    assert slow.get_vocab() == rs.get_vocab()
    assert fast.get_vocab() == rf.get_vocab() == slow.get_vocab()
    assert slow.convert_tokens_to_ids("hello") == n_lines - 6  # the last of the duplicated lines wins
    all_ids = list(range(n_lines))
    assert slow.convert_ids_to_tokens(all_ids) == rs.convert_ids_to_tokens(all_ids)  # holes -> [UNK]
    assert fast.convert_ids_to_tokens(all_ids) == rf.convert_ids_to_tokens(all_ids)  # holes -> None


def test_published_style_vocab_with_188_duplicates(tmp_path, ref_slow_cls):
    base = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(400)]
    tokens = base + words + words[:188]
    path = write_vocab(tmp_path / "vocab.txt", tokens)
    ref = make_ref_slow(ref_slow_cls, path)
    for tok in (ConvBertTokenizer(path), ConvBertTokenizerFast(path)):
        assert tok.vocab_size == len(tokens) - 188 == ref.vocab_size
        assert tok.encode("w0 w187 w188 w399") == ref.encode("w0 w187 w188 w399")


def test_lf_and_crlf_give_same_ids(tmp_path):
    tokens = _vocab_tokens()
    lf = write_vocab(tmp_path / "lf.txt", tokens, "\n")
    crlf = write_vocab(tmp_path / "crlf.txt", tokens, "\r\n")
    for cls in (ConvBertTokenizer, ConvBertTokenizerFast):
        a, b = cls(lf), cls(crlf)
        for text in CORPUS:
            assert a.encode(text) == b.encode(text)


@pytest.mark.parametrize("cls", [ConvBertTokenizer, ConvBertTokenizerFast])
def test_missing_or_empty_vocab_raises_clear_error(cls, tmp_path):
    with pytest.raises(VocabularyError, match="Can't find a vocabulary file"):
        cls(str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="empty"):
        cls(write_vocab(tmp_path / "empty.txt", []))
    with pytest.raises(ValueError, match="empty"):
        cls(write_vocab(tmp_path / "blank.txt", ["", ""]))
    with pytest.raises(OSError, match="not a local directory"):
        cls.from_pretrained(str(tmp_path / "no_such_dir"))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(OSError, match="none of"):
        cls.from_pretrained(str(tmp_path / "emptydir"))
    with pytest.raises(VocabularyError):
        cls(None)


def test_special_token_missing_from_vocab_is_added_like_reference(tmp_path, ref_slow_cls):
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world"]  # no [MASK]
    path = write_vocab(tmp_path / "vocab.txt", tokens)
    ref = make_ref_slow(ref_slow_cls, path)
    for tok in (ConvBertTokenizer(path), ConvBertTokenizerFast(path)):
        assert tok.mask_token_id == ref.mask_token_id == 6
        assert tok.encode("hello [MASK] world") == ref.encode("hello [MASK] world")
        assert len(tok) == len(ref) == 7


# ---------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("cls", [ConvBertTokenizer, ConvBertTokenizerFast])
def test_save_load_round_trip(cls, vocab_file, tmp_path):
    tok = cls(vocab_file, do_lower_case=False, strip_accents=True, tokenize_chinese_chars=False, model_max_length=64)
    files = tok.save_pretrained(tmp_path / "saved")
    names = sorted(os.path.basename(f) for f in files)
    expected = ["special_tokens_map.json", "tokenizer_config.json", "vocab.txt"] + (["tokenizer.json"] if tok.is_fast else [])
    assert names == sorted(expected) and all(os.path.isfile(f) for f in files)
    # the vocabulary file keeps every line (duplicates included), with LF endings
    with open(vocab_file, encoding="utf-8") as f:
        original = f.read().splitlines()
    with open(tmp_path / "saved" / "vocab.txt", encoding="utf-8", newline="") as f:
        saved = f.read()
    assert "\r" not in saved and saved.splitlines() == original
    cfg = json.load(open(tmp_path / "saved" / "tokenizer_config.json"))
    assert cfg["do_lower_case"] is False and cfg["strip_accents"] is True and cfg["model_max_length"] == 64
    for loader in (ConvBertTokenizer, ConvBertTokenizerFast):  # each loads the other's directory too
        back = loader.from_pretrained(tmp_path / "saved")
        assert back.model_max_length == 64 and back.do_lower_case is False
        for text in CORPUS:
            assert back.encode(text) == tok.encode(text), (loader.__name__, repr(text))
        assert back.get_vocab() == tok.get_vocab()
        # (rows 0-3 only across classes: row 4 is the slow/fast longest_first divergence, see below)
        rows = 5 if loader is cls else 4
        kw = dict(truncation=True, padding="max_length")
        assert back(PAIR_A[:rows], PAIR_B[:rows], **kw)["input_ids"] == tok(PAIR_A[:rows], PAIR_B[:rows], **kw)["input_ids"]
    assert tok.save_vocabulary(str(tmp_path), filename_prefix="x") == (str(tmp_path / "x-vocab.txt"),)


def test_reference_loads_our_saved_directory(vocab_file, tmp_path, ref_fast_cls):
    ours = ConvBertTokenizerFast(vocab_file)
    ours.save_pretrained(tmp_path)
    ref = ref_fast_cls.from_pretrained(str(tmp_path))
    for text in CORPUS:
        assert ref.encode(text) == ours.encode(text), repr(text)


# ---------------------------------------------------------------------------------------------- training
def test_train_wordpiece_vocab_round_trip(tmp_path, ref_fast_cls):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(t for t in CORPUS if t.strip()) * 20, encoding="utf-8")
    out = train_wordpiece_vocab([str(corpus)], 400, tmp_path / "trained", min_frequency=1)
    assert out == str(tmp_path / "trained")
    assert sorted(os.listdir(out)) == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    with open(os.path.join(out, "vocab.txt"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(set(lines)) == len(lines) <= 400
    slow, fast = ConvBertTokenizer.from_pretrained(out), ConvBertTokenizerFast.from_pretrained(out)
    assert (fast.pad_token_id, fast.unk_token_id, fast.cls_token_id, fast.sep_token_id, fast.mask_token_id) == (0, 1, 2, 3, 4)
    assert slow.model_max_length == fast.model_max_length == 512
    ref = ref_fast_cls.from_pretrained(out)
    for text in CORPUS[:6]:
        ids = fast.encode(text)
        assert slow.encode(text) == ids == ref.encode(text)
        assert max(ids) < len(fast)
    # trained directory -> save -> load again
    fast.save_pretrained(tmp_path / "again")
    again = ConvBertTokenizerFast.from_pretrained(tmp_path / "again")
    assert again.get_vocab() == fast.get_vocab()
    assert again(PAIR_A, PAIR_B, padding=True)["input_ids"] == fast(PAIR_A, PAIR_B, padding=True)["input_ids"]


def test_train_wordpiece_vocab_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        train_wordpiece_vocab([str(tmp_path / "missing.txt")], 100, tmp_path / "o")
    (tmp_path / "c.txt").write_text("hello world\n")
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece_vocab(str(tmp_path / "c.txt"), 5, tmp_path / "o")
