"""Unpadding benchmark: ConvBERT padded vs unpadded on the token lengths of a real corpus.

Lengths
    The standard-library docstring corpus that ``convbert-train pretrain`` trains on by default
    (its cached file, :func:`convbert.train.cli.stdlib_corpus_path`, gathered when missing: the
    documents of :func:`convbert.train.corpus.stdlib_documents`), tokenized with the WordPiece
    vocabulary ``convbert-train pretrain`` trains on it by default (8000 entries, deterministic;
    kept in the convbert cache directory) with ``[CLS]`` and ``[SEP]``, truncated at 512 tokens.
    The real token ids are the inputs.

Batches
    Seeded random draws of B documents (32; without replacement within a batch). Each batch is
    padded to its own longest sequence (dynamic padding, as ``convbert-train finetune`` pads); the
    padded model computes on that rectangle, the unpadded one gets the same tensors and drops the
    padding itself. Both providers see the same batches, one after the other, batch by batch.

Providers
    ``padded``   ConvBertConfig(conv_mask_padding=True, unpad_inputs=False)
    ``unpadded`` ConvBertConfig(conv_mask_padding=True, unpad_inputs=True), the same weights
    at ConvBERT-small / -base (:data:`convbert.configuration.MODEL_SIZES`; vocabulary of the
    tokenizer, 512 positions, dropout 0).

Modes
    ``inference``  ``torch.no_grad`` forward of the backbone (ConvBertModel), eval mode.
    ``train``      forward + backward + ``AdamW.step`` of the masked-LM loss as ``convbert-train``
                   computes it (15% of each sequence's real, non-special tokens masked; the MLM head
                   only at the masked positions). The learning rate is 0, so the two models keep
                   equal weights and every step's loss can be compared; AdamW does the same work at
                   any learning rate.

Reported per (size, mode, provider): real (non-padding) tokens per second = all batches' real
tokens / the sum of their wall-clock times (one call per batch after an untimed warm-up call;
``cpu_time_s`` beside it is the process's CPU time, about threads x wall on an otherwise idle
machine); the padded
model's rectangle tokens/s beside it; peak memory of one call on the batch with the median padded
length (CPU: tensor bytes allocated above the level before the call, from the profiler's memory
events, ``benchmarks.common.cpu_peak_bytes``; CUDA: ``max_memory_allocated``). The two providers
must agree on every batch: the hidden states at real tokens (inference; max abs difference at most
``--tol`` times their scale) and the loss (training); a disagreement stops the run before any of
its figures is written (:class:`AccuracyError`).

Attention alone (``bench="unpad-attention"``): for the same batches and the model's attention
heads, one ``scaled_dot_product_attention`` per sequence on the packed ``[T, n, d]`` tokens
(:meth:`convbert.packing.PackedBatch.attention`, the CPU path) against padding them to a ``[B, n,
L, d]`` rectangle, one SDPA with a key-padding mask and packing the result back; forward (no
grad) and forward + backward, same outputs checked.

    python -m benchmarks.bench_unpad --preset cpu --backend eager   # ConvBERT-small and -base, ~10 min
    python -m benchmarks.bench_unpad --preset quick                 # tiny model, < 1 min (the test's)

Rows go to ``benchmarks/results/unpad-<device>.jsonl`` (``--out``), the length histogram to
``<that stem>-lengths.png`` beside it; the markdown tables are printed.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # the CPU peak-memory profiler: no log lines between the rows

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import common  # noqa: E402

PROVIDERS = ("padded", "unpadded")
MODES = ("inference", "train")
MAX_LEN = 512
VOCAB_SIZE = 8000  # convbert-train pretrain's default vocabulary
PRESETS = {
    # size -> (inference batches, training batches, attention batches)
    "cpu": dict(sizes={"small": (8, 4, 8), "base": (3, 2, 8)}, batch=32),
    "quick": dict(sizes={"tiny": (2, 2, 2)}, batch=32),
}


class AccuracyError(RuntimeError):
    """The padded and unpadded models disagree: nothing is timed."""


# ----------------------------------------------------------------------------------------------
# Corpus, tokenizer, batches
# ----------------------------------------------------------------------------------------------


def corpus_documents() -> tuple[Path, list[str]]:
    """The documents ``convbert-train pretrain`` reads by default (the cached stdlib docstring corpus)."""
    from convbert.train.cli import stdlib_corpus_path
    from convbert.train.corpus import write_stdlib_corpus
    from convbert.train.data import read_documents

    path = stdlib_corpus_path()
    if not path.is_file():
        print(f"# gathering the standard library's docstrings into {path} ...", flush=True)
        write_stdlib_corpus(path)
    return path, read_documents([path])


def corpus_tokenizer(corpus: Path, vocab_size: int = VOCAB_SIZE):
    """convbert-train pretrain's default vocabulary of ``corpus`` (trained once, then cached)."""
    from convbert import ConvBertTokenizerFast, train_wordpiece_vocab
    from convbert.train.cli import cache_dir

    directory = cache_dir() / "bench-unpad" / f"{corpus.stem}-wordpiece-{vocab_size}"
    if not (directory / "vocab.txt").is_file():
        print(f"# training the WordPiece vocabulary of {vocab_size} on {corpus.name} into {directory} ...", flush=True)
        train_wordpiece_vocab([str(corpus)], vocab_size, str(directory))
    return ConvBertTokenizerFast.from_pretrained(str(directory))


def encode(tokenizer, documents: list[str], max_len: int = MAX_LEN) -> list[list[int]]:
    return tokenizer(documents, truncation=True, max_length=max_len, return_attention_mask=False,
                     return_token_type_ids=False)["input_ids"]


def draw_batches(num_docs: int, batch: int, count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [rng.sample(range(num_docs), batch) for _ in range(count)]


def collate(encoded: list[list[int]], indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded to the longest sequence of the batch."""
    seqs = [encoded[i] for i in indices]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(s)
        mask[row, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def length_stats(lengths: list[int], batch: int, seed: int, draws: int = 2000) -> dict:
    """Summary of the lengths and of random batches padded to their longest sequence."""
    ordered = sorted(lengths)
    rng = random.Random(seed + 1)
    real = padded = 0
    for _ in range(draws):
        sample = rng.sample(lengths, batch)
        real += sum(sample)
        padded += batch * max(sample)
    edges = list(range(0, MAX_LEN + 32, 32))
    counts = [sum(1 for n in lengths if lo < n <= hi) for lo, hi in zip(edges, edges[1:])]
    return dict(documents=len(lengths), mean=statistics.fmean(lengths), median=statistics.median(lengths),
                p90=ordered[int(0.9 * (len(ordered) - 1))], p99=ordered[int(0.99 * (len(ordered) - 1))],
                max=ordered[-1], truncated=sum(n >= MAX_LEN for n in lengths) / len(lengths),
                real_fraction_of_padded_batches=real / padded, bin_edges=edges, bin_counts=counts)


# ----------------------------------------------------------------------------------------------
# Models and steps
# ----------------------------------------------------------------------------------------------


def build_models(size: str, tokenizer, backend: str, device):
    """(padded, unpadded) ConvBertForMaskedLM with the same weights, eval mode, on ``device``."""
    import convbert
    from convbert.configuration import MODEL_SIZES

    values = dict(MODEL_SIZES[size], vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                  max_position_embeddings=MAX_LEN, conv_backend=backend, conv_mask_padding=True,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    padded = convbert.ConvBertForMaskedLM(convbert.ConvBertConfig(**values, unpad_inputs=False))
    unpadded = convbert.ConvBertForMaskedLM(convbert.ConvBertConfig(**values, unpad_inputs=True))
    unpadded.load_state_dict(padded.state_dict())
    return padded.to(device).eval(), unpadded.to(device).eval()


def mlm_labels(batch: dict, tokenizer, seed: int) -> dict:
    from convbert.train.electra import mask_tokens

    special = [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id]
    ids, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], special_ids=special,
                              mask_id=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                              rng=torch.Generator().manual_seed(seed), rate=0.15)
    return {"input_ids": ids, "attention_mask": batch["attention_mask"], "labels": labels}


def train_step_fn(model):
    """forward + backward + AdamW step (lr 0: see the module docstring) of convbert-train's MLM loss."""
    from convbert.train.electra import _masked_lm_logits

    opt = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.01)

    def step(batch):
        logits, targets = _masked_lm_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        loss = F.cross_entropy(logits.float(), targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, cpu_seconds: list | None = None) -> tuple[object, float]:
    """(fn()'s result, its wall-clock seconds); appends the process's CPU seconds to ``cpu_seconds``
    (all threads: about threads x wall when the machine's cores were the run's alone)."""
    _sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    _sync(device)
    seconds = time.perf_counter() - t0
    if cpu_seconds is not None:
        cpu_seconds.append(time.process_time() - c0)
    return out, seconds


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a - b|, max(|b|, 1))."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max()), max(float(b.abs().max()), 1.0)


def measure_mode(mode: str, models, batches: list[dict], device, tol: float, label: str) -> dict[str, dict]:
    """Time ``mode`` for both providers over ``batches``; returns {provider: results}."""
    model_p, model_u = models
    if mode == "inference":
        def make(model):
            backbone = model.convbert

            def call(batch):
                with torch.no_grad():
                    out = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                return out.last_hidden_state
            return call
        fns = {"padded": make(model_p), "unpadded": make(model_u)}
        for m in models:
            m.eval()
    else:
        fns = {"padded": train_step_fn(model_p), "unpadded": train_step_fn(model_u)}
        for m in models:
            m.train()
    on = [{k: v.to(device) for k, v in b.items()} for b in batches]
    warm = min(range(len(on)), key=lambda i: on[i]["input_ids"].numel())
    for name in PROVIDERS:  # warm-up (and AdamW's state)
        fns[name](on[warm])
    times = {p: [] for p in PROVIDERS}
    cpu = {p: [] for p in PROVIDERS}
    worst = 0.0
    for i, batch in enumerate(on):
        out = {}
        for name in PROVIDERS:
            out[name], seconds = timed(lambda: fns[name](batch), device, cpu[name])
            times[name].append(seconds)
        real = batch["attention_mask"].bool()
        if mode == "inference":
            err, scale = _max_diff(out["unpadded"][real], out["padded"][real])
        else:
            err, scale = _max_diff(out["unpadded"], out["padded"])
        worst = max(worst, err / scale)
        n_real, (B, L) = int(real.sum()), tuple(batch["attention_mask"].shape)
        print(f"  {label} {mode} batch {i + 1}/{len(on)}: B={B} L={L} real {n_real} ({n_real / (B * L):.0%}): "
              f"padded {times['padded'][-1] * 1e3:.0f} ms, unpadded {times['unpadded'][-1] * 1e3:.0f} ms, "
              f"{'max abs diff' if mode == 'inference' else 'loss diff'} {err:.2e}; CPU busy "
              + "/".join(f"{cpu[p][-1] / max(times[p][-1], 1e-9) / torch.get_num_threads():.0%}" for p in PROVIDERS),
              flush=True)
        if err > tol * scale:
            raise AccuracyError(f"{label} {mode}, batch {i + 1}: the unpadded model differs from the padded one by "
                                f"{err:.3e} (scale {scale:.3g}, tolerance {tol:g} x scale)")
    # peak memory of one call on the batch with the median padded length
    order = sorted(range(len(on)), key=lambda i: on[i]["input_ids"].numel())
    mem = on[order[len(order) // 2]]
    results = {}
    for name in PROVIDERS:
        peak = common.peak_bytes(lambda: fns[name](mem), device)
        real_tokens = sum(int(b["attention_mask"].sum()) for b in on)
        rect_tokens = sum(b["input_ids"].numel() for b in on)
        total = sum(times[name])
        results[name] = dict(batches=len(on), real_tokens=real_tokens, padded_tokens=rect_tokens, time_s=total,
                             batch_ms=[t * 1e3 for t in times[name]], cpu_time_s=sum(cpu[name]),
                             real_tokens_per_s=real_tokens / total,
                             computed_tokens_per_s=(rect_tokens if name == "padded" else real_tokens) / total,
                             peak_bytes=peak, peak_batch_shape=list(mem["input_ids"].shape),
                             peak_batch_real_tokens=int(mem["attention_mask"].sum()),
                             max_rel_diff=worst, tol=tol)
    return results


# ----------------------------------------------------------------------------------------------
# Attention alone
# ----------------------------------------------------------------------------------------------


def attention_per_sequence(packed, q, k, v, heads):
    return packed.attention(q, k, v, heads)


def attention_rectangle(packed, q, k, v, heads):
    """Pad [T, A] to [B, n, L, d], one SDPA with a key-padding mask, pack back to [T, n, d]."""
    B, L = packed.batch, packed.length
    rect = [packed.unpack(x.view(x.shape[0], heads, -1)).transpose(1, 2) for x in (q, k, v)]  # [B, n, L, d]
    keep = torch.zeros(B * L, dtype=torch.bool, device=q.device).index_fill_(0, packed.indices, True)
    out = F.scaled_dot_product_attention(*rect, attn_mask=keep.view(B, 1, 1, L))
    return packed.pack(out.transpose(1, 2))  # [T, n, d]


def measure_attention(batches: list[dict], heads: int, head_dim: int, device, kernel_size: int,
                      label: str) -> list[dict]:
    from convbert.packing import PackedBatch

    A = heads * head_dim
    impls = {"per-sequence": attention_per_sequence, "rectangle": attention_rectangle}
    cases = []
    g = torch.Generator().manual_seed(0)
    for b in batches:
        mask = b["attention_mask"].to(device)
        packed = PackedBatch.from_attention_mask(mask, kernel_size)
        T = packed.indices.numel()
        qkv = [torch.randn(T, A, generator=g).to(device) for _ in range(3)]
        cases.append((packed, qkv))
    rows = []
    for mode in ("forward", "forward+backward"):
        times = {n: [] for n in impls}
        for packed, qkv in cases:
            inputs = [x.clone().requires_grad_(mode != "forward") for x in qkv]
            outs = {}
            for name, fn in impls.items():
                def call():
                    if mode == "forward":
                        with torch.no_grad():
                            return fn(packed, *inputs, heads)
                    out = fn(packed, *inputs, heads)
                    out.backward(torch.ones_like(out))
                    grads = [x.grad for x in inputs]
                    for x in inputs:
                        x.grad = None
                    return torch.cat([out.flatten()] + [gr.flatten() for gr in grads])
                call()  # warm-up
                outs[name], seconds = timed(call, device)
                times[name].append(seconds)
            err, scale = _max_diff(outs["per-sequence"], outs["rectangle"])
            if err > 1e-4 * scale:
                raise AccuracyError(f"attention {mode}: per-sequence and rectangle differ by {err:.3e}")
        for name in impls:
            rows.append(dict(impl=name, mode=mode, heads=heads, head_dim=head_dim, batches=len(cases),
                             time_s=sum(times[name]), batch_ms=[t * 1e3 for t in times[name]],
                             real_tokens=sum(p.indices.numel() for p, _ in cases)))
        print(f"  {label} attention alone, {mode}: per-sequence {sum(times['per-sequence']) * 1e3:.0f} ms, "
              f"rectangle {sum(times['rectangle']) * 1e3:.0f} ms over {len(cases)} batches", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# Tables and the histogram
# ----------------------------------------------------------------------------------------------


def _latest(rows, bench, key):
    kept = {}
    for r in rows:
        if r.get("bench") == bench and "error" not in r:
            kept[key(r)] = r
    return list(kept.values())


SIZE_ORDER = ("tiny", "small", "medium-small", "base")


def unpad_tables(rows: list[dict]) -> str:
    """Markdown: real tokens/s and peak memory, padded vs unpadded; the attention comparison."""
    model = _latest(rows, "unpad", lambda r: (r["device"], r["size"], r["mode"], r["provider"]))
    out = []
    if model:
        by = {(r["device"], r["size"], r["mode"], r["provider"]): r for r in model}
        lines = []
        for device, size, mode in sorted({k[:3] for k in by}, key=lambda k: (k[0], SIZE_ORDER.index(k[1])
                                                                              if k[1] in SIZE_ORDER else 99,
                                                                              MODES.index(k[2]))):
            p, u = by.get((device, size, mode, "padded")), by.get((device, size, mode, "unpadded"))
            if not (p and u):
                continue
            lines.append([f"ConvBERT-{size}", mode, f"{p['batches']} x {p['batch']}",
                          f"{p['real_tokens'] / p['padded_tokens']:.0%}",
                          f"{p['real_tokens_per_s']:,.0f}", f"{u['real_tokens_per_s']:,.0f}",
                          f"**{u['real_tokens_per_s'] / p['real_tokens_per_s']:.2f}x**",
                          common.fmt_bytes(p["peak_bytes"]), common.fmt_bytes(u["peak_bytes"]),
                          f"{p['peak_bytes'] / max(u['peak_bytes'], 1):.1f}x", f"{u['max_rel_diff']:.1e}"])
        r0 = model[0]
        out.append(f"Padded vs unpadded ConvBERT on {r0['device']}, {r0['threads']} threads, torch {r0['torch']}, "
                   f"{r0['dtype']}, conv backend {r0['conv_backend']}; real tokens/s = non-padding tokens / time")
        out.append(common.markdown_table(
            ["model", "mode", "batches", "real / padded tokens", "padded: real tok/s", "unpadded: real tok/s", "speed-up",
             "padded: peak", "unpadded: peak", "memory ratio", "max rel. diff"], lines))
    attention = _latest(rows, "unpad-attention",
                        lambda r: (r["device"], r["heads"], r["head_dim"], r["mode"], r["impl"]))
    if attention:
        by = {(r["device"], r["heads"], r["head_dim"], r["mode"], r["impl"]): r for r in attention}
        lines = []
        for device, n, d, mode in sorted({k[:4] for k in by}):
            s, r = by.get((device, n, d, mode, "per-sequence")), by.get((device, n, d, mode, "rectangle"))
            if not (s and r):
                continue
            faster = "per-sequence" if s["time_s"] < r["time_s"] else "rectangle"
            lines.append([f"{n} x {d}", mode, s["batches"], f"{s['time_s'] / s['batches'] * 1e3:.1f}",
                          f"{r['time_s'] / r['batches'] * 1e3:.1f}",
                          f"{faster} ({max(s['time_s'], r['time_s']) / min(s['time_s'], r['time_s']):.2f}x)"])
        out.append("Self-attention alone on the packed tokens of the same batches: one SDPA per sequence vs "
                   "padding to a rectangle + one masked SDPA + packing back (ms per batch of 32)")
        out.append(common.markdown_table(["heads x dim", "mode", "batches", "per-sequence ms", "rectangle ms",
                                          "faster"], lines))
    return "\n\n".join(out) if out else "(no unpad rows)"


def plot_lengths(stats: dict, path: Path, title: str) -> Path:
    from benchmarks import plot

    return plot.plot_length_histogram(stats["bin_edges"], stats["bin_counts"], path, title=title, notes=[
        f"{stats['documents']:,} documents, mean {stats['mean']:.0f}, median {stats['median']:.0f}, "
        f"p90 {stats['p90']}, p99 {stats['p99']} tokens; {stats['truncated']:.1%} truncated at {MAX_LEN}",
        f"random batches of {stats['batch']} padded to their longest: "
        f"{stats['real_fraction_of_padded_batches']:.0%} of the positions are real tokens"])


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", type=lambda s: s.split(","), default=None,
                   help="only these sizes of the preset (e.g. small)")
    p.add_argument("--backend", default="auto", help="conv_backend of both models (auto, eager, native, ...)")
    p.add_argument("--batch", type=int, default=None, help="sequences per batch (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=2e-4, help="largest allowed difference / scale of the outputs")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as torch starts)")
    p.add_argument("--out", default=None, help="JSONL (default benchmarks/results/unpad-<device>.jsonl)")
    p.add_argument("--no-save", action="store_true", help="write no rows and no histogram")
    p.add_argument("--no-plot", action="store_true", help="no length histogram")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    sizes = {k: v for k, v in preset["sizes"].items() if not args.sizes or k in args.sizes}
    batch_size = args.batch or preset["batch"]
    start = time.perf_counter()
    corpus, documents = corpus_documents()
    tokenizer = corpus_tokenizer(corpus)
    encoded = encode(tokenizer, documents)
    lengths = [len(e) for e in encoded]
    stats = dict(length_stats(lengths, batch_size, args.seed), batch=batch_size)
    env = common.environment(device)
    base = dict(corpus=corpus.name, vocab_size=len(tokenizer), max_len=MAX_LEN, batch=batch_size, seed=args.seed,
                dtype="fp32", preset=args.preset, **env)
    print(f"# padded vs unpadded ConvBERT on {env['device']}, {env['threads']} threads, torch {env['torch']}; "
          f"{stats['documents']:,} documents of {corpus.name} (vocabulary {len(tokenizer)}), "
          f"mean {stats['mean']:.0f} / "
          f"median {stats['median']:.0f} / max {stats['max']} tokens; batches of {batch_size} padded to their "
          f"longest hold {stats['real_fraction_of_padded_batches']:.0%} real tokens", flush=True)
    out_path = Path(args.out) if args.out else common.results_path("unpad", device)
    rows = [dict(bench="unpad-lengths", **base, **{k: v for k, v in stats.items() if k != "batch"})]
    if not args.no_save:
        common.append_rows(out_path, rows)
    if not (args.no_plot or args.no_save):
        png = out_path.with_name(out_path.stem + "-lengths.png")
        plot_lengths(stats, png, f"Token lengths of {corpus.name} (WordPiece {len(tokenizer)}, [CLS]/[SEP], "
                                 f"truncated at {MAX_LEN})")
        print(f"# length histogram: {png}", flush=True)
    from convbert_kernels.backends import resolve_backend

    backend = resolve_backend(args.backend, device).name
    for size, (n_infer, n_train, n_attn) in sizes.items():
        batches = [collate(encoded, idx, tokenizer.pad_token_id)
                   for idx in draw_batches(len(encoded), batch_size, max(n_infer, n_train, n_attn), args.seed)]
        models = build_models(size, tokenizer, backend, device)
        config = models[0].config
        params = sum(p.numel() for p in models[0].parameters())
        print(f"# ConvBERT-{size}: hidden {config.hidden_size}, {config.num_hidden_layers} layers, {params / 1e6:.1f}M "
              f"parameters; backend {backend}; {n_infer} inference / {n_train} training batches", flush=True)
        size_rows = []
        for mode, n in (("inference", n_infer), ("train", n_train)):
            chosen = batches[:n] if mode == "inference" else [mlm_labels(b, tokenizer, args.seed + i)
                                                              for i, b in enumerate(batches[:n])]
            results = measure_mode(mode, models, chosen, device, args.tol, f"ConvBERT-{size}")
            for provider, res in results.items():
                size_rows.append(dict(bench="unpad", size=size, mode=mode, provider=provider, conv_backend=backend,
                                      hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
                                      parameters=params, **base, **res))
            p, u = results["padded"], results["unpadded"]
            speedup = u["real_tokens_per_s"] / p["real_tokens_per_s"]
            print(f"  => ConvBERT-{size} {mode}: padded {p['real_tokens_per_s']:,.0f}, unpadded "
                  f"{u['real_tokens_per_s']:,.0f} real tokens/s ({speedup:.2f}x); "
                  f"peak {common.fmt_bytes(p['peak_bytes'])} vs {common.fmt_bytes(u['peak_bytes'])} "
                  f"[{time.perf_counter() - start:.0f} s]", flush=True)
        models = None
        for r in measure_attention(batches[:n_attn], config.num_heads, config.head_size, device,
                                   config.conv_kernel_size, f"ConvBERT-{size}"):
            size_rows.append(dict(bench="unpad-attention", size=size, **base, **r))
        if not args.no_save:
            common.append_rows(out_path, size_rows)
        rows += size_rows
    print()
    print(unpad_tables(rows))
    print(f"\n# {time.perf_counter() - start:.0f} s" + ("" if args.no_save else f"; rows appended to {out_path}"))
    return rows


if __name__ == "__main__":
    main()
