"""The dataset init-time benchmark (bench/init_time.py): its records and table at the smoke scale."""
from __future__ import annotations

import json

from foodlab.bench import init_time


def test_init_time_smoke():
    records = init_time.run(scale="smoke")
    assert [r["variant"] for r in records] == ["decode", "stat", "manifest_verify", "manifest_first_open",
                                               "manifest_reopen"]
    assert all(r["metrics"]["images"] == 300 and r["metrics"]["init_s"] > 0 for r in records)
    assert records[0]["params"]["extrapolated_from"] == 100
    table = init_time.format_table(records)
    assert "extrapolated from 100" in table and "manifest_reopen" in table
    json.dumps(records)
