"""bench/quality: quality counted in steps through the real loop; time to target from interleaved step times."""
from __future__ import annotations

import pytest

from foodlab.bench import quality


def test_quality_figures_come_from_steps_not_the_clock():
    history = [{"step": 10, "val_miou": 0.2}, {"step": 20, "val_miou": 0.55}, {"step": 30, "val_miou": 0.5},
               {"step": 40, "val_miou": 0.6}]
    q = quality.quality_from_history(history, target=0.5, equal_steps=25, batch_size=8)
    assert q["reached"] and q["steps_to_target"] == 20 and q["images_to_target"] == 160
    assert q["best_miou"] == 0.6 and q["final_miou"] == 0.6
    assert q["miou_at_equal_steps"] == 0.5 and q["equal_steps_measured_at"] == 30
    missed = quality.quality_from_history(history, target=0.9, equal_steps=100, batch_size=8)
    assert not missed["reached"] and missed["steps_to_target"] is None
    assert missed["equal_steps_measured_at"] == 40  # the budget ended first: the last validation


@pytest.mark.slow
def test_quality_smoke_records_and_table():
    records = quality.run("smoke", "cpu", ("baseline_head", "fast_head", "loader"), max_steps=4, equal_steps=2,
                          loader_images=12, target_miou=0.0)
    names = [r["variant"] for r in records]
    assert names == ["baseline_head", "fast_head", "loader_cold_cache", "loader_warm_cache"]
    for r in records[:2]:
        m = r["metrics"]
        assert m["steps"] == 4 and m["reached"] and m["steps_to_target"] <= 4
        assert m["time_to_target_s"] == pytest.approx(m["steps_to_target"] * m["step_time_median_s"])
        assert len(r["samples"]["time_to_target_s"]) == 2  # smoke: two interleaved rounds
        assert 0.0 <= m["best_miou"] <= 1.0 and 0.0 <= m["miou_at_equal_steps"] <= 1.0
    for r in records[2:]:
        assert 0.0 <= r["metrics"]["data_wait_fraction"] <= 1.0
    table = quality.format_table(records)
    assert "loader_warm_cache" in table and "fast_head" in table and "budget 4 steps" in table


def test_quality_rejects_unknown_scale_and_overrides():
    with pytest.raises(ValueError, match="scale"):
        quality.run("huge", "cpu", quality.VARIANTS)
    with pytest.raises(ValueError, match="overrides"):
        quality.run("smoke", "cpu", quality.VARIANTS, nonsense=1)
