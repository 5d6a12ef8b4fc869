"""Pure-Python ConvBERT tokenizer: BERT basic tokenization followed by greedy WordPiece.

The behaviour is token-for-token that of the original BERT/ConvBERT tokenizer (and of
``transformers``' pure-Python BERT tokenizer): text cleaning, CJK character isolation, NFC
normalisation, optional lower-casing and accent stripping, punctuation splitting, then
longest-match-first WordPiece with ``##`` continuation pieces and ``[UNK]`` for words longer than
100 characters or that cannot be pieced together.

Basic tokenization stays in Python: ``tokenizers``' BERT normalizer and pre-tokenizer differ from it on
some inputs (their own Unicode tables and CJK ranges, no NFC, no final-sigma lower-casing, no
``never_split``). The WordPiece step is ``tokenizers``' WordPiece model.
"""

from __future__ import annotations

import collections
import itertools
import os
import re
import unicodedata
from typing import Iterable

from tokenizers import AddedToken
from tokenizers.models import WordPiece

from .tokenization_base import (
    ConvBertTokenizerBase,
    VocabularyError,
    as_added_token,
    load_vocab,
    read_vocab_lines,
    vocab_from_lines,
)

__all__ = ["ConvBertTokenizer", "BasicTokenizer", "WordpieceTokenizer", "load_vocab", "VocabularyError"]


def _is_whitespace(char: str) -> bool:
    """Space, tab, newline, carriage return, or any Unicode space separator (Zs)."""
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    """Unicode "C*" categories (control, format, unassigned, private use), except tab/newline/CR."""
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def _is_punctuation(char: str) -> bool:
    """All non-alphanumeric printable ASCII, plus Unicode "P*" categories."""
    cp = ord(char)
    ascii_punctuation = 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126
    return ascii_punctuation or unicodedata.category(char).startswith("P")


# The CJK Unified Ideographs blocks BERT isolates.
_CJK_CHAR = re.compile(
    "([\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f\U0002b740-\U0002b81f"
    "\U0002b820-\U0002ceaf\uf900-\ufaff\U0002f800-\U0002fa1f])"
)


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


class BasicTokenizer:
    """Cleaning, CJK isolation, lower-casing / accent stripping and punctuation splitting.

    Args:
        do_lower_case: lower-case the text.
        never_split: tokens that are neither lower-cased nor split on punctuation.
        tokenize_chinese_chars: put spaces around CJK ideographs.
        strip_accents: remove combining marks after NFD decomposition; ``None`` follows ``do_lower_case``.
        do_split_on_punc: split on punctuation.
    """

    def __init__(self, do_lower_case: bool = True, never_split: Iterable[str] | None = None,
                 tokenize_chinese_chars: bool = True, strip_accents: bool | None = None, do_split_on_punc: bool = True):
        self.do_lower_case = do_lower_case
        self.never_split = set(never_split or ())
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.strip_accents = strip_accents
        self.do_split_on_punc = do_split_on_punc

    def tokenize(self, text: str, never_split: Iterable[str] | None = None) -> list[str]:
        """Split ``text`` into words and punctuation marks."""
        protected = self.never_split.union(never_split) if never_split else self.never_split
        text = "".join(" " if _is_whitespace(c) else c for c in text if not (c in "\x00\ufffd" or _is_control(c)))
        if self.tokenize_chinese_chars:
            text = _CJK_CHAR.sub(r" \1 ", text)
        # One code point sequence per character, so composed and decomposed input agree.
        text = unicodedata.normalize("NFC", text)
        pieces: list[str] = []
        for word in text.split():
            if word not in protected:
                if self.do_lower_case:
                    word = word.lower()
                    if self.strip_accents is not False:
                        word = _strip_accents(word)
                elif self.strip_accents:
                    word = _strip_accents(word)
            if not self.do_split_on_punc or word in protected:
                pieces.append(word)
            else:  # each punctuation mark alone, the runs between them whole
                for is_punc, run in itertools.groupby(word, _is_punctuation):
                    if is_punc:
                        pieces.extend(run)
                    else:
                        pieces.append("".join(run))
        # Lower-casing or accent stripping can leave empty or space-containing pieces; re-split.
        return " ".join(pieces).split()


# tokenizers' WordPiece needs its unknown token in the vocabulary, which ours may lack. "\n" stands in for it:
# no word split on whitespace contains it, so it can never match a piece.
_UNK_STAND_IN = "\n"


class WordpieceTokenizer:
    """Greedy longest-match-first WordPiece (``tokenizers``' WordPiece model).

    Args:
        vocab: ``{token: id}``.
        unk_token: token emitted for a word that cannot be pieced together.
        max_input_chars_per_word: longer words become ``unk_token``.
        prefix: marker of continuation pieces.
    """

    def __init__(self, vocab, unk_token: str, max_input_chars_per_word: int = 100, prefix: str = "##"):
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_input_chars_per_word = max_input_chars_per_word
        self.prefix = prefix
        self._model = WordPiece({**vocab, _UNK_STAND_IN: 0}, unk_token=_UNK_STAND_IN,
                                max_input_chars_per_word=max_input_chars_per_word, continuing_subword_prefix=prefix)

    def tokenize(self, text: str) -> list[str]:
        """Split whitespace-separated words of ``text`` into WordPiece tokens."""
        output: list[str] = []
        for word in text.split():
            try:
                pieces = [t.value for t in self._model.tokenize(word)]
            except UnicodeEncodeError:  # a lone surrogate, which no UTF-8 vocabulary holds
                pieces = [_UNK_STAND_IN]
            output.extend(self.unk_token if p == _UNK_STAND_IN else p for p in pieces)
        return output


class ConvBertTokenizer(ConvBertTokenizerBase):
    r"""Construct a ConvBERT tokenizer (pure Python). Based on WordPiece.

    Args:
        vocab_file (`str`): a WordPiece ``vocab.txt``, one token per line (LF or CRLF; a repeated token keeps
            the id of its last line, like the reference).
        do_lower_case (`bool`, defaults to `True`): lower-case the input.
        do_basic_tokenize (`bool`, defaults to `True`): run basic tokenization before WordPiece.
        never_split (`Iterable[str]`, *optional*): tokens never split nor lower-cased (with ``do_basic_tokenize``).
        unk_token, sep_token, pad_token, cls_token, mask_token (`str`): the special tokens.
        tokenize_chinese_chars (`bool`, defaults to `True`): split around CJK ideographs.
        strip_accents (`bool`, *optional*): strip accents; ``None`` follows ``do_lower_case`` (as in the original).
        model_max_length (`int`, *optional*): default length for ``truncation=True`` / ``padding="max_length"``.
        clean_up_tokenization_spaces (`bool`, defaults to `True`): clean up spaces in :meth:`decode`.
    """

    _config_attrs = ("do_lower_case", "do_basic_tokenize", "never_split", "tokenize_chinese_chars", "strip_accents")

    def __init__(self, vocab_file, do_lower_case: bool = True, do_basic_tokenize: bool = True,
                 never_split: Iterable[str] | None = None, unk_token: str = "[UNK]", sep_token: str = "[SEP]",
                 pad_token: str = "[PAD]", cls_token: str = "[CLS]", mask_token: str = "[MASK]",
                 tokenize_chinese_chars: bool = True, strip_accents: bool | None = None, **kwargs):
        if vocab_file is None:
            raise VocabularyError("ConvBertTokenizer needs a `vocab_file` (a WordPiece vocab.txt).")
        self.vocab_file = os.fspath(vocab_file)
        self._vocab_lines = read_vocab_lines(self.vocab_file)
        self.vocab = vocab_from_lines(self._vocab_lines)
        self.ids_to_tokens = collections.OrderedDict((i, t) for t, i in self.vocab.items())
        self.do_lower_case = do_lower_case
        self.do_basic_tokenize = do_basic_tokenize
        self.never_split = list(never_split) if never_split is not None else None
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.strip_accents = strip_accents
        self.basic_tokenizer = (
            BasicTokenizer(do_lower_case=do_lower_case, never_split=never_split,
                           tokenize_chinese_chars=tokenize_chinese_chars, strip_accents=strip_accents)
            if do_basic_tokenize
            else None
        )
        super().__init__(unk_token=unk_token, sep_token=sep_token, pad_token=pad_token, cls_token=cls_token,
                         mask_token=mask_token, **kwargs)
        self.wordpiece_tokenizer = WordpieceTokenizer(self.vocab, unk_token=self.unk_token)
        # Added tokens ({id: AddedToken}, {content: id}): those of a saved tokenizer keep their ids; the special
        # tokens are added too, those missing from the vocabulary with the next free ids (as in the reference).
        self._added_tokens_decoder: dict[int, AddedToken] = {}
        self._added_tokens_encoder: dict[str, int] = {}
        for index, token in sorted(self._saved_added_tokens.items()):
            self._register_added_token(index, token)
        self._refresh_added_tokens_pattern()
        missing = [t for t in self.all_special_tokens if t not in self._added_tokens_encoder]
        self._add_tokens(missing, special_tokens=True)

    @property
    def vocab_size(self) -> int:
        """Number of distinct tokens in ``vocab.txt``."""
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        """``{token: id}`` for the vocabulary and the added tokens."""
        return dict(self.vocab, **self._added_tokens_encoder)

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        """``{id: AddedToken}`` for every added token (the special tokens included), sorted by id."""
        return dict(sorted(self._added_tokens_decoder.items()))

    def _register_added_token(self, index: int, token: AddedToken) -> None:
        self._added_tokens_decoder[index] = token
        self._added_tokens_encoder[token.content] = index

    def _refresh_added_tokens_pattern(self) -> None:
        """The regular expression that finds added tokens in a text: longest first, so that the leftmost match is
        also the longest one starting there (the behaviour of the reference's trie)."""
        contents = sorted((t for t in self._added_tokens_encoder if t), key=len, reverse=True)
        body = "|".join(re.escape(t) for t in contents) or "(?!)"
        self._added_tokens_re = re.compile(f"({body})")

    def _add_tokens(self, new_tokens: list[str | AddedToken], special_tokens: bool) -> int:
        """Register added tokens the way ``transformers``' Python tokenizers do (see :meth:`add_tokens`)."""
        vocab = self.get_vocab()
        added = 0
        for token in new_tokens:
            if str(token) == "":
                continue
            if isinstance(token, str):
                if token in self._added_tokens_encoder:
                    continue
                token = as_added_token(token, special=special_tokens or token in self.all_special_tokens)
            elif special_tokens:
                token = as_added_token(token, special=True)
            else:
                token = as_added_token(token)  # a copy: the caller's object is not changed
            if not token.special and token.normalized and self.do_lower_case:
                token.content = token.content.lower()
            index = vocab.get(token.content)
            if index is None:
                index = len(vocab)
                self._check_new_id(token.content, index, self.ids_to_tokens.get(index))
                vocab[token.content] = index
                added += 1
            if token.special and token.content not in self.all_special_tokens:
                self._additional_special_tokens.append(token.content)
            self._register_added_token(index, token)
        self._refresh_added_tokens_pattern()
        return added

    def _convert_token_to_id(self, token: str) -> int:
        index = self._added_tokens_encoder.get(token)
        if index is None:
            index = self.vocab.get(token)
        if index is None:
            index = self._added_tokens_encoder.get(self.unk_token, self.vocab.get(self.unk_token))
        return index

    def _convert_id_to_token(self, index: int) -> str:
        token = self._added_tokens_decoder.get(index)
        if token is not None:
            return token.content
        return self.ids_to_tokens.get(index, self.unk_token)

    def tokenize(self, text: str, **kwargs) -> list[str]:
        """Split ``text`` into WordPiece tokens; added and special tokens written in the text ("[MASK]") are kept
        whole, matched in the raw text (longest first), with their ``lstrip`` / ``rstrip`` / ``single_word`` rules.

        Example: ``tokenize("Unaffable!")`` -> ``["una", "##ffa", "##ble", "!"]`` (depends on the vocabulary).
        """
        if not isinstance(text, str):
            raise TypeError(f"tokenize() expects a string, got {type(text).__name__}")
        pieces = [p for p in self._added_tokens_re.split(text) if p]
        added = self._added_tokens_encoder
        for i, piece in enumerate(pieces):
            token = self._added_tokens_decoder[added[piece]] if piece in added else None
            if token is None:
                continue
            left = pieces[i - 1] if i > 0 else None
            right = pieces[i + 1] if i + 1 < len(pieces) else None
            if token.rstrip and right:
                pieces[i + 1] = right.lstrip()
            if token.lstrip and left:
                pieces[i - 1] = left.rstrip()
            if token.single_word:  # glued to a word: not a token of its own
                if left and left[-1] != " ":
                    pieces[i - 1] += piece
                    pieces[i] = ""
                elif right and right[0] != " ":
                    pieces[i + 1] = piece + pieces[i + 1]
                    pieces[i] = ""
        out: list[str] = []
        for piece in pieces:
            if piece in added:
                out.append(piece)
            elif piece:
                out.extend(self._tokenize(piece))
        return out

    def _tokenize(self, text: str) -> list[str]:
        if self.basic_tokenizer is None:
            return self.wordpiece_tokenizer.tokenize(text)
        out: list[str] = []
        user_never_split = self.basic_tokenizer.never_split
        for token in self.basic_tokenizer.tokenize(text, never_split=self.all_special_tokens):
            if token in user_never_split:
                out.append(token)
            else:
                out.extend(self.wordpiece_tokenizer.tokenize(token))
        return out

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Join tokens into text, gluing ``##`` continuation pieces to the previous token."""
        return " ".join(tokens).replace(" ##", "").strip()

    def _truncate(self, ids, pair_ids, num_to_remove, strategy, stride=0):
        """Drop ``num_to_remove`` ids the way ``transformers``' Python tokenizers do.

        Returns ``(ids, pair_ids, overflowing)``: ``overflowing`` holds the removed ids of the truncated sequence
        preceded by up to ``stride`` of its kept ids (nothing for a pair with ``"longest_first"``).
        """
        right = self.truncation_side == "right"

        def drop(seq, n):
            return (seq[:-n] if right else seq[n:]) if n > 0 else seq

        def overflow(seq):
            window = min(len(seq), stride + num_to_remove)
            return seq[-window:] if right else seq[:window]

        if strategy == "only_first" or (strategy == "longest_first" and pair_ids is None):
            return drop(ids, num_to_remove), pair_ids, overflow(ids)
        if strategy == "longest_first":
            # One at a time from the longer sequence, from the second one on a tie.
            first = min(abs(len(pair_ids) - len(ids)), num_to_remove)
            second = num_to_remove - first
            if len(ids) > len(pair_ids):
                return drop(ids, first + second // 2), drop(pair_ids, second - second // 2), []
            return drop(ids, second // 2), drop(pair_ids, first + second - second // 2), []
        if strategy == "only_second" and pair_ids:
            return ids, drop(pair_ids, num_to_remove), overflow(pair_ids)
        return ids, pair_ids, []

    def _ids(self, text: str | list[str], is_split_into_words: bool) -> list[int]:
        """Token ids of a text, or of a list of words each tokenized on its own."""
        if is_split_into_words:
            return self.convert_tokens_to_ids([token for word in text for token in self.tokenize(word)])
        return self.convert_tokens_to_ids(self.tokenize(text))

    def _encode_batch(self, pairs, add_special_tokens, padding_strategy, truncation_strategy, max_length,
                      pad_to_multiple_of, padding_side, return_special_tokens_mask, stride=0,
                      is_split_into_words=False, return_overflowing_tokens=False, return_offsets_mapping=False):
        if return_offsets_mapping:
            raise NotImplementedError(
                "return_offsets_mapping is not available with the pure-Python ConvBertTokenizer, which does not track "
                "character offsets; use ConvBertTokenizerFast (same tokens and ids) for offset mappings."
            )
        batch = {"input_ids": [], "token_type_ids": [], "attention_mask": []}
        if return_special_tokens_mask:
            batch["special_tokens_mask"] = []
        overflows, truncated = [], []
        for text, text_pair in pairs:
            ids = self._ids(text, is_split_into_words)
            pair_ids = self._ids(text_pair, is_split_into_words) if text_pair is not None else None
            if return_overflowing_tokens and truncation_strategy == "longest_first" and pair_ids is not None:
                raise ValueError(
                    "Not possible to return overflowing tokens for pair of sequences with the `longest_first` "
                    "truncation strategy. Please select another truncation strategy than `longest_first`, for instance "
                    "`only_second` or `only_first` (or use ConvBertTokenizerFast, which returns every window)."
                )
            overflowing, n_truncated = [], 0
            if truncation_strategy != "do_not_truncate" and max_length:
                n_special = self.num_special_tokens_to_add(pair_ids is not None) if add_special_tokens else 0
                total = len(ids) + len(pair_ids or ()) + n_special
                if total > max_length:
                    ids, pair_ids, overflowing = self._truncate(ids, pair_ids, total - max_length,
                                                                truncation_strategy, stride)
                    n_truncated = total - max_length if overflowing else 0
            overflows.append(overflowing)
            truncated.append(n_truncated)
            if add_special_tokens:
                seq = self.build_inputs_with_special_tokens(ids, pair_ids)
                types = self.create_token_type_ids_from_sequences(ids, pair_ids)
                special = self.get_special_tokens_mask(ids, pair_ids)
            else:
                seq = ids + (pair_ids or [])
                types, special = [0] * len(seq), [0] * len(seq)
            batch["input_ids"].append(seq)
            batch["token_type_ids"].append(types)
            batch["attention_mask"].append([1] * len(seq))
            if return_special_tokens_mask:
                batch["special_tokens_mask"].append(special)
        if return_overflowing_tokens and any(overflows):
            # transformers' Python tokenizers give these keys to inputs that overflowed; every row gets them here
            # ([] and 0 for a row that did not overflow), so that a batch stays aligned.
            batch["overflowing_tokens"] = overflows
            batch["num_truncated_tokens"] = truncated
        batch = self._pad_batch(batch, padding_strategy, max_length, pad_to_multiple_of, padding_side, True)
        return batch, None
