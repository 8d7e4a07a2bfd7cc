"""Log one experiment to MLflow while it is measured: the parent run first, children as they arrive.

The parent run is started before anything is measured (so the UI shows the experiment running and
the store's schema and experiment exist before minutes are spent); each group of variants is
logged as child runs the moment its ``run()`` returns, and ``results.json`` on the parent is
rewritten after each group, so a crash late in an experiment keeps what was measured. Ratios,
their intervals and the noisy verdict are logged when the last group is in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

# record params copied into every child run under these names when the benchmark reports them
COMMON_PARAMS = ("batch_size", "image_size", "num_workers", "n_images")


class RunLogger:
    """Logs one experiment to MLflow while it is measured: parent first, children as they arrive."""

    def __init__(self, exp, result, env: dict[str, str]):
        from foodlab import tracking

        self.tracking, self.exp, self.result, self.env = tracking, exp, result, env
        self.base_tags = {"foodlab.experiment": exp.name, "foodlab.scale": result.scale,
                          "foodlab.git_commit": tracking.git_commit(), **result.machine}

    def start_parent(self):
        exp = self.exp
        return self.tracking.start_run(exp.mlflow_experiment,
                                       run_name=f"{exp.name}-{self.result.scale}-{self.env['device']}",
                                       tags={**self.base_tags, "foodlab.role": "parent"})

    def log_parent_params(self, parent) -> None:
        exp, t = self.exp, self.tracking
        self.result.parent_run_id = parent.info.run_id
        t.log_params({
            "experiment": exp.name, "benchmark": exp.benchmark, "scale": self.result.scale,
            "baseline": exp.baseline, "candidates": ",".join(exp.candidates),
            "compare_metrics": ",".join(exp.metrics), "variants": ",".join(v.name for v in exp.variants),
            **self.env, **{f"override.{k}": v for k, v in exp.overrides_for(self.result.scale).items()},
        })
        if exp.description:
            t.set_tags({"mlflow.note.content": exp.description})
        if Path(exp.source).exists():
            t.log_artifact(exp.source)

    def log_threads(self) -> None:
        """The torch thread count chosen for measuring, on the parent (param and tag) and on every child."""
        n = str(self.result.torch_threads)
        self.base_tags["foodlab.torch_threads"] = n
        self.tracking.log_params({"torch_threads": n})
        self.tracking.set_tags({"foodlab.torch_threads": n})

    def log_children(self, records: list[dict[str, Any]]) -> None:
        from foodlab.bench.compare import NOISY_RELATIVE_SPREAD, spread

        exp, t = self.exp, self.tracking
        for rec in records:
            role = "baseline" if rec["variant"] == exp.baseline else (
                "candidate" if rec["variant"] in exp.candidates else "variant")
            unsteady = {k: spread(v)["relative_spread"] for k, v in rec.get("samples", {}).items() if len(v) >= 2}
            unsteady = {k: v for k, v in unsteady.items() if v > NOISY_RELATIVE_SPREAD}
            noisy = "; ".join(f"{k} varied {v:.0%} across rounds" for k, v in unsteady.items())
            with t.start_run(exp.mlflow_experiment, run_name=rec["variant"], nested=True,
                             tags={**self.base_tags, "foodlab.role": role, "foodlab.variant": rec["variant"],
                                   "foodlab.noisy": "true" if noisy else "false",
                                   **({"foodlab.noise_reason": noisy} if noisy else {})}) as child:
                self.result.child_run_ids[rec["variant"]] = child.info.run_id
                p = rec["params"]
                t.log_params({"variant": rec["variant"], **self.env,
                              **{k: p.get(k, "n/a") for k in COMMON_PARAMS}, **p})
                t.log_metrics({k: v for k, v in rec["metrics"].items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool)})
                for metric, values in rec.get("samples", {}).items():  # one point per round: the UI charts them
                    for i, value in enumerate(values):
                        t.log_metrics({f"round.{metric}": value}, step=i)

    def write_results(self) -> None:
        """results.json on the parent, rewritten as records arrive (a crash keeps what was measured)."""
        r = self.result
        self.tracking.log_dict({"records": r.records, "comparisons": r.comparisons() if _complete(r) else [],
                                "all_records": r.raw_records, "load": r.load, "machine": r.machine,
                                "torch_threads": r.torch_threads},
                               "results.json")

    def finish(self) -> None:
        r, t = self.result, self.tracking
        rows = r.comparisons()
        for row in rows:
            key = f"{row['metric']}.{row['after']}"
            t.log_metrics({f"{key}.ratio": row["ratio"], f"{key}.ratio_p10": row["ratio_low"],
                           f"{key}.ratio_p90": row["ratio_high"]})
            if row["noisy"]:
                t.set_tags({f"foodlab.noisy.{key}": row["noisy"]})
        t.log_metrics({"wall_s": r.wall_s, **{f"load.{k}": v for k, v in r.load.items() if k != "noisy"}})
        noisy = r.busy or ("; ".join(sorted({row["noisy"] for row in rows if row["noisy"]})))
        t.set_tags({"foodlab.noisy": "true" if noisy else "false", **({"foodlab.noise_reason": noisy} if noisy else {}),
                    **({"foodlab.busy": r.busy} if r.busy else {})})
        self.write_results()


def _complete(result) -> bool:
    return {v.name for v in result.experiment.variants} <= {r["variant"] for r in result.records}
