"""Extractive question answering (SQuAD v1.1 and v2.0): examples to windows, logits to answers.

Features. Each (question, context) is tokenized question first, the context truncated
(``only_second``) into windows of ``max_seq_length`` tokens that overlap by ``doc_stride`` tokens,
so a long context becomes several features. A window's target is the first token of the answer's
first character and the token of its last character; a window that does not hold the whole
answer, and an unanswerable question (v2), target position 0 ([CLS]).

Answers. For every window, the ``n_best`` highest start and end logits are paired; a pair is a
candidate when both fall inside the context, the end is not before the start, and it spans at most
``max_answer_length`` tokens; its score is start logit + end logit, and its text the context
between the two tokens' character offsets. An example's answer is its best candidate over all its
windows. With unanswerable questions (v2), the answer is "" when the [CLS] score (start + end at
position 0, the lowest over the windows) beats the best candidate, as transformers' ``run_qa``
example does with a threshold of 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data import DataError
from .metrics import squad_metrics
from .tasks import encoded_batch, in_batches, skip_or_refuse

CLS_INDEX = 0


class QuestionAnsweringTask:
    """``--task question-answering``: :class:`~convbert.ConvBertForQuestionAnswering`."""

    name = "question-answering"

    def __init__(self, tokenizer, train, evals=None, *, seq_len: int, doc_stride: int = 128,
                 max_answer_length: int = 30, n_best: int = 20, output_dir: Path | None = None,
                 bad_rows: str = "skip"):
        from ..modeling import ConvBertForQuestionAnswering

        from ..tokenization_fast import ConvBertTokenizerFast

        if not getattr(tokenizer, "is_fast", isinstance(tokenizer, ConvBertTokenizerFast)):
            raise DataError("question answering needs the fast tokenizer (character offsets and overflowing "
                            "windows): the tokenizer directory must hold a tokenizer.json or a vocab.txt that "
                            "ConvBertTokenizerFast can load")
        if not 0 <= doc_stride < seq_len // 2:
            raise DataError(f"--doc-stride {doc_stride} must be in [0, --max-seq-length / 2 = {seq_len // 2})")
        self.model_class = ConvBertForQuestionAnswering
        self.tokenizer, self.seq_len, self.doc_stride = tokenizer, seq_len, doc_stride
        self.max_answer_length, self.n_best, self.output_dir = max_answer_length, n_best, output_dir
        self.train, self.evals = train, evals
        for data in (train, evals):
            if data is not None:
                self._drop_long_questions(data, bad_rows)
        self.features = self._encode(train.examples)
        self.eval_features = self._encode(evals.examples) if evals is not None else None

    def config_keys(self) -> dict:
        return {"num_labels": 2}

    @property
    def num_examples(self) -> int:
        return len(self.features["input_ids"])

    def describe(self) -> str:
        version = "v2.0 (with unanswerable questions)" if self.train.version_2 else "v1.1"
        return (f"task question-answering, SQuAD {version}: {len(self.train.examples):,} questions in "
                f"{self.num_examples:,} windows of {self.seq_len} tokens, stride {self.doc_stride}")

    def _drop_long_questions(self, data, bad_rows: str) -> None:
        """Skip (counted in ``data.skipped``) or refuse (``bad_rows="error"``) questions too long to
        leave a window more context tokens than the stride: no window could move along the context."""
        room = self.seq_len - 3 - self.doc_stride  # [CLS] question [SEP] context [SEP]
        lengths = [len(ids) for ids in self.tokenizer([e.question.lstrip() for e in data.examples],
                                                      add_special_tokens=False)["input_ids"]]
        kept = []
        for example, length in zip(data.examples, lengths):
            if length < room:
                kept.append(example)
                continue
            message = (f"{data.path}: question {example.id!r} has {length} tokens; with --max-seq-length "
                       f"{self.seq_len} and --doc-stride {self.doc_stride} a question may have at most {room - 1}")
            skip_or_refuse(data, message, bad_rows, "questions")
        if not kept:
            raise DataError(f"{data.path}: no question short enough for --max-seq-length {self.seq_len}")
        data.examples = kept

    def _encode(self, examples) -> dict[str, list]:
        # transformers' run_qa strips the questions' leading spaces: they only waste window room
        enc = self.tokenizer([e.question.lstrip() for e in examples], [e.context for e in examples],
                             truncation="only_second", max_length=self.seq_len, stride=self.doc_stride,
                             return_overflowing_tokens=True, return_offsets_mapping=True, padding=False,
                             return_attention_mask=False, return_token_type_ids=True)
        starts, ends, offsets, owners = [], [], [], []
        for row, sample in enumerate(enc["overflow_to_sample_mapping"]):
            example, sequence_ids = examples[sample], enc.sequence_ids(row)
            # offsets of context tokens only: other tokens can be neither start nor end of an answer
            row_offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][row], sequence_ids)]
            start, end = self._target(example, row_offsets)
            starts.append(start)
            ends.append(end)
            offsets.append(row_offsets)
            owners.append(sample)
        return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"], "start_positions": starts,
                "end_positions": ends, "offsets": offsets, "example": owners}

    @staticmethod
    def _target(example, offsets: Sequence) -> tuple[int, int]:
        """Token positions of the example's first answer in this window, or (0, 0) ([CLS])."""
        if not example.answer_texts:
            return CLS_INDEX, CLS_INDEX
        first_char = example.answer_starts[0]
        last_char = first_char + len(example.answer_texts[0])  # exclusive
        context = [i for i, o in enumerate(offsets) if o is not None]
        if not context or offsets[context[0]][0] > first_char or offsets[context[-1]][1] < last_char:
            return CLS_INDEX, CLS_INDEX
        start = next(i for i in context if offsets[i][1] > first_char)
        end = next(i for i in reversed(context) if offsets[i][0] < last_char)
        return start, end

    def _batch(self, features: dict, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = encoded_batch([features["input_ids"][i] for i in indices],
                              [features["token_type_ids"][i] for i in indices], self.tokenizer.pad_token_id)
        batch["start_positions"] = torch.tensor([features["start_positions"][i] for i in indices])
        batch["end_positions"] = torch.tensor([features["end_positions"][i] for i in indices])
        return batch

    def fetch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return self._batch(self.features, indices)

    def evaluate(self, module, *, batch_size: int, device) -> dict[str, float]:
        features, examples = self.eval_features, self.evals.examples
        count = len(features["input_ids"])
        logits: list = [None] * count

        def keep(out, indices):
            start = out.start_logits.float().cpu().numpy()
            end = out.end_logits.float().cpu().numpy()
            for row, i in enumerate(indices):
                n = len(features["input_ids"][i])
                logits[i] = (start[row, :n], end[row, :n])

        loss = in_batches(module, lambda idx: self._batch(features, idx), count, batch_size, device, keep)
        windows: list[list[int]] = [[] for _ in examples]
        for feature, sample in enumerate(features["example"]):
            windows[sample].append(feature)
        answers, nbest = {}, {}
        for sample, example in enumerate(examples):
            candidates, null_score = [], None
            for feature in windows[sample]:
                start, end = logits[feature]
                score = float(start[CLS_INDEX] + end[CLS_INDEX])
                null_score = score if null_score is None else min(null_score, score)
                candidates += self._candidates(start, end, features["offsets"][feature])
            candidates.sort(key=lambda c: -c[0])
            best = candidates[0] if candidates else None
            no_answer = best is None or (self.evals.version_2 and null_score > best[0])
            answers[example.id] = "" if no_answer else example.context[best[1]:best[2]]
            nbest[example.id] = [{"text": example.context[a:b], "score": s, "start": a, "end": b}
                                 for s, a, b in candidates[:self.n_best]]
            if self.evals.version_2:
                nbest[example.id].append({"text": "", "score": null_score})
        if self.output_dir is not None:
            from .loop import write_atomic

            write_atomic(Path(self.output_dir) / "predictions.json", json.dumps(answers, indent=2) + "\n")
            write_atomic(Path(self.output_dir) / "nbest_predictions.json", json.dumps(nbest, indent=2) + "\n")
        references = {e.id: list(e.answer_texts) for e in examples}
        metrics = squad_metrics(answers, references)
        return {"eval_loss": loss, **{f"eval_{k}": float(v) for k, v in metrics.items()}}

    def _candidates(self, start: np.ndarray, end: np.ndarray, offsets: Sequence) -> list[tuple[float, int, int]]:
        """(score, first char, end char) of each allowed pair of the window's n-best starts and ends."""
        top_starts = np.argsort(start)[::-1][:self.n_best]
        top_ends = np.argsort(end)[::-1][:self.n_best]
        out = []
        for s in top_starts:
            for e in top_ends:
                if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > self.max_answer_length:
                    continue
                out.append((float(start[s] + end[e]), offsets[s][0], offsets[e][1]))
        return out
