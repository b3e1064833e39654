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
from onepass.figures import save  # noqa: E402

CAPTIONS = {
    "sensitivity": "Sensitivity of {dataset} to the update interval T (weight steps per hyperparameter step) "
                   "and the look-back K (Neumann terms for the paper's method; unrolled steps for "
                   "Diff-through-Opt, K <= T): the median final {metric} of the runs that did not diverge, "
                   "every cell the same number of hyperparameter steps, one colour scale for every panel "
                   "(darker is better). The baseline is one cell. As the paper's Figure 7.",
    "quality": "How near the paper's hypergradient comes to the exact one on {dataset}, per update interval T "
               "and Neumann terms K <= T, over the initialisations and the first hyperparameter steps: the cosine "
               "similarity and norm ratio of the two hypergradient vectors (log10 lr, log10 weight decay, "
               "momentum logit), and the relative error abs(exact - ours) / abs(exact) per hyperparameter "
               "(its Figure 8 shows the first step's). The exact hypergradient differentiates the same last K "
               "weight steps from the same weights and batches; with K = 1 the two are the same derivative.",
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
    """One heatmap, every cell labelled with its value (darker cells smaller values)."""
    ax.imshow(values, norm=norm, cmap=cmap, aspect="auto")
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


def significant(v: float) -> str:
    """Three significant digits."""
    return f"{v:.3g}"


def sensitivity(table: pd.DataFrame, dataset: str):
    """The sensitivity heatmaps: a panel per grid algorithm and the baseline's single cell, one colour
    scale from 0 to the largest median of any panel (as the paper's shared normaliser)."""
    grid = table[table["cell"] != "baseline"]
    baseline = table[table["cell"] == "baseline"]
    algorithms = catalog.order(grid["algorithm"].unique())
    finite = [v for v in table["median_test_metric"] if math.isfinite(v)]
    norm = Normalize(vmin=0, vmax=max(finite) if finite else 1.0)
    widths = [max(2, len(set(grid[grid["algorithm"] == a]["lookback"]))) for a in algorithms]
    widths += [1] * len(baseline)
    fig, axes = plt.subplots(1, len(widths), figsize=(1.2 + 0.55 * sum(widths) + 1.2 * len(widths), 4.2),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, algorithm in zip(axes[0], algorithms):
        rows = grid[grid["algorithm"] == algorithm]
        Ts, Ks, values = _grid(rows, "median_test_metric")
        diverged = int(rows["diverged"].sum())
        _panel(ax, Ts, Ks, values, norm, significant,
               f"{catalog.label(algorithm)}\n({diverged} of {int(rows['runs'].sum())} runs diverged)")
    for ax, row in zip(axes[0][len(algorithms):], baseline.itertuples()):
        _panel(ax, [0], [0], [[float(row.median_test_metric)]], norm, significant,
               f"{catalog.label(row.algorithm)}\n({int(row.diverged)} of {int(row.runs)} diverged)")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("")
        ax.set_ylabel("")
    fig.suptitle(f"{catalog.dataset_label(dataset)}: median final {catalog.metric_name(dataset)}",
                 fontsize=10)
    fig.tight_layout()
    return fig


QUALITY_PANELS = {   # quantity: (statistic, title, format)
    "cosine_similarity": ("mean", "cosine similarity (mean)", lambda v: f"{v:.2f}"),
    "magnitude_ratio": ("median", "|ours| / |exact| (median)", lambda v: f"{v:.2f}"),
    "relative_error_lr": ("mean", "lr: relative error (mean)", lambda v: f"{100 * v:.0f}%"),
    "relative_error_weight_decay": ("mean", "weight decay: relative error (mean)", lambda v: f"{100 * v:.0f}%"),
    "relative_error_momentum": ("mean", "momentum: relative error (mean)", lambda v: f"{100 * v:.0f}%"),
}


def quality(summary: pd.DataFrame, dataset: str):
    """The hypergradient-quality heatmaps: cosine similarity and norm ratio of the two hypergradients, and
    the paper's relative error per hyperparameter, each panel its own colour scale."""
    panels = [q for q in QUALITY_PANELS if q in set(summary["quantity"])]
    columns = min(3, len(panels))
    rows_n = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(4.2 * columns, 3.8 * rows_n), squeeze=False)
    for ax, quantity in zip(axes.flat, panels):
        statistic, title, fmt = QUALITY_PANELS[quantity]
        rows = summary[summary["quantity"] == quantity]
        Ts, Ks, values = _grid(rows, statistic)
        finite = [v for row in values for v in row if math.isfinite(v)]
        low = min(0.0, min(finite)) if finite else 0.0
        norm = Normalize(vmin=low, vmax=max(finite) if finite and max(finite) > low else low + 1.0)
        _panel(ax, Ts, Ks, values, norm, fmt, title)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{catalog.dataset_label(dataset)}: the paper's hypergradient against the exact one",
                 fontsize=10)
    fig.tight_layout()
    return fig


DRAW = {"sensitivity": sensitivity, "quality": quality}


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
