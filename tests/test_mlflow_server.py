"""A real ``mlflow server`` on a free loopback port: a smoke benchmark logs to it, the REST API reads it back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from loopback import free_port, wait_until_answering

REPO = Path(__file__).resolve().parents[1]


def api(url: str, path: str, payload: dict | None = None, query: str = "") -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}{query}", data=data,
                                 headers={"Content-Type": "application/json"}, method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    try:
        wait_until_answering(url + "/health", proc, what="mlflow server", timeout_s=90)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_smoke_benchmark_logs_parent_and_children_to_a_real_server(mlflow_server, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    done = subprocess.run(
        [sys.executable, "-m", "foodlab", "run", str(REPO / "experiments" / "dataset_init.yaml"),
         "--scale", "smoke", "--device", "cpu"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists()  # everything went to the server

    exp = api(mlflow_server, "experiments/get-by-name", query="?experiment_name=foodlab-dataset_init")["experiment"]
    tags = {t["key"]: t["value"] for t in exp.get("tags", [])}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    runs = api(mlflow_server, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]

    def params(run):
        return {p["key"]: p["value"] for p in run["data"].get("params", [])}

    def metrics(run):
        return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}

    def run_tags(run):
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    parents = [r for r in runs if run_tags(r).get("foodlab.role") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    assert params(parent)["baseline"] == "decode" and params(parent)["scale"] == "smoke"
    children = [r for r in runs if run_tags(r).get("mlflow.parentRunId") == parent["info"]["run_id"]]
    assert {params(c)["variant"] for c in children} == {"decode", "stat", "manifest_verify", "manifest_first_open",
                                                              "manifest_reopen"}
    for child in children:
        p = params(child)
        assert p["device"] == "cpu" and p["device_name"].startswith("CPU")
        assert {"torch_version", "foodlab_version", "n_images", "image_size"} <= set(p)
        assert metrics(child)["init_s"] >= 0
    assert any(k.endswith(".ratio") for k in metrics(parent))
    assert any(k.endswith(".ratio_p90") for k in metrics(parent))  # interleaved rounds give an interval
    assert run_tags(parent)["foodlab.noisy"] in ("true", "false") and run_tags(parent)["foodlab.precision_features"]
    assert parent["info"]["status"] == "FINISHED"
