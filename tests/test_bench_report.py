"""The before/after report and the bench CLI, against a fake benchmark and a temporary MLflow store."""
from __future__ import annotations

import json
import sys

import pytest
import yaml
from test_bench_runner import fake_bench, spec  # noqa: F401  (fixture reuse)

from foodlab.bench import report, runner
from foodlab.bench.compare import comparison_row
from foodlab.cli import main
from foodlab.errors import FoodlabError


def run_cli(argv: list[str]) -> int:
    """``foodlab`` as a user runs it: a FoodlabError ends as its exit code and one line on stderr."""
    try:
        return main(argv)
    except FoodlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def test_markdown_table_names_device_features_and_values():
    row = comparison_row("dataset_init", "init_s", "decode", "manifest", 150.0, 0.002,
                         before_samples=[140.0, 150.0, 160.0], after_samples=[0.002, 0.002, 0.002])
    text = report.markdown_table([row], "CPU Test (2 cores)", "avx512_bf16,amx_bf16")
    assert "Measured on **CPU Test (2 cores)**, precision features: avx512_bf16,amx_bf16" in text
    assert "| Metric | Before | After | Improvement | Interval (p10-p90) |" in text
    assert "150 s" in text and "2.0 ms" in text and "75,000x faster" in text
    assert "71,000x-79,000x" in text and "NOISY" not in text


def test_threads_text_names_the_experiments_that_differ():
    assert report.threads_text({"a": 2, "b": 2, "c": 1}) == "2 (c: 1)"
    assert report.threads_text({"a": "2", "b": None}) == "2"
    assert report.threads_text({}) == ""
    assert report.markdown_table([], "CPU Test", "none", "2 (c: 1)").startswith(
        "Measured on **CPU Test**, precision features: none, torch threads: 2 (c: 1)")


def test_noisy_rows_are_flagged_not_presented_as_findings(tmp_path):
    quiet = comparison_row("e", "init_s", "a", "b", 2.0, 1.0)
    noisy = comparison_row("e", "step_time_median_s", "a", "b", 2.0, 1.0, noisy="other processes used 1.5 of 2 cores")
    text = report.markdown_table([quiet, noisy], "CPU Test")
    quiet_line, noisy_line = [line for line in text.splitlines() if line.startswith("| e:")]
    assert "NOISY" not in quiet_line and "2.0x faster" in quiet_line
    assert "NOISY, not a finding (other processes used 1.5 of 2 cores)" in noisy_line
    out = report.write_report([quiet, noisy], "CPU Test", tmp_path, features="none")
    assert "1 noisy row(s)" in (out / "summary.md").read_text()


def test_device_slug():
    assert report.device_slug("CPU AMD EPYC 7B13 (2 cores)") == "cpu-amd-epyc-7b13-2-cores"


@pytest.fixture
def tmp_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


def test_report_reads_back_latest_runs_and_writes_files(fake_bench, tmp_store, capsys):  # noqa: F811
    runner.run_experiment(spec(scales={"smoke": {"speed": 1.0}}), "smoke", "cpu")
    runner.run_experiment(spec(), "smoke", "cpu")  # the latest parent run wins
    rows, device_name = report.rows_from_mlflow(["demo"])
    assert device_name and device_name.startswith("CPU")
    by_key = {(r["after"], r["metric"]): r for r in rows}
    assert by_key[("faster", "init_s")]["before_value"] == pytest.approx(2.0)  # speed 2.0 run
    assert by_key[("fast", "images_per_s")]["improvement"] == "2.0x faster"

    rows, _ = report.rows_from_mlflow(["demo"], scale="default")
    assert rows == []  # both runs were at smoke scale
    out = tmp_store / "report"
    assert main(["report", "--experiment", "demo", "--scale", "smoke", "--out", str(out)]) == 0
    md = (out / "summary.md").read_text()
    assert device_name in md and "demo: init_s (slow → faster)" in md and "4.0x faster" in md
    assert "precision features: " in md and "NOISY" not in md
    assert f"torch threads: {min(2, __import__('torch').get_num_threads())}" in md  # the quiet monitor: 2 cores free
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_report_flags_the_noisy_rows_it_reads_back(fake_bench, tmp_store):  # noqa: F811
    runner.run_experiment(spec(scales={"smoke": {"jitter": 1.0}}), "smoke", "cpu")
    rows, _ = report.rows_from_mlflow(["demo"])
    by_key = {(r["after"], r["metric"]): r for r in rows}
    assert "faster varied" in by_key[("faster", "init_s")]["noisy"]
    assert by_key[("faster", "init_s")]["ratio_low"] < by_key[("faster", "init_s")]["ratio_high"]
    assert not by_key[("fast", "init_s")]["noisy"]


def test_report_without_runs_fails_clearly(tmp_store, capsys):
    assert run_cli(["report", "--out", str(tmp_store / "r")]) == 1
    assert "foodlab bench all" in capsys.readouterr().err


def test_unreachable_tracking_server_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing answers
    for argv in (["report"], ["ui"], ["run", "dataset_init", "--scale", "smoke"]):
        assert run_cli(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "cannot reach the MLflow tracking server at http://127.0.0.1:9" in err


def test_bench_experiment_typo_is_named(capsys):
    assert run_cli(["bench", "init", "--experiment", "dataset_int", "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "dataset_int" in err and "dataset_init" in err


def test_ui_on_a_port_in_use_fails_naming_the_port(tmp_store, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert run_cli(["ui", "--port", str(port)]) == 2
    assert f"port {port}" in capsys.readouterr().err


def test_cli_run_prints_table_and_json(fake_bench, tmp_path, capsys):  # noqa: F811
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(spec()))
    assert main(["run", str(path), "--scale", "smoke", "--device", "cpu", "--no-mlflow", "--json"]) == 0
    out = capsys.readouterr().out
    assert "== demo (fake, scale=smoke" in out
    assert "| Metric | Before | After | Improvement | Interval (p10-p90) |" in out
    payload = json.loads(out[out.index("{"):out.index("\n}\n") + 2])
    assert [r["variant"] for r in payload["records"]] == ["slow", "fast", "faster"]


def test_cli_run_rejects_a_bad_file(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"benchmark": "warp", "baseline": "a", "candidates": ["a"],
                                    "metrics": ["x"], "variants": ["a"]}))
    assert run_cli(["run", str(path), "--no-mlflow"]) == 2
    assert "unknown benchmark 'warp'" in capsys.readouterr().err


def test_bench_all_runs_every_file_and_points_at_the_ui(fake_bench, tmp_store, monkeypatch, capsys):  # noqa: F811
    folder = tmp_store / "experiments"
    folder.mkdir()
    for name in ("one", "two"):
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec(name=name)))
    monkeypatch.setattr(runner, "EXPERIMENTS_DIR", folder)
    assert main(["bench", "all", "--scale", "smoke", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "== one" in out and "== two" in out
    assert "#/experiments/" in out and "/runs" in out and "foodlab-two" in out
    assert len(fake_bench.calls) == 2


def test_ui_starts_mlflow_on_the_tracking_store_and_prints_runs_table_links(fake_bench, tmp_store, monkeypatch,  # noqa: F811
                                                                          capsys):
    import subprocess

    folder = tmp_store / "experiments"
    folder.mkdir()
    (folder / "demo.yaml").write_text(yaml.safe_dump(spec()))
    monkeypatch.setattr(runner, "EXPERIMENTS_DIR", folder)
    runner.run_experiment("demo", "smoke", "cpu")
    calls = []

    class FakePopen:
        def __init__(self, cmd):
            calls.append(cmd)

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    assert main(["ui", "--port", "5123"]) == 0
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_store}/mlflow.db"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5123"
    assert "http://127.0.0.1:5123/#/experiments/1/runs" in capsys.readouterr().out
