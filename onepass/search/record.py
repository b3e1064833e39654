"""The record of a search: one row per evaluation (a finished inner run, or a trial's report), the best so far
by validation loss, and the search's outputs (evaluations.csv, history.csv, metrics.json).

evaluations.csv: evaluation (row index), trial (0, 1, ... in order of first report), run_seed, hyper_step
and weight_steps of the reported run state, its lr / weight_decay / momentum then, its losses (NaN when
diverged), score (what the search was told), wall_time_s (training time of that run state; for PBT
including the states it copied), cumulative_time_s (since the search started), cumulative_weight_steps and
cumulative_hyper_steps (steps trained by the whole search so far), best_valid_loss and best_test_metric
(of the best evaluation by validation loss so far), min_test_metric (BayesOpt: the lowest test metric of
the evaluation at any weight step, its initial and final weights included; ASHA/PBT: the report's test
metric).

metrics.json also holds the paper's statistics of a search (:func:`paper_test_metrics`), which the tables
show beside the test metric at the best validation loss.
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

from ..records import atomic_write, task_metrics, versions, write_history, write_metrics
from ..settings import HYPERPARAMETERS

EVALUATION_COLUMNS = [
    "evaluation", "trial", "run_seed", "hyper_step", "weight_steps", *HYPERPARAMETERS,
    "train_loss", "valid_loss", "test_loss", "test_metric", "test_accuracy", "test_perplexity", "diverged",
    "score", "wall_time_s", "cumulative_time_s", "cumulative_weight_steps", "cumulative_hyper_steps",
    "best_valid_loss", "best_test_metric", "min_test_metric"]
PAPER_STATISTICS = {
    "bayesopt": "best test seen",       # per repetition: the lowest test metric logged by any evaluation
    "asha": "finished trials",          # every trial that ran to the end: its final test metric
    "pbt": "finished trials",
}
NAN = float("nan")


def number(x) -> float:
    """A metric as a float (NaN for None)."""
    return NAN if x is None else float(x)


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def add_evaluation(rows: list[dict], row: dict) -> dict:
    """Append ``row`` with its index, cumulative steps and the best-so-far columns (by validation loss)."""
    prev = rows[-1] if rows else None
    row["evaluation"] = len(rows)
    row["cumulative_weight_steps"] = (prev["cumulative_weight_steps"] if prev else 0) + row.pop("new_weight_steps")
    row["cumulative_hyper_steps"] = (prev["cumulative_hyper_steps"] if prev else 0) + row.pop("new_hyper_steps")
    best = best_index(rows + [row])
    row["best_valid_loss"] = NAN if best is None else (rows + [row])[best]["valid_loss"]
    row["best_test_metric"] = NAN if best is None else (rows + [row])[best]["test_metric"]
    rows.append(row)
    return row


def best_index(rows: list[dict]) -> int | None:
    """Index of the non-diverged row with the lowest finite validation loss (the first on ties)."""
    best = None
    for i, row in enumerate(rows):
        if row["diverged"] or not _finite(row["valid_loss"]):
            continue
        if best is None or row["valid_loss"] < rows[best]["valid_loss"]:
            best = i
    return best


def _finite_min(values) -> float:
    values = [v for v in values if _finite(v)]
    return min(values) if values else NAN


def paper_test_metrics(rows: list[dict], search: str, hyperparameter_steps: int) -> list[float]:
    """The values behind the paper's statistic of one search (:data:`PAPER_STATISTICS`).

    BayesOpt: one value, the running minimum of the test metric over every weight step of every evaluation
    (``min_test_metric``; optimistic: selected on the test set). ASHA/PBT: the final test metric of every
    trial whose last report is at the end of the run (``hyperparameter_steps``), NaN for one that had diverged,
    in trial order."""
    if search == "bayesopt":
        return [_finite_min(r.get("min_test_metric", r["test_metric"]) for r in rows)]
    last: dict = {}
    for row in rows:
        last[row["trial"]] = row
    return [NAN if r["diverged"] else float(r["test_metric"]) for _, r in sorted(last.items())
            if r["hyper_step"] >= hyperparameter_steps]


def write_evaluations(path: Path, rows: list[dict]) -> None:
    def fmt(v):
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, float):
            return repr(v)
        return "" if v is None else v

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, EVALUATION_COLUMNS)
            w.writeheader()
            for row in rows:
                w.writerow({k: fmt(row.get(k)) for k in EVALUATION_COLUMNS})
    atomic_write(path, write)


def search_history(rows: list[dict]) -> list[dict]:
    """history.csv rows: per evaluation, the best-so-far evaluation's values against cumulative budget."""
    out = []
    for i, row in enumerate(rows):
        best = best_index(rows[:i + 1])
        b = rows[best] if best is not None else {}
        out.append({"step": row["cumulative_weight_steps"], "hyper_step": row["cumulative_hyper_steps"],
                    "time_s": row["cumulative_time_s"],
                    **{k: b.get(k, NAN) for k in ("train_loss", "valid_loss", "test_loss", "test_metric",
                                                   *HYPERPARAMETERS)}})
    return out


def finish(out: Path, rows: list[dict], base: dict, task: str, settings: dict, search_time: float,
           wall_start: float, device: str, extra_versions: dict, search: str | None = None) -> dict:
    """Write evaluations.csv, history.csv and metrics.json; return the metrics (with ``search``, the paper's
    statistic: ``paper_statistic`` and ``paper_test_metrics``)."""
    write_evaluations(out / "evaluations.csv", rows)
    write_history(out / "history.csv", search_history(rows))
    best = best_index(rows)
    b = rows[best] if best is not None else {}
    metrics = dict(base)
    metrics.update({f"final_{k}": b.get(k, NAN) for k in HYPERPARAMETERS})
    metrics.update({k: b.get(k, NAN) for k in ("train_loss", "valid_loss", "test_loss", "test_metric")})
    metrics.update({
        **task_metrics(task, b.get("test_metric", NAN), b.get("test_accuracy"), b.get("test_perplexity")),
        "weight_steps": rows[-1]["cumulative_weight_steps"] if rows else 0,
        "hyperparameter_steps": rows[-1]["cumulative_hyper_steps"] if rows else 0,
        "train_time_s": search_time, "wall_time_s": time.perf_counter() - wall_start, "device": device,
        "diverged": best is None, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "versions": versions(**extra_versions), "settings": settings,
        "evaluations": len(rows), "diverged_evaluations": sum(bool(r["diverged"]) for r in rows),
        "best_evaluation": best, "inner_algorithm": settings["search_inner_algorithm"]})
    if search is not None:
        total = (base.get("inner_settings") or {}).get("hyperparameter_steps", settings.get("hyperparameter_steps"))
        metrics.update(paper_statistic=PAPER_STATISTICS[search],
                       paper_test_metrics=paper_test_metrics(rows, search, total))
    write_metrics(out / "metrics.json", metrics)
    return metrics
