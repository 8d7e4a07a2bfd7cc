"""The experiment runner: schema validation, one process per experiment, MLflow parent/child runs."""
from __future__ import annotations

import sys
import types

import pytest

from foodlab.bench import runner
from foodlab.bench.runner import ExperimentError, load_experiment, parse_experiment, run_experiment


@pytest.fixture
def fake_bench(monkeypatch):
    """A benchmark module ``foodlab.bench.fake`` that records how it was called."""
    mod = types.ModuleType("foodlab.bench.fake")
    mod.VARIANTS = ("slow", "fast", "faster")
    mod.calls = []

    def run(scale="smoke", device="auto", variants=mod.VARIANTS, speed=1.0, **overrides):
        mod.calls.append({"scale": scale, "device": device, "variants": list(variants), "speed": speed, **overrides})
        base = {"slow": 4.0, "fast": 2.0, "faster": 1.0}
        return [{"variant": v, "params": {"batch_size": 2, "image_size": 64, "speed": speed},
                 "metrics": {"init_s": base[v] / speed, "images_per_s": 2 * speed / base[v],
                             "peak_memory_mb": 100 * base[v]}} for v in variants]

    mod.run = run
    mod.format_table = lambda records: "\n".join(r["variant"] for r in records)
    monkeypatch.setitem(sys.modules, "foodlab.bench.fake", mod)
    monkeypatch.setattr(runner, "BENCHMARKS", runner.BENCHMARKS + ("fake",))
    return mod


def spec(**changes):
    raw = {"name": "demo", "benchmark": "fake", "baseline": "slow", "candidates": ["fast", "faster"],
           "metrics": ["init_s", "images_per_s"], "variants": ["slow", "fast", "faster"],
           "scales": {"smoke": {"speed": 2.0}}}
    raw.update(changes)
    return raw


@pytest.mark.parametrize("changes, message", [
    ({"colour": "blue"}, "unknown keys colour"),
    ({"benchmark": "nope"}, "unknown benchmark 'nope'"),
    ({"baseline": "medium"}, "baseline: unknown variant 'medium'"),
    ({"candidates": ["fast", "warp"]}, "candidates: unknown variant 'warp'"),
    ({"scales": {"huge": {}}}, "unknown scales huge"),
    ({"variants": [{"name": "slow", "overide": {}}]}, "unknown keys overide"),
    ({"variants": ["slow", "slow"]}, "duplicate variant names slow"),
    ({"variants": []}, "non-empty list"),
])
def test_schema_errors_name_the_problem(fake_bench, changes, message):
    with pytest.raises(ExperimentError, match=message):
        parse_experiment(spec(**changes), source="demo.yaml")


def test_missing_keys_are_listed():
    with pytest.raises(ExperimentError, match="missing required keys .*baseline"):
        parse_experiment({"benchmark": "memory", "variants": ["a"], "candidates": ["a"], "metrics": ["x"]})


def test_unknown_variant_of_the_benchmark_is_caught_before_measuring(fake_bench):
    exp = spec(variants=["slow", "fast", "faster", "ludicrous"], candidates=["ludicrous"])
    with pytest.raises(ExperimentError, match="unknown variant.*ludicrous.*it measures: slow, fast, faster"):
        run_experiment(exp, "smoke", "cpu", log_to_mlflow=False)
    assert fake_bench.calls == []


def test_all_variants_measured_in_one_call_with_scale_overrides(fake_bench):
    result = run_experiment(spec(), "smoke", "cpu", log_to_mlflow=False)
    assert fake_bench.calls == [{"scale": "smoke", "device": "cpu", "variants": ["slow", "fast", "faster"],
                                 "speed": 2.0}]
    assert [r["variant"] for r in result.records] == ["slow", "fast", "faster"]
    rows = {(r["after"], r["metric"]): r for r in result.comparisons()}
    assert rows[("faster", "init_s")]["improvement"] == "4.0x faster"
    assert rows[("fast", "images_per_s")]["improvement"] == "2.0x faster"


def test_variant_overrides_make_their_own_call(fake_bench):
    exp = spec(variants=["slow", "fast", {"name": "fast_boosted", "record": "fast", "overrides": {"speed": 10.0}}],
               candidates=["fast_boosted"])
    result = run_experiment(exp, "default", "cpu", log_to_mlflow=False)
    assert sorted(c["speed"] for c in fake_bench.calls) == [1.0, 10.0]
    boosted = result.record("fast_boosted")
    assert boosted["params"]["bench_variant"] == "fast" and boosted["params"]["override.speed"] == 10.0
    assert boosted["metrics"]["init_s"] == pytest.approx(0.2)


def test_parent_and_child_runs_in_mlflow(fake_bench, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    from foodlab import tracking

    result = run_experiment(spec(), "smoke", "cpu")
    runs = tracking.search_runs(["foodlab-demo"])
    parent = runs[runs["run_id"] == result.parent_run_id].iloc[0]
    assert parent["tags.foodlab.role"] == "parent"
    assert parent["params.baseline"] == "slow" and parent["params.candidates"] == "fast,faster"
    assert parent["params.scale"] == "smoke"
    children = runs[runs["tags.mlflow.parentRunId"] == result.parent_run_id]
    assert sorted(children["params.variant"]) == ["fast", "faster", "slow"]
    for _, child in children.iterrows():
        for key in ("device", "device_name", "torch_version", "foodlab_version", "batch_size", "image_size",
                    "num_workers", "n_images"):
            assert f"params.{key}" in child and isinstance(child[f"params.{key}"], str), key
        assert child["params.device"] == "cpu"
    slow = children[children["params.variant"] == "slow"].iloc[0]
    assert slow["metrics.init_s"] == pytest.approx(2.0)
    assert slow["tags.foodlab.role"] == "baseline"
    exp = tracking.get_or_create_experiment("foodlab-demo")
    assert exp == parent["experiment_id"]


def test_load_by_name_and_missing_file(tmp_path):
    with pytest.raises(ExperimentError, match="does not exist"):
        load_experiment(tmp_path / "nope.yaml")
    assert load_experiment("dataset_init").mlflow_experiment == "foodlab-dataset_init"


def test_every_experiment_file_is_valid():
    files = runner.experiment_files()
    assert {p.stem for p in files} >= {"dataset_init", "training_step", "loader", "precision", "memory"}
    for path in files:
        exp = load_experiment(path)
        assert exp.name == path.stem and exp.description
        try:
            module = runner.benchmark_module(exp.benchmark)
        except ExperimentError:
            continue  # that area's module has not landed in this checkout
        known = getattr(module, "VARIANTS", None)
        if known is not None:
            assert {v.record for v in exp.variants} <= set(known), path.name


def test_the_selected_setting_of_a_variant_is_the_one_logged(fake_bench):
    def run(scale="smoke", device="auto", variants=(), **_):
        return [{"variant": "slow", "params": {"setting": s, "selected": s == "b"}, "metrics": {"init_s": t}}
                for s, t in (("a", 3.0), ("b", 1.0), ("c", 2.0))] + \
               [{"variant": "fast", "params": {}, "metrics": {"init_s": 0.5}}]

    fake_bench.run = run
    result = run_experiment(spec(variants=["slow", "fast"], candidates=["fast"], metrics=["init_s"]),
                            "smoke", "cpu", log_to_mlflow=False)
    assert result.record("slow")["params"]["setting"] == "b"
    assert len(result.raw_records) == 4
    assert result.comparisons()[0]["improvement"] == "2.0x faster"
