"""Training data: plain-text documents for pre-training, labelled CSV / JSON lines for fine-tuning.

Everything is read and tokenized up front into memory (tensors or lists of ids), so a batch is a
cheap gather and a *data position* is a single integer: the number of micro-batches consumed so
far. :class:`BatchPlan` turns that integer back into (epoch, batch of the epoch), which is what
makes a resumed run see exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


class DataError(ValueError):
    """Unusable training data (missing, empty or malformed file); the message says which and why."""


# --------------------------------------------------------------------------- plain text


def check_files(paths: Sequence[str | os.PathLike], what: str = "data file") -> list[Path]:
    """Every path must be an existing, non-empty file; return them as Paths."""
    out = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise DataError(f"{what} {str(p)!r} does not exist")
        if not path.is_file():
            raise DataError(f"{what} {str(p)!r} is not a file")
        if path.stat().st_size == 0:
            raise DataError(f"{what} {str(p)!r} is empty")
        out.append(path)
    return out


def read_documents(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Read plain-text files into documents.

    A file with blank lines is split into blank-line-separated documents (line breaks inside a
    document become spaces); a file without blank lines holds one document per line.

    Raises:
        DataError: a file is missing, empty, not UTF-8, or holds only whitespace.
    """
    docs: list[str] = []
    for path in check_files(paths, "training file"):
        try:
            text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Notepad, Excel) is not text
        except UnicodeDecodeError as exc:
            raise DataError(f"training file {str(path)!r} is not UTF-8 text: {exc}") from exc
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if _BLANK_LINE.search(text.strip()):
            parts = [" ".join(p.split()) for p in _BLANK_LINE.split(text)]
        else:
            parts = [line.strip() for line in text.split("\n")]
        parts = [p for p in parts if p]
        if not parts:
            raise DataError(f"training file {str(path)!r} holds no text (only whitespace)")
        docs.extend(parts)
    return docs


def pack_documents(tokenizer, documents: Sequence[str], seq_len: int, batch: int = 1000, *,
                   source: str = "the training text") -> dict[str, torch.Tensor]:
    """Tokenize documents and pack them into ``[CLS] tokens... [SEP]`` blocks of exactly ``seq_len``.

    Documents are concatenated with ``[SEP]`` between them (as ELECTRA and run_mlm do) and cut into
    blocks; the remainder shorter than a block is dropped, unless there is no full block at all, in
    which case the single padded block is kept.

    Returns ``{"input_ids": [N, seq_len], "attention_mask": [N, seq_len]}`` (int64). ``source`` names
    the text (e.g. its files) in errors.
    """
    if seq_len < 8:
        raise ValueError(f"--seq-len must be at least 8, got {seq_len}")
    sep, cls, pad = tokenizer.sep_token_id, tokenizer.cls_token_id, tokenizer.pad_token_id
    stream: list[int] = []
    for start in range(0, len(documents), batch):
        chunk = list(documents[start:start + batch])
        enc = tokenizer(chunk, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
        for ids in enc["input_ids"]:
            if ids:
                stream.extend(ids)
                stream.append(sep)
    if not stream:
        raise DataError(f"{source} produced no tokens")
    body = seq_len - 2
    n_full = len(stream) // body
    blocks = [stream[i * body:(i + 1) * body] for i in range(n_full)] or [stream[:body]]
    ids = torch.full((len(blocks), seq_len), pad, dtype=torch.long)
    mask = torch.zeros((len(blocks), seq_len), dtype=torch.long)
    for row, block in enumerate(blocks):
        seq = [cls] + block + [sep]
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def pack_whole_documents(tokenizer, documents: Sequence[str], seq_len: int, batch: int = 1000, *,
                         source: str = "the training text") -> dict[str, torch.Tensor]:
    """Tokenize documents and pack several whole documents into each block of ``seq_len`` tokens,
    each as ``[CLS] tokens... [SEP]`` with positions from 0 (``convbert-train pretrain --pack-documents``).

    A document longer than a block is cut into pieces of ``seq_len - 2`` tokens (the last one
    shorter), each with its own ``[CLS]`` and ``[SEP]``: a piece is a document of its own. The
    pieces go into blocks by best fit decreasing (longest first, each into the fullest block it
    fits in), which leaves little of a block unfilled; the blocks are then ordered by their first
    document, and the documents within a block keep the corpus order.

    Returns int64 ``[N, seq_len]`` tensors: ``input_ids`` (padding after the last document),
    ``attention_mask`` numbering the documents of a block 1, 2, ... (0 on the unfilled tail; the
    unpadded model, ``ConvBertConfig(unpad_inputs=True)``, keeps every attention and convolution
    window inside its document) and ``position_ids`` restarting at 0 with each document (0 on the
    tail). ``source`` names the text (e.g. its files) in errors.
    """
    import bisect

    if seq_len < 8:
        raise ValueError(f"--seq-len must be at least 8, got {seq_len}")
    sep, cls, pad = tokenizer.sep_token_id, tokenizer.cls_token_id, tokenizer.pad_token_id
    body = seq_len - 2
    pieces: list[list[int]] = []  # [CLS] ... [SEP], in corpus order
    for start in range(0, len(documents), batch):
        chunk = list(documents[start:start + batch])
        enc = tokenizer(chunk, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
        for ids in enc["input_ids"]:
            pieces.extend([cls, *ids[i:i + body], sep] for i in range(0, len(ids), body))
    if not pieces:
        raise DataError(f"{source} produced no tokens")
    # Best fit decreasing: free[r] holds the blocks with r free positions; caps, the sorted r with any.
    blocks: list[list[int]] = []
    free: dict[int, list[int]] = {}
    caps: list[int] = []
    for index in sorted(range(len(pieces)), key=lambda i: (-len(pieces[i]), i)):
        n = len(pieces[index])
        at = bisect.bisect_left(caps, n)
        if at == len(caps):
            block, room = len(blocks), seq_len
            blocks.append([])
        else:
            room = caps[at]
            block = free[room].pop()
            if not free[room]:
                del free[room], caps[at]
        blocks[block].append(index)
        room -= n
        if room not in free:
            free[room] = []
            bisect.insort(caps, room)
        free[room].append(block)
    blocks = sorted((sorted(b) for b in blocks), key=lambda b: b[0])
    ids = torch.full((len(blocks), seq_len), pad, dtype=torch.long)
    mask = torch.zeros((len(blocks), seq_len), dtype=torch.long)
    positions = torch.zeros((len(blocks), seq_len), dtype=torch.long)
    for row, block in enumerate(blocks):
        at = 0
        for number, index in enumerate(block, start=1):
            piece = pieces[index]
            ids[row, at:at + len(piece)] = torch.tensor(piece, dtype=torch.long)
            mask[row, at:at + len(piece)] = number
            positions[row, at:at + len(piece)] = torch.arange(len(piece))
            at += len(piece)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}


# --------------------------------------------------------------------------- labelled data


@dataclass
class LabelledData:
    texts: list[str]
    pairs: list[str] | None
    labels: list[Any]          # raw labels as read (str, int or float)
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    path: str = ""


def _data_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".csv",):
        return "csv"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise DataError(f"cannot tell the format of {str(path)!r} from its extension; pass --data-format csv|tsv|jsonl")


def read_labelled(path: str | os.PathLike, text_column: str, label_column: str | None,
                  text_pair_column: str | None = None, *, bad_rows: str = "skip",
                  data_format: str = "auto") -> LabelledData:
    """Read a labelled CSV / TSV / JSON-lines file.

    A malformed row (wrong number of fields, invalid JSON, missing or empty text, missing label) is
    skipped and counted when ``bad_rows == "skip"``, or raises :class:`DataError` naming its line
    when ``bad_rows == "error"``. A missing column in the header is always an error.
    ``label_column=None`` reads unlabelled text (labels are ``None``).
    """
    (path,) = check_files([path])
    fmt = _data_format(path, data_format)
    data = LabelledData([], [] if text_pair_column else None, [], path=str(path))
    columns = [c for c in (text_column, text_pair_column, label_column) if c]

    def bad(line: int, why: str) -> None:
        message = f"{path}:{line}: {why}"
        if bad_rows == "error":
            raise DataError(f"malformed row {message} (pass --bad-rows skip to skip such rows)")
        data.skipped += 1
        if len(data.skip_reasons) < 5:
            data.skip_reasons.append(message)

    def add(line: int, row: dict) -> None:
        text = row.get(text_column)
        if not isinstance(text, str) or not text.strip():
            return bad(line, f"missing or empty text in column {text_column!r}")
        pair = None
        if text_pair_column:
            pair = row.get(text_pair_column)
            if not isinstance(pair, str) or not pair.strip():
                return bad(line, f"missing or empty text in column {text_pair_column!r}")
        label = None
        if label_column:
            label = row.get(label_column)
            if label is None or (isinstance(label, str) and not label.strip()) or isinstance(label, (list, dict)):
                return bad(line, f"missing label in column {label_column!r}")
            if isinstance(label, str):
                label = label.strip()
        data.texts.append(text)
        if data.pairs is not None:
            data.pairs.append(pair)
        data.labels.append(label)

    try:
        if fmt in ("csv", "tsv"):
            for line, row in read_csv_rows(path, "," if fmt == "csv" else "\t", columns, bad)[1]:
                add(line, row)
        elif fmt == "jsonl":
            text = path.read_text(encoding="utf-8-sig")
            if text.lstrip().startswith("["):  # a JSON array of objects is accepted too
                try:
                    rows = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path} is not valid JSON: {exc}") from exc
                items = list(enumerate(rows, start=1))
            else:
                items = []
                for line, raw in enumerate(text.splitlines(), start=1):
                    if not raw.strip():
                        continue
                    try:
                        items.append((line, json.loads(raw)))
                    except json.JSONDecodeError as exc:
                        bad(line, f"invalid JSON ({exc.msg})")
            seen_columns: set[str] = set()
            for line, row in items:
                if not isinstance(row, dict):
                    bad(line, f"expected a JSON object, got {type(row).__name__}")
                    continue
                seen_columns.update(row)
                add(line, row)
            if items and not data.texts:
                missing = [c for c in columns if c not in seen_columns]
                if missing:
                    raise DataError(f"{path}: no row has the key(s) {missing}; keys seen: {sorted(seen_columns)}")
        else:
            raise DataError(f"{path}: unknown data format {fmt!r}")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: unreadable CSV: {exc}") from exc
    if not data.texts:
        raise DataError(f"{path} has no usable rows ({data.skipped} malformed rows skipped"
                        + (f", e.g. {data.skip_reasons[0]}" if data.skip_reasons else "") + ")")
    return data


def read_csv_rows(path: Path, delimiter: str, required: Sequence[str], bad: Callable[[int, str], None],
                  hint: str = "") -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and ``(line, row)`` of each well-formed row of a CSV / TSV file with a header.

    A row with too many or too few fields goes to ``bad(line, why)``; an unbalanced quote, or a
    column of ``required`` missing from the header (``hint`` appended to the message), raises
    :class:`DataError`. ``line`` is the row's first line in the file (rows may span lines).
    utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which is not part of the header.
    """
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        tap = _LineTap(f)
        reader = csv.DictReader(tap, delimiter=delimiter)
        header = reader.fieldnames or []
        _check_quotes(path, tap.take(), 1, delimiter)
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}: no column(s) {missing}; the header has {header}{hint}")
        end = reader.line_num
        for row in reader:
            raw = tap.take()  # the row's text, after any blank lines csv skipped
            first, end = end + 1, reader.line_num
            _check_quotes(path, raw, first, delimiter)
            line = first + raw[:len(raw) - len(raw.lstrip("\r\n"))].count("\n")
            if None in row:
                bad(line, f"{len(header) + len(row[None])} fields, the header has {len(header)}")
            elif any(v is None for v in row.values()):
                bad(line, f"fewer fields than the {len(header)} of the header")
            else:
                rows.append((line, row))
    return header, rows


class _LineTap:
    """Iterates over a file's lines for :mod:`csv` and keeps those read since the last :meth:`take`."""

    def __init__(self, lines):
        self.lines, self.seen = iter(lines), []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.seen.append(line)
        return line

    def take(self) -> str:
        text, self.seen = "".join(self.seen), []
        return text


def _check_quotes(path: Path, record: str, first_line: int, delimiter: str) -> None:
    """Raise DataError when the raw text of one CSV record shows a quote that was never closed.

    :mod:`csv` (like Excel) reads a quoted field across line breaks until its closing quote, so a
    missing quote silently swallows the rows after it: to the end of the file, or up to the next
    quote (a later row's opening one), which then closes the field with text after it. Both are
    errors naming the line of the opening quote. A quote inside an unquoted field (``5" screen``),
    text after a quote on one line (``"a"b``) and quoted fields that hold line breaks read as
    :mod:`csv` reads them.
    """
    if '"' not in record:
        return
    state, opened, line, spans = "start", 0, 0, False
    for ch in record:
        if state == "quoted":
            if ch == '"':
                state = "closing"
            elif ch == "\n":
                spans = True
        elif state == "closing" and ch == '"':  # a doubled quote inside the quoted field
            state = "quoted"
        elif ch in (delimiter, "\r", "\n"):
            state = "start"
        elif state == "closing" and spans:
            raise DataError(f"{path}:{first_line + opened}: unbalanced quote: the quoted field opened on line "
                            f"{first_line + opened} ends on line {first_line + line} with text after its closing "
                            f"quote, swallowing the rows between; close the quote (or double it: \"\")")
        elif state == "start" and ch == '"':
            state, opened, spans = "quoted", line, False
        else:
            state = "field"
        line += ch == "\n"
    if state == "quoted":
        raise DataError(f"{path}:{first_line + opened}: unterminated quote: the quoted field opened on line "
                        f"{first_line + opened} never closes and swallows the rest of the file; close the quote "
                        f"(or double it: \"\")")


@dataclass
class LabelScheme:
    """How raw labels map to model targets."""
    task: str                  # "classification" or "regression"
    num_labels: int
    names: list[str] | None    # label names for string labels (id -> name), else None

    def id2label(self) -> dict[int, str]:
        if self.task == "regression":
            return {0: "LABEL_0"}
        if self.names:
            return dict(enumerate(self.names))
        return {i: f"LABEL_{i}" for i in range(self.num_labels)}


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def infer_label_scheme(labels: Sequence[Any], task: str = "auto", num_labels: int | None = None,
                       label_names: Sequence[str] | None = None, *, source: str = "the labels") -> LabelScheme:
    """Decide classification vs regression and the number of classes.

    ``auto``: labels that are all integers -> classification with ``max + 1`` classes (or
    ``num_labels``); numbers that are not all integers -> regression; anything else -> class
    names, sorted (or in the order of ``label_names``). ``source`` (the file) starts error messages.
    """
    numbers = [_as_number(v) for v in labels]
    all_numeric = all(n is not None for n in numbers)
    all_int = all_numeric and all(float(n).is_integer() for n in numbers)
    if task == "auto":
        task = "regression" if (all_numeric and not all_int) else "classification"
    if task == "regression":
        if not all_numeric:
            bad = next(v for v, n in zip(labels, numbers) if n is None)
            raise DataError(f"{source}: regression needs numeric labels, got {bad!r}")
        return LabelScheme("regression", 1, None)
    if task != "classification":
        raise ValueError(f"unknown task {task!r}")
    if label_names:
        return LabelScheme("classification", len(label_names), list(label_names))
    if all_int:
        top = int(max(numbers))
        n = num_labels if num_labels is not None else max(top + 1, 2)
        return LabelScheme("classification", n, None)
    names = sorted({str(v) for v in labels})
    if num_labels is not None and num_labels != len(names):
        raise DataError(f"{source}: --num-labels {num_labels} but the labels have {len(names)} distinct values: "
                        f"{names[:20]}")
    return LabelScheme("classification", len(names), names)


def encode_labels(data: LabelledData, scheme: LabelScheme) -> list:
    """Map raw labels to class ids (or floats); raise DataError for a label outside the scheme."""
    out = []
    lookup = {name: i for i, name in enumerate(scheme.names)} if scheme.names else None
    for index, raw in enumerate(data.labels):
        where = f"{data.path}, row {index + 1} of the usable rows"
        if scheme.task == "regression":
            value = _as_number(raw)
            if value is None or not math.isfinite(value):
                raise DataError(f"{where}: regression label {raw!r} is not a finite number")
            out.append(value)
            continue
        if lookup is not None:
            key = str(raw)
            if key not in lookup:
                raise DataError(f"{where}: label {raw!r} is not one of the {scheme.num_labels} labels {scheme.names}")
            out.append(lookup[key])
            continue
        value = _as_number(raw)
        if value is None or not value.is_integer():
            raise DataError(f"{where}: label {raw!r} is not an integer class id")
        if not 0 <= int(value) < scheme.num_labels:
            raise DataError(f"{where}: label {int(value)} is outside [0, num_labels={scheme.num_labels})")
        out.append(int(value))
    return out


def encode_texts(tokenizer, data: LabelledData, seq_len: int) -> list[list[int]] | dict[str, list]:
    """Tokenize (with truncation to ``seq_len``, no padding): ``{"input_ids", "token_type_ids"}`` lists."""
    enc = tokenizer(data.texts, data.pairs, truncation=True, max_length=seq_len, padding=False,
                    return_attention_mask=False, return_token_type_ids=True)
    return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}


def collate_labelled(encoded: dict[str, list], labels: list | None, indices: Sequence[int], pad_id: int,
                     regression: bool) -> dict[str, torch.Tensor]:
    """Pad the chosen examples to the longest of the batch."""
    seqs = [encoded["input_ids"][i] for i in indices]
    types = [encoded["token_type_ids"][i] for i in indices]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    tt = torch.zeros((len(seqs), length), dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, (s, t) in enumerate(zip(seqs, types)):
        ids[row, :len(s)] = torch.tensor(s)
        tt[row, :len(t)] = torch.tensor(t)
        mask[row, :len(s)] = 1
    batch = {"input_ids": ids, "token_type_ids": tt, "attention_mask": mask}
    if labels is not None:
        values = [labels[i] for i in indices]
        batch["labels"] = torch.tensor(values, dtype=torch.float if regression else torch.long)
    return batch


# --------------------------------------------------------------------------- batching


class BatchPlan:
    """Which examples each rank's micro-batches hold, epoch after epoch.

    Each epoch shuffles the dataset with ``seed + epoch`` and shards it across ranks with
    :class:`torch.utils.data.DistributedSampler` (every rank gets the same number of examples), then
    cuts the rank's share into micro-batches of ``batch_size``. ``batch(position)`` returns the
    indices of the ``position``-th micro-batch counted from the start of training, so resuming is
    ``position = micro-batches done``.
    """

    def __init__(self, num_examples: int, batch_size: int, *, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True):
        if num_examples < 1:
            raise DataError("no training examples")
        if batch_size < 1:
            raise ValueError(f"--batch-size must be positive, got {batch_size}")
        self.num_examples, self.batch_size = num_examples, batch_size
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        per_rank = math.ceil(num_examples / world_size)
        if drop_last:
            if per_rank < batch_size:
                # Too little data for one full batch per rank: keep a partial one instead of none.
                self.batches_per_epoch = 1
                self.drop_last = False
            else:
                self.batches_per_epoch = per_rank // batch_size
        else:
            self.batches_per_epoch = math.ceil(per_rank / batch_size)
        self._cache: tuple[int, list[int]] | None = None

    def _epoch_indices(self, epoch: int) -> list[int]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(range(self.num_examples), num_replicas=self.world_size, rank=self.rank,
                                     shuffle=self.shuffle, seed=self.seed, drop_last=False)
        sampler.set_epoch(epoch)
        indices = list(sampler)
        self._cache = (epoch, indices)
        return indices

    def locate(self, position: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of the ``position``-th micro-batch."""
        return divmod(position, self.batches_per_epoch)

    def batch(self, position: int) -> list[int]:
        epoch, b = self.locate(position)
        indices = self._epoch_indices(epoch)
        return indices[b * self.batch_size:(b + 1) * self.batch_size]
