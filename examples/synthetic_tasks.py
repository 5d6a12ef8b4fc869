"""Write small synthetic data sets for the three fine-tuning tasks of ``convbert-train finetune``.

    python examples/synthetic_tasks.py DIR [--seed 0]

Each task is one a tiny ConvBERT learns in seconds, and each file is in a format users have:

- token classification: sentences of filler words with a person (``B-PER``) and a city (``B-LOC``
  ``I-LOC``) from fixed lists; ``ner-train.jsonl`` (``{"tokens", "tags"}``) and ``ner-eval.conll``
  (CoNLL: word, a POS column, tag; blank lines between sentences);
- question answering: "what follows key ?" over 40-60-word contexts holding ``key <name>`` once;
  ``qa-train.jsonl`` (the Hugging Face datasets layout) and ``qa-eval.json`` (SQuAD v1.1's JSON);
  ``qa2-train.jsonl`` / ``qa2-eval.jsonl`` make every second question unanswerable (SQuAD v2);
- multiple choice: the question names a person, the right one of four choices names the same
  person; ``mc-train.jsonl`` (``{"question", "choices", "label"}``) and ``mc-eval.csv`` (SWAG's CSV);
- ``corpus.txt``: plain text of the same words, to pre-train a model on first.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank"]
CITIES = [["paris"], ["london"], ["new", "york"], ["rome"], ["san", "diego"]]
FILLER = ["the", "cat", "sees", "a", "red", "ball", "in", "park", "likes", "green", "house", "old", "book", "near",
          "river", "bright", "lamp", "blue", "car", "tall", "tree", "and", "then", "walks", "home"]
MARKER = "key"


def tagged_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    """Filler words with a person (B-PER) and a city (B-LOC, I-LOC) at random places."""
    words = [rng.choice(FILLER) for _ in range(rng.randint(4, 9))]
    tags = ["O"] * len(words)
    for entity, kind in ((rng.choice(CITIES), "LOC"), ([rng.choice(PEOPLE)], "PER")):
        at = rng.randint(0, len(words))
        words[at:at] = entity
        tags[at:at] = [f"B-{kind}"] + [f"I-{kind}"] * (len(entity) - 1)
    return words, tags


def qa_example(rng: random.Random, qid: str, answerable: bool = True) -> dict:
    """A context of 40-60 filler words with ``key <name>`` inserted once (not at all when not
    ``answerable``); the answer is the name."""
    words = [rng.choice(FILLER) for _ in range(rng.randint(40, 60))]
    if not answerable:
        return {"id": qid, "question": f"what follows {MARKER} ?", "context": " ".join(words),
                "answers": {"text": [], "answer_start": []}}
    at = rng.randint(0, len(words) - 2)
    answer = rng.choice(PEOPLE)
    words[at:at] = [MARKER, answer]
    start = len(" ".join(words[:at + 1])) + 1
    return {"id": qid, "question": f"what follows {MARKER} ?", "context": " ".join(words),
            "answers": {"text": [answer], "answer_start": [start]}}


def choice_example(rng: random.Random) -> dict:
    """The question names one person; the right choice is the only one naming the same person."""
    names = rng.sample(PEOPLE, 4)
    label = rng.randrange(4)
    question = f"{names[label]} {rng.choice(FILLER)} {rng.choice(FILLER)}"
    choices = [f"{name} {rng.choice(FILLER)} {rng.choice(FILLER)} {rng.choice(FILLER)}" for name in names]
    return {"question": question, "choices": choices, "label": label}


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_conll(path: Path, sentences) -> Path:
    lines = ["-DOCSTART- -X- O", ""]
    for words, tags in sentences:
        lines += [f"{w} NN {t}" for w, t in zip(words, tags)] + [""]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_squad(path: Path, rows, version: str = "1.1") -> Path:
    paragraphs = [{"context": r["context"], "qas": [
        {"id": r["id"], "question": r["question"], "is_impossible": not r["answers"]["text"],
         "answers": [{"text": t, "answer_start": s} for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"])]}
    ]} for r in rows]
    path.write_text(json.dumps({"version": version, "data": [{"title": "synthetic", "paragraphs": paragraphs}]}))
    return path


def write_swag(path: Path, rows) -> Path:
    """SWAG's CSV columns; ``sent2`` is left empty so that each choice starts with its name."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source",
                         "ending0", "ending1", "ending2", "ending3", "label"])
        for i, row in enumerate(rows):
            writer.writerow([f"v{i}", i, row["question"], row["question"], "", "gold", *row["choices"], row["label"]])
    return path


def write_all(directory: Path, seed: int = 0, *, train: int = 240, evals: int = 48) -> dict[str, Path]:
    """Every file of the module docstring in ``directory``; returns {name: path}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files = {}
    docs = [" ".join(" ".join(tagged_sentence(rng)[0]) for _ in range(4)) + f" {MARKER} " + rng.choice(PEOPLE)
            for _ in range(200)]
    files["corpus"] = directory / "corpus.txt"
    files["corpus"].write_text("\n".join(docs) + "\n")
    files["ner-train"] = write_jsonl(directory / "ner-train.jsonl",
                                     [dict(zip(("tokens", "tags"), tagged_sentence(rng))) for _ in range(train)])
    files["ner-eval"] = write_conll(directory / "ner-eval.conll", [tagged_sentence(rng) for _ in range(evals)])
    files["qa-train"] = write_jsonl(directory / "qa-train.jsonl", [qa_example(rng, f"t{i}") for i in range(train)])
    files["qa-eval"] = write_squad(directory / "qa-eval.json", [qa_example(rng, f"e{i}") for i in range(evals)])
    files["qa2-train"] = write_jsonl(directory / "qa2-train.jsonl",
                                     [qa_example(rng, f"t{i}", i % 2 == 0) for i in range(train)])
    files["qa2-eval"] = write_jsonl(directory / "qa2-eval.jsonl",
                                    [qa_example(rng, f"e{i}", i % 2 == 0) for i in range(evals)])
    files["mc-train"] = write_jsonl(directory / "mc-train.jsonl", [choice_example(rng) for _ in range(train)])
    files["mc-eval"] = write_swag(directory / "mc-eval.csv", [choice_example(rng) for _ in range(evals)])
    return files


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=240, help="training examples per task")
    parser.add_argument("--eval", type=int, default=48, help="evaluation examples per task")
    args = parser.parse_args(argv)
    for name, path in write_all(args.directory, args.seed, train=args.train, evals=args.eval).items():
        print(f"{name:10s} {path}")


if __name__ == "__main__":
    main()
