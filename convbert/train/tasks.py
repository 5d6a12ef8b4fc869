"""What the fine-tuning tasks share: padding rows into batches, and evaluating in batches.

Each task of ``convbert-train finetune --task`` (``token_classification``, ``question_answering``,
``multiple_choice``; sequence classification lives in the CLI and ``data``) is a class with:

- ``model_class``: the ConvBERT head it trains, and ``config_keys()``: what the task sets in the
  model config (labels, ``num_labels``);
- ``num_examples`` and ``fetch(indices)``: training features and a padded batch of them (the
  head's keyword arguments, labels included);
- ``evaluate(module)``: metrics on the evaluation data under transformers' keys (``eval_loss``,
  ``eval_f1``, ...), floats only;
- ``describe()``: one line on the data, for the run's log.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .data import DataError


def pad_rows(rows: Sequence[Sequence[int]], value: int, length: int | None = None) -> torch.Tensor:
    """``[len(rows), length]`` int64, each row left-aligned and filled with ``value`` (length:
    the longest row's by default)."""
    length = max((len(r) for r in rows), default=0) if length is None else length
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.as_tensor(list(row), dtype=torch.long)
    return out


def encoded_batch(input_ids: Sequence[Sequence[int]], token_type_ids: Sequence[Sequence[int]],
                  pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``token_type_ids`` / ``attention_mask`` padded to the longest row."""
    return {"input_ids": pad_rows(input_ids, pad_id), "token_type_ids": pad_rows(token_type_ids, 0),
            "attention_mask": pad_rows([[1] * len(r) for r in input_ids], 0)}


def in_batches(module, fetch: Callable[[list[int]], dict], count: int, batch_size: int, device,
               keep: Callable[[object, list[int]], None]) -> float:
    """Run ``module.model`` over examples ``0 .. count - 1`` in batches of ``batch_size``, hand each
    output to ``keep(output, indices)``, and return the mean loss per example."""
    total = 0.0
    for start in range(0, count, batch_size):
        indices = list(range(start, min(count, start + batch_size)))
        batch = fetch(indices)
        out = module.model(**{k: v.to(device) for k, v in batch.items()})
        total += float(out.loss) * len(indices)
        keep(out, indices)
    return total / max(count, 1)


def skip_or_refuse(data, message: str, bad_rows: str, what: str = "rows") -> None:
    """A bad example found by a task (after reading): counted in ``data.skipped`` with its reason
    (``bad_rows="skip"``), or a :class:`~convbert.train.data.DataError` (``"error"``)."""
    if bad_rows == "error":
        raise DataError(f"{message} (pass --bad-rows skip to skip such {what})")
    data.skipped += 1
    if len(data.skip_reasons) < 5:
        data.skip_reasons.append(message)
