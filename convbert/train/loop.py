"""The training loop: AdamW, warmup + linear decay, gradient accumulation, mixed precision, DDP,
atomic checkpoints with exact resume, progress bar, JSON-lines metrics and a loss-curve PNG.

Exact resume: a checkpoint stores model, optimizer, scheduler, loss scaler, every rank's RNG
states and the step; the data position is ``step * grad_accum`` micro-batches into the
:class:`~convbert.train.data.BatchPlan`, and each micro-batch's masking is drawn from a generator
seeded by (seed, rank, position). A run resumed from step k therefore computes the same losses
as an uninterrupted run from step k on (bit for bit on CPU; on GPU up to kernel nondeterminism).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

TRAINER_STATE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE = "loss_curve.png"
CHECKPOINTS = "checkpoints"


# --------------------------------------------------------------------------- distributed


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            values = values.clone()
            torch.distributed.all_reduce(values)
        return values

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out


def setup_distributed(device: str = "auto") -> DistEnv:
    """Read torchrun's environment; start the process group when WORLD_SIZE > 1.

    nccl on CUDA, gloo on CPU. Each rank uses ``cuda:LOCAL_RANK`` when CUDA is used.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda asked for, but CUDA is not available")
        dev = torch.device("cuda", local_rank if device == "cuda" else torch.device(device).index or 0)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------- options


@dataclass
class LoopConfig:
    output_dir: Path
    max_steps: int
    batch_size: int
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    precision: str = "fp32"
    seed: int = 0
    save_every: int = 0          # 0: only the final model
    keep_checkpoints: int = 2    # 0: keep all
    log_every: int = 10
    eval_every: int = 0          # 0: at the end of each epoch only (when there is an eval set)
    progress: bool = True
    compile: bool = False
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-6


def _rng_seed(seed: int, rank: int, position: int) -> int:
    """A 63-bit seed for micro-batch ``position`` of ``rank`` (deterministic, well mixed)."""
    x = (seed * 0x9E3779B97F4A7C15 + rank * 0xBF58476D1CE4E5B9 + position * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & (2**64 - 1)
    x ^= x >> 32
    return x & (2**63 - 1)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on biases, LayerNorm weights or embeddings' norms."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- checkpoints


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints (those with a trainer state), oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = checkpoint_dirs(output_dir)
    return found[-1] if found else None


def check_same_config(checkpoint_config: dict, run_config: dict, where: str) -> None:
    a, b = checkpoint_config, run_config
    ignore = {"architectures", "conv_backend", "id2label", "label2id", "problem_type", "transformers_version",
              "torch_dtype", "dtype", "return_dict", "output_hidden_states", "output_attentions"}
    diffs = [f"{k}: checkpoint {a.get(k)!r} vs this run {b.get(k)!r}" for k in sorted((set(a) | set(b)) - ignore)
             if a.get(k) != b.get(k)]
    if diffs:
        raise SystemExit(f"error: {where} was made with a different model config than this run asks for:\n  "
                         + "\n  ".join(diffs[:20])
                         + "\n(drop --model-size/--config/--set to take the checkpoint's config, or start a fresh run)")


# --------------------------------------------------------------------------- the trainer


class _Progress:
    """Rank 0's progress bar, and a log line every ``log_every`` steps with the means since the previous one."""

    def __init__(self, cfg: LoopConfig, env: DistEnv, step: int):
        self.cfg, self.bar = cfg, None
        if env.is_main and cfg.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                            leave=True, file=sys.stderr)
        self.write = (self.bar.write if self.bar is not None else print) if env.is_main else (lambda _m: None)
        self.tokens, self.since, self.values = 0, time.perf_counter(), {}  # since the last log line

    def update(self, step: int, values: dict[str, float], lr: float, tokens: int, now: float, elapsed: float) -> None:
        self.tokens += tokens
        for k, v in values.items():
            self.values.setdefault(k, []).append(v)
        rate = self.tokens / max(now - self.since, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {values['loss']:.4f}, lr {lr:.2e}, {rate:,.0f} tok/s", refresh=False)
            self.bar.update(1)
        if step % max(self.cfg.log_every, 1) == 0 or step == self.cfg.max_steps or step == 1:
            means = {k: sum(v) / len(v) for k, v in self.values.items()}
            extra = "".join(f" | {k} {v:.4f}" for k, v in means.items() if k != "loss")
            self.write(f"step {step:>6}/{self.cfg.max_steps} | loss {means['loss']:.4f}{extra} | lr {lr:.2e} | "
                       f"{rate:,.0f} tok/s | {elapsed:,.0f}s")
            self.tokens, self.since, self.values = 0, time.perf_counter(), {}

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """Runs one training job.

    Args:
        module: an objective (see :mod:`convbert.train.electra`): ``forward(**batch) -> {"loss", ...}``,
            ``make_batch(examples, rng)``, ``save_pretrained(dir)``, ``load_pretrained(dir)``, ``tokens_in``.
        plan: which examples each micro-batch holds.
        fetch: ``indices -> examples`` (a dict of CPU tensors).
        cfg: the loop options.
        env: the distributed environment.
        tokenizer: saved next to every checkpoint and the final model.
        run_info: JSON-able description of the run (the CLI arguments), stored with checkpoints.
        evaluate: optional ``module -> {metric: value}``, run on rank 0 in eval mode.
    """

    def __init__(self, module: nn.Module, plan, fetch: Callable[[list[int]], dict], cfg: LoopConfig, env: DistEnv,
                 tokenizer=None, run_info: dict | None = None, evaluate: Callable[[nn.Module], dict] | None = None,
                 log: Callable[[str], None] = print):
        self.module, self.plan, self.fetch, self.cfg, self.env = module, plan, fetch, cfg, env
        self.tokenizer, self.run_info, self.evaluate = tokenizer, dict(run_info or {}), evaluate
        self._log = log
        self.output_dir = Path(cfg.output_dir)
        if cfg.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"--precision must be fp32, bf16 or fp16, got {cfg.precision!r}")
        if cfg.grad_accum < 1:
            raise ValueError(f"--grad-accum must be >= 1, got {cfg.grad_accum}")
        if cfg.max_steps < 1:
            raise ValueError(f"the run has {cfg.max_steps} optimizer steps; it needs at least one")
        self.module.to(env.device)
        if cfg.compile:
            self.module.compile_models()
        self.optimizer = torch.optim.AdamW(param_groups(self.module, cfg.weight_decay), lr=cfg.lr,
                                           betas=cfg.adam_betas, eps=cfg.adam_eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           linear_schedule(cfg.warmup_steps, cfg.max_steps))
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.precision == "fp16")
        if env.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [env.device.index] if env.device.type == "cuda" else None
            self.wrapped: nn.Module = DDP(self.module, device_ids=ids)
        else:
            self.wrapped = self.module
        self.step = 0
        self.history: list[dict] = []

    def log(self, message: str) -> None:
        if self.env.is_main:
            self._log(message)

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "micro_batches": self.step * self.cfg.grad_accum,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": self.env.gather_objects(_rng_state()),
            "world_size": self.env.world_size,
            "batch_size": self.cfg.batch_size,
            "grad_accum": self.cfg.grad_accum,
            "seed": self.cfg.seed,
            "objective": getattr(self.module, "objective", None),
            "model_config": self.module.config.to_dict(),
            "run": self.run_info,
        }

    def _export(self, directory: Path) -> None:
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        self.module.save_pretrained(directory)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory))

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-N`` atomically (temporary directory, then rename) on rank 0."""
        state = self._state()  # every rank takes part (RNG states are gathered)
        target = self.output_dir / CHECKPOINTS / f"step-{self.step:07d}"
        if self.env.is_main:
            tmp = self.output_dir / CHECKPOINTS / f".tmp-step-{self.step:07d}-{os.getpid()}"
            self._export(tmp)
            state_tmp = tmp / (TRAINER_STATE + ".tmp")
            torch.save(state, state_tmp)
            state_tmp.replace(tmp / TRAINER_STATE)  # its presence marks a complete checkpoint
            if target.exists():
                old = target.with_name(f".old-{target.name}-{os.getpid()}")
                target.replace(old)
                tmp.replace(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.replace(target)
            if self.cfg.keep_checkpoints > 0:
                for stale in checkpoint_dirs(self.output_dir)[:-self.cfg.keep_checkpoints]:
                    shutil.rmtree(stale, ignore_errors=True)
        self.env.barrier()
        return target if self.env.is_main else None

    def load_checkpoint(self, directory: Path) -> None:
        """Restore model, optimizer, scheduler, scaler, RNG and step from a checkpoint directory."""
        directory = Path(directory)
        state_path = directory / TRAINER_STATE
        if not state_path.is_file():
            raise SystemExit(f"error: {directory} is not a complete training checkpoint (no {TRAINER_STATE})")
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state.get("objective") != getattr(self.module, "objective", None):
            raise SystemExit(f"error: checkpoint {directory} is from a {state.get('objective')!r} run, "
                             f"this run is {getattr(self.module, 'objective', None)!r}")
        check_same_config(state["model_config"], self.module.config.to_dict(), f"checkpoint {directory}")
        for key, now in (("batch_size", self.cfg.batch_size), ("grad_accum", self.cfg.grad_accum),
                         ("world_size", self.env.world_size), ("seed", self.cfg.seed)):
            if state.get(key) != now:
                self.log(f"warning: resuming with {key}={now}, the checkpoint used {state.get(key)}: "
                         "the data order (and so the loss curve) will differ from an uninterrupted run")
        self.module.load_pretrained(directory, strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state.get("rng") or []
        if self.env.rank < len(rng) and state.get("world_size") == self.env.world_size:
            _set_rng_state(rng[self.env.rank])
        else:
            set_seed(self.cfg.seed + 1000 * self.env.rank + state["step"])
        self.step = int(state["step"])

    def _prepare_metrics(self) -> None:
        if not self.env.is_main:
            return
        path = self.output_dir / METRICS_FILE
        if path.exists():
            # Keep what led to the resumed step; drop lines a killed run wrote after its last checkpoint.
            kept = []
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("step", 0) <= self.step:
                    kept.append(line)
                    if record.get("type", "train") == "train":
                        self.history.append(record)
            path.write_text("".join(k + "\n" for k in kept))

    def _write_metrics(self, record: dict) -> None:
        if self.env.is_main:
            with open(self.output_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _run_eval(self) -> dict | None:
        if self.evaluate is None:
            return None
        result = None
        if self.env.is_main:
            self.module.eval()
            with torch.no_grad(), _autocast(self.env.device, self.cfg.precision):
                result = self.evaluate(self.module)
            self.module.train()
            record = {"type": "eval", "step": self.step, **result}
            self._write_metrics(record)
            self.log(f"eval @ step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
        self.env.barrier()
        return result

    def train(self, resume_from: Path | None = None) -> dict:
        """Train to ``cfg.max_steps`` (on from the checkpoint ``resume_from``), save, and return a summary."""
        if resume_from is not None:
            self.load_checkpoint(resume_from)
            self.log(f"resumed from {resume_from} at step {self.step}")
        self._prepare_metrics()
        self.module.train()
        progress = _Progress(self.cfg, self.env, self.step)
        start = time.perf_counter()
        last_eval = last_saved = None
        try:
            while self.step < self.cfg.max_steps:
                step_start = time.perf_counter()
                sums, local_tokens = self._accumulate_gradients()
                lr, grad_norm = self._apply_gradients()
                values, tokens = self._mean_over_ranks(sums, local_tokens)
                now = time.perf_counter()
                self._record(values, lr, grad_norm, tokens, now - step_start, now - start)
                progress.update(self.step, values, lr, tokens, now, now - start)
                if self._eval_due():
                    last_eval = self._run_eval()
                if self.cfg.save_every and self.step % self.cfg.save_every == 0 and self.step < self.cfg.max_steps:
                    last_saved = self.save_checkpoint()
        except KeyboardInterrupt:
            progress.close()
            last = latest_checkpoint(self.output_dir)
            self.log(f"\ninterrupted at step {self.step}; " + (f"the last checkpoint is {last} (continue with --resume)"
                                                                if last else "no checkpoint was saved"))
            raise SystemExit(130)
        progress.close()
        elapsed = time.perf_counter() - start
        if self.cfg.save_every:
            last_saved = self.save_checkpoint()  # the final state can be resumed (e.g. with more --max-steps)
        self.save_final()
        return {"steps": self.step, "elapsed_s": elapsed, "output_dir": str(self.output_dir),
                "final_loss": self.history[-1]["loss"] if self.history else None, "eval": last_eval,
                "checkpoint": str(last_saved) if last_saved else None}

    def _accumulate_gradients(self) -> tuple[dict[str, torch.Tensor], int]:
        """Forward and backward of this step's micro-batches: their mean scalar outputs and their tokens."""
        cfg, env = self.cfg, self.env
        sums: dict[str, torch.Tensor] = {}
        tokens = 0
        for micro in range(cfg.grad_accum):
            position = self.step * cfg.grad_accum + micro
            rng = torch.Generator().manual_seed(_rng_seed(cfg.seed, env.rank, position))
            batch = self.module.make_batch(self.fetch(self.plan.batch(position)), rng)
            tokens += self.module.tokens_in(batch)
            batch = {k: v.to(env.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            sync = (contextlib.nullcontext() if not env.distributed or micro == cfg.grad_accum - 1
                    else self.wrapped.no_sync())
            with sync:
                with _autocast(env.device, cfg.precision):
                    out = self.wrapped(**batch)
                self.scaler.scale(out["loss"] / cfg.grad_accum).backward()
            for k, v in out.items():
                if torch.is_tensor(v) and v.numel() == 1:
                    sums[k] = sums.get(k, 0.0) + v.detach().float() / cfg.grad_accum
        return sums, tokens

    def _apply_gradients(self) -> tuple[float, torch.Tensor]:
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return lr, grad_norm

    def _mean_over_ranks(self, sums: dict[str, torch.Tensor], tokens: int) -> tuple[dict[str, float], int]:
        env, names = self.env, sorted(sums)
        packed = torch.stack([sums[k] for k in names] + [torch.tensor(float(tokens), device=env.device)])
        packed = env.sum(packed.to(env.device)).cpu()
        return {k: float(packed[i]) / env.world_size for i, k in enumerate(names)}, int(packed[-1])

    def _record(self, values: dict[str, float], lr: float, grad_norm, tokens: int, step_s: float, elapsed: float):
        cfg = self.cfg
        record = {"type": "train", "step": self.step,
                  "epoch": round(self.step * cfg.grad_accum / self.plan.batches_per_epoch, 4), **values, "lr": lr,
                  "grad_norm": float(grad_norm), "tokens": tokens, "tokens_per_s": tokens / max(step_s, 1e-9),
                  "elapsed_s": round(elapsed, 3)}
        if not math.isfinite(values["loss"]):
            self.log(f"warning: non-finite loss at step {self.step}"
                     + (" (fp16 loss scaling skips such steps)" if cfg.precision == "fp16" else ""))
        self.history.append(record)
        self._write_metrics(record)

    def _eval_due(self) -> bool:
        cfg, bpe = self.cfg, self.plan.batches_per_epoch
        epoch_done = (self.step * cfg.grad_accum) // bpe > ((self.step - 1) * cfg.grad_accum) // bpe
        return self.evaluate is not None and bool((cfg.eval_every and self.step % cfg.eval_every == 0)
                                                  or (not cfg.eval_every and epoch_done) or self.step == cfg.max_steps)

    def save_final(self) -> None:
        """The final model (Hugging Face layout + tokenizer) in the output directory, and the loss curve."""
        if self.env.is_main:
            tmp = self.output_dir / f".tmp-final-{os.getpid()}"
            self._export(tmp)
            for path in sorted(tmp.rglob("*"), key=lambda p: len(p.parts)):
                dest = self.output_dir / path.relative_to(tmp)
                if path.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                else:
                    path.replace(dest)  # each file appears whole
            shutil.rmtree(tmp, ignore_errors=True)
            plot_loss_curve(self.history, self.output_dir / LOSS_CURVE, log=self.log)
        self.env.barrier()


def plot_loss_curve(history: list[dict], path: Path, log: Callable[[str], None] = print) -> Path | None:
    """Loss against step (and the ELECTRA components when present); None when matplotlib is missing."""
    if not history:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no loss-curve PNG (pip install matplotlib); "
            f"the losses are in {METRICS_FILE}")
        return None
    by_step = {r["step"]: r for r in history}
    steps = sorted(by_step)
    keys = [k for k in ("loss", "gen_loss", "disc_loss") if k in by_step[steps[-1]]]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        ys = np.array([by_step[s].get(key, np.nan) for s in steps], dtype=float)
        ax.plot(steps, ys, lw=0.8, alpha=0.4, label="per step")
        if len(ys) >= 10:
            w = max(len(ys) // 20, 2)
            smooth = np.convolve(ys, np.ones(w) / w, mode="valid")
            ax.plot(steps[w - 1:], smooth, lw=1.8, label=f"mean of {w}")
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
