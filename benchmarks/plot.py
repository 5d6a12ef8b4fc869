"""Plots and README tables from the benchmark rows.

    python -m benchmarks.plot                      # every benchmarks/results/*.jsonl
    python -m benchmarks.plot FILE.jsonl ... --markdown benchmarks/results/README-tables.md

For every kernels file: one PNG (``<file stem>.png`` beside it) per device, dtype and (B, A, C, n,
K) group with median time (p20-p80 band) and peak memory against sequence length, one line per
provider, one column per mode; and a markdown table of median times and speed-ups over the
reference. For every model file: a markdown table of tokens/s and peak memory. When a file holds
several runs of the same measurement, the latest row wins.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common

PROVIDER_ORDER = ("reference", "compiled-reference", "eager", "compiled-eager", "triton", "native")
MODE_ORDER = ("forward", "backward", "full")
MODE_TITLE = {"forward": "forward", "backward": "backward", "full": "forward + backward"}


def _latest(rows: list[dict], key) -> list[dict]:
    """Keep the last row of each measurement key (files are appended run after run)."""
    kept = {}
    for row in rows:
        kept[key(row)] = row
    return list(kept.values())


def _kernel_key(r):
    return (r["device"], r["dtype"], r["batch"], r["seq_len"], r["A"], r["C"], r["heads"], r["K"], r["provider"], r["mode"])


def _provider_rank(name):
    return PROVIDER_ORDER.index(name) if name in PROVIDER_ORDER else len(PROVIDER_ORDER)


def kernel_rows(rows):
    return _latest([r for r in rows if r.get("bench") == "kernel"], _kernel_key)


def kernel_speedup_table(rows: list[dict], baseline: str = "reference") -> str:
    """Markdown: one line per shape and mode; per provider the median ms and speed-up over baseline."""
    rows = kernel_rows(rows)
    if not rows:
        return "(no kernel rows)"
    providers = sorted({r["provider"] for r in rows}, key=_provider_rank)
    groups = defaultdict(dict)
    for r in rows:
        shape = (r["device"], r["dtype"], r["batch"], r["seq_len"], r["A"], r["C"], r["heads"], r["K"], r["mode"])
        groups[shape][r["provider"]] = r
    lines = []
    order = sorted(groups, key=lambda s: (s[0], s[1], s[4], s[5], s[6], s[7], s[2], s[3], MODE_ORDER.index(s[8])))
    for shape in order:
        device, dtype, B, L, A, C, n, K, mode = shape
        by = groups[shape]
        base = by.get(baseline)
        base_ms = base.get("median_ms") if base else None
        cells = []
        for p in providers:
            r = by.get(p)
            if r is None:
                cells.append("-")
            elif "error" in r:
                cells.append("error")
            else:
                cell = f"{r['median_ms']:.2f} ms"
                if base_ms and p != baseline:
                    cell += f" ({base_ms / r['median_ms']:.1f}x)"
                cell += f", {common.fmt_bytes(r.get('peak_bytes'))}"
                cells.append(cell)
        lines.append([f"{B}", f"{L}", f"{A}/{C}/{n}/{K}", dtype, MODE_TITLE[mode], *cells])
    devices = sorted({r["device"] for r in rows})
    header = ["B", "L", "A/C/n/K", "dtype", "mode", *providers]
    title = (f"span_dynamic_conv on {', '.join(devices)}: median time (speed-up over {baseline}), "
             f"peak memory of one call")
    return f"**{title}**\n\n" + common.markdown_table(header, lines)


def dtype_ratio_table(rows: list[dict], dtype: str, versus: str) -> str:
    """Markdown: per shape, mode and provider, the median ms in both dtypes and their ratio."""
    by = {}
    for r in kernel_rows(rows):
        if "error" not in r:
            by[r["provider"], r["batch"], r["seq_len"], r["A"], r["C"], r["heads"], r["K"], r["mode"], r["dtype"]] = r
    lines = []
    for key, r in by.items():
        if key[-1] != dtype or key[:-1] + (versus,) not in by:
            continue
        other = by[key[:-1] + (versus,)]
        provider, B, L, A, C, n, K, mode = key[:-1]
        lines.append([provider, f"{B}", f"{L}", f"{A}/{C}/{n}/{K}", MODE_TITLE[mode], f"{r['median_ms']:.2f}",
                      f"{other['median_ms']:.2f}", f"{r['median_ms'] / other['median_ms']:.2f}"])
    header = ["provider", "B", "L", "A/C/n/K", "mode", f"{dtype} ms", f"{versus} ms", f"{dtype} / {versus}"]
    return (f"**{versus} against {dtype}: median ms and their ratio (above 1: {versus} is the faster)**\n\n"
            + common.markdown_table(header, lines))


def model_rows(rows):
    def key(r):
        return (r["device"], r["dtype"], r["size"], r["batch"], r["seq_len"], r["provider"])

    return _latest([r for r in rows if r.get("bench") == "model"], key)


def model_table(rows: list[dict], baseline: str = "hf") -> str:
    rows = model_rows(rows)
    if not rows:
        return "(no model rows)"
    groups = defaultdict(list)
    for r in rows:
        groups[(r["device"], r["dtype"], r["size"], r["batch"], r["seq_len"])].append(r)
    out = []
    for (device, dtype, size, B, L), rs in sorted(groups.items()):
        base = next((r for r in rs if r["provider"] == baseline and "error" not in r), None)
        lines = []
        for r in rs:
            if "error" in r:
                lines.append([r["provider"], "error", "-", "-", "-", r["error"][:80]])
                continue
            speed = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
            lines.append([r["provider"], f"{r['median_ms']:.1f} [{r['p20_ms']:.1f}, {r['p80_ms']:.1f}]",
                          f"{r['tokens_per_s']:.0f}", speed, common.fmt_bytes(r.get("peak_bytes")),
                          f"{r.get('eval_loss', float('nan')):.5f}"])
        title = (f"ConvBertForMaskedLM training step (forward, backward, AdamW) on {device}: "
                 f"{size}, B={B}, L={L}, {dtype}")
        out.append(f"**{title}**\n\n" + common.markdown_table(
            ["provider", "step ms median [p20, p80]", "tokens/s", f"vs {baseline}", "peak memory", "eval loss"], lines))
    return "\n\n".join(out)


def _draw(rows, x_key, x_label, title, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted({r[x_key] for r in rows})
    modes = [m for m in MODE_ORDER if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(2, len(modes), figsize=(4.2 * len(modes), 7), squeeze=False)
    for j, mode in enumerate(modes):
        for p in sorted({r["provider"] for r in rows}, key=_provider_rank):
            pts = sorted((r for r in rows if r["mode"] == mode and r["provider"] == p), key=lambda r: r[x_key])
            if not pts:
                continue
            x = [r[x_key] for r in pts]
            (line,) = axes[0][j].plot(x, [r["median_ms"] for r in pts], marker="o", label=p)
            axes[0][j].fill_between(x, [r["p20_ms"] for r in pts], [r["p80_ms"] for r in pts],
                                    color=line.get_color(), alpha=0.2)
            axes[1][j].plot(x, [r["peak_bytes"] / 2**20 for r in pts], marker="o", label=p)
        axes[0][j].set_title(MODE_TITLE[mode])
        for i, ylabel in enumerate(("time, ms (median, p20-p80 band)", "peak memory of one call, MiB")):
            ax = axes[i][j]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_xlabel(x_label)
            ax.grid(True, which="both", alpha=0.3)
            if j == 0:
                ax.set_ylabel(ylabel)
    axes[0][0].legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_kernels(rows: list[dict], out_dir: Path, stem: str) -> list[Path]:
    """Per (device, dtype, A, C, n, K): time and memory against L (at the batch with the most
    lengths) -> ``<stem>[-<dims>].png``, and against B (at the length with the most batches)
    -> ``<stem>[-<dims>]-batch.png`` when there is a batch sweep."""
    rows = [r for r in kernel_rows(rows) if "error" not in r and "median_ms" in r]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["device"], r["dtype"], r["A"], r["C"], r["heads"], r["K"])].append(r)
    paths = []
    for (device, dtype, A, C, n, K), rs in sorted(groups.items()):
        suffix = f"-{dtype}-A{A}-C{C}-n{n}-K{K}" if len(groups) > 1 else ""
        clock = "/".join(sorted({r.get("clock", "wall") for r in rs}))
        by_batch, by_len = defaultdict(set), defaultdict(set)
        for r in rs:
            by_batch[r["batch"]].add(r["seq_len"])
            by_len[r["seq_len"]].add(r["batch"])
        B = max(by_batch, key=lambda b: (len(by_batch[b]), b))
        if len(by_batch[B]) > 1:
            title = f"span_dynamic_conv, {device}\nB={B}, A={A}, C={C}, n={n}, K={K}, {dtype}; clock: {clock}"
            paths.append(_draw([r for r in rs if r["batch"] == B], "seq_len", "sequence length L", title,
                               out_dir / f"{stem}{suffix}.png"))
        L = max(by_len, key=lambda length: (len(by_len[length]), length))
        if len(by_len[L]) > 2:
            title = f"span_dynamic_conv, {device}\nL={L}, A={A}, C={C}, n={n}, K={K}, {dtype}; clock: {clock}"
            paths.append(_draw([r for r in rs if r["seq_len"] == L], "batch", "batch B", title,
                               out_dir / f"{stem}{suffix}-batch.png"))
    return paths


def plot_window(rows: list[dict], out_dir: Path, stem: str, window: str = "causal") -> list[Path]:
    """bench_window's rows: median time against L (log-log, p20-p80 band), one line per provider,
    for the ``window`` offset; a row of panels per op (dynamic_conv, LightweightConv1d), a column per
    (K, mode). One PNG per (device, dtype, B, C, n): ``<stem>[-<dims>].png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks import bench_window

    rows = [r for r in bench_window.latest(rows) if r["window"] == window and "median_ms" in r]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["device"], r["dtype"], r["batch"], r["C"], r["heads"])].append(r)
    paths = []
    for (device, dtype, B, C, n), rs in sorted(groups.items()):
        ops = [op for op in bench_window.OPS if any(r["op"] == op for r in rs)]
        cols = sorted({(r["K"], r["mode"]) for r in rs}, key=lambda c: (c[0], bench_window.MODES.index(c[1])))
        fig, axes = plt.subplots(len(ops), len(cols), figsize=(4.2 * len(cols), 3.8 * len(ops)), squeeze=False)
        for i, op in enumerate(ops):
            provs = sorted({r["provider"] for r in rs if r["op"] == op}, key=bench_window._rank(op))
            for j, (K, mode) in enumerate(cols):
                ax = axes[i][j]
                for c, p in enumerate(provs):
                    pts = sorted((r for r in rs if r["op"] == op and r["provider"] == p and r["K"] == K
                                  and r["mode"] == mode), key=lambda r: r["seq_len"])
                    if not pts:
                        continue
                    x = [r["seq_len"] for r in pts]
                    style = dict(linestyle="--") if p == bench_window.BASELINE else {}
                    ax.plot(x, [r["median_ms"] for r in pts], marker="o", label=p, color=f"C{c}", **style)
                    ax.fill_between(x, [r["p20_ms"] for r in pts], [r["p80_ms"] for r in pts], color=f"C{c}",
                                    alpha=0.2)
                xs = sorted({r["seq_len"] for r in rs})
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xticks(xs, [str(x) for x in xs])
                ax.set_xlabel("sequence length L")
                ax.set_title(f"{op}, K={K}, {MODE_TITLE.get(mode, mode)}", fontsize=9)
                ax.grid(True, which="both", alpha=0.3)
                if j == 0:
                    ax.set_ylabel("time per call, ms (median, p20-p80)")
                    ax.legend(fontsize=7)
        clock = "/".join(sorted({r.get("clock", "?") for r in rs}))
        threads = "/".join(str(t) for t in sorted({r.get("threads") for r in rs if r.get("threads") is not None}))
        what = f"{window} window" + (" (padding_l = K - 1)" if window == "causal" else "")
        fig.suptitle(f"{what}, {device}, torch threads {threads}, clock {clock}; B={B}, C={C}, n={n}, {dtype}",
                     fontsize=10)
        fig.tight_layout()
        suffix = f"-{dtype}-B{B}-C{C}-n{n}" if len(groups) > 1 else ""
        path = out_dir / f"{stem}{suffix}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_length_histogram(bin_edges: list[int], bin_counts: list[int], path: Path, title: str = "",
                          notes: list[str] = ()) -> Path:
    """A histogram of sequence lengths (bench_unpad's corpus): documents per length bin, ``notes`` as
    lines of text under the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    widths = [hi - lo for lo, hi in zip(bin_edges, bin_edges[1:])]
    ax.bar(bin_edges[:-1], bin_counts, width=widths, align="edge", edgecolor="white", color="C0")
    ax.set_xlim(bin_edges[0], bin_edges[-1])
    ax.set_xticks(bin_edges[::2])
    ax.set_xlabel("tokens per sequence (with [CLS] and [SEP])")
    ax.set_ylabel("documents")
    ax.set_yscale("log")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.set_title("\n".join([title, *notes]), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _filter(rows, modes=None, batches=None):
    return [r for r in rows if (not modes or r.get("mode") in modes or r.get("bench") != "kernel")
            and (not batches or r.get("batch") in batches)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="JSONL files (default: benchmarks/results/*.jsonl)")
    p.add_argument("--markdown", help="also write the tables to this file")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--modes", type=lambda t: t.split(","), help="table only these kernel modes, e.g. forward,full")
    p.add_argument("--batches", type=lambda t: [int(x) for x in t.split(",")], help="table only these batch sizes")
    args = p.parse_args(argv)
    files = [Path(f) for f in args.files] or sorted(common.RESULTS_DIR.glob("*.jsonl"))
    sections = []
    for f in files:
        rows = common.read_rows([f])
        if any(r.get("bench") == "kernel" for r in rows):
            sections.append(kernel_speedup_table(_filter(rows, args.modes, args.batches)))
            if not args.no_plot:
                for path in plot_kernels(rows, f.parent, f.stem):
                    sections.append(f"![{path.stem}]({path.relative_to(common.ROOT) if path.is_relative_to(common.ROOT) else path})")
                    print(f"wrote {path}", file=sys.stderr)
        if any(r.get("bench") == "model" for r in rows):
            sections.append(model_table(_filter(rows, None, args.batches)))
        if any(r.get("bench") == "window" for r in rows):
            from benchmarks import bench_window

            sections.append(bench_window.window_tables(rows))
            if not args.no_plot:
                for path in plot_window(rows, f.parent, f.stem):
                    sections.append(f"![{path.stem}]({path.relative_to(common.ROOT) if path.is_relative_to(common.ROOT) else path})")
                    print(f"wrote {path}", file=sys.stderr)
        if any(r.get("bench") == "unpad" for r in rows):
            from benchmarks import bench_unpad

            sections.append(bench_unpad.unpad_tables(rows))
            png = f.with_name(f.stem + "-lengths.png")
            if png.is_file():
                sections.append(f"![{png.stem}]({png.relative_to(common.ROOT) if png.is_relative_to(common.ROOT) else png})")
    text = "\n\n".join(sections) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
        print(f"wrote {args.markdown}", file=sys.stderr)


if __name__ == "__main__":
    main()
