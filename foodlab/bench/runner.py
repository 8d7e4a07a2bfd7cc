"""Run declarative before/after experiments (``experiments/*.yaml``) and log them to MLflow as they go.

An experiment file names one benchmark module (``foodlab.bench.<benchmark>``), the
variants to measure, which one is the "before" (``baseline``) and which are the
"after" (``candidates``), and which metrics to compare. Every benchmark module has the same
``run(scale, device, variants, **settings)``, its settings per scale (``SCALES``, ``DEFAULTS``),
the variants it measures (``VARIANTS``) and the metrics it can report (``METRICS``); the file is
checked against them when it is loaded, so a typo fails before anything is measured.

The parent MLflow run (experiment ``foodlab-<name>``) starts before measuring; each group of
variants measured by one ``run()`` call (variants interleaved in rounds) is logged as child runs
as soon as it is measured, and ``results.json`` on the parent is rewritten after each group.
The machine's load is watched while measuring (``foodlab.bench.noise``); a busy machine or an
unsteady variant marks the result noisy. Schema (unknown keys are errors)::

    name: dataset_init                 # optional; defaults to the file stem
    description: decode vs stat vs manifest
    benchmark: init_time               # foodlab.bench.init_time
    baseline: decode                   # the "before" variant
    candidates: [stat, manifest_reopen]  # the "after" variant(s)
    metrics: [init_s]                  # compared in the summary table (direction from the name)
    overrides: {}                      # settings passed to run() at every scale
    scales: {full: {n: 1000}}          # only what differs from the module's own scale table
    variants:                          # names of the records run() returns, optionally with
      - decode                         # their own settings (one run() call per distinct set)
      - {name: fp32_big, overrides: {batch_size: 16}, record: fp32}
"""
from __future__ import annotations

import importlib
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from foodlab.bench.compare import comparisons
from foodlab.bench.settings import EXPERIMENTS_DIR, SCALES, check_overrides
from foodlab.errors import UsageError

log = logging.getLogger(__name__)

BENCHMARKS = ("init_time", "throughput", "loader", "precision", "memory", "quality", "inference")
TOP_KEYS = {"name", "description", "benchmark", "baseline", "candidates", "metrics", "overrides", "scales", "variants"}
VARIANT_KEYS = {"name", "overrides", "record", "description"}


class ExperimentError(UsageError):
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
    load: dict[str, Any] = field(default_factory=dict)  # foodlab.bench.noise.Load.as_dict()
    machine: dict[str, str] = field(default_factory=dict)  # foodlab.bench.machine.machine_tags()
    torch_threads: int | None = None  # the torch thread count measured with (foodlab.bench.threads)

    @property
    def busy(self) -> str:
        """Why the machine was too busy to trust any row, or ""."""
        return str(self.load.get("noisy", ""))

    def record(self, variant: str) -> dict[str, Any]:
        return next(r for r in self.records if r["variant"] == variant)

    def comparisons(self) -> list[dict[str, Any]]:
        """Before/after rows (with interval and noisy reason) for every candidate x compared metric."""
        exp = self.experiment
        return comparisons(exp.name, exp.baseline, exp.candidates, exp.metrics,
                           {r["variant"]: r for r in self.records}, noisy=self.busy)

    def table(self) -> str:
        """The benchmark's own table of what it measured, with the machine and its load underneath."""
        module = benchmark_module(self.experiment.benchmark)
        lines = [module.format_table(self.raw_records or self.records)]
        if self.load:
            lines.append(f"load: {self.load['other_cores_during']:.2f} of {self.load['cpus']} cores used by other "
                         f"processes while measuring, load average {self.load['load1_before']:.2f} before"
                         + (f"; measured with {self.torch_threads} torch threads" if self.torch_threads else ""))
        noisy = [r for r in self.comparisons() if r["noisy"]]
        if noisy:
            lines.append(f"NOISY ({len(noisy)} of {len(self.comparisons())} comparisons): "
                         + "; ".join(sorted({r['noisy'] for r in noisy})) + " -- re-run on a quiet machine")
        return "\n".join(lines)


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


def _check_against_module(exp: Experiment) -> None:
    """Variants, metrics and every override against what the benchmark module declares."""
    module = benchmark_module(exp.benchmark)
    known = getattr(module, "VARIANTS", None)
    if known is not None:
        bad = [v.record for v in exp.variants if v.record not in known]
        if bad:
            raise _fail(exp.source, f"unknown variant(s) {', '.join(bad)} for benchmark {exp.benchmark} "
                                    f"(it measures: {', '.join(known)})")
    reported = getattr(module, "METRICS", None)
    if reported is not None:
        bad = [m for m in exp.metrics if m not in reported]
        if bad:
            raise _fail(exp.source, f"metrics: no variant of {exp.benchmark} reports {', '.join(bad)} "
                                    f"(it reports: {', '.join(reported)})")
    scales, defaults = getattr(module, "SCALES", None), getattr(module, "DEFAULTS", {})
    if scales is None:
        return
    try:
        check_overrides(exp.benchmark, scales, exp.overrides, defaults, where=f"{exp.source} overrides")
        for scale, table in exp.scales.items():
            check_overrides(exp.benchmark, scales, table, defaults, where=f"{exp.source} scales.{scale}")
        for v in exp.variants:
            check_overrides(exp.benchmark, scales, v.overrides, defaults, where=f"{exp.source} variant {v.name}")
    except UsageError as exc:
        raise ExperimentError(str(exc)) from None


def parse_experiment(raw: Mapping[str, Any], source: str = "<dict>") -> Experiment:
    """Validate an experiment mapping against the schema and its benchmark; errors name file and key."""
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
    exp = Experiment(
        name=name, benchmark=benchmark, baseline=baseline, candidates=candidates,
        metrics=_as_list(raw["metrics"], source, "metrics"), variants=variants,
        description=str(raw.get("description", "")).strip(),
        overrides=_mapping(raw.get("overrides"), source, "overrides"), scales=scales, source=source,
    )
    _check_against_module(exp)
    return exp


def load_experiment(path_or_dict: str | Path | Mapping[str, Any]) -> Experiment:
    """An Experiment from a YAML path, a bare name in ``experiments/``, or a mapping."""
    if isinstance(path_or_dict, Mapping):
        return parse_experiment(path_or_dict)
    path = Path(path_or_dict)
    if not path.exists() and not path.suffix:
        path = Path(EXPERIMENTS_DIR) / f"{path}.yaml"
    if not path.exists():
        known = ", ".join(p.stem for p in experiment_files())
        raise ExperimentError(f"experiment file {path} does not exist (experiments/ has: {known})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ExperimentError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    return parse_experiment(raw or {}, source=str(path))


def experiment_files(folder: str | Path | None = None) -> list[Path]:
    return sorted(Path(folder or EXPERIMENTS_DIR).glob("*.yaml"))


def measure_groups(exp: Experiment, scale: str, device: str
                   ) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Measure the variants one ``run()`` call (one set of overrides) at a time, yielding as each ends.

    Yields (one record per experiment variant of the group, every record the benchmark returned).
    """
    module = benchmark_module(exp.benchmark)
    groups: dict[str, list[Variant]] = {}
    for v in exp.variants:
        groups.setdefault(json.dumps(v.overrides, sort_keys=True, default=str), []).append(v)
    for group in groups.values():
        settings = {**exp.overrides_for(scale), **group[0].overrides}
        wanted = list(dict.fromkeys(v.record for v in group))
        log.info("%s: measuring %s at scale %s on %s", exp.name, ", ".join(v.name for v in group), scale, device)
        got = module.run(scale, device, wanted, **settings)
        by_name: dict[str, dict[str, Any]] = {}
        for r in got:  # several records per variant (e.g. one per precision): the selected one wins
            if r["variant"] not in by_name or r.get("params", {}).get("selected"):
                by_name[r["variant"]] = r
        records = []
        for v in group:
            rec = by_name.get(v.record)
            if rec is None:
                raise _fail(exp.source, f"unknown variant {v.record!r}: benchmark {exp.benchmark} returned "
                                        f"{', '.join(by_name) or 'nothing'}")
            records.append({
                "variant": v.name,
                "params": {**dict(rec.get("params", {})), "bench_variant": rec["variant"],
                           **{f"override.{k}": val for k, val in group[0].overrides.items()}},
                "metrics": dict(rec.get("metrics", {})),
                "samples": dict(rec.get("samples", {})),
            })
        yield records, got


def environment_params(device) -> dict[str, str]:
    import torch

    import foodlab
    from foodlab.devices import device_name

    return {"device": device.type, "device_name": device_name(device), "torch_version": torch.__version__,
            "foodlab_version": foodlab.__version__, "python_version": platform.python_version()}


def run_experiment(path_or_dict: str | Path | Mapping[str, Any], scale: str = "smoke", device: str = "auto",
                   log_to_mlflow: bool = True, threads: int | None = None) -> ExperimentResult:
    """Measure all variants of one experiment, logging the parent run first and each child as it is measured.

    ``threads``: torch threads to measure with; None means the cores other processes leave free on
    CPU (``foodlab.bench.threads``), torch's own count on CUDA/MPS.
    """
    import contextlib

    from foodlab.bench import threads as torch_threads
    from foodlab.bench.machine import machine_tags
    from foodlab.bench.noise import LoadMonitor
    from foodlab.bench.runlog import RunLogger
    from foodlab.devices import resolve_device

    if scale not in SCALES:
        raise ExperimentError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    exp = load_experiment(path_or_dict)
    torch_threads.check_requested(threads)
    dev = resolve_device(device)
    env = environment_params(dev)
    result = ExperimentResult(experiment=exp, scale=scale, device=env["device"], device_name=env["device_name"],
                              records=[], wall_s=0.0, machine=machine_tags(dev))
    logger = None
    with contextlib.ExitStack() as stack:
        if log_to_mlflow:
            from foodlab import tracking

            tracking.configure()  # fail before spending minutes measuring when the server is down
            logger = RunLogger(exp, result, env)
            logger.log_parent_params(stack.enter_context(logger.start_parent()))
        start = time.perf_counter()
        with LoadMonitor() as monitor:
            result.torch_threads = torch_threads.choose(dev, monitor.other_cores_before, monitor.cpus, threads)
            if logger:
                logger.log_threads()
            with torch_threads.torch_threads(result.torch_threads):
                for group, got in measure_groups(exp, scale, str(dev)):
                    result.records += group
                    result.raw_records += got
                    if logger:
                        logger.log_children(group)
                        logger.write_results()
        result.wall_s = time.perf_counter() - start
        result.load = monitor.load.as_dict()
        order = [v.name for v in exp.variants]
        result.records.sort(key=lambda r: order.index(r["variant"]))
        if logger:
            logger.finish()
    log.info("%s done in %.1f s%s", exp.name, result.wall_s, f" (noisy: {result.busy})" if result.busy else "")
    return result
