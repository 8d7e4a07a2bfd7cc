"""``foodlab bench stress``: do the ratios hold when the machine is busy?

Runs the training-step experiments twice in this process at a small scale, first on the machine
as it is, then with a CPU hog this module starts itself (one spinning process per core, each
stopping on its own at a deadline, and stopped when measuring ends), and prints each before/after
ratio of both runs side by side. Interleaved measuring, with torch threads on the cores the hog
leaves free (``foodlab.bench.threads``), should keep the ratios within ``AGREE_WITHIN`` of each
other although every absolute time grows under the hog. A benchmark, not a test: numbers come
from running it on a real machine.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import time
from dataclasses import dataclass
from typing import Any, Mapping

from foodlab.bench import noise
from foodlab.errors import FoodlabError

log = logging.getLogger(__name__)

EXPERIMENTS = ("training_step", "precision")
AGREE_WITHIN = 0.25
HOG_MAX_S = 1800.0  # a hog never outlives this, even if its parent is killed


def _spin(deadline: float, ready=None) -> None:
    """Burn one core until ``deadline`` (time.time), then exit by itself; says so on ``ready`` first."""
    if ready is not None:
        ready.put(os.getpid())
    x = 0
    while time.time() < deadline:
        x = (x * 1103515245 + 12345) % 2**31


class CpuHog:
    """``with CpuHog(processes, max_s):`` keeps ``processes`` cores busy; bounded and self-stopping."""

    def __init__(self, processes: int | None = None, max_s: float = HOG_MAX_S):
        self.processes, self.max_s = processes or os.cpu_count() or 1, max_s
        self.procs: list[mp.process.BaseProcess] = []  # the hog processes (alive while spinning)

    def __enter__(self) -> CpuHog:
        ctx = mp.get_context("spawn")
        deadline = time.time() + self.max_s
        ready = ctx.Queue()
        self.procs = [ctx.Process(target=_spin, args=(deadline, ready), daemon=True) for _ in range(self.processes)]
        for p in self.procs:
            p.start()
        give_up = time.monotonic() + 60
        try:
            for _ in self.procs:  # spinning before measuring starts
                ready.get(timeout=max(0.1, give_up - time.monotonic()))
        except queue.Empty:
            self.__exit__()
            raise FoodlabError("stress: the CPU hog processes did not start within 60 s") from None
        finally:
            ready.close()
        noise.count_as_others([p.pid for p in self.procs])   # the machine is busy, and the report must say so
        log.info("stress: %d hog processes spinning (at most %.0f s)", self.processes, self.max_s)
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join(timeout=10)
        noise.stop_counting_as_others([p.pid for p in self.procs])


@dataclass
class StressRow:
    experiment: str
    metric: str
    before: str
    after: str
    idle: dict[str, Any]
    loaded: dict[str, Any]

    @property
    def change(self) -> float | None:
        """Loaded ratio / idle ratio - 1 (0 means the finding held exactly)."""
        if not self.idle.get("ratio") or not self.loaded.get("ratio"):
            return None
        return self.loaded["ratio"] / self.idle["ratio"] - 1

    @property
    def agrees(self) -> bool:
        return self.change is not None and abs(self.change) <= AGREE_WITHIN


def pair_rows(idle_rows: list[dict], loaded_rows: list[dict]) -> list[StressRow]:
    """Match each comparison row of the idle run with the same row of the loaded run."""
    loaded = {(r["experiment"], r["metric"], r["before"], r["after"]): r for r in loaded_rows}
    return [StressRow(r["experiment"], r["metric"], r["before"], r["after"], r,
                      loaded.get((r["experiment"], r["metric"], r["before"], r["after"]), {}))
            for r in idle_rows]


def run_stress(scale: str = "smoke", device: str = "auto", experiments: tuple[str | Mapping, ...] | None = None,
               hog_processes: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Measure ``experiments`` (default: ``EXPERIMENTS``) idle, then under a CPU hog; both results and paired rows.

    On a CPU both runs measure with the thread count a benchmark picks under the hog (the cores it
    leaves free, ``foodlab.bench.threads.choose``), so that the load is the only thing the two
    runs differ in: how a model scales from one thread count to another is a property of the model,
    not a fluke of the load, and would otherwise be mixed into the verdict. ``threads`` pins another
    count; on CUDA/MPS torch's own count is kept in both.
    """
    from foodlab.bench.runner import load_experiment, run_experiment
    from foodlab.bench.threads import choose
    from foodlab.devices import resolve_device

    experiments = EXPERIMENTS if experiments is None else experiments
    loaded_exps = [load_experiment(e) for e in experiments]  # a bad file fails before any measuring
    hog_processes = hog_processes or os.cpu_count() or 1
    threads = choose(resolve_device(device), hog_processes, os.cpu_count() or 1, threads)  # what the hog leaves
    idle = [run_experiment(e, scale, device, log_to_mlflow=False, threads=threads) for e in experiments]
    with CpuHog(hog_processes):
        loaded = [run_experiment(e, scale, device, log_to_mlflow=False, threads=threads) for e in experiments]
    rows = pair_rows([r for res in idle for r in res.comparisons()], [r for res in loaded for r in res.comparisons()])
    return {"experiments": [e.name for e in loaded_exps], "idle": idle, "loaded": loaded, "rows": rows}


def format_stress(outcome: dict[str, Any]) -> str:
    from foodlab.bench.compare import times

    def ratio(r: dict) -> str:
        if not r.get("ratio"):
            return "n/a"
        band = f" [{times(r['ratio_low'])}-{times(r['ratio_high'])}]" if r.get("ratio_low") is not None else ""
        return f"{times(r['ratio'])}{band}"

    first = outcome["idle"][0] if outcome["idle"] else None
    lines = []
    if first is not None:
        lines.append(f"machine: {first.device_name} ({first.machine.get('foodlab.precision_features', '?')}); "
                     f"scale {first.scale}")
    for label, results in (("idle", outcome["idle"]), ("hog", outcome["loaded"])):
        for res in results:
            if res.load:
                lines.append(f"{label:<5} {res.experiment.name}: other processes used "
                             f"{res.load['other_cores_during']:.1f} of {res.load['cpus']} cores; "
                             f"measured with {res.torch_threads} torch threads")
    head = f"{'comparison':<58} {'idle':>22} {'under hog':>22} {'change':>8}  verdict"
    lines += ["", head, "-" * len(head)]
    for row in outcome["rows"]:
        label = f"{row.experiment}: {row.metric} ({row.before} -> {row.after})"
        change = f"{row.change:+.0%}" if row.change is not None else "n/a"
        verdict = "holds" if row.agrees else f"DIFFERS by more than {AGREE_WITHIN:.0%}"
        lines.append(f"{label:<58} {ratio(row.idle):>22} {ratio(row.loaded):>22} {change:>8}  {verdict}")
    return "\n".join(lines)
