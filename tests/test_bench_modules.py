"""Area D's benchmark modules (timing, precision, loader, memory) return well-formed records.

Behaviour only: which variants, which params and metrics, sane signs; never how fast.
"""
from __future__ import annotations

import pytest
import torch

from foodlab.bench import loader, memory, precision, timing


def test_time_steps_warms_up_then_times_each_repeat():
    calls = []
    times = timing.time_steps(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=3)
    assert len(calls) == 5 and len(times) == 3 and all(t >= 0 for t in times)


def test_summarize_median_p90_and_throughput():
    stats = timing.summarize([1.0, 2.0, 3.0, 4.0, 10.0], images_per_step=4)
    assert stats["step_time_median_s"] == 3.0
    assert stats["step_time_p90_s"] == pytest.approx(7.6)
    assert stats["images_per_s"] == pytest.approx(4 / 3)


def test_train_step_learns_on_a_fixed_batch():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 1, 3, padding=1)
    images = torch.rand(2, 3, 16, 16)
    masks = (images[:, 0] > 0.5).long()
    step = timing.train_step(model, images, masks, torch.device("cpu"), lr=0.05)
    first = float(step())
    for _ in range(8):
        last = float(step())
    assert last < first


@pytest.mark.slow
def test_precision_records():
    records = precision.run("smoke", "cpu", variants=("fp32", "autocast_channels_last"), repeats=1, warmup=0)
    assert [r["variant"] for r in records] == ["fp32", "autocast_channels_last"]
    assert records[0]["params"]["dtype"] == "float32" and records[1]["params"]["dtype"] == "bfloat16"
    assert records[1]["params"]["channels_last"] is True
    for r in records:
        assert set(r["metrics"]) == {"step_time_median_s", "step_time_p90_s", "images_per_s"}
        assert r["metrics"]["step_time_median_s"] > 0
    assert "autocast_channels_last" in precision.format_table(records)
    with pytest.raises(ValueError, match="unknown precision variant"):
        precision.run("smoke", "cpu", variants=("fp64",))


def test_loader_records_count_every_image():
    records = loader.run("smoke", "cpu", variants=("w0", "w0_cache"), n_images=8, epochs=2)
    assert [r["params"]["cache"] for r in records] == [False, True]
    for r in records:
        assert r["params"]["n_images"] == 8 and r["params"]["num_workers"] == 0
        m = r["metrics"]
        assert m["images_per_s"] == pytest.approx(8 / m["epoch_s"])
        assert m["batches_per_s"] == pytest.approx(2 / m["epoch_s"])  # 8 images, batch 4


@pytest.mark.slow
def test_memory_peak_in_a_fresh_process_and_no_batch_search_on_cpu():
    records = memory.run("smoke", "cpu", variants=("fast_fp32",))
    (r,) = records
    assert r["metrics"]["peak_memory_mb"] > r["metrics"]["step_memory_mb"] > 0
    assert r["params"]["largest_batch"] == "n/a" and "largest_batch" not in r["metrics"]
    assert "RSS" in r["params"]["memory_source"]
    assert memory.largest_batch("fast_fp32", 2, 64, "cpu", 8) is None


@pytest.mark.parametrize("name", ["init_time", "throughput", "quality", "loader", "precision", "memory"])
def test_every_benchmark_rejects_unknown_scales_and_overrides_by_name(name):
    """A typo in an experiment file must fail, not silently measure the default settings."""
    import importlib

    module = importlib.import_module(f"foodlab.bench.{name}")
    with pytest.raises(ValueError, match=f"{name}: unknown scale 'huge'"):
        module.run(scale="huge", device="cpu")
    with pytest.raises(ValueError, match=f"{name}: unknown overrides batchsize"):
        module.run(scale="smoke", device="cpu", batchsize=3)


def test_scale_config_layers_defaults_scale_and_overrides():
    from foodlab.bench import scale_config

    scales = {"smoke": {"n": 1, "size": 8}}
    assert scale_config("b", scales, "smoke", {"size": 16}, defaults={"seed": 0, "n": 5}) == {"seed": 0, "n": 1, "size": 16}
