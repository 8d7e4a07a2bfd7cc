"""The one place that talks to MLflow.

Everything else in foodlab calls these functions, so the tracking URI rule, the
reachability check and the experiment tags live here once. Default tracking URI is
``sqlite:///mlflow.db`` in the working directory; ``MLFLOW_TRACKING_URI`` overrides it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from foodlab.errors import FoodlabError

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")


class TrackingUnavailable(FoodlabError):
    """The tracking server or store cannot be used; raised before any work is spent."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def configure(uri: str | None = None, check: bool = True) -> str:
    """Point MLflow at ``uri`` (or the environment/default) and, if asked, check it answers.

    With ``check`` a local sqlite store is also created here (schema and all), under a file lock:
    two processes creating the same new database at once otherwise race in MLflow's schema
    migration and one of them fails, possibly after it has measured for minutes.
    """
    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    if check:
        ensure_reachable(uri)
        if uri.startswith("sqlite:///"):
            _create_store(uri)
    return uri


def _create_store(uri: str) -> None:
    from filelock import FileLock

    db = Path(uri[len("sqlite:///"):])
    with FileLock(f"{db}-create.lock", timeout=120):  # beside the db, matched by .gitignore's mlflow.db-*
        MlflowClient(uri).search_experiments(max_results=1)  # opens the store: creates and migrates the schema


def ensure_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with a clear message when an HTTP tracking server does not answer."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                if resp.status >= 400:
                    raise TrackingUnavailable(f"MLflow tracking server {uri} answered HTTP {resp.status} on /health")
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingUnavailable(
                f"cannot reach the MLflow tracking server at {uri} ({exc}). "
                "Start it, fix MLFLOW_TRACKING_URI, or unset it to log to the local sqlite:///mlflow.db."
            ) from exc
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        folder = db.parent if str(db.parent) else Path(".")
        if not folder.exists():
            raise TrackingUnavailable(f"the folder of the MLflow database {db} does not exist")
        if not os.access(folder, os.W_OK):
            raise TrackingUnavailable(f"the folder of the MLflow database {db} is not writable")


def artifact_location_for(experiment: str, uri: str | None = None) -> str | None:
    """For a local sqlite store, artifacts live beside the database (``<db folder>/mlruns/<name>``),
    not in whatever the current directory is; other stores use the server's default."""
    uri = uri or mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    folder = Path(uri[len("sqlite:///"):]).resolve().parent
    return (folder / "mlruns" / experiment).as_uri()


def get_or_create_experiment(name: str, tags: Mapping[str, str] | None = None) -> str:
    """Experiment id for ``name``, created with foodlab's tags if it does not exist yet.

    Two processes may both see no experiment and both create it: the loser's create fails on
    the store's unique name, and it then uses the winner's experiment.
    """
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    all_tags = {EXPERIMENT_KIND_TAG[0]: EXPERIMENT_KIND_TAG[1], **(tags or {})}
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location_for(name), tags=all_tags)
        except MlflowException:
            exp = client.get_experiment_by_name(name)
            if exp is None:  # not the race: a real failure
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if exp.tags.get(EXPERIMENT_KIND_TAG[0]) != EXPERIMENT_KIND_TAG[1]:
        client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND_TAG)
    return exp.experiment_id


def git_commit() -> str:
    """The foodlab checkout's commit, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextlib.contextmanager
def start_run(
    experiment: str,
    run_name: str | None = None,
    *,
    run_id: str | None = None,
    nested: bool = False,
    tags: Mapping[str, str] | None = None,
    log_system_metrics: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run in ``experiment``; ``run_id`` resumes an existing run; ``nested`` makes a child.

    The run ends FINISHED when the block completes, KILLED on Ctrl-C (or another interrupt) and
    FAILED on an error, so a run that died is never shown as a finished one.
    """
    exp_id = get_or_create_experiment(experiment)
    try:
        run = mlflow.start_run(
            run_id=run_id,
            experiment_id=None if run_id else exp_id,
            run_name=None if run_id else run_name,
            nested=nested,
            tags=dict(tags or {}),
            log_system_metrics=log_system_metrics,
        )
    except MlflowException as exc:
        if run_id is None:
            raise
        raise TrackingUnavailable(f"MLflow run {run_id} is not in the tracking store {mlflow.get_tracking_uri()}; "
                                  "set MLFLOW_TRACKING_URI to the store it was logged to") from exc
    try:
        yield run
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def log_params(params: Mapping[str, Any]) -> None:
    """Log (nested) params; values are stringified and cut to MLflow's length limit."""
    flat = {k: ("None" if v is None else str(v))[:6000] for k, v in _flatten(params).items()}
    if flat:
        mlflow.log_params(flat)


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    clean = {k: float(v) for k, v in metrics.items() if v is not None}
    if clean:
        mlflow.log_metrics(clean, step=step)


def set_tags(tags: Mapping[str, Any]) -> None:
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_dict(data: Mapping[str, Any] | list, artifact_file: str) -> None:
    mlflow.log_dict(data, artifact_file)


def log_figure(figure: Any, artifact_file: str) -> None:
    mlflow.log_figure(figure, artifact_file)


def active_run_id() -> str | None:
    run = mlflow.active_run()
    return run.info.run_id if run else None


def search_runs(experiment_names: list[str] | None = None, filter_string: str = "", **kwargs: Any):
    """Runs as a pandas DataFrame (params.*, metrics.*, tags.* columns)."""
    return mlflow.search_runs(
        experiment_names=experiment_names, filter_string=filter_string,
        search_all_experiments=experiment_names is None, **kwargs,
    )


def get_run(run_id: str):
    return MlflowClient().get_run(run_id)


def ui_url(experiment: str | None = None, host: str = "127.0.0.1", port: int = 5000) -> str:
    """The runs table of an experiment (MLflow 3 otherwise opens on a GenAI overview)."""
    base = f"http://{host}:{port}"
    if experiment is None:
        return base
    exp = MlflowClient().get_experiment_by_name(experiment)
    return f"{base}/#/experiments/{exp.experiment_id}/runs" if exp else base


def end_run(status: str = "FINISHED") -> None:
    """End the active run with ``status`` ("FINISHED", "FAILED" or "KILLED"); a no-op when none is active."""
    mlflow.end_run(status=status)


# ---------------------------------------------------------------- model registry

CHAMPION = "champion"  # the alias users load: models:/NAME@champion
MODEL_TAG = "foodlab.model"  # run tag naming the artifact path of the MLflow Model the run logged


def best_run(experiment: str, metric: str = "val_miou", with_model: bool = True) -> dict[str, Any] | None:
    """The finished run of ``experiment`` with the best ``metric`` (a ``search_runs`` row as a dict), or None.

    ``with_model``: only runs that logged an MLflow Model (tagged ``MODEL_TAG``), the ones a
    registry can take; the row's ``model_uri`` is then ``runs:/<run id>/<artifact path>``.
    """
    from foodlab.metric_names import higher_is_better

    order = "DESC" if higher_is_better(metric) else "ASC"
    where = f"tags.`{MODEL_TAG}` != ''" if with_model else ""
    runs = search_runs([experiment], filter_string=where, order_by=[f"metrics.`{metric}` {order}"], max_results=50)
    column = f"metrics.{metric}"
    if runs.empty or column not in runs:
        return None
    runs = runs[runs[column].notna() & (runs["status"] == "FINISHED")]
    if runs.empty:
        return None
    row = runs.iloc[0].to_dict()
    if with_model:
        row["model_uri"] = f"runs:/{row['run_id']}/{row[f'tags.{MODEL_TAG}']}"
    return row


def register_model(model_uri: str, name: str) -> str:
    """Register ``model_uri`` (e.g. ``runs:/<id>/model``) as a new version of ``name``; returns the version."""
    return str(mlflow.register_model(model_uri, name).version)


def model_versions(name: str) -> list[dict[str, Any]]:
    """Versions of registered model ``name``, newest first, each with its aliases and its run's metrics."""
    client = MlflowClient()
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        return []
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():  # search results omit aliases
        aliases.setdefault(str(version), []).append(alias)
    out = []
    for mv in versions:
        metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        out.append({"version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                    "run_id": mv.run_id, "metrics": dict(metrics)})
    return sorted(out, key=lambda v: int(v["version"]), reverse=True)


def promote(name: str, *, metric: str = "val_miou", version: str | int | None = None,
            alias: str = CHAMPION) -> str:
    """Point ``alias`` at ``version``, or at the version whose run logged the best ``metric``; returns it."""
    from foodlab.errors import UsageError

    versions = model_versions(name)
    if not versions:
        raise UsageError(f"no registered model {name!r} (or it has no versions); register one with "
                         "`foodlab train --register NAME` first")
    if version is None:
        scored = [v for v in versions if metric in v["metrics"]]
        if not scored:
            raise UsageError(f"no version of {name!r} has a run that logged {metric!r}; pick one with --version")
        from foodlab.metric_names import higher_is_better

        pick = max if higher_is_better(metric) else min
        version = pick(scored, key=lambda v: v["metrics"][metric])["version"]
    elif str(version) not in {v["version"] for v in versions}:
        raise UsageError(f"{name!r} has no version {version} (versions: {', '.join(v['version'] for v in versions)})")
    MlflowClient().set_registered_model_alias(name, alias, str(version))
    return str(version)
