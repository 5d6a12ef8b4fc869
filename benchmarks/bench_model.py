"""Model benchmark: one ConvBertForMaskedLM training step (forward, backward, AdamW step).

Providers
    convbert:<backend>   this project's ``convbert.ConvBertForMaskedLM`` with ``conv_backend=<backend>``
                         for every backend ``available_backends(device)`` lists (triton on CPU only
                         with --include-interpreted)
    hf                   transformers' ConvBertForMaskedLM as is
    hf-patched           the same after ``convbert_kernels.patch_transformers(model)``
    hf-compiled          ``torch.compile(model)`` of the plain transformers model
    hf-patched-compiled  ``torch.compile`` of the patched model (not in the default list; ask for it
                         with --providers)

All providers start from the same weights (the transformers model's, loaded into this project's
model by its checkpoint loader) and see the same batch; ``eval_loss`` (one forward in eval mode,
before training) must agree across them and is recorded beside the timing. Training runs in train
mode with the config's dropout. ``--dtype bf16|fp16`` trains with fp32 weights under
``torch.autocast``; fp32 trains in fp32.

Reported: median / p20 / p80 step time, tokens/s (B*L / median), and peak memory of one step above
what was allocated before it (weights, gradients and optimizer state of earlier steps excluded;
see benchmarks/common.py for the CUDA and CPU methods); on CUDA also the absolute
``max_memory_allocated`` as ``peak_total_bytes``.

    python -m benchmarks.bench_model --preset quick
    python -m benchmarks.bench_model --size base --batch 32 --seq-len 512 --dtype bf16
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import convbert_kernels
from convbert.configuration import MODEL_SIZES
from benchmarks import common

# Hugging Face config keys of the published sizes, from the library itself.
SIZES = MODEL_SIZES
COMMON = dict(vocab_size=30522, max_position_embeddings=4096)
SIZE_OVERRIDES = {"tiny": dict(vocab_size=1000, max_position_embeddings=512)}  # keeps the test preset light

PRESETS = {
    "quick": dict(cpu=dict(size="small", batch=8, seq_len=128, dtype="fp32", repeats=3),
                  cuda=dict(size="base", batch=32, seq_len=512, dtype="bf16")),
    "cpu": dict(cpu=dict(size="small", batch=8, seq_len=256, dtype="fp32", repeats=3)),
    "gpu": dict(cuda=dict(size="base", batch=32, seq_len=512, dtype="bf16")),
    "test": dict(cpu=dict(size="tiny", batch=2, seq_len=64, dtype="fp32"),
                 cuda=dict(size="tiny", batch=2, seq_len=64, dtype="fp32")),
}


def hf_config_kwargs(size: str) -> dict:
    return {**COMMON, **SIZES[size], **SIZE_OVERRIDES.get(size, {})}


def make_batch(size: str, batch: int, seq_len: int, device, seed: int = 0, mask_rate: float = 0.15):
    vocab = hf_config_kwargs(size)["vocab_size"]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq_len), generator=g)
    labels = torch.where(torch.rand(batch, seq_len, generator=g) < mask_rate, ids, torch.full_like(ids, -100))
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}


def provider_names(device: torch.device, include_interpreted=False) -> list[str]:
    names = []
    for backend in convbert_kernels.available_backends(device):
        if backend == "triton" and device.type == "cpu" and not include_interpreted:
            continue
        names.append(f"convbert:{backend}")
    return names + ["hf", "hf-patched", "hf-compiled"]


def _hf_reference_state(size: str, seed: int = 0) -> dict:
    import transformers

    torch.manual_seed(seed)
    model = transformers.ConvBertForMaskedLM(transformers.ConvBertConfig(**hf_config_kwargs(size)))
    return {k: v.clone() for k, v in model.state_dict().items()}


def build(provider: str, size: str, state: dict, device):
    """The model (moved to ``device``, train mode) and the callable to step it."""
    if provider.startswith("convbert:"):
        import convbert

        config = convbert.ConvBertConfig(**hf_config_kwargs(size), conv_backend=provider.split(":", 1)[1])
        model = convbert.ConvBertForMaskedLM(config)
        try:
            model.load_pretrained_state_dict(state)
        except Exception:  # noqa: BLE001 -- older/newer loader: fall back to a plain load
            model.load_state_dict(state, strict=False)
        model.to(device)
        return model, model
    import transformers

    model = transformers.ConvBertForMaskedLM(transformers.ConvBertConfig(**hf_config_kwargs(size)))
    model.load_state_dict(state, strict=False)
    model.to(device)
    if provider == "hf":
        return model, model
    if provider == "hf-patched":
        convbert_kernels.patch_transformers(model)
        return model, model
    if provider == "hf-compiled":
        return model, torch.compile(model)
    if provider == "hf-patched-compiled":
        convbert_kernels.patch_transformers(model)
        return model, torch.compile(model)
    raise ValueError(f"unknown provider {provider!r}")


def _autocast(device, dtype_name):
    if dtype_name == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=common.dtype_from_name(dtype_name))


def measure(provider: str, args, device: torch.device, state: dict, batch: dict) -> dict:
    row = dict(bench="model", provider=provider, size=args.size, batch=args.batch, seq_len=args.seq_len,
               dtype=args.dtype, optimizer="AdamW", **{k: v for k, v in hf_config_kwargs(args.size).items()
                                                       if k in ("hidden_size", "num_hidden_layers", "vocab_size")},
               **common.environment(device))
    try:
        model, fn = build(provider, args.size, state, device)
        model.eval()
        with torch.no_grad(), _autocast(device, args.dtype):
            row["eval_loss"] = float(model(**batch).loss)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            with _autocast(device, args.dtype):
                loss = fn(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        torch.manual_seed(0)
        t0 = time.perf_counter()
        row["loss"] = float(step())  # first step: compile, optimizer state
        if device.type == "cuda":
            torch.cuda.synchronize()
        row["first_step_ms"] = (time.perf_counter() - t0) * 1e3
        if device.type == "cuda":
            timing = common.time_cuda_events(step, warmup=args.warmup, repeats=args.repeats)
        else:
            timing = common.time_cpu(step, warmup=args.warmup, repeats=args.repeats, min_time_s=0.0)
        row.update(timing)
        row["tokens_per_s"] = args.batch * args.seq_len / (row["median_ms"] * 1e-3)
        row["peak_bytes"] = common.peak_bytes(step, device)
        if device.type == "cuda":
            row["peak_total_bytes"] = int(torch.cuda.max_memory_allocated(device))
    except Exception as exc:  # noqa: BLE001 -- a provider that fails is a row too
        if args.verbose:
            traceback.print_exc()
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    finally:
        model = fn = opt = None  # noqa: F841
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--device", default=None)
    p.add_argument("--size", choices=sorted(SIZES))
    p.add_argument("--batch", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--providers", type=lambda s: s.split(","), help="subset, e.g. convbert:eager,hf,hf-patched")
    p.add_argument("--include-interpreted", action="store_true")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps after the first one (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps (default 5)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="JSONL (default benchmarks/results/model-<device>.jsonl)")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = dict(size="small", batch=8, seq_len=128, dtype="fp32" if device.type == "cpu" else "bf16",
                    warmup=1, repeats=5)
    if args.preset:
        preset = PRESETS[args.preset]
        defaults.update(preset.get(device.type) or preset.get("cuda") or preset.get("cpu"))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    names = args.providers or provider_names(device, args.include_interpreted)
    print(f"# ConvBertForMaskedLM training step on {common.device_name(device)}: {args.size}, B={args.batch}, "
          f"L={args.seq_len}, {args.dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"providers {names}", flush=True)
    state = _hf_reference_state(args.size)
    batch = make_batch(args.size, args.batch, args.seq_len, device)
    out_path = Path(args.out) if args.out else common.results_path("model", device)
    rows = []
    for name in names:
        row = measure(name, args, device, state, batch)
        if "error" in row:
            print(f"{name:>20}: ERROR {row['error']}", flush=True)
        else:
            print(f"{name:>20}: median {row['median_ms']:.1f} ms [p20 {row['p20_ms']:.1f}, p80 {row['p80_ms']:.1f}] "
                  f"{row['tokens_per_s']:.0f} tokens/s, peak {common.fmt_bytes(row['peak_bytes'])}, "
                  f"eval loss {row['eval_loss']:.5f}, first step {row['first_step_ms']:.0f} ms", flush=True)
        if not args.no_save:
            common.append_rows(out_path, [row])
        rows.append(row)
    from benchmarks import plot

    print()
    print(plot.model_table(rows))
    if not args.no_save:
        print(f"\nrows appended to {out_path}")
    return rows


if __name__ == "__main__":
    main()
