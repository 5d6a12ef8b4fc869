"""A small causal language model from ``DynamicConv1d`` blocks, trained on Python's docstrings.

The decoder of "Pay Less Attention with Lightweight and Dynamic Convolutions" (Wu et al., 2019)
at toy size, character level: each block is

    x = x + Linear(DynamicConv1d(GLU(Linear_{C->2C}(LayerNorm(x)))))   # causal: padding_l = K - 1
    x = x + Linear(GELU(Linear_{C->4C}(LayerNorm(x))))                 # feed-forward

with kernel sizes growing by layer (3, 7, 15, 31, 31, ... as in the paper). No attention and no
position embedding: a causal convolution already knows where its taps are. It trains for a few
minutes on CPU on the standard-library docstrings (the corpus ``convbert-train`` uses), prints a
falling training and held-out loss, then generates text twice:

1. token by token with each block's ``step`` and a per-block state (the last K - 1 inputs of its
   convolution; everything else in a block is per-token), and
2. by re-running the full forward on the growing prefix for every new token,

and checks that both give the same tokens and logits: ``step`` is the full call, one token at a time.

    python examples/causal_lm.py                                   # ~2-3 minutes on a 2-core CPU
    python examples/causal_lm.py --steps 60 --dim 32 --layers 2    # seconds
    python examples/causal_lm.py --device cuda --backend triton --steps 2000

Exit status 1 if the two generations disagree. ``main(argv)`` returns the metrics as a dict.
Training uses DropConnect on the kernels (``--weight-dropout``), which the module runs in PyTorch;
the held-out evaluation and the full-forward generation run the chosen ``--backend``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from convbert_kernels import DynamicConv1d, available_backends

# ----------------------------------------------------------------------------- data


def load_documents(path: str | None) -> list[str]:
    """The documents of ``path`` (blank-line separated), by default the cached stdlib docstrings."""
    from convbert.train.cli import stdlib_corpus_path
    from convbert.train.corpus import write_stdlib_corpus
    from convbert.train.data import read_documents

    if path is None:
        path = stdlib_corpus_path()  # shared with convbert-train ($CONVBERT_CACHE, ~/.cache/convbert)
        if not path.is_file():
            print(f"gathering the standard library's docstrings into {path} ...")
            write_stdlib_corpus(path)
    return read_documents([path])


class CharVocab:
    """One id per character of the corpus (about a hundred for the docstrings); "\\n" ends a document."""

    def __init__(self, text: str):
        self.chars = sorted(set(text) | {"\n"})
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        unknown = sorted(set(text) - self.index.keys())
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown}")
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def random_windows(data: torch.Tensor, seq_len: int, batch_size: int, generator: torch.Generator):
    """``batch_size`` random windows: inputs ``[B, L]`` and next-token targets ``[B, L]``."""
    starts = torch.randint(len(data) - seq_len - 1, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(seq_len + 1)
    windows = data[idx]
    return windows[:, :-1], windows[:, 1:]


def fixed_windows(data: torch.Tensor, seq_len: int, count: int):
    """``count`` windows spread evenly over ``data``: the same held-out set in every evaluation."""
    starts = torch.linspace(0, len(data) - seq_len - 1, count).long()
    windows = data[starts[:, None] + torch.arange(seq_len + 1)]
    return windows[:, :-1], windows[:, 1:]


# ----------------------------------------------------------------------------- model


class PayLessBlock(nn.Module):
    """A decoder block of Wu et al. (2019) with a causal dynamic convolution, pre-LayerNorm."""

    def __init__(self, dim: int, kernel_size: int, heads: int, weight_dropout: float, dropout: float, backend: str):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 2 * dim)  # -> GLU -> dim
        self.conv = DynamicConv1d(dim, kernel_size, heads, padding_l=kernel_size - 1,
                                  weight_dropout=weight_dropout, backend=backend)
        self.out_proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, C]
        x = x + self.drop(self.out_proj(self.conv(F.glu(self.in_proj(self.ln1(x)), dim=-1))))
        return x + self.drop(self.ffn(self.ln2(x)))

    def step(self, x_t: torch.Tensor, state: torch.Tensor | None):  # [B, C]; state [B, K - 1, C] or None
        h_t, state = self.conv.step(F.glu(self.in_proj(self.ln1(x_t)), dim=-1), state)
        x_t = x_t + self.drop(self.out_proj(h_t))
        return x_t + self.drop(self.ffn(self.ln2(x_t))), state


class ConvLM(nn.Module):
    def __init__(self, vocab_size: int, dim: int, kernel_sizes: list[int], heads: int, weight_dropout: float,
                 dropout: float, backend: str):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(PayLessBlock(dim, k, heads, weight_dropout, dropout, backend) for k in kernel_sizes)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied
        for name, p in self.named_parameters():  # GPT-2 style init; the convolutions keep their own (Xavier)
            if ".conv." in name:
                continue
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02 / math.sqrt(2 * len(kernel_sizes)) if name.endswith(("out_proj.weight", "ffn.2.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [B, L] -> logits [B, L, V]
        x = self.drop(self.embed(ids))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def step(self, ids_t: torch.Tensor, states: list):  # [B] -> logits [B, V], the blocks' new states
        x = self.drop(self.embed(ids_t))
        new_states = []
        for block, state in zip(self.blocks, states):
            x, state = block.step(x, state)
            new_states.append(state)
        return self.head(self.ln_f(x)), new_states


# ----------------------------------------------------------------------------- training


@torch.no_grad()
def held_out_loss(model: ConvLM, windows) -> float:
    model.eval()
    inputs, targets = windows
    total = 0.0
    for i in range(0, len(inputs), 32):
        logits = model(inputs[i:i + 32])
        total += F.cross_entropy(logits.flatten(0, 1), targets[i:i + 32].flatten(), reduction="sum").item()
    model.train()
    return total / targets.numel()


def lr_at(step: int, args) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    warmup = max(1, min(args.warmup, args.steps // 10))
    if step < warmup:
        return args.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, args.steps - warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------- generation


def pick(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
    """Greedy (temperature 0) or sampled next token from ``logits`` ``[V]``."""
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate_stepwise(model: ConvLM, prompt: list[int], n: int, temperature: float, seed: int, device):
    """Feed the prompt, then each new token, through ``step``: one token of work per position."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    ids, states, new_logits = list(prompt), [None] * len(model.blocks), []
    for pos in range(len(prompt) + n - 1):
        logits, states = model.step(torch.tensor([ids[pos]], device=device), states)
        if pos >= len(prompt) - 1:  # past the prompt: this output picks the next token
            new_logits.append(logits[0].float().cpu())
            ids.append(pick(logits[0], temperature, generator))
    return ids[len(prompt):], new_logits


@torch.no_grad()
def generate_full(model: ConvLM, prompt: list[int], n: int, temperature: float, seed: int, device):
    """The same generation by re-running the full forward on the whole prefix for every token."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    ids, new_logits = list(prompt), []
    for _ in range(n):
        logits = model(torch.tensor([ids], device=device))[0, -1]
        new_logits.append(logits.float().cpu())
        ids.append(pick(logits, temperature, generator))
    return ids[len(prompt):], new_logits


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=400, help="optimizer steps")
    p.add_argument("--dim", type=int, default=128, help="model width C")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8, help="convolution heads (C / heads channels share a kernel)")
    p.add_argument("--kernel-sizes", default="3,7,15,31",
                   help="kernel size per layer, comma-separated; the last repeats for further layers")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=30, help="warm-up steps (at most a tenth of --steps)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--weight-dropout", type=float, default=0.1, help="DropConnect on the convolution kernels")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--eval-windows", type=int, default=64, help="held-out windows of --seq-len per evaluation")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for PyTorch (0: its default)")
    p.add_argument("--backend", default="auto", help="the convolution's backend: auto, eager, native, triton, reference")
    p.add_argument("--generate", type=int, default=200, metavar="N", help="tokens to generate after training")
    p.add_argument("--prompt", default="Return the ")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy; > 0: seeded sampling")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |step - full| logit difference allowed")
    p.add_argument("--corpus", default=None, help="a text file to train on instead of the stdlib docstrings")
    p.add_argument("--out-dir", default="runs/causal_lm", help="where metrics.json goes ('' : nowhere)")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)  # main() may run inside another program (the tests)


def run(args) -> dict:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if args.backend != "auto" and args.backend not in available_backends(device):
        raise SystemExit(f"backend {args.backend!r} is not available on {device}: {available_backends(device)}")

    # data: character vocabulary, every 10th document held out, random training windows
    documents = load_documents(args.corpus)
    vocab = CharVocab("\n".join(documents))
    train_text = "\n".join(d for i, d in enumerate(documents) if i % 10 != 9) + "\n"
    held_text = "\n".join(d for i, d in enumerate(documents) if i % 10 == 9) + "\n"
    train_data, held_data = vocab.encode(train_text), vocab.encode(held_text)
    held_windows = tuple(t.to(device) for t in fixed_windows(held_data, args.seq_len, args.eval_windows))
    batch_generator = torch.Generator().manual_seed(args.seed)

    sizes = [int(k) for k in args.kernel_sizes.split(",")]
    kernel_sizes = (sizes + sizes[-1:] * args.layers)[:args.layers]
    model = ConvLM(len(vocab), args.dim, kernel_sizes, args.heads, args.weight_dropout, args.dropout,
                   args.backend).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{len(documents)} documents, {len(train_data):,} training / {len(held_data):,} held-out characters, "
          f"vocabulary {len(vocab)}")
    print(f"model: {args.layers} blocks, dim {args.dim}, {args.heads} heads, kernel sizes {kernel_sizes}, "
          f"{n_params:,} parameters; backend {args.backend} on {device}, {torch.get_num_threads()} CPU threads")

    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.99))

    initial = held_out_loss(model, held_windows)
    print(f"held-out loss at step 0: {initial:.4f} (uniform over the vocabulary: {math.log(len(vocab)):.4f})")
    model.train()
    train_losses, start, last_t, last_step = [], time.perf_counter(), time.perf_counter(), 0
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        inputs, targets = (t.to(device) for t in random_windows(train_data, args.seq_len, args.batch_size,
                                                                batch_generator))
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        train_losses.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            now = time.perf_counter()
            recent = train_losses[last_step:]
            tok_s = (step + 1 - last_step) * args.batch_size * args.seq_len / (now - last_t)
            print(f"step {step + 1:5d}/{args.steps} | train loss {sum(recent) / len(recent):.4f} | "
                  f"lr {lr_at(step, args):.2e} | {tok_s:,.0f} tok/s")
            last_t, last_step = now, step + 1
    train_seconds = time.perf_counter() - start
    final = held_out_loss(model, held_windows)
    print(f"held-out loss: {initial:.4f} -> {final:.4f} ({final / math.log(2):.3f} bits/char) "
          f"after {args.steps} steps in {train_seconds:.1f} s")

    # generation, two ways: step by step with the blocks' states, and the full forward on each prefix
    prompt = vocab.encode(args.prompt).tolist()
    t0 = time.perf_counter()
    step_ids, step_logits = generate_stepwise(model, prompt, args.generate, args.temperature, args.seed, device)
    step_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    full_ids, full_logits = generate_full(model, prompt, args.generate, args.temperature, args.seed, device)
    full_seconds = time.perf_counter() - t0
    mismatch = next((i for i, (a, b) in enumerate(zip(step_ids, full_ids)) if a != b), None)
    compared = len(step_ids) if mismatch is None else mismatch + 1  # the prefixes agree up to here
    max_diff = max((float((a - b).abs().max()) for a, b in zip(step_logits[:compared], full_logits[:compared])),
                   default=0.0)
    matches = mismatch is None and max_diff <= args.tolerance
    text = vocab.decode(step_ids)
    print(f"\n--- {args.prompt!r} + {args.generate} generated characters "
          f"({'greedy' if args.temperature == 0 else f'temperature {args.temperature}'}) ---")
    print(args.prompt + text)
    print("---")
    print(f"step-by-step ({step_seconds:.2f} s) vs full forward on the growing prefix ({full_seconds:.2f} s): "
          f"{'same tokens' if mismatch is None else f'tokens differ from position {mismatch}'}, "
          f"max |logit difference| {max_diff:.2e} (tolerance {args.tolerance:g}) -> "
          f"{'step == full' if matches else 'MISMATCH'}")

    metrics = {
        "initial_held_out_loss": initial, "final_held_out_loss": final, "train_losses": train_losses,
        "train_seconds": train_seconds, "tokens_per_second": args.steps * args.batch_size * args.seq_len / train_seconds
        if args.steps else 0.0, "parameters": n_params, "vocab_size": len(vocab), "kernel_sizes": kernel_sizes,
        "prompt": args.prompt, "generated_text": text, "generated_ids": step_ids, "full_forward_ids": full_ids,
        "step_equals_full": matches, "first_mismatch": mismatch, "max_logit_diff": max_diff, "args": vars(args),
    }
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        rounded = dict(metrics, train_losses=[round(x, 4) for x in train_losses])
        (out / "metrics.json").write_text(json.dumps(rounded, indent=1) + "\n")
        print(f"metrics written to {out / 'metrics.json'}")
    return metrics


if __name__ == "__main__":
    sys.exit(0 if main()["step_equals_full"] else 1)
