"""Throughput of ConvBertTokenizer (pure Python) vs ConvBertTokenizerFast (tokenizers) on CPU.

A benchmark, not a test. It builds a WordPiece vocabulary with ``train_wordpiece_vocab`` on a
synthetic multilingual corpus (no download), then times ``tokenizer(docs, padding=True,
truncation=True, max_length=512)`` on a batch of documents, best of several repeats.

    python benchmarks/bench_tokenizers.py [--docs 256] [--repeats 5] [--out benchmarks/results/tokenizers-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from convbert import ConvBertTokenizer, ConvBertTokenizerFast, train_wordpiece_vocab  # noqa: E402

WORDS = (
    "the of and to in is was for on that with as by at from his her which an be this are or were had "
    "convolution attention transformer tokenization vocabulary representation pretraining discriminator "
    "généralement café naïve résumé Straße 東京 日本語 北京 Привет мир Γειά σου مرحبا "
    "running jumped quickly unbelievable internationalization 2024 3.14 hello, world! (yes) \"quoted\""
).split()


def make_docs(n_docs: int, words_per_doc: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        words = [rng.choice(WORDS) for _ in range(words_per_doc)]
        # sprinkle in unseen words so WordPiece has to split them
        for i in range(0, len(words), 17):
            words[i] = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 14)))
        docs.append(" ".join(words))
    return docs


def bench(tok, docs, repeats: int, max_length: int):
    tok(docs[:4], padding=True, truncation=True, max_length=max_length)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        enc = tok(docs, padding=True, truncation=True, max_length=max_length)
        best = min(best, time.perf_counter() - t0)
    n_tokens = sum(sum(m) for m in enc["attention_mask"])
    return best, n_tokens, enc["input_ids"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=256)
    p.add_argument("--words", type=int, default=300, help="words per document")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "tokenizers-cpu.json"))
    args = p.parse_args(argv)

    docs = make_docs(args.docs, args.words)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write("\n".join(make_docs(2000, 100, seed=1)))
        vocab_dir = train_wordpiece_vocab([corpus], args.vocab_size, os.path.join(tmp, "vocab"))
        slow = ConvBertTokenizer.from_pretrained(vocab_dir)
        fast = ConvBertTokenizerFast.from_pretrained(vocab_dir)
        vocab_size = fast.vocab_size
        results = {}
        ids = {}
        for name, tok in (("slow", slow), ("fast", fast)):
            seconds, n_tokens, ids[name] = bench(tok, docs, args.repeats, args.max_length)
            results[name] = {
                "seconds": seconds,
                "docs_per_s": len(docs) / seconds,
                "tokens_per_s": n_tokens / seconds,
                "tokens": n_tokens,
            }
    identical = ids["slow"] == ids["fast"]
    speedup = results["slow"]["seconds"] / results["fast"]["seconds"]

    try:
        import tokenizers

        tokenizers_version = tokenizers.__version__
    except Exception:  # pragma: no cover
        tokenizers_version = None
    record = {
        "benchmark": "tokenizers-cpu",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "tokenizers": tokenizers_version,
            "RAYON_RS_NUM_THREADS": os.environ.get("RAYON_RS_NUM_THREADS"),
        },
        "setup": {
            "docs": args.docs,
            "words_per_doc": args.words,
            "max_length": args.max_length,
            "vocab_size": vocab_size,
            "call": "tok(docs, padding=True, truncation=True, max_length=max_length)",
            "repeats": args.repeats,
            "timing": "best of repeats, wall clock",
        },
        "results": results,
        "fast_over_slow_speedup": speedup,
        "identical_input_ids": identical,
    }

    print(f"{len(docs)} docs x {args.words} words, max_length={args.max_length}, vocab={vocab_size}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    print(f"{'tokenizer':<24}{'seconds':>10}{'docs/s':>12}{'tokens/s':>14}")
    for name, cls in (("slow", "ConvBertTokenizer"), ("fast", "ConvBertTokenizerFast")):
        r = results[name]
        print(f"{cls:<24}{r['seconds']:>10.3f}{r['docs_per_s']:>12.1f}{r['tokens_per_s']:>14.0f}")
    print(f"fast / slow speed-up: {speedup:.1f}x; identical input_ids: {identical}")

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
