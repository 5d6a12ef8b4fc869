"""Evaluation metrics without scikit-learn or scipy: accuracy, F1, Pearson and Spearman, MSE; entity-level
precision / recall / F1 of tagged sequences (as seqeval's default, conlleval-compatible mode); SQuAD exact
match and F1 (as the official v1.1 / v2.0 evaluation scripts); multiple-choice accuracy."""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Iterable, Mapping, Sequence

import numpy as np


def accuracy(predictions, labels) -> float:
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} differ in shape")
    return float((p == y).mean()) if y.size else float("nan")


def f1(predictions, labels, num_labels: int | None = None, average: str = "auto") -> float:
    """F1 score. ``average="auto"``: of class 1 for two classes (GLUE's convention), macro otherwise."""
    p, y = np.asarray(predictions).astype(np.int64), np.asarray(labels).astype(np.int64)
    n = num_labels or int(max(p.max(initial=0), y.max(initial=0)) + 1)
    if average == "auto":
        average = "binary" if n == 2 else "macro"

    def class_f1(c: int) -> float:
        tp = float(np.sum((p == c) & (y == c)))
        fp = float(np.sum((p == c) & (y != c)))
        fn = float(np.sum((p != c) & (y == c)))
        return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)

    if average == "binary":
        return class_f1(1)
    if average == "macro":
        return float(np.mean([class_f1(c) for c in range(n)]))
    if average == "micro":
        return accuracy(p, y)
    raise ValueError(f"unknown average {average!r}")


def pearson(x, y) -> float:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.size < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return pearson(_ranks(a), _ranks(b))


def classification_metrics(logits, labels, num_labels: int) -> dict[str, float]:
    preds = np.asarray(logits).argmax(axis=-1)
    return {"accuracy": accuracy(preds, labels), "f1": f1(preds, labels, num_labels)}


def regression_metrics(predictions, labels) -> dict[str, float]:
    p = np.asarray(predictions, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    return {"pearson": pearson(p, y), "spearman": spearman(p, y), "mse": float(np.mean((p - y) ** 2))}


# --------------------------------------------------------------------------- token classification


def _tag_parts(tag: str) -> tuple[str, str]:
    """A tag's prefix (its first character: B, I, E, S, O, ...) and entity type (the text after the first
    ``-`` that follows the prefix; ``"_"`` when there is none, as for ``O``, ``B`` or ``I``)."""
    prefix, rest = tag[:1], tag[1:]
    return prefix, rest.split("-", 1)[-1] or "_"


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entity chunks of a tag sequence as ``(type, start, end)``, ``end`` exclusive, in order.

    Reads BIO / IOB2 tags (``B-PER``, ``I-PER``, ``O``), tags without a type (``B``, ``I``: type
    ``"_"``) and the IOBES prefixes ``E-`` (end) and ``S-`` (single), exactly as seqeval's default
    mode (the rules of the CoNLL ``conlleval`` script) does. A tag's prefix is its first character,
    its type the text after the first ``-`` behind it. Going from token ``i - 1`` (the one before
    the first token counts as ``O`` with no type) to token ``i``:

    * a chunk **ends** after token ``i - 1`` when that token's prefix is ``E`` or ``S``; or its
      prefix is ``B`` or ``I`` and token ``i``'s is ``B``, ``S`` or ``O``; or its prefix is
      neither ``O`` nor ``.`` and the two types differ;
    * a chunk **starts** at token ``i`` when its prefix is ``B`` or ``S``; or its prefix is ``I``
      or ``E`` and token ``i - 1``'s is ``O``, ``E`` or ``S``; or its prefix is neither ``O`` nor
      ``.`` and the two types differ.

    An ``O`` closes the sequence. So an ``I-X`` after ``O`` or after another type starts a chunk
    (``O I-X I-X`` is one ``X`` chunk), ``B-X I-Y`` is two chunks, ``B-X B-X`` two, and an ``I-X``
    or ``E-X`` right after ``E-X`` / ``S-X`` starts a new one. Tags with other prefixes are read by
    the same rules, as seqeval reads them (without its warning).
    """
    spans: list[tuple[str, int, int]] = []
    prev_prefix, prev_type = "O", None  # before the sequence: O, and a type no tag has
    begin = 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = _tag_parts(tag)
        type_changed = kind != prev_type
        ends = (prev_prefix in ("E", "S")
                or (prev_prefix in ("B", "I") and prefix in ("B", "S", "O"))
                or (prev_prefix not in ("O", ".") and type_changed))
        starts = (prefix in ("B", "S")
                  or (prefix in ("I", "E") and prev_prefix in ("O", "E", "S"))
                  or (prefix not in ("O", ".") and type_changed))
        if ends:
            spans.append((prev_type, begin, i))
        if starts:
            begin = i
        prev_prefix, prev_type = prefix, kind
    return spans


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _prf(true_positives: int, predicted: int, actual: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts; 0.0 where a denominator is 0 (seqeval's zero_division=0)."""
    precision, recall = _ratio(true_positives, predicted), _ratio(true_positives, actual)
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f


def token_classification_metrics(predictions: Sequence[Sequence[str]],
                                 references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 and token-level accuracy of predicted tag sequences.

    ``predictions[k]`` and ``references[k]`` are the tags of sentence ``k``. Chunks are found with
    :func:`entity_spans` over all sentences joined with an ``O`` between them (as seqeval does, so
    no chunk crosses a sentence boundary); a predicted chunk is right only when its type, start and
    end all equal a reference chunk's. Returns ``precision``, ``recall`` and ``f1`` micro-averaged
    over the chunks (0.0 where undefined: no predicted or no reference chunk, as seqeval with
    ``zero_division=0``), ``accuracy`` over all tokens (``nan`` without any token), and ``f1_<TYPE>``
    for each entity type that occurs in the predictions or the references.

    Raises:
        ValueError: the numbers of sentences differ, or a sentence's prediction and reference have
            different lengths (naming the sentence's index).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predicted sentences but {len(references)} reference sentences")
    flat_pred: list[str] = []
    flat_ref: list[str] = []
    for index, (pred, ref) in enumerate(zip(predictions, references)):
        if len(pred) != len(ref):
            raise ValueError(f"sentence {index}: {len(pred)} predicted tags but {len(ref)} reference tags")
        flat_pred.extend(pred)
        flat_pred.append("O")
        flat_ref.extend(ref)
        flat_ref.append("O")
    tokens = sum(len(ref) for ref in references)
    correct = sum(p == r for pred, ref in zip(predictions, references) for p, r in zip(pred, ref))

    predicted, actual = set(entity_spans(flat_pred)), set(entity_spans(flat_ref))
    precision, recall, f = _prf(len(predicted & actual), len(predicted), len(actual))
    out = {"precision": precision, "recall": recall, "f1": f,
           "accuracy": correct / tokens if tokens else float("nan")}
    for kind in sorted({span[0] for span in predicted | actual}):
        mine = {s for s in predicted if s[0] == kind}
        theirs = {s for s in actual if s[0] == kind}
        out[f"f1_{kind}"] = _prf(len(mine & theirs), len(mine), len(theirs))[2]
    return out


# --------------------------------------------------------------------------- question answering (SQuAD)

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """An answer as the official SQuAD evaluation compares it: lower case, ASCII punctuation
    removed, the articles *a*, *an* and *the* removed (as whole words), runs of whitespace made one
    space and the ends stripped. ``"The Cat!"`` becomes ``"cat"``."""
    text = text.lower().translate(_NO_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _gold_answers(ground_truths: str | Iterable[str]) -> list[str]:
    """The reference answers that count: those that do not normalise to nothing; ``[""]`` (no
    answer) when none does or none is given (the SQuAD v2.0 script's rule). A single string is one
    answer."""
    if isinstance(ground_truths, str):
        ground_truths = [ground_truths]
    answers = [a for a in ground_truths if normalize_answer(a)]
    return answers or [""]


def _answer_f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:  # "no answer" on either side: right only if on both
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, ground_truths: str | Iterable[str]) -> float:
    """1.0 if the normalised prediction equals a normalised reference answer, else 0.0.

    ``ground_truths`` are the acceptable answers (a single string is one); an empty list (or only
    answers that normalise to nothing) means the question has no answer, which only an empty
    prediction matches. See :func:`normalize_answer`.
    """
    pred = normalize_answer(prediction)
    return max(float(pred == normalize_answer(gold)) for gold in _gold_answers(ground_truths))


def f1_score(prediction: str, ground_truths: str | Iterable[str]) -> float:
    """Token-level F1 of the normalised prediction against the best-matching reference answer.

    Tokens are the whitespace-separated words of :func:`normalize_answer`; the overlap counts each
    token as often as it occurs in both. SQuAD v2.0 rule: when the prediction or the reference has
    no tokens (no answer), F1 is 1.0 if both have none, else 0.0. ``ground_truths`` as for
    :func:`exact_match_score`.
    """
    return max(_answer_f1(prediction, gold) for gold in _gold_answers(ground_truths))


def squad_metrics(predictions: Mapping[str, str], references: Mapping[str, str | Iterable[str]]) -> dict[str, float]:
    """Exact match and F1 over a SQuAD evaluation set, in percent (0-100), as the official scripts.

    ``references`` maps each question id to its acceptable answers; an empty list marks a question
    without an answer (SQuAD v2.0). ``predictions`` maps ids to the predicted answer text, ``""``
    for "no answer"; ids that are not in ``references`` are ignored. A question without a
    prediction scores 0 for both metrics, even one without an answer: the v1.1 script's rule (the
    v2.0 script skips it instead and then fails on the split totals), applied to both versions.

    Returns ``exact_match``, ``f1`` and ``total`` (the number of questions). When some question has
    no answer, also the official v2.0 split: ``HasAns_exact``, ``HasAns_f1``, ``HasAns_total`` (if
    any question has an answer) and ``NoAns_exact``, ``NoAns_f1``, ``NoAns_total``. With no
    questions at all the percentages are 0.0.
    """
    exact: dict[str, float] = {}
    f1s: dict[str, float] = {}
    has_answer: dict[str, bool] = {}
    for qid, golds in references.items():
        golds = [golds] if isinstance(golds, str) else list(golds)
        has_answer[qid] = bool(golds)
        if qid in predictions:
            prediction = predictions[qid] or ""
            exact[qid], f1s[qid] = exact_match_score(prediction, golds), f1_score(prediction, golds)
        else:
            exact[qid] = f1s[qid] = 0.0

    def summary(ids: list[str]) -> tuple[float, float, int]:
        if not ids:
            return 0.0, 0.0, 0
        return 100.0 * sum(exact[i] for i in ids) / len(ids), 100.0 * sum(f1s[i] for i in ids) / len(ids), len(ids)

    everything = list(references)
    out: dict[str, float] = dict(zip(("exact_match", "f1", "total"), summary(everything)))
    with_answer = [i for i in everything if has_answer[i]]
    without = [i for i in everything if not has_answer[i]]
    if without:
        if with_answer:
            out.update(zip(("HasAns_exact", "HasAns_f1", "HasAns_total"), summary(with_answer)))
        out.update(zip(("NoAns_exact", "NoAns_f1", "NoAns_total"), summary(without)))
    return out


# --------------------------------------------------------------------------- multiple choice


def multiple_choice_metrics(logits, labels) -> dict[str, float]:
    """``{"accuracy": ...}`` of the highest-scoring choice (``logits`` is ``[examples, choices]``)."""
    return {"accuracy": accuracy(np.asarray(logits).argmax(axis=-1), labels)}
