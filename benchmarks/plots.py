"""PNG plots of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def _save(fig: Figure, directory: Path, name: str, written: list[str]) -> None:
    path = directory / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))


def _warmup(report: dict[str, Any], directory: Path, written: list[str]) -> None:
    curves = []
    if report.get("warmup"):
        curves.append(("standalone", report["warmup"]))
    stall = report.get("sections", {}).get("stall", {})
    if stall.get("warmup"):
        curves.append(("3-node ensemble", stall["warmup"]))
    if not curves:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, warm in curves:
        xs = [t for t, _ in warm["curve"]]
        ys = [r for _, r in warm["curve"]]
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("seconds of warm-up load")
    ax.set_ylabel("operations / s")
    ax.set_title("ZooKeeper warm-up (JIT)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, directory, "warmup", written)


def _fanout(report: dict[str, Any], directory: Path, written: list[str]) -> None:
    results = report.get("sections", {}).get("fanout", {}).get("results", [])
    if not results:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    labels: dict[str, str] = {}
    for r in results:
        labels.setdefault(r["impl"], r["label"])
    for impl, label in labels.items():
        cells = sorted((r for r in results if r["impl"] == impl), key=lambda r: r["subscribers"])
        xs = [r["subscribers"] for r in cells]
        ys = [(r["publish_rate"] if r.get("publish_only") else r["e2e_rate"]) or 0 for r in cells]
        spreads = [r.get("rates") or {} for r in cells]
        low = [max(0.0, y - s.get("min", y)) for y, s in zip(ys, spreads, strict=True)]
        high = [max(0.0, s.get("max", y) - y) for y, s in zip(ys, spreads, strict=True)]
        style = "--" if cells and cells[0].get("publish_only") else "-"
        ax.errorbar(xs, ys, yerr=[low, high], fmt=style, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("subscribers")
    ax.set_ylabel("messages / s handled by every subscriber")
    ax.set_title("Fan-out end to end (dashed: publish-only ceilings; bars: runs' range)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower left")
    _save(fig, directory, "fanout", written)


def _queue(report: dict[str, Any], directory: Path, written: list[str]) -> None:
    results = report.get("sections", {}).get("queue", {}).get("results", [])
    if not results:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    impls = list(dict.fromkeys(r["label"] for r in results))
    workers = sorted({r["workers"] for r in results})
    width = 0.8 / max(1, len(impls))
    for i, label in enumerate(impls):
        xs = [w + (i - (len(impls) - 1) / 2) * width for w in range(len(workers))]
        cells = [
            next((r for r in results if r["label"] == label and r["workers"] == w), None)
            for w in workers
        ]
        ys = [(c["consume_rate"] or 0) if c else 0 for c in cells]
        spreads = [(c.get("rates") or {}) if c else {} for c in cells]
        low = [max(0.0, y - s.get("min", y)) for y, s in zip(ys, spreads, strict=True)]
        high = [max(0.0, s.get("max", y) - y) for y, s in zip(ys, spreads, strict=True)]
        ax.bar(xs, ys, width=width, yerr=[low, high], capsize=3, label=label)
    ax.set_xticks(range(len(workers)), [str(w) for w in workers])
    ax.set_xlabel("workers")
    ax.set_ylabel("items consumed / s")
    ax.set_title("Work queue")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, directory, "queue", written)


def _latency(report: dict[str, Any], directory: Path, written: list[str]) -> None:
    results = report.get("sections", {}).get("latency", {}).get("results", [])
    if not results:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        cdf = r.get("cdf_ms") or []
        if not cdf:
            continue
        xs = [max(x, 0.01) for x, _ in cdf]
        ys = [y for _, y in cdf]
        sat = " (saturated)" if r["saturated"] else ""
        ax.plot(xs, ys, label=f"{r['label']} at {r['rate']:g}/s{sat}")
    ax.set_xscale("log")
    ax.set_xlabel("ms from scheduled send to handler")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title("Publish-to-handler latency (open loop)")
    ax.axvline(3, color="grey", linestyle=":", linewidth=1)
    ax.axvline(15, color="grey", linestyle=":", linewidth=1)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save(fig, directory, "latency", written)


def _backlog(report: dict[str, Any], directory: Path, written: list[str]) -> None:
    levels = report.get("sections", {}).get("backlog", {}).get("levels", [])
    if not levels:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [max(1, r["level"]) for r in levels]
    for key, label in (("p50", "p50"), ("p99", "p99"), ("mean", "mean")):
        ax.plot(xs, [r["latency_ms"][key] for r in levels], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("messages pending at the level's last probe (0: from empty, shown at 1)")
    ax.set_ylabel("publish latency, ms")
    ax.set_title("Publish cost against a backlog")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    _save(fig, directory, "backlog", written)


def _stall(report: dict[str, Any], directory: Path, written: list[str]) -> None:
    results = report.get("sections", {}).get("stall", {}).get("results", [])
    if not results:
        return
    fig, axes = plt.subplots(len(results), 1, figsize=(8, 2.6 * len(results)), squeeze=False)
    for ax_row, r in zip(axes, results, strict=False):
        ax: Axes = ax_row[0]
        timeline = r.get("timeline_per_100ms") or []
        ax.bar([t for t, _ in timeline], [c * 10 for _, c in timeline], width=0.1, align="edge")
        ax.axvline(0, color="red", linewidth=1)
        ax.set_title(f"{r['label']}: longest gap {r['max_gap_s']} s", fontsize=9)
        ax.set_ylabel("acks / s")
        ax.grid(alpha=0.3)
    axes[-1][0].set_xlabel("seconds since the leader was killed")
    _save(fig, directory, "stall", written)


def _stuck(report: dict[str, Any], directory: Path, written: list[str]) -> None:
    runs = report.get("sections", {}).get("stuck", {}).get("runs", [])
    first = {r["cell"]: r for r in runs if r["repeat"] == 0 and r["samples"]}
    if not first:
        return
    fig, (count_ax, size_ax) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for cell, r in first.items():
        ts = [s[0] for s in r["samples"]]
        line = count_ax.plot(ts, [s[1] for s in r["samples"]], label=f"{cell}: zk_znode_count")
        size_ax.plot(ts, [(s[2] or 0) / 1024 for s in r["samples"]], label=cell)
        if cell != "healthy":
            count_ax.plot(
                ts,
                [s[3] for s in r["samples"]],
                linestyle="--",
                color=line[0].get_color(),
                label=f"{cell}: the stuck queue's entries",
            )
    bound = report["sections"]["stuck"].get("params", {}).get("bound")
    if bound:
        count_ax.axhline(bound, color="black", linestyle=":", linewidth=1, label="bound")
    start, end = next(iter(first.values()))["publishing_s"][1:]
    for ax in (count_ax, size_ax):
        ax.axvspan(start, end, color="grey", alpha=0.1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    count_ax.set_ylabel("znodes")
    size_ax.set_ylabel("approximate data size, KiB")
    size_ax.set_xlabel("seconds (shaded: measured)")
    count_ax.set_title("One stuck subscriber among ten: the server's size (first round)")
    _save(fig, directory, "stuck", written)


def write_all(report: dict[str, Any], directory: Path) -> list[str]:
    """Write every plot the report has data for; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for plot in (_warmup, _fanout, _queue, _latency, _backlog, _stuck, _stall):
        plot(report, directory, written)
    return written
