"""Self-contained HTML population-analysis page of one dataset (images embedded as base64).

Sections follow pycls's analysis notebooks: configuration, summary, EDF, progress,
error against each hyperparameter, best and worst runs, trajectories, all runs.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from onepass import catalog
from onepass.analysis import read_runs, status_line

SECTIONS = [
    ("edf", "Empirical distribution of the final test metric",
     "Fraction of runs whose final test metric is at most x. Curves further left and higher "
     "are better; diverged runs keep a curve below 1."),
    ("test_vs_step", "Test metric during training (by step)",
     "Median and best test metric over the runs of each algorithm at each logged step."),
    ("test_vs_time", "Test metric against training time (the time comparison)",
     "Median and best test metric over the runs of each algorithm against training time, each run's "
     "curve held between its logged points. For BayesOpt, ASHA and PBT (dashed) a curve is the test "
     "metric of the best evaluation so far by validation loss, against the search's cumulative time."),
    ("error_vs_hyperparameter", "Final test metric against each initial hyperparameter",
     "Each point is one run; crosses mark diverged runs. A flat cloud means the algorithm is "
     "robust to its initialisation."),
    ("best_worst", "Best and worst runs",
     "Test metric curves of each algorithm's best (solid) and worst (dashed) finished run."),
    ("trajectories", "Hyperparameter trajectories",
     "Learning rate, weight decay and momentum during training for a sample of runs."),
]
TOP = 5
STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; } .note { color: #555; }
"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table(frame: pd.DataFrame, digits: int = 4) -> str:
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "NaN" if not np.isfinite(v) else f"{v:.{digits}g}"
        return html.escape(str(v))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table><tr>{head}</tr>{rows}</table>"


def _settings(runs: pd.DataFrame, runs_dir: Path | None) -> pd.DataFrame:
    """Settings of the first finished run of each algorithm, one column per algorithm."""
    columns = {}
    for algorithm in catalog.order(runs["algorithm"].unique()):
        done = runs[(runs["algorithm"] == algorithm) & (runs["status"] != "missing")]
        if done.empty or runs_dir is None:
            continue
        path = runs_dir / algorithm / f"seed{int(done['seed'].iloc[0])}" / "metrics.json"
        if path.exists():
            settings = json.loads(path.read_text()).get("settings") or {}
            columns[catalog.label(algorithm)] = {k: json.dumps(v) if isinstance(v, (dict, list))
                                                else v for k, v in settings.items()}
    if not columns:
        return pd.DataFrame()
    frame = pd.DataFrame(columns)
    frame.index.name = "setting"
    return frame.reset_index()


def _extremes(runs: pd.DataFrame) -> pd.DataFrame:
    """The best and the worst finished runs over all algorithms."""
    cols = ["algorithm", "seed", "init_lr", "init_weight_decay", "init_momentum",
            "final_lr", "final_weight_decay", "final_momentum", "test_metric"]
    done = runs[runs["status"] == "done"].sort_values("test_metric")
    picked = pd.concat([done.head(TOP).assign(rank="best"), done.tail(TOP).assign(rank="worst")])
    picked = picked[~picked.index.duplicated()]
    picked = picked.assign(algorithm=picked["algorithm"].map(catalog.label))
    return picked[["rank", *[c for c in cols if c in picked]]]


def render(dataset: str, runs: pd.DataFrame, summary: pd.DataFrame, sweep_summary: pd.DataFrame,
           figures: dict, runs_dir: Path | None = None) -> str:
    """The page's HTML."""
    title = f"{catalog.dataset_label(dataset)}: population analysis"
    shown = summary.assign(algorithm=summary["label"]).drop(columns=["label", "dataset", "metric"])
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>{html.escape(status_line(runs).lstrip('# '))}. Final metric: "
             f"{html.escape(catalog.metric_name(dataset))} (lower is better).</p>",
             "<h2>Configuration</h2>",
             "<p class='note'>Initial hyperparameters are drawn once per seed from these samplers; "
             "seed s is the same initialisation for every algorithm.</p>",
             _table(sweep_summary)]
    settings = _settings(runs, runs_dir)
    if not settings.empty:
        parts += ["<details><summary>Settings of each algorithm</summary>",
                  _table(settings), "</details>"]
    parts += ["<h2>Summary</h2>",
              "<p class='note'>Mean and median with standard errors (median: 1000 bootstrap "
              "resamples), NaNs (diverged runs) ignored. "
              + " ".join(f"{html.escape(a.label)}: best validation loss out of each group of "
                         f"{a.derived['best_of']} {html.escape(a.derived['from'])} seeds."
                         for a in catalog.derived_algorithms().values()) + "</p>",
              _table(shown)]
    for key, heading, note in SECTIONS:
        parts.append(f"<h2>{html.escape(heading)}</h2><p class='note'>{html.escape(note)}</p>")
        if key == "best_worst" and (runs["status"] == "done").any():
            parts.append(_table(_extremes(runs)))
        parts.append(_img(figures[key]) if key in figures else "<p>(figure not made)</p>")
    parts += ["<h2>All runs</h2><details><summary>One row per run</summary>",
              _table(runs), "</details></body></html>"]
    return "\n".join(parts)


def write(dataset: str, runs_path, summary_path, sweep_summary_path, figure_paths, out,
          runs_dir=None) -> None:
    """Read the dataset's tables and figures and write its analysis page."""
    runs = read_runs(runs_path)
    summary = pd.read_csv(summary_path, sep="\t")
    sweep_summary = pd.read_csv(sweep_summary_path, sep="\t")
    figures = {Path(p).stem: Path(p) for p in figure_paths if str(p).endswith(".png")}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    page = render(dataset, runs, summary, sweep_summary, figures,
                  Path(runs_dir) if runs_dir else None)
    Path(out).write_text(page)
