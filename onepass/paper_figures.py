"""The paper's figures that its per-dataset figures do not cover (onepass.paper_studies says which a study
makes), each from runs.tsv and the runs' records:

* ``proof_of_concept`` (the paper's proof_of_concept, paper_plots.py 790-822): the final test metric of one
  set of runs over their initial learning rate and weight decay, smoothed onto a grid by a Gaussian process
  (RBF + white noise on log10 values, as the paper's figures.py 737-748), the region where the nearest run
  diverged hatched, and the hyperparameter trajectories of another set of runs drawn through it;
* ``learning_rates`` (uci_sample_learning_rates, 714-772): every algorithm's learning rate over the weight
  steps of one seed, on a log axis;
* ``runtimes`` (large_scale_runtimes, 775-787): a violin of each algorithm's run durations, its mean (circle)
  and median (cross);
* ``best_over_time`` (best_performance_over_time, 825-899): each run's running minimum of the test metric
  against its cumulative time (a search's: over its evaluations, against cumulative search time), the
  median over the runs ± the standard deviation of 1000 bootstrap medians, on log axes;
* ``error_cdfs`` (the test-error half of ``cdfs``, 685-711, CDF_Error_*; figures.py 641-660): the empirical
  CDF of each algorithm's final test error (1 - accuracy) on a classification dataset, on [0, 1], diverged
  runs included at the error of a network whose outputs are NaN (as the error tables, onepass.tables).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from onepass import catalog, tables  # noqa: E402
from onepass.collection import counted, load_histories, read_runs, run_dir  # noqa: E402
from onepass.plotting import log_axis, save, steps_axis, style  # noqa: E402
from onepass.settings import load_settings  # noqa: E402

CAPTIONS = {
    "proof_of_concept": "The paper's proof of concept on {dataset}: the final {metric} of Random runs (colour) "
                        "over their initial learning rate and weight decay, drawn from a box wider than the "
                        "study's, smoothed by a Gaussian process on the log values; hatched where the nearest "
                        "Random run diverged. Lines: the learning rate and weight decay of {count} runs of "
                        "{trajectory} as it trains, from a circle (start) to a square (end).",
    "learning_rates": "The learning rate of every algorithm over the weight steps of one initialisation (seed "
                      "{seed}) on {dataset}, on a log axis (the paper's uci_sample_learning_rates). Algorithms "
                      "with a learning rate per weight and the black-box searches are left out.",
    "runtimes": "Run durations on {dataset}: one violin per algorithm over its finished runs, with the mean "
                "(circle) and median (cross). A run's duration is its population's wall time shared equally "
                "among the population's runs.",
    "best_over_time": "Best {metric} found so far against cumulative time on {dataset}: each run's running "
                      "minimum of the test metric, the median over the runs with a band of plus or minus the "
                      "standard deviation of 1000 bootstrap medians. A black-box search's run is one repetition: "
                      "the lowest test metric of its evaluations so far, against cumulative search time.",
    "error_cdfs": "Empirical CDF of the final test error (1 - accuracy) on {dataset}: for each algorithm, the "
                  "fraction of its finished and diverged runs whose final test error is at most x (the paper's "
                  "CDF_Error figures). A diverged run counts at the error of a network whose outputs are NaN.",
}
GRID = 100            # heatmap cells per axis
TIME_POINTS = 200     # points of a best-over-time curve
N_BOOT = 1000
COLOURMAP = "viridis"


def caption(kind: str, dataset: str, **extra) -> str:
    """The caption of a figure ``kind`` for ``dataset`` (a catalogue name)."""
    return CAPTIONS[kind].format(dataset=catalog.dataset_label(dataset), metric=catalog.metric_name(dataset),
                                 **{k: catalog.label(v) if k == "trajectory" else v for k, v in extra.items()})


def _runs_of(runs: pd.DataFrame, algorithm: str) -> pd.DataFrame:
    return counted(runs)[counted(runs)["algorithm"] == algorithm]


# ---- proof of concept --------------------------------------------------------------------------------------
def heat_grid(points: np.ndarray, values: np.ndarray, cells: int = GRID):
    """The grid of a heatmap over log10 points (n x 2) of final ``values`` (NaN: diverged): the x and y edges
    (log10), the smoothed values (a Gaussian process, RBF + white noise, on log10 of the finite values, clipped
    to their range) and the mask of cells whose nearest point diverged."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, WhiteKernel

    lo, hi = points.min(axis=0), points.max(axis=0)
    xs, ys = (np.linspace(lo[i], hi[i], cells) for i in (0, 1))
    grid = np.column_stack([g.ravel() for g in np.meshgrid(xs, ys)])
    finite = np.isfinite(values) & (values > 0)
    smooth = np.full(len(grid), np.nan)
    if finite.sum() >= 2:
        gp = GaussianProcessRegressor(kernel=RBF() + WhiteKernel(), normalize_y=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings on a few points
            gp.fit(points[finite], np.log10(values[finite]))
        # kept within the runs' own range: the smoothing shows no value that no run reached
        smooth = np.clip(10 ** gp.predict(grid), values[finite].min(), values[finite].max())
    nearest = np.argmin(((grid[:, None, :] - points[None, :, :]) ** 2).sum(-1), axis=1)
    nan_cells = ~finite[nearest]
    return xs, ys, smooth.reshape(cells, cells), nan_cells.reshape(cells, cells)


def proof_of_concept(heat_runs, heat_algorithm, trajectory_runs, trajectory_dir, trajectory_algorithm,
                     count: int) -> plt.Figure:
    """The heatmap of ``heat_runs``' final test metric over their initial (lr, weight decay) with the
    trajectories of the first ``count`` finished runs of ``trajectory_algorithm`` drawn through it."""
    fig, ax = plt.subplots(figsize=(6.5, 5.2))
    heat = _runs_of(heat_runs, heat_algorithm)
    dataset = str(heat_runs["dataset"].iloc[0]) if len(heat_runs) else ""
    if len(heat) >= 2:
        points = np.log10(heat[["init_lr", "init_weight_decay"]].to_numpy(dtype=float))
        values = pd.to_numeric(heat["test_metric"], errors="coerce").to_numpy(dtype=float)
        xs, ys, smooth, nan_cells = heat_grid(points, values)
        finite = smooth[np.isfinite(smooth)]
        norm = LogNorm(vmin=finite.min(), vmax=finite.max()) if len(finite) else None
        mesh = ax.pcolormesh(10 ** xs, 10 ** ys, np.where(nan_cells, np.nan, smooth), shading="nearest",
                             cmap=COLOURMAP, norm=norm, rasterized=True)
        hatched = ax.contourf(10 ** xs, 10 ** ys, nan_cells.astype(float), levels=[0.5, 1.5], colors="none",
                              hatches=["xx"])
        hatched.set_gid("diverged")
        fig.colorbar(mesh, ax=ax, label=f"final {catalog.metric_name(dataset)} ({catalog.label(heat_algorithm)})")
        ax.scatter(10 ** points[:, 0], 10 ** points[:, 1], s=4, c="white", edgecolors="none", alpha=0.6,
                   gid=f"{heat_algorithm}-initialisations")
    trajectories = _runs_of(trajectory_runs, trajectory_algorithm)
    trajectories = trajectories[trajectories["status"] == "done"].sort_values("seed").head(count)
    hist = load_histories(trajectories, trajectory_dir)
    for seed, h in hist.groupby("seed"):
        h = h.sort_values("step")
        line, = ax.plot(h["lr"], h["weight_decay"], lw=0.8, gid=f"{trajectory_algorithm}-{seed}")
        ax.plot(h["lr"].iloc[0], h["weight_decay"].iloc[0], "o", color=line.get_color(), ms=4)
        ax.plot(h["lr"].iloc[-1], h["weight_decay"].iloc[-1], "s", color=line.get_color(), ms=4)
    log_axis(ax, "x")
    log_axis(ax, "y")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("weight decay")
    ax.set_title(f"{catalog.dataset_label(catalog.dataset(dataset).base) if dataset else ''}: proof of concept")
    fig.tight_layout()
    return fig


# ---- learning rates of one seed ----------------------------------------------------------------------------
def lr_algorithms(runs: pd.DataFrame) -> list[str]:
    """The algorithms of ``runs`` with one learning rate to show: trained (not searches) and not per weight."""
    dataset = str(runs["dataset"].iloc[0])
    return [a for a in catalog.order(runs["algorithm"].unique())
            if not catalog.is_search(a) and not load_settings(dataset, a)["lr_per_weight"]]


def learning_rates(runs: pd.DataFrame, runs_dir, seed: int) -> plt.Figure:
    """Every algorithm's learning rate over the weight steps of run ``seed``."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    chosen = runs[(runs["seed"] == seed) & runs["algorithm"].isin(lr_algorithms(runs))] if len(runs) else runs
    hist = load_histories(chosen, runs_dir)
    for algorithm in catalog.order(hist["algorithm"].unique()):
        h = hist[hist["algorithm"] == algorithm].sort_values("step")
        ax.plot(h["step"], h["lr"], label=catalog.label(algorithm), **style(algorithm))
    if len(hist):
        log_axis(ax, "y")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    steps_axis(ax.xaxis)
    dataset = str(runs["dataset"].iloc[0]) if len(runs) else ""
    ax.set_xlabel("weight step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{catalog.dataset_label(dataset)}: learning rates of seed {seed}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---- run durations -----------------------------------------------------------------------------------------
def runtimes(runs: pd.DataFrame) -> plt.Figure:
    """A violin of every trained algorithm's finished runs' durations (wall_time_s)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    done = runs[runs["status"] == "done"] if len(runs) else runs
    shown = [a for a in catalog.order(done["algorithm"].unique()) if not catalog.is_search(a)] if len(done) else []
    for i, algorithm in enumerate(shown):
        times = pd.to_numeric(done.loc[done["algorithm"] == algorithm, "wall_time_s"], errors="coerce").dropna()
        times = times.to_numpy(dtype=float)
        colour = catalog.colour(algorithm)
        if len(times) > 1 and times.max() > times.min():
            parts = ax.violinplot([times], positions=[i], showextrema=False)
            for body in parts["bodies"]:
                body.set_facecolor(colour)
                body.set_gid(algorithm)
        ax.scatter([i], [times.mean()], marker="o", color=colour, gid=algorithm)
        ax.scatter([i], [np.median(times)], marker="x", color=colour, gid=algorithm)
    ax.set_xticks(range(len(shown)), [catalog.label(a) for a in shown], rotation=30, ha="right")
    ax.set_ylabel("run duration (s)")
    dataset = str(runs["dataset"].iloc[0]) if len(runs) else ""
    ax.set_title(f"{catalog.dataset_label(dataset)}: run durations")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


# ---- test-error CDFs ---------------------------------------------------------------------------------------
def error_cdf_points(values) -> tuple[np.ndarray, np.ndarray]:
    """The paper's step curve of an empirical CDF (figures.py 654-659): the sorted values, each twice, against
    the fractions 0, 1/n, 1/n, 2/n, ..., 1 (NaN values sort last and leave the curve below 1)."""
    x = np.sort(np.asarray(values, dtype=float))
    fractions = np.linspace(0.0, 1.0, len(x) + 1)
    return np.repeat(x, 2), np.repeat(fractions, 2)[1:-1]


def error_cdfs(runs: pd.DataFrame) -> plt.Figure:
    """Every algorithm's empirical CDF of its final test error (tables.error_values: finished and diverged
    runs), Random (3-batched) among them where the study has its source, on linear axes [0, 1] x [0, 1]."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    dataset = str(runs["dataset"].iloc[0]) if len(runs) else ""
    populations = tables.error_populations(runs, dataset) if len(runs) else {}
    for algorithm in catalog.order(populations):
        errors, _ = tables.error_values(populations[algorithm], dataset)
        errors = errors[populations[algorithm]["status"].isin(("done", "diverged"))].to_numpy(dtype=float)
        if not np.isfinite(errors).any():
            continue
        x, y = error_cdf_points(errors)
        ax.plot(x, y, label=f"{catalog.label(algorithm)} (n={len(errors)})", **style(algorithm))
    if ax.get_lines():
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "no finished runs with a test accuracy", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("final test error")
    ax.set_ylabel("empirical CDF")
    ax.set_title(f"{catalog.dataset_label(dataset)}: CDF of the final test error", loc="left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---- best performance over time ----------------------------------------------------------------------------
def running_minimum(values) -> np.ndarray:
    """The running minimum of ``values``, NaN counted as +inf (as the paper's paper_plots.py 869-872)."""
    x = np.asarray(values, dtype=float)
    return np.minimum.accumulate(np.where(np.isnan(x), np.inf, x))


def best_curves(runs: pd.DataFrame, runs_dir) -> dict:
    """{algorithm: [(times, running minimum) per run]}: a trained run's test metric from its history.csv
    against its time; a search's lowest test metric of each evaluation (evaluations.csv: min_test_metric,
    else test_metric) against cumulative search time."""
    curves = {}
    for r in counted(runs).itertuples():
        directory = run_dir(runs_dir, r.algorithm, r.seed)
        if catalog.is_search(r.algorithm):
            path = directory / "evaluations.csv"
            if not path.exists():
                continue
            ev = pd.read_csv(path)
            column = "min_test_metric" if ev["min_test_metric"].notna().any() else "test_metric"
            times, values = ev["cumulative_time_s"], ev[column]
        else:
            path = directory / "history.csv"
            if not path.exists():
                continue
            h = pd.read_csv(path).sort_values("step")
            times, values = h["time_s"], h["test_metric"]
        curves.setdefault(r.algorithm, []).append((times.to_numpy(dtype=float), running_minimum(values)))
    return curves


def held(times: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``values`` held from one time to the next on ``grid`` (NaN before the first time and where infinite)."""
    at = np.searchsorted(times, grid, side="right") - 1
    out = np.where(at >= 0, values[np.clip(at, 0, None)], np.nan)
    return np.where(np.isfinite(out), out, np.nan)


def median_band(matrix: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``matrix`` (runs x points): the mean of ``n_boot`` bootstrap medians over the runs and
    their standard deviation (NaNs ignored), as the paper's envelopes (figures.py 540-592)."""
    rng = np.random.default_rng(seed)
    samples = matrix[rng.integers(0, len(matrix), size=(n_boot, len(matrix)))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        medians = np.nanmedian(samples, axis=1)
        return np.nanmean(medians, axis=0), np.nanstd(medians, axis=0)


def best_over_time(runs: pd.DataFrame, runs_dir) -> plt.Figure:
    """Every algorithm's running-minimum test metric against cumulative time: bootstrap median ± SD."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    curves = best_curves(runs, runs_dir)
    times = np.concatenate([t for runs_ in curves.values() for t, _ in runs_] or [np.array([])])
    times = times[np.isfinite(times) & (times > 0)]
    drawn = []
    if len(times):
        grid = np.geomspace(times.min(), times.max(), TIME_POINTS)
        for algorithm in catalog.order(curves):
            matrix = np.stack([held(t, v, grid) for t, v in curves[algorithm]])
            centre, spread = median_band(matrix)
            kw = style(algorithm)
            ax.plot(grid, centre, label=catalog.label(algorithm), drawstyle="steps-post", **kw)
            ax.fill_between(grid, centre - spread, centre + spread, step="post", alpha=0.25, color=kw["color"],
                            gid=algorithm)
            drawn.append(centre)
    if drawn:
        log_axis(ax, "x")
        values = np.concatenate(drawn)
        if (values[np.isfinite(values)] > 0).all():
            log_axis(ax, "y")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    dataset = str(runs["dataset"].iloc[0]) if len(runs) else ""
    ax.set_xlabel("cumulative time (s)")
    ax.set_ylabel(f"best {catalog.metric_name(dataset)} so far")
    ax.set_title(f"{catalog.dataset_label(dataset)}: best test metric over time")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---- the command -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m onepass.paper_figures", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="kind", required=True)
    c = sub.add_parser("proof_of_concept")
    c.add_argument("--heatmap-runs", required=True, help="runs.tsv of the heatmap's dataset")
    c.add_argument("--heatmap-algorithm", required=True)
    c.add_argument("--trajectory-runs", required=True, help="runs.tsv of the trajectories' dataset")
    c.add_argument("--trajectory-runs-dir", required=True)
    c.add_argument("--trajectory-algorithm", required=True)
    c.add_argument("--count", type=int, required=True)
    for name in ("learning_rates", "runtimes", "best_over_time", "error_cdfs"):
        s = sub.add_parser(name)
        s.add_argument("--runs", required=True, help="runs.tsv of the dataset")
        if name not in ("runtimes", "error_cdfs"):
            s.add_argument("--runs-dir", required=True)
        if name == "learning_rates":
            s.add_argument("--seed", type=int, required=True)
    for s in sub.choices.values():
        s.add_argument("--out", nargs="+", required=True, help="PNG and/or SVG paths")
    args = p.parse_args(argv)
    try:
        if args.kind == "proof_of_concept":
            fig = proof_of_concept(read_runs(args.heatmap_runs), args.heatmap_algorithm,
                                   read_runs(args.trajectory_runs), args.trajectory_runs_dir,
                                   args.trajectory_algorithm, args.count)
        elif args.kind == "learning_rates":
            fig = learning_rates(read_runs(args.runs), args.runs_dir, args.seed)
        elif args.kind == "runtimes":
            fig = runtimes(read_runs(args.runs))
        elif args.kind == "error_cdfs":
            fig = error_cdfs(read_runs(args.runs))
        else:
            fig = best_over_time(read_runs(args.runs), args.runs_dir)
    except (OSError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    save(fig, [Path(o) for o in args.out])
    print(f"{args.kind} -> {' '.join(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
