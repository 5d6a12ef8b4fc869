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

from tokenizers.models import WordPiece

from .tokenization_base import ConvBertTokenizerBase, VocabularyError, load_vocab, read_vocab_lines, vocab_from_lines

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
        # Special tokens missing from the vocabulary get the next free ids (as in the reference).
        self._added_tokens: dict[str, int] = {}
        for tok in self.all_special_tokens:
            if tok not in self.vocab:
                self._added_tokens[tok] = len(self.vocab) + len(self._added_tokens)
        self._added_ids = {i: t for t, i in self._added_tokens.items()}
        specials = sorted(self.all_special_tokens, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(re.escape(t) for t in specials) + ")")

    @property
    def vocab_size(self) -> int:
        """Number of distinct tokens in ``vocab.txt``."""
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        """``{token: id}`` for the vocabulary and any special token added to it."""
        return dict(self.vocab, **self._added_tokens)

    def _convert_token_to_id(self, token: str) -> int:
        if token in self._added_tokens:
            return self._added_tokens[token]
        idx = self.vocab.get(token)
        if idx is None:
            idx = self.vocab.get(self.unk_token, self._added_tokens.get(self.unk_token))
        return idx

    def _convert_id_to_token(self, index: int) -> str:
        if index in self._added_ids:
            return self._added_ids[index]
        return self.ids_to_tokens.get(index, self.unk_token)

    def tokenize(self, text: str, **kwargs) -> list[str]:
        """Split ``text`` into WordPiece tokens; special tokens written in the text ("[MASK]") are kept whole.

        Example: ``tokenize("Unaffable!")`` -> ``["una", "##ffa", "##ble", "!"]`` (depends on the vocabulary).
        """
        if not isinstance(text, str):
            raise TypeError(f"tokenize() expects a string, got {type(text).__name__}")
        specials = set(self.all_special_tokens)
        out: list[str] = []
        for chunk in filter(None, self._special_re.split(text)):
            out.extend([chunk] if chunk in specials else self._tokenize(chunk))
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

    def _truncate(self, ids, pair_ids, num_to_remove, strategy):
        """Drop ``num_to_remove`` ids the way ``transformers``' Python tokenizers do."""
        right = self.truncation_side == "right"

        def drop(seq, n):
            return (seq[:-n] if right else seq[n:]) if n > 0 else seq

        if strategy == "only_first" or (strategy == "longest_first" and pair_ids is None):
            return drop(ids, num_to_remove), pair_ids
        if strategy == "longest_first":
            # One at a time from the longer sequence, from the second one on a tie.
            first = min(abs(len(pair_ids) - len(ids)), num_to_remove)
            second = num_to_remove - first
            if len(ids) > len(pair_ids):
                return drop(ids, first + second // 2), drop(pair_ids, second - second // 2)
            return drop(ids, second // 2), drop(pair_ids, first + second - second // 2)
        if strategy == "only_second" and pair_ids:
            return ids, drop(pair_ids, num_to_remove)
        return ids, pair_ids

    def _encode_batch(self, pairs, add_special_tokens, padding_strategy, truncation_strategy, max_length,
                      pad_to_multiple_of, padding_side, return_special_tokens_mask):
        batch = {"input_ids": [], "token_type_ids": [], "attention_mask": []}
        if return_special_tokens_mask:
            batch["special_tokens_mask"] = []
        for text, text_pair in pairs:
            ids = self.convert_tokens_to_ids(self.tokenize(text))
            pair_ids = self.convert_tokens_to_ids(self.tokenize(text_pair)) if text_pair is not None else None
            if truncation_strategy != "do_not_truncate" and max_length:
                n_special = self.num_special_tokens_to_add(pair_ids is not None) if add_special_tokens else 0
                total = len(ids) + len(pair_ids or ()) + n_special
                if total > max_length:
                    ids, pair_ids = self._truncate(ids, pair_ids, total - max_length, truncation_strategy)
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
        return self._pad_batch(batch, padding_strategy, max_length, pad_to_multiple_of, padding_side, True)
