"""The experiment runner: schema validation, one process per experiment, MLflow parent/child runs."""
from __future__ import annotations

import sys
import types

import pytest

from foodlab.bench import noise, runner
from foodlab.bench.runner import ExperimentError, load_experiment, parse_experiment, run_experiment

_LoadMonitor = noise.LoadMonitor


def quiet_monitor(**kwargs):
    """A LoadMonitor whose readings say nobody else used the CPU."""
    clock = iter(range(1000))

    def reader():
        t = next(clock)
        return noise.Snapshot(wall=float(t), load1=0.1, busy_cpu_s=float(t), own_cpu_s=float(t))

    return _LoadMonitor(reader=reader, cpus=2, before_sample_s=0)


@pytest.fixture
def fake_bench(monkeypatch):
    """A benchmark module ``foodlab.bench.fake`` that records how it was called."""
    mod = types.ModuleType("foodlab.bench.fake")
    mod.VARIANTS = ("slow", "fast", "faster")
    mod.METRICS = ("init_s", "images_per_s", "peak_memory_mb")
    mod.SCALES = {s: {"speed": 1.0, "jitter": 0.0} for s in ("smoke", "default", "full")}
    mod.calls = []
    mod.on_call = None  # a hook a test sets to look at the world while "measuring"

    def run(scale, device, variants, **settings):
        cfg = {**mod.SCALES[scale], **settings}
        mod.calls.append({"scale": scale, "device": device, "variants": list(variants), **settings,
                          "speed": cfg["speed"]})
        if mod.on_call:
            mod.on_call(list(variants))
        base = {"slow": 4.0, "fast": 2.0, "faster": 1.0}
        records = []
        for v in variants:  # three rounds; jitter makes every other round of "faster" slower
            rounds = [base[v] / cfg["speed"] * (1 + (cfg["jitter"] if v == "faster" and i % 2 else 0))
                      for i in range(3)]
            records.append({"variant": v, "params": {"batch_size": 2, "image_size": 64, "speed": cfg["speed"]},
                            "metrics": {"init_s": sorted(rounds)[1], "images_per_s": 2 * cfg["speed"] / base[v],
                                        "peak_memory_mb": 100 * base[v]},
                            "samples": {"init_s": rounds}})
        return records

    mod.run = run
    mod.format_table = lambda records: "\n".join(r["variant"] for r in records)
    monkeypatch.setitem(sys.modules, "foodlab.bench.fake", mod)
    monkeypatch.setattr(noise, "LoadMonitor", quiet_monitor)  # tests must not depend on this machine's load
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
    def run(scale, device, variants, **_):
        return [{"variant": "slow", "params": {"setting": s, "selected": s == "b"}, "metrics": {"init_s": t}}
                for s, t in (("a", 3.0), ("b", 1.0), ("c", 2.0))] + \
               [{"variant": "fast", "params": {}, "metrics": {"init_s": 0.5}}]

    fake_bench.run = run
    result = run_experiment(spec(variants=["slow", "fast"], candidates=["fast"], metrics=["init_s"]),
                            "smoke", "cpu", log_to_mlflow=False)
    assert result.record("slow")["params"]["setting"] == "b"
    assert len(result.raw_records) == 4
    assert result.comparisons()[0]["improvement"] == "2.0x faster"


# ------------------------------------------------------------- experiment files checked when loaded
@pytest.mark.parametrize("changes, message", [
    ({"overrides": {"sped": 2.0}}, r"overrides: fake: unknown overrides sped"),
    ({"scales": {"full": {"speed": "fast"}}}, r"scales.full: fake: override speed='fast' should be float"),
    ({"variants": ["slow", "fast", {"name": "faster", "overrides": {"jiter": 1}}]},
     r"variant faster: fake: unknown overrides jiter"),
    ({"metrics": ["init_s", "init_ss"]}, r"metrics: no variant of fake reports init_ss"),
])
def test_bad_settings_and_metrics_are_refused_at_load_naming_file_and_key(fake_bench, tmp_path, changes, message):
    import yaml

    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(spec(**changes)))
    with pytest.raises(ExperimentError, match=f"{path}.*{message}"):
        load_experiment(path)
    assert fake_bench.calls == []


def test_experiment_errors_are_usage_errors_with_one_line():
    from foodlab.errors import UsageError

    with pytest.raises(UsageError) as info:
        load_experiment("no_such_experiment")
    assert "\n" not in str(info.value) and "dataset_init" in str(info.value)  # names what exists


# ------------------------------------------------------------- logged as measured, noise recorded
def _runs(tmp_path):
    from foodlab import tracking

    return tracking.search_runs(["foodlab-demo"])


def test_parent_and_children_are_in_mlflow_while_measuring(fake_bench, tmp_path, monkeypatch):
    """Each group's child runs (and results.json) exist before the next group is measured."""
    import json

    from foodlab import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    seen = []

    def look(variants):
        runs = tracking.search_runs(["foodlab-demo"])
        parent = runs[runs["tags.foodlab.role"] == "parent"]
        children = runs["params.variant"].dropna() if "params.variant" in runs else []
        seen.append({"parent_status": list(parent["status"]), "children": sorted(children)})
        if variants == ["fast"]:  # the second group: the first group's results are on disk already
            client = tracking.MlflowClient()
            path = client.download_artifacts(parent["run_id"].iloc[0], "results.json", str(tmp_path))
            seen[-1]["results"] = [r["variant"] for r in json.load(open(path))["records"]]

    fake_bench.on_call = look
    exp = spec(variants=["slow", "faster", {"name": "fast", "overrides": {"speed": 3.0}}],
               candidates=["fast", "faster"])
    run_experiment(exp, "smoke", "cpu")
    assert seen[0] == {"parent_status": ["RUNNING"], "children": []}
    assert seen[1]["parent_status"] == ["RUNNING"] and seen[1]["children"] == ["faster", "slow"]
    assert seen[1]["results"] == ["slow", "faster"]
    runs = _runs(tmp_path)
    assert set(runs["status"]) == {"FINISHED"}


@pytest.mark.parametrize("error, status", [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_a_run_that_dies_ends_failed_or_killed(fake_bench, tmp_path, monkeypatch, error, status):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")

    def die(variants):
        if variants == ["fast"]:
            raise error

    fake_bench.on_call = die
    exp = spec(variants=["slow", "faster", {"name": "fast", "overrides": {"speed": 3.0}}], candidates=["fast"])
    with pytest.raises(type(error)):
        run_experiment(exp, "smoke", "cpu")
    runs = _runs(tmp_path)
    parent = runs[runs["tags.foodlab.role"] == "parent"].iloc[0]
    assert parent["status"] == status
    assert sorted(runs[runs["tags.foodlab.role"] != "parent"]["params.variant"]) == ["faster", "slow"]  # kept


def test_intervals_and_noisy_tags_reach_mlflow(fake_bench, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    result = run_experiment(spec(scales={"smoke": {"jitter": 1.0}}), "smoke", "cpu")
    rows = {(r["after"], r["metric"]): r for r in result.comparisons()}
    steady, jittery = rows[("fast", "init_s")], rows[("faster", "init_s")]
    assert steady["ratio_low"] == pytest.approx(2.0) and steady["ratio_high"] == pytest.approx(2.0)
    assert not steady["noisy"] and "faster varied" in jittery["noisy"]
    runs = _runs(tmp_path)
    parent = runs[runs["tags.foodlab.role"] == "parent"].iloc[0]
    assert parent["tags.foodlab.noisy"] == "true" and "tags.foodlab.noisy.init_s.faster" in parent
    assert parent["metrics.init_s.faster.ratio_p10"] < parent["metrics.init_s.faster.ratio_p90"]
    assert parent["tags.foodlab.precision_features"] and parent["tags.foodlab.device_name"].startswith("CPU")
    child = runs[runs["params.variant"] == "faster"].iloc[0]
    assert child["tags.foodlab.noisy"] == "true"
    assert "NOISY" in result.table()


def test_a_busy_machine_marks_every_row_noisy(fake_bench, monkeypatch):
    from foodlab.bench import noise

    busy = noise.Load(cpus=2, load1_before=3.0, load1_after=3.0, other_cores_before=1.5, other_cores_during=1.8)

    class Busy(_LoadMonitor):
        def __exit__(self, *exc):
            self.load = busy

    monkeypatch.setattr(noise, "LoadMonitor", lambda: Busy(before_sample_s=0))
    result = run_experiment(spec(metrics=["init_s", "peak_memory_mb"]), "smoke", "cpu", log_to_mlflow=False)
    assert result.busy.startswith("other processes used 1.8 of 2 cores")
    rows = result.comparisons()
    assert all(r["noisy"] == result.busy for r in rows if r["metric"] == "init_s")
    assert all(r["noisy"] == "" for r in rows if r["metric"] == "peak_memory_mb")  # bytes do not care about load
    assert "NOISY" in result.table()
