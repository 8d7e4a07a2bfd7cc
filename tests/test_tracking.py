"""foodlab.tracking: the tracking-URI rule, experiment tags, nested runs, search, UI links."""
from __future__ import annotations

from pathlib import Path

import pytest

from foodlab import tracking


def test_tracking_uri_from_environment_or_default(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x/elsewhere.db")
    assert tracking.tracking_uri() == "sqlite:////tmp/x/elsewhere.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.tracking_uri() == "sqlite:///mlflow.db"


def test_sqlite_in_a_missing_folder_is_reported(tmp_path):
    with pytest.raises(tracking.TrackingUnavailable, match="does not exist"):
        tracking.configure(f"sqlite:///{tmp_path}/missing/mlflow.db")


def test_experiment_is_tagged_and_restored_and_keeps_artifacts_beside_the_db(tmp_path):
    tracking.configure()
    exp_id = tracking.get_or_create_experiment("foodlab-t")
    assert tracking.get_or_create_experiment("foodlab-t") == exp_id
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment(exp_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.artifact_location == (tmp_path / "mlruns" / "foodlab-t").as_uri()
    client.delete_experiment(exp_id)
    assert tracking.get_or_create_experiment("foodlab-t") == exp_id
    assert client.get_experiment(exp_id).lifecycle_stage == "active"


def test_nested_runs_params_metrics_artifacts_and_search(tmp_path):
    tracking.configure()
    with tracking.start_run("foodlab-t", "parent", tags={"foodlab.role": "parent"}) as parent:
        tracking.log_params({"a": 1, "nested": {"b": None, "c": "x" * 7000}})
        with tracking.start_run("foodlab-t", "child", nested=True) as child:
            assert tracking.active_run_id() == child.info.run_id
            tracking.log_metrics({"init_s": 1.5, "skipped": None}, step=0)
            tracking.log_dict({"k": [1, 2]}, "d.json")
    assert tracking.active_run_id() is None
    runs = tracking.search_runs(["foodlab-t"])
    assert len(runs) == 2
    p = runs[runs["run_id"] == parent.info.run_id].iloc[0]
    assert p["params.a"] == "1" and p["params.nested.b"] == "None" and len(p["params.nested.c"]) == 6000
    c = runs[runs["run_id"] == child.info.run_id].iloc[0]
    assert c["tags.mlflow.parentRunId"] == parent.info.run_id
    assert c["metrics.init_s"] == 1.5 and "metrics.skipped" not in runs
    run = tracking.get_run(child.info.run_id)
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert (artifacts / "d.json").exists() and tmp_path in artifacts.parents
    only_parents = tracking.search_runs(["foodlab-t"], "tags.`foodlab.role` = 'parent'")
    assert list(only_parents["run_id"]) == [parent.info.run_id]


def test_ui_url_points_at_the_runs_table():
    tracking.configure()
    exp_id = tracking.get_or_create_experiment("foodlab-ui")
    assert tracking.ui_url("foodlab-ui", port=5123) == f"http://127.0.0.1:5123/#/experiments/{exp_id}/runs"
    assert tracking.ui_url("not-there") == "http://127.0.0.1:5000"


def test_git_commit_is_a_sha_or_unknown():
    sha = tracking.git_commit()
    assert sha == "unknown" or (len(sha) == 40 and int(sha, 16) >= 0)


def test_tracking_errors_are_one_line_foodlab_errors(monkeypatch):
    from foodlab.errors import FoodlabError

    with pytest.raises(FoodlabError) as info:
        tracking.configure("http://127.0.0.1:9")  # the discard port: nothing answers
    assert "\n" not in str(info.value) and "http://127.0.0.1:9" in str(info.value)


def test_losing_the_create_experiment_race_uses_the_winners_experiment(monkeypatch):
    """Both processes saw no experiment; the other one created it first: ours must not fail."""
    tracking.configure()
    winner = tracking.get_or_create_experiment("foodlab-race")
    real = tracking.MlflowClient.get_experiment_by_name
    calls = []

    def stale_first(self, name):  # our first look happened before the winner's create
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(tracking.MlflowClient, "get_experiment_by_name", stale_first)
    assert tracking.get_or_create_experiment("foodlab-race") == winner
    assert len(calls) == 2


def _create_in_a_new_process(uri: str, name: str, out) -> None:
    import os

    os.environ["MLFLOW_TRACKING_URI"] = uri
    from foodlab import tracking as t

    t.configure()
    out.put(t.get_or_create_experiment(name))


@pytest.mark.slow
def test_two_processes_create_the_same_new_db_and_experiment(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    uri = f"sqlite:///{tmp_path}/fresh.db"
    out = ctx.Queue()
    procs = [ctx.Process(target=_create_in_a_new_process, args=(uri, "foodlab-both", out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    ids = {out.get(timeout=5), out.get(timeout=5)}
    assert len(ids) == 1


@pytest.mark.parametrize("error, status", [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_a_run_that_dies_is_not_finished(error, status):
    tracking.configure()
    with pytest.raises(type(error)):
        with tracking.start_run("foodlab-dies") as run:
            raise error
    assert tracking.get_run(run.info.run_id).info.status == status
    with tracking.start_run("foodlab-dies") as ok:
        pass
    assert tracking.get_run(ok.info.run_id).info.status == "FINISHED"


def test_resuming_a_run_this_store_does_not_have_names_the_store():
    from foodlab.tracking import TrackingUnavailable

    tracking.configure()
    with pytest.raises(TrackingUnavailable, match="not in the tracking store"):
        with tracking.start_run("exp", run_id="0123456789abcdef0123456789abcdef"):
            pass


def test_the_registry_and_the_reports_agree_on_which_way_is_better():
    from foodlab.metric_names import higher_is_better

    assert higher_is_better("val_miou") and higher_is_better("images_per_s") and higher_is_better("val_dice")
    assert not higher_is_better("peak_memory_mb") and not higher_is_better("epoch_s")
    assert not higher_is_better("val_loss") and not higher_is_better("step_time_median_s")
