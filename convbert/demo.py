"""A two-minute tour: build a small ConvBERT and run it on every available backend.

    python -m convbert.demo [--device cuda] [--batch 8] [--length 256]

For each backend it prints the largest difference of the model's output from the reference
backend (Hugging Face's formulation) and the time of a forward and a forward+backward pass.
"""

from __future__ import annotations

import argparse
import time

import torch

import convbert_kernels
from convbert import ConvBertConfig, ConvBertForMaskedLM


def _time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (and Triton/torch.compile compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    config = ConvBertConfig(vocab_size=8000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                            intermediate_size=1024, embedding_size=128, max_position_embeddings=max(512, args.length),
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = ConvBertForMaskedLM(config).to(device)
    input_ids = torch.randint(0, config.vocab_size, (args.batch, args.length), device=device)
    labels = input_ids.clone()

    backends = [b for b in convbert_kernels.available_backends(device) if not (b == "triton" and device.type == "cpu")]
    print(f"ConvBERT-small-ish: hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
          f"{config.num_heads} conv heads of size {config.head_size}, K={config.conv_kernel_size}; "
          f"batch {args.batch} x length {args.length}, float32 on {device}")
    print(f"{'backend':<10} {'max |out - ref|':>16} {'forward ms':>11} {'fwd+bwd ms':>11}")
    reference = None
    for backend in ["reference"] + [b for b in backends if b != "reference"]:
        model.config.conv_backend = backend
        model.eval()
        with torch.no_grad():
            logits = model(input_ids).logits
        reference = logits if reference is None else reference
        diff = (logits - reference).abs().max().item()

        def forward():
            with torch.no_grad():
                model(input_ids)

        def forward_backward():
            model.zero_grad(set_to_none=True)
            model(input_ids, labels=labels).loss.backward()

        model.train()
        fwd = _time(forward, args.repeats, device)
        full = _time(forward_backward, args.repeats, device)
        print(f"{backend:<10} {diff:>16.2e} {fwd:>11.1f} {full:>11.1f}")


if __name__ == "__main__":
    main()
