"""The before/after summary: Metric | Before | After | Improvement | Interval, as Markdown and a bar chart.

Rows come either from results measured in this process (``ExperimentResult.comparisons``)
or from the runs logged to MLflow (``rows_from_mlflow``), so ``foodlab report`` can be
re-run at any time against the tracking store. Each ratio carries its interval (p10-p90 of the
per-round ratios of interleaved measuring, see ``foodlab.bench.compare``). A noisy row (a busy
machine, an unsteady variant, a wide interval) is flagged and kept out of the findings: the
table says why and the chart draws it hatched and grey.
"""
from __future__ import annotations

import logging
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from foodlab.bench.compare import comparison_row, is_timing, times
from foodlab.bench.settings import EXPERIMENTS_DIR

log = logging.getLogger(__name__)

UNITS = {"_per_s": "/s", "_s": "s", "_mb": "MB"}


def _fmt(value: float | None, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    unit = next((u for s, u in UNITS.items() if metric.endswith(s)), "")
    if unit == "s" and value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:,.3g} {unit}".strip() if abs(value) < 1000 else f"{value:,.0f} {unit}".strip()


def _interval(row: dict[str, Any]) -> str:
    if row.get("ratio_low") is None or row.get("ratio_high") is None:
        return "-"
    return f"{times(row['ratio_low'])}-{times(row['ratio_high'])}"


def threads_text(per_experiment: dict[str, Any]) -> str:
    """'2', or '2 (training_step: 1)' when experiments measured with different torch thread counts."""
    known = {name: str(n) for name, n in per_experiment.items() if n not in (None, "")}
    if not known:
        return ""
    counts = list(known.values())
    usual = max(dict.fromkeys(counts), key=counts.count)
    others = ", ".join(f"{name}: {n}" for name, n in sorted(known.items()) if n != usual)
    return usual + (f" ({others})" if others else "")


def machine_line(device_name: str | None, features: str | None = None, threads: str | None = None) -> str:
    """'Measured on **CPU ... (2 cores)**, precision features: avx512_bf16,amx_bf16, torch threads: 2'."""
    line = f"Measured on **{device_name or 'unknown device'}**"
    return line + (f", precision features: {features}" if features else "") + (
        f", torch threads: {threads}" if threads else "")


def markdown_table(rows: Iterable[dict[str, Any]], device_name: str | None = None,
                   features: str | None = None, threads: str | None = None) -> str:
    """The before/after table; noisy rows say so in the Improvement column instead of claiming a finding."""
    lines = []
    if device_name:
        lines.append(machine_line(device_name, features, threads) + "\n")
    lines += ["| Metric | Before | After | Improvement | Interval (p10-p90) |", "|---|---|---|---|---|"]
    for r in rows:
        label = f"{r['experiment']}: {r['metric']} ({r['before']} → {r['after']})"
        words = f"NOISY, not a finding ({r['noisy']}): {r['improvement']}" if r.get("noisy") else r["improvement"]
        lines.append(f"| {label} | {_fmt(r['before_value'], r['metric'])} | "
                     f"{_fmt(r['after_value'], r['metric'])} | {words} | {_interval(r)} |")
    return "\n".join(lines)


def plot_rows(rows: list[dict[str, Any]], title: str = ""):
    """Horizontal bars of the improvement ratio per row (1 = no change), each with its interval.

    Noisy rows are grey and hatched; log scale when the ratios span 20x or more.
    """
    import matplotlib.pyplot as plt  # the CLI selects Agg; notebooks keep their inline backend

    rows = [r for r in rows if r["ratio"]]
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(rows), 2) + 1.2))
    labels = [f"{r['experiment']}: {r['metric']}\n{r['before']} → {r['after']}" for r in rows]
    ratios = [r["ratio"] for r in rows]
    for i, r in enumerate(rows):
        noisy = bool(r.get("noisy"))
        color = "lightgrey" if noisy else "tab:green" if r["ratio"] >= 1 else "tab:red"
        ax.barh(i, r["ratio"] - 1, left=1, color=color, hatch="//" if noisy else None)  # bars grow from 1
        if r.get("ratio_low") is not None:
            ax.errorbar(r["ratio"], i, xerr=[[max(r["ratio"] - r["ratio_low"], 0)],
                                            [max(r["ratio_high"] - r["ratio"], 0)]],
                        fmt="none", ecolor="black", capsize=3, linewidth=1)
        ax.text(max(r["ratio"], r.get("ratio_high") or 0), i, f" {r['improvement']}" + (" (noisy)" if noisy else ""),
                va="center", fontsize=7)  # right of the whisker, so the interval stays readable
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    lows = [r["ratio_low"] or r["ratio"] for r in rows]
    if ratios and max(ratios) / max(min(lows), 1e-9) > 20:
        ax.set_xscale("log")
    if ratios:
        ax.set_xlim(left=min(min(lows), 1.0) / 1.3)  # so a regression's bar (left of 1) shows
    ax.set_xlabel("improvement (x, >1 is better); whiskers: p10-p90 of the per-round ratio")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def device_slug(device_name: str) -> str:
    """'CPU AMD EPYC 7B13 (2 cores)' -> 'cpu-amd-epyc-7b13-2-cores', a folder name per machine."""
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "unknown-device"


def _param(row, name: str, default: str = "", kind: str = "params") -> str:
    value = row.get(f"{kind}.{name}")
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _number(row, name: str) -> float | None:
    value = row.get(f"metrics.{name}")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def latest_runs(experiments: list[str] | None = None, device: str | None = None, scale: str | None = None):
    """(parents, children) DataFrames: the latest parent run of each foodlab experiment and its child runs.

    ``experiments`` are experiment-file names (``dataset_init``) or MLflow names
    (``foodlab-dataset_init``); None means every foodlab experiment in the store.
    """
    from foodlab import tracking

    tracking.configure()
    names = None if experiments is None else [e if e.startswith("foodlab-") else f"foodlab-{e}" for e in experiments]
    query = "tags.`foodlab.role` = 'parent'" + (f" and params.scale = '{scale}'" if scale else "")
    parents = tracking.search_runs(names, filter_string=query, order_by=["attributes.start_time DESC"])
    if device:
        parents = parents[parents.get("params.device") == device] if "params.device" in parents else parents.iloc[0:0]
    if parents.empty:
        return parents, parents
    parents = parents.drop_duplicates(subset=["params.experiment"], keep="first")
    children = tracking.search_runs(None, filter_string="tags.`foodlab.role` != 'parent'")
    if "tags.mlflow.parentRunId" in children:
        children = children[children["tags.mlflow.parentRunId"].isin(parents["run_id"])]
    else:
        children = children.iloc[0:0]
    return parents.reset_index(drop=True), children.reset_index(drop=True)


def rows_from_mlflow(experiments: list[str] | None = None, device: str | None = None, scale: str | None = None
                     ) -> tuple[list[dict[str, Any]], str | None]:
    """Summary rows from the latest parent run of each foodlab experiment (optionally on ``device``/``scale``).

    Returns (rows, device name of the runs); ``machine_from_mlflow`` gives the header's machine line.
    """
    parents, children = latest_runs(experiments, device, scale)
    rows: list[dict[str, Any]] = []
    device_name = None
    for _, parent in parents.iterrows():
        name = _param(parent, "experiment")
        device_name = device_name or _param(parent, "device_name") or None
        mine = children[children["tags.mlflow.parentRunId"] == parent["run_id"]]
        by_variant = {_param(c, "variant"): c for _, c in mine.iterrows()}
        baseline = _param(parent, "baseline")
        if baseline not in by_variant:
            continue
        busy = _param(parent, "foodlab.busy", kind="tags")  # the machine was busy: every row is noisy
        for cand in filter(None, _param(parent, "candidates").split(",")):
            if cand not in by_variant:
                continue
            for metric in filter(None, _param(parent, "compare_metrics").split(",")):
                row = comparison_row(name, metric, baseline, cand, _number(by_variant[baseline], metric),
                                     _number(by_variant[cand], metric))
                if row is None:
                    continue
                key = f"{metric}.{cand}"
                row["ratio_low"] = _number(parent, f"{key}.ratio_p10")
                row["ratio_high"] = _number(parent, f"{key}.ratio_p90")
                row_noisy = _param(parent, f"foodlab.noisy.{key}", kind="tags")
                row["noisy"] = row_noisy or (busy if is_timing(metric) else "")
                rows.append(row)
    rows.sort(key=lambda r: r["experiment"])
    return rows, device_name


def machine_from_mlflow(experiments: list[str] | None = None, device: str | None = None,
                        scale: str | None = None) -> str:
    """The precision features recorded on the latest parent runs ('' when none were)."""
    parents, _ = latest_runs(experiments, device, scale)
    values = {_param(p, "foodlab.precision_features", kind="tags") for _, p in parents.iterrows()} - {""}
    return " / ".join(sorted(values))


def threads_from_mlflow(experiments: list[str] | None = None, device: str | None = None,
                        scale: str | None = None) -> str:
    """The torch thread counts the latest parent runs measured with, as ``threads_text`` words."""
    parents, _ = latest_runs(experiments, device, scale)
    return threads_text({_param(p, "experiment"): _param(p, "torch_threads") for _, p in parents.iterrows()})


def write_report(rows: list[dict[str, Any]], device_name: str | None, out: str | Path | None = None,
                 title: str = "foodlab before/after", features: str | None = None, threads: str | None = None
                 ) -> Path:
    """Write summary.md and summary.png into ``out`` (default experiments/results/<device-slug>)."""
    out = Path(out) if out else EXPERIMENTS_DIR / "results" / device_slug(device_name or "unknown")
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    noisy = [r for r in rows if r.get("noisy")]
    md = [f"# {title}", "", f"Generated {stamp} by `foodlab report` from the runs in MLflow.", "",
          markdown_table(rows, device_name or "unknown device", features, threads), "",
          "Improvement: how many times faster (time, throughput) or leaner (memory) the *after* "
          "variant is than the *before* variant, measured in the same process on the same data, the "
          "variants interleaved in rounds. Interval: p10-p90 of the per-round ratio. Numbers from "
          "another machine (CPU model, precision features) are not comparable. Torch threads: on a CPU each "
          "experiment measures with the cores other processes left free when it started.", ""]
    if noisy:
        md += [f"**{len(noisy)} noisy row(s)**: measured while the machine was busy or too unsteady to "
               "call; they are not findings. Re-run them on a quiet machine.", ""]
    md += ["![before/after](summary.png)", ""]
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
