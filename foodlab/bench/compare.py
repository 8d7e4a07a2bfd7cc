"""Before/after arithmetic shared by the runner and the report: direction, ratio, its interval.

Whether bigger is better follows the metric name (``*_per_s``/``miou``/``dice`` up, ``*_s``/``*_mb``
down). Variants are measured in interleaved rounds, so a record may carry ``samples``: one value per
round for a metric. A ratio's interval is the p10-p90 of the per-round ratios (round *i* of the
baseline against round *i* of the candidate, measured seconds apart): load that comes and goes moves
both sides of one round alike, so it widens the interval instead of faking a finding.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

from foodlab.metric_names import higher_is_better

# a variant whose p10-p90 spans more than this share of its median, or a ratio interval wider than
# this share of the ratio, is too unsteady to call a finding
NOISY_RELATIVE_SPREAD = 0.25


def is_timing(metric: str) -> bool:
    """Times and rates move with the machine's load; bytes, steps and mIoU do not."""
    return metric.endswith(("_s", "_per_s"))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), numpy's default method."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def spread(values: Sequence[float]) -> dict[str, float]:
    """median, p10, p90 and IQR of per-round values, plus the p10-p90 width relative to the median."""
    median = statistics.median(values)
    p10, p90 = percentile(values, 10), percentile(values, 90)
    return {"median": median, "p10": p10, "p90": p90,
            "iqr": percentile(values, 75) - percentile(values, 25),
            "relative_spread": (p90 - p10) / median if median else float("nan")}


def ratio(metric: str, before: float, after: float) -> float | None:
    """> 1 means the candidate is better, whichever way the metric points."""
    if before is None or after is None or before <= 0 or after <= 0:
        return None
    return after / before if higher_is_better(metric) else before / after


def ratio_interval(metric: str, before: Sequence[float] | None, after: Sequence[float] | None
                   ) -> tuple[float, float] | None:
    """p10-p90 of the per-round ratios; None unless both sides have the same rounds (two or more)."""
    if not before or not after or len(before) != len(after) or len(before) < 2:
        return None
    per_round = [ratio(metric, b, a) for b, a in zip(before, after)]
    if any(r is None for r in per_round):
        return None
    return percentile(per_round, 10), percentile(per_round, 90)


def improvement(metric: str, before: float, after: float) -> tuple[float | None, str]:
    """(ratio, words): ratio > 1 means the candidate is better; words like '3.2x faster'."""
    r = ratio(metric, before, after)
    if r is None:
        return None, "n/a"
    if metric.endswith("_mb"):
        noun = ("less memory", "more memory")
    elif metric.endswith("_cpu_s"):
        noun = ("less CPU time", "more CPU time")
    elif metric.endswith("_s") or metric.endswith("_per_s"):
        noun = ("faster", "slower")
    else:
        noun = ("better", "worse")
    return r, f"{times(r)} {noun[0]}" if r >= 1 else f"{times(1 / r)} {noun[1]}"


def times(x: float) -> str:
    return f"{x:.2f}x" if x < 1.1 else f"{x:.1f}x" if x < 100 else f"{x:,.0f}x"


def _samples(record: dict[str, Any] | None, metric: str) -> list[float] | None:
    return ((record or {}).get("samples") or {}).get(metric)


def comparison_row(experiment: str, metric: str, before_name: str, after_name: str,
                   before: float | None, after: float | None, *, before_samples: Sequence[float] | None = None,
                   after_samples: Sequence[float] | None = None, noisy: str = "") -> dict[str, Any] | None:
    """One summary row, or None when either side did not report the metric (e.g. n/a on CPU).

    ``noisy`` is the reason the experiment's timings are unreliable (a busy machine), or ""; it applies
    to timing metrics only. The row adds its own reasons (a wide interval, an unsteady variant).
    """
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)):
        return None
    if isinstance(before, float) and math.isnan(before) or isinstance(after, float) and math.isnan(after):
        return None
    r, words = improvement(metric, float(before), float(after))
    interval = ratio_interval(metric, before_samples, after_samples)
    reasons = [noisy] if noisy and is_timing(metric) else []
    for name, values in ((before_name, before_samples), (after_name, after_samples)):
        if values and len(values) >= 2 and spread(values)["relative_spread"] > NOISY_RELATIVE_SPREAD:
            reasons.append(f"{name} varied {spread(values)['relative_spread']:.0%} across rounds")
    if interval and r and (interval[1] - interval[0]) / r > NOISY_RELATIVE_SPREAD:
        reasons.append(f"ratio interval {times(interval[0])}-{times(interval[1])}")
    return {"experiment": experiment, "metric": metric, "before": before_name, "after": after_name,
            "before_value": float(before), "after_value": float(after), "ratio": r, "improvement": words,
            "ratio_low": interval[0] if interval else None, "ratio_high": interval[1] if interval else None,
            "noisy": "; ".join(reasons)}


def comparisons(experiment: str, baseline: str, candidates: Sequence[str], metrics: Sequence[str],
                records: dict[str, dict[str, Any]], noisy: str = "") -> list[dict[str, Any]]:
    """Rows for every candidate x metric that both it and the baseline report."""
    rows = []
    before = records.get(baseline)
    for cand in candidates:
        after = records.get(cand)
        if before is None or after is None:
            continue
        for metric in metrics:
            row = comparison_row(experiment, metric, baseline, cand, before["metrics"].get(metric),
                                 after["metrics"].get(metric), before_samples=_samples(before, metric),
                                 after_samples=_samples(after, metric), noisy=noisy)
            if row is not None:
                rows.append(row)
    return rows
