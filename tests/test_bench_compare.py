"""Before/after arithmetic: direction from the metric name, spread over rounds, the ratio's interval, noisy rows."""
from __future__ import annotations

import pytest

from foodlab.bench.compare import comparison_row, improvement, percentile, ratio_interval, spread


@pytest.mark.parametrize("metric, before, after, words", [
    ("init_s", 150.0, 1.5, "100x faster"),
    ("step_time_median_s", 1.0, 2.0, "2.0x slower"),
    ("images_per_s", 10.0, 35.0, "3.5x faster"),
    ("peak_memory_mb", 1000.0, 250.0, "4.0x less memory"),
    ("peak_memory_mb", 100.0, 150.0, "1.5x more memory"),
    ("miou", 0.4, 0.6, "1.5x better"),
    ("miou_at_equal_steps", 0.4, 0.6, "1.5x better"),
    ("steps_to_target", 200, 100, "2.0x better"),
    ("init_s", 0.0, 1.0, "n/a"),
])
def test_improvement_direction_follows_the_metric(metric, before, after, words):
    assert improvement(metric, before, after)[1] == words


def test_missing_metric_gives_no_row():
    assert comparison_row("memory", "largest_batch", "a", "b", None, 8) is None


def test_spread_is_median_p10_p90_and_iqr():
    s = spread([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["median"] == 3.0 and s["p10"] == pytest.approx(1.4) and s["p90"] == pytest.approx(4.6)
    assert s["iqr"] == pytest.approx(2.0) and s["relative_spread"] == pytest.approx(3.2 / 3.0)
    assert percentile([7.0], 90) == 7.0


def test_ratio_interval_pairs_rounds():
    """Round i of the baseline against round i of the candidate: load that hits both rounds cancels."""
    before = [2.0, 4.0, 2.0, 4.0]  # a slow period doubles round 2 and 4 of both variants
    after = [1.0, 2.0, 1.0, 2.0]
    assert ratio_interval("step_time_median_s", before, after) == (pytest.approx(2.0), pytest.approx(2.0))
    assert ratio_interval("images_per_s", [1.0, 2.0], [3.0, 2.0]) == (pytest.approx(1.2), pytest.approx(2.8))
    assert ratio_interval("init_s", [1.0], [1.0]) is None  # one round: no interval
    assert ratio_interval("init_s", [1.0, 2.0], [1.0]) is None  # unpaired


def test_rows_are_noisy_when_busy_unsteady_or_wide():
    steady = comparison_row("e", "init_s", "a", "b", 2.0, 1.0, before_samples=[2.0, 2.0, 2.1],
                            after_samples=[1.0, 1.0, 1.05])
    assert steady["noisy"] == "" and steady["ratio_low"] == pytest.approx(2.0, rel=0.01)
    unsteady = comparison_row("e", "init_s", "a", "b", 2.0, 1.0, before_samples=[2.0, 2.0, 2.0],
                              after_samples=[1.0, 2.0, 1.0])
    assert "b varied" in unsteady["noisy"] and "ratio interval" in unsteady["noisy"]
    busy = comparison_row("e", "init_s", "a", "b", 2.0, 1.0, noisy="other processes used 1.5 of 2 cores")
    assert busy["noisy"] == "other processes used 1.5 of 2 cores" and busy["ratio_low"] is None
    memory = comparison_row("e", "peak_memory_mb", "a", "b", 2.0, 1.0, noisy="other processes used 1.5 of 2 cores")
    assert memory["noisy"] == ""  # a busy machine does not change how many bytes a step allocates
