"""Figures of a population study (PNG + SVG), each algorithm in its catalogue colour and line style.

Every figure kind is registered once, with its title and caption (:data:`FIGURES`): the analysis pages
and the Snakemake report read them from here. Every line and point of an algorithm carries the
algorithm's name as its ``gid``, so that tests can check its colour and line style against the catalogue.

Axes follow one set of rules in every figure:

* a quantity is drawn on a log axis when all its values are positive and span more than a decade, decided
  once per figure (so that every panel of a figure has the same scale); its major ticks are decades, or
  1-2-5 steps within narrower views, every one labelled in plain numbers (``0.2``, ``10``, ``5000``) or,
  beyond 10^-4..10^5, as powers of ten, and minor ticks are never labelled;
* weight steps on a linear axis are labelled compactly (``20k``);
* curves against weight steps or time whose extents differ more than :data:`onepass.curves.LOG_SPAN` times (the black-box
  searches run over cumulative budgets of up to 30 single runs) share a log axis, so that no curve is
  squeezed into a corner.

The axes' ticks and labels and the palette PNGs are onepass.plotting's, shared with the appendix heatmaps.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from onepass import catalog, tables  # noqa: E402
from onepass.curves import envelope, envelope_populations, grid_points, held_on_grid, running_minima, spans  # noqa: E402
from onepass.collection import counted, load_histories, run_dir  # noqa: E402
from onepass.plotting import log_axis, save, steps_axis, style  # noqa: E402
from onepass.settings import HYPERPARAMETERS  # noqa: E402


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


HP_LABELS = {"lr": "learning rate", "weight_decay": "weight decay", "momentum": "momentum",
             "lr_step_factor": "LR step factor"}
LOG_HPS = {"lr", "weight_decay"}
SAMPLE_RUNS = 8
LINE_POINTS = 300  # at most this many points per drawn history (trajectories, best and worst runs)

plt.rcParams.update({"font.size": 10, "axes.titlesize": 10, "legend.fontsize": 8,
                     "svg.fonttype": "none", "figure.dpi": 100})


# ---- styles and axes ---------------------------------------------------------------------------------------

def _finite(values) -> np.ndarray:
    x = pd.to_numeric(pd.Series(np.ravel(np.asarray(values, dtype=object))), errors="coerce").to_numpy(float)
    return x[np.isfinite(x)]


def _positive(values) -> bool:
    """Whether values suit a log axis: all positive and spanning more than a decade."""
    x = _finite(values)
    return len(x) > 0 and bool((x > 0).all()) and x.max() > 10 * x.min()


def _all_positive(values) -> bool:
    """Whether every finite value is positive (a log axis is possible)."""
    x = _finite(values)
    return len(x) > 0 and bool((x > 0).all())


def _thin(frame: pd.DataFrame, n: int = LINE_POINTS) -> pd.DataFrame:
    """At most ``n`` evenly spaced rows of a history (first and last kept): a panel is a few hundred
    pixels wide, so more points only make the PNG larger."""
    if len(frame) <= n:
        return frame
    return frame.iloc[np.unique(np.linspace(0, len(frame) - 1, n).round().astype(int))]


def _no_data(ax, text="no finished runs yet"):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _algorithms(runs: pd.DataFrame) -> list:
    return catalog.order(runs["algorithm"].unique())


def _title(runs: pd.DataFrame, what: str) -> str:
    dataset = str(runs["dataset"].iloc[0]) if len(runs) else ""
    return f"{catalog.dataset_label(dataset)}: {what}"


def _metric(runs: pd.DataFrame) -> str:
    return catalog.metric_name(str(runs["dataset"].iloc[0])) if len(runs) else "test metric"


def _searches(algorithms) -> list:
    return [a for a in algorithms if catalog.is_search(a)]


def runs_per_algorithm(counts: dict) -> str:
    """'8 runs per algorithm', or with the exceptions named: '8 runs per algorithm (2 of ASHA, PBT)'."""
    counts = {a: n for a, n in counts.items()}
    if not counts:
        return "no runs"
    common = Counter(counts.values()).most_common(1)[0][0]
    text = f"{common} run{'s' if common != 1 else ''} per algorithm"
    others = {}
    for algorithm, n in counts.items():
        if n != common:
            others.setdefault(n, []).append(catalog.label(algorithm))
    if others:
        text += " (" + "; ".join(f"{n} of {', '.join(labels)}" for n, labels in sorted(others.items())) + ")"
    return text


# ---- figures -----------------------------------------------------------------------------------------------

@figure('edf', 'Empirical distribution of the final test metric',
        'Empirical distribution (EDF) of the final test metric on {dataset}: for each algorithm, the fraction of its runs whose final test metric is at most x. Curves further left and higher are better; diverged runs, and runs over a post-hoc divergence threshold, keep a curve below 1.')
def edf(runs: pd.DataFrame, runs_dir) -> plt.Figure:
    """Empirical CDF of the final test metric; diverged runs keep the curve below 1."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    present = counted(runs)
    populations = {a: g for a, g in present.groupby("algorithm")}
    populations.update(tables.derived_populations(runs))
    drawn = False
    for algorithm in catalog.order(populations):
        group = populations[algorithm]
        # a run over a post-hoc divergence threshold counts as diverged (the paper's figures.py:652-653)
        values = pd.to_numeric(group["test_metric"].where(~tables.flag(group, "over_threshold")),
                               errors="coerce").to_numpy(dtype=float)
        finite = np.sort(values[np.isfinite(values)])
        if not len(finite):
            continue
        frac = np.arange(1, len(finite) + 1) / len(values)
        ax.step(finite, frac, where="post", label=f"{catalog.label(algorithm)} (n={len(values)})",
                **style(algorithm))
        drawn = True
    if drawn:
        if _positive(runs["test_metric"]):
            log_axis(ax, "x")
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


SEARCH_NOTE = ("black-box searches ({searches}): the test metric of the best-by-validation evaluation so far, "
               "against cumulative search time")


def _progress(runs: pd.DataFrame, runs_dir) -> plt.Figure:
    """Median and best test metric across runs against wall time. A search's runs are its repetitions and
    their histories best-so-far curves against cumulative search time; when one curve reaches more than
    curves.LOG_SPAN times further than another, the x axis is logarithmic."""
    x = "time_s"
    hist = load_histories(runs, runs_dir)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), sharex=True, sharey=True)
    curves = {}
    for algorithm in _algorithms(runs):
        h = hist[hist["algorithm"] == algorithm]
        if not h.empty and np.isfinite(h[x].to_numpy(dtype=float)).any():
            curves[algorithm] = h
    log_x = spans([float(np.nanmax(h[x].to_numpy(dtype=float))) for h in curves.values()])
    xs = hist[x].to_numpy(dtype=float) if len(hist) else np.array([])
    positive = xs[np.isfinite(xs) & (xs > 0)]
    start = float(positive.min()) if len(positive) else 0.0
    for algorithm, h in curves.items():
        end = float(np.nanmax(h[x].to_numpy(dtype=float)))
        grid = grid_points(h[x].to_numpy(dtype=float), start, end, log_x)
        if not len(grid):
            continue
        values = held_on_grid(h, x, grid)
        with warnings.catch_warnings():  # all-NaN points (every run diverged) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            median, low = np.nanmedian(values, axis=1), np.nanmin(values, axis=1)
        for ax, y in zip(axes, (median, low)):
            ax.plot(grid, y, label=catalog.label(algorithm), drawstyle="steps-post",
                    lw=1.8 if catalog.is_search(algorithm) else 1.5, **style(algorithm))
    searches = _searches(curves)
    xlabel = "training time (s; searches: cumulative search time)" if searches else "training time (s)"
    drawn = bool(curves)
    log_y = drawn and _positive(hist["test_metric"])
    for ax, what in zip(axes, ("median", "best")):
        ax.set_title(_title(runs, f"{what} {_metric(runs)}"))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{what} {_metric(runs)}")
        ax.grid(alpha=0.3)
        if log_y:
            log_axis(ax, "y")
        if log_x:
            log_axis(ax, "x")
    axes[1].yaxis.set_tick_params(labelleft=True)
    if drawn:
        axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        _no_data(axes[0])
    if searches:
        note = SEARCH_NOTE.format(searches=", ".join(catalog.label(a) for a in searches))
        fig.text(0.01, 0.01, note, fontsize=8, color="#444444", ha="left", va="bottom")
        fig.tight_layout(rect=(0, 0.05, 1, 1))
    else:
        fig.tight_layout()
    return fig


def draw_envelopes(ax, curves: dict, column: str, log_x: bool, held: bool = False) -> list:
    """Each algorithm's loss envelope (:func:`envelope`: the bootstrap median ± its standard deviation) of its
    runs' curves ``curves[algorithm]`` against ``column``, on a grid from the smallest positive ``column`` of
    all to the algorithm's last (``log_x``: log-spaced); ``held``: drawn as steps (running minima). Returns
    the medians drawn."""
    ends = {a: float(np.nanmax(h[column].to_numpy(dtype=float))) for a, h in curves.items()}
    values = np.concatenate([h[column].to_numpy(dtype=float) for h in curves.values()]) if curves else np.array([])
    positive = values[np.isfinite(values) & (values > 0)]
    start = float(positive.min()) if len(positive) else 0.0
    drawn = []
    for algorithm, h in curves.items():
        grid = grid_points(h[column].to_numpy(dtype=float), start, ends[algorithm], log_x)
        if not len(grid):
            continue
        middle, spread = envelope(held_on_grid(h, column, grid))
        ax.plot(grid, middle, label=f"{catalog.label(algorithm)} (n={h['seed'].nunique()})",
                lw=1.8 if catalog.is_search(algorithm) else 1.5, **({"drawstyle": "steps-post"} if held else {}),
                **style(algorithm))
        ax.fill_between(grid, middle - spread, middle + spread, color=catalog.colour(algorithm),
                        alpha=0.25 if held else 0.3, linewidth=0, gid=algorithm, **({"step": "post"} if held else {}))
        drawn.append(middle)
    return drawn


@figure('test_vs_step', 'Test metric during training: the loss envelope',
        "The paper's loss figure on {dataset}: for each algorithm (not the black-box searches), the median test metric over its finished runs against the weight step, as the mean of 1000 bootstrap resamples' medians, with a band of ± their standard deviation, on a log axis. Runs that diverged or ended over a post-hoc divergence threshold are left out; Random (3-batched) takes its chosen runs in place of Random (validation)'s.")
def test_vs_step(runs: pd.DataFrame, runs_dir) -> plt.Figure:
    """The paper's loss envelope (figures.py:540-592): the bootstrap median ± its standard deviation of the
    test metric against the weight step, log y."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    curves = {}
    for algorithm, (seeds, source) in envelope_populations(runs).items():
        h = load_histories(runs[(runs["algorithm"] == source) & runs["seed"].isin(seeds)], runs_dir)
        if not h.empty and np.isfinite(h["step"].to_numpy(dtype=float)).any():
            curves[algorithm] = h
    log_x = spans([float(np.nanmax(h["step"].to_numpy(dtype=float))) for h in curves.values()])
    drawn = draw_envelopes(ax, curves, "step", log_x)
    if drawn and _all_positive(np.concatenate(drawn)):
        log_axis(ax, "y")
    if log_x:
        log_axis(ax, "x")
    else:
        steps_axis(ax.xaxis)
    if drawn:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        _no_data(ax)
    ax.set_xlabel("weight step")
    ax.set_ylabel(f"median {_metric(runs)}")
    ax.grid(alpha=0.3)
    ax.set_title(_title(runs, f"median {_metric(runs)} (bootstrap mean ± std)"))
    fig.tight_layout()
    return fig


@figure('test_vs_time', 'Running minimum of the test metric against time',
        "The paper's HPO curves on {dataset}: for each algorithm, the lowest test metric found so far against time: each run's running minimum, held on a common time grid, and over the runs the mean of 1000 bootstrap resamples' medians with a band of ± their standard deviation. For the black-box searches (Bayesian Optimisation, ASHA, PBT), a run is one repetition of the whole search and its running minimum is over every evaluation it has made, against cumulative search time. Both axes are logarithmic, as the paper's; Random (validation) is left out, as there. Selected on the test set, so optimistic: the next figure shows the test metric at the best validation loss.")
def test_vs_time(runs: pd.DataFrame, runs_dir) -> plt.Figure:
    """The paper's HPO curves for every algorithm (best_performance_over_time's, paper_plots.py:869-887; for
    ASHA and PBT ray_best_evolution, 398-433): the running minimum of the test metric against time, as the loss
    envelope of the runs' running minima, log axes; Random (validation) left out, as the paper's
    (ignore_algorithms, paper_plots.py:887), whose Random (3-batched) has no times of its own."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    curves = {}
    sources = {a.derived["from"] for a in catalog.derived_algorithms().values()}
    present = counted(runs)
    for algorithm in _algorithms(runs):
        seeds = [] if algorithm in sources else present[present["algorithm"] == algorithm]["seed"]
        m = running_minima({int(s): run_dir(runs_dir, algorithm, int(s)) for s in seeds}, catalog.is_search(algorithm))
        if not m.empty and (m["time_s"].to_numpy(dtype=float) > 0).any():
            curves[algorithm] = m
    # log x, the paper's (paper_plots.py:888): the first evaluations are seconds, a search hours
    drawn = draw_envelopes(ax, curves, "time_s", log_x=True, held=True)
    if drawn:
        log_axis(ax, "x")
        if _all_positive(np.concatenate(drawn)):
            log_axis(ax, "y")
    searches = _searches(curves)
    ax.set_xlabel("training time (s; searches: cumulative search time)" if searches else "training time (s)")
    ax.set_ylabel(f"lowest {_metric(runs)} so far")
    ax.grid(alpha=0.3)
    ax.set_title(_title(runs, f"running minimum of the {_metric(runs)}"))
    if drawn:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        _no_data(ax)
    if searches:
        fig.text(0.01, 0.01, "black-box searches ({}): the lowest test metric of any evaluation so far, against "
                 "cumulative search time".format(", ".join(catalog.label(a) for a in searches)),
                 fontsize=8, color="#444444", ha="left", va="bottom")
        fig.tight_layout(rect=(0, 0.05, 1, 1))
    else:
        fig.tight_layout()
    return fig


@figure('test_vs_time_by_validation', 'Test metric at the best validation loss against training time (onepass view, not the paper figure)',
        "This project's time comparison on {dataset}, beside the paper's running minimum: median (left) and best (right) test metric over each algorithm's runs against training time, each run's curve held from one logged time to the next on a common grid. For the black-box searches (Bayesian Optimisation, ASHA, PBT), a run is one repetition of the whole search and its curve is the test metric of the evaluation with the lowest validation loss so far, against cumulative search time; where these run several times longer than a single run, the time axis is logarithmic.")
def test_vs_time_by_validation(runs, runs_dir):
    """Median and best test metric against wall time (for a search, the best-so-far-by-validation test metric
    against cumulative search time): this project's honest view of the time comparison."""
    return _progress(runs, runs_dir)


def _panels(n_rows: int, n_cols: int, width: float = 3.6, height: float = 2.2, **kwargs):
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols, height * n_rows + 0.6),
                             squeeze=False, **kwargs)
    return fig, axes


def _tight(fig, left: float = 0.0) -> None:
    """tight_layout leaving half an inch for the suptitle and ``left`` inches for a supylabel."""
    fig.tight_layout(rect=(left / fig.get_figwidth(), 0, 1, 1 - 0.5 / fig.get_figheight()))


def _step_label(algorithms) -> str:
    return "weight step (searches: cumulative)" if _searches(algorithms) else "weight step"


@figure('trajectories', 'Hyperparameter trajectories',
        'Learning rate, weight decay and momentum during training on {dataset}, for a sample of runs of each algorithm (one row per algorithm, titled with its number of runs; each column on one scale). For a black-box search, the hyperparameters of its best-by-validation evaluation so far, against its cumulative weight steps.')
def trajectories(runs: pd.DataFrame, runs_dir) -> plt.Figure:
    """Learning rate, weight decay and momentum during training, for a sample of runs."""
    algorithms = _algorithms(runs) or ["none"]
    hist = load_histories(runs, runs_dir, per_algorithm=SAMPLE_RUNS)
    fig, axes = _panels(len(algorithms), len(HYPERPARAMETERS), height=2.0, sharex="row", sharey="col")
    shown = {}
    for i, algorithm in enumerate(algorithms):
        h = hist[hist["algorithm"] == algorithm]
        shown[algorithm] = int(h["seed"].nunique()) if len(h) else 0
        for j, hp in enumerate(HYPERPARAMETERS):
            ax = axes[i, j]
            for _, run in h.groupby("seed"):
                run = _thin(run)
                ax.plot(run["step"], run[hp], alpha=0.85, lw=1.1, **style(algorithm))
            if h.empty:
                _no_data(ax, "no runs")
            elif hp in LOG_HPS and _all_positive(hist[hp]):
                log_axis(ax, "y")
            ax.set_ylabel(HP_LABELS[hp])
            ax.grid(alpha=0.3)
            steps_axis(ax.xaxis)
            if i == len(algorithms) - 1:
                ax.set_xlabel(_step_label(algorithms))
        axes[i, len(HYPERPARAMETERS) // 2].set_title(
            f"{catalog.label(algorithm)} ({shown[algorithm]} run{'s' if shown[algorithm] != 1 else ''})")
    fig.suptitle(_title(runs, f"hyperparameter trajectories of {runs_per_algorithm(shown)}"))
    _tight(fig)
    return fig


@figure('error_vs_hyperparameter', 'Final test metric against each initial hyperparameter',
        'Final test metric on {dataset} against each initial hyperparameter (one row per algorithm, titled with its number of runs; one point per run, crosses at the top for diverged runs; every panel on the same scales). A flat cloud means the algorithm does not depend on its initialisation.')
def error_vs_hyperparameter(runs: pd.DataFrame, runs_dir) -> plt.Figure:
    """Final test metric against each initial hyperparameter; diverged runs as crosses on top."""
    algorithms = _algorithms(runs) or ["none"]
    hps = [hp for hp in HYPERPARAMETERS if f"init_{hp}" in runs]
    fig, axes = _panels(len(algorithms), len(hps), height=2.2, sharex="col", sharey=True)
    present = counted(runs)
    metric = pd.to_numeric(present["test_metric"], errors="coerce")
    finite = metric[np.isfinite(metric)]
    log_y = _positive(finite)
    top = finite.max() if len(finite) else 1.0
    for i, algorithm in enumerate(algorithms):
        sel = present["algorithm"] == algorithm
        ok = sel & np.isfinite(metric)
        bad = sel & (present["status"] == "diverged")
        for j, hp in enumerate(hps):
            ax = axes[i, j]
            x = pd.to_numeric(present[f"init_{hp}"], errors="coerce")
            ax.scatter(x[ok], metric[ok], s=10, color=catalog.colour(algorithm), alpha=0.7, linewidths=0,
                       gid=algorithm)
            if bad.any():
                ax.scatter(x[bad], np.full(int(bad.sum()), top), marker="x", color="black",
                           s=16, label="diverged", gid="diverged")
                ax.legend(loc="best")
            if i == 0 and hp in LOG_HPS and _positive(present[f"init_{hp}"]):
                log_axis(ax, "x")
            if i == 0 and j == 0 and log_y:
                log_axis(ax, "y")
            ax.set_xlabel(f"initial {HP_LABELS[hp]}")
            ax.tick_params(axis="x", labelbottom=True)  # shared columns: tick labels in every row
            ax.grid(alpha=0.3)
        n = int(sel.sum())
        axes[i, len(hps) // 2].set_title(f"{catalog.label(algorithm)} ({n} run{'s' if n != 1 else ''})")
    fig.supylabel(f"final {_metric(runs)}")
    fig.suptitle(_title(runs, "final test metric against initial hyperparameters"))
    _tight(fig, left=0.3)
    return fig


@figure('best_worst', 'Best and worst runs',
        "Test metric curves of each algorithm's best (thick) and worst (thin) finished run on {dataset}, in the algorithm's colour and line style, every panel on the same test-metric scale. For a black-box search, a run is one repetition and its curve the best-by-validation evaluation so far against cumulative weight steps.")
def best_worst(runs: pd.DataFrame, runs_dir) -> plt.Figure:
    """Test metric curves of each algorithm's best (thick) and worst (thin) finished run."""
    algorithms = _algorithms(runs) or ["none"]
    n_cols = min(3, len(algorithms))
    n_rows = int(np.ceil(len(algorithms) / n_cols))
    fig, axes = _panels(n_rows, n_cols, width=4.2, height=2.8, sharey=True)
    finished = runs[runs["status"] == "done"]
    metric = pd.to_numeric(finished["test_metric"], errors="coerce")
    curves = []
    for k, algorithm in enumerate(algorithms):
        ax = axes[k // n_cols, k % n_cols]
        done = finished[(finished["algorithm"] == algorithm) & np.isfinite(metric)]
        if done.empty:
            _no_data(ax, "no finished runs")
        else:
            order = done.assign(m=metric[done.index]).sort_values("m")
            picks = {"best": order.iloc[0], "worst": order.iloc[-1]}
            for name, run in picks.items():
                path = run_dir(runs_dir, algorithm, int(run["seed"])) / "history.csv"
                if not path.exists():
                    continue
                h = _thin(pd.read_csv(path))
                curves.append(h["test_metric"].to_numpy(dtype=float))
                ax.plot(h["step"], h["test_metric"], label=f"{name}: seed {int(run['seed'])} ({run['m']:.3g})",
                        lw=2.0 if name == "best" else 1.0, alpha=1.0 if name == "best" else 0.8,
                        **style(algorithm))
            ax.legend(loc="best")
        ax.set_title(f"{catalog.label(algorithm)} ({len(done)} finished)")
        ax.set_xlabel("cumulative weight step" if catalog.is_search(algorithm) else "weight step")
        if k % n_cols == 0:
            ax.set_ylabel(_metric(runs))
        ax.grid(alpha=0.3)
        steps_axis(ax.xaxis)
    for k in range(len(algorithms), n_rows * n_cols):
        axes[k // n_cols, k % n_cols].axis("off")
    if curves and _positive(np.concatenate(curves)):
        log_axis(axes[0, 0], "y")
    fig.suptitle(_title(runs, "best and worst runs"))
    _tight(fig)
    return fig


# ---- output ------------------------------------------------------------------------------------------------

def make(kind: str, runs: pd.DataFrame, runs_dir, out_paths) -> None:
    """Draw figure ``kind`` and save it to every path in ``out_paths`` (format from suffix)."""
    if kind not in FIGURES:
        raise ValueError(f"unknown figure kind {kind!r}; choose from {', '.join(FIGURES)}")
    save(FIGURES[kind].draw(runs, runs_dir), out_paths)


KINDS = tuple(FIGURES)
