"""Multiple choice (SWAG-style): one (context, choice) pair per choice, scored by the head.

Each example becomes ``num_choices`` sequences ``[CLS] context [SEP] choice [SEP]`` (truncated
longest-first to the sequence length); a batch is ``[B, num_choices, L]``, padded to its longest
sequence. :class:`~convbert.ConvBertForMultipleChoice` scores each choice from its last token (the
last real token with ``--unpad``), and the loss is the cross-entropy over the choices.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .data import DataError
from .tasks import in_batches, pad_rows


class MultipleChoiceTask:
    """``--task multiple-choice``: :class:`~convbert.ConvBertForMultipleChoice`."""

    name = "multiple-choice"

    def __init__(self, tokenizer, train, evals=None, *, seq_len: int):
        from ..modeling import ConvBertForMultipleChoice

        for data in (train, evals):
            if data is not None and any(label is None for label in data.labels):
                raise DataError(f"{data.path}: every example needs a label to train or evaluate on")
        if evals is not None and evals.num_choices != train.num_choices:
            raise DataError(f"{evals.path} has {evals.num_choices} choices per example but {train.path} has "
                            f"{train.num_choices}: the model scores a fixed number of choices")
        self.model_class = ConvBertForMultipleChoice
        self.tokenizer, self.seq_len = tokenizer, seq_len
        self.train, self.evals = train, evals
        self.features = self._encode(train)
        self.eval_features = self._encode(evals) if evals is not None else None

    def config_keys(self) -> dict:
        return {}

    @property
    def num_examples(self) -> int:
        return len(self.features["labels"])

    def describe(self) -> str:
        return f"task multiple-choice with {self.train.num_choices} choices per example"

    def _encode(self, data) -> dict[str, list]:
        n = data.num_choices
        firsts = [context for context in data.contexts for _ in range(n)]
        seconds = [choice for choices in data.choices for choice in choices]
        enc = self.tokenizer(firsts, seconds, truncation=True, max_length=self.seq_len, padding=False,
                             return_attention_mask=False, return_token_type_ids=True)
        return {"input_ids": [enc["input_ids"][i * n:(i + 1) * n] for i in range(len(data.contexts))],
                "token_type_ids": [enc["token_type_ids"][i * n:(i + 1) * n] for i in range(len(data.contexts))],
                "labels": list(data.labels)}

    def _batch(self, features: dict, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        ids = [row for i in indices for row in features["input_ids"][i]]
        types = [row for i in indices for row in features["token_type_ids"][i]]
        length, shape = max(len(r) for r in ids), (len(indices), -1)
        return {"input_ids": pad_rows(ids, self.tokenizer.pad_token_id, length).view(*shape, length),
                "token_type_ids": pad_rows(types, 0, length).view(*shape, length),
                "attention_mask": pad_rows([[1] * len(r) for r in ids], 0, length).view(*shape, length),
                "labels": torch.tensor([features["labels"][i] for i in indices])}

    def fetch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return self._batch(self.features, indices)

    def evaluate(self, module, *, batch_size: int, device) -> dict[str, float]:
        features = self.eval_features
        count = len(features["labels"])
        predictions = np.zeros(count, dtype=np.int64)

        def keep(out, indices):
            predictions[indices] = out.logits.float().argmax(-1).cpu().numpy()

        loss = in_batches(module, lambda idx: self._batch(features, idx), count, batch_size, device, keep)
        accuracy = float((predictions == np.asarray(features["labels"])).mean())
        return {"eval_loss": loss, "eval_accuracy": accuracy}
