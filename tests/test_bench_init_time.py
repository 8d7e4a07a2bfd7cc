"""bench/init_time: every index strategy timed in interleaved rounds on one synthetic dataset (smoke scale)."""
from __future__ import annotations

import json

from foodlab.bench import init_time


def test_init_time_smoke_records_rounds_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv("FOODLAB_CACHE", str(tmp_path / "cache"))
    records = init_time.run("smoke", "cpu", init_time.VARIANTS, n=120, image_size=32, decode_sample=40, repeats=2)
    assert [r["variant"] for r in records] == ["decode", "stat", "manifest_verify", "manifest_first_open",
                                               "manifest_reopen"]
    assert all(r["metrics"]["images"] == 120 and r["metrics"]["init_s"] > 0 for r in records)
    assert all(len(r["samples"]["init_s"]) == 2 for r in records)
    assert records[0]["params"]["extrapolated_from"] == 40
    table = init_time.format_table(records)
    assert "extrapolated from 40" in table and "manifest_reopen" in table and "interleaved rounds" in table
    json.dumps(records)


def test_a_subset_of_variants_is_measured_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("FOODLAB_CACHE", str(tmp_path / "cache"))
    records = init_time.run("smoke", "cpu", ("manifest_reopen", "stat"), n=30, image_size=32, repeats=2)
    assert [r["variant"] for r in records] == ["stat", "manifest_reopen"]
