"""Token classification (named entities, CoNLL-style): words and their tags to features and back.

Each sentence is tokenized as pre-split words (``is_split_into_words``), truncated to the sequence
length. The label of a word goes on its first sub-token; its other sub-tokens get -100 (no loss),
or, with ``label_all_tokens``, the word's label too (a ``B-X`` continued as ``I-X``, as
transformers' ``run_ner`` example does). Evaluation reads the prediction at each word's first
sub-token and scores entity chunks (precision / recall / F1, conlleval rules) and tag accuracy over
the words inside the sequence length; words cut off by truncation are left out of both sides.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .data import DataError
from .metrics import token_classification_metrics
from .tasks import encoded_batch, in_batches, pad_rows, skip_or_refuse

IGNORE = -100


def tag_names(tags: Sequence[Sequence[str]], known: Sequence[str] | None = None) -> list[str]:
    """The label list: ``known`` (a fine-tuned checkpoint's) when given, else the training tags
    sorted, ``O`` first."""
    if known:
        return list(known)
    found = sorted({t for sentence in tags for t in sentence})
    return (["O"] if "O" in found else []) + [t for t in found if t != "O"]


def check_tags(data, names: Sequence[str], bad_rows: str):
    """Drop (``bad_rows="skip"``, counted in ``data.skipped``) or refuse (``"error"``: DataError)
    sentences whose tags are not in ``names`` (the training tags); returns the sentences kept."""
    lookup, kept_tokens, kept_tags = set(names), [], []
    for i, (tokens, tags) in enumerate(zip(data.tokens, data.tags)):
        unknown = sorted({t for t in tags if t not in lookup})
        if unknown:
            message = (f"{data.path}: sentence {i + 1}: tag(s) {unknown} not among the {len(names)} training tags "
                       f"{list(names)[:20]}")
            skip_or_refuse(data, message, bad_rows, "sentences")
            continue
        kept_tokens.append(tokens)
        kept_tags.append(tags)
    data.tokens, data.tags = kept_tokens, kept_tags
    if not data.tokens:
        raise DataError(f"{data.path}: no sentence left whose tags are all among the training tags")
    return data


class TokenClassificationTask:
    """``--task token-classification``: :class:`~convbert.ConvBertForTokenClassification`."""

    name = "token-classification"

    def __init__(self, tokenizer, train, evals=None, *, seq_len: int, label_names: Sequence[str] | None = None,
                 label_all_tokens: bool = False, bad_rows: str = "skip"):
        from ..modeling import ConvBertForTokenClassification

        self.model_class = ConvBertForTokenClassification
        self.tokenizer, self.seq_len, self.label_all_tokens = tokenizer, seq_len, label_all_tokens
        self.labels = tag_names(train.tags, label_names)
        self.label2id = {name: i for i, name in enumerate(self.labels)}
        if label_names:
            check_tags(train, self.labels, bad_rows)
        if evals is not None:
            check_tags(evals, self.labels, bad_rows)
        self.train, self.evals = train, evals
        self.features = self._encode(train)
        self.eval_features = self._encode(evals) if evals is not None else None

    def config_keys(self) -> dict:
        return {"id2label": dict(enumerate(self.labels)), "label2id": None}

    @property
    def num_examples(self) -> int:
        return len(self.features["input_ids"])

    def describe(self) -> str:
        return (f"task token-classification with {len(self.labels)} tags {self.labels[:12]}"
                + (" (labels on every sub-token)" if self.label_all_tokens else " (labels on first sub-tokens)"))

    def _continuation(self, label: str) -> str:
        """The label of a word's later sub-tokens with ``label_all_tokens``: I-X for B-X when I-X exists."""
        if label.startswith("B-") and f"I-{label[2:]}" in self.label2id:
            return f"I-{label[2:]}"
        return label

    def _encode(self, data) -> dict[str, list]:
        enc = self.tokenizer(data.tokens, is_split_into_words=True, truncation=True, max_length=self.seq_len,
                             padding=False, return_attention_mask=False, return_token_type_ids=True)
        labels, first_tokens = [], []
        for row, tags in enumerate(data.tags):
            row_labels, firsts, previous = [], [], None
            for position, word in enumerate(enc.word_ids(row)):
                if word is None:
                    row_labels.append(IGNORE)
                elif word != previous:
                    row_labels.append(self.label2id[tags[word]])
                    firsts.append((position, word))
                else:
                    row_labels.append(self.label2id[self._continuation(tags[word])] if self.label_all_tokens
                                      else IGNORE)
                previous = word
            labels.append(row_labels)
            first_tokens.append(firsts)
        return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"], "labels": labels,
                "first_tokens": first_tokens}

    def _batch(self, features: dict, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = encoded_batch([features["input_ids"][i] for i in indices],
                              [features["token_type_ids"][i] for i in indices], self.tokenizer.pad_token_id)
        batch["labels"] = pad_rows([features["labels"][i] for i in indices], IGNORE)
        return batch

    def fetch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return self._batch(self.features, indices)

    def evaluate(self, module, *, batch_size: int, device) -> dict[str, float]:
        features, data = self.eval_features, self.evals
        predictions, references = [None] * len(data.tags), [None] * len(data.tags)

        def keep(out, indices):
            best = out.logits.float().argmax(-1).cpu().numpy()
            for row, i in enumerate(indices):
                firsts = features["first_tokens"][i]
                predictions[i] = [self.labels[int(best[row, position])] for position, _ in firsts]
                references[i] = [data.tags[i][word] for _, word in firsts]

        loss = in_batches(module, lambda idx: self._batch(features, idx), len(data.tags), batch_size, device, keep)
        metrics = token_classification_metrics(predictions, references)
        return {"eval_loss": loss, **{f"eval_{k}": float(v) for k, v in metrics.items()}}
