"""Fast ConvBERT tokenizer backed by the Rust ``tokenizers`` library.

The pipeline is BERT's: ``BertNormalizer`` (cleaning, CJK isolation, lower-casing, accent
stripping) -> ``BertPreTokenizer`` (whitespace and punctuation) -> ``WordPiece`` ->
``TemplateProcessing`` (``[CLS] A [SEP] B [SEP]`` with segment ids) and a ``WordPiece`` decoder.
It is built from a ``vocab.txt`` or loaded from a ``tokenizer.json``.
"""

from __future__ import annotations

import os
import warnings

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from .tokenization_base import (
    TOKENIZER_FILE,
    VOCAB_FILE,
    ConvBertTokenizerBase,
    VocabularyError,
    read_vocab_lines,
    vocab_from_lines,
    vocab_lines_from_dict,
)

__all__ = ["ConvBertTokenizerFast"]


def set_bert_pre_processing(tok: Tokenizer, *, clean_text: bool, tokenize_chinese_chars: bool,
                            strip_accents: bool | None, do_lower_case: bool) -> None:
    """BERT's normalizer and pre-tokenizer on a ``tokenizers.Tokenizer`` (shared with the vocab trainer)."""
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=clean_text,
        handle_chinese_chars=tokenize_chinese_chars,
        strip_accents=strip_accents,
        lowercase=do_lower_case,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()


def _load_tokenizer_file(path: str) -> Tokenizer:
    if not os.path.isfile(path):
        raise VocabularyError(f"Can't find a tokenizer file at path {path!r}.")
    try:
        tok = Tokenizer.from_file(path)  # JSON only: nothing in the file is executed
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise VocabularyError(f"Can't parse the tokenizer file {path!r}: {exc}") from exc
    if not isinstance(tok.model, WordPiece):
        raise VocabularyError(f"{path!r} holds a {type(tok.model).__name__} model; ConvBERT needs WordPiece.")
    if tok.get_vocab_size(with_added_tokens=False) == 0:
        raise VocabularyError(f"The tokenizer file {path!r} has an empty vocabulary.")
    return tok


class ConvBertTokenizerFast(ConvBertTokenizerBase):
    r"""Construct a "fast" ConvBERT tokenizer (backed by the ``tokenizers`` library). Based on WordPiece.

    Args:
        vocab_file (`str`, *optional*): a WordPiece ``vocab.txt`` (LF or CRLF; a repeated token keeps the id of
            its last line, like the reference).
        tokenizer_file (`str`, *optional*): a ``tokenizers`` serialization (``tokenizer.json``); used instead of
            ``vocab_file`` when given. Normalization options passed here override the ones in the file.
        do_lower_case (`bool`, defaults to `True`): lower-case the input.
        unk_token, sep_token, pad_token, cls_token, mask_token (`str`): the special tokens.
        clean_text (`bool`, defaults to `True`): remove control characters and map all whitespace to spaces.
        tokenize_chinese_chars (`bool`, defaults to `True`): split around CJK ideographs.
        strip_accents (`bool`, *optional*): strip accents; ``None`` follows ``do_lower_case`` (as in the original).
        wordpieces_prefix (`str`, defaults to `"##"`): prefix of continuation pieces.
        model_max_length (`int`, *optional*): default length for ``truncation=True`` / ``padding="max_length"``.
        clean_up_tokenization_spaces (`bool`, defaults to `False`): extra Python clean-up in :meth:`decode`
            (the WordPiece decoder already cleans up).
    """

    vocab_files_names = {"vocab_file": VOCAB_FILE, "tokenizer_file": TOKENIZER_FILE}
    is_fast = True
    _config_attrs = ("do_lower_case", "clean_text", "tokenize_chinese_chars", "strip_accents", "wordpieces_prefix")

    def __init__(self, vocab_file=None, tokenizer_file=None, do_lower_case: bool = True, unk_token: str = "[UNK]",
                 sep_token: str = "[SEP]", pad_token: str = "[PAD]", cls_token: str = "[CLS]",
                 mask_token: str = "[MASK]", clean_text: bool = True, tokenize_chinese_chars: bool = True,
                 strip_accents: bool | None = None, wordpieces_prefix: str = "##",
                 clean_up_tokenization_spaces: bool = False, **kwargs):
        for key in ("do_basic_tokenize", "never_split"):  # slow-only options found in shared configs
            kwargs.pop(key, None)
        super().__init__(unk_token=unk_token, sep_token=sep_token, pad_token=pad_token, cls_token=cls_token,
                         mask_token=mask_token, clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs)
        self.do_lower_case = do_lower_case
        self.clean_text = clean_text
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.strip_accents = strip_accents
        self.wordpieces_prefix = wordpieces_prefix
        self.vocab_file = os.fspath(vocab_file) if vocab_file is not None else None

        if tokenizer_file is not None:
            tok = _load_tokenizer_file(os.fspath(tokenizer_file))
            tok.model.unk_token = self.unk_token
            tok.model.continuing_subword_prefix = wordpieces_prefix
            vocab = tok.get_vocab(with_added_tokens=False)
            # Save the raw lines of vocab.txt (duplicates included) when they agree with the file.
            lines = read_vocab_lines(vocab_file) if vocab_file is not None and os.path.isfile(vocab_file) else None
            if lines is None or dict(vocab_from_lines(lines)) != vocab:
                lines = vocab_lines_from_dict(vocab)
            self._vocab_lines = lines
        elif vocab_file is not None:
            self._vocab_lines = read_vocab_lines(vocab_file)
            tok = Tokenizer(WordPiece(dict(vocab_from_lines(self._vocab_lines)), unk_token=self.unk_token,
                                      max_input_chars_per_word=100, continuing_subword_prefix=wordpieces_prefix))
        else:
            raise VocabularyError(
                "ConvBertTokenizerFast needs a `vocab_file` (vocab.txt) or a `tokenizer_file` (tokenizer.json)."
            )

        set_bert_pre_processing(tok, clean_text=clean_text, tokenize_chinese_chars=tokenize_chinese_chars,
                                strip_accents=strip_accents, do_lower_case=do_lower_case)
        tok.decoder = decoders.WordPiece(prefix=wordpieces_prefix)
        tok.no_padding()
        tok.no_truncation()
        self._tokenizer = tok
        # Added tokens of a saved tokenizer that tokenizer.json does not hold already (e.g. a directory written by
        # the Python tokenizer), in id order; tokenizers gives them their ids.
        present = {t.content for t in tok.get_added_tokens_decoder().values()}
        for index, token in sorted(self._saved_added_tokens.items()):
            if token.content not in present:
                (tok.add_special_tokens if token.special else tok.add_tokens)([token])
                present.add(token.content)
            if tok.token_to_id(token.content) != index:
                self._check_saved_id(token.content, index)
        # Special tokens are matched on the raw text (before normalization) and never split.
        tok.add_special_tokens(
            [AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False) for t in self.all_special_tokens]
        )
        self._special_tokens_changed()

    def _special_tokens_changed(self) -> None:
        """``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` with the current ``cls_token`` and ``sep_token``."""
        self._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{self.cls_token}:0 $A:0 {self.sep_token}:0",
            pair=f"{self.cls_token}:0 $A:0 {self.sep_token}:0 $B:1 {self.sep_token}:1",
            special_tokens=[(self.cls_token, self.cls_token_id), (self.sep_token, self.sep_token_id)],
        )

    def _check_saved_id(self, token: str, index: int) -> None:
        warnings.warn(
            f"The saved added token {token!r} had id {index}, but tokenizers gives it id "
            f"{self._tokenizer.token_to_id(token)}: tokenizers numbers added tokens from the number of distinct "
            "vocabulary tokens, so ids recorded by another tokenizer (or for a vocabulary with repeated lines) "
            "cannot be kept.",
            UserWarning,
            stacklevel=3,
        )

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of distinct tokens in the WordPiece vocabulary (without added tokens)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def get_vocab(self) -> dict[str, int]:
        """``{token: id}`` including special tokens that were added to the vocabulary."""
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        """``{id: AddedToken}`` for every added token (the special tokens included), sorted by id."""
        return dict(sorted(self._tokenizer.get_added_tokens_decoder().items()))

    def _add_tokens(self, new_tokens: list[str | AddedToken], special_tokens: bool) -> int:
        """Hand the tokens to ``tokenizers``, as ``transformers``' fast tokenizers do (see :meth:`add_tokens`)."""
        tok = self._tokenizer
        before = tok.get_vocab_size(with_added_tokens=True)
        added = tok.add_special_tokens(new_tokens) if special_tokens else tok.add_tokens(new_tokens)
        for token in new_tokens:
            content = str(token)
            index = tok.token_to_id(content)
            if index is not None and index >= before:  # a new id: warn if the vocabulary already uses it
                self._check_new_id(content, index, tok.model.id_to_token(index))
            if special_tokens and content and content not in self.all_special_tokens:
                self._additional_special_tokens.append(content)
        return added

    def _convert_token_to_id(self, token: str) -> int:
        idx = self._tokenizer.token_to_id(token)
        return self._tokenizer.token_to_id(self.unk_token) if idx is None else idx

    def _convert_id_to_token(self, index: int) -> str | None:
        # Like the reference fast tokenizer: None for an id without token (e.g. a duplicate's first line).
        return self._tokenizer.id_to_token(int(index))

    def tokenize(self, text: str, **kwargs) -> list[str]:
        """Split ``text`` into WordPiece tokens; special tokens written in the text ("[MASK]") are kept whole."""
        if not isinstance(text, str):
            raise TypeError(f"tokenize() expects a string, got {type(text).__name__}")
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Join tokens into text with the WordPiece decoder (glues ``##`` pieces, cleans up spaces)."""
        return self._tokenizer.decoder.decode(tokens)

    def _encode_batch(self, pairs, add_special_tokens, padding_strategy, truncation_strategy, max_length,
                      pad_to_multiple_of, padding_side, return_special_tokens_mask, stride=0,
                      is_split_into_words=False, return_overflowing_tokens=False, return_offsets_mapping=False):
        tok = self._tokenizer
        if truncation_strategy == "do_not_truncate":
            tok.no_truncation()
        else:
            if stride and max_length is not None:
                is_pair = any(b is not None for _, b in pairs)
                n_special = self.num_special_tokens_to_add(is_pair) if add_special_tokens else 0
                if stride >= max_length - n_special:
                    raise ValueError(
                        f"stride ({stride}) must be smaller than max_length ({max_length}) minus the {n_special} "
                        f"special tokens added to each {'pair' if is_pair else 'sequence'}, i.e. at most "
                        f"{max_length - n_special - 1}: each window must move forward by at least one token."
                    )
            tok.enable_truncation(max_length, stride=stride, strategy=truncation_strategy,
                                  direction=self.truncation_side)
        if padding_strategy == "do_not_pad":
            tok.no_padding()
        else:
            tok.enable_padding(
                direction=padding_side,
                pad_id=self.pad_token_id,
                pad_type_id=self.pad_token_type_id,
                pad_token=self.pad_token,
                length=max_length if padding_strategy == "max_length" else None,
                pad_to_multiple_of=pad_to_multiple_of,
            )
        inputs = [a if b is None else (a, b) for a, b in pairs]
        try:
            encodings = tok.encode_batch(inputs, add_special_tokens=add_special_tokens,
                                         is_pretokenized=is_split_into_words)
        except Exception as exc:
            raise ValueError(f"Tokenization failed ({truncation_strategy=}, {max_length=}): {exc}") from exc
        except BaseException as exc:
            # tokenizers panics (pyo3's PanicException, not an Exception) when a window of the truncated
            # sequence is not longer than the stride, e.g. a question leaving little room for its context.
            if type(exc).__name__ != "PanicException":
                raise
            raise ValueError(
                f"stride ({stride}) is too large for max_length ({max_length}) with these inputs: the part of a "
                f"sequence that truncation keeps must be longer than the stride ({exc})."
            ) from None
        finally:
            tok.no_truncation()
            tok.no_padding()
        rows, sample = [], []
        for index, encoding in enumerate(encodings):
            windows = [encoding, *encoding.overflowing] if return_overflowing_tokens else [encoding]
            rows += windows
            sample += [index] * len(windows)
        out = {
            "input_ids": [e.ids for e in rows],
            "token_type_ids": [e.type_ids for e in rows],
            "attention_mask": [e.attention_mask for e in rows],
        }
        if return_special_tokens_mask:
            out["special_tokens_mask"] = [e.special_tokens_mask for e in rows]
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in rows]
        if return_overflowing_tokens:
            out["overflow_to_sample_mapping"] = sample
        return out, rows
