"""The paper's outputs that gather runs across datasets (the study config's ``paper_figures``): which of them a
study makes, and the validation-proportion table.

Each study is ordinary datasets of the study config, trained by the usual chunk jobs: the validation
proportions are variants of UCI Energy whose training and validation rows are re-cut (the run setting
``validation_proportion``), the proof of concept two variants of UCI Energy drawing their initialisations from
their own boxes (the sweep samplers' ``by_dataset``). An output is made for the datasets of its list that the
study has, so a study without them (the quick one, a tiny one) simply lacks it. The figures are
onepass.paper_figures'.

The validation-proportion table is the paper's AverageResults_UCI_Energy_ValidationProportions
(paper_plots.py 521-525): for each of its algorithms, the mean ± SE, median ± SE and best final test metric at
the base dataset's own split and at each proportion, from the datasets' summary.tsv (onepass.tables).
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

import pandas as pd

from . import catalog, study, tables
from .records import atomic_write
from .settings import ConfigError, load_settings

KINDS = ("validation_proportion", "proof_of_concept", "learning_rates", "runtimes", "best_over_time", "error_cdfs")


def spec(config: dict, kind: str):
    """The config's entry for ``kind`` (None when absent)."""
    return (config.get("paper_figures") or {}).get(kind)


def listed(config: dict, kind: str) -> list[str]:
    """Every dataset the config's entry for ``kind`` names."""
    s = spec(config, kind)
    if not s:
        return []
    if kind == "proof_of_concept":
        return [s["heatmap"]["dataset"], s["trajectories"]["dataset"]]
    return list(s["datasets"]) if isinstance(s, dict) else list(s)


def datasets(config: dict, kind: str) -> list[str]:
    """The datasets ``kind`` is made from in this study: those of its list the study has (the proof of concept:
    both of its datasets, running their algorithms, or none; the validation proportions: none unless the study
    has one of its variants)."""
    s, present = spec(config, kind), set(config["datasets"])
    if not s:
        return []
    if kind == "proof_of_concept":
        parts = (s["heatmap"], s["trajectories"])
        ok = all(p["dataset"] in present and p["algorithm"] in study.algorithms(config, p["dataset"]) for p in parts)
        return [p["dataset"] for p in parts] if ok else []
    names = [d for d in listed(config, kind) if d in present]
    if kind == "validation_proportion" and not any(catalog.dataset(d).is_variant for d in names):
        return []
    return names


def check(config: dict, sources=None) -> None:
    """Every dataset and algorithm ``paper_figures`` names is in the catalogue."""
    known_datasets, known_algorithms = catalog.datasets(), catalog.algorithms()
    for kind in KINDS:
        s = spec(config, kind)
        if not s:
            continue
        for name in listed(config, kind):
            if name not in known_datasets:
                study.fail(f"paper_figures.{kind}", f"unknown dataset {name!r}", sources)
        names = list(s.get("algorithms", [])) if isinstance(s, dict) else []
        if kind == "proof_of_concept":
            names = [s["heatmap"]["algorithm"], s["trajectories"]["algorithm"]]
        for name in names:
            if name not in known_algorithms:
                study.fail(f"paper_figures.{kind}", f"unknown algorithm {name!r}", sources)


def figure_options(config: dict, kind: str, dataset: str) -> str:
    """The options of ``python -m onepass.paper_figures KIND`` for a per-dataset figure besides --runs and --out."""
    if kind in ("runtimes", "error_cdfs"):
        return ""
    options = f"--runs-dir {study.runs_dir(config, dataset)}"
    if kind == "learning_rates":
        options += f" --seed {spec(config, 'learning_rates')['seed']}"
    return options


def figure_caption(config: dict, kind: str, dataset: str) -> str:
    """The caption of a per-dataset paper figure (onepass.paper_figures)."""
    from . import paper_figures

    return paper_figures.caption(kind, dataset, seed=(spec(config, "learning_rates") or {}).get("seed"))


# ---- the validation-proportion table ---------------------------------------------------------------------
def proportion(dataset: str) -> float:
    """The fraction of a dataset's training and validation rows that validate: its ``validation_proportion``
    setting, else its own splits' (UCI Energy: 78 of 692)."""
    settings = load_settings(dataset, "Random")
    if settings["validation_proportion"] is not None:
        return float(settings["validation_proportion"])
    splits = catalog.dataset(dataset).data.get("splits")
    if not splits:
        raise ConfigError(f"{dataset}: no data.splits to tell its validation proportion")
    return splits[1] / (splits[0] + splits[1])


ROW_COLUMNS = ["algorithm", "label", "dataset", "validation_proportion", "runs", "diverged", "mean", "mean_se",
               "median", "median_se", "best"]


def validation_rows(summaries: dict, algorithms: list[str]) -> pd.DataFrame:
    """One row per (algorithm, dataset) of ``summaries`` ({dataset: its summary.tsv as a DataFrame}): the
    algorithm's statistics of the dataset's table metric, at the dataset's validation proportion. Algorithms in
    ``algorithms``' order, datasets by proportion."""
    rows = []
    for dataset, summary in summaries.items():
        metric = catalog.metric_name(dataset)
        part = summary[(summary["metric"] == metric) & summary["algorithm"].isin(algorithms)]
        for r in part.itertuples():
            rows.append({"algorithm": r.algorithm, "label": catalog.label(r.algorithm), "dataset": dataset,
                         "validation_proportion": proportion(dataset), "runs": int(r.runs),
                         "diverged": int(r.diverged), **{k: float(getattr(r, k)) for k in tables.STATISTICS}})
    frame = pd.DataFrame(rows, columns=ROW_COLUMNS)
    order = {a: i for i, a in enumerate(algorithms)}
    return frame.sort_values(["algorithm", "validation_proportion"], key=lambda c: c.map(order)
                             if c.name == "algorithm" else c, kind="stable").reset_index(drop=True)


def validation_cells(rows: pd.DataFrame) -> pd.DataFrame:
    """The table as text: one row per algorithm, per validation proportion its mean, median and best."""
    out = {}
    for algorithm, group in rows.groupby("algorithm", sort=False):
        cells = {"Method": catalog.label(algorithm)}
        for r in group.itertuples():
            p = f"{r.validation_proportion:.3g}"
            # the paper's format, without bold (its table's bold_best: False, paper_plots.py 521-525)
            cells[f"{p}: Mean ± SE"] = tables.paper_cell(r.mean, r.mean_se, float("nan"), bold=None)
            cells[f"{p}: Median ± SE"] = tables.paper_cell(r.median, r.median_se, float("nan"), bold=None)
            cells[f"{p}: Best"] = tables.best_text(r.best)
            cells[f"{p}: Runs (diverged)"] = f"{r.runs} ({r.diverged})"
        out[algorithm] = cells
    return pd.DataFrame(list(out.values()))


INTRODUCTION = ("The paper's validation-proportion study (its run_all.py 420-439, table paper_plots.py 521-525): "
                "{dataset}'s training and validation rows re-cut so that the given fraction of them validates "
                "({base:.3g} is the dataset's own split), the same initialisations at every proportion. Final "
                "{metric}: mean and median with their standard errors and the best run, in the paper's format "
                "(as the study's other tables, without bold); lower is better.")


def write_validation_table(summary_paths, algorithms, markdown_path, tsv_path, html_path) -> pd.DataFrame:
    """The table from the datasets' summary.tsv files (the first the base dataset's), as TSV (the numbers),
    Markdown and HTML."""
    summaries = {}
    for path in summary_paths:
        frame = pd.read_csv(path, sep="\t")
        summaries[str(frame["dataset"].iloc[0]) if len(frame) else Path(path).parent.name] = frame
    rows = validation_rows(summaries, algorithms)
    base = next(iter(summaries))
    intro = INTRODUCTION.format(dataset=catalog.dataset_label(catalog.dataset(base).base),
                                base=proportion(catalog.dataset(base).base), metric=catalog.metric_name(base))
    cells = validation_cells(rows)
    title = f"{catalog.dataset_label(catalog.dataset(base).base)}: validation proportions"
    for path in (markdown_path, tsv_path, html_path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(tsv_path), lambda tmp: rows.to_csv(tmp, sep="\t", index=False, na_rep="NaN"))
    markdown = f"# {title}\n\n{intro}\n\n{tables.markdown_table(cells)}\n"
    atomic_write(Path(markdown_path), lambda tmp: tmp.write_text(markdown))
    head, text = html.escape(title), html.escape(intro)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{head}</title><style>{tables.STYLE}"
            f"</style></head><body><h1>{head}</h1><p>{text}</p>{tables.html_table(cells)}</body></html>\n")
    atomic_write(Path(html_path), lambda tmp: tmp.write_text(page))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m onepass.paper_studies", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("validation-table", help="the validation-proportion table from the datasets' summaries")
    t.add_argument("--summaries", nargs="+", required=True, help="summary.tsv of the base dataset, then variants")
    t.add_argument("--algorithms", nargs="+", required=True)
    t.add_argument("--markdown", required=True)
    t.add_argument("--tsv", required=True)
    t.add_argument("--html", required=True)
    args = p.parse_args(argv)
    try:
        rows = write_validation_table(args.summaries, args.algorithms, args.markdown, args.tsv, args.html)
    except (ConfigError, catalog.CatalogError, OSError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(rows)} rows -> {args.tsv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
