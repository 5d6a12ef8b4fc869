"""Shared machinery of the ConvBERT tokenizers.

:class:`ConvBertTokenizerBase` holds everything that does not depend on *how* text is split into
WordPiece tokens: special tokens, ``__call__`` / ``encode`` / ``pad`` / ``decode``, padding and
truncation strategies, tensor conversion, and the Hugging Face directory layout of
``save_pretrained`` / ``from_pretrained``. The pure-Python :class:`~convbert.ConvBertTokenizer` and
the ``tokenizers``-backed :class:`~convbert.ConvBertTokenizerFast` subclass it.

Argument names, defaults and strategy semantics follow Hugging Face ``transformers``, so code written
for its tokenizers works unchanged; ``transformers`` itself is not needed at runtime.
"""

from __future__ import annotations

import collections
import json
import os
import warnings
from typing import Any, Iterable, NamedTuple, Sequence

from tokenizers import AddedToken

VOCAB_FILE = "vocab.txt"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"

#: ``model_max_length`` when none is configured (same sentinel value as ``transformers``).
VERY_LARGE_INTEGER = int(1e30)
LARGE_INTEGER = int(1e20)

SPECIAL_TOKEN_NAMES = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")

# tokenizer_config.json keys that are not kept as extra options: derived on save, or paths of files.
_IGNORED_CONFIG_KEYS = {"tokenizer_class", "added_tokens_decoder", "auto_map", "name_or_path", "vocab_file",
                        "tokenizer_file", "special_tokens_map_file", "backend"}


class VocabularyError(ValueError):
    """Raised when a vocabulary file is missing, empty or unusable."""


def read_vocab_lines(vocab_file: str | os.PathLike) -> list[str]:
    """Read the tokens of a WordPiece ``vocab.txt``, one per line, in file order (duplicates kept).

    ``\\n``, ``\\r\\n`` and ``\\r`` all end a line (Python's text mode), so CRLF files load like LF files.

    Raises:
        VocabularyError: if the file does not exist, is not a file, or holds no token.
    """
    path = os.fspath(vocab_file)
    if not os.path.isfile(path):
        raise VocabularyError(
            f"Can't find a vocabulary file at path {path!r}. Pass the path of a WordPiece vocab.txt "
            "(one token per line), or load a saved tokenizer directory with `from_pretrained`."
        )
    with open(path, "r", encoding="utf-8") as reader:
        lines = [line.rstrip("\n") for line in reader]
    if not any(lines):
        raise VocabularyError(f"The vocabulary file {path!r} is empty: it must hold one token per line.")
    return lines


def load_vocab(vocab_file: str | os.PathLike) -> "collections.OrderedDict[str, int]":
    """Read a WordPiece ``vocab.txt`` into an ordered ``{token: id}`` mapping; the id is the line number.

    When a token occurs on several lines, the *last* line wins, exactly like the reference BERT
    tokenizers; the earlier ids then have no token (``len(vocab)`` is smaller than the number of
    lines). See :func:`read_vocab_lines` for line splitting and errors.
    """
    return vocab_from_lines(read_vocab_lines(vocab_file))


def vocab_from_lines(lines: list[str]) -> "collections.OrderedDict[str, int]":
    """``{token: line number}`` with the last line of a repeated token winning."""
    return collections.OrderedDict((token, index) for index, token in enumerate(lines))


def write_vocab_file(lines: list[str], path: str) -> str:
    """Write tokens one per line (LF endings) so that :func:`load_vocab` gives back the same ids."""
    for tok in lines:
        if "\n" in tok or "\r" in tok:
            raise VocabularyError(f"Token {tok!r} contains a line break and cannot be written to vocab.txt")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(tok + "\n" for tok in lines))
    return path


def vocab_lines_from_dict(vocab: dict[str, int]) -> list[str]:
    """Lines of a ``vocab.txt`` that reloads to exactly ``vocab`` (holes left by duplicates are filled
    with a copy of a token that owns a later id, which the later line overrides on reload)."""
    by_id = {i: t for t, i in vocab.items()}
    lines = []
    for i in range(max(by_id) + 1 if by_id else 0):
        while i not in by_id:
            i += 1
        lines.append(by_id[i])
    return lines


class TokenSpan(NamedTuple):
    """Tokens ``start`` (included) to ``end`` (excluded) of an encoded sequence."""

    start: int
    end: int


class CharSpan(NamedTuple):
    """Characters ``start`` (included) to ``end`` (excluded) of an original string."""

    start: int
    end: int


# Marks the pickled state of a BatchEncoding (older pickles hold the bare dict).
_STATE_TAG = "__convbert_batch_encoding__"


class BatchEncoding(dict):
    """Output of a tokenizer call: a ``dict`` of model inputs that also allows attribute access.

    ``encoding.input_ids`` is ``encoding["input_ids"]``. :meth:`to` moves tensors to a device.

    The fast tokenizer also keeps the ``tokenizers.Encoding`` of every row (:attr:`encodings`), from which
    :meth:`word_ids`, :meth:`sequence_ids`, :meth:`word_to_tokens`, :meth:`char_to_token` and the other
    alignment methods read; ``encoding[i]`` (an integer) is the ``tokenizers.Encoding`` of row ``i``. An
    encoding made by the pure-Python tokenizer has no alignment information: those methods raise
    ``ValueError``, as ``transformers``' do for its Python tokenizers.

    Args:
        data: the model inputs (``input_ids``, ``attention_mask``, ...).
        encoding: the ``tokenizers.Encoding`` (or list of them, one per row) the data came from.
        tensor_type: convert the lists to ``"pt"`` tensors or ``"np"`` arrays right away.
        prepend_batch_axis: with ``tensor_type``, add a batch axis of size 1.
        n_sequences: 1 for single sequences, 2 for pairs (read from the encodings when not given).
    """

    _encodings = None
    _n_sequences = None

    def __init__(self, data: dict[str, Any] | None = None, encoding=None, tensor_type: str | None = None,
                 prepend_batch_axis: bool = False, n_sequences: int | None = None):
        super().__init__(data or {})
        if encoding is not None and not isinstance(encoding, (list, tuple)):
            encoding = [encoding]
        self._encodings = list(encoding) if encoding is not None else None
        if n_sequences is None and self._encodings:
            n_sequences = self._encodings[0].n_sequences
        self._n_sequences = n_sequences
        self.convert_to_tensors(tensor_type, prepend_batch_axis=prepend_batch_axis)

    def __getitem__(self, item):
        """``encoding["input_ids"]``: a value; ``encoding[i]``: the ``tokenizers.Encoding`` of row ``i`` (fast
        tokenizer only); ``encoding[a:b]``: every value sliced to rows ``a:b``."""
        if isinstance(item, str):
            return dict.__getitem__(self, item)
        if isinstance(item, int) and not isinstance(item, bool):
            return self._require_encodings("Indexing a BatchEncoding with an integer")[item]
        if isinstance(item, slice):
            return {key: value[item] for key, value in self.items()}
        raise KeyError(f"Invalid key {item!r}: use a string (a model input name), an integer (a row's "
                       "tokenizers.Encoding, fast tokenizer only) or a slice.")

    def __getattr__(self, name: str):
        try:
            return dict.__getitem__(self, name)
        except KeyError:
            raise AttributeError(f"'BatchEncoding' has no attribute {name!r}") from None

    def __getstate__(self):
        return {_STATE_TAG: True, "data": dict(self), "encodings": self._encodings, "n_sequences": self._n_sequences}

    def __setstate__(self, state):
        if isinstance(state, dict) and state.get(_STATE_TAG):
            self.update(state["data"])
            self._encodings = state["encodings"]
            self._n_sequences = state["n_sequences"]
        else:
            self.update(state)

    # ------------------------------------------------------------------ alignment (fast tokenizer only)
    @property
    def is_fast(self) -> bool:
        """Whether this encoding came from the fast tokenizer (and so has :attr:`encodings`)."""
        return self._encodings is not None

    @property
    def encodings(self) -> list | None:
        """The ``tokenizers.Encoding`` of every row, or ``None`` for an encoding made by the Python tokenizer."""
        return self._encodings

    @property
    def n_sequences(self) -> int | None:
        """1 when single sequences were encoded, 2 for pairs, ``None`` when unknown (Python tokenizer)."""
        return self._n_sequences

    def _require_encodings(self, what: str) -> list:
        if self._encodings is None:
            raise ValueError(
                f"{what} is only available when using a fast tokenizer (ConvBertTokenizerFast): this encoding was "
                "made by the pure-Python ConvBertTokenizer, which keeps no token-to-word or token-to-character "
                "alignment."
            )
        return self._encodings

    def _row(self, what: str, batch_index: int):
        encodings = self._require_encodings(what)
        if not -len(encodings) <= batch_index < len(encodings):
            raise IndexError(f"batch_index {batch_index} is out of range for a batch of {len(encodings)} rows")
        return encodings[batch_index]

    @staticmethod
    def _split_index(batch_or_index: int, index: int | None) -> tuple[int, int]:
        """``f(i)`` means row 0, index ``i``; ``f(b, i)`` means row ``b``, index ``i``."""
        return (0, batch_or_index) if index is None else (batch_or_index, index)

    @staticmethod
    def _non_negative(name: str, value: int) -> int:
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        return value

    def tokens(self, batch_index: int = 0) -> list[str]:
        """The tokens (strings) of row ``batch_index``, special tokens and padding included."""
        return self._row("tokens()", batch_index).tokens

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """For each token of row ``batch_index``: 0 (first sequence), 1 (second sequence of a pair) or ``None``
        (special token or padding)."""
        return self._row("sequence_ids()", batch_index).sequence_ids

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """For each token of row ``batch_index``: the index of the word it comes from, ``None`` for special tokens
        and padding. With ``is_split_into_words=True`` the words are the ones given; otherwise they are the
        pre-tokenizer's words (split on whitespace and punctuation). Word indices restart at 0 in the second
        sequence of a pair."""
        return self._row("word_ids()", batch_index).word_ids

    def token_to_sequence(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        """Which sequence (0 or 1) a token belongs to; ``None`` for special tokens.

        Call as ``token_to_sequence(token_index)`` (row 0) or ``token_to_sequence(batch_index, token_index)``.
        """
        batch_index, token_index = self._split_index(batch_or_token_index, token_index)
        row = self._row("token_to_sequence()", batch_index)
        return row.token_to_sequence(token_index + len(row) if token_index < 0 else token_index)

    def token_to_word(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        """The index of the word a token comes from (``None`` for special tokens and padding).

        Call as ``token_to_word(token_index)`` (row 0) or ``token_to_word(batch_index, token_index)``.
        """
        batch_index, token_index = self._split_index(batch_or_token_index, token_index)
        row = self._row("token_to_word()", batch_index)
        return row.token_to_word(token_index + len(row) if token_index < 0 else token_index)

    def token_to_chars(self, batch_or_token_index: int, token_index: int | None = None) -> CharSpan | None:
        """The character span of a token in its original string, ``None`` for special tokens and padding.

        Call as ``token_to_chars(token_index)`` (row 0) or ``token_to_chars(batch_index, token_index)``.
        """
        batch_index, token_index = self._split_index(batch_or_token_index, token_index)
        row = self._row("token_to_chars()", batch_index)
        span = row.token_to_chars(token_index + len(row) if token_index < 0 else token_index)
        return CharSpan(*span) if span is not None else None

    def word_to_tokens(self, batch_or_word_index: int, word_index: int | None = None,
                       sequence_index: int = 0) -> TokenSpan | None:
        """The tokens of a word, as a :class:`TokenSpan` ``(start, end)``, or ``None`` when the word has no token
        (for instance a word cut off by truncation, or one made only of removed characters).

        Call as ``word_to_tokens(word_index)`` (row 0) or ``word_to_tokens(batch_index, word_index)``;
        ``sequence_index=1`` looks the word up in the second sequence of a pair.
        """
        batch_index, word_index = self._split_index(batch_or_word_index, word_index)
        row = self._row("word_to_tokens()", batch_index)
        span = row.word_to_tokens(self._non_negative("word_index", word_index), sequence_index)
        return TokenSpan(*span) if span is not None else None

    def word_to_chars(self, batch_or_word_index: int, word_index: int | None = None,
                      sequence_index: int = 0) -> CharSpan | None:
        """The character span of a word in its original string (``None`` when the word has no token).

        Call as ``word_to_chars(word_index)`` (row 0) or ``word_to_chars(batch_index, word_index)``.
        """
        batch_index, word_index = self._split_index(batch_or_word_index, word_index)
        row = self._row("word_to_chars()", batch_index)
        span = row.word_to_chars(self._non_negative("word_index", word_index), sequence_index)
        return CharSpan(*span) if span is not None else None

    def char_to_token(self, batch_or_char_index: int, char_index: int | None = None,
                      sequence_index: int = 0) -> int | None:
        """The index of the token that holds a character of the original string, or ``None`` (a space, a removed
        character, or a character cut off by truncation).

        Call as ``char_to_token(char_index)`` (row 0) or ``char_to_token(batch_index, char_index)``.
        """
        batch_index, char_index = self._split_index(batch_or_char_index, char_index)
        row = self._row("char_to_token()", batch_index)
        return row.char_to_token(self._non_negative("char_index", char_index), sequence_index)

    def char_to_word(self, batch_or_char_index: int, char_index: int | None = None,
                     sequence_index: int = 0) -> int | None:
        """The index of the word that holds a character of the original string, or ``None``.

        Call as ``char_to_word(char_index)`` (row 0) or ``char_to_word(batch_index, char_index)``.
        """
        batch_index, char_index = self._split_index(batch_or_char_index, char_index)
        row = self._row("char_to_word()", batch_index)
        return row.char_to_word(self._non_negative("char_index", char_index), sequence_index)

    # ------------------------------------------------------------------ tensors
    def convert_to_tensors(self, tensor_type: str | None = None, prepend_batch_axis: bool = False) -> "BatchEncoding":
        """Convert the lists in place to ``torch`` tensors (``tensor_type="pt"``) or numpy arrays (``"np"``)."""
        if tensor_type is None:
            return self
        tensor_type = str(getattr(tensor_type, "value", tensor_type))
        if tensor_type == "pt":
            import torch

            as_tensor = lambda value: torch.tensor(value, dtype=torch.long)  # noqa: E731
        elif tensor_type == "np":
            import numpy as np

            as_tensor = lambda value: np.asarray(value, dtype=np.int64)  # noqa: E731
        else:
            raise ValueError(f"Unsupported return_tensors={tensor_type!r}: use None, 'pt' or 'np'.")
        for key, value in list(self.items()):
            if prepend_batch_axis:
                value = [value]
            if isinstance(value, list) and value and isinstance(value[0], list):
                lengths = {len(v) for v in value}
                if len(lengths) > 1:
                    raise ValueError(
                        f"Unable to create a tensor for {key!r}: the sequences have different lengths {sorted(lengths)}. "
                        "Use `padding=True` (or 'max_length') and/or `truncation=True` to get rectangular batches."
                    )
            self[key] = as_tensor(value)
        return self

    def to(self, device) -> "BatchEncoding":
        """Move every tensor to ``device`` (returns ``self``)."""
        for key, value in self.items():
            if hasattr(value, "to"):
                self[key] = value.to(device)
        return self


def _check_side(name: str, side: str) -> str:
    if side not in ("right", "left"):
        raise ValueError(f"{name} must be 'right' or 'left', got {side!r}")
    return side


def _strategy(value, on_true: str, on_false: str, allowed: tuple[str, ...], name: str) -> str:
    """``True`` / ``False`` / ``None`` / a strategy name (or an enum of one) -> the strategy name."""
    if value is True:
        return on_true
    if value is False or value is None:
        return on_false
    strategy = str(getattr(value, "value", value))
    if strategy not in allowed:
        raise ValueError(f"{name}={value!r} is not one of False, True, {allowed}")
    return strategy


def _as_pair(item) -> tuple:
    """A batch element: a text, or a ``(text,)`` / ``(text, text_pair)`` tuple of strings."""
    if not isinstance(item, (list, tuple)):
        return item, None
    if len(item) in (1, 2) and all(isinstance(x, str) for x in item):
        return item[0], (item[1] if len(item) == 2 else None)
    raise ValueError(f"Each element of a batch must be a string or a (text, text_pair) tuple of strings; got {item!r}.")


def _check_words(words, name: str) -> list[str]:
    """A pre-tokenized sequence (``is_split_into_words=True``): a list or tuple of strings."""
    if isinstance(words, str):
        raise TypeError(
            f"With is_split_into_words=True, {name} must be a list of words such as ['Hello', 'world'], not a string "
            f"({words[:30]!r}). Pass the string with is_split_into_words=False, or split it first (text.split())."
        )
    if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
        raise TypeError(
            f"With is_split_into_words=True, {name} must be a list of words (strings) or a batch of such lists; "
            f"got {words!r:.100}."
        )
    return list(words)


def _as_words_pair(item) -> tuple:
    """A batch element of pre-tokenized input: a list of words, or a pair ``(words, words_pair)`` of lists."""
    if isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, (list, tuple)) for x in item):
        return _check_words(item[0], "text"), _check_words(item[1], "text_pair")
    return _check_words(item, "each element of the batch"), None


def _special_id(name: str) -> property:
    return property(lambda self: self.convert_tokens_to_ids(getattr(self, name)), doc=f"Id of ``{name}``.")


def _read_json(path: str) -> Any:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(obj: Any, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


_ADDED_TOKEN_FIELDS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")


def added_token_state(token: AddedToken) -> dict[str, Any]:
    """The JSON form of an added token, as ``transformers`` writes it in ``added_tokens_decoder``."""
    return {field: getattr(token, field) for field in _ADDED_TOKEN_FIELDS}


def as_added_token(value, special: bool | None = None) -> AddedToken:
    """An ``AddedToken`` from a saved ``{"content": ..., "special": ...}`` dict, an ``AddedToken`` or a string.

    A string becomes a special token (never normalized) when ``special`` is true, else a normalized one,
    as ``transformers`` does. ``special`` overrides the flag of a dict or ``AddedToken`` when given, keeping
    its other flags.
    """
    if isinstance(value, str):
        is_special = bool(special)
        return AddedToken(value, single_word=False, lstrip=False, rstrip=False, normalized=not is_special,
                          special=is_special)
    if isinstance(value, AddedToken):
        state = added_token_state(value)
    elif isinstance(value, dict) and isinstance(value.get("content"), str):
        state = {field: value[field] for field in _ADDED_TOKEN_FIELDS if field in value}  # drops "__type" and the like
    else:
        raise TypeError(
            f"An added token must be a string, a tokenizers.AddedToken or a dict with 'content'; got {value!r}"
        )
    if special is not None:
        state["special"] = bool(special)
    content = state.pop("content")
    return AddedToken(content, **state)


class ConvBertTokenizerBase:
    """Common API of :class:`~convbert.ConvBertTokenizer` and :class:`~convbert.ConvBertTokenizerFast`.

    Subclasses implement ``tokenize``, ``_convert_token_to_id``, ``_convert_id_to_token``,
    ``convert_tokens_to_string``, ``get_vocab``, ``vocab_size`` and ``_encode_batch``, set
    ``_vocab_lines`` (the lines :meth:`save_vocabulary` writes) and list their options in ``_config_attrs``.
    """

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    padding_side = "right"
    truncation_side = "right"
    pad_token_type_id = 0
    is_fast = False
    _config_attrs: tuple[str, ...] = ()

    def __init__(self, unk_token: str = "[UNK]", sep_token: str = "[SEP]", pad_token: str = "[PAD]",
                 cls_token: str = "[CLS]", mask_token: str = "[MASK]", model_max_length: int | None = None,
                 padding_side: str = "right", truncation_side: str = "right",
                 clean_up_tokenization_spaces: bool = True, name_or_path: str = "",
                 additional_special_tokens: Sequence[str | AddedToken] | None = None,
                 extra_special_tokens: Sequence[str | AddedToken] | None = None,
                 added_tokens_decoder: dict | None = None, **kwargs):
        for name, token in zip(SPECIAL_TOKEN_NAMES, (unk_token, sep_token, pad_token, cls_token, mask_token)):
            setattr(self, name, str(token))
        # transformers 5 renamed additional_special_tokens to extra_special_tokens: both names are accepted.
        # (extra_special_tokens given as a dict are transformers' named model-specific tokens: not used by ConvBERT.)
        extra = additional_special_tokens if additional_special_tokens is not None else extra_special_tokens
        if isinstance(extra, dict):
            extra = None
        if extra is not None and (isinstance(extra, (str, AddedToken)) or not isinstance(extra, (list, tuple))):
            raise TypeError(f"additional_special_tokens must be a list of tokens, got {extra!r}")
        self._additional_special_tokens: list[str] = list(dict.fromkeys(str(t) for t in extra or ()))
        # Tokens recorded by a saved tokenizer ({id: AddedToken}); the subclass registers them.
        self._saved_added_tokens: dict[int, AddedToken] = {
            int(index): as_added_token(token) for index, token in (added_tokens_decoder or {}).items()
        }
        self.model_max_length = int(model_max_length) if model_max_length is not None else VERY_LARGE_INTEGER
        self.padding_side = _check_side("padding_side", padding_side)
        self.truncation_side = _check_side("truncation_side", truncation_side)
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.name_or_path = name_or_path
        # Keys of tokenizer_config.json that we do not interpret are kept so they survive a save/load.
        self._extra_config = {
            k: v for k, v in kwargs.items()
            if k not in _IGNORED_CONFIG_KEYS and (v is None or isinstance(v, (bool, int, float, str)))
        }

    # ------------------------------------------------------------------ special tokens and vocabulary
    @property
    def all_special_tokens(self) -> list[str]:
        """The special tokens, in the order [UNK], [SEP], [PAD], [CLS], [MASK], then the additional special tokens
        (duplicates removed)."""
        named = (getattr(self, n) for n in SPECIAL_TOKEN_NAMES)
        return list(dict.fromkeys([t for t in named if t is not None] + self._additional_special_tokens))

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of :attr:`all_special_tokens`."""
        return self.convert_tokens_to_ids(self.all_special_tokens)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """``{"unk_token": "[UNK]", ...}``, as written to ``special_tokens_map.json`` (the named special tokens
        only, as in ``transformers`` 5; see :attr:`additional_special_tokens` for the others)."""
        return {name: getattr(self, name) for name in SPECIAL_TOKEN_NAMES if getattr(self, name) is not None}

    @property
    def additional_special_tokens(self) -> list[str]:
        """Special tokens without a named role (added with ``add_special_tokens({"additional_special_tokens":
        [...]})`` or ``add_tokens(..., special_tokens=True)``): never split, skipped by
        ``decode(skip_special_tokens=True)``. ``transformers`` 5 calls them ``extra_special_tokens``."""
        return list(self._additional_special_tokens)

    @property
    def additional_special_tokens_ids(self) -> list[int]:
        """Ids of :attr:`additional_special_tokens`."""
        return self.convert_tokens_to_ids(self.additional_special_tokens)

    extra_special_tokens = additional_special_tokens
    extra_special_tokens_ids = additional_special_tokens_ids

    unk_token_id = _special_id("unk_token")
    sep_token_id = _special_id("sep_token")
    pad_token_id = _special_id("pad_token")
    cls_token_id = _special_id("cls_token")
    mask_token_id = _special_id("mask_token")

    def __len__(self) -> int:
        """Number of distinct tokens: the vocabulary plus the added tokens (including special tokens that were
        missing from the vocabulary)."""
        return len(self.get_vocab())

    # ------------------------------------------------------------------ added tokens
    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        """``{id: AddedToken}`` for every added token (the special tokens included), sorted by id."""
        raise NotImplementedError

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        """``{token: id}`` for every added token (the special tokens included), sorted by id."""
        return {token.content: index for index, token in self.added_tokens_decoder.items()}

    def get_added_vocab(self) -> dict[str, int]:
        """``{token: id}`` for every added token (the special tokens included)."""
        return self.added_tokens_encoder

    def add_tokens(self, new_tokens: str | AddedToken | Sequence[str | AddedToken],
                   special_tokens: bool = False) -> int:
        """Add tokens that are never split: each occurrence in a text becomes that one token.

        A token missing from the vocabulary gets the next id (``len(tokenizer)`` grows); one already in it keeps
        its id. Then resize the model's embeddings: ``model.resize_token_embeddings(len(tokenizer))``.

        Matching follows ``transformers``: a string token is added as ``AddedToken(token, normalized=True)``
        (``normalized=False`` when special), ``lstrip``/``rstrip``/``single_word`` are off. The fast tokenizer
        matches normalized tokens in the normalized (e.g. lower-cased) text, so ``"NewTok"`` also matches
        ``"newtok"``; the Python tokenizer lower-cases a normalized, non-special token when ``do_lower_case`` and
        matches it in the raw text. Pass a ``tokenizers.AddedToken`` for other options.

        Args:
            new_tokens: a token or a list of tokens (strings or ``tokenizers.AddedToken``).
            special_tokens: add them as special tokens (not normalized, skipped by
                ``decode(skip_special_tokens=True)``, listed in :attr:`additional_special_tokens`).

        Returns:
            How many tokens were added, as ``transformers`` counts them: the Python tokenizer counts the new
            ids; the fast one (``tokenizers``) also counts tokens that were already in the vocabulary.
        """
        if not new_tokens:
            return 0
        if isinstance(new_tokens, (str, AddedToken)):
            new_tokens = [new_tokens]
        if not isinstance(new_tokens, (list, tuple)):
            raise TypeError(f"new_tokens must be a token or a list of tokens, got {type(new_tokens).__name__}")
        for token in new_tokens:
            if not isinstance(token, (str, AddedToken)):
                raise TypeError(
                    f"Token {token!r} is not a string nor a tokenizers.AddedToken but a {type(token).__name__}."
                )
        return self._add_tokens(list(new_tokens), special_tokens=bool(special_tokens))

    def _add_tokens(self, new_tokens: list[str | AddedToken], special_tokens: bool) -> int:
        raise NotImplementedError

    def add_special_tokens(self, special_tokens_dict: dict[str, Any], replace_additional_special_tokens: bool = True,
                           replace_extra_special_tokens: bool | None = None) -> int:
        """Set special tokens and add the ones missing from the vocabulary (see :meth:`add_tokens`).

        Args:
            special_tokens_dict: keys among ``unk_token``, ``sep_token``, ``pad_token``, ``cls_token``,
                ``mask_token`` (one token each) and ``additional_special_tokens`` (a list; ``extra_special_tokens``,
                its ``transformers`` 5 name, works too). String values become
                ``AddedToken(token, normalized=False, special=True)``.
            replace_additional_special_tokens: a non-empty ``additional_special_tokens`` list replaces the
                current list (the replaced tokens stay in the vocabulary and are still never split); with
                ``False`` it extends it. ``replace_extra_special_tokens`` is the ``transformers`` 5 name.

        Returns:
            How many tokens were added (counted as in :meth:`add_tokens` with ``special_tokens=True``).

        A new ``cls_token`` or ``sep_token`` is used by every later encoding, slow and fast alike.
        """
        if not special_tokens_dict:
            return 0
        if replace_extra_special_tokens is not None:
            replace_additional_special_tokens = replace_extra_special_tokens
        allowed = (*SPECIAL_TOKEN_NAMES, "additional_special_tokens", "extra_special_tokens")
        to_add: list[AddedToken] = []
        named: dict[str, str] = {}
        for key, value in special_tokens_dict.items():
            if key not in allowed:
                raise ValueError(
                    f"Key {key!r} is not a special token of this tokenizer; valid keys are {list(allowed)}."
                )
            if key in ("additional_special_tokens", "extra_special_tokens"):
                if isinstance(value, (str, AddedToken)) or not isinstance(value, (list, tuple)) or not all(
                        isinstance(t, (str, AddedToken)) for t in value):
                    raise ValueError(f"{key} must be a list of str or tokenizers.AddedToken, got {value!r}")
                tokens = [as_added_token(t, special=True) if isinstance(t, str) else t for t in value]
                if not replace_additional_special_tokens:
                    tokens = [t for t in tokens if str(t) not in self._additional_special_tokens]
                if replace_additional_special_tokens and tokens:
                    self._additional_special_tokens = list(dict.fromkeys(str(t) for t in tokens))
                else:
                    self._additional_special_tokens += [str(t) for t in tokens]
                to_add += tokens
            else:
                if not isinstance(value, (str, AddedToken)):
                    raise ValueError(f"{key} must be a str or a tokenizers.AddedToken, got {value!r}")
                token = as_added_token(value, special=True) if isinstance(value, str) else value
                named[key] = str(token)
                to_add.append(token)
        for key, token in named.items():
            setattr(self, key, token)
        added = self.add_tokens(to_add, special_tokens=True)
        if named:
            self._special_tokens_changed()
        return added

    def _special_tokens_changed(self) -> None:
        """Hook run after a named special token changed (the fast tokenizer rebuilds its template)."""

    def _check_new_id(self, token: str, index: int, owner: str | None) -> None:
        """Warn when an added token gets an id that a vocabulary token already has.

        That happens only with a vocabulary file that repeats tokens (fewer distinct tokens than ids): new ids
        start at the number of distinct tokens, exactly as in ``transformers``, and so land on ids in use.
        """
        if owner is not None and owner != token:
            warnings.warn(
                f"The added token {token!r} got id {index}, which the vocabulary already gives to {owner!r}: the "
                f"vocabulary file repeats some tokens, so it has fewer distinct tokens ({self.vocab_size}) than ids, "
                "and new ids start at the number of distinct tokens (as in transformers). Both tokens now share "
                f"id {index}. Use a vocabulary file without repeated lines to add tokens safely.",
                UserWarning,
                stacklevel=4,
            )

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Map a token (or a list of tokens) to its id; unknown tokens map to ``unk_token_id``."""
        if tokens is None:
            return None
        if isinstance(tokens, str):
            return self._convert_token_to_id(tokens)
        return [self._convert_token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Iterable[int], skip_special_tokens: bool = False):
        """Map an id (or a list of ids) back to its token.

        Args:
            ids: one id or a sequence of ids (a 1-D tensor works too).
            skip_special_tokens: drop the special tokens ([CLS], [SEP], [PAD], ...) from a list.
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            return self._convert_id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._convert_id_to_token(int(i)) for i in ids if int(i) not in skip]

    # ------------------------------------------------------------------ special-token layout
    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """How many special tokens :meth:`build_inputs_with_special_tokens` adds (2 for one text, 3 for a pair)."""
        return 3 if pair else 2

    def build_inputs_with_special_tokens(self, token_ids_0: list[int],
                                         token_ids_1: list[int] | None = None) -> list[int]:
        """Add the special tokens: ``[CLS] A [SEP]`` for one sequence, ``[CLS] A [SEP] B [SEP]`` for a pair."""
        first = [self.cls_token_id] + list(token_ids_0) + [self.sep_token_id]
        return first if token_ids_1 is None else first + list(token_ids_1) + [self.sep_token_id]

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        """Mask with 1 for special tokens and 0 for sequence tokens.

        With ``already_has_special_tokens`` the ids already contain special tokens, and the mask marks
        every id that belongs to a special token.
        """
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError(
                    "You should not supply a second sequence if the provided sequence of ids is already formatted "
                    "with special tokens for the model."
                )
            special = set(self.all_special_ids)
            return [1 if int(i) in special else 0 for i in token_ids_0]
        first = [1] + [0] * len(token_ids_0) + [1]
        return first if token_ids_1 is None else first + [0] * len(token_ids_1) + [1]

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int],
                                             token_ids_1: list[int] | None = None) -> list[int]:
        """Segment ids: 0 for ``[CLS] A [SEP]`` and 1 for ``B [SEP]``."""
        first = [0] * (len(token_ids_0) + 2)
        return first if token_ids_1 is None else first + [1] * (len(token_ids_1) + 1)

    # ------------------------------------------------------------------ encoding
    def _get_padding_truncation_strategies(self, padding=False, truncation=None, max_length=None,
                                           pad_to_multiple_of=None):
        """Resolve the user's ``padding`` / ``truncation`` / ``max_length`` like ``transformers`` does."""
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"  # max_length alone activates truncation
        padding_strategy = _strategy(padding, "longest", "do_not_pad", PADDING_STRATEGIES, "padding")
        truncation_strategy = _strategy(truncation, "longest_first", "do_not_truncate", TRUNCATION_STRATEGIES,
                                        "truncation")
        if max_length is None:
            limited = self.model_max_length <= LARGE_INTEGER
            if padding_strategy == "max_length":
                if limited:
                    max_length = self.model_max_length
                else:
                    padding_strategy = "do_not_pad"
            if truncation_strategy != "do_not_truncate":
                if limited:
                    max_length = self.model_max_length
                else:
                    truncation_strategy = "do_not_truncate"
        if (
            truncation_strategy != "do_not_truncate"
            and padding_strategy != "do_not_pad"
            and pad_to_multiple_of is not None
            and max_length is not None
            and max_length % pad_to_multiple_of != 0
        ):
            raise ValueError(
                f"Truncation and padding are both activated but truncation length ({max_length}) is not a multiple "
                f"of pad_to_multiple_of ({pad_to_multiple_of})."
            )
        return padding_strategy, truncation_strategy, max_length

    def __call__(self, text: str | Sequence[str] | Sequence[tuple[str, str]] | Sequence[Sequence[str]],
                 text_pair: str | Sequence[str] | None = None, add_special_tokens: bool = True,
                 padding: bool | str = False, truncation: bool | str | None = None, max_length: int | None = None,
                 stride: int = 0, is_split_into_words: bool = False, pad_to_multiple_of: int | None = None,
                 padding_side: str | None = None, return_tensors: str | None = None,
                 return_token_type_ids: bool | None = None, return_attention_mask: bool | None = None,
                 return_overflowing_tokens: bool = False, return_special_tokens_mask: bool = False,
                 return_offsets_mapping: bool = False, return_length: bool = False,
                 verbose: bool = True) -> BatchEncoding:
        """Tokenize a text, a pair of texts, or a batch of either, into model inputs.

        Args:
            text: a string, or a list of strings (a batch), or a list of ``(text, text_pair)`` tuples. With
                ``is_split_into_words=True``: a list of words, or a batch of such lists (or of
                ``(words, words_pair)`` tuples).
            text_pair: the second sequence(s) of each pair: a string (a list of words) with a single ``text``, a list
                with a batch.
            add_special_tokens: add ``[CLS]`` / ``[SEP]``.
            padding: ``False``/``"do_not_pad"``, ``True``/``"longest"`` (pad to the longest sequence of the batch)
                or ``"max_length"`` (pad to ``max_length``, or ``model_max_length`` when not given).
            truncation: ``True``/``"longest_first"``, ``"only_first"``, ``"only_second"`` or ``False``. Giving only
                ``max_length`` activates ``"longest_first"``.
            max_length: the length limit for truncation / ``"max_length"`` padding (special tokens included).
            stride: with ``return_overflowing_tokens``, how many tokens consecutive windows share (the fast
                tokenizer), or how many kept tokens ``overflowing_tokens`` repeats (the Python tokenizer). The fast
                tokenizer needs ``stride < max_length - num_special_tokens_to_add(pair)``.
            is_split_into_words: the input is already split into words (e.g. for token classification); each word is
                tokenized on its own, and ``word_ids()`` (fast tokenizer) refers to these words.
            pad_to_multiple_of: round the padded length up to a multiple of this value.
            padding_side: ``"right"`` (default) or ``"left"``.
            return_tensors: ``None`` (Python lists), ``"pt"`` (torch tensors) or ``"np"``.
            return_token_type_ids: return ``token_type_ids`` (default ``True``).
            return_attention_mask: return ``attention_mask`` (default ``True``).
            return_overflowing_tokens: keep what truncation removes. The fast tokenizer returns every window of
                ``max_length`` tokens as a row of its own, plus ``overflow_to_sample_mapping`` (the input each row
                comes from); a single input then gives a batch. The Python tokenizer, like ``transformers``' Python
                tokenizers, returns ``overflowing_tokens`` (the removed ids, with ``stride`` ids of context) and
                ``num_truncated_tokens`` per input instead, and refuses ``"longest_first"`` with pairs.
            return_special_tokens_mask: also return ``special_tokens_mask``.
            return_offsets_mapping: also return ``offset_mapping``: the ``(start, end)`` character span of each token
                in its original string (in its word with ``is_split_into_words``), ``(0, 0)`` for special tokens and
                padding. Fast tokenizer only: the Python tokenizer raises ``NotImplementedError``.
            return_length: also return ``length`` (the length of each returned ``input_ids``).
            verbose: accepted for compatibility with ``transformers``; unused.

        Returns:
            A :class:`BatchEncoding` with ``input_ids``, ``token_type_ids`` and ``attention_mask``; lists of lists
            for a batch, flat lists for a single input, tensors of shape ``[batch, length]`` with ``"pt"``.
        """
        if text is None:
            raise ValueError("You need to specify `text`.")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
            raise ValueError(f"stride must be a non-negative integer, got {stride!r}")
        padding_strategy, truncation_strategy, max_length = self._get_padding_truncation_strategies(
            padding, truncation, max_length, pad_to_multiple_of
        )
        if padding_side is not None:
            _check_side("padding_side", padding_side)
        pairs, is_batched = self._prepare_inputs(text, text_pair, is_split_into_words)

        out, encodings = self._encode_batch(
            pairs, add_special_tokens=add_special_tokens, padding_strategy=padding_strategy,
            truncation_strategy=truncation_strategy, max_length=max_length, pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side or self.padding_side, return_special_tokens_mask=return_special_tokens_mask,
            stride=stride, is_split_into_words=is_split_into_words,
            return_overflowing_tokens=return_overflowing_tokens, return_offsets_mapping=return_offsets_mapping,
        )
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        wanted = {"input_ids": True, "token_type_ids": return_token_type_ids, "attention_mask": return_attention_mask,
                  "special_tokens_mask": return_special_tokens_mask, "offset_mapping": return_offsets_mapping,
                  "overflowing_tokens": return_overflowing_tokens, "num_truncated_tokens": return_overflowing_tokens}
        result = {k: out[k] for k, keep in wanted.items() if keep and k in out}
        if return_length:
            result["length"] = [len(ids) for ids in out["input_ids"]]
        if "overflow_to_sample_mapping" in out:
            result["overflow_to_sample_mapping"] = out["overflow_to_sample_mapping"]
        # A single input gives flat lists, except when its windows are returned as rows (fast tokenizer).
        unwrap = not is_batched and "overflow_to_sample_mapping" not in result
        if unwrap:
            result = {k: v[0] for k, v in result.items()}
        if return_tensors is not None:  # ragged by nature, so dropped with tensors (as transformers does)
            result.pop("overflowing_tokens", None)
            result.pop("num_truncated_tokens", None)
        enc = BatchEncoding(result, encoding=encodings)
        return enc.convert_to_tensors(return_tensors, prepend_batch_axis=unwrap)

    def _prepare_inputs(self, text, text_pair, is_split_into_words: bool) -> tuple[list[tuple], bool]:
        """``(pairs, is_batched)``: the inputs as a list of ``(first, second or None)``."""
        if is_split_into_words:
            if isinstance(text, str):
                _check_words(text, "text")  # raises the explanatory error
            if not isinstance(text, (list, tuple)):
                raise TypeError(
                    f"With is_split_into_words=True, text must be a list of words, got {type(text).__name__}"
                )
            is_batched = bool(text) and isinstance(text[0], (list, tuple))
            if not is_batched:
                pair = _check_words(text_pair, "text_pair") if text_pair is not None else None
                return [(_check_words(text, "text"), pair)], False
            if text_pair is None:
                return [_as_words_pair(item) for item in text], True
            if isinstance(text_pair, str) or not isinstance(text_pair, (list, tuple)):
                raise TypeError("When `text` is a batch, `text_pair` must be a list of the same length.")
            if len(text_pair) != len(text):
                raise ValueError(
                    f"Batch length of `text` ({len(text)}) does not match that of `text_pair` ({len(text_pair)})."
                )
            return [(_check_words(a, "text"), _check_words(b, "text_pair")) for a, b in zip(text, text_pair)], True

        is_batched = isinstance(text, (list, tuple))
        if not is_batched:
            pairs = [(text, text_pair)]
        elif isinstance(text_pair, str):
            raise TypeError("When `text` is a batch, `text_pair` must be a list of the same length.")
        elif text_pair is not None:
            if len(text_pair) != len(text):
                raise ValueError(
                    f"Batch length of `text` ({len(text)}) does not match that of `text_pair` ({len(text_pair)})."
                )
            pairs = list(zip(text, text_pair))
        else:
            pairs = [_as_pair(item) for item in text]
        for a, b in pairs:
            if not isinstance(a, str) or (b is not None and not isinstance(b, str)):
                raise TypeError(f"Text inputs must be strings, got {type(a).__name__} and {type(b).__name__}"
                                " (pass is_split_into_words=True for lists of words).")
        return pairs, is_batched

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True,
               padding: bool | str = False, truncation: bool | str | None = None, max_length: int | None = None,
               return_tensors: str | None = None, **kwargs):
        """Encode one text (or one pair) into a list of ids; same arguments as :meth:`__call__`."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes one string (or one pair of strings), got {type(text).__name__}")
        enc = self(text, text_pair=text_pair, add_special_tokens=add_special_tokens, padding=padding,
                   truncation=truncation, max_length=max_length, return_tensors=return_tensors,
                   return_token_type_ids=False, return_attention_mask=False, **kwargs)
        return enc["input_ids"]

    def pad(self, encoded_inputs, padding: bool | str = True, max_length: int | None = None,
            pad_to_multiple_of: int | None = None, padding_side: str | None = None,
            return_attention_mask: bool | None = None, return_tensors: str | None = None) -> BatchEncoding:
        """Pad already-encoded inputs (a dict of lists of ids, or a list of such dicts, e.g. in a collate function).

        Args:
            encoded_inputs: ``{"input_ids": [[...], ...], ...}`` or ``[{"input_ids": [...]}, ...]``.
            padding: ``True``/``"longest"``, ``"max_length"`` or ``False``.
            max_length: length for ``"max_length"`` padding.
            pad_to_multiple_of: round the padded length up to a multiple of this value.
            padding_side: ``"right"`` or ``"left"``.
            return_attention_mask: add/pad ``attention_mask`` (default ``True``).
            return_tensors: ``None``, ``"pt"`` or ``"np"``.
        """
        if isinstance(encoded_inputs, (list, tuple)):
            if not encoded_inputs:
                return BatchEncoding({"input_ids": []})
            encoded_inputs = {k: [ex[k] for ex in encoded_inputs] for k in encoded_inputs[0].keys()}
        as_list = lambda x: x.tolist() if hasattr(x, "tolist") else x  # noqa: E731
        batch = {k: as_list(v) for k, v in encoded_inputs.items()}
        batch = {k: [as_list(x) for x in v] if isinstance(v, list) else v for k, v in batch.items()}
        if "input_ids" not in batch:
            raise ValueError(f"pad() needs 'input_ids', got keys {list(batch)}")
        single = bool(batch["input_ids"]) and not isinstance(batch["input_ids"][0], list)
        if single:
            batch = {k: [v] for k, v in batch.items()}
        strategy, _, max_length = self._get_padding_truncation_strategies(padding, None, max_length, pad_to_multiple_of)
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        batch = self._pad_batch(batch, strategy, max_length, pad_to_multiple_of, padding_side or self.padding_side,
                                return_attention_mask)
        if single:
            batch = {k: v[0] for k, v in batch.items()}
        return BatchEncoding(batch).convert_to_tensors(return_tensors, prepend_batch_axis=single)

    def _pad_batch(self, batch, padding_strategy, max_length, pad_to_multiple_of, padding_side, return_attention_mask):
        """Pad every row of ``batch`` (a dict of lists of lists) in place; returns ``batch``."""
        ids = batch["input_ids"]
        if return_attention_mask and "attention_mask" not in batch:
            batch["attention_mask"] = [[1] * len(x) for x in ids]
        if padding_strategy == "do_not_pad" or not ids:
            return batch
        length = max(len(x) for x in ids) if padding_strategy == "longest" else max_length
        if length is not None and pad_to_multiple_of is not None and length % pad_to_multiple_of != 0:
            length = (length // pad_to_multiple_of + 1) * pad_to_multiple_of
        pad_values = {"input_ids": self.pad_token_id, "token_type_ids": self.pad_token_type_id,
                      "attention_mask": 0, "special_tokens_mask": 1}
        for i in range(len(ids)):
            diff = length - len(ids[i])
            if diff <= 0:
                continue
            for key, value in pad_values.items():
                if key in batch:
                    row = batch[key][i]
                    batch[key][i] = row + [value] * diff if padding_side == "right" else [value] * diff + row
        return batch

    # ------------------------------------------------------------------ decoding
    def decode(self, token_ids, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str | list[str]:
        """Turn ids back into text: WordPiece pieces are glued (``"un ##aff ##able"`` -> ``"unaffable"``).

        Args:
            token_ids: a list of ids (or a 1-D tensor); a list of lists (or 2-D tensor) decodes a batch.
            skip_special_tokens: drop [CLS], [SEP], [PAD], ...
            clean_up_tokenization_spaces: remove spaces before punctuation and in English contractions
                (defaults to the tokenizer's ``clean_up_tokenization_spaces``).
        """
        if hasattr(token_ids, "tolist"):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, (list, tuple)) and token_ids and isinstance(token_ids[0], (list, tuple)):
            return [self.decode(x, skip_special_tokens, clean_up_tokenization_spaces) for x in token_ids]
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        tokens = self.convert_ids_to_tokens(list(token_ids), skip_special_tokens=skip_special_tokens)
        text = self.convert_tokens_to_string([t for t in tokens if t is not None])  # None: an id without token
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return self.clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def batch_decode(self, sequences, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        """Decode a batch of id sequences (see :meth:`decode`)."""
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(seq, skip_special_tokens, clean_up_tokenization_spaces) for seq in sequences]

    @staticmethod
    def clean_up_tokenization(text: str) -> str:
        """Remove the spaces a tokenizer puts before punctuation and inside English contractions."""
        for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                     (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
            text = text.replace(a, b)
        return text

    # ------------------------------------------------------------------ serialisation
    def _config_dict(self) -> dict[str, Any]:
        """Options written to ``tokenizer_config.json``, with the added tokens as ``transformers`` records them
        (``added_tokens_decoder``: ``{id: {"content": ..., "special": ..., ...}}``)."""
        config = {
            **self._extra_config,
            "tokenizer_class": type(self).__name__,
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            **self.special_tokens_map,
            **{name: getattr(self, name) for name in self._config_attrs},
            "added_tokens_decoder": {str(i): added_token_state(t) for i, t in self.added_tokens_decoder.items()},
        }
        if self._additional_special_tokens:
            config["additional_special_tokens"] = self.additional_special_tokens
        return config

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        """Write ``vocab.txt`` (LF line endings) into ``save_directory``; it reloads to the same ``{token: id}``.

        The lines of the loaded file are written back in order (duplicates included) when known.

        Returns:
            ``(path_of_vocab_txt,)``.
        """
        save_directory = os.fspath(save_directory)
        prefix = (filename_prefix + "-") if filename_prefix else ""
        if os.path.isdir(save_directory):
            path = os.path.join(save_directory, prefix + VOCAB_FILE)
        else:
            path = prefix + save_directory
        return (write_vocab_file(self._vocab_lines, path),)

    def save_pretrained(self, save_directory: str | os.PathLike, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Write the tokenizer in the Hugging Face layout: ``vocab.txt``, ``tokenizer_config.json`` (with the added
        tokens in ``added_tokens_decoder``), ``special_tokens_map.json``, ``added_tokens.json`` when tokens were
        added beyond the vocabulary, and ``tokenizer.json`` for the fast tokenizer. ``transformers``' BERT
        tokenizers (slow and fast) load the directory with the same ids.

        Returns:
            The paths of the written files.
        """
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"Provided path ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        prefix = (filename_prefix + "-") if filename_prefix else ""
        config_path = os.path.join(save_directory, prefix + TOKENIZER_CONFIG_FILE)
        map_path = os.path.join(save_directory, prefix + SPECIAL_TOKENS_MAP_FILE)
        _write_json(self._config_dict(), config_path)
        special_map = dict(self.special_tokens_map)
        if self._additional_special_tokens:
            special_map["additional_special_tokens"] = self.additional_special_tokens
        _write_json(special_map, map_path)
        files = [config_path, map_path, *self.save_vocabulary(save_directory, filename_prefix=filename_prefix)]
        beyond_vocab = {token: i for token, i in self.added_tokens_encoder.items() if i >= self.vocab_size}
        if beyond_vocab:  # the older layout, read by transformers' Python tokenizers
            files.append(os.path.join(save_directory, prefix + ADDED_TOKENS_FILE))
            _write_json(beyond_vocab, files[-1])
        if self.is_fast:
            files.append(os.path.join(save_directory, prefix + TOKENIZER_FILE))
            self.backend_tokenizer.save(files[-1])
        return tuple(files)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Load a tokenizer saved with ``save_pretrained`` (or any local Hugging Face BERT/ConvBERT tokenizer
        directory: ``vocab.txt`` and/or ``tokenizer.json``, plus optional ``tokenizer_config.json`` and
        ``special_tokens_map.json``). Keyword arguments override the saved configuration.

        Only local directories (or a bare ``vocab.txt``) are supported, no hub download. Only JSON and text
        files are read: loading never runs code.
        """
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isfile(path):
            return cls(vocab_file=path, **kwargs)
        if not os.path.isdir(path):
            raise OSError(
                f"Can't load tokenizer from {path!r}: it is not a local directory. Only local directories written by "
                "`save_pretrained` (or a Hugging Face tokenizer directory) can be loaded; hub downloads are not supported."
            )
        init: dict[str, Any] = dict(_read_json(os.path.join(path, TOKENIZER_CONFIG_FILE)))
        special_map = _read_json(os.path.join(path, SPECIAL_TOKENS_MAP_FILE))
        init.update({name: value for name, value in special_map.items() if name in SPECIAL_TOKEN_NAMES})
        for name in SPECIAL_TOKEN_NAMES:  # transformers may store AddedToken dicts
            if isinstance(init.get(name), dict):
                init[name] = init[name]["content"]
        # Additional special tokens: "additional_special_tokens" (transformers 4, ours) or "extra_special_tokens"
        # (transformers 5), in the config or the special tokens map; each may be a string or an AddedToken dict.
        for source in (init, special_map):
            extra = source.get("additional_special_tokens") or source.get("extra_special_tokens")
            if isinstance(extra, list) and extra:
                init["additional_special_tokens"] = [t["content"] if isinstance(t, dict) else t for t in extra]
                break
        init.pop("extra_special_tokens", None)
        if not init.get("added_tokens_decoder"):
            init["added_tokens_decoder"] = cls._legacy_added_tokens(path, init)
        if init.get("model_max_length") is not None and init["model_max_length"] > LARGE_INTEGER:
            init["model_max_length"] = None
        files = {key: os.path.join(path, name) for key, name in cls.vocab_files_names.items()}
        files = {key: file for key, file in files.items() if os.path.isfile(file)}
        if not files:
            raise OSError(
                f"Can't load tokenizer from {path!r}: none of {sorted(cls.vocab_files_names.values())} is in the directory."
            )
        init.update(files)
        init.update(kwargs)
        init.setdefault("name_or_path", path)
        return cls(**init)

    @staticmethod
    def _legacy_added_tokens(path: str, init: dict[str, Any]) -> dict[int, AddedToken]:
        """The added tokens of a directory whose config has no ``added_tokens_decoder``, found as ``transformers``
        finds them: ``added_tokens.json`` (``{token: id}``; special tokens are not normalized, the others are),
        then the ``added_tokens`` of ``tokenizer.json`` (so that a fast tokenizer's directory loads into the Python
        tokenizer with its added tokens)."""
        added = _read_json(os.path.join(path, ADDED_TOKENS_FILE))
        if not isinstance(added, dict):
            raise ValueError(f"{os.path.join(path, ADDED_TOKENS_FILE)} must hold a {{token: id}} object")
        specials = {init.get(name, default) for name, default in zip(
            SPECIAL_TOKEN_NAMES, ("[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"))}
        specials.update(init.get("additional_special_tokens") or ())
        tokens = {int(i): as_added_token(token, special=token in specials) for token, i in added.items()}
        serialized = _read_json(os.path.join(path, TOKENIZER_FILE))
        for entry in serialized.get("added_tokens") or () if isinstance(serialized, dict) else ():
            if isinstance(entry, dict) and isinstance(entry.get("id"), int):
                tokens[entry["id"]] = as_added_token(entry)
        return tokens

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"model_max_length={self.model_max_length}, special_tokens={self.special_tokens_map})"
        )
