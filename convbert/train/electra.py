"""Pre-training objectives (ELECTRA replaced-token detection, masked LM) and the fine-tuning wrapper
(:class:`FineTuned`, any head).

Each objective is an ``nn.Module`` whose ``forward(**batch)`` returns a dict with ``"loss"`` (what
is back-propagated, and the training log's headline) and other scalar tensors worth logging, plus:

- ``make_batch(examples, rng)``: turn a batch of packed token blocks into model inputs (masking is
  drawn from ``rng``, a ``torch.Generator`` seeded per micro-batch, so resumed runs mask alike);
  blocks of whole documents (``--pack-documents``) carry ``position_ids`` and an ``attention_mask``
  numbering the documents (1, 2, ...; 0 for padding), which pass through to every model;
- ``save_pretrained(dir)`` / ``load_pretrained(dir)``: the Hugging Face layout, the whole state;
- ``tokens_in(batch)``: how many real tokens a batch holds (for tokens/s);
- ``evaluate_masked_lm(blocks)``: masked-token accuracy and loss of its masked LM on held-out blocks.

ELECTRA (Clark et al., 2020), as ConvBERT pre-trains: a small masked-LM *generator* fills 15% of
positions with sampled tokens; the *discriminator* (the ConvBERT being trained) predicts for every
token whether it was replaced. Objective = generator MLM loss + 50 x discriminator loss (logged as
``total_loss``). ``loss`` has that objective's gradient but the generator MLM loss as its value: a
headline that falls (the x50 term sits near its base rate for long stretches of a short run).
Generator and discriminator share the embedding module (word, position, token type, LayerNorm);
the generator's output projection is tied to the shared word embeddings. The generator has the
discriminator's depth and a fraction of its width, heads and feed-forward size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import ConvBertConfig
from ..modeling import ConvBertForMaskedLM, ConvBertModel, ConvBertPreTrainedModel, get_activation
from ..pretrained import load_state_dict_from_directory

GENERATOR_DIR = "generator"
DISCRIMINATOR_HEAD_FILE = "discriminator_head.safetensors"


# --------------------------------------------------------------------------- masking


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, *, special_ids: list[int], mask_id: int,
                vocab_size: int, rng: torch.Generator, rate: float = 0.15, mask_fraction: float = 0.8,
                random_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose ``rate`` of each sequence's maskable tokens (at least one) and corrupt them.

    Of the chosen positions, ``mask_fraction`` become ``[MASK]``, ``random_fraction`` a random
    token, the rest stay unchanged (BERT: 0.8 / 0.1; ELECTRA: 0.85 / 0.0). Special tokens and
    padding (``attention_mask`` 0; a block of packed documents numbers its documents 1, 2, ...)
    are never chosen. Returns ``(corrupted_ids, labels)`` with labels -100 where not chosen.
    """
    maskable = attention_mask != 0
    for sid in special_ids:
        maskable &= input_ids != sid
    scores = torch.rand(input_ids.shape, generator=rng)
    scores = scores.masked_fill(~maskable, 2.0)  # never among the lowest
    counts = maskable.sum(1)
    k = torch.clamp(torch.round(counts.float() * rate).long(), min=1)
    k = torch.minimum(k, counts)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    chosen = (ranks < k[:, None]) & maskable
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    action = torch.rand(input_ids.shape, generator=rng)
    corrupted = input_ids.clone()
    to_mask = chosen & (action < mask_fraction)
    to_random = chosen & (action >= mask_fraction) & (action < mask_fraction + random_fraction)
    corrupted[to_mask] = mask_id
    if to_random.any():
        random_ids = torch.randint(0, vocab_size, input_ids.shape, generator=rng)
        corrupted[to_random] = random_ids[to_random]
    return corrupted, labels


# --------------------------------------------------------------------------- configs


def generator_config(disc: ConvBertConfig, fraction: float) -> ConvBertConfig:
    """The generator's config: the discriminator's depth and embeddings, ``fraction`` of its width."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--generator-fraction must be in (0, 1], got {fraction}")
    heads = max(disc.head_ratio, int(round(disc.num_attention_heads * fraction)))
    n = max(heads // disc.head_ratio, 1)
    unit = 2 * n * disc.num_groups // math.gcd(2 * n, disc.num_groups)
    hidden = max(unit, int(math.ceil(disc.hidden_size * fraction / unit)) * unit)
    values = disc.to_dict()
    for key in ("architectures", "id2label", "label2id", "problem_type"):
        values.pop(key, None)
    values.update(hidden_size=hidden, num_attention_heads=heads, intermediate_size=4 * hidden)
    return ConvBertConfig.from_dict(values)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)


class _PretrainBase(nn.Module):
    def __init__(self, special_ids: list[int], mask_id: int, pad_id: int, mask_rate: float):
        super().__init__()
        if not 0 < mask_rate < 1:
            raise ValueError(f"--mask-rate must be in (0, 1), got {mask_rate}")
        self.special_ids, self.mask_id, self.pad_id, self.mask_rate = list(special_ids), mask_id, pad_id, mask_rate

    @staticmethod
    def tokens_in(batch: dict[str, torch.Tensor]) -> int:
        return int((batch["attention_mask"] != 0).sum())

    @staticmethod
    def _inputs(examples: dict[str, torch.Tensor], input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model inputs of a batch: the corrupted ids, the attention mask and any position ids."""
        inputs = {"input_ids": input_ids, "attention_mask": examples["attention_mask"]}
        if examples.get("position_ids") is not None:
            inputs["position_ids"] = examples["position_ids"]
        return inputs

    @property
    def masked_lm(self) -> ConvBertForMaskedLM:
        """The model that predicts masked tokens (ELECTRA: the generator)."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate_masked_lm(self, blocks: dict[str, torch.Tensor], batch_size: int = 32,
                           seed: int = 0) -> dict[str, float]:
        """Masked-token prediction on held-out ``blocks`` (``input_ids`` / ``attention_mask``, as packed).

        ``mask_rate`` of each block's tokens become ``[MASK]``, drawn from ``seed``: every call scores
        the same positions, so evaluations before and after training compare. Returns the masked LM's
        top-1 accuracy and mean cross-entropy there, and how many positions were scored.
        """
        model, was_training = self.masked_lm, self.training
        device = next(model.parameters()).device
        rng = torch.Generator().manual_seed(seed)
        correct = count = 0
        loss_sum = 0.0
        self.eval()
        try:
            for start in range(0, len(blocks["input_ids"]), batch_size):
                ids = blocks["input_ids"][start:start + batch_size]
                mask = blocks["attention_mask"][start:start + batch_size]
                positions = blocks.get("position_ids")
                positions = None if positions is None else positions[start:start + batch_size].to(device)
                masked, labels = mask_tokens(ids, mask, special_ids=self.special_ids, mask_id=self.mask_id,
                                             vocab_size=self.config.vocab_size, rng=rng, rate=self.mask_rate,
                                             mask_fraction=1.0, random_fraction=0.0)
                logits, targets = _masked_lm_logits(model, masked.to(device), mask.to(device), labels.to(device),
                                                    positions)
                loss_sum += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
                correct += int((logits.argmax(-1) == targets).sum())
                count += targets.numel()
        finally:
            self.train(was_training)
        return {"eval_masked_acc": correct / max(count, 1), "eval_mlm_loss": loss_sum / max(count, 1),
                "eval_masked_tokens": count}


# --------------------------------------------------------------------------- masked LM


def _masked_lm_logits(model: ConvBertForMaskedLM, input_ids, attention_mask, labels, position_ids=None):
    """The MLM head's logits at the masked positions only ([M, V]) and their targets ([M]).

    Same loss as ``model(..., labels=labels).loss``, without projecting every position onto the
    vocabulary (85% of that work would be thrown away).
    """
    hidden = model.convbert(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids).last_hidden_state
    chosen = labels != -100
    logits = model.generator_lm_head(model.generator_predictions(hidden[chosen]))
    return logits, labels[chosen]



class MlmPretrainer(_PretrainBase):
    """Plain BERT-style masked language modelling (80% [MASK], 10% random, 10% unchanged)."""

    objective = "mlm"

    def __init__(self, config: ConvBertConfig, *, special_ids: list[int], mask_id: int, pad_id: int,
                 mask_rate: float = 0.15):
        super().__init__(special_ids, mask_id, pad_id, mask_rate)
        self.model = ConvBertForMaskedLM(config)

    @property
    def config(self) -> ConvBertConfig:
        return self.model.config

    @property
    def masked_lm(self) -> ConvBertForMaskedLM:
        return self.model

    def make_batch(self, examples: dict[str, torch.Tensor], rng: torch.Generator) -> dict[str, torch.Tensor]:
        ids, labels = mask_tokens(examples["input_ids"], examples["attention_mask"], special_ids=self.special_ids,
                                  mask_id=self.mask_id, vocab_size=self.config.vocab_size, rng=rng,
                                  rate=self.mask_rate, mask_fraction=0.8, random_fraction=0.1)
        return {**self._inputs(examples, ids), "labels": labels}

    def forward(self, input_ids, attention_mask, labels, position_ids=None) -> dict[str, torch.Tensor]:
        logits, targets = _masked_lm_logits(self.model, input_ids, attention_mask, labels, position_ids)
        loss = F.cross_entropy(logits.float(), targets)
        with torch.no_grad():
            acc = (logits.argmax(-1) == targets).float().mean()
        return {"loss": loss, "mlm_acc": acc}

    def compile_models(self) -> None:
        self.model.convbert.compile()

    def save_pretrained(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    def load_pretrained(self, directory: Path, strict: bool = True) -> None:
        info = self.model.load_pretrained_state_dict(load_state_dict_from_directory(Path(directory)))
        if strict and (info.missing_keys or info.unexpected_keys):
            raise ValueError(f"checkpoint {directory} does not match the model: missing {info.missing_keys}, "
                             f"unexpected {info.unexpected_keys}")


# --------------------------------------------------------------------------- ELECTRA


class ConvBertDiscriminatorPredictions(nn.Module):
    """ELECTRA's replaced-token-detection head: dense Hd -> Hd, activation, dense Hd -> 1 (one logit per token)."""

    def __init__(self, config: ConvBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dense_prediction = nn.Linear(config.hidden_size, 1)
        self.act = get_activation(config.hidden_act)
        for layer in (self.dense, self.dense_prediction):
            nn.init.normal_(layer.weight, std=config.initializer_range)
            nn.init.zeros_(layer.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense_prediction(self.act(self.dense(hidden_states))).squeeze(-1)


class ElectraPretrainer(_PretrainBase):
    """Generator (small ConvBertForMaskedLM) + discriminator (ConvBertModel + RTD head), shared embeddings."""

    objective = "electra"

    def __init__(self, config: ConvBertConfig, *, special_ids: list[int], mask_id: int, pad_id: int,
                 mask_rate: float = 0.15, generator_fraction: float = 0.25, disc_weight: float = 50.0,
                 gen_weight: float = 1.0, temperature: float = 1.0):
        super().__init__(special_ids, mask_id, pad_id, mask_rate)
        self.discriminator = ConvBertModel(config)
        self.discriminator_head = ConvBertDiscriminatorPredictions(config)
        self.generator = ConvBertForMaskedLM(generator_config(config, generator_fraction))
        self.generator.convbert.embeddings = self.discriminator.embeddings  # shared, as in ELECTRA
        self.generator.tie_weights()
        self.disc_weight, self.gen_weight, self.temperature = disc_weight, gen_weight, temperature
        banned = torch.zeros(config.vocab_size, dtype=torch.bool)
        banned[[i for i in self.special_ids if 0 <= i < config.vocab_size]] = True
        self.register_buffer("banned_ids", banned, persistent=False)

    @property
    def config(self) -> ConvBertConfig:
        return self.discriminator.config

    @property
    def masked_lm(self) -> ConvBertForMaskedLM:
        return self.generator

    def make_batch(self, examples: dict[str, torch.Tensor], rng: torch.Generator) -> dict[str, torch.Tensor]:
        ids, labels = mask_tokens(examples["input_ids"], examples["attention_mask"], special_ids=self.special_ids,
                                  mask_id=self.mask_id, vocab_size=self.config.vocab_size, rng=rng,
                                  rate=self.mask_rate, mask_fraction=0.85, random_fraction=0.0)
        seed = int(torch.randint(0, 2**62, (1,), generator=rng))
        return {**self._inputs(examples, ids), "labels": labels, "sample_seed": torch.tensor(seed, dtype=torch.long)}

    def forward(self, input_ids, attention_mask, labels, sample_seed, position_ids=None) -> dict[str, torch.Tensor]:
        gen_logits, targets = _masked_lm_logits(self.generator, input_ids, attention_mask, labels, position_ids)
        gen_loss = F.cross_entropy(gen_logits.float(), targets)
        chosen = labels != -100
        with torch.no_grad():
            logits = gen_logits.float() / self.temperature
            logits = logits.masked_fill(self.banned_ids, float("-inf"))
            rng = torch.Generator(device=logits.device)
            rng.manual_seed(int(sample_seed))
            sampled = torch.multinomial(torch.softmax(logits, -1), 1, generator=rng).squeeze(-1)
            disc_input = input_ids.clone()
            disc_input[chosen] = sampled
            original = torch.where(chosen, labels, input_ids)
            replaced = (disc_input != original).float()
        hidden = self.discriminator(input_ids=disc_input, attention_mask=attention_mask,
                                    position_ids=position_ids).last_hidden_state
        disc_logits = self.discriminator_head(hidden).float()
        weights = (attention_mask != 0).float()  # packed documents are numbered 1, 2, ...
        per_token = F.binary_cross_entropy_with_logits(disc_logits, replaced, reduction="none")
        disc_loss = (per_token * weights).sum() / weights.sum().clamp(min=1)
        total = self.gen_weight * gen_loss + self.disc_weight * disc_loss
        # The trainer back-propagates "loss" and shows it first: the objective's gradient (total - its
        # detached value adds exactly 0), the generator MLM loss's value.
        loss = gen_loss.detach() + (total - total.detach())
        with torch.no_grad():
            disc_acc = (((disc_logits > 0).float() == replaced).float() * weights).sum() / weights.sum().clamp(min=1)
            gen_acc = (sampled == targets).float().mean()
        return {"loss": loss, "total_loss": total.detach(), "gen_loss": gen_loss.detach(),
                "disc_loss": disc_loss.detach(), "disc_acc": disc_acc, "gen_acc": gen_acc}

    def compile_models(self) -> None:
        self.generator.convbert.compile()
        self.discriminator.compile()

    def save_pretrained(self, directory: Path) -> None:
        """The discriminator (the model to fine-tune) in ``directory``, the generator in ``generator/``."""
        directory = Path(directory)
        self.discriminator.save_pretrained(directory)
        _save_tensors(self.discriminator_head.state_dict(), directory / DISCRIMINATOR_HEAD_FILE)
        self.generator.save_pretrained(directory / GENERATOR_DIR)

    def load_pretrained(self, directory: Path, strict: bool = True) -> None:
        directory = Path(directory)
        info = self.discriminator.load_pretrained_state_dict(load_state_dict_from_directory(directory))
        problems = []
        if info.missing_keys or info.unexpected_keys:
            problems.append(f"discriminator: missing {info.missing_keys}, unexpected {info.unexpected_keys}")
        head = directory / DISCRIMINATOR_HEAD_FILE
        if head.is_file():
            from safetensors.torch import load_file

            self.discriminator_head.load_state_dict(load_file(str(head)))
        elif strict:
            problems.append(f"no {DISCRIMINATOR_HEAD_FILE}")
        if (directory / GENERATOR_DIR).is_dir():
            g = self.generator.load_pretrained_state_dict(load_state_dict_from_directory(directory / GENERATOR_DIR))
            if g.missing_keys or g.unexpected_keys:
                problems.append(f"generator: missing {g.missing_keys}, unexpected {g.unexpected_keys}")
            # The generator's copy of the shared embeddings must not override the discriminator's.
            self.discriminator.load_pretrained_state_dict(load_state_dict_from_directory(directory))
        elif strict:
            problems.append(f"no {GENERATOR_DIR}/ directory")
        if strict and problems:
            raise ValueError(f"checkpoint {directory} does not match the ELECTRA model: " + "; ".join(problems))


def missing_weights(directory: Path, objective: str | None) -> list[str]:
    """The weight files a checkpoint of ``objective`` needs but ``directory`` lacks (empty when complete)."""
    from ..pretrained import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_NAME

    directory = Path(directory)
    parts = [directory, directory / GENERATOR_DIR] if objective == "electra" else [directory]
    missing = [str(d / SAFE_WEIGHTS_NAME) for d in parts
               if not any((d / n).is_file() for n in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME))]
    if objective == "electra" and not (directory / DISCRIMINATOR_HEAD_FILE).is_file():
        missing.append(str(directory / DISCRIMINATOR_HEAD_FILE))
    return missing


# --------------------------------------------------------------------------- fine-tuning


class FineTuned(nn.Module):
    """Any ConvBERT head (sequence or token classification, question answering, multiple choice)
    with the objectives' interface: ``forward(**batch)`` passes the batch, labels included, to the
    head and returns its loss."""

    objective = "finetune"

    def __init__(self, model: ConvBertPreTrainedModel):
        super().__init__()
        self.model = model

    @property
    def config(self) -> ConvBertConfig:
        return self.model.config

    @staticmethod
    def tokens_in(batch: dict[str, torch.Tensor]) -> int:
        return int((batch["attention_mask"] != 0).sum())

    def make_batch(self, examples: dict[str, Any], rng: torch.Generator) -> dict[str, torch.Tensor]:
        return examples

    def forward(self, **batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": self.model(**batch).loss}

    def compile_models(self) -> None:
        self.model.compile()

    def save_pretrained(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    def load_pretrained(self, directory: Path, strict: bool = True) -> None:
        info = self.model.load_pretrained_state_dict(load_state_dict_from_directory(Path(directory)))
        if strict and (info.missing_keys or info.unexpected_keys):
            raise ValueError(f"checkpoint {directory} does not match the model: missing {info.missing_keys}, "
                             f"unexpected {info.unexpected_keys}")
