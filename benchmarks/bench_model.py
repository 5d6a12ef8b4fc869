"""Model benchmark: one ConvBertForMaskedLM training step (forward, backward, AdamW step).

Providers
    convbert:<backend>   this project's ``convbert.ConvBertForMaskedLM`` with ``conv_backend=<backend>``
                         for every backend ``available_backends(device)`` lists (triton on CPU only
                         with --include-interpreted)
    convbert-compiled:<backend>  the same model under ``torch.compile(model)``
    hf                   transformers' ConvBertForMaskedLM as is
    hf-patched           the same after ``convbert_kernels.patch_transformers(model)``
    hf-compiled          ``torch.compile(model)`` of the plain transformers model
    hf-patched-compiled  ``torch.compile`` of the patched model (not in the default list; ask for it
                         with --providers)

The providers without torch.compile run first, then the ``--max-len`` search (if asked for), then
the compiled providers, whose first step (the compilation) takes longest; ``--budget-s`` skips the
providers that would start after that many seconds (they become rows with an ``error`` saying so).

All providers start from the same weights (the transformers model's, loaded into this project's
model by its checkpoint loader) and see the same batch; ``eval_loss`` (one forward in eval mode,
before training) must agree across them and is recorded beside the timing. Training runs in train
mode with the config's dropout. ``--dtype bf16|fp16`` trains with fp32 weights under
``torch.autocast``; fp32 trains in fp32.

Reported: median / p20 / p80 step time, tokens/s (B*L / median), and peak memory of one step above
what was allocated before it (weights, gradients and optimizer state of earlier steps excluded;
see benchmarks/common.py for the CUDA and CPU methods); on CUDA also the absolute
``max_memory_allocated`` as ``peak_total_bytes``. ``--profile [N]``: one more step per provider under
torch.profiler, its N longest kernels (CUDA) or operators (CPU) by self time kept in the row
(``profile_top``) and printed: where one provider's step differs from another's; with the sum of
every kernel's self time (``profile_total_ms``): on CUDA, set against the median step, the share of
the step the GPU is busy (the rest it waits on the host).

Longest trainable length (``--max-len 512,1024,2048,4096,8192 --max-len-batch 8``): per provider
(compiled ones left out unless named in ``--max-len-providers``: every new length would compile
again), one training step at each length, shortest first, until one fails; the row
(``bench="model-max-len"``) gives the longest length that trained, the one that failed and its error
type (``OutOfMemoryError`` when the GPU ran out of memory). The model is built with
``max_position_embeddings`` of at least the longest length.

    python -m benchmarks.bench_model --preset quick
    python -m benchmarks.bench_model --size base --batch 32 --seq-len 512 --dtype bf16
    python -m benchmarks.bench_model --preset gpu --max-len 512,1024,2048,4096,8192 --max-len-batch 8
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# --profile and the CPU peak memory use torch.profiler, whose Kineto backend otherwise prints lines on
# stderr at every start and stop
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch

import convbert_kernels
from convbert.configuration import MODEL_SIZES
from benchmarks import common, gpu_summary

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


def hf_config_kwargs(size: str, **overrides) -> dict:
    return {**COMMON, **SIZES[size], **SIZE_OVERRIDES.get(size, {}), **overrides}


def make_batch(size: str, batch: int, seq_len: int, device, seed: int = 0, mask_rate: float = 0.15):
    vocab = hf_config_kwargs(size)["vocab_size"]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq_len), generator=g)
    labels = torch.where(torch.rand(batch, seq_len, generator=g) < mask_rate, ids, torch.full_like(ids, -100))
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}


def provider_names(device: torch.device, include_interpreted=False, compiled=True) -> list[str]:
    """The default providers: convbert:<backend> per available backend, the transformers ones, and
    (``compiled``) their torch.compile versions, hf-compiled and convbert-compiled:<backend>."""
    backends = [b for b in convbert_kernels.available_backends(device)
                if not (b == "triton" and device.type == "cpu" and not include_interpreted)]
    names = [f"convbert:{b}" for b in backends] + ["hf", "hf-patched"]
    if compiled:
        names += ["hf-compiled"] + [f"convbert-compiled:{b}" for b in backends]
    return names


def is_compiled(provider: str) -> bool:
    return provider.startswith("convbert-compiled:") or provider.endswith("-compiled")


def _hf_reference_state(size: str, seed: int = 0, **config_overrides) -> dict:
    import transformers

    torch.manual_seed(seed)
    model = transformers.ConvBertForMaskedLM(transformers.ConvBertConfig(**hf_config_kwargs(size, **config_overrides)))
    return {k: v.clone() for k, v in model.state_dict().items()}


def build(provider: str, size: str, state: dict, device, config_overrides: dict | None = None,
          compile_backend: str = "inductor"):
    """The model (moved to ``device``, train mode) and the callable to step it (the model itself, or
    ``torch.compile(model, backend=compile_backend)`` for the compiled providers)."""
    config_kwargs = hf_config_kwargs(size, **(config_overrides or {}))
    if provider.startswith(("convbert:", "convbert-compiled:")):
        import convbert

        config = convbert.ConvBertConfig(**config_kwargs, conv_backend=provider.split(":", 1)[1])
        model = convbert.ConvBertForMaskedLM(config)
        try:
            model.load_pretrained_state_dict(state)
        except Exception:  # noqa: BLE001 -- older/newer loader: fall back to a plain load
            model.load_state_dict(state, strict=False)
        model.to(device)
        if provider.startswith("convbert-compiled:"):
            return model, torch.compile(model, backend=compile_backend)
        return model, model
    import transformers

    model = transformers.ConvBertForMaskedLM(transformers.ConvBertConfig(**config_kwargs))
    model.load_state_dict(state, strict=False)
    model.to(device)
    if provider == "hf":
        return model, model
    if provider == "hf-patched":
        convbert_kernels.patch_transformers(model)
        return model, model
    if provider == "hf-compiled":
        return model, torch.compile(model, backend=compile_backend)
    if provider == "hf-patched-compiled":
        convbert_kernels.patch_transformers(model)
        return model, torch.compile(model, backend=compile_backend)
    raise ValueError(f"unknown provider {provider!r}")


def _autocast(device, dtype_name):
    if dtype_name == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=common.dtype_from_name(dtype_name))


def _train_step(model, fn, device, dtype_name):
    """A training-step callable for ``fn`` (the model or its compiled version): forward under
    autocast, backward, AdamW step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch):
        with _autocast(device, dtype_name):
            loss = fn(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(provider: str, args, device: torch.device, state: dict, batch: dict) -> dict:
    row = dict(bench="model", provider=provider, size=args.size, batch=args.batch, seq_len=args.seq_len,
               dtype=args.dtype, optimizer="AdamW", **{k: v for k, v in hf_config_kwargs(args.size).items()
                                                       if k in ("hidden_size", "num_hidden_layers", "vocab_size")},
               **common.environment(device))
    try:
        model, fn = build(provider, args.size, state, device, compile_backend=args.compile_backend)
        model.eval()
        with torch.no_grad(), _autocast(device, args.dtype):
            row["eval_loss"] = float(model(**batch).loss)
        model.train()
        train_step = _train_step(model, fn, device, args.dtype)

        def step():
            return train_step(batch)

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
        if args.profile:
            row["profile_top"], row["profile_total_ms"] = common.profile_top(step, device, top=args.profile)
    except Exception as exc:  # noqa: BLE001 -- a provider that fails is a row too
        if args.verbose:
            traceback.print_exc()
        row["error"] = common.error_text(exc)
    finally:
        model = fn = train_step = step = None  # noqa: F841
        _free(device)
    return row


# ----------------------------------------------------------------------------------------------
# Longest trainable sequence length
# ----------------------------------------------------------------------------------------------

OOM_ERRORS = tuple({getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError})


def longest_trainable(try_length, lengths) -> dict:
    """Call ``try_length(L)`` for each length, shortest first, until one raises.

    Returns ``max_len`` (the longest length that ran, None if none did), ``failed_len`` (the first
    that raised, None if all ran), ``failed_error_type`` / ``failed_error`` (its exception class name
    and first line), ``oom`` (whether it was an out-of-memory error) and ``info`` (what
    ``try_length`` returned for ``max_len``). Longer lengths are not tried after a failure: memory
    only grows with L. (A row's own ``error`` key is kept for a search that could not run at all.)
    """
    result = dict(max_len=None, failed_len=None, failed_error_type=None, failed_error=None, oom=False, info=None)
    for length in sorted(lengths):
        try:
            info = try_length(length)
        except Exception as exc:  # noqa: BLE001 -- the failure (usually OOM) is the measurement
            result.update(failed_len=length, failed_error_type=type(exc).__name__, oom=isinstance(exc, OOM_ERRORS),
                          failed_error=(str(exc).strip().splitlines() or [""])[0][:200])
            break
        result.update(max_len=length, info=info)
    return result


def measure_max_len(provider: str, args, device: torch.device, state: dict, overrides: dict) -> dict:
    """One ``bench="model-max-len"`` row: the longest of ``args.max_len`` that ``provider`` trains
    at batch ``args.max_len_batch`` (one full training step each, shortest first)."""
    row = dict(bench="model-max-len", provider=provider, size=args.size, batch=args.max_len_batch,
               dtype=args.dtype, lengths=sorted(args.max_len), **common.environment(device))
    model = fn = step = None
    try:
        model, fn = build(provider, args.size, state, device, config_overrides=overrides,
                          compile_backend=args.compile_backend)
        model.train()
        step = _train_step(model, fn, device, args.dtype)

        def try_length(length):
            batch = make_batch(args.size, args.max_len_batch, length, device, seed=length)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            info = {"step_ms": (time.perf_counter() - t0) * 1e3}
            if device.type == "cuda":
                info["peak_total_bytes"] = int(torch.cuda.max_memory_allocated(device))
            return info

        result = longest_trainable(try_length, args.max_len)
        info = result.pop("info") or {}
        row.update(result, **{f"{k}_at_max_len": v for k, v in info.items()})
    except Exception as exc:  # noqa: BLE001 -- building the model failed
        if args.verbose:
            traceback.print_exc()
        row["error"] = common.error_text(exc)
    finally:
        model = fn = step = None  # noqa: F841 -- drop every reference before emptying the cache
        _free(device)
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
    p.add_argument("--max-len", type=lambda s: [int(x) for x in s.split(",") if x], default=None,
                   help="also find the longest of these lengths each provider trains at, e.g. 512,1024,2048,4096,8192")
    p.add_argument("--max-len-batch", type=int, default=8, help="batch size of the --max-len search")
    p.add_argument("--max-len-providers", type=lambda s: s.split(","), default=None,
                   help="providers of the --max-len search (default: the timed ones without torch.compile)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the compiled providers (aot_eager: quick, for smoke runs)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip the providers (and searches) that would start after this many seconds")
    p.add_argument("--profile", type=int, nargs="?", const=15, default=0, metavar="N",
                   help="after the timing, profile one more step per provider (torch.profiler) and keep its N "
                        "(default 15) longest operators / kernels by self time in the row, printed too")
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
    start = time.perf_counter()
    state = _hf_reference_state(args.size)
    batch = make_batch(args.size, args.batch, args.seq_len, device)
    out_path = Path(args.out) if args.out else common.results_path("model", device)
    rows = []

    def over_budget(what: str) -> dict | None:
        if args.budget_s is None or time.perf_counter() - start <= args.budget_s:
            return None
        return dict(error=f"skipped: the time budget of {args.budget_s:.0f} s was used up before {what}")

    def save(row):
        if not args.no_save:
            common.append_rows(out_path, [row])
        rows.append(row)

    def timed(name):
        skipped = over_budget(name)
        row = (dict(bench="model", provider=name, size=args.size, batch=args.batch, seq_len=args.seq_len,
                    dtype=args.dtype, **common.environment(device), **skipped) if skipped
               else measure(name, args, device, state, batch))
        if "error" in row:
            print(f"{name:>27}: ERROR {row['error']}", flush=True)
        else:
            print(f"{name:>27}: median {row['median_ms']:.1f} ms [p20 {row['p20_ms']:.1f}, p80 {row['p80_ms']:.1f}] "
                  f"{row['tokens_per_s']:.0f} tokens/s, peak {common.fmt_bytes(row['peak_bytes'])}, "
                  f"eval loss {row['eval_loss']:.5f}, first step {row['first_step_ms']:.0f} ms", flush=True)
            if row.get("profile_top"):
                print(f"\n{name}, one step's longest {'kernels' if device.type == 'cuda' else 'operators'} "
                      f"(self time):\n\n{gpu_summary.profile_table(row['profile_top'])}\n\n"
                      f"{gpu_summary.profile_busy_line(row)}\n", flush=True)
        save(row)

    # Cheap providers first, then the length search, then the compiled ones (slowest to start).
    for name in [n for n in names if not is_compiled(n)]:
        timed(name)
    if args.max_len:
        overrides = dict(max_position_embeddings=max(max(args.max_len),
                                                     hf_config_kwargs(args.size)["max_position_embeddings"]))
        search_state = _hf_reference_state(args.size, **overrides)
        search = args.max_len_providers or [n for n in names if not is_compiled(n)]
        print(f"# longest trainable length at B={args.max_len_batch} of {sorted(args.max_len)}: {search}", flush=True)
        for name in search:
            skipped = over_budget(f"the length search of {name}")
            row = (dict(bench="model-max-len", provider=name, size=args.size, batch=args.max_len_batch,
                        dtype=args.dtype, lengths=sorted(args.max_len), **common.environment(device), **skipped)
                   if skipped else measure_max_len(name, args, device, search_state, overrides))
            print(f"{name:>27}: " + (f"ERROR {row['error']}" if "error" in row else
                  f"max L {row['max_len']}, failed at {row['failed_len']} ({row['failed_error_type']})"), flush=True)
            save(row)
        search_state = None
    for name in [n for n in names if is_compiled(n)]:
        timed(name)
    from benchmarks import plot

    print()
    print(plot.model_table(rows))
    if args.max_len:
        print()
        print(gpu_summary.max_len_table(rows))
    if not args.no_save:
        print(f"\nrows appended to {out_path}")
    return rows


if __name__ == "__main__":
    main()
