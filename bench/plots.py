"""The report's PNG plots (matplotlib, a dev dependency, Agg backend: no display, no network).

Each function takes the results bench/report.py collected and writes one PNG, returning its path, or
None when the figures it needs were not measured in this run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from bench.targets import Results  # noqa: E402

__all__ = ["latency_plot", "render_plots", "rss_plot", "scaling_plot"]

DPI = 100


def _save(fig: Any, path: Path) -> Path:
    """Lay the figure out, write it as PNG and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _ecdf(ax: Any, values: list[float], label: str) -> None:
    ordered = sorted(values)
    n = len(ordered)
    ax.step(ordered, [(i + 1) / n for i in range(n)], where="post", label=f"{label} (n={n})")


def latency_plot(results: Results, path: Path) -> Path | None:
    """Latency distributions as cumulative curves: HTTP classify, invoke and MQTT, edged vs native."""
    panels: list[tuple[str, list[tuple[str, list[float]]]]] = []
    samples = (results.get("classify", {}).get("json") or {}).get("samples_ms") or {}
    if samples:
        panels.append(("classify over HTTP (1 worker)", [("edged http", samples.get("http/1", [])),
                                                        ("native aiohttp server", samples.get("native-http/1", []))]))
        panels.append(("classify in process (1 worker)", [("edged invoke path", samples.get("invoke/1", [])),
                                                         ("native Python + TFLite", samples.get("native/1", []))]))
    mqtt = results.get("mqtt_pipeline", {}).get("json")
    if mqtt:
        panels.append(("MQTT burst, both functions (incl. broker queueing)",
                       [(f"{p} pipeline", mqtt[p]["latencies_ms"]) for p in ("edged", "native")]))
    panels = [(title, [(label, v) for label, v in series if v]) for title, series in panels]
    panels = [(title, series) for title, series in panels if series]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels, strict=True):
        for label, values in series:
            _ecdf(ax, values, label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("share of calls at or below")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def scaling_plot(results: Results, path: Path) -> Path | None:
    """classify images/s against the worker count, for every mode classify_bench measured."""
    figures = results.get("classify", {}).get("json") or {}
    series: dict[str, list[tuple[int, float]]] = {}
    for key, row in figures.items():
        mode, _, workers = key.partition("/")
        if workers.isdigit() and isinstance(row, dict) and "images_per_s" in row:
            series.setdefault(mode, []).append((int(workers), float(row["images_per_s"])))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, points in sorted(series.items()):
        points.sort()
        ax.plot([w for w, _ in points], [v for _, v in points], marker="o", label=mode)
    ax.set_xticks(sorted({w for points in series.values() for w, _ in points}))
    ax.set_xlabel("workers (pool workers = client threads)")
    ax.set_ylabel("classify images/s")
    ax.set_title("throughput against workers", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def rss_plot(results: Results, path: Path) -> Path | None:
    """RSS against calls made, from pool_bench's soak (its JSON)."""
    soak = (results.get("pool", {}).get("json") or {}).get("rss_mb_by_calls") or []
    points = [(float(calls), float(mb)) for calls, mb in soak]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c for c, _ in points], [m for _, m in points], marker="o")
    ax.set_xlabel("grayscale calls (after 500 warm-up calls)")
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.set_title("RSS over the soak", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def render_plots(results: Results, directory: Path) -> dict[str, Path]:
    """Every plot that has its figures, into ``directory``; name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    made = {name: fn(results, directory / f"{name}.png")
            for name, fn in (("latency", latency_plot), ("scaling", scaling_plot), ("rss", rss_plot))}
    return {name: p for name, p in made.items() if p is not None}
