"""Evaluation metrics without scikit-learn or scipy: accuracy, F1, Pearson and Spearman, MSE."""

from __future__ import annotations

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
