"""A self-contained HTML population-analysis page of one dataset (images embedded as base64).

Sections follow pycls's analysis notebooks: configuration, summary, then every figure of
:data:`onepass.figures.FIGURES` with its caption, and the best and worst runs. The table of all runs is
``runs.tsv`` beside it, not in the page, so that the page stays small at the full study's size (the
Snakemake report embeds it as a data URL, which browsers cap at 2 MB).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from onepass import catalog, plans
from onepass.collection import read_runs, status_line
from onepass.figures import FIGURES
from onepass.tables import ESTIMATORS, html_table, with_se

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


def _fmt(frame: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Numbers to four significant digits (NaN as NaN), for display."""
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "NaN" if not np.isfinite(v) else f"{v:.{digits}g}"
        return v
    return frame.apply(lambda col: col.map(fmt))


def _settings(plan: dict) -> pd.DataFrame:
    """Every algorithm's resolved settings (from the plan), one column per algorithm."""
    columns = {catalog.label(a): {k: json.dumps(v) if isinstance(v, (dict, list)) else v
                                  for k, v in entry["settings"].items()}
               for a, entry in plan["algorithms"].items()}
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


def _summary(summary: pd.DataFrame) -> pd.DataFrame:
    shown = pd.DataFrame({"algorithm": summary["label"]})
    if summary["metric"].nunique() > 1:  # classification: the test metric, then the test error
        shown["metric"] = summary["metric"]
    for col in ("runs", "done", "diverged", "stale", "missing"):
        shown[col] = summary[col].astype(int)
    shown["mean ± SE"] = [with_se(m, s) for m, s in zip(summary["mean"], summary["mean_se"])]
    shown["median ± SE"] = [with_se(m, s) for m, s in zip(summary["median"], summary["median_se"])]
    shown["best"] = [f"{b:.4g}" if np.isfinite(b) else "NaN" for b in summary["best"]]
    return shown


def render(dataset: str, runs: pd.DataFrame, summary: pd.DataFrame, sweep_summary: pd.DataFrame,
           plan: dict, figures: dict) -> str:
    """The page's HTML."""
    title = f"{catalog.dataset_label(dataset)}: population analysis"
    stale = runs[runs["status"] == "stale"]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>Study <b>{html.escape(plan['study'])}</b>. {html.escape(status_line(runs).lstrip('# '))}. "
             f"Final metric: {html.escape(catalog.metric_name(dataset))} (lower is better).</p>"]
    if len(stale):
        parts.append(f"<p class='note'>{len(stale)} stale runs (recorded under other settings than this "
                     "study's) are left out of every statistic: rerun the study to retrain them.</p>")
    parts += ["<h2>Configuration</h2>",
              "<p class='note'>Initial hyperparameters are drawn once per seed from these samplers; "
              "seed s is the same initialisation for every algorithm.</p>",
              html_table(_fmt(sweep_summary.fillna(""))),
              "<details><summary>Settings of each algorithm</summary>", html_table(_settings(plan)), "</details>",
              "<h2>Summary</h2>",
              "<p class='note'>Mean and median with standard errors of the finished runs, rounded to the "
              "precision their standard error supports"
              + "".join(f"; {ESTIMATORS[k]}" for k in dict.fromkeys(summary.get("statistic", []))
                        if k in ESTIMATORS) + ". "
              + " ".join(_derived_note(a) for a in catalog.derived_algorithms().values()) + "</p>",
              html_table(_summary(summary))]
    for kind, fig in FIGURES.items():
        parts.append(f"<h2>{html.escape(fig.title)}</h2>"
                     f"<p class='note'>{html.escape(fig.caption.format(dataset=catalog.dataset_label(dataset)))}</p>")
        if kind == "best_worst" and (runs["status"] == "done").any():
            parts.append(html_table(_fmt(_extremes(runs))))
        parts.append(_img(figures[kind]) if kind in figures else "<p>(figure not made)</p>")
    parts.append(f"<p class='note'>One row per run: runs.tsv ({len(runs)} runs).</p></body></html>")
    return "\n".join(parts)


def _derived_note(a) -> str:
    """How a derived algorithm (Random (3-batched)) is computed, in a sentence."""
    how = ("random groups of the runs that did not diverge" if a.derived.get("groups", "random") == "random"
           else "groups of consecutive seeds")
    return (f"{html.escape(a.label)}: the best validation loss of each group of {a.derived['best_of']} "
            f"{html.escape(catalog.label(a.derived['from']))} runs ({how}).")


def write(runs_path, summary_path, sweep_summary_path, plan_path, figure_paths, out) -> None:
    """Read the dataset's tables, plan and figures and write its analysis page."""
    runs = read_runs(runs_path)
    plan = plans.read_plan(plan_path)
    figures = {Path(p).stem: Path(p) for p in figure_paths if str(p).endswith(".png")}
    page = render(plan["dataset"], runs, pd.read_csv(summary_path, sep="\t"),
                  pd.read_csv(sweep_summary_path, sep="\t"), plan, figures)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(page)
