"""The inference benchmark and its experiment file: well-formed records from the real segment() path.

Behaviour only (which variants, params, metrics, that the CLI runs it); never how fast.
"""
from __future__ import annotations

import inspect
import json

import pytest

from foodlab.bench import inference
from foodlab.bench.runner import benchmark_module, load_experiment


def test_variants_name_mode_batch_and_precision():
    assert inference.parse_variant("sam2_b8_autocast") == ("sam2", 8, "autocast")
    assert inference.parse_variant("head_b1_fp32") == ("lightweight", 1, "fp32")
    assert {inference.parse_variant(v)[1] for v in inference.VARIANTS} == {1, 8}
    with pytest.raises(ValueError, match="unknown inference variant 'sam2_b4_fp32'"):
        inference.run("smoke", "cpu", ("sam2_b4_fp32",))


def test_one_signature_and_typos_fail_by_name():
    params = list(inspect.signature(inference.run).parameters.values())
    assert [p.name for p in params] == ["scale", "device", "variants", "settings"]
    assert set(inference.SCALES) == {"smoke", "default", "full"}
    assert inference.SCALES["default"]["sam2_image_size"] == 1024  # SAM2's own input outside smoke
    with pytest.raises(ValueError, match="inference: unknown scale 'huge'"):
        inference.run("huge", "cpu", inference.VARIANTS)
    with pytest.raises(ValueError, match="inference: unknown overrides batch_size"):
        inference.run("smoke", "cpu", inference.VARIANTS, batch_size=8)


def test_experiment_file_loads_and_compares_sam2_against_the_head():
    exp = load_experiment("inference")
    assert benchmark_module(exp.benchmark) is inference
    assert exp.baseline == "sam2_b1_fp32" and exp.description
    assert {v.record for v in exp.variants} == set(inference.VARIANTS)
    assert set(exp.candidates) == set(inference.VARIANTS) - {exp.baseline}
    assert {"images_per_s", "peak_memory_mb"} <= set(exp.metrics) <= set(inference.METRICS)


def test_bench_inference_runs_the_inference_file(monkeypatch):
    from foodlab.bench import runner
    from foodlab.cli import main

    class Picked(Exception):
        pass

    def fake_run_experiment(path, scale, device, log_to_mlflow=True, threads=None):
        raise Picked(path.stem)  # stop before measuring: only which file it picked matters here

    monkeypatch.setattr(runner, "run_experiment", fake_run_experiment)
    with pytest.raises(Picked, match="^inference$"):   # --debug: cli.main lets the exception through
        main(["bench", "inference", "--scale", "smoke", "--no-mlflow", "--debug"])


@pytest.mark.slow
def test_records_time_the_real_path_with_memory_and_rounds():
    records = inference.run("smoke", "cpu", ("head_b8_autocast", "sam2_b1_fp32"), repeats=2)
    assert [r["variant"] for r in records] == ["sam2_b1_fp32", "head_b8_autocast"]  # VARIANTS order
    sam2, head = records
    assert (sam2["params"]["mode"], sam2["params"]["batch_size"], sam2["params"]["precision"]) == ("sam2", 1, "fp32")
    assert (head["params"]["mode"], head["params"]["batch_size"], head["params"]["precision"]) == \
        ("lightweight", 8, "bfloat16")
    assert sam2["params"]["model_input_size"] == 128 and head["params"]["model_input_size"] == 64
    assert sam2["metrics"]["model_params_mb"] > head["metrics"]["model_params_mb"] > 0
    for r in records:
        m = r["metrics"]
        assert m["peak_memory_mb"] >= 0 and m["step_time_median_s"] > 0
        assert m["images_per_s"] == pytest.approx(r["params"]["batch_size"] / m["step_time_median_s"])
        assert len(r["samples"]["step_time_median_s"]) == 2  # one sample per interleaved round
    table = inference.format_table(records)
    assert "sam2_b1_fp32" in table and "head_b8_autocast" in table


@pytest.mark.slow
def test_foodlab_run_inference_at_smoke_scale(capsys):
    from foodlab.cli import main

    assert main(["run", "experiments/inference.yaml", "--scale", "smoke", "--device", "cpu", "--no-mlflow",
                 "--json"]) == 0
    out = capsys.readouterr().out
    payload = json.loads(out[out.index("{"):out.index("\n}\n") + 2])
    exp = load_experiment("inference")
    assert [r["variant"] for r in payload["records"]] == [v.name for v in exp.variants]
    for r in payload["records"]:
        assert set(exp.metrics) <= set(r["metrics"]), r["variant"]
        assert r["metrics"]["images_per_s"] > 0
    assert "| inference: images_per_s (sam2_b1_fp32 → head_b8_fp32)" in out
