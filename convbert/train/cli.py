"""``convbert-train``: pre-train (ELECTRA or MLM) and fine-tune ConvBERT from the command line.

With no arguments it pre-trains a small ConvBERT on the docstrings of Python's standard library
with a WordPiece vocabulary trained on them, for a few minutes on CPU, and saves the result.
Run ``convbert-train pretrain --help`` / ``convbert-train finetune --help`` for every option.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..configuration import MODEL_SIZES, ConvBertConfig  # cheap: keeps --help fast


# The embedded default: ConvBERT-small's width with 4 layers, 128-token blocks, sized so the
# run takes a few minutes on a 2-core CPU and its loss visibly falls.
DEFAULT_DEMO = ["pretrain", "--model-size", "small", "--set", "num_hidden_layers=4", "--seq-len", "128", "--batch-size",
                "16", "--max-steps", "300", "--vocab-size", "8000", "--lr", "0.001", "--log-every", "10"]


class CliError(SystemExit):
    """A user error: exits with status 1 and the message on stderr (argparse's own usage errors exit 2)."""

    def __init__(self, message: str):
        super().__init__(f"convbert-train: error: {message}")


# --------------------------------------------------------------------------- parser


def _int_from(low: int, what: str = "", high: int | None = None):
    """An argparse type: an integer in [low, high] (``what`` explains the bound in the message)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}{what}, got {text}")
        return value
    return parse


def _float_in(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False):
    """An argparse type: a finite float in the interval from ``low`` to ``high`` (None: no upper bound)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            if high is None:
                span = f"{'>' if low_open else '>='} {low:g}"
            else:
                span = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be a finite number {span}, got {text}")
        return value
    return parse


_positive_int = _int_from(1)
_nonneg_int = _int_from(0)
_seq_len = _int_from(8, " ([CLS], [SEP] and some text)")


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
    g.add_argument("--unpad", action=argparse.BooleanOptionalAction, default=None,
                   help="drop the padding after the embeddings and run every layer on the real tokens only "
                        "(config unpad_inputs: the numbers of the padded model with conv_mask_padding, faster "
                        "when lengths vary). Default: on when the model's config has conv_mask_padding=true, off "
                        "otherwise (a Hugging Face checkpoint keeps its semantics, where padding leaks into the "
                        "convolution windows of the tokens near it). --unpad on such a model also sets "
                        "conv_mask_padding=true, which changes its outputs from the Hugging Face model's; "
                        "--no-unpad runs the padded model. Saved in the model's config.json")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=_positive_int, default=batch_size, help="sequences per micro-batch per process")
    g.add_argument("--seq-len", type=_seq_len, default=seq_len, help="tokens per sequence (>= 8)")
    g.add_argument("--max-steps", type=_positive_int, default=None, help="optimizer steps (overrides --epochs)")
    g.add_argument("--epochs", type=_float_in(0, low_open=True), default=None, help="passes over the training data")
    g.add_argument("--lr", type=_float_in(0, 1, low_open=True), default=lr, help="peak learning rate (AdamW)")
    g.add_argument("--warmup-steps", type=_nonneg_int, default=None, help="linear warmup steps")
    g.add_argument("--warmup-ratio", type=_float_in(0, 1), default=0.1,
                   help="warmup as a fraction of the steps (if no --warmup-steps)")
    g.add_argument("--weight-decay", type=_float_in(0, 1), default=0.01, help="AdamW weight decay")
    g.add_argument("--grad-accum", type=_positive_int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="autocast precision; fp16 uses dynamic loss scaling")
    g.add_argument("--max-grad-norm", type=_float_in(0), default=1.0, help="gradient clipping (0: off)")
    g.add_argument("--seed", type=_int_from(0, high=2**63 - 1), default=42)
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
    pre.add_argument("--vocab-size", type=_int_from(6, " (the 5 special tokens and more)"), default=None,
                     help="train a WordPiece vocabulary of this size on the training text (default 8000 when "
                          "no --tokenizer)")
    pre.add_argument("--mask-rate", type=_float_in(0, 1, low_open=True, high_open=True), default=0.15,
                     help="fraction of the tokens masked")
    pre.add_argument("--disc-weight", type=_float_in(0), default=50.0, help="ELECTRA discriminator loss weight")
    pre.add_argument("--generator-fraction", type=_float_in(0, 1, low_open=True), default=None,
                     help="generator width / discriminator width (default 1/3 for base, 1/4 otherwise)")
    pre.add_argument("--max-documents", type=_positive_int, default=None, help="use only the first N documents")
    pre.add_argument("--pack-documents", action="store_true",
                     help="pack several whole documents into each block, none seeing another (attention and "
                          "convolution windows stay inside a document, positions restart at 0, a document "
                          "longer than a block is cut into pieces): trains the model on text as it will see it "
                          "later, one document at a time. Turns on conv_mask_padding and unpad_inputs in the "
                          "model's config. Default: the documents are concatenated, [SEP] between them, and cut "
                          "into blocks")
    pre.add_argument("--held-out", type=_float_in(0, 0.5), default=0.02,
                     help="fraction of the documents kept out of training for a masked-token evaluation at the "
                          "start and the end (0: none)")
    _add_common(pre, lr=5e-4, batch_size=32, seq_len=128)

    fin = sub.add_parser("finetune", help="fine-tune a head: sequence or token classification, question answering, "
                                          "multiple choice",
                         description="Fine-tune ConvBERT from --init-from a checkpoint. Data: CSV / TSV / JSON lines "
                                     "(sequence classification), JSON lines or CoNLL (token classification), SQuAD "
                                     "JSON or JSON lines (question answering), JSON lines or SWAG CSV (multiple "
                                     "choice).")
    fin.add_argument("--task", choices=list(TASKS) + list(LABEL_TYPES), default="sequence-classification",
                     help="the head to train. sequence-classification: integer or string labels -> classes, other "
                          "numbers -> regression (auto); 'classification' and 'regression' force the label type")
    fin.add_argument("--train-file", required=True, type=Path, help="labelled training data")
    fin.add_argument("--eval-file", type=Path, default=None, help="labelled evaluation data (same format)")
    fin.add_argument("--bad-rows", choices=["skip", "error"], default="skip",
                     help="malformed rows: skip and count them, or stop with an error")
    fin.add_argument("--data-format", choices=["auto", "csv", "tsv", "jsonl", "conll", "json"], default="auto",
                     help="auto: from the extension (json: SQuAD's layout)")
    fin.add_argument("--eval-every", type=_nonneg_int, default=0, help="evaluate every N steps (0: each epoch)")
    g = fin.add_argument_group("sequence classification")
    g.add_argument("--text-column", default="text")
    g.add_argument("--text-pair-column", default=None, help="second text of a sentence pair")
    g.add_argument("--label-column", default="label")
    g.add_argument("--num-labels", type=_int_from(2), default=None, help="number of classes (default: from data)")
    g = fin.add_argument_group("token classification")
    g.add_argument("--tokens-column", default="tokens", help="JSON lines: the list of words")
    g.add_argument("--tags-column", default="tags", help="JSON lines: the list of tags, one per word")
    g.add_argument("--label-all-tokens", action="store_true",
                   help="put a word's label on all its sub-tokens (B-X continued as I-X), not only the first")
    g = fin.add_argument_group("question answering")
    g.add_argument("--max-seq-length", dest="seq_len", type=_seq_len, default=argparse.SUPPRESS,
                   help="--seq-len under transformers' name: tokens per window")
    g.add_argument("--doc-stride", type=_nonneg_int, default=None,
                   help="tokens shared by consecutive windows of a long context (default: min(128, seq-len / 4))")
    g.add_argument("--max-answer-length", type=_positive_int, default=30, help="longest answer, in tokens")
    g.add_argument("--n-best", type=_positive_int, default=20,
                   help="start and end positions considered per window (and answers kept in nbest_predictions.json)")
    _add_common(fin, lr=1e-4, batch_size=32, seq_len=128)
    return parser


# finetune --task: the heads; "auto" / "classification" / "regression" are sequence classification
# with the label type inferred or forced (the option's older values).
TASKS = ("sequence-classification", "token-classification", "question-answering", "multiple-choice")
LABEL_TYPES = ("auto", "classification", "regression")


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
        with _user_errors(json.JSONDecodeError, f"--config {str(args.config)!r} is not valid JSON: "):
            values = json.loads(args.config.read_text())
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
    from .loop import CHECKPOINTS, METRICS_FILE, OutputDirLocked, claim_output_dir, discard

    with _user_errors(OutputDirLocked):  # held until the run ends (run() releases it); cleans killed runs' leftovers
        claim_output_dir(path)
    used = (path / CHECKPOINTS).is_dir() or (path / METRICS_FILE).exists() or (path / "config.json").exists()
    if used and not resume and not overwrite:
        raise CliError(f"output directory {str(path)!r} already holds a run; pass --resume to continue it or "
                       "--overwrite-output-dir to start over there")
    if overwrite and not resume:  # start over: the earlier run's metrics and checkpoints go
        (path / METRICS_FILE).unlink(missing_ok=True)
        discard(path / CHECKPOINTS)


def _load_tokenizer(directory: Path):
    from .. import ConvBertTokenizerFast

    if not directory.is_dir():
        raise CliError(f"tokenizer directory {str(directory)!r} does not exist")
    with _user_errors((OSError, ValueError), f"cannot load a tokenizer from {str(directory)!r}: "):
        return ConvBertTokenizerFast.from_pretrained(str(directory))


def _start_run(command: str, args, env) -> tuple[Path, bool]:
    """Checks and output-directory set-up shared by both subcommands; returns (output_dir, resuming)."""
    output_dir = args.output_dir or _default_output_dir(command, env)
    resume = args.resume is not None
    if env.is_main:
        prepare_output_dir(output_dir, resume=resume, overwrite=args.overwrite_output_dir)
    env.barrier()
    _check_device_options(args, env.device)
    return output_dir, resume


def _check_device_options(args, device) -> None:
    import torch
    from convbert_kernels.backends import resolve_backend

    if args.backend != "auto":
        with _user_errors(ValueError, "--backend: "):
            resolve_backend(args.backend, device)  # loads only this backend (others may need a compiler)
    if args.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise CliError("--precision bf16 is not supported on this GPU; use fp16 or fp32")


def _resume_dir(args, output_dir: Path) -> Path | None:
    from .loop import TRAINER_STATE, latest_checkpoint

    if args.resume is None:
        return None
    if args.resume == "latest":
        path = latest_checkpoint(output_dir)
        if path is None:
            raise CliError(f"--resume: no checkpoint in {str(output_dir / 'checkpoints')!r}")
    else:
        path = Path(args.resume)
        if not (path / TRAINER_STATE).is_file():
            raise CliError(f"--resume {str(path)!r} is not a training checkpoint (no {TRAINER_STATE})")
    from .electra import missing_weights

    missing = missing_weights(path, getattr(args, "objective", None))
    if missing:
        raise CliError(f"--resume {str(path)!r} is an incomplete checkpoint: no {', '.join(missing)}")
    return path


def _run_info(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) and v and
                isinstance(v[0], Path) else v) for k, v in vars(args).items()}


def _say(env, message: str) -> None:
    if env.is_main:
        print(message, flush=True)


@contextlib.contextmanager
def _user_errors(errors, prefix: str = ""):
    """Report ``errors`` raised inside as a CliError: ``prefix`` and the error's message."""
    try:
        yield
    except errors as exc:
        raise CliError(f"{prefix}{exc}")


def _init_config(args):
    if args.init_from is None:
        return None
    if not (args.init_from / "config.json").is_file():
        raise CliError(f"--init-from {str(args.init_from)!r} is not a checkpoint directory (no config.json)")
    return ConvBertConfig.from_pretrained(args.init_from)


def _model_config(args, init_config, tokenizer, tokenizer_name: str, **keys):
    """The --init-from config (what is asked for must agree with it), else the one asked for; plus ``keys``."""
    from .loop import check_same_config

    asked = _model_config_values(args)
    if init_config is None:
        values = asked if asked is not None else dict(MODEL_SIZES["small"])
    else:
        if asked is not None:
            wanted = ConvBertConfig.from_dict({**init_config.to_dict(), **asked})
            check_same_config(init_config.to_dict(), wanted.to_dict(), f"--init-from {args.init_from}")
        if init_config.vocab_size != len(tokenizer):
            raise CliError(f"--init-from {str(args.init_from)!r} has vocab_size {init_config.vocab_size} but "
                           f"{tokenizer_name} has {len(tokenizer)} tokens")
        values = init_config.to_dict()
        values.pop("model_type", None)
    values.update(keys)
    values.update(_padding_keys(args, values))
    with _user_errors((TypeError, ValueError), "bad model config: "):
        config = ConvBertConfig.from_dict(values)
    if args.seq_len > config.max_position_embeddings:
        raise CliError(f"--seq-len {args.seq_len} exceeds max_position_embeddings={config.max_position_embeddings}")
    return config


def _padding_keys(args, values: dict[str, Any]) -> dict[str, bool]:
    """The config keys of --unpad / --no-unpad (and --pack-documents, which needs unpadding) for a
    model config ``values``: by default unpad exactly when it has conv_mask_padding=true."""
    unpad = getattr(args, "unpad", None)
    if getattr(args, "pack_documents", False):
        if unpad is False:
            raise CliError("--pack-documents needs the unpadded model (documents share a block); drop --no-unpad")
        unpad = True
    if unpad is None:  # (--set unpad_inputs=true asks for it too)
        unpad = values.get("conv_mask_padding") is True or values.get("unpad_inputs") is True
    return {"unpad_inputs": True, "conv_mask_padding": True} if unpad else {"unpad_inputs": False}


def _padding_path(config) -> str:
    """One line saying how the model treats padding (for the run's description)."""
    if config.unpad_inputs:
        return ("padding: dropped after the embeddings, every layer runs on the real tokens only (unpad_inputs; "
                "--no-unpad runs the padded model)")
    if config.conv_mask_padding:
        return "padding: kept, masked out of the convolutions (conv_mask_padding; --unpad drops it, same numbers)"
    return ("padding: kept, Hugging Face semantics: it leaks into the convolution windows of the tokens near it "
            "(--unpad masks it out and drops it)")


def _build_module(args, env, build):
    from .loop import set_seed

    set_seed(args.seed)  # identical initial weights on every rank
    module = build()
    if args.gradient_checkpointing:
        for m in module.modules():
            if hasattr(m, "gradient_checkpointing_enable"):
                m.gradient_checkpointing_enable()
    set_seed(args.seed + 1000 * env.rank)  # dropout differs across ranks
    return module


def _plan(args, env, examples: int, *, drop_last: bool, default_epochs: float):
    from .data import BatchPlan

    plan = BatchPlan(examples, args.batch_size, world_size=env.world_size, rank=env.rank, seed=args.seed,
                     shuffle=True, drop_last=drop_last)
    if args.max_steps is not None:
        return plan, args.max_steps
    epochs = args.epochs if args.epochs is not None else default_epochs
    if epochs <= 0:
        raise CliError(f"--epochs must be positive, got {epochs}")
    return plan, max(1, math.ceil(epochs * plan.batches_per_epoch / args.grad_accum))


def _train(args, env, module, plan, fetch, max_steps: int, output_dir: Path, tokenizer, evaluate=None) -> dict:
    from .loop import LoopConfig, Trainer

    warmup = args.warmup_steps if args.warmup_steps is not None else int(round(args.warmup_ratio * max_steps))
    cfg = LoopConfig(output_dir=output_dir, max_steps=max_steps, batch_size=args.batch_size,
                     grad_accum=args.grad_accum, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=warmup,
                     max_grad_norm=args.max_grad_norm, precision=args.precision, seed=args.seed,
                     save_every=args.save_every, keep_checkpoints=args.keep_checkpoints, log_every=args.log_every,
                     eval_every=getattr(args, "eval_every", 0), progress=not args.no_progress, compile=args.compile)
    trainer = Trainer(module, plan, fetch, cfg, env, tokenizer=tokenizer, run_info=_run_info(args), evaluate=evaluate)
    return trainer.train(resume_from=_resume_dir(args, output_dir))


# --------------------------------------------------------------------------- pretrain


def run_pretrain(args, env) -> dict:
    import torch

    from .data import DataError, pack_documents, pack_whole_documents

    output_dir, resume = _start_run("pretrain", args, env)
    files, documents = _pretrain_corpus(args, env)
    documents, held_out = _split_held_out(documents, args.held_out)
    init_config = _init_config(args)
    tokenizer = _pretrain_tokenizer(args, env, files, output_dir, resume)
    config = _model_config(args, init_config, tokenizer, "the tokenizer", vocab_size=len(tokenizer),
                           pad_token_id=tokenizer.pad_token_id, conv_backend=args.backend)
    source = ", ".join(repr(str(f)) for f in files)
    pack = pack_whole_documents if args.pack_documents else pack_documents
    with _user_errors(DataError):
        blocks = pack(tokenizer, documents, args.seq_len, source=source)
        held = pack(tokenizer, held_out, args.seq_len, source=source) if held_out else None
    plan, max_steps = _plan(args, env, len(blocks["input_ids"]), drop_last=True, default_epochs=1.0)
    module = _build_module(args, env, lambda: _pretrainer(args, config, tokenizer, resume))
    _describe_pretraining(args, env, documents, blocks, tokenizer, module, max_steps, output_dir)

    def fetch(indices):
        idx = torch.tensor(indices, dtype=torch.long)
        return {k: v[idx] for k, v in blocks.items()}

    first = None if resume else _held_out_eval(args, env, module, held, len(held_out), 0, output_dir)
    summary = _train(args, env, module, plan, fetch, max_steps, output_dir, tokenizer)
    summary["eval"] = _held_out_eval(args, env, module, held, len(held_out), summary["steps"], output_dir, first)
    _say(env, f"saved the model ({'discriminator; generator in generator/' if args.objective == 'electra' else 'masked LM'}"
              f") and tokenizer to {output_dir}")
    return summary


def cache_dir() -> Path:
    """Where generated inputs are kept between runs (never in a run directory): $CONVBERT_CACHE, else
    $XDG_CACHE_HOME/convbert, else ~/.cache/convbert."""
    if os.environ.get("CONVBERT_CACHE"):
        return Path(os.environ["CONVBERT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "convbert"


def stdlib_corpus_path() -> Path:
    """The cached docstring corpus of this Python (keyed by its version, its stdlib and corpus.py)."""
    import hashlib

    from . import corpus

    key = hashlib.sha256(f"{sys.version}|{sys.base_prefix}|".encode() + Path(corpus.__file__).read_bytes())
    return cache_dir() / f"stdlib_docstrings-py{sys.version_info[0]}.{sys.version_info[1]}-{key.hexdigest()[:12]}.txt"


def _pretrain_corpus(args, env):
    from .data import DataError, read_documents

    if args.train_file:
        files = list(args.train_file)
    else:
        from .corpus import write_stdlib_corpus

        files = [stdlib_corpus_path()]
        if env.is_main and not files[0].is_file():
            _say(env, f"gathering the Python standard library's docstrings as the training corpus into {files[0]} "
                      "(kept for later runs) ...")
            with _user_errors(OSError, "cannot write the corpus cache (set CONVBERT_CACHE to a writable directory): "):
                write_stdlib_corpus(files[0])
        env.barrier()
    with _user_errors(DataError):
        documents = read_documents(files)
    return files, documents[:args.max_documents] if args.max_documents else documents


def _split_held_out(documents: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(training, held-out) documents: every (1/fraction)-th document is held out, spread over the
    corpus and the same in every run; none when the corpus is too small for one."""
    step = max(2, round(1 / fraction)) if fraction > 0 else 0
    held = documents[step - 1::step] if step else []
    if not held:
        return documents, []
    return [d for i, d in enumerate(documents) if (i + 1) % step], held


HELD_OUT_BLOCKS = 64  # the evaluation scores at most this many held-out blocks, so it takes seconds


def _held_out_eval(args, env, module, held, n_docs: int, step: int, output_dir: Path, before=None) -> dict | None:
    """Masked-token accuracy on the held-out blocks (rank 0): printed and written to metrics.jsonl."""
    if held is None:
        return None
    result = None
    if env.is_main:
        from .loop import append_metrics

        held = {k: v[:HELD_OUT_BLOCKS] for k, v in held.items()}
        module.to(env.device)
        result = module.evaluate_masked_lm(held, batch_size=2 * args.batch_size, seed=args.seed)
        append_metrics(output_dir, {"type": "eval", "step": step, **result})

        def was(key: str) -> str:
            return f" (step 0: {before[key]:.4f})" if before else ""

        _say(env, f"held-out eval @ step {step}: masked-token accuracy {result['eval_masked_acc']:.4f}"
                  f"{was('eval_masked_acc')}, MLM loss {result['eval_mlm_loss']:.4f}{was('eval_mlm_loss')} "
                  f"({result['eval_masked_tokens']:,} masked tokens in {len(held['input_ids'])} blocks of the "
                  f"{n_docs:,} documents not trained on)")
    env.barrier()
    return result


def _pretrain_tokenizer(args, env, files, output_dir: Path, resume: bool):
    """--tokenizer, else the vocabulary of --init-from, else (resuming) the checkpoint's, else a WordPiece
    vocabulary trained on ``files`` and saved once, in the run directory, where the final model's goes."""
    tok_dir = args.tokenizer
    if tok_dir is None and args.init_from is not None and (args.init_from / "vocab.txt").is_file():
        tok_dir = args.init_from
    if tok_dir is not None:
        if args.vocab_size is not None:
            raise CliError("--vocab-size trains a new vocabulary; it cannot be combined with --tokenizer/--init-from")
        return _load_tokenizer(tok_dir)
    if resume:  # a resumed run keeps its vocabulary (earlier versions kept it in tokenizer/)
        for tok_dir in (_resume_dir(args, output_dir), output_dir / "tokenizer"):
            if (tok_dir / "vocab.txt").is_file():
                return _load_tokenizer(tok_dir)
    if env.is_main:
        from .. import train_wordpiece_vocab

        vocab_size = args.vocab_size or 8000
        _say(env, f"training a WordPiece vocabulary of {vocab_size} on {len(files)} file(s) ...")
        with _user_errors(ValueError):
            train_wordpiece_vocab([str(f) for f in files], vocab_size, str(output_dir))
    env.barrier()
    return _load_tokenizer(output_dir)


def _pretrainer(args, config, tokenizer, resume: bool):
    from .electra import ElectraPretrainer, MlmPretrainer

    special = [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id]
    ids = dict(special_ids=special, mask_id=tokenizer.mask_token_id, pad_id=tokenizer.pad_token_id)
    if args.objective == "electra":
        fraction = args.generator_fraction or (1 / 3 if config.hidden_size >= 768 else 1 / 4)
        module = ElectraPretrainer(config, **ids, mask_rate=args.mask_rate, generator_fraction=fraction,
                                   disc_weight=args.disc_weight)
    else:
        module = MlmPretrainer(config, **ids, mask_rate=args.mask_rate)
    if args.init_from is not None and not resume:
        with _user_errors(Exception, f"cannot initialise from {str(args.init_from)!r}: "):
            module.load_pretrained(args.init_from, strict=False)
    return module


def _describe_pretraining(args, env, documents, blocks, tokenizer, module, max_steps: int, output_dir: Path) -> None:
    config, electra = module.config, args.objective == "electra"
    n_params = sum(p.numel() for p in module.parameters())
    disc_params = sum(p.numel() for p in (module.discriminator if electra else module.model).parameters())
    real = blocks["attention_mask"] != 0
    if args.pack_documents:
        packing = (f"{int(blocks['attention_mask'].amax(dim=1).sum()):,} documents or pieces packed whole, "
                   f"{float(real.float().mean()):.1%} of the positions filled")
    else:
        packing = "documents concatenated with [SEP] between them"
    _say(env, f"corpus: {len(documents):,} documents -> {len(blocks['input_ids']):,} blocks of {args.seq_len} tokens "
              f"({int(real.sum()):,} tokens; {packing}); vocabulary {len(tokenizer):,}")
    _say(env, f"model: ConvBERT hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
              f"{config.num_heads} attention + {config.num_heads} conv heads, kernel {config.conv_kernel_size}; "
              f"{disc_params / 1e6:.2f}M parameters"
              + (f" (+ generator hidden {module.generator.config.hidden_size}: {n_params / 1e6:.2f}M in all)"
                 if electra else "")
              + f"; objective {args.objective}; backend {args.backend}; device {env.device}"
              + (f" x {env.world_size} processes" if env.distributed else ""))
    _say(env, _padding_path(config))
    _say(env, f"training: {max_steps} steps x {args.batch_size * args.grad_accum * env.world_size} sequences "
              f"(batch {args.batch_size} x accum {args.grad_accum} x {env.world_size} process(es)), lr {args.lr}, "
              f"{args.precision}; output {output_dir}")
    if electra:
        _say(env, f"log: loss is the generator's masked-LM loss (it falls as the model learns); total_loss = loss + "
                  f"{args.disc_weight:g} x disc_loss is what is optimised")


# --------------------------------------------------------------------------- finetune


def run_finetune(args, env) -> dict:
    from .data import collate_labelled, encode_texts

    output_dir, _ = _start_run("finetune", args, env)
    if args.init_from is None and (args.tokenizer is None or (args.model_size is None and args.config is None)):
        raise CliError("finetune needs --init-from CHECKPOINT (or, to train from scratch, --tokenizer and "
                       "--model-size/--config)")
    if args.task in TASKS[1:]:
        return _run_task(args, env, output_dir)
    train, evals = _labelled_data(args, env)
    init_config = _init_config(args)
    scheme, train_labels, eval_labels = _labels(args, init_config, train, evals)
    tok_dir = args.tokenizer or args.init_from
    tokenizer = _load_tokenizer(tok_dir)
    keys = dict(conv_backend=args.backend, id2label=scheme.id2label(),
                problem_type="regression" if scheme.task == "regression" else "single_label_classification")
    if init_config is None:
        keys.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    else:
        keys.update(label2id=None)  # the checkpoint's goes: derived from the new id2label
    config = _model_config(args, init_config, tokenizer, f"the tokenizer in {str(tok_dir)!r}", **keys)
    module = _build_module(args, env, lambda: _fine_tuned(args, config, "ConvBertForSequenceClassification",
                                                         init_config))
    encoded = encode_texts(tokenizer, train, args.seq_len)
    evaluate = _evaluator(args, env, tokenizer, evals, eval_labels, scheme) if evals is not None else None
    plan, max_steps = _plan(args, env, len(train.texts), drop_last=False, default_epochs=3.0)
    _describe_finetuning(args, env, train, evals, scheme, config, max_steps, output_dir)
    pad, regression = tokenizer.pad_token_id, scheme.task == "regression"

    def fetch(indices):
        return collate_labelled(encoded, train_labels, indices, pad, regression)

    summary = _train(args, env, module, plan, fetch, max_steps, output_dir, tokenizer, evaluate)
    return _finish_finetuning(env, summary, output_dir)


def _finish_finetuning(env, summary: dict, output_dir: Path) -> dict:
    if env.is_main and summary.get("eval"):
        from .loop import write_atomic

        write_atomic(output_dir / "eval_results.json", json.dumps(summary["eval"], indent=2) + "\n")
    _say(env, f"saved the fine-tuned model and tokenizer to {output_dir}")
    return summary


def _run_task(args, env, output_dir: Path) -> dict:
    """finetune --task token-classification / question-answering / multiple-choice."""
    init_config = _init_config(args)
    tok_dir = args.tokenizer or args.init_from
    tokenizer = _load_tokenizer(tok_dir)
    task = _make_task(args, env, tokenizer, init_config, output_dir)
    keys = dict(conv_backend=args.backend, **task.config_keys())
    if init_config is None:
        keys.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    config = _model_config(args, init_config, tokenizer, f"the tokenizer in {str(tok_dir)!r}", **keys)
    module = _build_module(args, env, lambda: _fine_tuned(args, config, task.model_class.__name__, init_config))
    evaluate = None
    if task.evals is not None:
        def evaluate(mod) -> dict:
            return task.evaluate(mod, batch_size=2 * args.batch_size, device=env.device)
    plan, max_steps = _plan(args, env, task.num_examples, drop_last=False, default_epochs=3.0)
    _say(env, f"data: {task.describe()}; {task.num_examples:,} training features"
              + (f", evaluation on {str(args.eval_file)!r}" if task.evals is not None else ""))
    _say(env, f"model: {task.model_class.__name__} from {args.init_from or 'scratch'}, hidden {config.hidden_size}, "
              f"{config.num_hidden_layers} layers; {max_steps} steps, batch {args.batch_size} x accum "
              f"{args.grad_accum} x {env.world_size}; output {output_dir}")
    _say(env, f"batches: each padded to its longest sequence; {_padding_path(config)}")
    summary = _train(args, env, module, plan, task.fetch, max_steps, output_dir, tokenizer, evaluate)
    return _finish_finetuning(env, summary, output_dir)


def _make_task(args, env, tokenizer, init_config, output_dir: Path):
    from .data import DataError
    from .task_data import read_multiple_choice, read_question_answering, read_token_classification

    options = dict(bad_rows=args.bad_rows, data_format=args.data_format)
    with _user_errors(DataError):
        if args.task == "token-classification":
            train, evals = [read_token_classification(path, args.tokens_column, args.tags_column, **options)
                            if path else None for path in (args.train_file, args.eval_file)]
        elif args.task == "question-answering":
            train, evals = [read_question_answering(path, **options) if path else None
                            for path in (args.train_file, args.eval_file)]
        else:
            train, evals = [read_multiple_choice(path, **options) if path else None
                            for path in (args.train_file, args.eval_file)]
        task = _task(args, tokenizer, init_config, output_dir, env, train, evals)
    for data in (train, evals):
        if data is not None and data.skipped:
            _say(env, f"{data.path}: skipped {data.skipped} malformed row(s), e.g. " + "; ".join(data.skip_reasons[:3]))
    return task


def _task(args, tokenizer, init_config, output_dir: Path, env, train, evals):
    """The task object of --task (see ``convbert.train.tasks``) over the data read."""
    from .multiple_choice import MultipleChoiceTask
    from .question_answering import QuestionAnsweringTask
    from .token_classification import TokenClassificationTask

    if args.task == "token-classification":
        names = None
        if init_config is not None and "ConvBertForTokenClassification" in (init_config.architectures or []):
            names = [init_config.id2label[i] for i in sorted(init_config.id2label)]
        return TokenClassificationTask(tokenizer, train, evals, seq_len=args.seq_len, label_names=names,
                                       label_all_tokens=args.label_all_tokens, bad_rows=args.bad_rows)
    if args.task == "question-answering":
        stride = args.doc_stride if args.doc_stride is not None else min(128, args.seq_len // 4)
        return QuestionAnsweringTask(tokenizer, train, evals, seq_len=args.seq_len, doc_stride=stride,
                                     max_answer_length=args.max_answer_length, n_best=args.n_best,
                                     output_dir=output_dir if env.is_main else None, bad_rows=args.bad_rows)
    return MultipleChoiceTask(tokenizer, train, evals, seq_len=args.seq_len)


def _labelled_data(args, env):
    from .data import DataError, read_labelled

    with _user_errors(DataError):
        train, evals = [read_labelled(path, args.text_column, args.label_column, args.text_pair_column,
                                      bad_rows=args.bad_rows, data_format=args.data_format) if path else None
                        for path in (args.train_file, args.eval_file)]
    for d in (train, evals):
        if d is not None and d.skipped:
            _say(env, f"{d.path}: skipped {d.skipped} malformed row(s), e.g. " + "; ".join(d.skip_reasons[:3]))
    return train, evals


def _labels(args, init_config, train, evals):
    from .data import DataError, encode_labels, infer_label_scheme

    label_names = None
    if init_config is not None and "ConvBertForSequenceClassification" in (init_config.architectures or []):
        names = [init_config.id2label[i] for i in sorted(init_config.id2label)]
        if not all(n == f"LABEL_{i}" for i, n in enumerate(names)):
            label_names = names  # a fine-tuned checkpoint keeps its label names
    with _user_errors(DataError):
        label_type = args.task if args.task in LABEL_TYPES else "auto"
        scheme = infer_label_scheme(train.labels, label_type, args.num_labels, label_names, source=train.path)
        return scheme, encode_labels(train, scheme), encode_labels(evals, scheme) if evals is not None else None


# Weights of the heads (and of the ELECTRA objectives): kept from --init-from only when it is a
# checkpoint of the same head, e.g. a fine-tuned model trained further.
_HEAD_PREFIXES = ("classifier.", "qa_outputs.", "sequence_summary.", "generator_", "discriminator_")


def _fine_tuned(args, config, head: str, init_config=None):
    """The ``head`` class (a ``convbert.modeling`` name) from ``config``, its backbone from --init-from
    (whose config is ``init_config``)."""
    from .. import modeling
    from ..pretrained import CheckpointError, load_state_dict_from_directory
    from .electra import FineTuned

    model = getattr(modeling, head)(config)
    if args.init_from is not None:
        same_head = head in (init_config.architectures or [])
        with _user_errors((CheckpointError, FileNotFoundError), f"cannot initialise from {str(args.init_from)!r}: "):
            # a bare backbone (e.g. an ELECTRA discriminator) gets its "convbert." prefix from the loader
            state = load_state_dict_from_directory(args.init_from)
            state = {k: v for k, v in state.items()
                     if not k.startswith(("generator_", "discriminator_")) and (same_head or not k.startswith(_HEAD_PREFIXES))}
            info = model.load_pretrained_state_dict(state)
        backbone_missing = [k for k in info.missing_keys if not k.startswith(_HEAD_PREFIXES)]
        if backbone_missing:
            raise CliError(f"--init-from {str(args.init_from)!r} lacks backbone weights: {backbone_missing[:5]}")
    return FineTuned(model)


def _evaluator(args, env, tokenizer, evals, labels, scheme):
    import numpy as np

    from .data import collate_labelled, encode_texts
    from .metrics import classification_metrics, regression_metrics

    encoded, pad, n = encode_texts(tokenizer, evals, args.seq_len), tokenizer.pad_token_id, len(evals.texts)
    regression, size = scheme.task == "regression", 2 * args.batch_size

    def evaluate(mod) -> dict:
        preds, losses = [], []
        for start in range(0, n, size):
            idx = list(range(start, min(n, start + size)))
            batch = collate_labelled(encoded, labels, idx, pad, regression)
            out = mod.model(**{k: v.to(env.device) for k, v in batch.items()})
            losses.append(float(out.loss) * len(idx))
            preds.append(out.logits.float().cpu().numpy())
        logits = np.concatenate(preds)
        metrics = (regression_metrics(logits[:, 0], labels) if regression
                   else classification_metrics(logits, labels, scheme.num_labels))
        return {"eval_loss": sum(losses) / n, **{f"eval_{k}": v for k, v in metrics.items()}}

    return evaluate


def _describe_finetuning(args, env, train, evals, scheme, config, max_steps: int, output_dir: Path) -> None:
    _say(env, f"data: {len(train.texts):,} training examples"
              + (f", {len(evals.texts):,} eval examples" if evals else "")
              + f"; task {scheme.task}" + (f" with {scheme.num_labels} labels" if scheme.task != "regression" else "")
              + (f" {scheme.names}" if scheme.names else ""))
    _say(env, f"model: from {args.init_from or 'scratch'}, hidden {config.hidden_size}, {config.num_hidden_layers} "
              f"layers; {max_steps} steps, batch {args.batch_size} x accum {args.grad_accum} x {env.world_size}; "
              f"output {output_dir}")
    _say(env, f"batches: each padded to its longest sequence; {_padding_path(config)}")


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
    argv = argv or list(DEFAULT_DEMO)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return None

    from .loop import cleanup_distributed, release_output_dirs, setup_distributed

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
        release_output_dirs()
        cleanup_distributed()
    if env.is_main and summary is not None:
        evals = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in (summary.get("eval") or {}).items())
        print(f"done: {summary['steps']} steps in {summary['elapsed_s']:.0f}s; final loss {summary['final_loss']:.4f}"
              + (f"; {evals}" if evals else ""), flush=True)
    return summary
