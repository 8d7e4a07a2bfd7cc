"""The before/after summary: Metric | Before | After | Improvement, as Markdown and a bar chart.

Rows come either from results measured in this process (``ExperimentResult.comparisons``)
or from the runs logged to MLflow (``rows_from_mlflow``), so ``foodlab report`` can be
re-run at any time against the tracking store. Whether bigger is better follows the
metric name: ``*_per_s``/``miou``/``dice`` up, ``*_s``/``*_mb`` down.
"""
from __future__ import annotations

import logging
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

HIGHER_IS_BETTER = ("_per_s", "miou", "dice", "pixel_acc", "accuracy", "largest_batch")
UNITS = {"_per_s": "/s", "_s": "s", "_mb": "MB"}


def higher_is_better(metric: str) -> bool:
    return any(metric.endswith(s) or metric == s for s in HIGHER_IS_BETTER)


def _fmt(value: float | None, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    unit = next((u for s, u in UNITS.items() if metric.endswith(s)), "")
    if unit == "s" and value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:,.3g} {unit}".strip() if abs(value) < 1000 else f"{value:,.0f} {unit}".strip()


def improvement(metric: str, before: float, after: float) -> tuple[float | None, str]:
    """(ratio, words): ratio > 1 means the candidate is better; words like '3.2x faster'."""
    if before is None or after is None or before <= 0 or after <= 0:
        return None, "n/a"
    ratio = after / before if higher_is_better(metric) else before / after
    if metric.endswith("_mb"):
        noun = ("less memory", "more memory")
    elif metric.endswith("_s") or metric.endswith("_per_s"):
        noun = ("faster", "slower")
    else:
        noun = ("better", "worse")
    def times(x: float) -> str:
        return f"{x:.2f}x" if x < 1.1 else f"{x:.1f}x" if x < 100 else f"{x:,.0f}x"

    if ratio >= 1:
        return ratio, f"{times(ratio)} {noun[0]}"
    return ratio, f"{times(1 / ratio)} {noun[1]}"


def comparison_row(experiment: str, metric: str, before_name: str, after_name: str,
                   before: float | None, after: float | None) -> dict[str, Any] | None:
    """One summary row, or None when either side did not report the metric (e.g. n/a on CPU)."""
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)):
        return None
    ratio, words = improvement(metric, float(before), float(after))
    return {"experiment": experiment, "metric": metric, "before": before_name, "after": after_name,
            "before_value": float(before), "after_value": float(after), "ratio": ratio, "improvement": words}


def markdown_table(rows: Iterable[dict[str, Any]], device_name: str | None = None) -> str:
    lines = []
    if device_name:
        lines.append(f"Device: **{device_name}**\n")
    lines += ["| Metric | Before | After | Improvement |", "|---|---|---|---|"]
    for r in rows:
        label = f"{r['experiment']}: {r['metric']} ({r['before']} → {r['after']})"
        lines.append(f"| {label} | {_fmt(r['before_value'], r['metric'])} | "
                     f"{_fmt(r['after_value'], r['metric'])} | {r['improvement']} |")
    return "\n".join(lines)


def plot_rows(rows: list[dict[str, Any]], title: str = ""):
    """Horizontal bars of the improvement ratio per row (1 = no change, log scale)."""
    import matplotlib.pyplot as plt  # the CLI selects Agg; notebooks keep their inline backend

    rows = [r for r in rows if r["ratio"]]
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(rows), 2) + 1.2))
    labels = [f"{r['experiment']}: {r['metric']}\n{r['before']} → {r['after']}" for r in rows]
    ratios = [r["ratio"] for r in rows]
    colors = ["tab:green" if x >= 1 else "tab:red" for x in ratios]
    ax.barh(range(len(rows)), [x - 1 for x in ratios], left=1, color=colors)  # bars grow from "no change"
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    if ratios and max(ratios) / max(min(ratios), 1e-9) > 20:
        ax.set_xscale("log")
    if ratios:
        ax.set_xlim(left=min(min(ratios), 1.0) / 1.3)  # so a regression's bar (left of 1) shows
    for i, r in enumerate(rows):
        ax.text(r["ratio"], i, f" {r['improvement']}", va="center", fontsize=7)
    ax.set_xlabel("improvement (x, >1 is better)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def device_slug(device_name: str) -> str:
    """'CPU AMD EPYC 7B13 (2 cores)' -> 'cpu-amd-epyc-7b13-2-cores', a folder name per machine."""
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "unknown-device"


def _param(row, name: str, default: str = "") -> str:
    value = row.get(f"params.{name}")
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def rows_from_mlflow(experiments: list[str] | None = None, device: str | None = None, scale: str | None = None
                     ) -> tuple[list[dict[str, Any]], str | None]:
    """Summary rows from the latest parent run of each foodlab experiment (optionally on ``device``/``scale``).

    ``experiments`` are experiment-file names (``dataset_init``) or MLflow names
    (``foodlab-dataset_init``); None means every foodlab experiment in the store.
    Returns (rows, device name of the runs).
    """
    from foodlab import tracking

    tracking.configure()
    names = None if experiments is None else [e if e.startswith("foodlab-") else f"foodlab-{e}" for e in experiments]
    query = "tags.`foodlab.role` = 'parent'" + (f" and params.scale = '{scale}'" if scale else "")
    runs = tracking.search_runs(names, filter_string=query, order_by=["attributes.start_time DESC"])
    if device:
        runs = runs[runs.get("params.device") == device] if "params.device" in runs else runs.iloc[0:0]
    rows: list[dict[str, Any]] = []
    device_name = None
    seen: set[str] = set()
    for _, parent in runs.iterrows():
        name = _param(parent, "experiment")
        if not name or name in seen:
            continue
        seen.add(name)
        device_name = device_name or _param(parent, "device_name") or None
        children = tracking.search_runs(
            None, filter_string=f"tags.`mlflow.parentRunId` = '{parent['run_id']}'")
        children = children[children["experiment_id"] == parent["experiment_id"]]
        by_variant = {_param(c, "variant"): c for _, c in children.iterrows()}
        baseline = _param(parent, "baseline")
        if baseline not in by_variant:
            continue
        for cand in filter(None, _param(parent, "candidates").split(",")):
            if cand not in by_variant:
                continue
            for metric in filter(None, _param(parent, "compare_metrics").split(",")):
                row = comparison_row(name, metric, baseline, cand,
                                     by_variant[baseline].get(f"metrics.{metric}"),
                                     by_variant[cand].get(f"metrics.{metric}"))
                if row is not None and not math.isnan(row["before_value"]) and not math.isnan(row["after_value"]):
                    rows.append(row)
    rows.sort(key=lambda r: r["experiment"])
    return rows, device_name


def write_report(rows: list[dict[str, Any]], device_name: str | None, out: str | Path | None = None,
                 title: str = "foodlab before/after") -> Path:
    """Write summary.md and summary.png into ``out`` (default experiments/results/<device-slug>)."""
    from foodlab.bench.runner import EXPERIMENTS_DIR

    out = Path(out) if out else EXPERIMENTS_DIR / "results" / device_slug(device_name or "unknown")
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = [f"# {title}", "", f"Generated {stamp} by `foodlab report` from the runs in MLflow.", "",
          markdown_table(rows, device_name or "unknown device"), "",
          "Improvement: how many times faster (time, throughput) or leaner (memory) the *after* "
          "variant is than the *before* variant, measured in the same process on the same data.", "",
          "![before/after](summary.png)", ""]
    (out / "summary.md").write_text("\n".join(md))
    import matplotlib.pyplot as plt

    fig = plot_rows(rows, f"{title} — {device_name or 'unknown device'}")
    fig.savefig(out / "summary.png", dpi=120)
    plt.close(fig)
    log.info("wrote %s", out / "summary.md")
    return out


# ---------------------------------------------------------------- notebook helpers
def records_frame(records: list[dict[str, Any]]):
    """Records as a pandas DataFrame: one row per variant, params and metrics as columns."""
    import pandas as pd

    return pd.DataFrame([{"variant": r["variant"], **r["metrics"],
                          **{f"param.{k}": v for k, v in r["params"].items()}} for r in records]).set_index("variant")


def plot_metric(records: list[dict[str, Any]], metric: str, title: str = "", baseline: str | None = None):
    """One bar per variant for ``metric``; the baseline bar is grey, log scale when values span 20x+."""
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in records if isinstance(r["metrics"].get(metric), (int, float))]
    values = [r["metrics"][metric] for r in records if r["variant"] in names]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(names, values, color=["grey" if n == baseline else "tab:blue" for n in names])
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set_ylabel(metric)
    ax.set_title(title or metric)
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    return fig
