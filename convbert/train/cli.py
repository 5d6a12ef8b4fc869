"""``convbert-train``: pre-train (ELECTRA or MLM) and fine-tune ConvBERT from the command line.

With no arguments it pre-trains a small ConvBERT on the docstrings of Python's standard library
with a WordPiece vocabulary trained on them, for a few minutes on CPU, and saves the result.
Run ``convbert-train pretrain --help`` / ``convbert-train finetune --help`` for every option.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..configuration import MODEL_SIZES  # cheap: keeps --help fast


# The embedded default: ConvBERT-small's width with 4 layers, 128-token blocks, sized so the
# run takes a few minutes on a 2-core CPU and its loss visibly falls.
DEFAULT_DEMO = dict(model_size="small", layers=4, seq_len=128, batch_size=16, max_steps=300, vocab_size=8000,
                    lr=1e-3, log_every=10)


class CliError(SystemExit):
    """A user error: exits with status 2 and the message on stderr."""

    def __init__(self, message: str):
        super().__init__(f"convbert-train: error: {message}")


# --------------------------------------------------------------------------- parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _add_common(p: argparse.ArgumentParser, *, lr: float, batch_size: int, seq_len: int) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model-size", choices=sorted(MODEL_SIZES), default=None,
                   help="a published ConvBERT size (tiny is for tests); default: small (pretrain)")
    g.add_argument("--config", type=Path, default=None, help="a config.json (Hugging Face keys) instead of --model-size")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set num_hidden_layers=4 (repeatable)")
    g.add_argument("--init-from", type=Path, default=None,
                   help="start from this checkpoint directory (config.json + weights, and its tokenizer)")
    g.add_argument("--tokenizer", type=Path, default=None, help="tokenizer directory (vocab.txt / tokenizer.json)")
    g.add_argument("--backend", default="auto",
                   help="convbert_kernels backend of the convolution: auto, triton, native, eager, reference")
    g.add_argument("--compile", action="store_true", help="torch.compile the models")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=_positive_int, default=batch_size, help="sequences per micro-batch per process")
    g.add_argument("--seq-len", type=_positive_int, default=seq_len, help="tokens per sequence")
    g.add_argument("--max-steps", type=_positive_int, default=None, help="optimizer steps (overrides --epochs)")
    g.add_argument("--epochs", type=float, default=None, help="passes over the training data")
    g.add_argument("--lr", type=float, default=lr, help="peak learning rate (AdamW)")
    g.add_argument("--warmup-steps", type=_nonneg_int, default=None, help="linear warmup steps")
    g.add_argument("--warmup-ratio", type=float, default=0.1, help="warmup as a fraction of the steps (if no --warmup-steps)")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--grad-accum", type=_positive_int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="autocast precision; fp16 uses dynamic loss scaling")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")

    g = p.add_argument_group("output")
    g.add_argument("--output-dir", type=Path, default=None,
                   help="where checkpoints, metrics and the final model go (default: runs/convbert-<cmd>-<time>)")
    g.add_argument("--save-every", type=_nonneg_int, default=0, help="checkpoint every N steps (0: final model only)")
    g.add_argument("--keep-checkpoints", type=_nonneg_int, default=2, help="checkpoints kept (0: all)")
    g.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from a checkpoint directory (default: the latest in --output-dir)")
    g.add_argument("--overwrite-output-dir", action="store_true",
                   help="allow an --output-dir that already holds a run (without --resume)")
    g.add_argument("--log-every", type=_positive_int, default=10, help="print a log line every N steps")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convbert-train",
        description="Pre-train or fine-tune ConvBERT with the fused span-dynamic-convolution kernels. "
                    "Without arguments: pre-train a small ConvBERT on the Python standard library's docstrings "
                    "for a few minutes on CPU. Under torchrun it trains with DistributedDataParallel.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{pretrain,finetune}")

    pre = sub.add_parser("pretrain", help="pre-train on plain text (ELECTRA replaced-token detection or MLM)",
                         description="Pre-train ConvBERT on plain-text files (one document per line, or documents "
                                     "separated by blank lines). Without --train-file: the standard library's "
                                     "docstrings.")
    pre.add_argument("--objective", choices=["electra", "mlm"], default="electra",
                     help="electra: generator + discriminator (as the paper); mlm: masked language modelling")
    pre.add_argument("--train-file", action="append", default=[], type=Path, help="plain-text file (repeatable)")
    pre.add_argument("--vocab-size", type=_positive_int, default=None,
                     help="train a WordPiece vocabulary of this size on the training text (default 8000 when "
                          "no --tokenizer)")
    pre.add_argument("--mask-rate", type=float, default=0.15)
    pre.add_argument("--disc-weight", type=float, default=50.0, help="ELECTRA discriminator loss weight")
    pre.add_argument("--generator-fraction", type=float, default=None,
                     help="generator width / discriminator width (default 1/3 for base, 1/4 otherwise)")
    pre.add_argument("--max-documents", type=_positive_int, default=None, help="use only the first N documents")
    _add_common(pre, lr=5e-4, batch_size=32, seq_len=128)

    fin = sub.add_parser("finetune", help="fine-tune for sequence classification or regression",
                         description="Fine-tune ConvBERT on labelled CSV / TSV / JSON-lines data.")
    fin.add_argument("--train-file", required=True, type=Path, help="labelled CSV, TSV or JSON lines")
    fin.add_argument("--eval-file", type=Path, default=None, help="labelled evaluation data (same format)")
    fin.add_argument("--text-column", default="text")
    fin.add_argument("--text-pair-column", default=None, help="second text of a sentence pair")
    fin.add_argument("--label-column", default="label")
    fin.add_argument("--task", choices=["auto", "classification", "regression"], default="auto",
                     help="auto: integer or string labels -> classification, other numbers -> regression")
    fin.add_argument("--num-labels", type=_positive_int, default=None, help="number of classes (default: from data)")
    fin.add_argument("--bad-rows", choices=["skip", "error"], default="skip",
                     help="malformed rows: skip and count them, or stop with an error")
    fin.add_argument("--data-format", choices=["auto", "csv", "tsv", "jsonl"], default="auto")
    fin.add_argument("--eval-every", type=_nonneg_int, default=0, help="evaluate every N steps (0: each epoch)")
    _add_common(fin, lr=1e-4, batch_size=32, seq_len=128)
    return parser


# --------------------------------------------------------------------------- helpers


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise CliError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def _model_config_values(args) -> dict[str, Any] | None:
    """The config keys asked for on the command line (None when nothing was asked)."""
    if args.config is not None and args.model_size is not None:
        raise CliError("pass --model-size or --config, not both")
    values: dict[str, Any] | None = None
    if args.config is not None:
        if not args.config.is_file():
            raise CliError(f"--config {str(args.config)!r} does not exist")
        try:
            values = json.loads(args.config.read_text())
        except json.JSONDecodeError as exc:
            raise CliError(f"--config {str(args.config)!r} is not valid JSON: {exc}")
        values.pop("model_type", None)
    elif args.model_size is not None:
        values = dict(MODEL_SIZES[args.model_size])
    overrides = _parse_overrides(args.overrides)
    if overrides:
        values = {**(values or {}), **overrides}
    return values


def _default_output_dir(command: str, env) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if env.distributed:
        import torch.distributed as dist

        box = [stamp]
        dist.broadcast_object_list(box, src=0)
        stamp = box[0]
    return Path("runs") / f"convbert-{command}-{stamp}"


def prepare_output_dir(path: Path, *, resume: bool, overwrite: bool) -> None:
    """Create the directory and make sure it is writable; refuse to mix with an earlier run."""
    if path.exists() and not path.is_dir():
        raise CliError(f"output directory {str(path)!r} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise CliError(f"cannot write to the output directory {str(path)!r}: {exc.strerror or exc}")
    from .loop import CHECKPOINTS, METRICS_FILE

    used = (path / CHECKPOINTS).is_dir() or (path / METRICS_FILE).exists() or (path / "config.json").exists()
    if used and not resume and not overwrite:
        raise CliError(f"output directory {str(path)!r} already holds a run; pass --resume to continue it or "
                       "--overwrite-output-dir to start over there")
    if overwrite and not resume:  # start over: the earlier run's metrics and checkpoints go
        import shutil

        (path / METRICS_FILE).unlink(missing_ok=True)
        shutil.rmtree(path / CHECKPOINTS, ignore_errors=True)


def _load_tokenizer(directory: Path):
    from .. import ConvBertTokenizerFast

    if not directory.is_dir():
        raise CliError(f"tokenizer directory {str(directory)!r} does not exist")
    try:
        return ConvBertTokenizerFast.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot load a tokenizer from {str(directory)!r}: {exc}")


def _start_run(command: str, args, env) -> tuple[Path, bool]:
    """Checks and output-directory set-up shared by both subcommands; returns (output_dir, resuming)."""
    output_dir = args.output_dir or _default_output_dir(command, env)
    resume = args.resume is not None
    if env.is_main:
        prepare_output_dir(output_dir, resume=resume, overwrite=args.overwrite_output_dir)
    env.barrier()
    _check_backend(args.backend, env.device)
    _precision_check(args, env.device)
    return output_dir, resume


def _check_backend(name: str, device) -> None:
    from convbert_kernels.backends import resolve_backend

    if name == "auto":
        return
    try:
        resolve_backend(name, device)  # loads only this backend (others may need a compiler)
    except ValueError as exc:
        raise CliError(f"--backend: {exc}")


def _steps(args, batches_per_epoch: int, default_epochs: float) -> int:
    if args.max_steps is not None:
        return args.max_steps
    epochs = args.epochs if args.epochs is not None else default_epochs
    if epochs <= 0:
        raise CliError(f"--epochs must be positive, got {epochs}")
    return max(1, math.ceil(epochs * batches_per_epoch / args.grad_accum))


def _loop_config(args, max_steps: int, output_dir: Path):
    from .loop import LoopConfig

    warmup = args.warmup_steps if args.warmup_steps is not None else int(round(args.warmup_ratio * max_steps))
    return LoopConfig(output_dir=output_dir, max_steps=max_steps, batch_size=args.batch_size,
                      grad_accum=args.grad_accum, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=warmup,
                      max_grad_norm=args.max_grad_norm, precision=args.precision, seed=args.seed,
                      save_every=args.save_every, keep_checkpoints=args.keep_checkpoints, log_every=args.log_every,
                      eval_every=getattr(args, "eval_every", 0), progress=not args.no_progress, compile=args.compile)


def _resume_dir(args, output_dir: Path) -> Path | None:
    from .loop import TRAINER_STATE, latest_checkpoint

    if args.resume is None:
        return None
    if args.resume == "latest":
        found = latest_checkpoint(output_dir)
        if found is None:
            raise CliError(f"--resume: no checkpoint in {str(output_dir / 'checkpoints')!r}")
        return found
    path = Path(args.resume)
    if not (path / TRAINER_STATE).is_file():
        raise CliError(f"--resume {str(path)!r} is not a training checkpoint (no {TRAINER_STATE})")
    return path


def _precision_check(args, device) -> None:
    import torch

    if args.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise CliError("--precision bf16 is not supported on this GPU; use fp16 or fp32")


def _run_info(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) and v and
                isinstance(v[0], Path) else v) for k, v in vars(args).items()}


def _say(env, message: str) -> None:
    if env.is_main:
        print(message, flush=True)


# --------------------------------------------------------------------------- pretrain


def run_pretrain(args, env) -> dict:
    import torch

    from ..configuration import ConvBertConfig
    from .data import BatchPlan, DataError, pack_documents, read_documents
    from .electra import ElectraPretrainer, MlmPretrainer
    from .loop import Trainer, set_seed

    output_dir, resume = _start_run("pretrain", args, env)

    # -- text
    if args.train_file:
        files = list(args.train_file)
    else:
        from .corpus import write_stdlib_corpus

        files = [output_dir / "stdlib_docstrings.txt"]
        if env.is_main and not files[0].is_file():
            _say(env, "gathering the Python standard library's docstrings as the training corpus ...")
            write_stdlib_corpus(files[0])
        env.barrier()
    try:
        documents = read_documents(files)
    except DataError as exc:
        raise CliError(str(exc))
    if args.max_documents:
        documents = documents[:args.max_documents]

    # -- tokenizer
    init_config = None
    if args.init_from is not None:
        if not (args.init_from / "config.json").is_file():
            raise CliError(f"--init-from {str(args.init_from)!r} is not a checkpoint directory (no config.json)")
        init_config = ConvBertConfig.from_pretrained(args.init_from)
    tok_dir = args.tokenizer
    if tok_dir is None and args.init_from is not None and (args.init_from / "vocab.txt").is_file():
        tok_dir = args.init_from
    if tok_dir is None:
        tok_dir = output_dir / "tokenizer"
        if env.is_main and not (resume and (tok_dir / "vocab.txt").is_file()):  # a resumed run keeps its vocabulary
            from .. import train_wordpiece_vocab

            vocab_size = args.vocab_size or 8000
            _say(env, f"training a WordPiece vocabulary of {vocab_size} on {len(files)} file(s) ...")
            train_wordpiece_vocab([str(f) for f in files], vocab_size, str(tok_dir))
        env.barrier()
    elif args.vocab_size is not None:
        raise CliError("--vocab-size trains a new vocabulary; it cannot be combined with --tokenizer/--init-from")
    tokenizer = _load_tokenizer(tok_dir)

    # -- model config
    asked = _model_config_values(args)
    if init_config is not None:
        if asked is not None:
            from .loop import check_same_config

            wanted = ConvBertConfig.from_dict({**init_config.to_dict(), **asked})
            check_same_config(init_config.to_dict(), wanted.to_dict(), f"--init-from {args.init_from}")
        values = init_config.to_dict()
        values.pop("model_type", None)
    else:
        values = asked if asked is not None else dict(MODEL_SIZES["small"])
    values.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, conv_backend=args.backend)
    values.setdefault("max_position_embeddings", 512)
    try:
        config = ConvBertConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise CliError(f"bad model config: {exc}")
    if init_config is not None and init_config.vocab_size != config.vocab_size:
        raise CliError(f"--init-from {str(args.init_from)!r} has vocab_size {init_config.vocab_size} but the "
                       f"tokenizer has {config.vocab_size} tokens")
    if args.seq_len > config.max_position_embeddings:
        raise CliError(f"--seq-len {args.seq_len} exceeds max_position_embeddings={config.max_position_embeddings}")

    # -- data
    try:
        blocks = pack_documents(tokenizer, documents, args.seq_len)
    except DataError as exc:
        raise CliError(str(exc))
    plan = BatchPlan(len(blocks["input_ids"]), args.batch_size, world_size=env.world_size, rank=env.rank,
                     seed=args.seed, shuffle=True, drop_last=True)
    max_steps = _steps(args, plan.batches_per_epoch, default_epochs=1.0)

    # -- model
    set_seed(args.seed)  # identical initial weights on every rank
    special = [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id]
    if args.objective == "electra":
        fraction = args.generator_fraction or (1 / 3 if config.hidden_size >= 768 else 1 / 4)
        module = ElectraPretrainer(config, special_ids=special, mask_id=tokenizer.mask_token_id,
                                   pad_id=tokenizer.pad_token_id, mask_rate=args.mask_rate,
                                   generator_fraction=fraction, disc_weight=args.disc_weight)
    else:
        module = MlmPretrainer(config, special_ids=special, mask_id=tokenizer.mask_token_id,
                               pad_id=tokenizer.pad_token_id, mask_rate=args.mask_rate)
    if args.init_from is not None and not resume:
        try:
            module.load_pretrained(args.init_from, strict=False)
        except Exception as exc:
            raise CliError(f"cannot initialise from {str(args.init_from)!r}: {exc}")
    if args.gradient_checkpointing:
        for m in module.modules():
            if hasattr(m, "gradient_checkpointing_enable"):
                m.gradient_checkpointing_enable()
    set_seed(args.seed + 1000 * env.rank)  # dropout differs across ranks

    n_params = sum(p.numel() for p in module.parameters())
    disc_params = sum(p.numel() for p in (module.discriminator.parameters() if args.objective == "electra"
                                          else module.model.parameters()))
    _say(env, f"corpus: {len(documents):,} documents -> {len(blocks['input_ids']):,} blocks of {args.seq_len} tokens "
              f"({int(blocks['attention_mask'].sum()):,} tokens); vocabulary {len(tokenizer):,}")
    _say(env, f"model: ConvBERT hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
              f"{config.num_heads} attention + {config.num_heads} conv heads, kernel {config.conv_kernel_size}; "
              f"{disc_params / 1e6:.2f}M parameters"
              + (f" (+ generator hidden {module.generator.config.hidden_size}: {n_params / 1e6:.2f}M in all)"
                 if args.objective == "electra" else "")
              + f"; objective {args.objective}; backend {args.backend}; device {env.device}"
              + (f" x {env.world_size} processes" if env.distributed else ""))
    _say(env, f"training: {max_steps} steps x {args.batch_size * args.grad_accum * env.world_size} sequences "
              f"(batch {args.batch_size} x accum {args.grad_accum} x {env.world_size} process(es)), lr {args.lr}, "
              f"{args.precision}; output {output_dir}")

    def fetch(indices):
        idx = torch.tensor(indices, dtype=torch.long)
        return {k: v[idx] for k, v in blocks.items()}

    trainer = Trainer(module, plan, fetch, _loop_config(args, max_steps, output_dir), env, tokenizer=tokenizer,
                      run_info=_run_info(args))
    summary = trainer.train(resume_from=_resume_dir(args, output_dir))
    _say(env, f"saved the model ({'discriminator; generator in generator/' if args.objective == 'electra' else 'masked LM'}"
              f") and tokenizer to {output_dir}")
    return summary


# --------------------------------------------------------------------------- finetune


def run_finetune(args, env) -> dict:
    import numpy as np
    import torch

    from ..configuration import ConvBertConfig
    from ..modeling import ConvBertForSequenceClassification
    from ..pretrained import CheckpointError
    from .data import (BatchPlan, DataError, collate_labelled, encode_labels, encode_texts, infer_label_scheme,
                       read_labelled)
    from .electra import SequenceClassifier
    from .loop import Trainer, check_same_config, set_seed
    from .metrics import classification_metrics, regression_metrics

    output_dir, resume = _start_run("finetune", args, env)
    if args.init_from is None and (args.tokenizer is None or (args.model_size is None and args.config is None)):
        raise CliError("finetune needs --init-from CHECKPOINT (or, to train from scratch, --tokenizer and "
                       "--model-size/--config)")

    # -- data
    try:
        train = read_labelled(args.train_file, args.text_column, args.label_column, args.text_pair_column,
                              bad_rows=args.bad_rows, data_format=args.data_format)
        evals = (read_labelled(args.eval_file, args.text_column, args.label_column, args.text_pair_column,
                               bad_rows=args.bad_rows, data_format=args.data_format)
                 if args.eval_file is not None else None)
        for d in (train, evals):
            if d is not None and d.skipped:
                _say(env, f"{d.path}: skipped {d.skipped} malformed row(s), e.g. " + "; ".join(d.skip_reasons[:3]))
    except DataError as exc:
        raise CliError(str(exc))

    # -- checkpoint, labels, config
    init_config = None
    if args.init_from is not None:
        if not (args.init_from / "config.json").is_file():
            raise CliError(f"--init-from {str(args.init_from)!r} is not a checkpoint directory (no config.json)")
        init_config = ConvBertConfig.from_pretrained(args.init_from)
    label_names = None
    if init_config is not None and "ConvBertForSequenceClassification" in (init_config.architectures or []):
        names = [init_config.id2label[i] for i in sorted(init_config.id2label)]
        if not all(n == f"LABEL_{i}" for i, n in enumerate(names)):
            label_names = names  # a fine-tuned checkpoint keeps its label names
    try:
        scheme = infer_label_scheme(train.labels, args.task, args.num_labels, label_names)
        train_labels = encode_labels(train, scheme)
        eval_labels = encode_labels(evals, scheme) if evals is not None else None
    except DataError as exc:
        raise CliError(str(exc))

    tok_dir = args.tokenizer or args.init_from
    tokenizer = _load_tokenizer(tok_dir)
    asked = _model_config_values(args)
    label_keys = dict(id2label=scheme.id2label(),
                      problem_type="regression" if scheme.task == "regression" else "single_label_classification")
    if init_config is not None:
        if asked is not None:
            wanted = ConvBertConfig.from_dict({**init_config.to_dict(), **asked})
            check_same_config(init_config.to_dict(), wanted.to_dict(), f"--init-from {args.init_from}")
        if init_config.vocab_size != len(tokenizer):
            raise CliError(f"--init-from {str(args.init_from)!r} has vocab_size {init_config.vocab_size} but the "
                           f"tokenizer in {str(tok_dir)!r} has {len(tokenizer)} tokens")
        values = init_config.to_dict()
        values.pop("label2id", None)
        values.pop("model_type", None)
        values.update(conv_backend=args.backend, **label_keys)
    else:
        values = {**asked, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                  "conv_backend": args.backend, **label_keys}
    try:
        config = ConvBertConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise CliError(f"bad model config: {exc}")
    if args.seq_len > config.max_position_embeddings:
        raise CliError(f"--seq-len {args.seq_len} exceeds max_position_embeddings={config.max_position_embeddings}")

    set_seed(args.seed)
    model = ConvBertForSequenceClassification(config)
    if args.init_from is not None:
        from ..pretrained import load_state_dict_from_directory

        try:
            state = load_state_dict_from_directory(args.init_from)
            prefix = "convbert."
            if not any(k.startswith(prefix) for k in state):
                pass  # a bare backbone (e.g. an ELECTRA discriminator): the loader adds the prefix
            # Keep only backbone weights (and a classifier of the same shape); MLM/generator heads are dropped.
            state = {k: v for k, v in state.items() if not k.startswith(("generator_", "discriminator_"))}
            info = model.load_pretrained_state_dict(state)
        except (CheckpointError, FileNotFoundError) as exc:
            raise CliError(f"cannot initialise from {str(args.init_from)!r}: {exc}")
        backbone_missing = [k for k in info.missing_keys if not k.startswith("classifier.")]
        if backbone_missing:
            raise CliError(f"--init-from {str(args.init_from)!r} lacks backbone weights: {backbone_missing[:5]}")
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    module = SequenceClassifier(model)
    set_seed(args.seed + 1000 * env.rank)

    encoded = encode_texts(tokenizer, train, args.seq_len)
    eval_encoded = encode_texts(tokenizer, evals, args.seq_len) if evals is not None else None
    regression = scheme.task == "regression"
    plan = BatchPlan(len(train.texts), args.batch_size, world_size=env.world_size, rank=env.rank, seed=args.seed,
                     shuffle=True, drop_last=False)
    max_steps = _steps(args, plan.batches_per_epoch, default_epochs=3.0)
    pad = tokenizer.pad_token_id

    _say(env, f"data: {len(train.texts):,} training examples"
              + (f", {len(evals.texts):,} eval examples" if evals else "")
              + f"; task {scheme.task}" + (f" with {scheme.num_labels} labels" if not regression else "")
              + (f" {scheme.names}" if scheme.names else ""))
    _say(env, f"model: from {args.init_from or 'scratch'}, hidden {config.hidden_size}, {config.num_hidden_layers} "
              f"layers; {max_steps} steps, batch {args.batch_size} x accum {args.grad_accum} x {env.world_size}; "
              f"output {output_dir}")

    def fetch(indices):
        return collate_labelled(encoded, train_labels, indices, pad, regression)

    def evaluate(mod) -> dict:
        preds, losses = [], []
        n = len(evals.texts)
        for start in range(0, n, args.batch_size * 2):
            idx = list(range(start, min(n, start + args.batch_size * 2)))
            batch = collate_labelled(eval_encoded, eval_labels, idx, pad, regression)
            batch = {k: v.to(env.device) for k, v in batch.items()}
            out = mod.model(**batch)
            losses.append(float(out.loss) * len(idx))
            preds.append(out.logits.float().cpu().numpy())
        logits = np.concatenate(preds)
        result = {"eval_loss": sum(losses) / n}
        if regression:
            result.update({f"eval_{k}": v for k, v in regression_metrics(logits[:, 0], eval_labels).items()})
        else:
            result.update({f"eval_{k}": v for k, v in classification_metrics(logits, eval_labels,
                                                                             scheme.num_labels).items()})
        return result

    trainer = Trainer(module, plan, fetch, _loop_config(args, max_steps, output_dir), env, tokenizer=tokenizer,
                      run_info=_run_info(args), evaluate=evaluate if evals is not None else None)
    summary = trainer.train(resume_from=_resume_dir(args, output_dir))
    if env.is_main and summary.get("eval"):
        (output_dir / "eval_results.json").write_text(json.dumps(summary["eval"], indent=2) + "\n")
    _say(env, f"saved the fine-tuned model and tokenizer to {output_dir}")
    return summary


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``convbert-train`` and ``python -m convbert.train``; returns the exit status."""
    run(argv)
    return 0


def run(argv: Sequence[str] | None = None) -> dict | None:
    """Parse ``argv`` (default: the command line) and train; returns the run summary (None for help)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    demo = not argv
    if demo:
        d = DEFAULT_DEMO
        argv = ["pretrain", "--model-size", d["model_size"], "--set", f"num_hidden_layers={d['layers']}",
                "--seq-len", str(d["seq_len"]), "--batch-size", str(d["batch_size"]), "--max-steps",
                str(d["max_steps"]), "--vocab-size", str(d["vocab_size"]), "--lr", str(d["lr"]),
                "--log-every", str(d["log_every"])]
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return None

    from .loop import cleanup_distributed, setup_distributed

    env = setup_distributed(args.device)
    if demo:
        _say(env, "convbert-train: no arguments, so pre-training a small ConvBERT (ELECTRA objective) on the Python "
                  "standard library's docstrings for a few minutes.\n  the same as: convbert-train " + " ".join(argv))
    try:
        if args.command == "pretrain":
            summary = run_pretrain(args, env)
        else:
            summary = run_finetune(args, env)
    finally:
        cleanup_distributed()
    if env.is_main and summary is not None:
        print(f"done: {summary['steps']} steps in {summary['elapsed_s']:.0f}s; final loss {summary['final_loss']:.4f}"
              + (f"; eval {summary['eval']}" if summary.get("eval") else ""), flush=True)
    return summary
