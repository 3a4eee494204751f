"""Benchmark results: `benchmarks/results/<task>.json`, `.md` (a table) and `.png` (a plot).

JSON shape (docs/architecture.md, "Benchmarks"):
    {"task", "created", "machine": {"cpu", "gpu", "torch"}, "config",
     "rows": [{"method", "tokens", "flops", "params", "latency_ms", "peak_mem_mb",
               "metrics": {name: value}, "cases": {seed: {column: [per-case values]}} | null}]}

A quality metric m of a bench run through `medvtc.common.bench_runner` comes with `m_ci` (its
95 % interval), `m_diff` / `m_diff_ci` (the paired difference to the reference row) and, with
several seeds, `m_per_seed`; the markdown shows `m` as `0.850 [0.830, 0.870]` and the
differences in a table of their own.
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
    cases: dict[str, Any] | None = None  # per-case results ({seed: {column: [values]}}), to recompute intervals


# metric-name suffixes that belong to another metric (its interval, difference, seeds, validation
# curve): kept in the json, not shown as table columns
AUX_SUFFIXES = ("_ci", "_diff", "_diff_ci", "_per_seed", "_val_curve")


def _is_aux(name: str, names: Sequence[str]) -> bool:
    return any(name.endswith(sfx) and name[: -len(sfx)] in names for sfx in AUX_SUFFIXES)


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


def _cell(metrics: dict[str, Any], name: str) -> str:
    from medvtc.common.intervals import format_interval

    value, ci = metrics.get(name), metrics.get(f"{name}_ci")
    if ci is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_interval(float(value), ci)
    return _fmt(value)


def _hidden(name: str, hide: Sequence[str]) -> bool:
    return any(name.startswith(prefix) for prefix in hide)


def markdown_table(rows: Sequence[ResultRow | dict[str, Any]], metric_names: Sequence[str] | None = None,
                   hide: Sequence[str] = ()) -> str:
    """The rows as a markdown table; a metric with an interval shows as `0.850 [0.830, 0.870]`.
    Metrics whose names start with a prefix in `hide` are left out (kept in the json; a bench
    shows them in a table of its own, e.g. ct-report's per-label F1)."""
    dict_rows = [r if isinstance(r, dict) else asdict(r) for r in rows]
    if metric_names is None:
        names: list[str] = []
        for r in dict_rows:
            for k in r.get("metrics", {}):
                if k not in names:
                    names.append(k)
        metric_names = [n for n in names if not _is_aux(n, names) and not _hidden(n, hide)]
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
            *(_cell(r.get("metrics", {}), m) for m in metric_names),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def difference_table(rows: Sequence[ResultRow | dict[str, Any]], reference: str | None, hide: Sequence[str] = ()) -> str:
    """Paired differences to the reference row (`m_diff` with `m_diff_ci`), one column per
    metric that has them (less those starting with a prefix in `hide`); empty when no row has any."""
    from medvtc.common.intervals import format_interval

    dict_rows = [r if isinstance(r, dict) else asdict(r) for r in rows]
    names: list[str] = []
    for r in dict_rows:
        for k in r.get("metrics", {}):
            if k.endswith("_diff_ci") and k[: -len("_diff_ci")] not in names and not _hidden(k, hide):
                names.append(k[: -len("_diff_ci")])
    if not names:
        return ""
    lines = [f"### Paired differences to {reference or 'the reference'} (variant minus reference, 95 % paired bootstrap)", "",
             "| method | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for r in dict_rows:
        m = r.get("metrics", {})
        if not any(f"{n}_diff_ci" in m for n in names):
            continue
        cells = [format_interval(m.get(f"{n}_diff"), m.get(f"{n}_diff_ci"), signed=True) if f"{n}_diff" in m else "-"
                 for n in names]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    task: str,
    rows: Sequence[ResultRow],
    config: dict[str, Any],
    out_dir: str | Path = "benchmarks/results",
    plot: Callable[[list[dict[str, Any]], Path], None] | None = None,
    markdown_extra: str = "",
    name: str | None = None,
    hide: Sequence[str] = (),
) -> dict[str, Path]:
    """Write the JSON, markdown and PNG for one benchmark run; returns their paths. Metrics
    starting with a prefix in `hide` are in the json but not in the markdown's two tables."""
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
        + markdown_table(rows, hide=hide)
        + ("\n" + diff + "\n" if (diff := difference_table(rows, config.get("reference") if isinstance(config, dict) else None, hide))
           else "")
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
    """Annotate each point with its name, just above and right of it, moving a label up until it
    clears the ones already placed: variants often sit on nearly the same spot (same tokens, same
    success). A label that had to move gets a thin leader line to its point, so it still reads as
    that point's. Boxes are estimated in points (0.6 em per character), close enough for short names."""
    ax.autoscale_view()
    to_points = 72.0 / ax.figure.dpi
    dx, dy0 = 3.0, 3.0  # the default offset of a label from its point, in points
    placed: list[tuple[float, float, float, float]] = []
    for method, x, y in points:
        px, py = (v * to_points for v in ax.transData.transform((x, y)))
        width, height = 0.6 * fontsize * len(method), fontsize + 1
        dy = dy0
        while any(px + dx < right and px + dx + width > left and py + dy < top and py + dy + height > bottom
                  for left, bottom, right, top in placed):
            dy += height
        placed.append((px + dx, py + dy, px + dx + width, py + dy + height))
        # The leader runs from the label's lower-left corner to (just short of) the point.
        leader = None if dy == dy0 else dict(arrowstyle="-", lw=0.5, color="0.5", relpos=(0, 0), shrinkA=0, shrinkB=3)
        ax.annotate(method, (x, y), fontsize=fontsize, xytext=(dx, dy), textcoords="offset points", arrowprops=leader)


def quality_cost_plot(
    rows: list[dict[str, Any]],
    path: Path,
    quality: str,
    quality_label: str,
    panels: Sequence[tuple[str, str, bool]],
    scale: dict[str, float] | None = None,
    extra: Sequence[Callable[[Any], None]] = (),
) -> None:
    """One panel per cost column: the row's `metrics[quality]` (y) against a cost column (x).

    `panels` lists (row column, axis label, log x); `scale` divides a column (e.g. flops by 1e9).
    Rows without the quality metric or with a missing / non-finite cost are left out of a panel,
    so a network that ran out of memory at a size does not break the plot. Each function of
    `extra` draws one more panel on the axes it is given (e.g. validation curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = scale or {}
    n = len(panels) + len(extra)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.5), squeeze=False)
    for draw, ax in zip(extra, axes[0][len(panels):]):
        draw(ax)
    for ax, (column, label, log) in zip(axes[0], panels):
        points = []
        for r in rows:
            y, x = r["metrics"].get(quality), r.get(column)
            if y is None or x is None or not math.isfinite(float(x)):
                continue
            x = float(x) / scale.get(column, 1.0)
            ci = r["metrics"].get(f"{quality}_ci")
            if ci is not None and None not in ci:  # the 95 % interval as an error bar
                ax.errorbar(x, y, yerr=[[max(0.0, y - ci[0])], [max(0.0, ci[1] - y)]], fmt="none", ecolor="0.6",
                            elinewidth=1, capsize=2)
            ax.scatter(x, y, label=r["method"])
            points.append((r["method"], x, y))
        if log:  # before the labels: their overlap is judged on the final axes
            ax.set_xscale("log")
        _place_labels(ax, points)
        ax.set_xlabel(label)
        ax.set_ylabel(quality_label)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
