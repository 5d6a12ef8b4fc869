"""convbert-train's inputs and face (issue 11, items 6 and 7): numeric flags range-checked, CSV as
Python's csv module and Excel write it (byte-order mark, quotes), file names in data errors; a
headline figure that falls, a held-out evaluation at the start and the end, a run directory without
a corpus copy or a second tokenizer, quiet builds and benchmarks. Tiny models, CPU, a few steps."""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convbert.train import run
from convbert.train.cli import build_parser
from convbert.train.data import DataError, read_documents, read_labelled

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model-size", "tiny", "--seq-len", "32", "--no-progress", "--log-every", "10"]
_WORDS = ["the cat", "a dog", "the old man", "my sister", "sees", "likes", "builds", "a red ball", "the green house",
          "in the park", "at home", "near the school"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("inputs")


def _write_corpus(path: Path, docs: int = 300) -> Path:
    rng = random.Random(0)
    path.write_text("\n".join(" ".join(rng.choice(_WORDS) for _ in range(16)) + " ." for _ in range(docs)) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(work) -> Path:
    return _write_corpus(work / "corpus.txt")


@pytest.fixture(scope="module")
def tokenizer_dir(work, corpus) -> Path:
    from convbert import train_wordpiece_vocab

    return Path(train_wordpiece_vocab([str(corpus)], 120, str(work / "tokenizer")))


def _metrics(out: Path, kind: str) -> list[dict]:
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("type", "train") == kind]


def _fails(argv: list[str], *needles: str) -> str:
    with pytest.raises(SystemExit) as info:
        run(argv)
    message = str(info.value)
    assert all(n in message for n in needles), message
    return message


# --------------------------------------------------------------------------- item 6: numeric flags


@pytest.mark.parametrize("argv,flag", [
    (["pretrain", "--seq-len", "4"], "--seq-len"),
    (["pretrain", "--seq-len", "many"], "--seq-len"),
    (["pretrain", "--lr", "nan"], "--lr"),
    (["pretrain", "--lr", "inf"], "--lr"),
    (["pretrain", "--lr", "0"], "--lr"),
    (["pretrain", "--mask-rate", "1.5"], "--mask-rate"),
    (["pretrain", "--mask-rate", "0"], "--mask-rate"),
    (["pretrain", "--warmup-ratio", "5"], "--warmup-ratio"),
    (["pretrain", "--epochs", "-1"], "--epochs"),
    (["pretrain", "--weight-decay", "nan"], "--weight-decay"),
    (["pretrain", "--max-grad-norm", "-1"], "--max-grad-norm"),
    (["pretrain", "--disc-weight", "inf"], "--disc-weight"),
    (["pretrain", "--generator-fraction", "2"], "--generator-fraction"),
    (["pretrain", "--held-out", "0.9"], "--held-out"),
    (["pretrain", "--vocab-size", "3"], "--vocab-size"),
    (["pretrain", "--seed", "-1"], "--seed"),
    (["pretrain", "--batch-size", "0"], "--batch-size"),
    (["finetune", "--train-file", "x.csv", "--num-labels", "1"], "--num-labels"),
])
def test_numeric_flags_are_range_checked(capsys, argv, flag):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert f"argument {flag}: must be" in err and "Traceback" not in err, err


def test_every_numeric_flag_has_a_checked_type():
    """No flag is a bare int or float (which takes nan, inf, negatives and so on)."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        bare = [a.option_strings[0] for a in sub._actions if a.type in (int, float)]
        assert not bare, f"{name}: {bare}"


def test_resume_from_a_checkpoint_without_weights(work, corpus, tokenizer_dir):
    base = ["pretrain", "--train-file", str(corpus), "--tokenizer", str(tokenizer_dir), *TINY, "--batch-size", "4"]
    run([*base, "--output-dir", str(work / "ckpt"), "--max-steps", "1", "--save-every", "1"])
    checkpoint = work / "ckpt" / "checkpoints" / "step-0000001"
    (checkpoint / "model.safetensors").unlink()
    _fails([*base, "--output-dir", str(work / "resumed"), "--max-steps", "2", "--resume", str(checkpoint)],
           "incomplete checkpoint", "model.safetensors")


# --------------------------------------------------------------------------- item 6: CSV, BOM, file names


def test_csv_with_a_byte_order_mark_reads(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text("text,label\r\na cat,0\r\na dog,1\r\n", encoding="utf-8-sig")  # Excel's "CSV UTF-8"
    data = read_labelled(path, "text", "label")
    assert data.texts == ["a cat", "a dog"] and data.labels == ["0", "1"] and data.skipped == 0


def test_jsonl_and_text_with_a_byte_order_mark_read(tmp_path):
    jl = tmp_path / "rows.jsonl"
    jl.write_text('{"text": "a cat", "label": 0}\n{"text": "a dog", "label": 1}\n', encoding="utf-8-sig")
    assert read_labelled(jl, "text", "label").skipped == 0
    txt = tmp_path / "docs.txt"
    txt.write_text("first document\nsecond document\n", encoding="utf-8-sig")
    assert read_documents([txt])[0] == "first document"


@pytest.mark.parametrize("bad_rows", ["skip", "error"])
def test_unterminated_quote_is_an_error_naming_file_and_line(tmp_path, bad_rows):
    path = tmp_path / "quotes.csv"
    path.write_text('text,label\ngood,1\n"unterminated,1\nnext,0\nlast,1\n')
    with pytest.raises(DataError, match=r"quotes\.csv:3: unterminated quote"):
        read_labelled(path, "text", "label", bad_rows=bad_rows)
    # The quote closes at a later row's opening quote: the rows between would vanish into one field.
    path.write_text('text,label\n"oops,1\nnext,0\n"quoted",1\nz,0\n')
    with pytest.raises(DataError, match=r"quotes\.csv:2: unbalanced quote.*line 4"):
        read_labelled(path, "text", "label", bad_rows=bad_rows)


def test_quoting_as_csv_and_excel_write_it(tmp_path):
    """Doubled quotes, quoted line breaks, a quote inside an unquoted field: read as the csv module does."""
    path = tmp_path / "fine.csv"
    path.write_text('text,label\n"say ""hi""",1\n"two\nlines",0\n5" screen,1\n\n"a, b",0\n')
    data = read_labelled(path, "text", "label", bad_rows="error")
    assert data.texts == ['say "hi"', "two\nlines", '5" screen', "a, b"]
    path.write_text('text,label\ngood,1\n"too",1,many\n\nfine,0\n')
    data = read_labelled(path, "text", "label")
    assert data.skipped == 1 and data.skip_reasons[0].endswith("fine.csv:3: 3 fields, the header has 2")


def test_data_errors_name_the_file(work, tokenizer_dir):
    labels = work / "words.csv"
    labels.write_text("text,label\na cat,good\na dog,bad\n")
    _fails(["finetune", "--train-file", str(labels), "--tokenizer", str(tokenizer_dir), "--model-size", "tiny",
            "--task", "regression", "--output-dir", str(work / "reg")], str(labels), "numeric labels")
    _fails(["finetune", "--train-file", str(labels), "--tokenizer", str(tokenizer_dir), "--model-size", "tiny",
            "--num-labels", "3", "--output-dir", str(work / "cls")], str(labels), "--num-labels 3")
    from convbert import ConvBertTokenizerFast
    from convbert.train.data import pack_documents

    tok = ConvBertTokenizerFast.from_pretrained(str(tokenizer_dir))
    with pytest.raises(DataError, match="'empty.txt' produced no tokens"):
        pack_documents(tok, [""], 32, source="'empty.txt'")


def test_wordpiece_training_on_a_binary_file_names_it(tmp_path, corpus):
    from convbert import train_wordpiece_vocab

    binary = tmp_path / "image.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match=r"image\.bin.* is not UTF-8 text"):
        train_wordpiece_vocab([str(corpus), str(binary)], 100, str(tmp_path / "tok"))


# --------------------------------------------------------------------------- item 7: headline, held-out eval


def test_electra_headline_is_the_generator_loss_with_the_full_gradient():
    from convbert import ConvBertConfig
    from convbert.configuration import MODEL_SIZES
    from convbert.train.electra import ElectraPretrainer

    config = ConvBertConfig(vocab_size=60, pad_token_id=0, **MODEL_SIZES["tiny"])
    ids = dict(special_ids=[0, 2, 3, 4], mask_id=4, pad_id=0)
    torch.manual_seed(0)
    weighted = ElectraPretrainer(config, **ids, disc_weight=50.0).eval()  # eval: no dropout, same forward twice
    unit = ElectraPretrainer(config, **ids, disc_weight=1.0).eval()
    unit.load_state_dict(weighted.state_dict())
    blocks = {"input_ids": torch.randint(5, 60, (4, 16)), "attention_mask": torch.ones(4, 16, dtype=torch.long)}
    batch = weighted.make_batch(blocks, torch.Generator().manual_seed(1))
    grads = []
    for module in (weighted, unit):
        out = module(**batch)
        assert out["loss"].item() == pytest.approx(out["gen_loss"].item(), rel=1e-6)  # the headline falls
        total = out["gen_loss"] + module.disc_weight * out["disc_loss"]
        assert out["total_loss"].item() == pytest.approx(total.item(), rel=1e-5)  # the objective is logged
        out["loss"].backward()
        grads.append(module.discriminator_head.dense_prediction.weight.grad.clone())
    # The discriminator term is optimised, with its weight: its head's gradient scales with disc_weight.
    torch.testing.assert_close(grads[0], 50 * grads[1], rtol=1e-4, atol=1e-7)


def test_main_job_shows_learning(work, corpus, tokenizer_dir, capsys):
    out = work / "learning"
    summary = run(["pretrain", "--train-file", str(corpus), "--tokenizer", str(tokenizer_dir), "--output-dir",
                   str(out), *TINY, "--max-steps", "30", "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "3",
                   "--held-out", "0.1"])
    printed = capsys.readouterr()
    # The headline "loss" of each log line is the generator's MLM loss; the objective is in total_loss.
    lines = [ln for ln in printed.out.splitlines() if ln.startswith("step ")]
    assert len(lines) == 4
    for line in lines:
        shown = dict(re.findall(r"\|\s*(\w+) ([\d.]+)", line))
        assert shown["loss"] == shown["gen_loss"] and "total_loss" in shown, line
    train = _metrics(out, "train")
    first, last = sum(r["loss"] for r in train[:5]) / 5, sum(r["loss"] for r in train[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    assert all(r["total_loss"] == pytest.approx(r["gen_loss"] + 50 * r["disc_loss"], rel=1e-4) for r in train)
    # A held-out evaluation at the start and the end, printed and in metrics.jsonl.
    evals = _metrics(out, "eval")
    assert [r["step"] for r in evals] == [0, 30]
    assert evals[1]["eval_mlm_loss"] < evals[0]["eval_mlm_loss"]
    assert evals[1]["eval_masked_acc"] > evals[0]["eval_masked_acc"]
    assert "held-out eval @ step 0: masked-token accuracy" in printed.out
    assert "held-out eval @ step 30: masked-token accuracy" in printed.out
    assert summary["eval"] == {k: v for k, v in evals[1].items() if k not in ("type", "step")}
    assert "Warning" not in printed.err and "Traceback" not in printed.err, printed.err


def test_no_held_out_evaluation_when_asked(work, corpus, tokenizer_dir):
    out = work / "no-eval"
    run(["pretrain", "--train-file", str(corpus), "--tokenizer", str(tokenizer_dir), "--output-dir", str(out), *TINY,
         "--objective", "mlm", "--max-steps", "1", "--batch-size", "4", "--held-out", "0"])
    assert _metrics(out, "eval") == [] and len(_metrics(out, "train")) == 1


# --------------------------------------------------------------------------- item 7: run directory


def test_run_directory_holds_no_corpus_copy_or_second_tokenizer(tmp_path, monkeypatch):
    import convbert.train.corpus as corpus_module

    gathered = []

    def small_corpus(path):  # stands in for gathering the standard library's docstrings
        gathered.append(Path(path))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return _write_corpus(Path(path))

    monkeypatch.setattr(corpus_module, "write_stdlib_corpus", small_corpus)
    monkeypatch.setenv("CONVBERT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = ["pretrain", "--vocab-size", "120", "--output-dir", str(out), *TINY, "--batch-size", "4",
            "--save-every", "1"]
    run([*argv, "--max-steps", "1"])
    assert len(gathered) == 1 and gathered[0].parent == tmp_path / "cache" and gathered[0].is_file()
    top = sorted(p.name for p in out.iterdir())
    assert not (out / "tokenizer").exists() and [n for n in top if n.endswith(".txt")] == ["vocab.txt"], top
    assert sum(1 for p in out.rglob("vocab.txt") if "checkpoints" not in p.parts) == 1
    # A resumed run (the demo's arguments include --vocab-size) keeps the vocabulary and the cached corpus.
    vocab = (out / "vocab.txt").read_text()
    run([*argv, "--max-steps", "2", "--resume"])
    assert len(gathered) == 1 and (out / "vocab.txt").read_text() == vocab
    assert [r["step"] for r in _metrics(out, "train")] == [1, 2]


# --------------------------------------------------------------------------- item 7: quiet build and benchmark


def test_build_script_is_quiet_without_numpy():
    """setup.py as pip runs it without build isolation on a fresh venv: torch installed, numpy not yet."""
    code = ("import runpy, sys; sys.modules['numpy'] = None; sys.argv = ['setup.py', '--name']; "
            "runpy.run_path('setup.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "convbert-kernels" in proc.stdout, output
    assert "Failed to initialize NumPy" not in output, output
    assert "Deprecat" not in output and "deprecated" not in output, output


def test_benchmark_script_silences_the_profiler():
    script = (REPO / "scripts" / "bench.sh").read_text()
    found = re.search(r'^export KINETO_LOG_LEVEL="\$\{KINETO_LOG_LEVEL:-(\d+)\}"', script, re.MULTILINE)
    assert found, "scripts/bench.sh does not set KINETO_LOG_LEVEL"
    assert '"$@" > "$log" 2>&1' in script  # the benchmarks' stderr goes to their logs, not around the tables
    code = "import torch; from benchmarks.common import cpu_peak_bytes; cpu_peak_bytes(lambda: torch.ones(1000) * 2)"
    env = dict(os.environ, KINETO_LOG_LEVEL=found.group(1))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not re.search(r"^(STAGE|USDT|ERROR|WARNING):", proc.stdout + proc.stderr, re.MULTILINE), proc.stderr
