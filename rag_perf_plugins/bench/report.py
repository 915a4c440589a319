"""The bench's charts and its self-contained HTML report (``--html``, ``--plots``).

Example::

    rag-perf bench --quick --html report.html              # run, then write the report
    rag-perf bench --render docs/results/full.json --html report.html --plots img/

One question per chart, asked in its title, with units on the axes. Ours is always
:data:`OURS` (blue), the baseline measured in the same run :data:`BASELINE` (grey), a
target :data:`TARGET` (red, dashed). Per category: a ratio chart (how many times better
than the same-run baseline, log axis, 1 = the same, target marks where a result has a
ratio target), each curve with its bound or baseline on the same axes (throughput against
the Little's-law bound; disk-tier cost against entries on log axes with the 1,000-entry
cost as the baseline), and the table. The report is one HTML file: every chart is inline
SVG (text as SVG text in a generic sans-serif), no script, no external file, no network.

Does not: draw results without a baseline or curve as charts (they are in the tables).
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registry import Result

__all__ = ["BASELINE", "OURS", "TARGET", "Chart", "charts", "render_html", "write_pngs"]

OURS = "#1f6fb4"
BASELINE = "#8c8c8c"
TARGET = "#d62728"

# Baselines that are another library's part (a peer), not one of ours in another setting.
_PEERS = re.compile(
    r"langchain|llamaindex|llama_index|aiolimiter|cachebacked|inmemorycache|sqlitecache|"
    r"inmemoryratelimiter|openai max_retries|simplespanhandler|ingestioncache|embeddings_cache",
    re.IGNORECASE,
)
_TARGET_RATIO = re.compile(r"ratio\s*>=?\s*([0-9.eE+-]+)")
_TARGET_VALUE = re.compile(r"value\s*(<=|<|>=|>)\s*([0-9.eE+-]+)")


@dataclass(frozen=True)
class Chart:
    """One chart: its question (the title), an id for files and the DOM, and the figure."""

    key: str
    question: str
    figure: Any


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _target_ratio(target: str | None) -> float | None:
    m = _TARGET_RATIO.search(target or "")
    return float(m.group(1)) if m else None


def _target_value(target: str | None) -> float | None:
    m = _TARGET_VALUE.search(target or "")
    return float(m.group(2)) if m else None


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "none",  # text as text: a third of the size; the browser draws it
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.titleweight": "bold",
            "axes.spines.top": False,
            "axes.spines.right": False,
            # charts() builds a whole document's figures before they are drawn and closed
            # (23 for a full run with every category): more than pyplot's default of 20
            # open figures is by design here, not a leak.
            "figure.max_open_warning": 0,
        }
    )
    return plt


def _ratio_chart(key: str, question: str, rows: Sequence[Result]) -> Chart:
    """Horizontal bars from 1 to each ratio (log axis), labelled, with ratio targets."""
    plt = _plt()
    height = 1.2 + 0.42 * len(rows)
    fig, ax = plt.subplots(figsize=(9.5, height))
    ys = list(range(len(rows)))[::-1]
    ratios = [float(r.ratio) for r in rows if r.ratio is not None]
    lo = min([*ratios, 1.0]) / 8.0  # room for the label of a bar below 1
    hi = max([*ratios, 1.0]) * 6.0
    for y, r in zip(ys, rows, strict=True):
        ratio = float(r.ratio) if r.ratio is not None else 1.0
        better = ratio >= 1.0
        # Worse than the baseline: the same colour, hatched, so it reads as a shortfall.
        ax.barh(
            y,
            ratio - 1.0,
            left=1.0,
            color=OURS if better else "white",
            edgecolor=OURS,
            hatch=None if better else "///",
            height=0.6,
        )
        ax.text(
            ratio * (1.12 if better else 1 / 1.12),
            y,
            f"×{_fmt(ratio)}",
            va="center",
            ha="left" if better else "right",
            fontsize=9,
        )
        goal = _target_ratio(r.target.describe() if r.target else None)
        if goal is not None:
            ax.plot([goal, goal], [y - 0.4, y + 0.4], color=TARGET, linestyle="--", lw=1.5)
    ax.axvline(1.0, color=BASELINE, lw=1.5)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_formatter(_plain())
    ax.set_yticks(ys)
    ax.set_yticklabels([_label(r) for r in rows], fontsize=8.5)
    ax.set_xlabel("times better than the baseline measured in the same run (log scale; 1 = same)")
    fig.suptitle(question, x=0.01, ha="left", fontweight="bold", fontsize=11)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=OURS, label="ours: better"),
        plt.Rectangle((0, 0), 1, 1, fc="white", ec=OURS, hatch="///", label="ours: worse"),
        plt.Line2D([0], [0], color=BASELINE, lw=1.5, label="baseline (= 1)"),
    ]
    if any(_target_ratio(r.target.describe() if r.target else None) for r in rows):
        handles.append(plt.Line2D([0], [0], color=TARGET, ls="--", lw=1.5, label="target"))
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.9 / height - 0.04),
        ncol=len(handles),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout()
    return Chart(key, question, fig)


def _plain() -> Any:
    """Log-axis tick labels as plain numbers (0.01, 1, 1,000), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1 else f"{v:g}")


def _label(r: Result) -> str:
    name = r.name if len(r.name) <= 48 else r.name[:46] + "…"
    base = r.baseline_name or ""
    base = base if len(base) <= 44 else base[:42] + "…"
    return f"{name}\nvs {base}"


def _records_charts(r: Result, points: list[dict[str, Any]]) -> list[Chart]:
    """Charts of a list-of-records curve: throughput with its bound, then each figure."""
    plt = _plt()
    out: list[Chart] = []
    if not all(isinstance(p, dict) for p in points):
        return out
    numeric = [
        k
        for k, v in points[0].items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
        and all(isinstance(p.get(k), (int, float)) for p in points)
    ]  # fmt: skip
    if len(numeric) < 2:
        return out
    x_key = numeric[0]
    xs = [float(p[x_key]) for p in points]
    log_x = min(xs) > 0 and max(xs) / min(xs) >= 16
    used = {x_key, "queries"}
    if "throughput_qps" in numeric and "littles_law_bound_qps" in numeric:
        used |= {"throughput_qps", "littles_law_bound_qps"}
        question = f"Does throughput keep up with the Little's-law bound as {x_key} grows?"
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        ax.plot(xs, [p["littles_law_bound_qps"] for p in points], color=BASELINE, ls="--",
                marker="o", label=f"Little's-law bound ({x_key} / 1-query latency)")  # fmt: skip
        ax.plot(xs, [p["throughput_qps"] for p in points], color=OURS, marker="o", lw=2,
                label="ours: measured throughput")  # fmt: skip
        _axes(ax, x_key, "queries per second", log_x, log_x, question)
        _data_ticks(ax, xs, log_x)
        out.append(Chart(f"{r.category}__{r.name}__throughput", question, fig))
    latency = [k for k in ("p50_ms", "p95_ms") if k in numeric]
    if latency:
        used |= set(latency)
        question = f"How long does a query take as {x_key} grows?"
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for lat_key, style in zip(latency, ("-", "--"), strict=False):
            ax.plot(xs, [p[lat_key] for p in points], color=OURS, ls=style, marker="o",
                    label=f"ours: {lat_key.removesuffix('_ms')}")  # fmt: skip
        goal = _target_value(r.target.describe() if r.target else None)
        if goal is not None and r.name.endswith("p95_ms"):
            ax.axhline(goal, color=TARGET, ls="--", lw=1.5, label=f"target: p95 < {_fmt(goal)} ms")
        _axes(ax, x_key, "latency (ms)", log_x, False, question)
        _data_ticks(ax, xs, log_x)
        out.append(Chart(f"{r.category}__{r.name}__latency", question, fig))
    for key in numeric:
        k = str(key)
        if k in used:
            continue
        question = f"{k.replace('_', ' ')} as {x_key} grows"
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        ax.plot(xs, [p[k] for p in points], color=OURS, marker="o", lw=2, label=f"ours: {k}")
        if k.startswith("fraction"):
            ax.axhline(1.0, color=BASELINE, lw=1.5, label="the bound (1)")
            ax.axhline(0.9, color=TARGET, ls="--", lw=1.5, label="target: 0.9")
            ax.set_ylim(0, 1.05)
            question = f"What fraction of the Little's-law bound is reached as {x_key} grows?"
        _axes(ax, x_key, k.replace("_", " "), log_x, False, question)
        _data_ticks(ax, xs, log_x)
        out.append(Chart(f"{r.category}__{r.name}__{k}", question, fig))
    return out


def _data_ticks(ax: Any, xs: Sequence[float], log_x: bool) -> None:
    """Ticks at the measured x values (1, 2, 4, ... 128), labelled plainly."""
    if log_x:
        from matplotlib.ticker import NullLocator

        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{x:,.0f}" if x >= 1 else f"{x:g}" for x in xs])


def _series_chart(r: Result, data: Mapping[str, Any]) -> Chart:
    """A registry.curve() curve: our series, the same-run baseline value, the target."""
    plt = _plt()
    xs = [float(v) for v in data["x"]]
    x_label = str(data.get("x_label", "x"))
    y_label = str(data.get("y_label", ""))
    series = {str(k): [float(v) for v in ys] for k, ys in data["series"].items()}
    names = " and ".join(series)
    question = f"Does the cost of {names} grow with the {x_label}?"
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    styles = ("-", "--", ":", "-.")
    for (label, ys), style in zip(series.items(), styles * 4, strict=False):
        ax.plot(xs, ys, color=OURS, ls=style, marker="o", lw=2, label=f"ours: {label}")
        ax.axhline(ys[0], color=BASELINE, ls=style, lw=1.2,
                   label=f"baseline: {label} at {_fmt(xs[0])}")  # fmt: skip
    goal = _target_value(r.target.describe() if r.target else None)
    if goal is not None:
        ax.axhline(goal, color=TARGET, ls="--", lw=1.5, label=f"target: {_fmt(goal)}")
    _axes(ax, x_label, y_label, bool(data.get("log_x")), bool(data.get("log_y")), question)
    return Chart(f"{r.category}__{r.name}", question, fig)


def _axes(ax: Any, x_label: str, y_label: str, log_x: bool, log_y: bool, question: str) -> None:
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_plain())
    if log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_plain())
        ax.yaxis.set_minor_formatter(_plain())
    elif ax.get_ylim()[0] > 0:
        ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.figure.suptitle(question, x=0.01, ha="left", fontweight="bold", fontsize=11)
    ax.legend(fontsize=8, frameon=False)
    ax.figure.tight_layout()


def _has_ratio(r: Result) -> bool:
    """A result a ratio bar can show: no error, a finite positive ratio."""
    return r.error is None and r.ratio is not None and 0 < float(r.ratio) < math.inf


def _peer_rows(results: Iterable[Result]) -> list[Result]:
    return [r for r in results if _has_ratio(r) and _PEERS.search(r.baseline_name or "")]


def charts(results: Sequence[Result]) -> dict[str, list[Chart]]:
    """Every chart, by section: ``"peers"`` first, then each category in order."""
    out: dict[str, list[Chart]] = {}
    peers = _peer_rows(results)
    if peers:
        out["peers"] = [
            _ratio_chart(
                "peers",
                "How many times better than LangChain's, LlamaIndex's and aiolimiter's own parts?",
                peers,
            )
        ]
    for category in dict.fromkeys(r.category for r in results):
        rows = [r for r in results if r.category == category]
        section: list[Chart] = []
        ratios = [r for r in rows if _has_ratio(r)]
        if ratios:
            section.append(
                _ratio_chart(
                    f"{category}__ratios",
                    f"{category}: how many times better than the same-run baseline?",
                    ratios,
                )
            )
        seen_curves: set[str] = set()
        for r in rows:
            data = r.extra.get("curve")
            if data is None:
                continue
            marker = repr(data)
            if marker in seen_curves:  # two results sharing one curve: draw it once
                continue
            seen_curves.add(marker)
            if isinstance(data, dict) and "x" in data and "series" in data:
                section.append(_series_chart(r, data))
            elif (
                isinstance(data, list) and len(data) >= 2 and all(isinstance(p, dict) for p in data)
            ):
                section.extend(_records_charts(r, data))
        if section:
            out[category] = section
    return out


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.DOTALL)
    return text[text.index("<svg") :]


def _png(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def write_pngs(results: Sequence[Result], directory: Path) -> list[Path]:
    """``--plots DIR``: one PNG per chart, named ``<key>.png``; returns the files."""
    plt = _plt()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for section in charts(results).values():
        for chart in section:
            written.append(_png(chart.figure, directory / f"{_safe(chart.key)}.png"))
            plt.close(chart.figure)
    return written


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:19px;margin:36px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#555;margin-bottom:16px} .legend span{display:inline-block;margin-right:16px}
.sw{display:inline-block;width:14px;height:10px;margin-right:4px;vertical-align:middle}
figure{margin:12px 0 20px} figure svg{max-width:100%;height:auto}
figcaption{color:#555;font-size:12px}
table{border-collapse:collapse;font-size:12px;width:100%}
th,td{padding:3px 6px;border-bottom:1px solid #eee}
th{text-align:left;background:#f6f6f6} td.n{text-align:right;font-variant-numeric:tabular-nums}
.PASS{color:#1a7f37;font-weight:600} .FAIL{color:#d62728;font-weight:600} .ERROR{color:#d62728}
"""


def _num(x: Any) -> str:
    if x is None:
        return "—"
    v = float(x)
    if math.isnan(v) or math.isinf(v):
        return "—"
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.3g}"


def _table(rows: Sequence[Result]) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in ("name", "measured", "unit", "baseline (same run)", "ratio", "target", "result")
    )
    body = []
    for r in rows:
        verdict = (
            "ERROR" if r.error else ("—" if r.passed is None else "PASS" if r.passed else "FAIL")
        )
        base = "—" if r.baseline_name is None else f"{r.baseline_name}: {_num(r.baseline_value)}"
        body.append(
            "<tr>"
            f"<td><code>{html.escape(r.name)}</code></td>"
            f"<td class=n>{_num(r.value)}</td><td>{html.escape(r.unit)}</td>"
            f"<td>{html.escape(base)}</td>"
            f"<td class=n>{'—' if r.ratio is None else _num(r.ratio) + '×'}</td>"
            f"<td>{html.escape(r.target.describe() if r.target else '—')}</td>"
            f"<td class={verdict if verdict != '—' else ''}>{verdict}</td>"
            "</tr>"
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(document: Mapping[str, Any]) -> str:
    """The report of a results document (``rag-perf-bench/1``) as one HTML string."""
    plt = _plt()
    meta = document.get("meta", {})
    results = [Result.from_json(row) for row in document.get("results", [])]
    sections = charts(results)
    totals = meta.get("totals", {})
    commit = meta.get("git_commit")
    run = (
        f"{meta.get('started_at', '?')}, "
        f"{'quick' if meta.get('quick') else 'full'} run, "
        f"{meta.get('cpu_count', '?')} CPUs, Python {meta.get('python', '?')}, "
        f"{_num(meta.get('duration_s'))} s"
        + (f", commit {commit[:7]}" if commit else "")
        + f"; {totals.get('results', len(results))} results: {totals.get('passed', '?')} passed, "
        f"{totals.get('failed', '?')} failed, {totals.get('errors', '?')} errors"
    )
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        "<title>rag-perf bench report</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<h1>rag-perf bench report</h1>",
        f"<p class=meta>{html.escape(run)}</p>",
        "<p class=legend>"
        f"<span><i class=sw style='background:{OURS}'></i>ours</span>"
        f"<span><i class=sw style='background:{BASELINE}'></i>baseline measured in the same run"
        "</span>"
        f"<span><i class=sw style='background:{TARGET}'></i>target</span></p>",
    ]

    def figure(chart: Chart) -> str:
        svg = _svg(chart.figure)
        plt.close(chart.figure)
        return (
            f"<figure class=chart data-chart='{html.escape(chart.key)}'>{svg}"
            f"<figcaption>{html.escape(chart.question)}</figcaption></figure>"
        )

    if "peers" in sections:
        parts.append("<h2 id=peers>Against the frameworks' own parts</h2>")
        parts.extend(figure(c) for c in sections["peers"])
    for category in dict.fromkeys(r.category for r in results):
        parts.append(f"<h2 id='{html.escape(category)}'>{html.escape(category)}</h2>")
        parts.extend(figure(c) for c in sections.get(category, []))
        parts.append(_table([r for r in results if r.category == category]))
    parts.append("</main></body></html>\n")
    return "".join(parts)
