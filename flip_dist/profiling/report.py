"""A profile as people read it: a terminal table, a bar chart of the step's phases, and for a sweep
one CSV row and one pair of bars (throughput, memory) per point."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from flip_dist.analysis.figures import pyplot, save_figure_atomic
from flip_dist.io_atomic import write_bytes_atomic
from flip_dist.profiling.phases import PHASE_HELP, PHASES

SWEEP_COLUMNS = ("samples_per_s", "tokens_per_s", "step_s", "plm_tflops", "dense_tflops", "mfu", "plm_of_peak",
                 "peak_memory_gib", "memory_estimate_gib", "data_wait_share", "error")


def format_table(r: dict[str, Any]) -> str:
    """The terminal summary: throughput, FLOP rates, the phases with their share, memory."""
    est = r["memory_estimate_gib"]
    lines = [
        f"{r['stage']} on {r['workers']} worker(s), {r['precision']}, ZeRO-{r['zero_stage']}, PLM {r['plm']}, "
        f"ID model {r['id_model']}, global batch {r['global_batch']} ({r['micro_batch_rows']} rows a micro-step x "
        f"{r['grad_accum']} accumulated), {r['steps']} timed micro-steps",
        f"  samples/s {r['samples_per_s']:10.2f}    tokens/s {r['tokens_per_s']:10.1f}    "
        f"step {1e3 * r['step_s']:9.1f} ms",
        f"  PLM {r['plm_tflops']:.3f} TFLOP/s ({100 * r['plm_of_peak']:.1f}% of peak)    dense side "
        f"{r['dense_tflops']:.3f} TFLOP/s    MFU {100 * r['mfu']:.1f}%",
        f"  peak {r['peak_tflops_per_worker']:.3f} TFLOP/s a worker: {r['peak_source']}",
        "",
        f"  {'phase':<10} {'ms/step':>9} {'share':>7}  what",
    ]
    step = r["step_s"] or 1.0
    for p in PHASES:
        s = r["phases"].get(p, 0.0)
        lines.append(f"  {p:<10} {1e3 * s:9.1f} {100 * s / step:6.1f}%  {PHASE_HELP[p]}")
    lines.append(f"  {'step':<10} {1e3 * r['step_s']:9.1f} {100.0:6.1f}%")
    lines += ["", f"  peak memory {r['peak_memory_gib']:.2f} GiB a worker (worst); estimate {est['total']:.2f} GiB = "
              f"process {est['process']:.2f} + dense state {est['dense_state']:.2f} + tables {est['tables']:.2f} + "
              f"sampler {est['sampler']:.2f} + activations {est['activations']:.2f}; ratio "
              f"{r['memory_vs_estimate']:.2f}x"]
    if r.get("traces"):
        lines.append(f"  trace: {r['traces'][0]} (Perfetto: ui.perfetto.dev)")
    return "\n".join(lines)


def plot_profile(r: dict[str, Any], path: str | Path) -> Path:
    """Milliseconds a step by phase (one bar each, labelled with its share), per worker side by side."""
    plt = pyplot()
    workers = r.get("per_worker") or [r]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(workers)
    for i, w in enumerate(workers):
        ms = [1e3 * w["phases"].get(p, 0.0) for p in PHASES]
        xs = [j + (i - (len(workers) - 1) / 2) * width for j in range(len(PHASES))]
        bars = ax.bar(xs, ms, width, label=f"rank {w.get('rank', 0)}")
        step = sum(ms) or 1.0
        for b, v in zip(bars, ms):
            if v > 0.005 * step:
                ax.annotate(f"{100 * v / step:.0f}%", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                            fontsize=8)
    ax.set_xticks(range(len(PHASES)), PHASES, rotation=20)
    ax.set_ylabel("milliseconds per step")
    ax.set_xlabel("phase of the training step")
    ax.set_title(f"{r['stage']}: {r['workers']} worker(s), {r['precision']}, PLM {r['plm']}, batch "
                 f"{r['global_batch']}: {1e3 * r['step_s']:.0f} ms/step, {r['samples_per_s']:.1f} samples/s, "
                 f"MFU {100 * r['mfu']:.1f}%", fontsize=9)
    if len(workers) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = save_figure_atomic(fig, path)
    plt.close(fig)
    return out


def sweep_row(point: dict[str, Any], r: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
    row: dict[str, Any] = dict(point)
    if r is None:
        return {**row, **{c: "" for c in SWEEP_COLUMNS}, "error": error or ""}
    row.update({c: r[c] for c in SWEEP_COLUMNS if c in r})
    row["memory_estimate_gib"] = r["memory_estimate_gib"]["total"]
    row["data_wait_share"] = r["phases"]["data_wait"] / r["step_s"] if r["step_s"] else 0.0
    row["error"] = ""
    return row


def write_sweep_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_bytes_atomic(path, buf.getvalue().encode())
    return Path(path)


def plot_sweep(rows: list[dict[str, Any]], axes: list[str], path: str | Path) -> Path:
    """Throughput and peak memory (with its estimate) per sweep point; failed points marked."""
    plt = pyplot()
    labels = ["\n".join(f"{a}={row[a]}" for a in axes) for row in rows]
    ok = [not row.get("error") for row in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 1.1 * len(rows) + 2), 6.5), sharex=True)
    xs = range(len(rows))
    sps = [row["samples_per_s"] if k else 0.0 for row, k in zip(rows, ok)]
    bars = top.bar(xs, sps, color="tab:blue")
    for b, v, k in zip(bars, sps, ok):
        top.annotate(f"{v:.1f}" if k else "failed", (b.get_x() + b.get_width() / 2, v), ha="center",
                     va="bottom", fontsize=8)
    top.set_ylabel("samples / s (all workers)")
    top.set_title("profile sweep: " + ", ".join(axes), fontsize=10)
    top.grid(axis="y", alpha=0.3)
    w = 0.4
    peak = [row["peak_memory_gib"] if k else 0.0 for row, k in zip(rows, ok)]
    est = [row["memory_estimate_gib"] if k else 0.0 for row, k in zip(rows, ok)]
    bottom.bar([x - w / 2 for x in xs], peak, w, label="peak (worst worker)", color="tab:red")
    bottom.bar([x + w / 2 for x in xs], est, w, label="estimate", color="tab:gray")
    bottom.set_ylabel("GiB per worker")
    bottom.set_xticks(list(xs), labels, fontsize=8)
    bottom.set_xlabel("sweep point")
    bottom.legend(fontsize=8)
    bottom.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = save_figure_atomic(fig, path)
    plt.close(fig)
    return out


def plot_sweep_axes(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """One panel per swept axis (rows carry `axis` and `value`): samples/s as bars, peak memory and
    its estimate as points on a second scale."""
    plt = pyplot()
    axes = list(dict.fromkeys(r["axis"] for r in rows))
    cols = min(len(axes), 4)
    nrows = -(-len(axes) // cols)
    fig, grid = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.6 * nrows), squeeze=False)
    for k, axis in enumerate(axes):
        ax = grid[k // cols][k % cols]
        mine = [r for r in rows if r["axis"] == axis]
        xs = range(len(mine))
        sps = [r["samples_per_s"] if not r["error"] else 0.0 for r in mine]
        bars = ax.bar(xs, sps, color="tab:blue", label="samples/s")
        for b, v, r in zip(bars, sps, mine):
            ax.annotate(f"{v:.1f}" if not r["error"] else "failed", (b.get_x() + b.get_width() / 2, v),
                        ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(xs), [str(r["value"]) for r in mine], fontsize=8, rotation=15)
        ax.set_xlabel(axis)
        ax.set_ylabel("samples / s", color="tab:blue")
        mem = ax.twinx()
        ok = [(x, r) for x, r in zip(xs, mine) if not r["error"]]
        mem.plot([x for x, _ in ok], [r["peak_memory_gib"] for _, r in ok], "o-", color="tab:red", label="peak GiB")
        mem.plot([x for x, _ in ok], [r["memory_estimate_gib"] for _, r in ok], "s--", color="tab:gray",
                 label="estimate GiB")
        mem.set_ylabel("GiB per worker", color="tab:red")
        mem.set_ylim(bottom=0)
        if k == 0:
            mem.legend(fontsize=7, loc="upper left")
    for k in range(len(axes), nrows * cols):
        grid[k // cols][k % cols].axis("off")
    fig.suptitle("flip-dist profile sweeps: throughput (bars) and memory (lines) per axis", fontsize=10)
    fig.tight_layout()
    out = save_figure_atomic(fig, path)
    plt.close(fig)
    return out
