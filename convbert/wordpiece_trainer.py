"""Train a WordPiece vocabulary for ConvBERT with the ``tokenizers`` trainer."""

from __future__ import annotations

import os
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
        ValueError: ``vocab_size`` is too small or no file was given.
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

    tok = Tokenizer(WordPiece(unk_token="[UNK]", continuing_subword_prefix=wordpieces_prefix))
    set_bert_pre_processing(tok, clean_text=clean_text, tokenize_chinese_chars=tokenize_chinese_chars,
                            strip_accents=strip_accents, do_lower_case=do_lower_case)
    trainer = WordPieceTrainer(
        vocab_size=int(vocab_size),
        min_frequency=min_frequency,
        show_progress=show_progress,
        special_tokens=list(BERT_SPECIAL_TOKENS),
        limit_alphabet=limit_alphabet,
        initial_alphabet=list(initial_alphabet),
        continuing_subword_prefix=wordpieces_prefix,
    )
    tok.train(files, trainer)
    vocab = tok.get_vocab(with_added_tokens=False)
    for i, special in enumerate(BERT_SPECIAL_TOKENS):
        if vocab.get(special) != i:  # the trainer puts special tokens first; check rather than assume
            raise RuntimeError(f"Trained vocabulary has {special} at id {vocab.get(special)}, expected {i}.")

    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    vocab_path = write_vocab_file(vocab_lines_from_dict(vocab), os.path.join(output_dir, VOCAB_FILE))

    from .tokenization_fast import ConvBertTokenizerFast

    fast = ConvBertTokenizerFast(
        vocab_file=vocab_path,
        do_lower_case=do_lower_case,
        strip_accents=strip_accents,
        tokenize_chinese_chars=tokenize_chinese_chars,
        clean_text=clean_text,
        wordpieces_prefix=wordpieces_prefix,
        model_max_length=model_max_length,
    )
    fast.save_pretrained(output_dir)
    return output_dir
