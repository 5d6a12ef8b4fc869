"""convbert-train: pre-training (ELECTRA and MLM), exact resume, fine-tuning, DDP with gloo, the
Hugging Face round trip, and clear errors for bad input. Tiny models, CPU only, short runs."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from convbert.train import main, run
from convbert.train.data import BatchPlan, DataError, read_documents, read_labelled
from convbert.train.loop import TRAINER_STATE, checkpoint_dirs, latest_checkpoint
from convbert.train.metrics import accuracy, f1, pearson, spearman

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model-size", "tiny", "--seq-len", "32", "--no-progress", "--log-every", "100"]

_SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the teacher", "a small bird", "the robot", "our team"]
_VERBS = ["sees", "likes", "builds", "finds", "paints", "carries", "reads", "follows"]
_OBJECTS = ["a red ball", "the green house", "an old book", "the long river", "a bright lamp", "the blue car",
            "a wooden table", "the tall tree"]
_PLACES = ["in the park", "at home", "near the school", "by the sea", "on the hill", "under the bridge"]


def _sentence(rng: random.Random) -> str:
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_PLACES)} ."


def _metrics(out: Path, kind: str = "train") -> list[dict]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("type", "train") == kind]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def corpus(work) -> Path:
    rng = random.Random(0)
    docs = [" ".join(_sentence(rng) for _ in range(4)) for _ in range(300)]
    path = work / "corpus.txt"
    path.write_text("\n".join(docs) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(work, corpus) -> Path:
    from convbert import train_wordpiece_vocab

    return Path(train_wordpiece_vocab([str(corpus)], 120, str(work / "tokenizer")))


def _pretrain(out: Path, corpus: Path, tokenizer_dir: Path, *extra: str) -> dict:
    return run(["pretrain", "--train-file", str(corpus), "--tokenizer", str(tokenizer_dir), "--output-dir", str(out),
                *TINY, *extra])


@pytest.fixture(scope="module")
def mlm_run(work, corpus, tokenizer_dir) -> Path:
    out = work / "mlm"
    _pretrain(out, corpus, tokenizer_dir, "--objective", "mlm", "--max-steps", "40", "--batch-size", "8",
              "--lr", "3e-3", "--warmup-steps", "4")
    return out


# --------------------------------------------------------------------------- pre-training


def _falls(losses: list[float], factor: float) -> None:
    head, tail = np.mean(losses[:5]), np.mean(losses[-5:])
    assert tail < factor * head, f"loss did not fall enough: first {head:.3f}, last {tail:.3f}"


def test_mlm_pretrain_loss_falls_and_saves(mlm_run):
    losses = [r["loss"] for r in _metrics(mlm_run)]
    assert len(losses) == 40
    _falls(losses, 0.9)
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "loss_curve.png"):
        assert (mlm_run / name).is_file(), name
    assert json.loads((mlm_run / "config.json").read_text())["architectures"] == ["ConvBertForMaskedLM"]
    assert not list(mlm_run.glob(".tmp-*"))


def test_electra_pretrain_loss_falls(work, corpus, tokenizer_dir):
    out = work / "electra"
    summary = _pretrain(out, corpus, tokenizer_dir, "--max-steps", "30", "--batch-size", "8", "--lr", "3e-3",
                        "--warmup-steps", "3")
    records = _metrics(out)
    _falls([r["total_loss"] for r in records], 0.8)  # the objective: generator + 50 x discriminator
    _falls([r["loss"] for r in records], 0.95)  # the headline: the generator's masked-LM loss
    assert {"disc_loss", "disc_acc", "gen_acc", "tokens_per_s", "lr"} <= set(records[-1])
    assert summary["steps"] == 30
    # The discriminator is the saved model; the generator (a fraction of its width) sits in generator/.
    disc = json.loads((out / "config.json").read_text())
    gen = json.loads((out / "generator" / "config.json").read_text())
    assert disc["architectures"] == ["ConvBertModel"] and gen["architectures"] == ["ConvBertForMaskedLM"]
    assert gen["hidden_size"] < disc["hidden_size"] and gen["embedding_size"] == disc["embedding_size"]
    assert (out / "discriminator_head.safetensors").is_file()


def test_electra_shares_embeddings():
    from convbert import ConvBertConfig
    from convbert.configuration import MODEL_SIZES
    from convbert.train.electra import ElectraPretrainer

    config = ConvBertConfig(vocab_size=100, pad_token_id=0, **MODEL_SIZES["small"])
    module = ElectraPretrainer(config, special_ids=[0, 2, 3, 4], mask_id=4, pad_id=0)
    assert module.generator.convbert.embeddings is module.discriminator.embeddings
    assert module.generator.generator_lm_head.weight is module.discriminator.embeddings.word_embeddings.weight
    assert module.generator.config.hidden_size == 64 and module.generator.config.num_hidden_layers == 12


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs(work, corpus, tokenizer_dir, precision):
    out = work / f"precision-{precision}"
    _pretrain(out, corpus, tokenizer_dir, "--objective", "mlm", "--max-steps", "3", "--batch-size", "4",
              "--precision", precision, "--gradient-checkpointing")
    records = _metrics(out)
    assert len(records) == 3 and all(np.isfinite(r["loss"]) for r in records)


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("objective,accum", [("electra", 2), ("mlm", 1)])
def test_resume_continues_the_same_loss_curve(work, corpus, tokenizer_dir, objective, accum):
    args = ["--objective", objective, "--max-steps", "6", "--batch-size", "4", "--grad-accum", str(accum),
            "--lr", "2e-3", "--save-every", "3", "--keep-checkpoints", "0"]
    straight = work / f"straight-{objective}"
    _pretrain(straight, corpus, tokenizer_dir, *args)
    first = checkpoint_dirs(straight)[0]
    assert first.name == "step-0000003" and (first / TRAINER_STATE).is_file()

    resumed = work / f"resumed-{objective}"
    _pretrain(resumed, corpus, tokenizer_dir, *args, "--resume", str(first))
    a = {r["step"]: r["loss"] for r in _metrics(straight)}
    b = {r["step"]: r["loss"] for r in _metrics(resumed)}
    assert sorted(b) == [4, 5, 6]
    assert [b[s] for s in (4, 5, 6)] == [a[s] for s in (4, 5, 6)]  # bit for bit

    # Resuming in place (--resume with no path) picks the latest checkpoint of the output dir.
    main(["pretrain", "--train-file", str(corpus), "--tokenizer", str(tokenizer_dir), "--output-dir", str(straight),
          *TINY, *args[:-4], "--max-steps", "8", "--resume"])
    again = _metrics(straight)
    assert [r["step"] for r in again] == list(range(1, 9))


def test_checkpoint_is_never_half_written(work, corpus, tokenizer_dir, monkeypatch):
    import convbert.train.loop as loop

    out = work / "crash"
    real_save = torch.save

    def crash(obj, path, *a, **k):
        if "step-0000004" in str(path):
            Path(path).write_bytes(b"partial")
            raise OSError("disk full (simulated)")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(loop.torch, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        _pretrain(out, corpus, tokenizer_dir, "--objective", "mlm", "--max-steps", "6", "--batch-size", "4",
                  "--save-every", "2", "--keep-checkpoints", "0")
    assert [p.name for p in checkpoint_dirs(out)] == ["step-0000002"]
    assert not (out / "checkpoints" / "step-0000004").exists()
    assert latest_checkpoint(out).name == "step-0000002"


# --------------------------------------------------------------------------- Hugging Face round trip


def test_saved_model_loads_in_transformers_with_equal_outputs(mlm_run):
    transformers = pytest.importorskip("transformers")
    from convbert import ConvBertForMaskedLM, ConvBertTokenizerFast

    tok = ConvBertTokenizerFast.from_pretrained(str(mlm_run))
    batch = tok(["the cat sees a red ball in the park .", "our team reads"], padding=True, return_tensors="pt")
    ours = ConvBertForMaskedLM.from_pretrained(mlm_run, conv_backend="eager").eval()
    theirs = transformers.ConvBertForMaskedLM.from_pretrained(str(mlm_run)).eval()
    with torch.no_grad():
        a = ours(**batch).logits
        b = theirs(**batch).logits
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(mlm_run))
    assert hf_tok("the cat sees")["input_ids"] == tok("the cat sees")["input_ids"]


# --------------------------------------------------------------------------- fine-tuning


def _keyword_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = _sentence(rng)
        label = i % 2
        if label:
            words = text.split()
            words.insert(rng.randrange(len(words)), "banana")
            text = " ".join(words)
        rows.append({"text": text, "label": label})
    return rows


def _write_csv(path: Path, rows: list[dict], extra_lines: str = "") -> Path:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
        f.write(extra_lines)
    return path


def test_finetune_keyword_task_reaches_high_accuracy(work, mlm_run):
    transformers = pytest.importorskip("transformers")
    # Two malformed rows (an extra field, a missing label) are skipped and counted.
    train = _write_csv(work / "train.csv", _keyword_rows(240, 1), 'a b c,1,extra\n"no label",\n')
    evals = work / "eval.jsonl"
    evals.write_text("".join(json.dumps(r) + "\n" for r in _keyword_rows(64, 2)))
    out = work / "finetuned"
    summary = run(["finetune", "--init-from", str(mlm_run), "--train-file", str(train), "--eval-file", str(evals),
                    "--output-dir", str(out), "--seq-len", "32", "--batch-size", "16", "--epochs", "10", "--lr", "1e-3",
                    "--no-progress"])
    assert summary["eval"]["eval_accuracy"] >= 0.9, summary["eval"]
    assert "eval_f1" in summary["eval"]
    assert json.loads((out / "eval_results.json").read_text())["eval_accuracy"] >= 0.9
    assert len(_metrics(out, "eval")) == 10  # one evaluation per epoch

    hf = transformers.ConvBertForSequenceClassification.from_pretrained(str(out)).eval()
    assert hf.config.num_labels == 2
    from convbert import ConvBertForSequenceClassification, ConvBertTokenizerFast

    ours = ConvBertForSequenceClassification.from_pretrained(out, conv_backend="eager").eval()
    batch = ConvBertTokenizerFast.from_pretrained(str(out))(["the cat sees banana"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, hf(**batch).logits, atol=2e-5, rtol=1e-4)


def test_finetune_from_electra_discriminator_regression(work, corpus, tokenizer_dir):
    electra = work / "electra-src"
    _pretrain(electra, corpus, tokenizer_dir, "--max-steps", "2", "--batch-size", "4")
    rng = random.Random(5)
    rows = [{"text": _sentence(rng), "score": i % 5 + 0.5} for i in range(40)]
    data = work / "reg.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = work / "reg"
    summary = run(["finetune", "--init-from", str(electra), "--train-file", str(data), "--eval-file", str(data),
                    "--label-column", "score", "--output-dir", str(out), "--seq-len", "32", "--batch-size", "8",
                    "--max-steps", "3", "--no-progress"])
    assert {"eval_pearson", "eval_spearman", "eval_mse"} <= set(summary["eval"])
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1


# --------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_ddp(work, corpus, tokenizer_dir):
    out = work / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "convbert.train", "pretrain", "--train-file", str(corpus),
           "--tokenizer", str(tokenizer_dir), "--output-dir", str(out), *TINY, "--device", "cpu",
           "--max-steps", "4", "--batch-size", "4", "--save-every", "2", "--log-every", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "x 2 processes" in proc.stdout
    records = _metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # written once (by rank 0)
    assert all(r["tokens"] == 2 * 4 * 32 for r in records)  # both ranks' tokens counted
    state = torch.load(out / "checkpoints" / "step-0000004" / TRAINER_STATE, weights_only=False)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert (out / "model.safetensors").is_file() and (out / "generator" / "model.safetensors").is_file()


def test_batch_plan_shards_disjointly_and_resumes():
    plans = [BatchPlan(50, 4, world_size=2, rank=r, seed=3) for r in range(2)]
    for epoch_start in (0, plans[0].batches_per_epoch):
        seen = [sum((p.batch(epoch_start + b) for b in range(p.batches_per_epoch)), []) for p in plans]
        assert not set(seen[0]) & set(seen[1])
        assert len(seen[0]) == len(seen[1]) == 24
    assert plans[0].batch(0) != plans[0].batch(plans[0].batches_per_epoch)  # reshuffled each epoch
    assert BatchPlan(50, 4, world_size=2, rank=0, seed=3).batch(7) == plans[0].batch(7)


# --------------------------------------------------------------------------- bad input


def _fails(argv: list[str], match: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert match in str(info.value), str(info.value)


def test_missing_and_empty_data_files(work, tokenizer_dir):
    empty = work / "empty.txt"
    empty.write_text("")
    blank = work / "blank.txt"
    blank.write_text("\n   \n\n")
    base = ["pretrain", "--tokenizer", str(tokenizer_dir), *TINY, "--max-steps", "1"]
    _fails([*base, "--train-file", str(work / "nope.txt"), "--output-dir", str(work / "bad1")], "does not exist")
    _fails([*base, "--train-file", str(empty), "--output-dir", str(work / "bad2")], "is empty")
    _fails([*base, "--train-file", str(blank), "--output-dir", str(work / "bad3")], "holds no text")
    _fails(["finetune", "--train-file", str(empty), "--init-from", str(work), "--output-dir", str(work / "bad4")],
           "is empty")


def test_malformed_rows_skipped_or_error(work, mlm_run):
    path = work / "rows.csv"
    path.write_text('text,label\ngood one,1\n"too",1,many\nmissing label,\n,0\nfine too,0\n')
    data = read_labelled(path, "text", "label")
    assert data.texts == ["good one", "fine too"] and data.skipped == 3
    assert any(":3:" in r for r in data.skip_reasons)
    with pytest.raises(DataError, match=r"rows.csv:3"):
        read_labelled(path, "text", "label", bad_rows="error")
    _fails(["finetune", "--init-from", str(mlm_run), "--train-file", str(path), "--bad-rows", "error",
            "--output-dir", str(work / "bad5")], "malformed row")
    _fails(["finetune", "--init-from", str(mlm_run), "--train-file", str(path), "--label-column", "y",
            "--output-dir", str(work / "bad6")], "no column(s) ['y']")
    jl = work / "rows.jsonl"
    jl.write_text('{"text": "a", "label": 1}\n{not json}\n["list"]\n{"text": "b", "label": 0}\n')
    data = read_labelled(jl, "text", "label")
    assert data.texts == ["a", "b"] and data.skipped == 2


def test_label_outside_num_labels(work, mlm_run):
    path = _write_csv(work / "labels.csv", [{"text": "a cat", "label": 0}, {"text": "a dog", "label": 3}])
    _fails(["finetune", "--init-from", str(mlm_run), "--train-file", str(path), "--num-labels", "2",
            "--output-dir", str(work / "bad7")], "outside [0, num_labels=2)")
    ev = _write_csv(work / "labels-eval.csv", [{"text": "a cat", "label": 5}])
    ok = _write_csv(work / "labels-ok.csv", [{"text": "a cat", "label": 0}, {"text": "a dog", "label": 1}])
    _fails(["finetune", "--init-from", str(mlm_run), "--train-file", str(ok), "--eval-file", str(ev),
            "--output-dir", str(work / "bad8")], "outside [0, num_labels=2)")


def test_checkpoint_of_a_different_config(work, corpus, tokenizer_dir, mlm_run):
    ok = _write_csv(work / "cfg.csv", [{"text": "a cat", "label": 0}, {"text": "a dog", "label": 1}])
    _fails(["finetune", "--init-from", str(mlm_run), "--model-size", "small", "--train-file", str(ok),
            "--output-dir", str(work / "bad9")], "different model config")
    _fails(["pretrain", "--init-from", str(mlm_run), "--train-file", str(corpus), "--set", "hidden_size=128",
            *TINY[2:], "--output-dir", str(work / "bad10")], "hidden_size: checkpoint 64 vs this run 128")
    ckpt = work / "ckpt-src"
    _pretrain(ckpt, corpus, tokenizer_dir, "--objective", "mlm", "--max-steps", "2", "--batch-size", "2",
              "--save-every", "1")
    _fails(["pretrain", "--train-file", str(corpus), "--tokenizer", str(tokenizer_dir), "--objective", "mlm",
            "--model-size", "tiny", "--set", "num_hidden_layers=3", "--seq-len", "32", "--no-progress",
            "--output-dir", str(work / "bad11"), "--resume", str(latest_checkpoint(ckpt))],
           "num_hidden_layers: checkpoint 2 vs this run 3")


def test_unwritable_or_reused_output_dir(work, corpus, tokenizer_dir, mlm_run):
    blocker = work / "a-file"
    blocker.write_text("x")
    base = ["pretrain", "--train-file", str(corpus), "--tokenizer", str(tokenizer_dir), *TINY, "--max-steps", "1"]
    _fails([*base, "--output-dir", str(blocker)], "is not a directory")
    _fails([*base, "--output-dir", str(blocker / "sub")], "cannot write to the output directory")
    _fails([*base, "--output-dir", str(mlm_run)], "already holds a run")
    _fails([*base, "--output-dir", str(work / "fresh"), "--resume"], "no checkpoint")


# --------------------------------------------------------------------------- defaults, corpus, metrics


def test_no_arguments_pretrains_on_the_stdlib_corpus(monkeypatch):
    import convbert.train.cli as cli

    seen = {}

    def fake(args, env):
        seen["args"] = args
        return None

    monkeypatch.setattr(cli, "run_pretrain", fake)
    assert main([]) == 0  # the console script's exit status (sys.exit of a dict would be 1)
    args = seen["args"]
    assert args.command == "pretrain" and args.objective == "electra" and args.train_file == []
    assert args.model_size == "small" and args.vocab_size == 8000 and args.max_steps >= 100


def test_stdlib_corpus_is_deterministic(tmp_path, monkeypatch):
    from convbert.train.corpus import write_stdlib_corpus

    monkeypatch.chdir(tmp_path)
    a = write_stdlib_corpus(Path("rel") / "a.txt").read_text()  # a relative path, as the default output dir is
    b = write_stdlib_corpus(tmp_path / "b.txt").read_text()
    assert a == b
    docs = read_documents([tmp_path / "rel" / "a.txt"])
    assert len(docs) > 1000 and sum(len(d.split()) for d in docs) > 50_000
    assert any("JSON" in d for d in docs)


def test_metrics_match_known_values():
    assert accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == 0.75
    assert f1([1, 0, 1, 1], [1, 0, 0, 1]) == pytest.approx(0.8)
    assert f1([0, 1, 2, 2], [0, 1, 2, 1], num_labels=3) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert spearman(x, x ** 3) == pytest.approx(1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)


def test_console_script_and_module_help():
    proc = subprocess.run([sys.executable, "-m", "convbert.train", "pretrain", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--objective" in proc.stdout and "--resume" in proc.stdout
    script = Path(sys.executable).with_name("convbert-train")
    if script.exists():
        proc = subprocess.run([str(script), "finetune", "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "--text-pair-column" in proc.stdout


def test_console_script_exits_zero_after_a_real_run(tmp_path, corpus, tokenizer_dir):
    """The installed entry point does sys.exit(main()): a finished run must exit 0, not print a dict."""
    script = Path(sys.executable).with_name("convbert-train")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "convbert.train"]
    proc = subprocess.run([*command, "pretrain", "--objective", "mlm", "--train-file", str(corpus), "--tokenizer",
                           str(tokenizer_dir), "--output-dir", str(tmp_path / "run"), "--max-steps", "2",
                           "--batch-size", "2", *TINY], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "config.json").is_file()
