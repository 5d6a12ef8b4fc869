"""The training loop: AdamW, warmup + linear decay, gradient accumulation, mixed precision, DDP,
atomic checkpoints with exact resume, progress bar, JSON-lines metrics and a loss-curve PNG.

Exact resume: a checkpoint stores model, optimizer, scheduler, loss scaler, every rank's RNG
states and the step; the data position is ``step * grad_accum`` micro-batches into the
:class:`~convbert.train.data.BatchPlan`, and each micro-batch's masking is drawn from a generator
seeded by (seed, rank, position). A run resumed from step k therefore computes the same losses
as an uninterrupted run from step k on (bit for bit on CPU; on GPU up to kernel nondeterminism).

Safe files: the trainer state holds only tensors and plain data and is loaded with
``torch.load(weights_only=True)`` (nothing in a checkpoint can run code). Every file is written
whole or not at all (a temporary name, flushed, then renamed; the metrics log is appended and a
torn last line is dropped on resume). One run at a time holds an output directory
(:func:`claim_output_dir`); leftovers of a killed run are cleaned up when the next one claims it.
A full disk is reported as such (:class:`DiskFullError`).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import math
import os
import pickle
import random
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..pretrained import INCOMPLETE_SAVE_MARKER

TRAINER_STATE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE = "loss_curve.png"
CHECKPOINTS = "checkpoints"
LOCK_FILE = "convbert-train.lock"
#: Present in the output directory while the final model is being replaced (and after a kill then);
#: ``from_pretrained`` refuses such a directory.
FINAL_INCOMPLETE = INCOMPLETE_SAVE_MARKER
_TEMP = ".tmp-"  # prefix of everything half-written: removed when the next run claims the directory
_OLD = ".old-"   # a checkpoint being replaced by a newer save of the same step


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
    """This process's RNG states as tensors and plain data (loadable with ``weights_only=True``)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"bit_generator": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
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
    """The learning-rate factor of step ``step`` (0-based): linear warmup over ``warmup`` steps, then linear
    decay to 0 at ``total``."""
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


# --------------------------------------------------------------------------- files


class DiskFullError(SystemExit):
    """A write failed for lack of space: exits with status 1 and a message that says so."""


class OutputDirLocked(RuntimeError):
    """Another run holds the output directory (its message names the holder)."""


_LOW_SPACE = 64 * 2**20  # a write error with less free space than this is taken for a full disk


def _replace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, replacing it (atomic within a file system). Every rename of a run is one."""
    os.replace(src, dst)


def _write_file(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data``, flushed to disk."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _append_line(path: Path, line: str) -> None:
    """Append one line (the metrics log); a kill can tear only this last line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _unlink(path: Path) -> None:
    Path(path).unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's entry to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        _fsync(path)
    _fsync(root)


def _free_bytes(path: Path) -> int | None:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


@contextlib.contextmanager
def _disk_errors(path: Path):
    """Turn a failed write for lack of space into a :class:`DiskFullError` naming ``path`` and the free space.

    ``ENOSPC``/``EDQUOT``, a message saying so (safetensors, whatever its error type), or a
    ``RuntimeError`` (torch.save reports a full disk as ``[enforce fail at inline_container.cc]``) while
    the device has less than 64 MiB free.
    """
    try:
        yield
    except Exception as exc:
        text = str(exc)
        free = _free_bytes(path)
        full = ((isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))
                or "no space left" in text.lower() or "storagefull" in text.lower()
                or (isinstance(exc, RuntimeError) and free is not None and free < _LOW_SPACE))
        if not full:
            raise
        room = f"{free / 2**20:.1f} MiB free" if free is not None else "free space unknown"
        raise DiskFullError(f"error: no space left on the device while writing {path} ({room}; "
                            f"{text.strip().splitlines()[0] if text.strip() else type(exc).__name__}). Free some "
                            "space (or keep fewer checkpoints with --keep-checkpoints), then continue with "
                            "--resume") from exc


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, flushed, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(f"{_TEMP}{path.name}-{os.getpid()}")
    with _disk_errors(path):
        try:
            _write_file(tmp, data.encode("utf-8") if isinstance(data, str) else data)
            _replace(tmp, path)
        except Exception:
            tmp.unlink(missing_ok=True)
            raise


def append_metrics(output_dir: Path, record: dict) -> None:
    """Append one record to the run's metrics log (a kill can tear only that last line)."""
    path = Path(output_dir) / METRICS_FILE
    with _disk_errors(path):
        _append_line(path, json.dumps(record))


def discard(path: Path) -> None:
    """Delete a file or directory so that it is never seen half deleted: renamed to a temporary name
    first (a kill during the deletion leaves only that name, which the next claim removes)."""
    path = Path(path)
    if not path.exists():
        return
    trash = path.with_name(f"{_TEMP}del-{path.name}-{os.getpid()}")
    _replace(path, trash)
    if trash.is_dir():
        _rmtree(trash)
    else:
        _unlink(trash)


# --------------------------------------------------------------------------- the output-directory lock


_HOST = socket.gethostname()


def _process_identity(pid: int) -> str | None:
    """Boot id and start time of a live process (Linux); None where unknown. Tells a reused pid apart."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        return f"{boot}:{start}"
    except (OSError, IndexError):
        return None


class RunLock:
    """Exclusive use of an output directory by one run: ``convbert-train.lock`` in it.

    The file is created with ``O_CREAT | O_EXCL`` (of two runs starting at once exactly one creates it)
    and holds the holder's pid, host, process identity and start time as JSON. Another run is refused
    with :class:`OutputDirLocked` naming the holder, unless the holder is gone: a lock from this host whose
    pid is not alive (or is now another process) was left by a killed run and is taken over. A lock from
    another host is never taken over (its process cannot be checked). :meth:`release` deletes the file.
    """

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_FILE
        self.depth = 0
        self.took_over: dict | None = None

    def describe(self, holder: dict) -> str:
        return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
                + (f": {' '.join(map(str, holder.get('argv') or []))}" if holder.get("argv") else ""))

    def _read(self) -> tuple[str, dict | None] | None:
        """(text, holder) of the lock file; holder None while unreadable (being written); None if it is gone."""
        try:
            text = self.path.read_text()
        except OSError:
            return None
        try:
            holder = json.loads(text)
        except ValueError:
            holder = None
        return text, holder if isinstance(holder, dict) else None

    @staticmethod
    def _alive(holder: dict) -> bool:
        if holder.get("host") != _HOST:
            return True  # cannot tell
        try:
            pid = int(holder["pid"])
        except (KeyError, TypeError, ValueError):
            return False
        if pid == os.getpid():
            return False  # an earlier process with our pid (this process's own locks are in _HELD)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        except OSError:
            return True
        now = _process_identity(pid)
        return not (holder.get("process") and now and holder["process"] != now)

    def acquire(self, wait_s: float = 5.0) -> None:
        """Create the lock file or raise :class:`OutputDirLocked`; take over a stale one."""
        info = {"pid": os.getpid(), "host": _HOST, "process": _process_identity(os.getpid()),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv}
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                found = self._read()
                if found is None:  # deleted meanwhile: try again
                    continue
                text, holder = found
                if holder is None:  # being written by its creator (or left so by a run killed right then)
                    if time.monotonic() < deadline:
                        time.sleep(0.05)
                        continue
                    holder = {}
                elif self._alive(holder):
                    raise OutputDirLocked(
                        f"output directory {str(self.path.parent)!r} is in use by another run ("
                        f"{self.describe(holder)}); wait for it to end or choose another --output-dir. "
                        f"If that run is gone, delete {str(self.path)!r}") from None
                self._take_over(text)
                self.took_over = holder
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(info))
                f.flush()
                os.fsync(f.fileno())
            return

    def _take_over(self, stale_text: str) -> None:
        """Delete the stale lock, unless another run took it over first (one at a time: a guard file)."""
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - guard.stat().st_mtime > 10:  # left by a run killed while taking over
                    guard.unlink()
            time.sleep(0.05)
            return
        try:
            with contextlib.suppress(OSError):
                if self.path.read_text() == stale_text:
                    self.path.unlink()
        finally:
            guard.unlink(missing_ok=True)

    def release(self) -> None:
        """Delete the lock file if this process holds it."""
        found = self._read()
        holder = found[1] if found else None
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == _HOST:
            self.path.unlink(missing_ok=True)


_HELD: dict[Path, RunLock] = {}


def claim_output_dir(directory: Path, log: Callable[[str], None] = print) -> RunLock:
    """Lock ``directory`` for this run (rank 0 only) and clean up what killed runs left there.

    Re-entrant within a process (the CLI claims the directory before preparing it, the trainer again);
    :func:`release_output_dir` undoes one claim, :func:`release_output_dirs` all (also run at exit).
    On the first claim: temporary files and directories (``.tmp-*``) are deleted; a checkpoint left under
    ``checkpoints/.old-step-N-*`` by a kill between the two renames of a re-save becomes ``step-N`` again
    when no complete ``step-N`` exists (else it is deleted); an interrupted final save is reported.
    """
    directory = Path(directory)
    key = directory.resolve()
    lock = _HELD.get(key)
    if lock is None:
        lock = RunLock(directory)
        lock.acquire()
        _HELD[key] = lock
        if lock.took_over:
            log(f"note: took over the lock of a run that is gone ({lock.describe(lock.took_over)})")
        _clean_leftovers(directory, log)
    lock.depth += 1
    return lock


def release_output_dir(directory: Path) -> None:
    key = Path(directory).resolve()
    lock = _HELD.get(key)
    if lock is not None:
        lock.depth -= 1
        if lock.depth <= 0:
            lock.release()
            del _HELD[key]


def release_output_dirs() -> None:
    """Release every output directory this process holds."""
    for key in list(_HELD):
        _HELD.pop(key).release()


atexit.register(release_output_dirs)


def _clean_leftovers(directory: Path, log: Callable[[str], None]) -> None:
    for parent in (directory, directory / CHECKPOINTS):
        if not parent.is_dir():
            continue
        for path in sorted(parent.iterdir()):
            if path.name.startswith(_TEMP):
                _rmtree(path) if path.is_dir() else _unlink(path)
            elif parent.name == CHECKPOINTS and path.name.startswith(_OLD):
                real = parent / _old_name(path.name)
                if (real / TRAINER_STATE).is_file() or not (path / TRAINER_STATE).is_file():
                    discard(path)
                else:
                    _replace(path, real)
                    log(f"note: restored checkpoint {real} (its re-save was interrupted)")
    if (directory / FINAL_INCOMPLETE).exists():
        log(f"warning: the final model in {directory} is incomplete (an interrupted save, see "
            f"{FINAL_INCOMPLETE}); this run writes it again when it ends")


def _old_name(name: str) -> str:
    """``.old-step-0000004-123`` -> ``step-0000004``."""
    return name[len(_OLD):].rsplit("-", 1)[0]


# --------------------------------------------------------------------------- checkpoints


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints (those with a trainer state), oldest first.

    ``step-N`` directories; and ``.old-step-N-*`` where no complete ``step-N`` exists (a checkpoint moved
    aside for a re-save of its step when the run was killed: still complete, restored at the next claim).
    """
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found: dict[int, Path] = {}
    for path in root.iterdir():
        name = _old_name(path.name) if path.name.startswith(_OLD) else path.name
        if not name.startswith("step-") or not (path / TRAINER_STATE).is_file():
            continue
        try:
            step = int(name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if step not in found or path.name == name:
            found[step] = path
    return [found[step] for step in sorted(found)]


def load_trainer_state(path: Path) -> dict[str, Any]:
    """Read a ``trainer_state.pt`` with ``torch.load(weights_only=True)``: tensors and plain containers only
    (torch's weights-only allowlist, nothing added), so a tampered file cannot run code; it is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f"it references {found.group(1)}" if found else str(exc).strip().split("\n")[0]
        raise SystemExit(f"error: refusing to load {path}: it holds more than tensors and plain data, so loading it "
                         f"could run code ({what}). It was altered, or written by an older convbert-train that "
                         "pickled Python objects; start a fresh run") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise SystemExit(f"error: cannot read the training state {path}: {exc}") from None


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = checkpoint_dirs(output_dir)
    return found[-1] if found else None


@contextlib.contextmanager
def _user_error(errors):
    """``errors`` raised inside become ``SystemExit("error: ...")``, as the trainer's other user errors."""
    try:
        yield
    except errors as exc:
        raise SystemExit(f"error: {exc}") from None


def check_same_config(checkpoint_config: dict, run_config: dict, where: str) -> None:
    a, b = checkpoint_config, run_config
    # unpad_inputs changes how, not what, the model computes (the padded path gives the same numbers)
    ignore = {"architectures", "conv_backend", "id2label", "label2id", "problem_type", "transformers_version",
              "torch_dtype", "dtype", "return_dict", "output_hidden_states", "output_attentions", "unpad_inputs"}
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

    Learning-rate schedule: linear warmup over ``cfg.warmup_steps``, then linear decay to 0 at
    ``cfg.max_steps`` (:func:`linear_schedule`). The rate of every step is a function of the step and of
    *this* run's ``lr``, ``warmup_steps`` and ``max_steps``, also after a resume: a resumed run follows the
    schedule that an uninterrupted run with its options has. With the options of the checkpoint's run that
    is the same schedule (bit for bit); with a larger ``max_steps`` the decay is stretched to the new end,
    e.g. resuming a finished 30-step run with ``max_steps=35`` trains step 31 at ``lr * 5 / (35 - warmup)``
    (not at 0, where the old schedule ended) down to ``lr / (35 - warmup)`` at step 35.

    Files: only rank 0 writes; :meth:`train` claims the output directory (:func:`claim_output_dir`).
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
            "schedule": {"lr": self.cfg.lr, "warmup_steps": self.cfg.warmup_steps, "max_steps": self.cfg.max_steps},
            "run": self.run_info,
        }

    def _export(self, directory: Path) -> None:
        """Model and tokenizer into a new directory ``directory``."""
        if directory.exists():
            _rmtree(directory)
        directory.mkdir(parents=True)
        self.module.save_pretrained(directory)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory))

    def _write_temp_dir(self, tmp: Path, state: dict | None = None) -> None:
        """Export (and the trainer state, last) into ``tmp``; on an error it is removed (a kill leaves it)."""
        with _disk_errors(tmp):
            try:
                self._export(tmp)
                if state is not None:
                    torch.save(state, tmp / TRAINER_STATE)  # its presence marks a complete checkpoint
                _sync_tree(tmp)
            except Exception:
                _rmtree(tmp)
                raise

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-N`` on rank 0 so that a kill at any moment leaves the earlier checkpoints.

        The files go to a temporary directory, which is renamed to ``step-N``. A ``step-N`` already there
        (a re-save of the step) is first moved aside to ``.old-step-N-<pid>``, which :func:`checkpoint_dirs`
        still lists until the new one is in place. Checkpoints beyond ``keep_checkpoints`` are deleted only
        then, each renamed away first (:func:`discard`): there is always a complete checkpoint.
        """
        state = self._state()  # every rank takes part (RNG states are gathered)
        root = self.output_dir / CHECKPOINTS
        target = root / f"step-{self.step:07d}"
        if self.env.is_main:
            tmp = root / f"{_TEMP}{target.name}-{os.getpid()}"
            self._write_temp_dir(tmp, state)
            if target.exists():
                old = root / f"{_OLD}{target.name}-{os.getpid()}"
                _replace(target, old)
                _replace(tmp, target)
                discard(old)
            else:
                _replace(tmp, target)
            _fsync(root)
            if self.cfg.keep_checkpoints > 0:
                for stale in checkpoint_dirs(self.output_dir)[:-self.cfg.keep_checkpoints]:
                    discard(stale)
        self.env.barrier()
        return target if self.env.is_main else None

    def load_checkpoint(self, directory: Path) -> None:
        """Restore model, optimizer, scheduler, scaler, RNG and step from a checkpoint directory."""
        directory = Path(directory)
        state_path = directory / TRAINER_STATE
        if not state_path.is_file():
            raise SystemExit(f"error: {directory} is not a complete training checkpoint (no {TRAINER_STATE})")
        state = load_trainer_state(state_path)
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
        self._schedule_from(self.step, state.get("schedule") or {})

    def _schedule_from(self, step: int, saved: dict) -> None:
        """Set the next step's learning rate from this run's schedule (see the class docstring)."""
        cfg = self.cfg
        self.scheduler.base_lrs = [cfg.lr] * len(self.optimizer.param_groups)
        factor = self.scheduler.lr_lambdas[0](step)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["initial_lr"] = base
            group["lr"] = base * factor  # as LambdaLR computes it: the same float as an uninterrupted run
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        now = {"lr": cfg.lr, "warmup_steps": cfg.warmup_steps, "max_steps": cfg.max_steps}
        changed = {k: (saved[k], v) for k, v in now.items() if k in saved and saved[k] != v}
        if changed and step < cfg.max_steps:
            self.log("note: the learning-rate schedule follows this run's "
                     + ", ".join(f"{k}={v} (the checkpoint's run had {old})" for k, (old, v) in changed.items())
                     + f": step {step + 1} trains at lr {self.optimizer.param_groups[0]['lr']:.3g}")

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
            write_atomic(path, "".join(k + "\n" for k in kept))

    def _write_metrics(self, record: dict) -> None:
        if self.env.is_main:
            append_metrics(self.output_dir, record)

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
        """Train to ``cfg.max_steps`` (on from the checkpoint ``resume_from``), save, and return a summary.

        Rank 0 holds the output directory's lock meanwhile (:func:`claim_output_dir`)."""
        if not self.env.is_main:
            return self._train(resume_from)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with _user_error(OutputDirLocked):
            claim_output_dir(self.output_dir, log=self.log)
        try:
            if resume_from is not None and Path(resume_from).name.startswith(_OLD) and not Path(resume_from).exists():
                resume_from = Path(resume_from).with_name(_old_name(Path(resume_from).name))  # restored by the claim
            return self._train(resume_from)
        finally:
            release_output_dir(self.output_dir)

    def _train(self, resume_from: Path | None) -> dict:
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
        """The final model (Hugging Face layout + tokenizer) in the output directory, and the loss curve.

        Complete as a set or marked incomplete: the files are written to a temporary directory; then
        ``FINAL_SAVE_INCOMPLETE`` is created, the files are moved over the previous ones (each appears
        whole) and the marker is deleted last. After a kill in between the marker stays (the model files
        may then come from different saves) and the next claim of the directory reports it; resuming the
        run writes the final model again.
        """
        if self.env.is_main:
            tmp = self.output_dir / f"{_TEMP}final-{os.getpid()}"
            self._write_temp_dir(tmp)
            marker = self.output_dir / FINAL_INCOMPLETE
            write_atomic(marker, f"The final model in this directory is incomplete: its save at step {self.step} "
                                 "was interrupted, so its files may come from different steps. Resume the run "
                                 "(convbert-train ... --resume) to write it again.\n")
            targets = {self.output_dir}
            for path in sorted(tmp.rglob("*"), key=lambda p: len(p.parts)):
                dest = self.output_dir / path.relative_to(tmp)
                if path.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    targets.add(dest)
                else:
                    _replace(path, dest)  # each file appears whole
            for directory in targets:
                _fsync(directory)
            _rmtree(tmp)
            _unlink(marker)
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
    keys = [k for k in ("loss", "total_loss", "disc_loss") if k in by_step[steps[-1]]]
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
    tmp = path.with_name(f"{_TEMP}{path.stem}-{os.getpid()}{path.suffix}")
    with _disk_errors(path):
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        _replace(tmp, path)
    return path
