"""Train a WordPiece vocabulary for ConvBERT with the ``tokenizers`` trainer."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from typing import Iterable, Sequence

from tokenizers import Tokenizer
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

from .tokenization_base import VOCAB_FILE, vocab_lines_from_dict, write_vocab_file
from .tokenization_fast import set_bert_pre_processing

__all__ = ["train_wordpiece_vocab", "BERT_SPECIAL_TOKENS"]

#: Special tokens, in the order BERT vocabularies list them; they get ids 0..4 in a trained vocabulary.
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece_vocab(
    files: str | os.PathLike | Iterable[str | os.PathLike],
    vocab_size: int,
    output_dir: str | os.PathLike,
    *,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
    initial_alphabet: Sequence[str] = (),
    do_lower_case: bool = True,
    strip_accents: bool | None = None,
    tokenize_chinese_chars: bool = True,
    clean_text: bool = True,
    wordpieces_prefix: str = "##",
    model_max_length: int | None = 512,
    show_progress: bool = False,
) -> str:
    """Train a WordPiece vocabulary on text files and write a ConvBERT tokenizer directory.

    The text is normalized and pre-tokenized exactly as :class:`~convbert.ConvBertTokenizerFast` does
    (BERT normalizer and pre-tokenizer with the given options). The special tokens ``[PAD]``, ``[UNK]``,
    ``[CLS]``, ``[SEP]``, ``[MASK]`` come first, with ids 0 to 4.

    The result is deterministic: the same files and options give the same ``vocab.txt`` in every process.
    (The ``tokenizers`` trainer alone is not: it numbers continuation pieces such as ``##s`` in hash-map
    order, and merges of equal count are ranked by those numbers. Here a first pass lists the pieces, and
    the real pass gets them with fixed ids, after the special tokens; when the corpus has more than
    ``limit_alphabet`` characters, the kept ones are chosen by count, then by character.) The directory
    is written next to ``output_dir`` and moved into place, so a killed call leaves no partial tokenizer.

    Args:
        files: a text file or a list of text files (UTF-8, any line length).
        vocab_size: size of the vocabulary, special tokens and alphabet included.
        output_dir: directory to write ``vocab.txt``, ``tokenizer.json``, ``tokenizer_config.json`` and
            ``special_tokens_map.json`` into (created if needed). Both ``ConvBertTokenizer.from_pretrained`` and
            ``ConvBertTokenizerFast.from_pretrained`` load it.
        min_frequency: minimum count of a merge to be kept.
        limit_alphabet: maximum number of distinct initial characters kept.
        initial_alphabet: characters always kept in the alphabet.
        do_lower_case, strip_accents, tokenize_chinese_chars, clean_text: normalization options, also stored in
            the tokenizer configuration.
        wordpieces_prefix: prefix of continuation pieces.
        model_max_length: stored in ``tokenizer_config.json`` (``None``: unlimited).
        show_progress: show the trainer's progress bar.

    Returns:
        ``output_dir`` as a string.

    Raises:
        FileNotFoundError: a training file does not exist.
        ValueError: ``vocab_size`` is too small, no file was given, or a file is not UTF-8 text (named).
    """
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    files = [os.fspath(f) for f in files]
    if not files:
        raise ValueError("train_wordpiece_vocab needs at least one training file.")
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"Training file(s) not found: {missing}")
    if int(vocab_size) <= len(BERT_SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} must be larger than the {len(BERT_SPECIAL_TOKENS)} special tokens.")

    def new_tokenizer() -> Tokenizer:
        tok = Tokenizer(WordPiece(unk_token="[UNK]", continuing_subword_prefix=wordpieces_prefix))
        set_bert_pre_processing(tok, clean_text=clean_text, tokenize_chinese_chars=tokenize_chinese_chars,
                                strip_accents=strip_accents, do_lower_case=do_lower_case)
        return tok

    def train(special: Sequence[str], size: int, alphabet: Sequence[str], limit: int | None) -> dict[str, int]:
        tok = new_tokenizer()
        limits = {} if limit is None else {"limit_alphabet": limit}
        trainer = WordPieceTrainer(vocab_size=size, min_frequency=min_frequency, show_progress=show_progress,
                                   special_tokens=list(special), initial_alphabet=list(alphabet),
                                   continuing_subword_prefix=wordpieces_prefix, **limits)
        try:
            tok.train(files, trainer)
        except Exception as exc:  # the tokenizers library raises a bare Exception naming no file
            raise _training_error(files, exc) from exc
        return tok.get_vocab(with_added_tokens=False)

    # Pass 1 (no merges): every character and continuation piece the corpus has.
    seen = train(BERT_SPECIAL_TOKENS, len(BERT_SPECIAL_TOKENS) + 1, initial_alphabet, None)
    chars = sorted(t for t in seen if t not in BERT_SPECIAL_TOKENS and not t.startswith(wordpieces_prefix))
    over = limit_alphabet is not None and len(chars) > limit_alphabet
    alphabet = (_most_frequent_chars(files, new_tokenizer(), list(initial_alphabet), limit_alphabet) if over
                else sorted(set(initial_alphabet)))
    kept = set(alphabet) if over else set(chars)
    pieces = sorted(t for t in seen if t.startswith(wordpieces_prefix) and t[len(wordpieces_prefix):] in kept
                    and t not in BERT_SPECIAL_TOKENS)
    # Pass 2: the continuation pieces get fixed ids up front (listed after the special tokens), so equal
    # counts are broken by ids that do not depend on the trainer's hash-map order.
    vocab = train([*BERT_SPECIAL_TOKENS, *pieces], int(vocab_size), alphabet, limit_alphabet)
    for i, special in enumerate(BERT_SPECIAL_TOKENS):
        if vocab.get(special) != i:  # the trainer puts special tokens first; check rather than assume
            raise RuntimeError(f"Trained vocabulary has {special} at id {vocab.get(special)}, expected {i}.")

    from .tokenization_fast import ConvBertTokenizerFast

    # Written into a temporary directory (inside an existing output_dir, else beside it), then moved into
    # place: a killed call leaves no half tokenizer (vocab.txt, which marks a trained vocabulary, moves last).
    given = os.fspath(output_dir)
    output_dir = os.path.abspath(given)
    parent, name = os.path.split(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = (os.path.join(output_dir, f".tmp-tokenizer-{os.getpid()}") if os.path.isdir(output_dir)
           else os.path.join(parent, f".tmp-{name}-{os.getpid()}"))
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        vocab_path = write_vocab_file(vocab_lines_from_dict(vocab), os.path.join(tmp, VOCAB_FILE))
        fast = ConvBertTokenizerFast(
            vocab_file=vocab_path,
            do_lower_case=do_lower_case,
            strip_accents=strip_accents,
            tokenize_chinese_chars=tokenize_chinese_chars,
            clean_text=clean_text,
            wordpieces_prefix=wordpieces_prefix,
            model_max_length=model_max_length,
        )
        fast.save_pretrained(tmp)
        if not os.path.exists(output_dir):
            os.replace(tmp, output_dir)
        else:
            for entry in sorted(os.listdir(tmp), key=lambda n: n == VOCAB_FILE):
                os.replace(os.path.join(tmp, entry), os.path.join(output_dir, entry))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return given


def _most_frequent_chars(files: list[str], tok: Tokenizer, keep: list[str], limit: int) -> list[str]:
    """``keep`` plus the most frequent other characters of the words in ``files`` (as the trainer splits
    them), ``limit`` in all; equal counts are broken by the character, so the choice is deterministic."""
    counts: Counter[str] = Counter()
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(line)):
                    counts.update(word)
    keep = sorted(set(keep))[:limit]
    rest = sorted((c for c in counts if c not in set(keep)), key=lambda c: (-counts[c], c))
    return sorted(keep + rest[:limit - len(keep)])


def _training_error(files: list[str], exc: Exception) -> ValueError:
    """The trainer's error as a ValueError naming the file at fault (the first that is not UTF-8 text)."""
    import codecs

    for path in files:
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as bad:
            return ValueError(f"Training file {path!r} is not UTF-8 text ({bad.reason}); is it a binary file?")
    return ValueError(f"Training a WordPiece vocabulary on {files} failed: {exc}")
