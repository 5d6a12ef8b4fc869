"""convbert-train's safety guarantees (issue 11): checkpoints that cannot run code, files written whole,
one run per output directory, kills at every write step, full disks, reproducible vocabularies and a
sensible schedule on resume. Tiny models on CPU; faults are injected, never timed."""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import convbert.train.loop as loop
from convbert import ConvBertConfig
from convbert.configuration import MODEL_SIZES
from convbert.train import run
from convbert.train.data import BatchPlan
from convbert.train.electra import ElectraPretrainer, MlmPretrainer
from convbert.train.loop import (FINAL_INCOMPLETE, LOCK_FILE, TRAINER_STATE, LoopConfig, Trainer, checkpoint_dirs,
                                 latest_checkpoint, set_seed)

VOCAB, SEQ = 40, 16
_WORDS = ["cat", "dog", "sees", "likes", "a", "the", "red", "ball", "house", "park", "in", "on", "old", "book"]


# --------------------------------------------------------------------------- a tiny trainer, no CLI


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: a fresh tiny model's first step takes seconds with two on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blocks(n: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (n, SEQ), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    return {"input_ids": ids, "attention_mask": torch.ones(n, SEQ, dtype=torch.long)}


def _trainer(out: Path, max_steps: int, *, objective: str = "electra", save_every: int = 1, keep: int = 1,
             warmup: int = 0, lr: float = 3e-3, logs: list | None = None) -> Trainer:
    config = ConvBertConfig(vocab_size=VOCAB, pad_token_id=0, max_position_embeddings=SEQ,
                            conv_backend="eager", **MODEL_SIZES["tiny"])
    ids = dict(special_ids=[0, 1, 2, 3, 4], mask_id=4, pad_id=0)
    set_seed(0)
    module = (ElectraPretrainer(config, **ids, generator_fraction=0.25) if objective == "electra"
              else MlmPretrainer(config, **ids))
    blocks = _blocks()
    cfg = LoopConfig(output_dir=out, max_steps=max_steps, batch_size=4, lr=lr, warmup_steps=warmup, seed=0,
                     save_every=save_every, keep_checkpoints=keep, progress=False)
    fetch = lambda idx: {k: v[torch.tensor(idx)] for k, v in blocks.items()}  # noqa: E731
    return Trainer(module, BatchPlan(len(blocks["input_ids"]), 4, seed=0), fetch, cfg, loop.DistEnv(),
                   log=(logs.append if logs is not None else lambda _m: None))


def _train(out: Path, max_steps: int, resume: bool = False, **kw) -> Trainer:
    trainer = _trainer(out, max_steps, **kw)
    trainer.train(resume_from=latest_checkpoint(out) if resume else None)
    return trainer


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / loop.METRICS_FILE).read_text().splitlines()]


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _records(out) if r.get("type", "train") == "train"}


_FINAL_FILES = ("model.safetensors", "discriminator_head.safetensors", "generator/model.safetensors")


def _final_digest(out: Path) -> tuple[str | None, ...]:
    return tuple(hashlib.sha256((out / f).read_bytes()).hexdigest() if (out / f).is_file() else None
                 for f in _FINAL_FILES)


def _step_of(checkpoint: Path) -> int:
    """``step-0000002`` or ``.old-step-0000002-<pid>`` -> 2."""
    return int(checkpoint.name.split("step-")[1].split("-")[0])


def _leftovers(out: Path) -> list[str]:
    names = [p.name for p in out.iterdir()] + [p.name for p in (out / "checkpoints").iterdir()]
    return [n for n in names if n.startswith((".tmp-", ".old-")) or n in (FINAL_INCOMPLETE, LOCK_FILE)]


# --------------------------------------------------------------------------- 1. no code in checkpoints


class _Evil:
    """Unpickling it creates ``path``: what a tampered checkpoint could do instead."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').close()",)


def test_tampered_trainer_state_is_refused_without_running_code(tmp_path):
    out = tmp_path / "run"
    _train(out, 2, objective="mlm")
    state_path = latest_checkpoint(out) / TRAINER_STATE
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(state_path)) == []  # nothing but data
    state = torch.load(state_path, weights_only=True)
    marker = tmp_path / "pwned"
    state["run"] = {"note": _Evil(marker)}
    torch.save(state, state_path)

    with pytest.raises(SystemExit, match="refusing to load") as info:
        _train(out, 3, resume=True, objective="mlm")
    assert not marker.exists(), "loading the checkpoint ran code"
    assert str(state_path) in str(info.value)


def test_rng_states_round_trip_exactly_through_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.normal(), torch.rand(1)  # numpy now caches a gaussian
    path = tmp_path / "rng.pt"
    torch.save(loop._rng_state(), path)
    expected = (random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    set_seed(99)
    loop._set_rng_state(torch.load(path, weights_only=True))
    assert (random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == expected


# --------------------------------------------------------------------------- 2. files: fault injection


class Killed(BaseException):
    """A simulated kill: not an Exception, so no error handler of the code under test runs."""


class Faults:
    """Counts the write steps on files under ``root`` and kills the run at step ``kill_at``.

    A step is an ``open`` for writing or appending, ``torch.save``, ``os.replace``/``os.rename`` (also
    behind ``Path.replace``), ``shutil.rmtree`` or ``os.unlink``. At the kill a write is torn (half of its
    bytes reach the file), a rename or deletion does not happen.
    """

    def __init__(self, root: Path, kill_at: int | None = None):
        self.root, self.kill_at, self.count, self.log = str(root), kill_at, 0, []

    def _ours(self, path) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)).startswith(self.root)

    def _step(self, what: str, path) -> bool:
        """True when this step is the kill."""
        if not self._ours(path):
            return False
        self.count += 1
        self.log.append(f"{what} {os.path.relpath(os.fspath(path), self.root)}")
        return self.count == self.kill_at

    def install(self, monkeypatch) -> "Faults":
        real_open, real_save = builtins.open, torch.save
        real_replace, real_rename, real_rmtree, real_unlink = os.replace, os.rename, shutil.rmtree, os.unlink
        faults = self

        class Torn(io.BufferedIOBase):
            def __init__(self, f):
                self.f = f

            def write(self, data):
                data = data.encode() if isinstance(data, str) else bytes(data)
                self.f.write(data[: len(data) // 2])
                self.f.close()
                raise Killed()

        def open_(file, mode="r", *a, **k):
            if any(c in mode for c in "wax") and faults._step(f"open({mode})", file):
                return Torn(real_open(file, "ab" if "a" in mode else "wb"))
            return real_open(file, mode, *a, **k)

        def save(obj, f, *a, **k):
            if faults._step("torch.save", f):
                Path(f).write_bytes(b"PK\x03\x04 torn")
                raise Killed()
            return real_save(obj, f, *a, **k)

        def wrap(what, real):
            def step(path, *a, **k):
                if faults._step(what, path):
                    raise Killed()
                return real(path, *a, **k)
            return step

        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(io, "open", open_)
        monkeypatch.setattr(torch, "save", save)
        monkeypatch.setattr(os, "replace", wrap("replace", real_replace))
        monkeypatch.setattr(os, "rename", wrap("rename", real_rename))
        monkeypatch.setattr(shutil, "rmtree", wrap("rmtree", real_rmtree))
        monkeypatch.setattr(os, "unlink", wrap("unlink", real_unlink))
        return self


def _check_after_kill(out: Path, finals: set[tuple], objective: str) -> None:
    """What a kill must never leave: no checkpoint, a half checkpoint listed as complete, unreadable
    metrics history, or a final model mixed from two saves without the incomplete marker."""
    found = checkpoint_dirs(out)
    assert found, "no complete checkpoint left"
    for ckpt in found:
        assert loop.load_trainer_state(ckpt / TRAINER_STATE)["step"] == _step_of(ckpt)
        _trainer(out, 1, objective=objective).module.load_pretrained(ckpt, strict=True)
    lines = (out / loop.METRICS_FILE).read_text().splitlines()
    for line in lines[:-1]:
        json.loads(line)  # only the last line may be torn
    assert len([r for r in lines if r.startswith("{")]) >= 2, "metrics history lost"
    if not (out / FINAL_INCOMPLETE).exists():
        assert _final_digest(out) in finals, "the final model mixes two saves and is not marked incomplete"


@pytest.fixture(scope="module")
def two_step_runs(tmp_path_factory) -> dict[str, Path]:
    """Finished 2-step runs (ELECTRA, MLM) with one checkpoint (step-2) and a final model each."""
    runs = {}
    for objective in ("electra", "mlm"):
        runs[objective] = tmp_path_factory.mktemp(objective) / "run"
        _train(runs[objective], 2, objective=objective)
    return runs


@pytest.fixture
def two_step_run(two_step_runs) -> Path:
    return two_step_runs["electra"]


@pytest.mark.parametrize("max_steps,objective", [(2, "mlm"), (3, "electra")],
                         ids=["resave-same-step", "train-rotate-save"])
def test_a_kill_at_every_write_step_loses_nothing(tmp_path, monkeypatch, two_step_runs, max_steps, objective):
    """Resume a 2-step run (2: re-save step 2 with --keep-checkpoints 1, the worst case for rotation;
    3: one more step, a new checkpoint, rotation and a final save over the old one, whose ELECTRA files
    could mix two steps), killed at each of its write steps in turn; each time check the directory, then
    resume to the end and compare with an uninterrupted resume."""
    two_step_run = two_step_runs[objective]
    # The loss curve is drawn by a stand-in with the same two write steps (matplotlib is slow; the real
    # one is killed at its write steps in test_loss_curve_is_written_whole).
    monkeypatch.setattr(loop, "plot_loss_curve", lambda history, path, log: loop.write_atomic(path, b"png"))
    reference = tmp_path / "reference"
    shutil.copytree(two_step_run, reference)
    with monkeypatch.context() as m:
        counter = Faults(reference).install(m)
        _train(reference, max_steps, resume=True, objective=objective)
    assert counter.count >= 10, counter.log
    expected, finals = _losses(reference), {_final_digest(two_step_run), _final_digest(reference)}

    for kill_at in range(1, counter.count + 1):
        out = tmp_path / f"kill-{kill_at}"
        shutil.copytree(two_step_run, out)
        with monkeypatch.context() as m:
            faults = Faults(out, kill_at).install(m)
            with pytest.raises(Killed):
                _train(out, max_steps, resume=True, objective=objective)
        where = f"killed at step {kill_at}: {faults.log[-1]}"
        try:
            _check_after_kill(out, finals, objective)
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from None
        logs: list[str] = []
        _train(out, max_steps, resume=True, objective=objective, logs=logs)  # cleans up, finishes the run
        assert _losses(out) == expected, where
        assert _final_digest(out) == _final_digest(reference), where
        assert [p.name for p in checkpoint_dirs(out)] == [f"step-{max_steps:07d}"], where
        assert _leftovers(out) == [], where
        shutil.rmtree(out)


def test_loss_curve_is_written_whole(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    history = [{"step": s, "loss": 1.0 / s} for s in range(1, 4)]
    (tmp_path / loop.LOSS_CURVE).write_bytes(b"old")
    for kill_at in (1, 2):
        with monkeypatch.context() as m:
            faults = Faults(tmp_path, kill_at).install(m)
            with pytest.raises(Killed):
                loop.plot_loss_curve(history, tmp_path / loop.LOSS_CURVE)
        assert faults.count == kill_at and (tmp_path / loop.LOSS_CURVE).read_bytes() == b"old"
    loop.plot_loss_curve(history, tmp_path / loop.LOSS_CURVE)
    assert (tmp_path / loop.LOSS_CURVE).read_bytes()[:4] == b"\x89PNG"


def test_resave_killed_between_renames_keeps_a_checkpoint(tmp_path, monkeypatch, two_step_run):
    """--keep-checkpoints 1, resuming the finished run: the kill between the two renames of the re-save."""
    out = tmp_path / "run"
    shutil.copytree(two_step_run, out)
    with monkeypatch.context() as m:
        real = os.replace

        def replace(src, dst):
            if Path(src).name.startswith(".tmp-step-0000002"):  # the old step-2 has just been moved aside
                raise Killed()
            return real(src, dst)

        m.setattr(os, "replace", replace)
        with pytest.raises(Killed):
            _train(out, 2, resume=True)
    assert not (out / "checkpoints" / "step-0000002").exists()
    assert [_step_of(p) for p in checkpoint_dirs(out)] == [2]  # the copy moved aside is still complete
    loop.load_trainer_state(checkpoint_dirs(out)[0] / TRAINER_STATE)
    _train(out, 2, resume=True)
    assert [p.name for p in checkpoint_dirs(out)] == ["step-0000002"] and _leftovers(out) == []


def test_killed_writes_leave_temporaries_that_the_next_start_removes(tmp_path, monkeypatch, two_step_run):
    out = tmp_path / "run"
    shutil.copytree(two_step_run, out)
    with monkeypatch.context() as m:
        m.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(Killed()))  # killed before any rename
        with pytest.raises(Killed):
            _train(out, 3, resume=True)
    left = list(out.rglob(".tmp-*"))
    assert left, "the kill should leave a temporary file behind"
    for path in left:  # as a killed process left them: under its pid, not this (still living) one's
        path.rename(path.with_name(path.name.replace(str(os.getpid()), "99999")))
    _train(out, 3, resume=True)
    assert list(out.rglob(".tmp-*")) == [] and _leftovers(out) == []


def test_final_save_killed_midway_is_marked_incomplete(tmp_path, monkeypatch, two_step_run):
    out = tmp_path / "run"
    shutil.copytree(two_step_run, out)
    before = _final_digest(out)
    with monkeypatch.context() as m:
        real, moved = os.replace, []

        def replace(src, dst):
            if ".tmp-final-" in str(src):
                if out / "model.safetensors" in moved:  # the new top-level model is in place, the rest is not
                    raise Killed()
                moved.append(Path(dst))
            return real(src, dst)

        m.setattr(os, "replace", replace)
        with pytest.raises(Killed):
            _train(out, 3, resume=True)
    assert _final_digest(out) != before and (out / FINAL_INCOMPLETE).is_file()
    assert "step 3" in (out / FINAL_INCOMPLETE).read_text()
    # meanwhile the mixed final model is refused by every loader, with the marker's explanation
    from convbert import ConvBertModel
    from convbert.pretrained import CheckpointError

    with pytest.raises(CheckpointError, match=r"interrupted save \(FINAL_SAVE_INCOMPLETE\).*step 3.*--resume"):
        ConvBertModel.from_pretrained(out)
    logs: list[str] = []
    _train(out, 3, resume=True, logs=logs)
    assert any("incomplete" in line for line in logs) and not (out / FINAL_INCOMPLETE).exists()


def test_metrics_rewrite_on_resume_is_atomic(tmp_path, monkeypatch, two_step_run):
    """The resume rewrites metrics.jsonl (dropping lines after the checkpoint): a kill there loses nothing."""
    out = tmp_path / "run"
    shutil.copytree(two_step_run, out)
    history = (out / loop.METRICS_FILE).read_text()
    with monkeypatch.context() as m:
        faults = Faults(out, kill_at=1).install(m)  # the first write of the resumed run is that rewrite
        with pytest.raises(Killed):
            _train(out, 3, resume=True)
    assert "metrics.jsonl" in faults.log[0]
    assert (out / loop.METRICS_FILE).read_text() == history


def test_full_disk_says_so(tmp_path, monkeypatch, two_step_run):
    out = tmp_path / "run"
    shutil.copytree(two_step_run, out)
    usage = shutil.disk_usage(tmp_path)
    with monkeypatch.context() as m:  # torch.save's own message on a full disk, and a full device
        def save(*a, **k):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

        m.setattr(torch, "save", save)
        m.setattr(shutil, "disk_usage", lambda p: usage._replace(free=4096))
        with pytest.raises(SystemExit, match="no space left on the device") as info:
            _train(out, 3, resume=True)
    assert "checkpoints" in str(info.value) and "--resume" in str(info.value)
    assert [p.name for p in checkpoint_dirs(out)] == ["step-0000002"] and list(out.rglob(".tmp-*")) == []

    with monkeypatch.context() as m:  # ENOSPC from a plain write (the metrics log)
        real = builtins.open

        def open_(file, mode="r", *a, **k):
            if "a" in mode and str(file).endswith("metrics.jsonl"):
                raise OSError(errno.ENOSPC, "No space left on device", str(file))
            return real(file, mode, *a, **k)

        m.setattr(builtins, "open", open_)
        with pytest.raises(SystemExit, match="no space left on the device while writing .*metrics.jsonl"):
            _train(out, 3, resume=True)


# --------------------------------------------------------------------------- 2. the output-directory lock


_HOLDER = """
import sys
from convbert.train.loop import claim_output_dir
claim_output_dir(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
"""


def _cli(out: Path, corpus: Path, *extra: str) -> dict:
    return run(["pretrain", "--objective", "mlm", "--train-file", str(corpus), "--vocab-size", "60",
                "--output-dir", str(out), "--model-size", "tiny", "--seq-len", "16", "--batch-size", "4",
                "--no-progress", "--log-every", "100", "--seed", "7", *extra])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(_WORDS) for _ in range(30)) for _ in range(60)) + "\n")
    return path


def test_second_run_into_a_held_directory_is_refused_naming_the_holder(tmp_path, corpus):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit, match=f"in use by another run \\(pid {holder.pid} on ") as info:
            _cli(out, corpus, "--max-steps", "1")
        assert LOCK_FILE in str(info.value)
        assert not (out / loop.METRICS_FILE).exists() and not (out / "checkpoints").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert not (out / LOCK_FILE).exists()  # released when the holder ended
    _cli(out, corpus, "--max-steps", "1")
    assert not (out / LOCK_FILE).exists()  # and by the run itself


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path, two_step_run):
    out = tmp_path / "run"
    shutil.copytree(two_step_run, out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": loop._HOST, "started": "earlier"}))
    logs: list[str] = []
    _train(out, 3, resume=True, logs=logs)
    assert any("took over the lock" in line and str(dead.pid) in line for line in logs)
    assert not (out / LOCK_FILE).exists()
    # a live holder on this host is respected, also by the trainer used without the CLI
    (out / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": loop._HOST, "started": "now"}))
    with pytest.raises(SystemExit, match=f"pid {os.getppid()}"):
        _train(out, 3, resume=True)


def test_lock_file_is_created_exclusively(tmp_path):
    """Two claims racing: the second O_EXCL create fails and, the holder being alive, is refused."""
    (tmp_path / "d").mkdir()
    first = loop.RunLock(tmp_path / "d")
    first.acquire()
    with pytest.raises(loop.OutputDirLocked, match="in use by another run"):
        second = loop.RunLock(tmp_path / "d")
        second._alive = lambda holder: True  # this process's own pid counts as gone otherwise
        second.acquire()
    first.release()
    assert not (tmp_path / "d" / LOCK_FILE).exists()


# --------------------------------------------------------------------------- 3. reproducible, sensible schedule


def test_wordpiece_vocabulary_is_deterministic(tmp_path, corpus):
    from convbert import train_wordpiece_vocab

    vocabs = {(Path(train_wordpiece_vocab([str(corpus)], 60, str(tmp_path / f"v{i}"))) / "vocab.txt").read_text()
              for i in range(4)}
    assert len(vocabs) == 1
    assert sorted(os.listdir(tmp_path)) == ["v0", "v1", "v2", "v3"]  # no temporaries left


def test_same_command_and_seed_give_the_same_losses(tmp_path, corpus):
    a = _cli(tmp_path / "a", corpus, "--max-steps", "3")
    b = _cli(tmp_path / "b", corpus, "--max-steps", "3")
    assert (tmp_path / "a" / "vocab.txt").read_text() == (tmp_path / "b" / "vocab.txt").read_text()
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b") and a["final_loss"] == b["final_loss"]


def test_resume_with_more_steps_follows_the_longer_schedule(tmp_path):
    """A finished 3-step run resumed with max_steps=5 trains step 4 at the 5-step schedule's rate (not 0)."""
    out, straight = tmp_path / "resumed", tmp_path / "straight"
    _train(out, 3, objective="mlm", warmup=1, lr=1e-3)
    logs: list[str] = []
    _train(out, 5, resume=True, objective="mlm", warmup=1, lr=1e-3, logs=logs)
    _train(straight, 5, objective="mlm", warmup=1, lr=1e-3)
    lrs = {r["step"]: r["lr"] for r in _records(out)}
    factor = loop.linear_schedule(1, 5)
    assert lrs[4] == pytest.approx(1e-3 * factor(3)) and lrs[4] > 0
    assert lrs[5] == pytest.approx(1e-3 * factor(4))
    assert {s: r["lr"] for s, r in ((r["step"], r) for r in _records(straight))}[4] == lrs[4]
    assert any("max_steps=5 (the checkpoint's run had 3)" in line for line in logs)
