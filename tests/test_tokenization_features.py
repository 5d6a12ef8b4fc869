"""Tokenizer features beyond plain encoding, and ``resize_token_embeddings``.

* ``return_offsets_mapping`` (fast), ``is_split_into_words`` with ``word_ids()`` / ``word_to_tokens()``,
  ``return_overflowing_tokens`` with ``stride`` (windows + ``overflow_to_sample_mapping`` + ``sequence_ids()`` on
  the fast tokenizer; ``overflowing_tokens`` / ``num_truncated_tokens`` on the Python one),
* ``add_tokens`` / ``add_special_tokens`` with save / load,
* ``resize_token_embeddings`` on every model head.

Parity tests compare fast against transformers' fast BERT tokenizer and slow against its Python one, on the hard
corpus of ``test_tokenization.py``; they skip without transformers. The other tests need only this project.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings

import pytest
import torch

import convbert
from convbert import ConvBertConfig, ConvBertTokenizer, ConvBertTokenizerFast
from convbert.tokenization_base import BatchEncoding, CharSpan, TokenSpan
from test_tokenization import (  # noqa: F401  (fixtures are used by name)
    CONFIG_IDS,
    CONFIGS,
    CORPUS,
    PAIR_A,
    PAIR_B,
    _vocab_tokens,
    make_ref_fast,
    make_ref_slow,
    ref_fast_cls,
    ref_slow_cls,
    vocab_dir,
    vocab_file,
    write_vocab,
)

pytestmark = pytest.mark.filterwarnings("ignore:`max_length` is ignored:UserWarning")

KEYS = ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask", "offset_mapping",
        "overflow_to_sample_mapping", "overflowing_tokens", "num_truncated_tokens", "length")

# Texts long enough for several windows; questions for (question, context) pairs.
LONG_TEXTS = [" ".join(CORPUS[:6]), " ".join(PAIR_A + PAIR_B), CORPUS[3] * 3, " ".join(CORPUS[6:12])]
QUESTIONS = ["Who jumps over the lazy dog?", "Café?", "我爱北京", "[MASK] what", ""]


@pytest.fixture(scope="module")
def clean_vocab_dir(tmp_path_factory):
    """The hard-corpus vocabulary without repeated lines (ids = line numbers, no holes)."""
    d = tmp_path_factory.mktemp("clean_vocab")
    write_vocab(d / "vocab.txt", list(dict.fromkeys(_vocab_tokens())), "\n")
    return d


def _offset_tuples(value):
    """Offsets as ``(start, end)`` tuples at any nesting depth (tensors give lists)."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return tuple(value)
    return [_offset_tuples(v) for v in value]


def fields(enc) -> dict:
    """The outputs of a tokenizer call as plain Python values."""
    out = {}
    for key in KEYS:
        if key in enc:
            value = enc[key].tolist() if hasattr(enc[key], "tolist") else enc[key]
            out[key] = _offset_tuples(value) if key == "offset_mapping" else value
    return out


def outcome(tok, *args, **kwargs):
    """``fields`` of a call, or ``"error"`` when it fails (tokenizers may panic, raising a BaseException)."""
    try:
        return fields(tok(*args, **kwargs))
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return "error"


def alignment(enc, rows: int) -> list:
    """Everything the alignment methods say about each row (fast tokenizers only)."""
    result = []
    for b in range(rows):
        word_ids = enc.word_ids(b)
        words = sorted({w for w in word_ids if w is not None})
        seqs = sorted({s for s in enc.sequence_ids(b) if s is not None})
        result.append({
            "word_ids": word_ids,
            "sequence_ids": enc.sequence_ids(b),
            "tokens": enc.tokens(b),
            "word_to_tokens": [tuple(enc.word_to_tokens(b, w, s) or ())
                               for s in seqs for w in range(max(words, default=-1) + 2)],
            "token_to_word": [enc.token_to_word(b, t) for t in range(len(word_ids))],
            "token_to_chars": [tuple(enc.token_to_chars(b, t) or ()) for t in range(len(word_ids))],
        })
    return result


def n_rows(enc) -> int:
    ids = enc["input_ids"]
    return len(ids) if ids and isinstance(ids[0], list) else 1


# ============================================================================================ offsets (fast)
@pytest.mark.parametrize("opts", CONFIGS[::3], ids=CONFIG_IDS[::3])
def test_fast_offsets_match_reference_on_hard_corpus(opts, vocab_dir, vocab_file, ref_fast_cls):
    ours = ConvBertTokenizerFast(vocab_file, **opts)
    ref = make_ref_fast(ref_fast_cls, vocab_dir, **opts)
    kw = dict(return_offsets_mapping=True, return_special_tokens_mask=True, return_token_type_ids=True)
    n_tokens = 0
    for text in CORPUS:
        a, b = ours(text, **kw), ref(text, **kw)
        assert fields(a) == fields(b), repr(text)
        assert alignment(a, 1) == alignment(b, 1), repr(text)
        assert [a.char_to_token(i) for i in range(len(text))] == [b.char_to_token(i) for i in range(len(text))]
        assert [a.char_to_word(i) for i in range(len(text))] == [b.char_to_word(i) for i in range(len(text))]
        n_tokens += len(a["offset_mapping"])
        for start, end in a["offset_mapping"]:
            assert 0 <= start <= end <= len(text)
    assert n_tokens > 200  # the corpus was really compared
    for args in ((CORPUS,), (PAIR_A, PAIR_B)):  # batches and pairs, padded both ways
        left_padded = dict(padding="max_length", max_length=48, truncation=True, padding_side="left")
        for extra in (dict(padding=True), left_padded):
            a, b = ours(*args, **kw, **extra), ref(*args, **kw, **extra)
            assert fields(a) == fields(b), extra
            assert alignment(a, n_rows(a)) == alignment(b, n_rows(b)), extra


def test_fast_offsets_with_tensors_and_slow_refuses_offsets(vocab_file):
    fast = ConvBertTokenizerFast(vocab_file)
    enc = fast(PAIR_A, PAIR_B, padding=True, return_offsets_mapping=True, return_tensors="pt")
    assert enc["offset_mapping"].shape == (*enc["input_ids"].shape, 2)
    assert enc["offset_mapping"][enc["attention_mask"] == 0].abs().sum() == 0  # padding -> (0, 0)
    single = fast("Hello, world!", return_offsets_mapping=True)
    assert single["offset_mapping"] == [(0, 0), (0, 5), (5, 6), (7, 12), (12, 13), (0, 0)]
    slow = ConvBertTokenizer(vocab_file)
    with pytest.raises(NotImplementedError, match="ConvBertTokenizerFast"):
        slow("Hello, world!", return_offsets_mapping=True)


# ============================================================================================ is_split_into_words
WORD_LISTS = [text.split() for text in CORPUS if text.split()] + [
    ["New York", "is", "", "big", "[MASK]", "C++"],  # a word with a space, an empty word, special tokens
    [],
]


@pytest.mark.parametrize("opts", CONFIGS[:2], ids=CONFIG_IDS[:2])
def test_fast_split_into_words_matches_reference(opts, vocab_dir, vocab_file, ref_fast_cls):
    ours = ConvBertTokenizerFast(vocab_file, **opts)
    ref = make_ref_fast(ref_fast_cls, vocab_dir, **opts)
    kw = dict(is_split_into_words=True, return_offsets_mapping=True, return_token_type_ids=True)
    for words in WORD_LISTS:
        a, b = ours(words, **kw), ref(words, **kw)
        assert fields(a) == fields(b), words
        assert alignment(a, 1) == alignment(b, 1), words
        # every word of the input maps to its tokens (or None when it has none), as in the reference
        spans = [a.word_to_tokens(i) for i in range(len(words))]
        assert spans == [b.word_to_tokens(i) for i in range(len(words))]
        assert all(s is None or isinstance(s, TokenSpan) for s in spans)
    # batches, pairs (as text/text_pair and as tuples), truncation and padding
    batch = WORD_LISTS[:-1]
    firsts, seconds = batch[: len(batch) // 2], batch[len(batch) // 2: 2 * (len(batch) // 2)]
    cases = [
        ((batch,), dict(padding=True)),
        ((firsts, seconds), dict(padding="max_length", truncation="longest_first", max_length=40)),
        (([tuple(p) for p in zip(firsts, seconds)],), dict(padding=True, truncation=True, max_length=30)),
        ((firsts[0], seconds[0]), dict()),
    ]
    for args, extra in cases:
        a, b = ours(*args, **kw, **extra), ref(*args, **kw, **extra)
        assert fields(a) == fields(b), extra
        assert alignment(a, n_rows(a)) == alignment(b, n_rows(b)), extra
        for row in range(n_rows(a)):
            for seq in (0, 1):
                spans = [a.word_to_tokens(row, w, seq) for w in range(12)]
                assert spans == [b.word_to_tokens(row, w, seq) for w in range(12)]


def test_slow_split_into_words_matches_reference(vocab_file, ref_slow_cls):
    ours = ConvBertTokenizer(vocab_file)
    ref = make_ref_slow(ref_slow_cls, vocab_file)
    kw = dict(is_split_into_words=True, return_token_type_ids=True, return_attention_mask=True)
    for words in WORD_LISTS[:-1]:  # (the reference refuses an empty list of words)
        assert fields(ours(words, **kw)) == fields(ref(words, **kw)), words
    batch = WORD_LISTS[:-1]
    half = len(batch) // 2
    for extra in (dict(padding=True), dict(padding="max_length", truncation="only_second", max_length=40)):
        a = ours(batch[:half], batch[half: 2 * half], **kw, **extra)
        assert fields(a) == fields(ref(batch[:half], batch[half: 2 * half], **kw, **extra)), extra
    assert fields(ours(batch, **kw, padding=True)) == fields(ref(batch, **kw, padding=True))


@pytest.mark.parametrize("cls", [ConvBertTokenizer, ConvBertTokenizerFast])
def test_split_into_words_without_reference(cls, vocab_file):
    tok = cls(vocab_file)
    # each word is tokenized on its own: the ids are those of the words' tokens
    words = ["Hello,", "world!", "unaffable", "[MASK]"]
    word_ids = [i for w in words for i in tok.encode(w, add_special_tokens=False)]
    assert tok(words, is_split_into_words=True)["input_ids"] == [tok.cls_token_id] + word_ids + [tok.sep_token_id]
    if tok.is_fast:  # word_ids() and word_to_tokens() refer to the given words; offsets are within each word
        enc = tok(words, is_split_into_words=True, return_offsets_mapping=True)
        lengths = [len(tok.encode(w, add_special_tokens=False)) for w in words]
        assert enc.word_ids() == [None] + [i for i, n in enumerate(lengths) for _ in range(n)] + [None]
        starts = [1 + sum(lengths[:i]) for i in range(len(words))]
        assert [enc.word_to_tokens(i) for i in range(len(words))] == [
            TokenSpan(s, s + n) for s, n in zip(starts, lengths)]
        assert enc["offset_mapping"][1:3] == [(0, 5), (5, 6)] and enc["offset_mapping"][-2] == (0, 6)
    with pytest.raises(TypeError, match="list of words"):
        tok("hello world", is_split_into_words=True)
    with pytest.raises(TypeError, match="list of words"):
        tok(["hello"], "world", is_split_into_words=True)
    with pytest.raises(TypeError, match="list of words"):
        tok([["hello", 3]], is_split_into_words=True)
    with pytest.raises(ValueError, match="does not match"):
        tok([["a"], ["b"]], [["c"]], is_split_into_words=True)
    # a batch of one word list and a pair given as a tuple
    enc = tok([["hello", "world"], (["hello"], ["world"])], is_split_into_words=True)
    assert enc["token_type_ids"][1] == [0, 0, 0, 1, 1]
    assert enc["input_ids"][0] == tok("hello world")["input_ids"]


# ============================================================================================ overflow + stride
OVERFLOW_CASES = [
    # (max_length, stride, truncation, padding)
    (16, 4, True, False),
    (20, 7, "only_first", "max_length"),
    (12, 0, "longest_first", "longest"),
    (24, 8, True, "max_length"),
]


@pytest.mark.parametrize("case", OVERFLOW_CASES, ids=[str(c) for c in OVERFLOW_CASES])
def test_fast_overflow_windows_match_reference_single_texts(case, vocab_dir, vocab_file, ref_fast_cls):
    max_length, stride, truncation, padding = case
    ours, ref = ConvBertTokenizerFast(vocab_file), make_ref_fast(ref_fast_cls, vocab_dir)
    kw = dict(max_length=max_length, stride=stride, truncation=truncation, padding=padding,
              return_overflowing_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True,
              return_token_type_ids=True, return_length=True)
    for args in [(text,) for text in LONG_TEXTS] + [(LONG_TEXTS,)]:
        a, b = ours(*args, **kw), ref(*args, **kw)
        assert fields(a) == fields(b)
        assert alignment(a, n_rows(a)) == alignment(b, n_rows(b))
        assert len(a["input_ids"]) > len(args[0]) if isinstance(args[0], list) else len(a["input_ids"]) > 1
        # consecutive windows of one input share `stride` tokens
        for row in range(len(a["input_ids"]) - 1):
            if a["overflow_to_sample_mapping"][row] == a["overflow_to_sample_mapping"][row + 1] and stride:
                kept = [t for t, s in zip(a["input_ids"][row], a.sequence_ids(row)) if s == 0]
                following = [t for t, s in zip(a["input_ids"][row + 1], a.sequence_ids(row + 1)) if s == 0]
                assert kept[-stride:] == following[:stride]


@pytest.mark.parametrize("padding", [False, "max_length", True])
@pytest.mark.parametrize("max_length, stride", [(32, 6), (40, 10), (24, 3)])
def test_fast_overflow_question_context_pairs_match_reference(padding, max_length, stride, vocab_dir, vocab_file,
                                                              ref_fast_cls):
    ours, ref = ConvBertTokenizerFast(vocab_file), make_ref_fast(ref_fast_cls, vocab_dir)
    kw = dict(truncation="only_second", max_length=max_length, stride=stride, padding=padding,
              return_overflowing_tokens=True, return_offsets_mapping=True, return_token_type_ids=True,
              return_special_tokens_mask=True)
    questions = QUESTIONS[: len(LONG_TEXTS)]
    a, b = ours(questions, LONG_TEXTS, **kw), ref(questions, LONG_TEXTS, **kw)
    assert fields(a) == fields(b)
    assert alignment(a, n_rows(a)) == alignment(b, n_rows(b))
    mapping = a["overflow_to_sample_mapping"]
    assert sorted(set(mapping)) == list(range(len(questions))) and len(mapping) > 2 * len(questions)
    for row, sample in enumerate(mapping):  # every window holds the whole question, then a part of the context
        seq = a.sequence_ids(row)
        question_ids = [t for t, s in zip(a["input_ids"][row], seq) if s == 0]
        assert question_ids == ours(questions[sample], add_special_tokens=False)["input_ids"]
        if padding == "max_length":
            assert len(a["input_ids"][row]) == max_length
    for q, c in zip(questions, LONG_TEXTS):  # one pair at a time too
        assert fields(ours(q, c, **kw)) == fields(ref(q, c, **kw))
    pt = ours(questions, LONG_TEXTS, **{**kw, "padding": "max_length"}, return_tensors="pt")
    assert pt["input_ids"].shape == (len(mapping), max_length) and pt["overflow_to_sample_mapping"].tolist() == mapping


def test_fast_overflow_windows_and_stride_errors(vocab_file):
    tok = ConvBertTokenizerFast(vocab_file)
    text = LONG_TEXTS[0]
    all_ids = tok(text, add_special_tokens=False)["input_ids"]
    enc = tok(text, max_length=10, truncation=True, stride=3, return_overflowing_tokens=True)
    # a single input gives a batch of windows: 8 tokens each (with [CLS] and [SEP]), 3 shared with the next one
    assert isinstance(enc["input_ids"][0], list) and set(enc["overflow_to_sample_mapping"]) == {0}
    windows = [row[1:-1] for row in enc["input_ids"]]
    assert all(len(w) == 8 for w in windows[:-1]) and all(a[-3:] == b[:3] for a, b in zip(windows, windows[1:]))
    assert windows[0] + [t for w in windows[1:] for t in w[3:]] == all_ids
    no_overflow = tok("hello world", max_length=10, truncation=True, return_overflowing_tokens=True)
    assert no_overflow["input_ids"] == [tok("hello world")["input_ids"]]
    assert no_overflow["overflow_to_sample_mapping"] == [0]
    # stride must leave each window at least one new token: 8 - 2 special tokens = 6 > stride
    for stride in (6, 7, 50):
        with pytest.raises(ValueError, match=rf"stride \({stride}\).*max_length \(8\)"):
            tok(text, max_length=8, truncation=True, stride=stride, return_overflowing_tokens=True)
    with pytest.raises(ValueError, match=r"stride \(8\).*max_length \(11\)"):  # a pair has 3 special tokens
        tok("a question", text, max_length=11, truncation="only_second", stride=8, return_overflowing_tokens=True)
    # a long question leaves max_length - 3 - len(question) = 4 context tokens per window: stride 4 is too large
    question = "the quick brown fox jumps over the lazy dog"
    kw = dict(max_length=len(tok.tokenize(question)) + 3 + 4, truncation="only_second", return_overflowing_tokens=True)
    with pytest.raises(ValueError, match=rf"stride \(4\) is too large for max_length \({kw['max_length']}\)"):
        tok(question, text, stride=4, **kw)
    assert len(tok(question, text, stride=3, **kw)["input_ids"]) > 10
    with pytest.raises(ValueError, match="stride must be a non-negative integer"):
        tok(text, max_length=8, truncation=True, stride=-1)


def test_fast_stride_errors_where_reference_fails(vocab_file, vocab_dir, ref_fast_cls):
    """Where transformers' fast tokenizer fails (a ValueError, or a Rust panic: a BaseException), ours raises a
    ValueError; next to those limits both give the same windows."""
    ours, ref = ConvBertTokenizerFast(vocab_file), make_ref_fast(ref_fast_cls, vocab_dir)
    text = LONG_TEXTS[0]
    for stride in (6, 7, 50):
        too_large = dict(max_length=8, truncation=True, stride=stride, return_overflowing_tokens=True)
        assert outcome(ref, text, **too_large) == outcome(ours, text, **too_large) == "error"
    ok = dict(max_length=8, truncation=True, stride=5, return_overflowing_tokens=True)
    assert outcome(ours, text, **ok) == outcome(ref, text, **ok) != "error"
    question = "the quick brown fox jumps over the lazy dog"
    kw = dict(max_length=len(ours.tokenize(question)) + 3 + 4, truncation="only_second", return_overflowing_tokens=True)
    assert outcome(ref, question, text, stride=4, **kw) == outcome(ours, question, text, stride=4, **kw) == "error"
    windows = outcome(ours, question, text, stride=3, **kw)
    assert windows == outcome(ref, question, text, stride=3, **kw) and len(windows["input_ids"]) > 10


SLOW_OVERFLOW_CASES = [(16, 4, "longest_first"), (20, 2, "only_first"), (12, 0, True)]


@pytest.mark.parametrize("case", SLOW_OVERFLOW_CASES, ids=[str(c) for c in SLOW_OVERFLOW_CASES])
def test_slow_overflowing_tokens_match_reference(case, vocab_file, ref_slow_cls):
    max_length, stride, truncation = case
    ours, ref = ConvBertTokenizer(vocab_file), make_ref_slow(ref_slow_cls, vocab_file)
    kw = dict(max_length=max_length, stride=stride, truncation=truncation, return_overflowing_tokens=True,
              return_token_type_ids=True, return_attention_mask=True)
    for text in LONG_TEXTS + ["short text"]:
        a, b = ours(text, **kw), ref(text, **kw)
        assert fields(a) == fields(b), repr(text)
    assert "overflowing_tokens" in ours(LONG_TEXTS[0], **kw) and "overflowing_tokens" not in ours("short", **kw)
    for q, c in zip(QUESTIONS, LONG_TEXTS):  # (question, context) pairs: the context overflows
        for strategy in ("only_second", "only_first"):
            extra = {**kw, "truncation": strategy, "max_length": 24}
            assert fields(ours(q, c, **extra)) == fields(ref(q, c, **extra)), (q, strategy)
    # batches where every input overflows are the reference's too; padding leaves the overflow alone
    batch_kw = {**kw, "padding": "max_length"}
    assert fields(ours(LONG_TEXTS, **batch_kw)) == fields(ref(LONG_TEXTS, **batch_kw))
    assert fields(ours(QUESTIONS[:4], LONG_TEXTS, **{**batch_kw, "truncation": "only_second", "max_length": 30})) == \
        fields(ref(QUESTIONS[:4], LONG_TEXTS, **{**batch_kw, "truncation": "only_second", "max_length": 30}))
    with pytest.raises(ValueError, match="longest_first"):  # both refuse pairs with longest_first
        ours("a b c", LONG_TEXTS[0], max_length=10, truncation="longest_first", return_overflowing_tokens=True)
    with pytest.raises(ValueError, match="longest_first"):
        ref("a b c", LONG_TEXTS[0], max_length=10, truncation="longest_first", return_overflowing_tokens=True)


def test_slow_overflow_semantics_without_reference(vocab_file):
    tok = ConvBertTokenizer(vocab_file)
    text = "hello world the quick brown fox jumps over the lazy dog"
    ids = tok.encode(text, add_special_tokens=False)
    enc = tok(text, max_length=8, truncation=True, stride=2, return_overflowing_tokens=True)
    assert enc["input_ids"] == [tok.cls_token_id] + ids[:6] + [tok.sep_token_id]
    assert enc["num_truncated_tokens"] == len(ids) + 2 - 8
    assert enc["overflowing_tokens"] == ids[6 - 2:]  # the removed ids, after 2 kept ones
    # in a batch every row has the keys, so rows stay aligned; tensors drop them (they are ragged)
    batch = tok([text, "hello"], max_length=8, truncation=True, stride=2, return_overflowing_tokens=True)
    assert batch["overflowing_tokens"] == [ids[4:], []] and batch["num_truncated_tokens"] == [len(ids) - 6, 0]
    pt = tok([text, "hello"], max_length=8, truncation=True, padding=True, return_overflowing_tokens=True,
             return_tensors="pt")
    assert set(pt) == {"input_ids", "token_type_ids", "attention_mask"}
    # the Python tokenizer keeps no alignment: the fast tokenizer's methods raise a clear error
    for method in ("word_ids", "sequence_ids", "tokens"):
        with pytest.raises(ValueError, match="only available when using a fast tokenizer"):
            getattr(enc, method)()
    with pytest.raises(ValueError, match="only available when using a fast tokenizer"):
        enc.word_to_tokens(0)
    assert enc.is_fast is False and enc.encodings is None


def test_batch_encoding_alignment_api(vocab_file):
    tok = ConvBertTokenizerFast(vocab_file)
    enc = tok(["Hello, world!", "the lazy dog"], ["the fox", "hello"], padding=True)
    assert isinstance(enc, BatchEncoding) and enc.is_fast and len(enc.encodings) == 2 and enc.n_sequences == 2
    assert enc[1].ids == enc["input_ids"][1]  # an integer gives the row's tokenizers.Encoding
    assert enc[0:1] == {k: v[0:1] for k, v in enc.items()}
    assert enc.word_to_tokens(0, 1) == TokenSpan(2, 3) and enc.word_to_tokens(0, 1).start == 2
    assert enc.word_to_tokens(1, 0, sequence_index=1) == TokenSpan(5, 6)
    assert enc.word_to_tokens(0, 40) is None
    assert enc.token_to_chars(0, 1) == CharSpan(0, 5) and enc.token_to_chars(0, 0) is None
    assert enc.token_to_word(0, -1) is None and enc.token_to_sequence(0, -1) is None  # padding / [SEP]
    assert enc.char_to_token(0, 7) == 3 and enc.char_to_word(0, 7) == 2 and enc.word_to_chars(0, 2) == CharSpan(7, 12)
    assert enc.sequence_ids(1)[:4] == [None, 0, 0, 0]
    with pytest.raises(IndexError):
        enc.word_ids(5)
    with pytest.raises(ValueError, match="word_index must be >= 0"):
        enc.word_to_tokens(0, -1)
    back = pickle.loads(pickle.dumps(enc))
    assert dict(back) == dict(enc) and back.word_ids(1) == enc.word_ids(1) and back.input_ids == enc.input_ids
    pt = tok(["Hello, world!"], return_tensors="pt", return_offsets_mapping=True)
    assert pt.word_ids(0) == [None, 0, 1, 2, 3, None] and pt["offset_mapping"].shape == (1, 6, 2)


# ============================================================================================ added tokens
NEW_TOKENS = ["NewTok", "hello", "my_new-tok", "Ωmega", "C++x", "ümlaut"]
ADDED_TEXTS = [
    "hello NewTok world newtok NEWTOK",
    "xNewToky my_new-tok. Ωmega ωmega ümlaut ÜMLAUT C++x c++x",
    "a <special1> b <SPECIAL1> [SPECIAL2]world [MASK]x  casetok   CaseTok",
    "swim sw x-sw sw. (sw) SW swsw",  # a single_word token: only where it stands alone
] + CORPUS


def _add_all(tok, AddedToken):
    counts = [
        tok.add_tokens(NEW_TOKENS),
        tok.add_tokens([AddedToken("CaseTok", lstrip=True, rstrip=True), AddedToken("sw", single_word=True)]),
        tok.add_tokens(["NewTok", ""]),  # already added / empty: nothing new
        tok.add_special_tokens({"additional_special_tokens": ["<special1>", "[SPECIAL2]"], "cls_token": "[CLS]"}),
        tok.add_tokens(["<special3>"], special_tokens=True),
    ]
    return counts


@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("which", ["slow", "fast"])
def test_add_tokens_match_reference(which, lower, clean_vocab_dir, request, tmp_path):
    from tokenizers import AddedToken

    vocab = str(clean_vocab_dir / "vocab.txt")
    if which == "slow":
        ours, ref = ConvBertTokenizer(vocab, do_lower_case=lower), make_ref_slow(
            request.getfixturevalue("ref_slow_cls"), vocab, do_lower_case=lower)
    else:
        ours, ref = ConvBertTokenizerFast(vocab, do_lower_case=lower), make_ref_fast(
            request.getfixturevalue("ref_fast_cls"), clean_vocab_dir, do_lower_case=lower)
    base = len(ours)
    assert _add_all(ours, AddedToken) == _add_all(ref, AddedToken)
    assert len(ours) == len(ref) == base + 10  # "hello" is in the vocabulary already
    assert ours.get_vocab() == ref.get_vocab()
    assert ({i: str(t) for i, t in ours.added_tokens_decoder.items()}
            == {i: str(t) for i, t in ref.added_tokens_decoder.items()})
    assert ({i: (t.normalized, t.special, t.lstrip, t.rstrip) for i, t in ours.added_tokens_decoder.items()}
            == {i: (t.normalized, t.special, t.lstrip, t.rstrip) for i, t in ref.added_tokens_decoder.items()})
    assert ours.convert_tokens_to_ids(["<special1>", "[SPECIAL2]"]) == [base + 7, base + 8]
    assert set(ours.all_special_tokens) >= {"<special1>", "[SPECIAL2]", "<special3>"}
    # (transformers' fast tokenizer does not list a token added by add_tokens(..., special_tokens=True))
    assert set(ours.all_special_tokens) - {"<special3>"} == set(ref.all_special_tokens) - {"<special3>"}
    if which == "slow":
        assert ours.all_special_tokens == ref.all_special_tokens and ours.all_special_ids == ref.all_special_ids
    for text in ADDED_TEXTS:
        assert ours.tokenize(text) == ref.tokenize(text), repr(text)
        ids = ours(text, return_token_type_ids=True)["input_ids"]
        assert ids == ref(text)["input_ids"], repr(text)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), repr(text)
    text = "a <special1> b [SPECIAL2] c <special3> d"
    assert "<special1>" not in ours.decode(ours.encode(text), skip_special_tokens=True)
    pairs = dict(padding=True, truncation="only_second", max_length=60)
    batch = (ADDED_TEXTS[:4], ADDED_TEXTS[4:8])
    assert ours(*batch, **pairs)["input_ids"] == ref(*batch, **pairs)["input_ids"]

    # our saved directory: reloads with the same ids, and transformers' tokenizers load it with the same ids
    ours.save_pretrained(tmp_path / "ours")
    names = set(os.listdir(tmp_path / "ours"))
    assert {"added_tokens.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"} <= names
    config = json.loads((tmp_path / "ours" / "tokenizer_config.json").read_text())
    assert config["added_tokens_decoder"][str(base + 7)]["content"] == "<special1>"
    assert config["additional_special_tokens"][:2] == ["<special1>", "[SPECIAL2]"]
    loaders = [ConvBertTokenizer.from_pretrained, ConvBertTokenizerFast.from_pretrained,
               request.getfixturevalue("ref_slow_cls").from_pretrained,
               request.getfixturevalue("ref_fast_cls").from_pretrained]
    for load in loaders:
        back = load(str(tmp_path / "ours"))
        # slow and fast match normalized added tokens differently (raw text vs normalized text), and differ on
        # some of the corpus without lower-casing: across kinds, only special added tokens are compared
        texts = ADDED_TEXTS[:4] + CORPUS[:4] if back.is_fast == ours.is_fast else ["a <special1> b [SPECIAL2] c"]
        for text in texts:
            assert back.encode(text) == ours.encode(text), (load, repr(text))
        assert back.convert_tokens_to_ids(["<special1>", "[SPECIAL2]", "<special3>"]) == [base + 7, base + 8, base + 9]
        assert len(back) == len(ours)
    # transformers' saved directory loads into ours with the same ids (into the other kind too)
    ref.save_pretrained(tmp_path / "ref")
    back = type(ours).from_pretrained(tmp_path / "ref")
    assert back.get_vocab() == ours.get_vocab()
    for text in ADDED_TEXTS[:4]:
        assert back.encode(text) == ours.encode(text), repr(text)
        ids = back.encode(text)
        assert back.decode(ids, skip_special_tokens=True) == ours.decode(ids, skip_special_tokens=True)
    if which == "slow":  # (transformers' fast tokenizer writes no vocab.txt, which our Python tokenizer needs)
        other = ConvBertTokenizerFast.from_pretrained(tmp_path / "ref")
        assert other.encode("a <special1> b [SPECIAL2] c") == ours.encode("a <special1> b [SPECIAL2] c")
        assert len(other) == len(ours)


@pytest.mark.parametrize("cls", [ConvBertTokenizer, ConvBertTokenizerFast])
def test_add_tokens_without_reference(cls, clean_vocab_dir, tmp_path):
    from tokenizers import AddedToken

    tok = cls(str(clean_vocab_dir / "vocab.txt"))
    n = len(tok)
    assert tok.add_tokens(["newword", "other-new"]) == 2 and len(tok) == n + 2
    assert tok.convert_tokens_to_ids(["newword", "other-new"]) == [n, n + 1]
    assert tok.tokenize("a newwordy other-new.") == ["a", "newword", "y", "other-new", "."]  # never split
    assert tok.add_tokens("newword") == 0 and tok.add_tokens([]) == 0 and len(tok) == n + 2
    assert tok.add_special_tokens({"additional_special_tokens": ["<ent>"]}) == 1
    assert tok.additional_special_tokens == tok.extra_special_tokens == ["<ent>"]
    assert tok.additional_special_tokens_ids == [n + 2] and n + 2 in tok.all_special_ids
    ids = tok.encode("hello <ent> newword")
    assert ids[1:-1] == [tok.convert_tokens_to_ids("hello"), n + 2, n]
    assert tok.decode(ids, skip_special_tokens=True) == "hello newword"
    assert tok.add_special_tokens({"additional_special_tokens": ["<ent2>"]},
                                  replace_additional_special_tokens=False) == 1
    assert tok.additional_special_tokens == ["<ent>", "<ent2>"]
    assert tok.get_added_vocab()["<ent2>"] == n + 3 and tok.added_tokens_encoder["newword"] == n
    assert isinstance(tok.added_tokens_decoder[n + 3], AddedToken) and tok.added_tokens_decoder[n + 3].special
    # a new cls_token is used by every later encoding (slow and fast alike)
    assert tok.add_special_tokens({"cls_token": "<cls>"}) == 1
    assert tok.cls_token == "<cls>" and tok.encode("hello")[0] == tok.cls_token_id == n + 4
    # save / load keeps everything
    tok.save_pretrained(tmp_path)
    for loader in (ConvBertTokenizer, ConvBertTokenizerFast):
        back = loader.from_pretrained(tmp_path)
        assert back.encode("hello <ent> newword <ent2>") == tok.encode("hello <ent> newword <ent2>")
        assert back.additional_special_tokens == ["<ent>", "<ent2>"] and back.cls_token == "<cls>"
        assert len(back) == len(tok)
    assert json.loads((tmp_path / "added_tokens.json").read_text()) == {
        "newword": n, "other-new": n + 1, "<ent>": n + 2, "<ent2>": n + 3, "<cls>": n + 4}
    # older layouts: without added_tokens_decoder, added_tokens.json or else tokenizer.json give the added tokens
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["added_tokens_decoder"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    for legacy in ("added_tokens.json", "tokenizer.json"):
        if (tmp_path / legacy).exists():
            back = ConvBertTokenizer.from_pretrained(tmp_path)
            assert back.encode("hello <ent> newword <ent2>") == tok.encode("hello <ent> newword <ent2>"), legacy
            assert back.added_tokens_decoder[n + 2].special and not back.added_tokens_decoder[n].special
            (tmp_path / legacy).unlink()
    # bad input
    with pytest.raises(TypeError, match="not a string"):
        tok.add_tokens(["ok", 3])
    with pytest.raises(ValueError, match="bos_token"):
        tok.add_special_tokens({"bos_token": "<s>"})
    with pytest.raises(ValueError, match="list"):
        tok.add_special_tokens({"additional_special_tokens": "<x>"})


def test_added_token_ids_collide_on_vocab_with_repeated_lines_like_reference(vocab_dir, vocab_file, ref_slow_cls,
                                                                             ref_fast_cls):
    """The fixture vocabulary repeats 6 tokens at its end, so ids run past the number of distinct tokens: new ids
    start at that number (as in transformers) and land on ids in use. Both warn; ids match the references."""
    slow, fast = ConvBertTokenizer(vocab_file), ConvBertTokenizerFast(vocab_file)
    rs, rf = make_ref_slow(ref_slow_cls, vocab_file), make_ref_fast(ref_fast_cls, vocab_dir)
    for ours, ref in ((slow, rs), (fast, rf)):
        with pytest.warns(UserWarning, match="share id"):
            assert ours.add_tokens(["brandnew"]) == ref.add_tokens(["brandnew"])
        assert ours.convert_tokens_to_ids("brandnew") == ref.convert_tokens_to_ids("brandnew") == ours.vocab_size
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ConvBertTokenizer(vocab_file).add_tokens(["hello"])  # in the vocabulary: no new id, no warning


# ============================================================================================ resize_token_embeddings
HEADS = ["ConvBertModel", "ConvBertForMaskedLM", "ConvBertForSequenceClassification", "ConvBertForMultipleChoice",
         "ConvBertForTokenClassification", "ConvBertForQuestionAnswering"]
TINY = dict(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=40,
            embedding_size=24, max_position_embeddings=32, conv_kernel_size=5, conv_backend="eager",
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)


def _run(model, ids):
    model.eval()
    with torch.no_grad():
        if isinstance(model, convbert.ConvBertForMultipleChoice):
            return model(input_ids=ids[:, None, :].expand(-1, 2, -1))
        return model(input_ids=ids)


@pytest.mark.parametrize("head", HEADS)
def test_resize_token_embeddings_every_head(head, tmp_path):
    torch.manual_seed(0)
    model = getattr(convbert, head)(ConvBertConfig(**TINY))
    emb = model.get_input_embeddings()
    old = emb.weight.detach().clone()
    returned = model.resize_token_embeddings(47)
    assert returned is model.get_input_embeddings() and returned.weight.shape == (47, 24)
    assert model.config.vocab_size == 47 and returned.num_embeddings == 47 and returned.padding_idx == 0
    assert torch.equal(returned.weight[:40], old)
    # new rows: the old rows' mean (transformers' default mean_resizing), up to a tiny random spread
    assert torch.allclose(returned.weight[40:], old.mean(0).expand(7, -1), atol=1e-3)
    assert not torch.equal(returned.weight[40], returned.weight[41])
    if head == "ConvBertForMaskedLM":
        lm = model.get_output_embeddings()
        assert lm.weight is returned.weight and lm.out_features == 47 and lm.bias.shape == (47,)
        assert torch.equal(lm.bias[40:], torch.zeros(7))
    ids = torch.tensor([[1, 39, 40, 46, 5]])
    out = _run(model, ids)
    if head == "ConvBertForMaskedLM":
        assert out.logits.shape == (1, 5, 47)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        assert returned.weight.grad is not None and returned.weight.grad[46].abs().sum() > 0
    with pytest.raises(ValueError, match="input_ids"):
        _run(model, torch.tensor([[47]]))
    # save / load round trip at the new size
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path)
    assert back.config.vocab_size == 47
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    out_back = _run(back, ids)
    first = out[0] if isinstance(out, tuple) else next(iter(out.values()))
    first_back = out_back[0] if isinstance(out_back, tuple) else next(iter(out_back.values()))
    assert torch.allclose(first, first_back)
    if head == "ConvBertForMaskedLM":
        assert back.get_output_embeddings().weight is back.get_input_embeddings().weight


def test_resize_token_embeddings_options():
    torch.manual_seed(0)
    model = convbert.ConvBertForMaskedLM(ConvBertConfig(**TINY))
    old = model.get_input_embeddings().weight.detach().clone()
    with torch.no_grad():
        model.generator_lm_head.bias.normal_()
    bias = model.generator_lm_head.bias.detach().clone()
    assert model.resize_token_embeddings() is model.get_input_embeddings()  # nothing to do
    assert model.config.vocab_size == 40
    # no mean resizing: new rows drawn from normal(0, initializer_range), like _init_weights
    emb = model.resize_token_embeddings(2040, mean_resizing=False)
    new_rows = emb.weight[40:].detach()
    assert abs(new_rows.std().item() - model.config.initializer_range) < 0.002 and abs(new_rows.mean().item()) < 0.002
    assert torch.equal(emb.weight[:40], old) and torch.equal(model.generator_lm_head.bias[:40], bias)
    # pad_to_multiple_of rounds up; shrinking drops the last rows (and the padding index when it is cut off)
    assert model.resize_token_embeddings(2041, pad_to_multiple_of=64).num_embeddings == 2048
    assert model.resize_token_embeddings(pad_to_multiple_of=100).num_embeddings == 2100
    emb = model.resize_token_embeddings(30)
    assert emb.weight.shape == (30, 24) and torch.equal(emb.weight, old[:30]) and model.config.vocab_size == 30
    assert model.generator_lm_head.bias.shape == (30,) and torch.equal(model.generator_lm_head.bias, bias[:30])
    assert model.generator_lm_head.weight is emb.weight
    bad_arguments = (dict(new_num_tokens=0), dict(new_num_tokens=2.5), dict(pad_to_multiple_of=0),
                     dict(new_num_tokens=True))
    for bad in bad_arguments:
        with pytest.raises(ValueError):
            model.resize_token_embeddings(**bad)
    # untied output layer: resized on its own, with its old rows kept
    untied = convbert.ConvBertForMaskedLM(ConvBertConfig(**TINY, tie_word_embeddings=False))
    head_weight = untied.generator_lm_head.weight.detach().clone()
    untied.resize_token_embeddings(45)
    assert untied.generator_lm_head.weight is not untied.get_input_embeddings().weight
    assert untied.generator_lm_head.weight.shape == (45, 24)
    assert torch.equal(untied.generator_lm_head.weight[:40], head_weight)
    assert _run(untied, torch.tensor([[44, 3]])).logits.shape == (1, 2, 45)


def test_added_tokens_then_resize_then_forward(clean_vocab_dir):
    tok = ConvBertTokenizerFast(str(clean_vocab_dir / "vocab.txt"))
    model = convbert.ConvBertForMaskedLM(ConvBertConfig(**{**TINY, "vocab_size": tok.vocab_size}))
    tok.add_tokens(["<new1>", "<new2>"])
    tok.add_special_tokens({"additional_special_tokens": ["<ent>"]})
    model.resize_token_embeddings(len(tok))
    enc = tok(["hello <new1> world <ent>", "<new2>"], padding=True, return_tensors="pt")
    logits = _run(model, enc["input_ids"]).logits
    assert logits.shape == (2, enc["input_ids"].shape[1], len(tok))
    assert int(enc["input_ids"].max()) == len(tok) - 1
