"""bench/throughput: every (variant, setting) timed in interleaved rounds; the fastest setting selected."""
from __future__ import annotations

import pytest

from foodlab.bench import throughput


def test_heads_smoke_records_rounds_and_selection():
    records = throughput.run("smoke", "cpu", ("fast_head", "baseline_head"), repeats=2)
    assert [(r["variant"], r["params"]["precision"]) for r in records] == [
        ("fast_head", "fp32"), ("fast_head", "bfloat16"), ("baseline_head", "fp32"), ("baseline_head", "bfloat16")]
    for variant in ("fast_head", "baseline_head"):
        assert sum(r["params"]["selected"] for r in records if r["variant"] == variant) == 1
    for r in records:
        assert len(r["samples"]["step_time_median_s"]) == 2
        m = r["metrics"]
        assert m["step_time_p10_s"] <= m["step_time_median_s"] <= m["step_time_p90_s"]
        assert 0 < m["step_cpu_s"] and len(r["samples"]["step_cpu_s"]) == 2  # the work, beside the wall time
        assert "speedup_vs_sam2_full" not in m  # no SAM2 reference measured
    assert "fast_head" in throughput.format_table(records)


@pytest.mark.slow
def test_cached_decoder_trains_what_set_trainable_says():
    from foodlab.models import sam2_backend

    records = throughput.run("smoke", "cpu", ("sam2_decoder_cached", "sam2_full"), repeats=1, warmup=1)
    cached = next(r for r in records if r["variant"] == "sam2_decoder_cached")
    sam = sam2_backend.build_sam2_model("tiny", None, "cpu", image_size=128)
    expected = sum(p.numel() for p in sam2_backend.set_trainable(sam, image_encoder=False, cached_features=True))
    assert cached["metrics"]["trainable_params_m"] == pytest.approx(expected / 1e6)
    assert cached["metrics"]["speedup_vs_sam2_full"] > 0 and len(cached["samples"]["speedup_vs_sam2_full"]) == 1
