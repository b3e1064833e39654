"""The curves behind the population figures, as numbers (no drawing): each run's logged metric held on a
common grid, the paper's bootstrap loss envelope over runs, each run's running minimum against time, and
which runs each algorithm's envelope takes.

Runs are logged at their own steps and times, and a diverged run's last row is NaN, so curves are aligned
on a grid (:func:`held_on_grid`) rather than by row.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from onepass import catalog, tables

LOG_SPAN = 3.0  # curves whose x extents differ more than this many times share a log x axis
GRID_POINTS = 400  # at most this many points per progress curve (a panel is about 500 pixels wide)


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


def spans(ends, factor: float = LOG_SPAN) -> bool:
    """Whether the longest curve reaches more than ``factor`` times further than the shortest."""
    ends = np.asarray([e for e in ends if np.isfinite(e) and e > 0], dtype=float)
    return len(ends) > 1 and ends.max() > factor * ends.min()


def grid_points(values: np.ndarray, start: float, end: float, log_x: bool) -> np.ndarray:
    """The x values a progress curve is drawn at: the logged ones, or at most GRID_POINTS of them."""
    values = np.unique(values[np.isfinite(values)])
    if log_x:
        values = values[values > 0]
    if len(values) <= GRID_POINTS:
        return values
    if log_x:
        return np.geomspace(max(start, values.min()), end, GRID_POINTS)
    return np.linspace(values.min(), end, GRID_POINTS)


N_BOOT = 1000   # bootstrap resamples of the loss envelope (the paper's figures.py:567)
BOOT_CHUNK = 100   # resamples drawn at a time (bounds the memory: chunk x runs x grid points)


def envelope(values: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The paper's loss envelope (figures.py:566-577) of curves ``values`` (grid points x runs): over
    ``n_boot`` bootstrap resamples of the runs, the mean of the resamples' medians at each point and their
    standard deviation (NaNs ignored)."""
    rng = np.random.default_rng(seed)
    n = values.shape[1]
    medians = []
    with warnings.catch_warnings():   # a point where a resample has only NaN stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        for start in range(0, n_boot, BOOT_CHUNK):
            index = rng.integers(0, n, size=(min(BOOT_CHUNK, n_boot - start), n))
            medians.append(np.nanmedian(values[:, index], axis=2))   # points x resamples
        medians = np.concatenate(medians, axis=1)
        return np.nanmean(medians, axis=1), np.nanstd(medians, axis=1)


def envelope_populations(runs: pd.DataFrame) -> dict:
    """{algorithm: (seeds, the algorithm whose run directories hold them)} of the loss envelope: the finished
    runs of each algorithm that is not a search, less those over a post-hoc threshold (the paper's
    figures.py:525-526), and Random (3-batched)'s chosen runs in place of Random (validation)'s (480-486)."""
    over = tables.flag(runs, "over_threshold")
    done = runs[(runs["status"] == "done") & ~over & ~runs["algorithm"].map(catalog.is_search)]
    out = {a: (list(g["seed"]), a) for a, g in done.groupby("algorithm")}
    for name, population in tables.derived_populations(runs).items():
        source = catalog.algorithms()[name].derived["from"]
        chosen = population[(population["status"] == "done") & ~tables.flag(population, "over_threshold")]
        if len(chosen):
            out[name] = (list(chosen["seed"]), source)
            out.pop(source, None)
    return {a: out[a] for a in catalog.order(out)}


def running_minima(run_dirs: dict, search: bool) -> pd.DataFrame:
    """Each run's running minimum of the test metric against its time (columns seed, time_s, test_metric),
    for the runs ``{seed: run directory}`` of one algorithm. A search's run (``search``) is a repetition: its
    evaluations (evaluations.csv) in order of cumulative search time, each with its lowest test metric
    (``min_test_metric``: BayesOpt's over every weight step, ASHA's and PBT's the report's); a search recorded
    without evaluations.csv falls back to its history.csv. Another run's is its history.csv."""
    frames = []
    for seed, where in sorted(run_dirs.items()):
        evaluations = where / "evaluations.csv"
        if search and evaluations.exists():
            e = pd.read_csv(evaluations).sort_values("cumulative_time_s")
            column = "min_test_metric" if "min_test_metric" in e else "test_metric"
            x, y = e["cumulative_time_s"].to_numpy(float), pd.to_numeric(e[column], errors="coerce").to_numpy(float)
        elif (where / "history.csv").exists():
            h = pd.read_csv(where / "history.csv").sort_values("time_s")
            x, y = h["time_s"].to_numpy(float), h["test_metric"].to_numpy(float)
        else:
            continue
        frames.append(pd.DataFrame({"seed": seed, "time_s": x, "test_metric": np.fmin.accumulate(
            np.where(np.isfinite(y), y, np.inf))}).replace(np.inf, np.nan))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["seed", "time_s", "test_metric"])
