"""Run declarative before/after experiments (``experiments/*.yaml``) and log them to MLflow.

An experiment file names one benchmark module (``foodlab.bench.<benchmark>``), the
variants to measure, which one is the "before" (``baseline``) and which are the
"after" (``candidates``), and which metrics to compare. The runner measures every
variant in this one process, on the same data, and logs one MLflow parent run per
experiment with a nested child run per variant, in the MLflow experiment
``foodlab-<name>``. Schema (unknown keys are errors)::

    name: dataset_init                 # optional; defaults to the file stem
    description: decode vs stat vs manifest
    benchmark: init_time               # foodlab.bench.init_time.run(scale, device, **overrides)
    baseline: decode                   # the "before" variant
    candidates: [stat, manifest_reopen]  # the "after" variant(s)
    metrics: [init_s]                  # compared in the summary table (direction from the name)
    overrides: {}                      # passed to run() at every scale
    scales: {smoke: {n: 64}, default: {...}, full: {...}}  # per-scale overrides
    variants:                          # names of the records run() returns, optionally with
      - decode                         # their own overrides (one run() call per distinct set)
      - {name: fp32, overrides: {amp: false}, record: fast}
"""
from __future__ import annotations

import importlib
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

log = logging.getLogger(__name__)

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"
BENCHMARKS = ("init_time", "throughput", "loader", "precision", "memory", "quality")
SCALES = ("smoke", "default", "full")
TOP_KEYS = {"name", "description", "benchmark", "baseline", "candidates", "metrics", "overrides", "scales", "variants"}
VARIANT_KEYS = {"name", "overrides", "record", "description"}
# record params copied into every child run under these names when the benchmark reports them
COMMON_PARAMS = ("batch_size", "image_size", "num_workers", "n_images")


class ExperimentError(ValueError):
    """An experiment file that cannot run; the message names the file and the offending key."""


@dataclass
class Variant:
    name: str
    record: str
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass
class Experiment:
    name: str
    benchmark: str
    baseline: str
    candidates: list[str]
    metrics: list[str]
    variants: list[Variant]
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "<dict>"

    @property
    def mlflow_experiment(self) -> str:
        return f"foodlab-{self.name}"

    def overrides_for(self, scale: str) -> dict[str, Any]:
        return {**self.overrides, **self.scales.get(scale, {})}


@dataclass
class ExperimentResult:
    """What one experiment measured: records keyed by the experiment's variant names."""

    experiment: Experiment
    scale: str
    device: str
    device_name: str
    records: list[dict[str, Any]]
    wall_s: float
    parent_run_id: str | None = None
    child_run_ids: dict[str, str] = field(default_factory=dict)
    raw_records: list[dict[str, Any]] = field(default_factory=list)  # all settings the benchmark tried

    def record(self, variant: str) -> dict[str, Any]:
        return next(r for r in self.records if r["variant"] == variant)

    def comparisons(self) -> list[dict[str, Any]]:
        """Before/after rows: one per candidate and compared metric that both variants report."""
        from foodlab.bench.report import comparison_row

        before = self.record(self.experiment.baseline)["metrics"]
        rows = []
        for cand in self.experiment.candidates:
            after = self.record(cand)["metrics"]
            for metric in self.experiment.metrics:
                row = comparison_row(self.experiment.name, metric, self.experiment.baseline, cand,
                                     before.get(metric), after.get(metric))
                if row is not None:
                    rows.append(row)
        return rows


def _fail(source: str, msg: str) -> ExperimentError:
    return ExperimentError(f"{source}: {msg}")


def _as_list(value: Any, source: str, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _fail(source, f"'{key}' must be a name or a list of names, got {value!r}")


def _mapping(value: Any, source: str, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(source, f"'{key}' must be a mapping, got {type(value).__name__}")
    return dict(value)


def benchmark_module(name: str):
    """The module ``foodlab.bench.<name>``; a clear error when it is unknown or not there yet."""
    if name not in BENCHMARKS:
        raise ExperimentError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    try:
        return importlib.import_module(f"foodlab.bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"foodlab.bench.{name}":
            raise ExperimentError(f"benchmark module foodlab.bench.{name} is not installed") from exc
        raise


def parse_experiment(raw: Mapping[str, Any], source: str = "<dict>") -> Experiment:
    """Validate an experiment mapping; every error names the file and the key."""
    if not isinstance(raw, Mapping):
        raise _fail(source, "expected a mapping at the top level")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise _fail(source, f"unknown keys {', '.join(unknown)} (known: {', '.join(sorted(TOP_KEYS))})")
    missing = [k for k in ("benchmark", "baseline", "candidates", "metrics", "variants") if k not in raw]
    if missing:
        raise _fail(source, f"missing required keys {', '.join(missing)}")
    benchmark = raw["benchmark"]
    if benchmark not in BENCHMARKS:
        raise _fail(source, f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    scales = _mapping(raw.get("scales"), source, "scales")
    bad_scales = sorted(set(scales) - set(SCALES))
    if bad_scales:
        raise _fail(source, f"unknown scales {', '.join(bad_scales)} (known: {', '.join(SCALES)})")
    scales = {k: _mapping(v, source, f"scales.{k}") for k, v in scales.items()}

    if not isinstance(raw["variants"], list) or not raw["variants"]:
        raise _fail(source, "'variants' must be a non-empty list")
    variants = []
    for i, item in enumerate(raw["variants"]):
        item = {"name": item} if isinstance(item, str) else item
        if not isinstance(item, Mapping) or "name" not in item:
            raise _fail(source, f"variants[{i}] must be a name or a mapping with 'name'")
        extra = sorted(set(item) - VARIANT_KEYS)
        if extra:
            raise _fail(source, f"variants[{i}] ({item['name']}): unknown keys {', '.join(extra)} "
                                f"(known: {', '.join(sorted(VARIANT_KEYS))})")
        variants.append(Variant(name=str(item["name"]), record=str(item.get("record", item["name"])),
                                overrides=_mapping(item.get("overrides"), source, f"variants[{i}].overrides"),
                                description=str(item.get("description", ""))))
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail(source, f"duplicate variant names {', '.join(dupes)}")

    baseline = raw["baseline"]
    candidates = _as_list(raw["candidates"], source, "candidates")
    for key, value in [("baseline", baseline)] + [("candidates", c) for c in candidates]:
        if value not in names:
            raise _fail(source, f"{key}: unknown variant {value!r} (variants: {', '.join(names)})")
    name = str(raw.get("name") or Path(source).stem)
    return Experiment(
        name=name, benchmark=benchmark, baseline=baseline, candidates=candidates,
        metrics=_as_list(raw["metrics"], source, "metrics"), variants=variants,
        description=str(raw.get("description", "")).strip(),
        overrides=_mapping(raw.get("overrides"), source, "overrides"), scales=scales, source=source,
    )


def load_experiment(path_or_dict: str | Path | Mapping[str, Any]) -> Experiment:
    """An Experiment from a YAML path, a bare name in ``experiments/``, or a mapping."""
    if isinstance(path_or_dict, Mapping):
        return parse_experiment(path_or_dict)
    path = Path(path_or_dict)
    if not path.exists() and not path.suffix:
        path = Path(EXPERIMENTS_DIR) / f"{path}.yaml"
    if not path.exists():
        raise ExperimentError(f"experiment file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ExperimentError(f"{path}: not valid YAML ({exc})") from exc
    return parse_experiment(raw or {}, source=str(path))


def experiment_files(folder: str | Path | None = None) -> list[Path]:
    return sorted(Path(folder or EXPERIMENTS_DIR).glob("*.yaml"))


def _call_benchmark(module, scale: str, device: str, overrides: dict[str, Any], wanted: list[str]):
    """Call run(); modules whose run() has a ``variants`` parameter only measure the ones asked for."""
    import inspect

    params = inspect.signature(module.run).parameters
    if "variants" in params and "variants" not in overrides:
        overrides = {**overrides, "variants": wanted}
    return module.run(scale=scale, device=device, **overrides)


def measure(exp: Experiment, scale: str, device: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Measure every variant in this process; one run() call per distinct set of overrides.

    Returns (one record per experiment variant, every record the benchmark returned).
    """
    module = benchmark_module(exp.benchmark)
    known = getattr(module, "VARIANTS", None)
    if known is not None:
        bad = [v.record for v in exp.variants if v.record not in known]
        if bad:
            raise _fail(exp.source, f"unknown variant(s) {', '.join(bad)} for benchmark {exp.benchmark} "
                                    f"(it measures: {', '.join(known)})")
    groups: dict[str, list[Variant]] = {}
    for v in exp.variants:
        groups.setdefault(json.dumps(v.overrides, sort_keys=True, default=str), []).append(v)
    records: dict[str, dict[str, Any]] = {}
    raw: list[dict[str, Any]] = []
    for group in groups.values():
        overrides = {**exp.overrides_for(scale), **group[0].overrides}
        log.info("%s: measuring %s at scale %s on %s", exp.name, ", ".join(v.name for v in group), scale, device)
        got = _call_benchmark(module, scale, device, overrides, list(dict.fromkeys(v.record for v in group)))
        raw += got
        by_name: dict[str, dict[str, Any]] = {}
        for r in got:  # several records per variant (e.g. one per precision): the selected one wins
            if r["variant"] not in by_name or r.get("params", {}).get("selected"):
                by_name[r["variant"]] = r
        for v in group:
            rec = by_name.get(v.record)
            if rec is None and len(got) == 1 and v.overrides:
                rec = got[0]  # a run() configured entirely by this variant's overrides
            if rec is None:
                raise _fail(exp.source, f"unknown variant {v.record!r}: benchmark {exp.benchmark} returned "
                                        f"{', '.join(by_name) or 'nothing'}")
            records[v.name] = {
                "variant": v.name,
                "params": {**dict(rec.get("params", {})), "bench_variant": rec["variant"],
                           **{f"override.{k}": val for k, val in group[0].overrides.items()}},
                "metrics": dict(rec.get("metrics", {})),
            }
    return [records[v.name] for v in exp.variants], raw


def environment_params(device) -> dict[str, str]:
    import torch

    import foodlab
    from foodlab.devices import device_name

    return {"device": device.type, "device_name": device_name(device), "torch_version": torch.__version__,
            "foodlab_version": foodlab.__version__, "python_version": platform.python_version()}


def _log(exp: Experiment, result: ExperimentResult, env: dict[str, str]) -> None:
    from foodlab import tracking

    commit = tracking.git_commit()
    base_tags = {"foodlab.experiment": exp.name, "foodlab.scale": result.scale, "foodlab.git_commit": commit}
    with tracking.start_run(exp.mlflow_experiment, run_name=f"{exp.name}-{result.scale}-{env['device']}",
                            tags={**base_tags, "foodlab.role": "parent"}) as parent:
        result.parent_run_id = parent.info.run_id
        tracking.log_params({
            "experiment": exp.name, "benchmark": exp.benchmark, "scale": result.scale,
            "baseline": exp.baseline, "candidates": ",".join(exp.candidates),
            "compare_metrics": ",".join(exp.metrics), "variants": ",".join(v.name for v in exp.variants),
            **env, **{f"override.{k}": v for k, v in exp.overrides_for(result.scale).items()},
        })
        if exp.description:
            tracking.set_tags({"mlflow.note.content": exp.description})
        for rec in result.records:
            role = "baseline" if rec["variant"] == exp.baseline else (
                "candidate" if rec["variant"] in exp.candidates else "variant")
            with tracking.start_run(exp.mlflow_experiment, run_name=rec["variant"], nested=True,
                                    tags={**base_tags, "foodlab.role": role,
                                          "foodlab.variant": rec["variant"]}) as child:
                result.child_run_ids[rec["variant"]] = child.info.run_id
                p = rec["params"]
                tracking.log_params({"variant": rec["variant"], **env,
                                     **{k: p.get(k, "n/a") for k in COMMON_PARAMS}, **p})
                tracking.log_metrics({k: v for k, v in rec["metrics"].items() if isinstance(v, (int, float))})
        rows = result.comparisons()
        tracking.log_metrics({f"{r['metric']}.{r['after']}.ratio": r["ratio"] for r in rows if r["ratio"]})
        tracking.log_metrics({"wall_s": result.wall_s})
        tracking.log_dict({"records": result.records, "comparisons": rows, "all_records": result.raw_records},
                          "results.json")
        if Path(exp.source).exists():
            tracking.log_artifact(exp.source)


def run_experiment(path_or_dict: str | Path | Mapping[str, Any], scale: str = "smoke", device: str = "auto",
                   log_to_mlflow: bool = True) -> ExperimentResult:
    """Measure all variants of one experiment and (by default) log parent + child runs to MLflow."""
    from foodlab.devices import resolve_device

    if scale not in SCALES:
        raise ExperimentError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    exp = load_experiment(path_or_dict)
    dev = resolve_device(device)
    env = environment_params(dev)
    if log_to_mlflow:
        from foodlab import tracking
        tracking.configure()  # fail before spending minutes measuring when the server is down
    start = time.perf_counter()
    records, raw = measure(exp, scale, str(dev))
    result = ExperimentResult(experiment=exp, scale=scale, device=env["device"], device_name=env["device_name"],
                              records=records, wall_s=time.perf_counter() - start, raw_records=raw)
    if log_to_mlflow:
        _log(exp, result, env)
    log.info("%s done in %.1f s", exp.name, result.wall_s)
    return result


def run_all(scale: str = "smoke", device: str = "auto", folder: str | Path | None = None,
            log_to_mlflow: bool = True, names: list[str] | None = None) -> list[ExperimentResult]:
    """Every experiment file in ``folder`` (or those in ``names``), one after the other."""
    from tqdm.auto import tqdm

    paths = [p for p in experiment_files(folder) if names is None or p.stem in names]
    return [run_experiment(p, scale, device, log_to_mlflow) for p in tqdm(paths, desc="experiments", unit="exp")]
