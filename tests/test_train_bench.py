"""bench/quality: records in the bench contract's shape, through the real loop (smoke scale)."""
from __future__ import annotations

import pytest

from foodlab.bench import quality


@pytest.mark.slow
def test_quality_smoke_records_and_table():
    records = quality.run("smoke", "cpu", variants=("fast_head", "equal_steps", "loader"), max_epochs=1,
                          equal_steps=2, loader_images=12)
    names = [r["variant"] for r in records]
    assert names == ["fast_head", "baseline_head@2_steps", "fast_head@2_steps", "loader_cold_cache",
                     "loader_warm_cache"]
    for r in records:
        assert set(r) == {"variant", "params", "metrics"}
    fast = records[0]["metrics"]
    assert isinstance(fast["reached"], bool) and 0.0 <= fast["final_miou"] <= 1.0 and fast["steps"] > 0
    assert (fast["time_to_target_s"] is None) == (not fast["reached"])
    assert all(r["metrics"]["steps"] == 2 for r in records[1:3])
    for r in records[3:]:
        assert 0.0 <= r["metrics"]["data_wait_fraction"] <= 1.0
    table = quality.format_table(records)
    assert "loader_warm_cache" in table and "fast_head" in table


def test_quality_rejects_unknown_scale_and_overrides():
    with pytest.raises(ValueError, match="scale"):
        quality.run("huge")
    with pytest.raises(ValueError, match="overrides"):
        quality.run("smoke", nonsense=1)
