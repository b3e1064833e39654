"""The model of a collected study: every planned run of a dataset read into one table (``runs.tsv``), with
its status, and the run directories behind it.

A run is ``done``, ``diverged``, ``missing`` (no metrics.json) or ``stale``: its metrics.json records other
settings or another initialisation than the plan (say, left over from an earlier config). Stale runs are
reported in the status line and never enter a statistic.

Two columns are derived rather than copied: ``best_test_metric``, the lowest finite test metric of the run's
whole logged trajectory (history.csv, the final value and, where recorded, the running minimum
``min_test_metric``), the paper's Best column (its paper_plots.py:448 takes ``nanmin`` over every run's test
trajectory, figures.py:508-520); and ``over_threshold``, whether a run trained under
``divergence_check: post_hoc`` ended with a test metric at or above its ``divergence_threshold`` (the paper's
Fashion-MNIST rule, paper_plots.py:54-76, figures.py:525-526: such a run is left out of the loss tables and
figures, but not of the test-error tables).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from . import paths, plans
from .settings import HYPERPARAMETERS

# metrics.json fields copied into runs.tsv, in this order.
FIELDS = [
    *(f"init_{k}" for k in HYPERPARAMETERS), *(f"final_{k}" for k in HYPERPARAMETERS),
    "train_loss", "valid_loss", "test_loss", "test_metric",
    "test_mse_unnormalised", "test_accuracy", "test_perplexity",
    "weight_steps", "hyperparameter_steps", "train_time_s", "wall_time_s", "population_size", "device",
    "slurm_job_id",
]
STATUSES = ("done", "diverged", "stale", "missing")


def run_dir(runs_dir, algorithm: str, seed: int) -> Path:
    """Directory of one run inside a dataset's runs directory."""
    return Path(paths.run_dir(Path(runs_dir) / algorithm, seed))


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def stale_reason(metrics: dict, expected_settings: dict, member: dict) -> str | None:
    """Why a run's record does not match its plan entry (None if it does)."""
    recorded = {k: v for k, v in (metrics.get("settings") or {}).items() if k in expected_settings}
    differing = sorted(k for k in expected_settings if recorded.get(k, object()) != expected_settings[k])
    if differing:
        return "settings differ: " + ", ".join(differing[:5])
    for name in HYPERPARAMETERS:
        if metrics.get(f"init_{name}") != member[name]:
            return f"initial {name} differs"
    return None


def trajectory_min(history: Path, metrics: dict) -> float:
    """The lowest finite test metric a run logged: its history.csv's ``test_metric`` column, its final
    ``test_metric`` and its ``min_test_metric`` (NaN if none is finite)."""
    values = [metrics.get("test_metric"), metrics.get("min_test_metric")]
    if history.exists():
        try:
            values += pd.read_csv(history, usecols=["test_metric"])["test_metric"].tolist()
        except (ValueError, pd.errors.EmptyDataError):
            pass
    finite = [float(v) for v in values if _finite(v)]
    return min(finite) if finite else float("nan")


def over_threshold(metrics: dict) -> bool:
    """Whether a run's final test metric reached its ``divergence_threshold`` and the threshold applies post
    hoc (``divergence_check: post_hoc``; a run frozen during training, ``training``, is ``diverged`` instead)."""
    settings = metrics.get("settings") or {}
    threshold = settings.get("divergence_threshold")
    value = metrics.get("test_metric")
    return (settings.get("divergence_check") == "post_hoc" and threshold is not None and _finite(value)
            and float(value) >= float(threshold))


def read_run(path: Path, expected_settings: dict | None = None, member: dict | None = None) -> dict:
    """One row of runs.tsv from a run's metrics.json, checked against its plan entry when given."""
    if not path.exists():
        return {"status": "missing", "diverged": None, "stale_reason": None, "over_threshold": False}
    metrics = json.loads(path.read_text())
    row = {k: metrics.get(k) for k in FIELDS}
    diverged = bool(metrics.get("diverged")) or not _finite(metrics.get("test_metric"))
    reason = stale_reason(metrics, expected_settings, member) if expected_settings is not None else None
    row["status"] = "stale" if reason else ("diverged" if diverged else "done")
    row["diverged"] = diverged
    row["stale_reason"] = reason
    row["best_test_metric"] = trajectory_min(path.parent / "history.csv", metrics)
    row["over_threshold"] = over_threshold(metrics)
    if metrics.get("paper_test_metrics") is not None:   # a search: the values of the paper's statistic
        row["paper_statistic"] = metrics.get("paper_statistic")
        row["paper_test_metrics"] = json.dumps([float(v) for v in metrics["paper_test_metrics"]])
    for key, value in (member or {}).get("settings", {}).items():
        row[key] = (metrics.get("settings") or {}).get(key, value)
    return row


def collect(plan: dict, runs_dir) -> pd.DataFrame:
    """One row per planned (algorithm, seed) of the plan's dataset: its record and status."""
    rows = []
    for algorithm, entry in plan["algorithms"].items():
        for seed in entry["seeds"]:
            member = plans.member(plan, algorithm, seed)
            expected = plans.expected_settings(plan, algorithm, seed)
            rows.append({"dataset": plan["dataset"], "algorithm": algorithm, "seed": seed,
                         **read_run(run_dir(runs_dir, algorithm, seed) / "metrics.json", expected, member)})
    cols = ["dataset", "algorithm", "seed", "status", "diverged", *FIELDS, "best_test_metric", "over_threshold",
            "stale_reason"]
    frame = pd.DataFrame(rows)
    extra = [c for c in frame.columns if c not in cols]
    return frame.reindex(columns=cols + extra)


def status_counts(runs: pd.DataFrame) -> dict:
    """Number of runs per status and in total."""
    counts = {s: int((runs["status"] == s).sum()) for s in STATUSES}
    counts["total"] = len(runs)
    return counts


def status_line(runs: pd.DataFrame) -> str:
    """One line saying how many runs are done, diverged, stale and missing."""
    c = status_counts(runs)
    return (f"# status: {c['done']} done, {c['diverged']} diverged, {c['stale']} stale, "
            f"{c['missing']} missing of {c['total']} runs")


def write_runs(runs: pd.DataFrame, path) -> None:
    """Write runs.tsv: the status line, then one tab-separated row per run."""
    from .records import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(status_line(runs) + "\n")
            runs.to_csv(f, sep="\t", index=False, na_rep="NaN")
    atomic_write(path, write)


def read_runs(path) -> pd.DataFrame:
    """Read a runs.tsv written by :func:`write_runs`."""
    return pd.read_csv(path, sep="\t", comment="#")


def counted(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that enter statistics: done or diverged (stale and missing runs do not)."""
    return runs[runs["status"].isin(("done", "diverged"))]


def load_histories(runs: pd.DataFrame, runs_dir, per_algorithm: int | None = None) -> pd.DataFrame:
    """history.csv of every counted run that has one, with algorithm and seed columns added."""
    frames = []
    for algorithm, group in counted(runs).groupby("algorithm"):
        for seed in sorted(group["seed"])[:per_algorithm]:
            path = run_dir(runs_dir, algorithm, seed) / "history.csv"
            if path.exists():
                frames.append(pd.read_csv(path).assign(algorithm=algorithm, seed=seed))
    if not frames:
        return pd.DataFrame(columns=["algorithm", "seed", "step", "time_s", "test_metric", *HYPERPARAMETERS])
    return pd.concat(frames, ignore_index=True)
