"""Figures of a population study (PNG + SVG), each algorithm in its catalogue colour and line style.

Every figure kind is registered once, with its title and caption (:data:`FIGURES`): the analysis pages
and the Snakemake report read them from here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dataclasses import dataclass  # noqa: E402

from onepass import catalog, tables  # noqa: E402
from onepass.collection import counted, load_histories, run_dir  # noqa: E402


@dataclass(frozen=True)
class Figure:
    """A figure kind: how it is drawn, its heading and its caption (``{dataset}`` stands for the dataset)."""

    kind: str
    draw: object
    title: str
    caption: str


FIGURES: dict[str, Figure] = {}


def figure(kind: str, title: str, caption: str):
    """Register a drawing function as figure ``kind`` (in the order of the analysis page)."""
    def register(draw):
        FIGURES[kind] = Figure(kind, draw, title, " ".join(caption.split()))
        return draw
    return register


def caption(kind: str, dataset: str) -> str:
    """The caption of figure ``kind`` for a dataset (its label)."""
    return FIGURES[kind].caption.format(dataset=dataset)

HYPERPARAMETERS = ("lr", "weight_decay", "momentum")
HP_LABELS = {"lr": "learning rate", "weight_decay": "weight decay", "momentum": "momentum",
             "lr_step_factor": "LR step factor"}
LOG_HPS = {"lr", "weight_decay"}
SAMPLE_RUNS = 8

plt.rcParams.update({"font.size": 10, "axes.titlesize": 10, "legend.fontsize": 8,
                     "svg.fonttype": "none", "figure.dpi": 100})


def _positive(values) -> bool:
    """Whether values suit a log axis: all positive and spanning more than a decade."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    return len(x) > 0 and bool((x > 0).all()) and x.max() > 10 * x.min()


def _no_data(ax, text="no finished runs yet"):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _algorithms(runs: pd.DataFrame) -> list:
    return catalog.order(runs["algorithm"].unique())


def _title(runs: pd.DataFrame, what: str) -> str:
    dataset = str(runs["dataset"].iloc[0]) if len(runs) else ""
    return f"{catalog.dataset_label(dataset)}: {what}"


def _metric(runs: pd.DataFrame) -> str:
    return catalog.metric_name(str(runs["dataset"].iloc[0])) if len(runs) else "test metric"


@figure('edf', 'Empirical distribution of the final test metric',
        'Empirical distribution (EDF) of the final test metric on {dataset}: for each algorithm, the fraction of its runs whose final test metric is at most x. Curves further left and higher are better; diverged runs keep a curve below 1.')
def edf(runs: pd.DataFrame, runs_dir) -> plt.Figure:
    """Empirical CDF of the final test metric; diverged runs keep the curve below 1."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    present = counted(runs)
    populations = {a: g for a, g in present.groupby("algorithm")}
    populations.update(tables.derived_populations(runs))
    drawn = False
    for algorithm in catalog.order(populations):
        group = populations[algorithm]
        values = pd.to_numeric(group["test_metric"], errors="coerce").to_numpy(dtype=float)
        finite = np.sort(values[np.isfinite(values)])
        if not len(finite):
            continue
        frac = np.arange(1, len(finite) + 1) / len(values)
        ax.step(finite, frac, where="post", color=catalog.colour(algorithm),
                label=f"{catalog.label(algorithm)} (n={len(values)})")
        drawn = True
    if drawn:
        if _positive(runs["test_metric"]):
            ax.set_xscale("log")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        _no_data(ax)
    ax.set_xlabel(f"final {_metric(runs)}")
    ax.set_ylabel("fraction of runs")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(_title(runs, "EDF of final test metric"))
    fig.tight_layout()
    return fig


def held_on_grid(h: pd.DataFrame, x: str, grid: np.ndarray) -> np.ndarray:
    """Each run's test metric held from one logged ``x`` to the next, on a common grid
    (shape: grid points x runs). Runs are logged at their own steps and times, and a diverged
    run's last row is NaN, so curves are aligned this way rather than by row."""
    columns = []
    for _, run in h.groupby("seed"):
        run = run.sort_values(x)
        xs = run[x].to_numpy(dtype=float)
        ys = run["test_metric"].to_numpy(dtype=float)
        at = np.searchsorted(xs, grid, side="right") - 1
        columns.append(np.where(at >= 0, ys[np.clip(at, 0, None)], np.nan))
    return np.stack(columns, axis=1)


SEARCH_NOTE = {
    "step": "dashed: black-box searches; their curve is the test metric of the best-by-validation "
            "evaluation so far, against the search's cumulative weight steps",
    "time_s": "dashed: black-box searches; their curve is the test metric of the best-by-validation "
              "evaluation so far, against cumulative search time",
}


def _spans_decades(ends) -> bool:
    """Whether the longest curve reaches more than 10x further than the shortest (log x axis)."""
    ends = np.asarray([e for e in ends if np.isfinite(e) and e > 0], dtype=float)
    return len(ends) > 1 and ends.max() > 10 * ends.min()


def _progress(runs: pd.DataFrame, runs_dir, x: str) -> plt.Figure:
    """Median and best test metric across runs against step or wall time. A search's runs are its
    repetitions and their histories best-so-far curves against cumulative budget, drawn dashed; when
    the longest curve is more than 10x the shortest, the x axis is logarithmic."""
    hist = load_histories(runs, runs_dir)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), sharex=True)
    searches = False
    curves = {}
    for algorithm in _algorithms(runs):
        h = hist[hist["algorithm"] == algorithm]
        if not h.empty and np.isfinite(h[x].to_numpy(dtype=float)).any():
            curves[algorithm] = h
    xs = hist[x].to_numpy(dtype=float) if len(hist) else np.array([])
    log_x = _spans_decades([float(np.nanmax(h[x].to_numpy(dtype=float))) for h in curves.values()])
    positive = xs[np.isfinite(xs) & (xs > 0)]
    start = float(positive.min()) if len(positive) else 0.0
    for algorithm, h in curves.items():
        end = float(np.nanmax(h[x].to_numpy(dtype=float)))
        if x == "step":
            grid = np.unique(h["step"].to_numpy(dtype=float))
            grid = grid[grid > 0] if log_x else grid
        elif log_x:
            grid = np.geomspace(start, max(end, start), 200)
        else:
            grid = np.linspace(0.0, end, 200)
        if not len(grid):
            continue
        values = held_on_grid(h, x, grid)
        with warnings.catch_warnings():  # all-NaN points (every run diverged) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            median, low = np.nanmedian(values, axis=1), np.nanmin(values, axis=1)
        search = catalog.is_search(algorithm)
        searches = searches or search
        for ax, y in zip(axes, (median, low)):
            ax.plot(grid, y, color=catalog.colour(algorithm), label=catalog.label(algorithm),
                    drawstyle="steps-post", ls="--" if search else "-", lw=1.8 if search else 1.5)
    drawn = bool(curves)
    xlabel = {"step": "weight step", "time_s": "training time (s)"}[x]
    if searches:
        xlabel = {"step": "weight step (searches: cumulative)",
                  "time_s": "training time (s; searches: cumulative search time)"}[x]
    for ax, what in zip(axes, ("median", "best")):
        ax.set_title(_title(runs, f"{what} {_metric(runs)}"))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{what} {_metric(runs)}")
        ax.grid(alpha=0.3)
        if drawn and _positive(hist["test_metric"]):
            ax.set_yscale("log")
        if log_x:
            ax.set_xscale("log")
    if drawn:
        axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        _no_data(axes[0])
    if searches:
        fig.text(0.01, 0.01, SEARCH_NOTE[x], fontsize=8, color="#444444", ha="left", va="bottom")
        fig.tight_layout(rect=(0, 0.05, 1, 1))
    else:
        fig.tight_layout()
    return fig


@figure('test_vs_step', 'Test metric during training (by step)',
        "Median (left) and best (right) test metric over each algorithm's runs on {dataset}, against the weight step. For the black-box searches (dashed), a run is one repetition of the whole search and its curve is the test metric of the best-by-validation evaluation so far, against the search's cumulative weight steps.")
def test_vs_step(runs, runs_dir):
    """Median and best test metric against weight step."""
    return _progress(runs, runs_dir, "step")


@figure('test_vs_time', 'Test metric against training time (the time comparison)',
        "The time comparison on {dataset}: median (left) and best (right) test metric over each algorithm's runs against training time, each run's curve held from one logged time to the next on a common grid. For the black-box searches (dashed), a run is one repetition of the whole search and its curve is the test metric of the evaluation with the lowest validation loss so far, against cumulative search time.")
def test_vs_time(runs, runs_dir):
    """Median and best test metric against wall time: the paper's time comparison (for a search,
    the best-so-far-by-validation test metric against cumulative search time)."""
    return _progress(runs, runs_dir, "time_s")


def _grid(n_rows: int, n_cols: int, width: float = 3.6, height: float = 2.2):
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols, height * n_rows + 0.6),
                             squeeze=False)
    return fig, axes


def _tight(fig) -> None:
    """tight_layout leaving half an inch for the suptitle."""
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))


@figure('trajectories', 'Hyperparameter trajectories',
        'Learning rate, weight decay and momentum during training on {dataset}, for a sample of runs of each algorithm (one row per algorithm).')
def trajectories(runs: pd.DataFrame, runs_dir) -> plt.Figure:
    """Learning rate, weight decay and momentum during training, for a sample of runs."""
    algorithms = _algorithms(runs) or ["none"]
    hist = load_histories(runs, runs_dir, per_algorithm=SAMPLE_RUNS)
    fig, axes = _grid(len(algorithms), len(HYPERPARAMETERS))
    for i, algorithm in enumerate(algorithms):
        h = hist[hist["algorithm"] == algorithm]
        for j, hp in enumerate(HYPERPARAMETERS):
            ax = axes[i, j]
            for _, run in h.groupby("seed"):
                ax.plot(run["step"], run[hp], color=catalog.colour(algorithm), alpha=0.7, lw=1)
            if h.empty:
                _no_data(ax, "no runs")
            elif hp in LOG_HPS and _positive(h[hp]):
                ax.set_yscale("log")
            ax.set_title(f"{catalog.label(algorithm)}: {HP_LABELS[hp]}")
            ax.grid(alpha=0.3)
            if i == len(algorithms) - 1:
                ax.set_xlabel("weight step")
    fig.suptitle(_title(runs, f"hyperparameter trajectories ({SAMPLE_RUNS} runs per algorithm)"))
    _tight(fig)
    return fig


@figure('error_vs_hyperparameter', 'Final test metric against each initial hyperparameter',
        'Final test metric on {dataset} against each initial hyperparameter (one point per run, crosses for diverged runs). A flat cloud means the algorithm does not depend on its initialisation.')
def error_vs_hyperparameter(runs: pd.DataFrame, runs_dir) -> plt.Figure:
    """Final test metric against each initial hyperparameter; diverged runs as crosses on top."""
    algorithms = _algorithms(runs) or ["none"]
    hps = [hp for hp in HYPERPARAMETERS if f"init_{hp}" in runs]
    fig, axes = _grid(len(algorithms), len(hps))
    metric = pd.to_numeric(runs["test_metric"], errors="coerce")
    finite = metric[np.isfinite(metric)]
    log_y = _positive(finite)
    top = finite.max() if len(finite) else 1.0
    for i, algorithm in enumerate(algorithms):
        sel = runs["algorithm"] == algorithm
        ok = sel & np.isfinite(metric)
        bad = sel & (runs["status"] == "diverged")
        for j, hp in enumerate(hps):
            ax = axes[i, j]
            x = pd.to_numeric(runs[f"init_{hp}"], errors="coerce")
            ax.scatter(x[ok], metric[ok], s=12, color=catalog.colour(algorithm), alpha=0.8)
            if bad.any():
                ax.scatter(x[bad], np.full(int(bad.sum()), top), marker="x", color="black",
                           s=16, label="diverged")
                ax.legend(loc="best")
            if hp in LOG_HPS and _positive(x[sel]):
                ax.set_xscale("log")
            if log_y:
                ax.set_yscale("log")
            ax.set_title(catalog.label(algorithm))
            ax.set_xlabel(f"initial {HP_LABELS[hp]}")
            if j == 0:
                ax.set_ylabel(f"final {_metric(runs)}")
            ax.grid(alpha=0.3)
    fig.suptitle(_title(runs, "final test metric against initial hyperparameters"))
    _tight(fig)
    return fig


@figure('best_worst', 'Best and worst runs',
        "Test metric curves of each algorithm's best (solid) and worst (dashed) finished run on {dataset}.")
def best_worst(runs: pd.DataFrame, runs_dir) -> plt.Figure:
    """Test metric curves of each algorithm's best (solid) and worst (dashed) finished run."""
    algorithms = _algorithms(runs) or ["none"]
    n_cols = min(3, len(algorithms))
    n_rows = int(np.ceil(len(algorithms) / n_cols))
    fig, axes = _grid(n_rows, n_cols, width=4.0, height=2.8)
    metric = pd.to_numeric(runs["test_metric"], errors="coerce")
    for k, algorithm in enumerate(algorithms):
        ax = axes[k // n_cols, k % n_cols]
        done = runs[(runs["algorithm"] == algorithm) & np.isfinite(metric)]
        if done.empty:
            _no_data(ax, "no finished runs")
        else:
            order = done.assign(m=metric[done.index]).sort_values("m")
            picks = {"best": order.iloc[0], "worst": order.iloc[-1]}
            for name, run in picks.items():
                path = run_dir(runs_dir, algorithm, int(run["seed"])) / "history.csv"
                if not path.exists():
                    continue
                h = pd.read_csv(path)
                ax.plot(h["step"], h["test_metric"], color=catalog.colour(algorithm),
                        ls="-" if name == "best" else "--",
                        label=f"{name}: seed {int(run['seed'])} ({run['m']:.3g})")
            if _positive(metric[done.index]):
                ax.set_yscale("log")
            ax.legend(loc="best")
        ax.set_title(catalog.label(algorithm))
        ax.set_xlabel("weight step")
        ax.set_ylabel(_metric(runs))
        ax.grid(alpha=0.3)
    for k in range(len(algorithms), n_rows * n_cols):
        axes[k // n_cols, k % n_cols].axis("off")
    fig.suptitle(_title(runs, "best and worst runs"))
    _tight(fig)
    return fig


def make(kind: str, runs: pd.DataFrame, runs_dir, out_paths) -> None:
    """Draw figure ``kind`` and save it to every path in ``out_paths`` (format from suffix)."""
    if kind not in FIGURES:
        raise ValueError(f"unknown figure kind {kind!r}; choose from {', '.join(FIGURES)}")
    fig = FIGURES[kind].draw(runs, runs_dir)
    for path in out_paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    plt.close(fig)


KINDS = tuple(FIGURES)
