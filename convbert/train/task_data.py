"""Fine-tuning data for token classification, extractive question answering and multiple choice.

Each reader takes one file and returns a dataclass holding its examples, read whole into memory, with
the conventions of :func:`convbert.train.data.read_labelled`:

* ``data_format="auto"`` tells the format from the file's extension (and, for a ``.json`` question
  answering file, from its content); anything else names the format (``--data-format``; ``json``
  is read as ``jsonl``, which also takes a file holding one JSON array).
* A malformed row (a sentence of a CoNLL file, a question of a SQuAD file) is skipped and counted in
  ``skipped``, the first five reasons kept in ``skip_reasons``, when ``bad_rows == "skip"``; with
  ``bad_rows == "error"`` it raises :class:`~convbert.train.data.DataError`. Reasons and messages
  name the file and the line (``train.jsonl:12: ...``), or the question id in a SQuAD JSON file.
* A missing or empty file, a file with no example, or one whose examples were all malformed, is
  always a :class:`~convbert.train.data.DataError` naming the file; so is a file whose structure
  (a CSV header, a SQuAD file's articles and paragraphs) is not what the format needs.

Files are UTF-8 (a byte-order mark is ignored); line endings may be ``\\n``, ``\\r\\n`` or ``\\r``.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import DataError, check_files, read_csv_rows

__all__ = [
    "MultipleChoiceData", "QAExample", "QuestionAnsweringData", "TokenClassificationData",
    "read_multiple_choice", "read_question_answering", "read_token_classification",
]

_BAD_ROWS = ("skip", "error")


# --------------------------------------------------------------------------- shared helpers


class _BadRow(Exception):
    """Raised by a row check with the reason the row is unusable."""


class _Problems:
    """Skip and count, or raise for, the malformed rows of one file (``--bad-rows skip|error``).

    ``unit`` names a row in the error ("row", "sentence", "question").
    """

    def __init__(self, data: Any, bad_rows: str, unit: str = "row"):
        if bad_rows not in _BAD_ROWS:
            raise ValueError(f"bad_rows must be 'skip' or 'error', got {bad_rows!r}")
        self.data, self.bad_rows, self.unit = data, bad_rows, unit

    def __call__(self, where: str, why: str) -> None:
        message = f"{where}: {why}"
        if self.bad_rows == "error":
            raise DataError(f"malformed {self.unit} {message} (pass --bad-rows skip to skip such {self.unit}s)")
        self.data.skipped += 1
        if len(self.data.skip_reasons) < 5:
            self.data.skip_reasons.append(message)


def _read_text(path: Path) -> str:
    """The file's text, line endings made ``\\n`` (universal newlines), a byte-order mark dropped."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}") from exc


def _choose_format(path: Path, data_format: str, by_suffix: dict[str, str], known: tuple[str, ...]) -> str:
    """The format ``data_format`` names (``json`` reads as ``jsonl`` where ``known`` has no ``json``),
    or for ``auto`` the one ``by_suffix`` gives the file's extension."""
    if data_format == "json" and "json" not in known:
        data_format = "jsonl"  # the JSON-lines reader takes a JSON array too
    if data_format == "auto":
        fmt = by_suffix.get(path.suffix.lower())
        if fmt is None:
            raise DataError(f"cannot tell the format of {str(path)!r} from its extension; "
                            f"pass --data-format {'|'.join(known)}")
        return fmt
    if data_format not in known:
        raise DataError(f"{path}: data format {data_format!r} is not one of {', '.join(known)} for this task")
    return data_format


def _json_rows(path: Path, text: str, bad: _Problems) -> list[tuple[str, Any]]:
    """``(where, value)`` for each row of a JSON-lines file (``where`` is ``file:line``; blank lines are
    skipped, a line that is not JSON is a bad row) or of a file holding one JSON array
    (``file: item N``; such a file must be valid JSON as a whole)."""
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON: {exc}") from exc
        return [(f"{path}: item {n}", row) for n, row in enumerate(rows, start=1)]
    items = []
    # Split on "\n" only: str.splitlines would also split at U+2028 and the like inside JSON strings.
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            items.append((f"{path}:{line}", json.loads(raw)))
        except json.JSONDecodeError as exc:
            bad(f"{path}:{line}", f"invalid JSON ({exc.msg})")
    return items


def _csv_rows(path: Path, delimiter: str, required: list[str], bad: _Problems,
              hint: str = "") -> tuple[list[str], list[tuple[str, dict[str, str]]]]:
    """The header and ``(file:line, row)`` of a CSV / TSV file with a header, read as
    :func:`~convbert.train.data.read_labelled` reads one (:func:`~convbert.train.data.read_csv_rows`)."""
    try:
        header, rows = read_csv_rows(path, delimiter, required, lambda line, why: bad(f"{path}:{line}", why), hint)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: unreadable CSV: {exc}") from exc
    return header, [(f"{path}:{line}", row) for line, row in rows]


def _nothing_usable(path: Path, data: Any, what: str) -> DataError:
    if data.skipped:
        return DataError(f"{path} has no usable {what} ({data.skipped} malformed {what} skipped, "
                         f"e.g. {data.skip_reasons[0]})")
    return DataError(f"{path} holds no {what}")


def _text(value: Any, name: str) -> str:
    """``value`` if it is a string with some non-space character, else a bad row."""
    if not isinstance(value, str) or not value.strip():
        raise _BadRow(f"missing or empty {name}")
    return value


def _check_strings(items: list, what: str) -> None:
    """Every item a non-empty string, else a bad row naming the first that is not."""
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise _BadRow(f"{what} {i} is not a string: {item!r}")
        if not item.strip():
            raise _BadRow(f"{what} {i} is empty")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------- token classification


@dataclass
class TokenClassificationData:
    """Sentences as words and one tag per word (``tags[k][i]`` is the tag of ``tokens[k][i]``)."""
    tokens: list[list[str]]
    tags: list[list[str]]
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    path: str = ""


_TOKEN_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
                  ".conll": "conll", ".txt": "conll", ".iob": "conll", ".bio": "conll", ".tsv": "conll"}


def _check_sentence(tokens: Any, tags: Any, tokens_column: str, tags_column: str) -> tuple[list[str], list[str]]:
    if not isinstance(tokens, list):
        raise _BadRow(f"{tokens_column!r} is not a list" if tokens is not None else f"no {tokens_column!r}")
    if not isinstance(tags, list):
        raise _BadRow(f"{tags_column!r} is not a list" if tags is not None else f"no {tags_column!r}")
    if not tokens:
        raise _BadRow(f"empty {tokens_column!r} list")
    if len(tokens) != len(tags):
        raise _BadRow(f"{len(tokens)} tokens but {len(tags)} tags")
    _check_strings(tokens, "token")
    out_tags = []
    for i, tag in enumerate(tags):
        if _is_int(tag):
            tag = str(tag)
        if not isinstance(tag, str) or not tag.strip():
            raise _BadRow(f"tag {i} is not a tag (a non-empty string or an integer): {tag!r}")
        out_tags.append(tag.strip())
    return tokens, out_tags


def _read_conll(path: Path, text: str, data: TokenClassificationData, bad: _Problems) -> None:
    sentence: list[tuple[str, str]] = []
    problem: tuple[int, str] | None = None  # the first bad line of the current sentence

    def finish() -> None:
        nonlocal sentence, problem
        if problem is not None:
            bad(f"{path}:{problem[0]}", problem[1])
        elif sentence:
            data.tokens.append([token for token, _ in sentence])
            data.tags.append([tag for _, tag in sentence])
        sentence, problem = [], None

    for line, raw in enumerate(text.split("\n"), start=1):
        columns = raw.split()
        if not columns or columns[0] == "-DOCSTART-":
            finish()
        elif problem is not None:
            continue  # the rest of a bad sentence goes with it
        elif len(columns) < 2:
            problem = (line, f"one column only ({columns[0]!r}); a token line needs the token first and "
                             f"its tag in the last column")
        else:
            sentence.append((columns[0], columns[-1]))
    finish()


def read_token_classification(path: str | os.PathLike, tokens_column: str = "tokens", tags_column: str = "tags", *,
                              bad_rows: str = "skip", data_format: str = "auto") -> TokenClassificationData:
    """Read sentences with one tag per word (named entities, parts of speech, ...).

    Formats (``data_format``; ``auto`` goes by the extension):

    * ``jsonl`` (or ``json``; ``.jsonl``, ``.json``, ``.ndjson``): one JSON object per line,
      ``{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}``, under the keys ``tokens_column`` and
      ``tags_column``; a file holding one JSON array of such objects reads too. Integer tags are
      turned into strings with :func:`str` (``3`` -> ``"3"``): class ids, not tag names, so the
      entity metrics cannot read them as BIO tags.
    * ``conll`` (``.conll``, ``.txt``, ``.iob``, ``.bio``, ``.tsv``): one word per line, columns
      separated by spaces or tabs, the word in the first column and its tag in the last (CoNLL-2003's
      ``EU NNP B-NP B-ORG``); blank lines end a sentence, ``-DOCSTART-`` lines are dropped. A
      sentence is only ever ended by a blank line (or ``-DOCSTART-``, or the end of the file): a bad
      line skips the whole sentence it is in, which is what ``skipped`` then counts.

    Bad rows: tokens or tags that are no list, an empty list, different numbers of tokens and tags
    (``"5 tokens but 4 tags"``), a token that is not a string or is empty, a tag that is neither a
    non-empty string nor an integer, invalid JSON, a CoNLL line with a single column. Surrounding
    whitespace is stripped from tags.
    """
    (path,) = check_files([path])
    fmt = _choose_format(path, data_format, _TOKEN_FORMATS, ("jsonl", "conll"))
    data = TokenClassificationData([], [], path=str(path))
    text = _read_text(path)
    if fmt == "conll":
        _read_conll(path, text, data, _Problems(data, bad_rows, "sentence"))
    else:
        bad = _Problems(data, bad_rows)
        rows = _json_rows(path, text, bad)
        seen: set[str] = set()
        for where, row in rows:
            try:
                if not isinstance(row, dict):
                    raise _BadRow(f"expected a JSON object, got {type(row).__name__}")
                seen.update(row)
                tokens, tags = _check_sentence(row.get(tokens_column), row.get(tags_column), tokens_column,
                                               tags_column)
            except _BadRow as exc:
                bad(where, str(exc))
                continue
            data.tokens.append(tokens)
            data.tags.append(tags)
        missing = [c for c in (tokens_column, tags_column) if c not in seen]
        if rows and not data.tokens and missing:
            raise DataError(f"{path}: no row has the key(s) {missing}; keys seen: {sorted(seen)}")
    if not data.tokens:
        raise _nothing_usable(path, data, "sentences")
    return data


# --------------------------------------------------------------------------- question answering


@dataclass
class QAExample:
    """One question about a context; ``context[answer_starts[k]:][:len(answer_texts[k])] == answer_texts[k]``.

    No answers: the question cannot be answered from the context (SQuAD v2.0)."""
    id: str
    question: str
    context: str
    answer_texts: list[str]
    answer_starts: list[int]


@dataclass
class QuestionAnsweringData:
    examples: list[QAExample]
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    path: str = ""

    @property
    def version_2(self) -> bool:
        """Whether some question has no answer (SQuAD v2.0 data)."""
        return any(not example.answer_texts for example in self.examples)


def _question_id(value: Any) -> str:
    if _is_int(value):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise _BadRow("missing or empty id")
    return value


def _qa_example(qid: str, question: Any, context: Any, texts: Any, starts: Any) -> QAExample:
    """Check one question and its answers; raise _BadRow with the reason when unusable."""
    question, context = _text(question, "question"), _text(context, "context")
    if not isinstance(texts, list) or not isinstance(starts, list):
        raise _BadRow("the answers' text and answer_start are not lists")
    if len(texts) != len(starts):
        raise _BadRow(f"{len(texts)} answer texts but {len(starts)} answer_start values")
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or not text:
            raise _BadRow(f"an answer has no text: {text!r}")
        if not _is_int(start):
            raise _BadRow(f"answer_start {start!r} of answer {text!r} is not an integer")
        if start < 0 or start + len(text) > len(context):
            raise _BadRow(f"answer_start {start} of answer {text!r} is outside the context "
                          f"({len(context)} characters)")
        found = context[start:start + len(text)]
        if found != text:
            raise _BadRow(f"answer {text!r} does not match the context at answer_start {start}: "
                          f"the context there reads {found!r}")
    return QAExample(qid, question, context, list(texts), list(starts))


def _squad_questions(path: Path, doc: Any, bad: _Problems):
    """``(where, position, example)`` for each usable question of a SQuAD JSON document (``where``
    names the file and the question id, ``position`` where the question is in the document); bad
    questions go to ``bad``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path} is not SQuAD JSON: expected an object with a 'data' list of articles")
    for a, article in enumerate(doc["data"]):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise DataError(f"{path}: data[{a}] is not an article with a 'paragraphs' list")
        for p, paragraph in enumerate(article["paragraphs"]):
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise DataError(f"{path}: data[{a}].paragraphs[{p}] is not a paragraph with a 'qas' list")
            for q, qa in enumerate(paragraph["qas"]):
                where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}]"
                try:
                    if not isinstance(qa, dict):
                        raise _BadRow(f"expected a JSON object, got {type(qa).__name__}")
                    qid = _question_id(qa.get("id"))
                    where = f"{path}: question {qid!r}"
                    if qa.get("is_impossible"):
                        answers = []  # v2.0: "plausible_answers" are not answers
                    else:
                        answers = qa.get("answers")
                        if not isinstance(answers, list) or not all(isinstance(x, dict) for x in answers):
                            raise _BadRow("'answers' is not a list of objects")
                    texts = [answer.get("text") for answer in answers]
                    starts = [answer.get("answer_start") for answer in answers]
                    yield where, f"data[{a}].paragraphs[{p}].qas[{q}]", _qa_example(
                        qid, qa.get("question"), paragraph.get("context"), texts, starts)
                except _BadRow as exc:
                    bad(where, str(exc))


def _jsonl_questions(path: Path, text: str, bad: _Problems):
    """``(where, where, example)`` for each usable question of a JSON-lines file; bad ones go to ``bad``."""
    for where, row in _json_rows(path, text, bad):
        try:
            if not isinstance(row, dict):
                raise _BadRow(f"expected a JSON object, got {type(row).__name__}")
            qid = _question_id(row.get("id"))
            answers = row.get("answers")
            if not isinstance(answers, dict):
                raise _BadRow("'answers' is not an object {\"text\": [...], \"answer_start\": [...]}")
            yield where, where, _qa_example(qid, row.get("question"), row.get("context"), answers.get("text"),
                                            answers.get("answer_start"))
        except _BadRow as exc:
            bad(where, str(exc))


def read_question_answering(path: str | os.PathLike, *, bad_rows: str = "skip",
                            data_format: str = "auto") -> QuestionAnsweringData:
    """Read extractive question answering data (SQuAD v1.1 / v2.0).

    Formats (``data_format``):

    * ``squad``: SQuAD's own JSON, ``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id",
      "question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}``. A question with
      ``"is_impossible": true`` has no answers (its ``plausible_answers`` are ignored), as has one
      with an empty ``answers`` list. Training files give one answer a question, evaluation files
      several: all are kept.
    * ``jsonl``: one JSON object per line in the Hugging Face ``datasets`` layout, ``{"id",
      "question", "context", "answers": {"text": [...], "answer_start": [...]}}``; empty lists: no
      answer. A file holding one JSON array of such objects reads too.

    ``auto`` and ``json``: a file whose top level is an object with ``"data"`` is SQuAD JSON, any
    other JSON lines (``auto`` takes ``.json`` files so, ``.jsonl`` and ``.ndjson`` files as JSON
    lines). Ids may be strings or integers (kept as
    strings).

    Bad rows (questions), named by ``file:line`` or, in SQuAD JSON, by their id: a missing id or a
    duplicate one (the first is kept), a missing or empty question or context, answer texts and
    answer_start lists of different lengths, an empty answer text, an answer_start that is not an
    integer or puts the answer outside the context, and an answer text that is not what the context
    holds at its answer_start (the message quotes both).
    """
    (path,) = check_files([path])
    fmt = _choose_format(path, data_format, {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"},
                         ("squad", "jsonl", "json"))
    data = QuestionAnsweringData([], path=str(path))
    bad = _Problems(data, bad_rows, "question")
    text = _read_text(path)
    doc = None
    if fmt in ("json", "squad"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            if fmt == "squad":
                raise DataError(f"{path} is not valid JSON: {exc}") from exc
            # not one JSON document: JSON lines in a .json file
        fmt = "squad" if fmt == "squad" or (isinstance(doc, dict) and "data" in doc) else "jsonl"
    questions = _squad_questions(path, doc, bad) if fmt == "squad" else _jsonl_questions(path, text, bad)
    first_seen: dict[str, str] = {}  # id -> position
    for where, position, example in questions:
        if example.id in first_seen:
            bad(where if position == where else f"{where} at {position}",
                f"duplicate id {example.id!r} (first at {first_seen[example.id]})")
            continue
        first_seen[example.id] = position
        data.examples.append(example)
    if not data.examples:
        raise _nothing_usable(path, data, "questions")
    return data


# --------------------------------------------------------------------------- multiple choice


@dataclass
class MultipleChoiceData:
    """Questions (contexts), their candidate answers and the index of the right one (``None``:
    unlabelled). Every example has the same number of choices."""
    contexts: list[str]
    choices: list[list[str]]
    labels: list[int | None]
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    path: str = ""

    @property
    def num_choices(self) -> int:
        return len(self.choices[0]) if self.choices else 0


_INTEGER = re.compile(r"[+-]?\d+")
_SWAG_COLUMNS = ["sent1", "sent2", "ending0", "ending1"]


def _choice_row(row: dict, from_csv: bool) -> tuple[str, list[str], int | None]:
    """(context, choices, label) of a generic or a SWAG row; _BadRow when unusable."""
    if "sent1" in row or "ending0" in row:  # SWAG: sent1, sent2, ending0..ending{N-1}
        context = _text(row.get("sent1"), "'sent1'")
        header = row.get("sent2")
        if not isinstance(header, str):
            raise _BadRow("missing 'sent2'")
        choices = []
        while f"ending{len(choices)}" in row:
            ending = row[f"ending{len(choices)}"]
            if not isinstance(ending, str):
                raise _BadRow(f"choice {len(choices)} ('ending{len(choices)}') is not a string: {ending!r}")
            choices.append(f"{header} {ending}" if header.strip() else ending)
    else:
        context = _text(row.get("question"), "'question'")
        choices = row.get("choices")
        if not isinstance(choices, list):
            raise _BadRow("'choices' is not a list" if "choices" in row else "no 'choices'")
    if len(choices) < 2:
        raise _BadRow(f"{len(choices)} choice(s); a question needs at least two")
    _check_strings(choices, "choice")
    label = row.get("label")
    if label is None or (from_csv and not label.strip()):
        return context, choices, None
    if from_csv and _INTEGER.fullmatch(label.strip()):
        label = int(label)
    if not _is_int(label):
        raise _BadRow(f"label {label!r} is not an integer")
    if not 0 <= label < len(choices):
        raise _BadRow(f"label {label} is outside [0, {len(choices)}) for {len(choices)} choices")
    return context, choices, label


def read_multiple_choice(path: str | os.PathLike, *, bad_rows: str = "skip",
                         data_format: str = "auto") -> MultipleChoiceData:
    """Read multiple-choice questions.

    Formats (``data_format``; ``auto`` goes by the extension):

    * ``jsonl`` (or ``json``; ``.jsonl``, ``.json``, ``.ndjson``): one JSON object per line, either
      ``{"question": ..., "choices": [...], "label": 1}`` or SWAG's layout ``{"sent1", "sent2",
      "ending0", ..., "ending{N-1}", "label"}``; a file holding one JSON array reads too.
    * ``csv`` / ``tsv`` (``.csv``, ``.tsv``): SWAG's own files, with a header (``video-id, fold-ind,
      startphrase, sent1, sent2, gold-source, ending0, ..., ending3, label``); only ``sent1``,
      ``sent2`` and ``ending0``, ``ending1``, ... (as many as the header has, in a row) are read.

    SWAG rows become context ``sent1`` and choices ``sent2 + " " + ending_i`` (as Hugging Face's
    ``run_swag`` example pairs them; just ``ending_i`` when ``sent2`` is empty). The label is the
    index of the right choice; a missing one (absent, ``null``, an empty CSV field) reads as
    ``None``, unlabelled.

    Bad rows: a missing or empty question (``sent1``), no ``sent2`` in a SWAG row, fewer than two
    choices, a choice that is not a string or is empty, a label that is not an integer in
    ``[0, number of choices)``, and a row whose number of choices differs from the first usable
    row's: all rows of a file must have the same number of choices.
    """
    (path,) = check_files([path])
    fmt = _choose_format(path, data_format, {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
                                             ".csv": "csv", ".tsv": "tsv"}, ("jsonl", "csv", "tsv"))
    data = MultipleChoiceData([], [], [], path=str(path))
    bad = _Problems(data, bad_rows)
    if fmt == "jsonl":
        rows = _json_rows(path, _read_text(path), bad)
    else:
        _, rows = _csv_rows(path, "," if fmt == "csv" else "\t", _SWAG_COLUMNS, bad,
                            " (a multiple-choice CSV file has SWAG's columns sent1, sent2, ending0, ending1, ...)")
    first: tuple[int, str] | None = None  # number of choices of the first usable row, and where it is
    for where, row in rows:
        try:
            if not isinstance(row, dict):
                raise _BadRow(f"expected a JSON object, got {type(row).__name__}")
            context, choices, label = _choice_row(row, from_csv=fmt != "jsonl")
            if first is not None and len(choices) != first[0]:
                raise _BadRow(f"{len(choices)} choices, but the first row ({first[1]}) has {first[0]}: "
                              f"all rows of a file must have the same number of choices")
        except _BadRow as exc:
            bad(where, str(exc))
            continue
        first = first or (len(choices), where)
        data.contexts.append(context)
        data.choices.append(choices)
        data.labels.append(label)
    if not data.contexts:
        raise _nothing_usable(path, data, "rows")
    return data
