"""The paper's tables: mean and median (with standard errors) of the final test metric, and its best value,
per algorithm.

Two estimators (``STATISTICS_KINDS``, the study config's ``table_statistic``):

- ``bootstrap`` (the default, the paper's: its paper_plots.py write_statistics, lines 443-458): 1000
  bootstrap resamples of the finite values; the median is the mean of the resamples' medians, ± their standard
  deviation; the mean is the mean of the resamples' means, ± their standard deviation.
- ``sample``: the sample median ± the standard deviation of 1000 bootstrap medians, and the sample mean ± its
  standard error (std / sqrt(n)).

Which runs enter, as the paper's code: a loss table's mean and median take the finished runs, less those over
a post-hoc divergence threshold (``over_threshold``, Fashion-MNIST's 1e3 on the final test cross-entropy,
paper_plots.py:54-76); its Best is the lowest test metric of any finished run's whole trajectory
(``best_test_metric``, paper_plots.py:448 over figures.py:508-520's trajectories). A test-error table takes
every finished and every diverged run (paper_plots.py:341-364: accuracy is never NaN, so a diverged network
enters at chance, 1 - 1/classes). Cells follow the paper's format (paper_plots.py:610-640, :func:`paper_cell`).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from onepass import catalog

N_BOOT = 1000
STATISTICS_KINDS = ("bootstrap", "sample")
COLUMNS = ["dataset", "algorithm", "label", "metric", "runs", "done", "diverged", "stale", "missing",
           "mean", "mean_se", "median", "median_se", "best", "statistic"]


def mean_se(values) -> tuple:
    """Mean and its standard error, NaNs ignored."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    se = x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else 0.0
    return float(x.mean()), float(se)


def median_se(values, n_boot: int = N_BOOT, seed: int = 0) -> tuple:
    """Median and its standard error from ``n_boot`` bootstrap resamples, NaNs ignored."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) == 1 or n_boot < 2:
        return float(np.median(x)), 0.0
    rng = np.random.default_rng(seed)
    medians = np.median(x[rng.integers(0, len(x), size=(n_boot, len(x)))], axis=1)
    return float(np.median(x)), float(medians.std(ddof=1))


def bootstrap(values, n_boot: int = N_BOOT, seed: int = 0) -> tuple:
    """The paper's estimator: (mean of the bootstrap means, their std, mean of the bootstrap medians, their std)
    over ``n_boot`` resamples of the finite values (the same resamples for both), NaNs ignored."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return (float("nan"),) * 4
    resamples = x[np.random.default_rng(seed).integers(0, len(x), size=(max(n_boot, 1), len(x)))]
    means, medians = resamples.mean(axis=1), np.median(resamples, axis=1)
    return float(means.mean()), float(means.std()), float(medians.mean()), float(medians.std())


def estimate(values, statistic: str = "bootstrap", n_boot: int = N_BOOT) -> tuple:
    """(mean, mean SE, median, median SE) of ``values`` by the estimator ``statistic`` (``STATISTICS_KINDS``)."""
    if statistic == "bootstrap":
        return bootstrap(values, n_boot)
    if statistic == "sample":
        return (*mean_se(values), *median_se(values, n_boot))
    raise ValueError(f"table statistic must be one of {', '.join(STATISTICS_KINDS)}, got {statistic!r}")


def best(values) -> float:
    """Lowest finite value (NaN if there is none)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.min()) if len(x) else float("nan")


GROUP_COLUMNS = ["group", "seed", "status", "valid_loss", "test_metric", "best_test_metric", "over_threshold"]


def best_of_groups(runs: pd.DataFrame, source: str, size: int, groups: str = "random", seed: int = 0) -> pd.DataFrame:
    """A derived population such as Random (3-batched): groups of ``size`` runs of ``source``, keeping in each
    the run with the best final validation loss.

    ``groups="random"`` (the paper's design, its figures.py parse_data_by_algorithm, lines 474-486): the
    finished runs of ``source`` that did not diverge, in a random order drawn with ``seed``, cut into
    len // size groups (the remainder left out); every chosen run is finished. (The paper's code drew the order
    over the runs left after removing the diverged ones but looked their validation losses up in the unfiltered
    list, a slip once runs diverge; here each group's losses are its own runs'.) ``groups="by_seed"``:
    consecutive seeds (0-2, 3-5, ...), a group with a missing or stale run left out and a diverged run never
    chosen unless the whole group diverged (then its test metric is NaN).

    Returns one row per group with the chosen run's seed, status, validation loss and test metric.
    """
    rv = runs[runs["algorithm"] == source]
    rv = rv.assign(over_threshold=flag(rv, "over_threshold"))
    if groups == "random":
        done = rv[rv["status"] == "done"].sort_values("seed")
        order = np.random.default_rng(seed).permutation(len(done))
        members = [done.iloc[order[i:i + size]] for i in range(0, len(order) - size + 1, size)]
    elif groups == "by_seed":
        members = [m for _, m in rv.assign(group=rv["seed"] // size).groupby("group")
                   if len(m) == size and not m["status"].isin(("missing", "stale")).any()]
    else:
        raise ValueError(f"derived groups must be one of {', '.join(catalog.DERIVED_GROUPS)}, got {groups!r}")
    rows = []
    for group, m in enumerate(members):
        valid = pd.to_numeric(m["valid_loss"], errors="coerce").fillna(np.inf).to_numpy()
        chosen = m.iloc[int(np.argmin(valid))]
        rows.append({"group": group, "seed": chosen["seed"], "status": chosen["status"],
                     "valid_loss": chosen["valid_loss"], "test_metric": chosen["test_metric"],
                     "best_test_metric": chosen.get("best_test_metric", chosen["test_metric"]),
                     "over_threshold": bool(chosen["over_threshold"])})
    return pd.DataFrame(rows, columns=GROUP_COLUMNS)


def derived_populations(runs: pd.DataFrame) -> dict:
    """Every derived algorithm of the catalogue whose source has runs here: {name: its population}."""
    out = {}
    for name, algorithm in catalog.derived_algorithms().items():
        d = algorithm.derived
        population = best_of_groups(runs, d["from"], d["best_of"], d.get("groups", "random"), d.get("seed", 0))
        if len(population):
            out[name] = population
    return out


def flag(runs: pd.DataFrame, column: str) -> pd.Series:
    """A boolean column of runs.tsv (False where absent: runs collected before it existed)."""
    if column not in runs.columns:
        return pd.Series(False, index=runs.index)
    return runs[column].astype(str).str.lower().isin(("true", "1", "1.0"))


def loss_values(runs: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(the final values a loss table's mean and median take, the values its Best takes): finished runs, less
    those over a post-hoc threshold for the first; every finished run's trajectory minimum for the second."""
    done = runs["status"] == "done"
    final = pd.to_numeric(runs["test_metric"].where(done & ~flag(runs, "over_threshold")), errors="coerce")
    trajectory = runs["best_test_metric"] if "best_test_metric" in runs.columns else runs["test_metric"]
    lowest = pd.to_numeric(trajectory.where(done), errors="coerce")
    return final, lowest


def _row(dataset, algorithm, metric, runs: pd.DataFrame, n_boot: int, statistic: str = "bootstrap",
         values=None) -> dict:
    """An algorithm's statistics: by default a loss table's (:func:`loss_values`); ``values``: (finals, the
    values of Best) given by the caller (the test-error table's)."""
    final, lowest = loss_values(runs) if values is None else values
    mean, mse, median, mdse = estimate(final, statistic, n_boot)
    status = runs["status"].value_counts()
    return {"dataset": dataset, "algorithm": algorithm, "label": catalog.label(algorithm),
            "metric": metric, "runs": len(runs), "done": int(status.get("done", 0)),
            "diverged": int(status.get("diverged", 0)), "stale": int(status.get("stale", 0)),
            "missing": int(status.get("missing", 0)),
            "mean": mean, "mean_se": mse, "median": median, "median_se": mdse, "best": best(lowest),
            "statistic": statistic}


HONEST_LABEL = "test at best validation"
PAPER_LABELS = {"best test seen": "paper: best test seen", "finished trials": "paper: all finished trials"}
PAPER_SUFFIX = "@paper"


def paper_values(runs: pd.DataFrame) -> tuple[list[float], str | None]:
    """The values behind the paper's statistic of a search's runs that finished (done or diverged; stale and
    missing runs left out), pooled in seed order, and the statistic's name (None if no run recorded one)."""
    if "paper_test_metrics" not in runs.columns:
        return [], None
    counted = runs[runs["status"].isin(("done", "diverged"))].sort_values("seed")
    values, name = [], None
    for text, statistic in zip(counted["paper_test_metrics"], counted.get("paper_statistic", [None] * len(counted))):
        if isinstance(text, str) and text.strip():
            values += [float(v) for v in json.loads(text)]
            name = statistic if isinstance(statistic, str) else name
    return values, name


def _paper_row(dataset, algorithm, metric, runs: pd.DataFrame, n_boot: int,
               statistic: str = "bootstrap") -> dict | None:
    """The paper's statistic of a search beside the honest one: BayesOpt, the best test metric seen by each
    repetition (optimistic: selected on the test set); ASHA/PBT, the final test metric of every trial that
    ran to the end. ``runs`` counts the values, ``diverged`` the NaN ones among them."""
    values, name = paper_values(runs)
    if name is None:
        return None
    x = np.asarray(values, dtype=float)
    finite = np.isfinite(x)
    mean, mse, median, mdse = estimate(x, statistic, n_boot)
    return {"dataset": dataset, "algorithm": algorithm + PAPER_SUFFIX,
            "label": f"{catalog.label(algorithm)} ({PAPER_LABELS.get(name, 'paper: ' + name)})",
            "metric": metric, "runs": len(x), "done": int(finite.sum()), "diverged": int((~finite).sum()),
            "stale": 0, "missing": 0, "mean": mean, "mean_se": mse, "median": median, "median_se": mdse,
            "best": best(x), "statistic": statistic}


def populations(runs: pd.DataFrame) -> dict:
    """The runs of each algorithm, the derived ones (Random (3-batched)) included."""
    groups = {a: g for a, g in runs.groupby("algorithm")}
    groups.update(derived_populations(runs))
    return groups


def summarise(runs: pd.DataFrame, n_boot: int = N_BOOT, statistic: str = "bootstrap") -> pd.DataFrame:
    """One row per algorithm (plus Random (3-batched)) in the paper's order; a search that recorded the
    paper's statistic gets a second row right after its own (algorithm ``<name>@paper``), and its own row's
    label says that it is the test metric at the best validation loss. ``statistic``: the estimator of the
    mean, median and their standard errors (``STATISTICS_KINDS``; ``bootstrap`` is the paper's)."""
    estimate([], statistic)  # a bad name fails before any work
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    dataset = str(runs["dataset"].iloc[0])
    metric = catalog.metric_name(dataset)
    groups = populations(runs)
    rows = []
    for a in catalog.order(groups):
        row = _row(dataset, a, metric, groups[a], n_boot, statistic)
        paper = _paper_row(dataset, a, metric, groups[a], n_boot, statistic) if catalog.is_search(a) else None
        if paper is not None:
            row["label"] = f"{row['label']} ({HONEST_LABEL})"
        rows += [row] + ([paper] if paper is not None else [])
    return pd.DataFrame(rows + error_rows(dataset, runs, n_boot, statistic), columns=COLUMNS)


ERROR_METRIC = "test error (1 − accuracy)"


def chance_error(dataset: str) -> float:
    """The test error of a network whose outputs are NaN: every prediction the first class, so 1 - 1/classes
    on the balanced test sets of Fashion-MNIST and CIFAR-10 (the error a diverged run has in the paper's
    tables, whose accuracy was never NaN)."""
    known = catalog.datasets().get(dataset)
    classes = (known.shape or {}).get("outputs") if known is not None else None
    return 1.0 - 1.0 / float(classes) if classes else float("nan")


def error_values(runs: pd.DataFrame, dataset: str) -> tuple[pd.Series, pd.Series]:
    """(final test errors, the values of Best) of a test-error table: every finished and every diverged run, a
    diverged run without an accuracy at :func:`chance_error` (paper_plots.py:341-364). Best takes the same final
    values: the runs log no accuracy trajectory."""
    counted = runs["status"].isin(("done", "diverged"))
    error = runs["test_metric"].where(counted)
    error = error.where(~((runs["status"] == "diverged") & error.isna()), chance_error(dataset))
    error = pd.to_numeric(error, errors="coerce")
    return error, error


def error_populations(runs: pd.DataFrame, dataset: str) -> dict:
    """For a classification dataset, every algorithm's runs (derived ones included: their chosen runs) with
    ``test_metric`` the final test error, 1 - test accuracy ({} for other datasets or runs without accuracy);
    :func:`error_values` gives the values a table or figure takes."""
    known = catalog.datasets().get(dataset)
    if known is None or known.task != "classification" or "test_accuracy" not in runs.columns:
        return {}
    # the derived groups choose by validation loss and carry their chosen runs' test_metric: here the error
    return populations(runs.assign(test_metric=1.0 - pd.to_numeric(runs["test_accuracy"], errors="coerce")))


def error_rows(dataset: str, runs: pd.DataFrame, n_boot: int = N_BOOT, statistic: str = "bootstrap") -> list[dict]:
    """For a classification dataset, the same statistics of the final test error (1 - test accuracy), the
    paper's other measure for Fashion-MNIST and CIFAR-10 (metric ``ERROR_METRIC``), diverged runs included
    (:func:`error_values`); algorithms whose finished runs recorded no accuracy are left out."""
    groups = error_populations(runs, dataset)
    rows = []
    for a in catalog.order(groups):
        finished = groups[a][groups[a]["status"] == "done"]
        if pd.to_numeric(finished["test_metric"], errors="coerce").notna().any():
            rows.append(_row(dataset, a, ERROR_METRIC, groups[a], n_boot, statistic,
                             values=error_values(groups[a], dataset)))
    return rows


def _fmt(x: float, digits: int = 4) -> str:
    if x is None or not np.isfinite(x):
        return "NaN"
    return f"{x:.{digits}g}"


def _fixed(x: float, decimals: int) -> str:
    """``x`` rounded to ``decimals`` places (negative: to tens, hundreds, ...)."""
    if decimals >= 0:
        return f"{x:.{decimals}f}"
    return f"{round(x, decimals):.0f}"


def with_se(value: float, se: float) -> str:
    """'value ± SE' with the SE to two significant digits and the value to the same decimal place, the
    precision the SE supports (a zero or unknown SE: four significant digits). The summary pages' format; the
    paper's tables use :func:`paper_cell`."""
    if value is None or not np.isfinite(value):
        return "NaN"
    if se is None or not np.isfinite(se) or se <= 0:
        return f"{_fmt(value)} ± {'0' if se == 0 else 'NaN'}"
    decimals = 1 - math.floor(math.log10(se))
    se_text = _fixed(se, decimals)
    if float(se_text) >= 10 ** (2 - decimals):  # rounding went up a digit (9.96 -> 10.0): one place fewer
        decimals -= 1
        se_text = _fixed(se, decimals)
    return f"{_fixed(value, decimals)} ± {se_text}"


def paper_rounding(value: float, se: float) -> tuple[float, str, str] | None:
    """The paper's rounding of 'value ± SE' (paper_plots.py:610-630): the SE to one significant figure, the
    value to the decimal place of that figure (a whole number once the SE is 1 or more). Returns (the rounded
    value, its text, the SE's text), or None where the value or SE is not finite (the paper's '---'). A zero SE
    (one run) leaves the value to three significant figures."""
    if value is None or se is None or not (np.isfinite(value) and np.isfinite(se)):
        return None
    if se == 0:
        return float(value), best_text(value), "0"
    se_one = float(f"{se:.1g}")
    places = -math.floor(math.log10(se_one))
    rounded = round(float(value), places)
    text = f"{rounded:.{places}f}" if se < 1 else str(int(rounded))
    return rounded, text, np.format_float_positional(se, precision=1, fractional=False, trim="-")


def best_text(value: float) -> str:
    """The paper's Best: three significant figures, trailing zeros kept, no bare decimal point
    ('{:#.3g}', paper_plots.py:632-635)."""
    if value is None or not np.isfinite(value):
        return "NaN"
    return f"{value:#.3g}".rstrip(".")


def bold_thresholds(values, errors) -> float:
    """The paper's bold rule for one column (paper_plots.py:600-603): a value is bold when its rounded value is
    at most the column's best (lowest) value plus that best value's standard error."""
    v = pd.to_numeric(pd.Series(list(values)), errors="coerce").to_numpy(float)
    e = pd.to_numeric(pd.Series(list(errors)), errors="coerce").to_numpy(float)
    if not np.isfinite(v).any():
        return float("nan")
    i = int(np.nanargmin(v))
    return float(v[i] + (e[i] if np.isfinite(e[i]) else 0.0))


def paper_cell(value: float, se: float, threshold: float, bold=("**", "**")) -> str:
    """'value ± SE' in the paper's format, marked ``bold`` when the rounded value is at most ``threshold``
    (:func:`bold_thresholds`); ``bold=None``: never (the paper's tables without bold, bold_best=False)."""
    rounded = paper_rounding(value, se)
    if rounded is None:
        return "—"
    number, text, se_text = rounded
    if bold and np.isfinite(threshold) and number <= threshold:
        text = f"{bold[0]}{text}{bold[1]}"
    return f"{text} ± {se_text}"


def _cells(summary: pd.DataFrame, bold=("**", "**"), paper: bool = True) -> pd.DataFrame:
    """Formatted 'mean ± SE', 'median ± SE', 'best' cells. ``paper``: the paper's format (:func:`paper_cell`,
    :func:`best_text`), marked ``bold`` as the paper marks them (``bold=None``: none marked); else the summary
    pages' (:func:`with_se`, Best to four significant digits, the lowest of each column bold)."""
    out = pd.DataFrame({"Method": summary["label"]})
    for col, se, name in (("mean", "mean_se", "Mean ± SE"), ("median", "median_se", "Median ± SE")):
        values, errors = pd.to_numeric(summary[col], errors="coerce"), pd.to_numeric(summary[se], errors="coerce")
        if paper:
            threshold = bold_thresholds(values, errors)
            out[name] = [paper_cell(v, e, threshold, bold) for v, e in zip(values, errors)]
        else:
            out[name] = [f"{bold[0]}{with_se(v, e)}{bold[1]}" if np.isfinite(v) and v == values.min()
                         else with_se(v, e) for v, e in zip(values, errors)]
    bests = pd.to_numeric(summary["best"], errors="coerce")
    low = bests.min()
    text = best_text if paper else _fmt
    out["Best"] = [f"{bold[0]}{text(v)}{bold[1]}" if bold and np.isfinite(v) and v <= low else text(v)
                   for v in bests]
    out["Runs (diverged)"] = [f"{r} ({d})" for r, d in zip(summary["runs"], summary["diverged"])]
    return out


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a GitHub-flavoured Markdown table."""
    head = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join([" --- "] + [" ---: "] * (len(frame.columns) - 1)) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


ESTIMATORS = {
    "bootstrap": "the mean of 1000 bootstrap resamples' means ± their standard deviation, the mean of their medians "
                 "± their standard deviation (the paper's estimator)",
    "sample": "the sample mean ± its standard error, the sample median ± the standard deviation of 1000 "
              "bootstrap medians",
}
INTRODUCTION = ("Mean and median with their standard errors over the initialisations of each algorithm, "
                "in the paper's format: each standard error to one significant figure and its value to that "
                "decimal place; Best, the lowest test metric of any finished run's whole logged trajectory, to "
                "three significant figures (in a test-error table, the lowest final error). Loss tables leave "
                "out diverged runs (NaN) and runs over a post-hoc divergence threshold "
                "(Fashion-MNIST's 1e3 on the final test cross-entropy); test-error tables keep diverged runs, "
                "at chance error. Lower is better; bold marks every value at most the column's best value plus "
                "its standard error (no bold in the search tables). A black-box search "
                "has two rows: its test metric at the best validation loss, over its repetitions (honest), and "
                "the paper's statistic: for BayesOpt the lowest test metric logged by any evaluation of each "
                "repetition (selected on the test set), for ASHA and PBT the final test metric of every trial "
                "that ran to the end (Runs: those trials).")


def introduction(summaries: pd.DataFrame) -> str:
    """:data:`INTRODUCTION` with the estimator(s) the summaries were computed by (column ``statistic``)."""
    kinds = [k for k in dict.fromkeys(summaries.get("statistic", pd.Series(dtype=object)).dropna())
             if k in ESTIMATORS]
    return INTRODUCTION + "".join(f" Estimator ({k}): {ESTIMATORS[k]}." for k in kinds)


STYLE = ("body{font-family:sans-serif;margin:1em;color:#222}"
         "table{border-collapse:collapse;font-size:.9em;margin:.5em 0 1.2em}"
         "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}"
         "td:first-child,th:first-child{text-align:left}")


def _placement(algorithm: str) -> str:
    """Where the paper's tables show an algorithm's rows: "main" (its dataset's section of Tables 1-3), the
    catalogue's ``paper_table`` ("base", "separate"), or "search:<kind>" (a table of each search kind)."""
    known = catalog.algorithms().get(str(algorithm).split(PAPER_SUFFIX)[0])
    if known is None:
        return "main"
    if known.is_search:
        return f"search:{known.search}"
    return known.paper_table or "main"


def _titled(title: str, sections: list) -> str:
    """A table's title with ``{datasets}`` standing for the datasets its sections show."""
    present = list(dict.fromkeys(h.split(" (")[0] for h, _ in sections))
    names = ", ".join(present[:-1]) + " and " + present[-1] if len(present) > 1 else present[0]
    return title.replace("{datasets}", names)


def _layout(summaries: pd.DataFrame):
    """The paper's layout (its paper_plots.py write_all_tables, lines 466-542): [(table title, [(dataset
    heading, its summary rows)], bold)], ``bold`` whether the paper marked its best values (bold_best).

    Table 1 the UCI sets, Table 2 the others, Table 3 the test errors (with bold); then, each with bold, a
    table of its own for each ``paper_table: separate`` algorithm beside its base dataset's rows (Long
    Diff-through-Opt (Full), run on uci_energy_long, with UCI Energy's rows, paper_plots.py:502-504; Medium with
    Fashion-MNIST's, test cross-entropy and error, 491-495); a variant dataset marked ``paper_table: with_base``
    beside its base (Fashion-MNIST and its BatchNorm variant, 481-483); one marked ``paper_table: own`` in none
    (the validation proportions and the proof of concept: a table or figure of their own); the other variants,
    the short-horizon studies with Long Diff-through-Opt (Standalone), one table per family (the UCI sets
    together, Fashion-MNIST with its test error, 497-507); and, without bold, each search kind's rows, the UCI
    sets and the others in two tables (BayesOpt's 508-515, ASHA's and PBT's 526-533)."""
    sources = {a.derived["from"] for a in catalog.derived_algorithms().values()}
    shown = summaries[~summaries["algorithm"].isin(sources)]  # the paper shows the derived rows instead
    known = catalog.datasets()
    base = shown["dataset"].map(lambda d: known[d].base if d in known else d)
    place = shown["algorithm"].map(_placement)
    own = (base == shown["dataset"]) & (place == "main")
    main = pd.concat([shown[own], shown[place == "base"].assign(dataset=base[place == "base"])])
    datasets = catalog.dataset_order(dict.fromkeys(main["dataset"]))
    primary, errors = main[main["metric"] != ERROR_METRIC], main[main["metric"] == ERROR_METRIC]
    uci = [d for d in datasets if catalog.family(d) == "uci"]
    tables = [("UCI regression (unnormalised test MSE)", [(primary, d) for d in uci], True),
              ("{datasets}", [(primary, d) for d in datasets if catalog.family(d) != "uci"], True),
              (f"{{datasets}}, {ERROR_METRIC}", [(errors, d) for d in datasets if d in set(errors["dataset"])], True)]
    separate = shown[place == "separate"].assign(dataset=base[place == "separate"])
    for algorithm in catalog.order(dict.fromkeys(separate["algorithm"])):
        rows = separate[separate["algorithm"] == algorithm]
        for d in catalog.dataset_order(dict.fromkeys(rows["dataset"])):
            frame = pd.concat([main[main["dataset"] == d], rows[rows["dataset"] == d]])
            tables.append((f"{catalog.dataset_label(d)} with {catalog.label(algorithm)}", [(frame, d)], True))
    variants = shown[(base != shown["dataset"]) & (place == "main")]
    beside = [d for d in catalog.dataset_order(dict.fromkeys(variants["dataset"]))
              if known[d].paper_table == "with_base"]
    for d in beside:
        tables.append(("{datasets}", [(primary, known[d].base), (variants[variants["metric"] != ERROR_METRIC], d)],
                       True))
    others = [d for d in catalog.dataset_order(dict.fromkeys(variants["dataset"]))
              if d not in beside and known[d].paper_table != "own"]
    for family in dict.fromkeys(catalog.family(d) for d in others):
        tables.append(("{datasets}", [(variants, d) for d in others if catalog.family(d) == family], True))
    searches = catalog.order(dict.fromkeys(shown.loc[place.str.startswith("search:"), "algorithm"]))
    for kind in dict.fromkeys(_placement(a) for a in searches):
        frame = shown[place == kind]
        labels = ", ".join(catalog.label(a) for a in catalog.order(dict.fromkeys(
            a for a in frame["algorithm"] if PAPER_SUFFIX not in a)))
        members = catalog.dataset_order(dict.fromkeys(frame["dataset"]))
        for part in ([d for d in members if catalog.family(d) == "uci"],
                     [d for d in members if catalog.family(d) != "uci"]):
            if part:
                tables.append((f"{labels}, {{datasets}}", [(frame, d) for d in part], False))
    out = []
    for title, members, bold in tables:
        sections = []
        for frame, d in members:
            for metric in dict.fromkeys(frame.loc[frame["dataset"] == d, "metric"]):
                part = frame[(frame["dataset"] == d) & (frame["metric"] == metric)].reset_index(drop=True)
                scale = catalog.table_scale(d) if metric != ERROR_METRIC else 1.0
                sections.append((_heading(d, metric, scale), scaled(part, scale)))
        if sections:   # a title names the datasets the study has, not the paper's
            out.append((f"Table {len(out) + 1}: {_titled(title, sections)}", sections, bold))
    return out


STATISTICS = ("mean", "mean_se", "median", "median_se", "best")


def scaled(summary: pd.DataFrame, scale: float) -> pd.DataFrame:
    """A summary with its statistics multiplied by ``scale`` (the paper's display factor)."""
    if scale == 1:
        return summary
    out = summary.copy()
    for col in STATISTICS:
        out[col] = pd.to_numeric(out[col], errors="coerce") * scale
    return out


def _heading(dataset: str, metric: str, scale: float) -> str:
    factor = f" × {scale:g}" if scale != 1 else ""
    return f"{catalog.dataset_label(dataset)} ({metric}{factor})"


def paper_markdown(summaries: pd.DataFrame) -> str:
    """All datasets laid out like the paper: Table 1 for UCI, Table 2 for the rest."""
    parts = ["# Final test metrics of the population study", "", introduction(summaries)]
    for title, sections, bold in _layout(summaries):
        parts += ["", f"## {title}"]
        for heading, part in sections:
            parts += ["", f"### {heading}", "", markdown_table(_cells(part, ("**", "**") if bold else None))]
    return "\n".join(parts) + "\n"


def html_table(frame: pd.DataFrame, raw=()) -> str:
    """A DataFrame as an HTML table (cells escaped, except the columns named in ``raw``)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{v if c in raw else html.escape(str(v))}</td>"
                                    for c, v in zip(frame.columns, row)) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _page(title: str, body: list[str]) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n")


def paper_html(summaries: pd.DataFrame) -> str:
    """The paper's tables as one HTML page (for the report)."""
    body = ["<h1>Final test metrics of the population study</h1>", f"<p>{html.escape(introduction(summaries))}</p>"]
    for title, sections, bold in _layout(summaries):
        body.append(f"<h2>{html.escape(title)}</h2>")
        for heading, part in sections:
            body += [f"<h3>{html.escape(heading)}</h3>",
                     html_table(_cells(part, ("<b>", "</b>") if bold else None),
                                raw=("Mean ± SE", "Median ± SE", "Best"))]
    return _page("Paper tables", body)


def summary_html(summary: pd.DataFrame) -> str:
    """One dataset's summary as an HTML page: the formatted statistics and the run counts."""
    if summary.empty:
        return _page("Summary", ["<p>No runs.</p>"])
    dataset = str(summary["dataset"].iloc[0])
    body = []
    for metric in dict.fromkeys(summary["metric"]):
        part = summary[summary["metric"] == metric].reset_index(drop=True)
        cells = _cells(part, ("<b>", "</b>"), paper=False).drop(columns=["Runs (diverged)"])
        for col in ("runs", "done", "diverged", "stale", "missing"):
            cells[col.capitalize()] = part[col].astype(int).tolist()
        title = f"{catalog.dataset_label(dataset)}: final {metric}"
        body += [f"<h2>{html.escape(title)}</h2>", html_table(cells, raw=("Mean ± SE", "Median ± SE", "Best"))]
    title = f"{catalog.dataset_label(dataset)}: final {summary['metric'].iloc[0]}"
    return _page(title, [body[0], f"<p>{html.escape(introduction(summary))}</p>", *body[1:]])


def write_summary_html(summary: pd.DataFrame, path) -> None:
    """Write :func:`summary_html` to ``path``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(summary_html(summary))


def write_paper_tables(summary_paths, markdown_path, tsv_path, html_path=None) -> None:
    """Combine per-dataset summary.tsv files into the paper's tables (Markdown, TSV and HTML)."""
    frames = [pd.read_csv(p, sep="\t") for p in summary_paths]
    summaries = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    Path(markdown_path).parent.mkdir(parents=True, exist_ok=True)
    Path(markdown_path).write_text(paper_markdown(summaries))
    summaries.to_csv(tsv_path, sep="\t", index=False, na_rep="NaN")
    if html_path:
        Path(html_path).write_text(paper_html(summaries))
