"""Benchmark results: `benchmarks/results/<task>.json`, `.md` (a table) and `.png` (a plot).

JSON shape (DESIGN.md):
    {"task", "created", "machine": {"cpu", "gpu", "torch"}, "config",
     "rows": [{"method", "tokens", "flops", "params", "latency_ms", "peak_mem_mb",
               "metrics": {name: value}}]}
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from medvtc.common.accounting import machine_info
from medvtc.common.io import atomic_path, atomic_write_json, atomic_write_text


@dataclass
class ResultRow:
    method: str
    tokens: int
    flops: float
    params: int
    latency_ms: float
    peak_mem_mb: float
    metrics: dict[str, Any] = field(default_factory=dict)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def markdown_table(rows: Sequence[ResultRow | dict[str, Any]], metric_names: Sequence[str] | None = None) -> str:
    dict_rows = [r if isinstance(r, dict) else asdict(r) for r in rows]
    if metric_names is None:
        names: list[str] = []
        for r in dict_rows:
            for k in r.get("metrics", {}):
                if k not in names:
                    names.append(k)
        metric_names = names
    header = ["method", "tokens", "GFLOPs", "params", "latency ms", "peak MiB", *metric_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in dict_rows:
        cells = [
            str(r["method"]),
            _fmt(r["tokens"]),
            _fmt(r["flops"] / 1e9 if r["flops"] is not None else None),
            _fmt(r["params"]),
            _fmt(r["latency_ms"]),
            _fmt(r["peak_mem_mb"]),
            *(_fmt(r.get("metrics", {}).get(m)) for m in metric_names),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    task: str,
    rows: Sequence[ResultRow],
    config: dict[str, Any],
    out_dir: str | Path = "benchmarks/results",
    plot: Callable[[list[dict[str, Any]], Path], None] | None = None,
    markdown_extra: str = "",
    name: str | None = None,
) -> dict[str, Path]:
    """Write the JSON, markdown and PNG for one benchmark run; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or task
    doc = {
        "task": task,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": config,
        "rows": [asdict(r) for r in rows],
    }
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png"}
    atomic_write_json(paths["json"], doc)
    m = doc["machine"]
    md = (
        f"# Benchmark: {task}\n\n"
        f"Created {doc['created']} on {m['cpu']}, GPU: {m['gpu'] or 'none'}, torch {m['torch']}.\n\n"
        + markdown_table(rows)
        + ("\n" + markdown_extra if markdown_extra else "")
    )
    atomic_write_text(paths["md"], md)
    with atomic_path(paths["png"]) as tmp:
        (plot or default_plot)(doc["rows"], tmp)
    return paths


def default_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Latency against tokens, one point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["tokens"], r["latency_ms"], label=r["method"])
    ax.set_xlabel("tokens")
    ax.set_ylabel("latency (ms)")
    if len(rows) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def _place_labels(ax: Any, points: list[tuple[str, float, float]], fontsize: float = 7) -> None:
    """Annotate each point with its name, moving a label up until it clears the ones already
    placed: variants often sit on nearly the same spot (same tokens, same success). Boxes are
    estimated in points (0.6 em per character), which is close enough for short names."""
    ax.autoscale_view()
    to_points = 72.0 / ax.figure.dpi
    placed: list[tuple[float, float, float, float]] = []
    for method, x, y in points:
        px, py = (v * to_points for v in ax.transData.transform((x, y)))
        width, height = 0.6 * fontsize * len(method), fontsize + 1
        dy = 3.0
        while any(px + 3 < r and px + 3 + width > l and py + dy < t and py + dy + height > b
                  for l, b, r, t in placed):
            dy += height
        placed.append((px + 3, py + dy, px + 3 + width, py + dy + height))
        ax.annotate(method, (x, y), fontsize=fontsize, xytext=(3, dy), textcoords="offset points")


def quality_cost_plot(
    rows: list[dict[str, Any]],
    path: Path,
    quality: str,
    quality_label: str,
    panels: Sequence[tuple[str, str, bool]],
    scale: dict[str, float] | None = None,
) -> None:
    """One panel per cost column: the row's `metrics[quality]` (y) against a cost column (x).

    `panels` lists (row column, axis label, log x); `scale` divides a column (e.g. flops by 1e9).
    Rows without the quality metric or with a missing / non-finite cost are left out of a panel,
    so a network that ran out of memory at a size does not break the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = scale or {}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (column, label, log) in zip(axes[0], panels):
        points = []
        for r in rows:
            y, x = r["metrics"].get(quality), r.get(column)
            if y is None or x is None or not math.isfinite(float(x)):
                continue
            x = float(x) / scale.get(column, 1.0)
            ax.scatter(x, y, label=r["method"])
            points.append((r["method"], x, y))
        _place_labels(ax, points)
        ax.set_xlabel(label)
        ax.set_ylabel(quality_label)
        if log:
            ax.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
