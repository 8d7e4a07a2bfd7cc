"""The benchmark modules (precision, loader, memory, throughput) return well-formed records.

Behaviour only: which variants, which params and metrics, sane signs; never how fast.
"""
from __future__ import annotations

import pytest

from foodlab.bench import loader, memory, precision


@pytest.mark.slow
def test_precision_records():
    records = precision.run("smoke", "cpu", ("fp32", "autocast_channels_last"), repeats=2, warmup=0)
    assert [r["variant"] for r in records] == ["fp32", "autocast_channels_last"]
    assert records[0]["params"]["dtype"] == "float32" and records[1]["params"]["dtype"] == "bfloat16"
    assert records[1]["params"]["channels_last"] is True
    for r in records:
        assert {"step_time_median_s", "step_time_p10_s", "step_time_p90_s", "images_per_s", "step_cpu_s"} <= set(
            r["metrics"])
        assert r["metrics"]["step_time_median_s"] > 0 and len(r["samples"]["step_time_median_s"]) == 2
    assert "autocast_channels_last" in precision.format_table(records)
    with pytest.raises(ValueError, match="unknown precision variant"):
        precision.run("smoke", "cpu", ("fp64",))


def test_loader_records_count_every_image():
    records = loader.run("smoke", "cpu", ("w0", "w0_cache"), n_images=8, epochs=3)
    assert [r["params"]["cache"] for r in records] == [False, True]
    for r in records:
        assert r["params"]["n_images"] == 8 and r["params"]["num_workers"] == 0
        m = r["metrics"]
        assert m["images_per_s"] == pytest.approx(8 / m["epoch_s"])
        assert m["batches_per_s"] == pytest.approx(2 / m["epoch_s"])  # 8 images, batch 4
        assert len(r["samples"]["epoch_s"]) == 2  # the first epoch apart, then 2 interleaved rounds


@pytest.mark.slow
def test_memory_peak_in_a_fresh_process_and_no_batch_search_on_cpu():
    records = memory.run("smoke", "cpu", ("fast_fp32",))
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
        module.run("huge", "cpu", module.VARIANTS)
    with pytest.raises(ValueError, match=f"{name}: unknown overrides batchsize"):
        module.run("smoke", "cpu", module.VARIANTS, batchsize=3)


@pytest.mark.parametrize("name", ["init_time", "throughput", "quality", "loader", "precision", "memory"])
def test_every_benchmark_has_one_signature_and_declares_its_settings(name):
    import importlib
    import inspect

    module = importlib.import_module(f"foodlab.bench.{name}")
    params = list(inspect.signature(module.run).parameters.values())
    assert [p.name for p in params] == ["scale", "device", "variants", "settings"]
    assert params[-1].kind is inspect.Parameter.VAR_KEYWORD
    assert set(module.SCALES) == {"smoke", "default", "full"} and module.VARIANTS and module.METRICS


def test_experiment_files_list_only_what_differs_from_the_module():
    """A scale setting repeated in a file with the module's own value is the disagreement waiting to happen."""
    from foodlab.bench import runner

    for path in runner.experiment_files():
        exp = runner.load_experiment(path)
        module = runner.benchmark_module(exp.benchmark)
        for scale, table in exp.scales.items():
            same = {k for k, v in table.items() if module.SCALES[scale].get(k) == v}
            assert not same, f"{path.name} scales.{scale} repeats the module's {sorted(same)}"


def test_settings_type_errors_name_the_key():
    from foodlab.bench.settings import check_overrides
    from foodlab.errors import UsageError

    scales = {"smoke": {"n": 1, "lr": 0.1, "flag": True}}
    check_overrides("b", scales, {"n": 2, "lr": 1})  # an int where a float is expected is fine
    for bad in ({"n": 1.5}, {"lr": "x"}, {"flag": 1}):
        with pytest.raises(UsageError, match=f"override {next(iter(bad))}="):
            check_overrides("b", scales, bad)


def test_scale_config_layers_defaults_scale_and_overrides():
    from foodlab.bench.settings import scale_config

    scales = {"smoke": {"n": 1, "size": 8}}
    got = scale_config("b", scales, "smoke", {"size": 16}, defaults={"seed": 0, "n": 5})
    assert got == {"seed": 0, "n": 1, "size": 16}
