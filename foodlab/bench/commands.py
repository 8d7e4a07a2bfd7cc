"""CLI: ``foodlab bench``, ``foodlab run``, ``foodlab report``, ``foodlab ui``.

Heavy imports (torch, mlflow, matplotlib) happen inside the handlers so ``foodlab --help``
stays fast. User errors are raised as ``foodlab.errors.UsageError``/``FoodlabError`` with a
one-line message; ``foodlab.cli.main`` prints them.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from foodlab.bench.settings import SCALES
from foodlab.errors import FoodlabError, UsageError

log = logging.getLogger(__name__)

# ``foodlab bench <name>`` -> the benchmark module whose experiment files it runs
BENCH_NAMES = {"init": "init_time", "throughput": "throughput", "loader": "loader",
               "precision": "precision", "memory": "memory", "quality": "quality",
               "inference": "inference"}
DEVICES = ("auto", "cpu", "cuda", "mps")


def _device_and_scale(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=DEVICES, help="default: the best available (cuda > mps > cpu)")
    p.add_argument("--scale", default="default", choices=SCALES,
                   help="smoke: seconds (tests); default: the ~14 min suite on a 2-core CPU; full: real sizes")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="torch threads to measure with (default on CPU: the cores other processes leave free)")


def add_commands(sub) -> None:
    bench = sub.add_parser("bench", help="run before/after benchmarks and log them to MLflow")
    bench.add_argument("which", choices=[*BENCH_NAMES, "all", "stress"],
                       help="which benchmark (all: every experiment file; stress: the training-step ratios "
                            "idle and under a CPU hog, side by side)")
    _device_and_scale(bench)
    _threads(bench)
    bench.add_argument("--json", action="store_true", help="also print the records as JSON")
    bench.add_argument("--no-mlflow", action="store_true", help="measure and print only, log nothing")
    bench.add_argument("--experiment", action="append", metavar="NAME",
                       help="only these experiment files (stem, e.g. dataset_init); repeatable")
    bench.set_defaults(func=cmd_bench)

    run = sub.add_parser("run", help="run one experiment file (experiments/<name>.yaml)")
    run.add_argument("experiment", help="path to an experiment YAML, or its name in experiments/")
    _device_and_scale(run)
    _threads(run)
    run.add_argument("--json", action="store_true", help="also print the records as JSON")
    run.add_argument("--no-mlflow", action="store_true", help="measure and print only, log nothing")
    run.set_defaults(func=cmd_run)

    report = sub.add_parser("report", help="before/after summary (Markdown + PNG) from the runs in MLflow")
    report.add_argument("--experiment", action="append", metavar="NAME",
                        help="experiment name (dataset_init or foodlab-dataset_init); repeatable; default: all")
    report.add_argument("--device", default=None, choices=["cpu", "cuda", "mps"],
                        help="only runs measured on this device type (default: the latest runs)")
    report.add_argument("--scale", default=None, choices=SCALES, help="only runs at this scale (default: the latest)")
    report.add_argument("--out", default=None, help="output folder (default: experiments/results/<device-slug>)")
    report.set_defaults(func=cmd_report)

    ui = sub.add_parser("ui", help="start the MLflow UI on the project's tracking store")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)


def _print_results(results, as_json: bool) -> None:
    for res in results:
        exp = res.experiment
        print(f"\n== {exp.name} ({exp.benchmark}, scale={res.scale}, {res.device_name}) — {res.wall_s:.1f} s")
        print(res.table())
        if as_json:
            print(json.dumps({"experiment": exp.name, "scale": res.scale, "device": res.device,
                              "device_name": res.device_name, "parent_run_id": res.parent_run_id,
                              "load": res.load, "machine": res.machine, "torch_threads": res.torch_threads,
                              "records": res.records},
                             indent=2, default=str))


def _print_summary(results, logged: bool, port: int = 5000) -> None:
    from foodlab.bench.report import markdown_table, threads_text

    rows = [row for res in results for row in res.comparisons()]
    if rows:
        print("\n## Before / after\n")
        print(markdown_table(rows, results[0].device_name, results[0].machine.get("foodlab.precision_features"),
                             threads_text({res.experiment.name: res.torch_threads for res in results})))
    if logged:
        from foodlab import tracking

        print(f"\nLogged to {tracking.tracking_uri()}. Open the runs table with `make ui` "
              f"(or `foodlab ui`), then:")
        for res in results:
            name = res.experiment.mlflow_experiment
            print(f"  {name:<28} {tracking.ui_url(name, port=port)}")
        print(f"Write the Markdown/PNG report with `foodlab report --scale {results[0].scale}` "
              "(into experiments/results/<device>/).")


def _experiments_for(which: str, only: list[str] | None):
    from foodlab.bench.runner import experiment_files, load_experiment

    files = experiment_files()
    unknown = sorted(set(only or []) - {p.stem for p in files})
    if unknown:
        raise UsageError(f"--experiment: no experiment file named {', '.join(unknown)} in experiments/ "
                         f"(there are: {', '.join(p.stem for p in files)})")
    paths = [p for p in files if only is None or p.stem in only]
    if which != "all":
        paths = [p for p in paths if load_experiment(p).benchmark == BENCH_NAMES[which]]
    return paths


def cmd_bench(args) -> int:
    from foodlab.bench.runner import run_experiment

    if args.which == "stress":
        from foodlab.bench.stress import format_stress, run_stress

        print(format_stress(run_stress(args.scale, args.device, threads=args.threads)))
        return 0
    paths = _experiments_for(args.which, args.experiment)
    if not paths:
        raise UsageError(f"no experiment file in experiments/ uses benchmark {args.which!r}"
                         + (f" among {', '.join(args.experiment)}" if args.experiment else ""))
    results = []
    for path in paths:
        results.append(run_experiment(path, args.scale, args.device, log_to_mlflow=not args.no_mlflow,
                                      threads=args.threads))
        _print_results(results[-1:], args.json)
    _print_summary(results, logged=not args.no_mlflow)
    return 0


def cmd_run(args) -> int:
    from foodlab.bench.runner import run_experiment

    result = run_experiment(args.experiment, args.scale, args.device, log_to_mlflow=not args.no_mlflow,
                            threads=args.threads)
    _print_results([result], args.json)
    _print_summary([result], logged=not args.no_mlflow)
    return 0


def cmd_report(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from foodlab.bench.report import (
        machine_from_mlflow,
        markdown_table,
        rows_from_mlflow,
        threads_from_mlflow,
        write_report,
    )

    rows, device_name = rows_from_mlflow(args.experiment, device=args.device, scale=args.scale)
    if not rows:
        raise FoodlabError("no foodlab benchmark runs found in the tracking store; run `foodlab bench all` first")
    features = machine_from_mlflow(args.experiment, args.device, args.scale)
    threads = threads_from_mlflow(args.experiment, args.device, args.scale)
    out = write_report(rows, device_name, args.out, features=features, threads=threads)
    print(markdown_table(rows, device_name, features, threads))
    print(f"\nwrote {out / 'summary.md'} and {out / 'summary.png'}")
    return 0


def ui_command(host: str, port: int, backend_uri: str) -> list[str]:
    """The ``mlflow server`` command line for the project's tracking store (loopback by default)."""
    return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
            "--backend-store-uri", backend_uri, "--workers", "1"]


def ensure_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on (mlflow server would wait, then exit 0)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UsageError(f"port {port} on {host} is in use ({exc.strerror}); stop what runs there "
                             f"or pick another with --port") from None


def cmd_ui(args) -> int:
    import subprocess

    from foodlab import tracking

    uri = tracking.configure()
    if uri.startswith(("http://", "https://")):
        print(f"MLFLOW_TRACKING_URI points at a server already: open {uri}")
        return 0
    ensure_port_free(args.host, args.port)
    from foodlab.bench.runner import experiment_files

    print(f"MLflow UI on http://{args.host}:{args.port} (store: {uri}). Runs tables per experiment:")
    for path in experiment_files():
        name = f"foodlab-{path.stem}"
        url = tracking.ui_url(name, args.host, args.port)
        print(f"  {name:<28} {url if '#/experiments/' in url else '(not run yet: foodlab run ' + path.stem + ')'}")
    print("Compare the child runs of the latest parent run: columns params.variant, "
          "metrics.init_s / step_time_median_s / images_per_s / peak_memory_mb. Ctrl-C stops the UI.")
    proc = subprocess.Popen(ui_command(args.host, args.port, uri))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
