"""Heatmaps of the appendix studies (the paper's Figures 7 and 8), from their tables (onepass.appendix,
onepass.quality): rows are the update interval T, columns the look-back K."""

from __future__ import annotations

import argparse
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402

from onepass import catalog  # noqa: E402
from onepass.plotting import save  # noqa: E402

CAPTIONS = {
    "sensitivity": "Sensitivity of {dataset} to the update interval T (weight steps per hyperparameter step, "
                   "T = 1 at the bottom) and the look-back K (Neumann terms for the paper's method; unrolled "
                   "steps for Diff-through-Opt, K <= T): the median final {metric} of the runs that did not "
                   "diverge, times 1000, every cell the same number of hyperparameter steps. As the paper's "
                   "Figure 7: one colour scale from 0 to the largest median of the paper's method and "
                   "Diff-through-Opt (darker is better), the baseline beside them on the same scale.",
    "quality": "The paper's hypergradient quality on {dataset} (its Figure 8), per update interval T (T = 1 at "
               "the bottom) and look-back K <= T: matched runs of the paper's method (K Neumann terms) and "
               "Diff-through-Opt (K unrolled steps), from the same initialisations, weights and batches and "
               "with no hyperparameter clipping, take their first hyperparameter step; shown is the mean over "
               "the runs of the relative error of the first update of lr and of weight decay, "
               "abs(true update - our update) / abs(true update), after Adam and in natural units. Adam's "
               "first step is nearly sign-only, so this mostly tells whether the two hypergradients agree in "
               "sign; with K = 1 the two are the same derivative.",
    "quality_direct": "This project's own comparison of the hypergradients on {dataset} (not the paper's "
                      "quantity), per update interval T (T = 1 at the bottom) and Neumann terms K <= T, over the "
                      "initialisations and the first hyperparameter steps of the paper's method: the exact "
                      "hypergradient differentiates the same last K weight steps from the same weights and "
                      "batches. Shown are the cosine similarity and norm ratio of the two hypergradient vectors "
                      "(log10 lr, log10 weight decay, momentum logit) and the relative error of each "
                      "hyperparameter's hypergradient, abs(exact - ours) / abs(exact), before any "
                      "hyperparameter optimiser; with K = 1 the two are the same derivative.",
}


def caption(kind: str, dataset: str) -> str:
    """The caption of an appendix heatmap for ``dataset`` (a catalogue name)."""
    return CAPTIONS[kind].format(dataset=catalog.dataset_label(dataset), metric=catalog.metric_name(dataset))


def _grid(table: pd.DataFrame, value: str) -> tuple[list, list, list]:
    """Rows T, columns K and the values (NaN where a cell is missing) of ``table``."""
    Ts = sorted({int(t) for t in table["update_interval"]})
    Ks = sorted({int(k) for k in table["lookback"]})
    lookup = {(int(r.update_interval), int(r.lookback)): float(getattr(r, value)) for r in table.itertuples()}
    return Ts, Ks, [[lookup.get((T, K), math.nan) for K in Ks] for T in Ts]


def _panel(ax, Ts, Ks, values, norm, fmt, title, cmap="viridis") -> None:
    """One heatmap, every cell labelled with its value (darker cells smaller values), the first row (T = 1)
    at the bottom as the paper's."""
    ax.imshow(values, norm=norm, cmap=cmap, aspect="auto", origin="lower")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if math.isfinite(v):
                ax.text(j, i, fmt(v), ha="center", va="center", fontsize=7, color="w" if norm(v) < 0.5 else "k")
    ax.set_xticks(range(len(Ks)), [str(k) for k in Ks])
    ax.set_yticks(range(len(Ts)), [str(t) for t in Ts])
    ax.set_xlabel("look-back K")
    ax.set_ylabel("update interval T")
    ax.set_title(title, fontsize=9)
    ax.grid(False)


SENSITIVITY_SCALE = 1000   # the paper's sensitivity heatmaps show the median times 1000, no decimals


def scaled(v: float) -> str:
    """A sensitivity value as the paper printed it: times 1000, no decimals."""
    return f"{SENSITIVITY_SCALE * v:.0f}"


def sensitivity(table: pd.DataFrame, dataset: str):
    """The sensitivity heatmaps as the paper's Figure 7: a panel per grid algorithm, values times 1000 without
    decimals, T = 1 at the bottom, one colour scale from 0 to the largest median of the grid algorithms' cells
    (the paper's method and Diff-through-Opt), the baseline's single cell beside them on that scale."""
    grid = table[table["cell"] != "baseline"]
    baseline = table[table["cell"] == "baseline"]
    algorithms = catalog.order(grid["algorithm"].unique())
    finite = [v for v in grid["median_test_metric"] if math.isfinite(v)]
    norm = Normalize(vmin=0, vmax=max(finite) if finite else 1.0)
    widths = [max(2, len(set(grid[grid["algorithm"] == a]["lookback"]))) for a in algorithms]
    widths += [1] * len(baseline)
    fig, axes = plt.subplots(1, len(widths), figsize=(1.2 + 0.55 * sum(widths) + 1.2 * len(widths), 4.2),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, algorithm in zip(axes[0], algorithms):
        rows = grid[grid["algorithm"] == algorithm]
        Ts, Ks, values = _grid(rows, "median_test_metric")
        diverged = int(rows["diverged"].sum())
        _panel(ax, Ts, Ks, values, norm, scaled,
               f"{catalog.label(algorithm)}\n({diverged} of {int(rows['runs'].sum())} runs diverged)")
    for ax, row in zip(axes[0][len(algorithms):], baseline.itertuples()):
        _panel(ax, [0], [0], [[float(row.median_test_metric)]], norm, scaled,
               f"{catalog.label(row.algorithm)}\n({int(row.diverged)} of {int(row.runs)} diverged)")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("")
        ax.set_ylabel("")
    fig.suptitle(f"{catalog.dataset_label(dataset)}: median final {catalog.metric_name(dataset)} x 1000",
                 fontsize=10)
    fig.tight_layout()
    return fig


PAPER_QUALITY_PANELS = {   # quantity: (title, format), the paper's Figure 8 (its formats: .1% and .0%)
    "relative_error_lr": ("lr: relative error of the first update (mean)", lambda v: f"{100 * v:.1f}%"),
    "relative_error_weight_decay": ("weight decay: relative error of the first update (mean)",
                                    lambda v: f"{100 * v:.0f}%"),
}
DIRECT_QUALITY_PANELS = {   # quantity: (statistic, title, format)
    "cosine_similarity": ("mean", "cosine similarity (mean)", lambda v: f"{v:.2f}"),
    "magnitude_ratio": ("median", "norm ratio ours / exact (median)", lambda v: f"{v:.2f}"),
    "relative_error_lr": ("mean", "lr: hypergradient relative error (mean)", lambda v: f"{100 * v:.0f}%"),
    "relative_error_weight_decay": ("mean", "weight decay: hypergradient relative error (mean)",
                                    lambda v: f"{100 * v:.0f}%"),
    "relative_error_momentum": ("mean", "momentum: hypergradient relative error (mean)",
                                lambda v: f"{100 * v:.0f}%"),
}


def _quality_panels(summary: pd.DataFrame, panels: dict, title: str):
    """Heatmaps of ``panels`` ({quantity: (statistic, title, format)}) of a quality table, each panel its own
    colour scale from 0 (or its lowest value, if negative) to its largest value."""
    names = [q for q in panels if q in set(summary["quantity"])]
    columns = min(3, len(names))
    rows_n = -(-len(names) // columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(4.2 * columns, 3.8 * rows_n), squeeze=False)
    for ax, quantity in zip(axes.flat, names):
        statistic, name, fmt = panels[quantity]
        Ts, Ks, values = _grid(summary[summary["quantity"] == quantity], statistic)
        finite = [v for row in values for v in row if math.isfinite(v)]
        low = min(0.0, min(finite)) if finite else 0.0
        norm = Normalize(vmin=low, vmax=max(finite) if finite and max(finite) > low else low + 1.0)
        _panel(ax, Ts, Ks, values, norm, fmt, name)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def quality(summary: pd.DataFrame, dataset: str):
    """The paper's hypergradient-quality heatmaps (its Figure 8): the mean relative error of the first update
    of lr and of weight decay, matched runs of the paper's method and Diff-through-Opt."""
    panels = {q: ("mean", *v) for q, v in PAPER_QUALITY_PANELS.items()}
    return _quality_panels(summary, panels, f"{catalog.dataset_label(dataset)}: relative error of the first "
                                            "hyperparameter update, ours against Diff-through-Opt")


def quality_direct(summary: pd.DataFrame, dataset: str):
    """This project's comparison of the hypergradients themselves: cosine similarity and norm ratio of the
    two vectors, and each hyperparameter's hypergradient relative error."""
    return _quality_panels(summary, DIRECT_QUALITY_PANELS, f"{catalog.dataset_label(dataset)}: the paper's "
                           "hypergradient against the exact one (this project's comparison)")


DRAW = {"sensitivity": sensitivity, "quality": quality, "quality_direct": quality_direct}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m onepass.heatmaps", description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=sorted(DRAW))
    p.add_argument("--table", required=True, help="the study's table (TSV)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", nargs="+", required=True, help="output files (.png, .svg)")
    args = p.parse_args(argv)
    table = pd.read_csv(args.table, sep="\t")
    if table.empty:
        print(f"error: {args.table} has no rows", file=sys.stderr)
        return 2
    save(DRAW[args.kind](table, args.dataset), args.out)
    print(f"{args.kind} -> {', '.join(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
