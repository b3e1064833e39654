"""The paper's appendix studies as data: the sensitivity grid and the hypergradient-quality grid.

Sensitivity (the paper's Figure 7): every cell (T, K) of update interval T and look-back K trains the
population of each grid algorithm for a fixed number of hyperparameter steps (so T times as many weight
steps). K is the Neumann series' length for the paper's method (every K, K > T included, as its code) and
the unroll length for Diff-through-Opt (K <= T). A baseline (Random) is one cell of its own. A cell's runs are
an ordinary chunk plan of onepass.study with the cell's settings added, so onepass.train trains it.

Hypergradient quality (Figure 8): in every cell K <= T, the paper's method takes its first hyperparameter
step beside the exact hypergradient through the same K steps (onepass.quality); this module only lays the
grid out.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

from . import catalog, jobs, paths, study
from .records import atomic_write
from .settings import ConfigError, identity, load_settings

SENSITIVITY, QUALITY = "sensitivity", "quality"
BASELINE_CELL = "baseline"
# the setting a cell's K sets, by the algorithm's hypergradient method
K_SETTING = {"neumann": "neumann_terms", "unroll": "unroll_steps"}


def enabled(config: dict, part: str) -> bool:
    """Whether the config asks for the appendix study ``part``."""
    return bool((config.get("appendix") or {}).get(part))


def spec(config: dict, part: str) -> dict:
    """The config of the appendix study ``part``."""
    return config["appendix"][part]


def k_setting(dataset: str, algorithm: str) -> str:
    """The setting a grid cell's K sets for ``algorithm`` (a ConfigError if it has none)."""
    method = load_settings(dataset, algorithm)["hypergradient"]
    if method not in K_SETTING:
        raise ConfigError(f"{algorithm} has no look-back to vary (hypergradient {method!r}); the grid takes "
                          f"algorithms whose hypergradient is one of {', '.join(K_SETTING)}")
    return K_SETTING[method]


def cell_name(T: int, K: int) -> str:
    """A grid cell's directory name."""
    return f"T{T}_K{K}"


def parse_cell(name: str) -> tuple[int, int] | None:
    """(T, K) of a cell name; None for the baseline's."""
    if name == BASELINE_CELL:
        return None
    T, K = name[1:].split("_K")
    return int(T), int(K)


def sensitivity_cells(config: dict) -> list[tuple[str, str]]:
    """Every (algorithm, cell) of the sensitivity study: each grid algorithm over T x K (K <= T where K
    unrolls steps), then the baseline."""
    s = spec(config, SENSITIVITY)
    cells = []
    for algorithm in s["algorithms"]:
        bounded = k_setting(s["dataset"], algorithm) == "unroll_steps"
        cells += [(algorithm, cell_name(T, K)) for T in s["update_intervals"] for K in s["lookbacks"]
                  if not (bounded and K > T)]
    if s.get("baseline"):
        cells.append((s["baseline"]["algorithm"], BASELINE_CELL))
    return cells


def cell_overrides(config: dict, algorithm: str, cell: str) -> dict:
    """The settings a sensitivity cell runs with: the study's overrides of (dataset, algorithm), then the
    cell's update interval, K and fixed number of hyperparameter steps (or the baseline's own)."""
    s = spec(config, SENSITIVITY)
    base = study.overrides(config, s["dataset"], algorithm)
    parsed = parse_cell(cell)
    if parsed is None:
        return {**base, **s["baseline"].get("overrides", {})}
    T, K = parsed
    return {**base, "weight_steps": None, "update_interval": T, k_setting(s["dataset"], algorithm): K,
            "hyperparameter_steps": s["hyperparameter_steps"]}


def sensitivity_seeds(config: dict) -> list[int]:
    """The seeds (initialisations of the study's sweep) every sensitivity cell trains."""
    return list(range(spec(config, SENSITIVITY)["initialisations"]))


def cell_plan(config: dict, algorithm: str, cell: str) -> dict:
    """A sensitivity cell's chunk plan (onepass.study.chunk_plan's format): every seed, the cell's settings."""
    dataset = spec(config, SENSITIVITY)["dataset"]
    seeds = sensitivity_seeds(config)
    plan = study.chunk_plan(config, dataset, algorithm, seeds)
    overrides = cell_overrides(config, algorithm, cell)
    plan.update(overrides=overrides, settings=identity(load_settings(dataset, algorithm, overrides)),
                cell=cell)
    return plan


def cell_resources(config: dict, algorithm: str, cell: str) -> dict:
    """threads, mem_mb, runtime and gpu of a sensitivity cell's job (onepass.jobs.resources on the cell's
    settings)."""
    dataset = spec(config, SENSITIVITY)["dataset"]
    run = load_settings(dataset, algorithm, cell_overrides(config, algorithm, cell))
    return jobs.resources(config, dataset, algorithm, len(sensitivity_seeds(config)), run=run)


def part_config(config: dict, part: str) -> dict:
    """The part of the config that decides the appendix study ``part`` (a change elsewhere leaves it alone)."""
    s = spec(config, part)
    dataset = s["dataset"]
    return {"study": config["study"], "datasets": [], "algorithms": {},
            "sweep": {"seed": config["sweep"]["seed"], "samplers": config["sweep"]["samplers"],
                      "initialisations": {}},
            "overrides": {d: per for d, per in config["overrides"].items() if d in ("all", dataset)},
            "resources": {k: v for k, v in config["resources"].items() if k in ("default", dataset)},
            "appendix": {part: s}}


def quality_cells(config: dict) -> list[tuple[int, int]]:
    """Every (T, K <= T) of the hypergradient-quality study."""
    s = spec(config, QUALITY)
    return [(T, K) for T in s["update_intervals"] for K in s["lookbacks"] if K <= T]


def check(config: dict, sources=None) -> None:
    """The appendix checks a schema cannot express: its dataset and algorithms against the catalogue, and
    the settings of every cell."""
    for part in (SENSITIVITY, QUALITY):
        if not enabled(config, part):
            continue
        s = spec(config, part)
        key = f"appendix.{part}"
        if s["dataset"] not in catalog.datasets():
            study.fail(f"{key}.dataset", f"unknown dataset {s['dataset']!r}", sources)
        if study.takes_files(config, s["dataset"]):
            study.fail(f"{key}.dataset", f"{s['dataset']} takes its initialisations from the paper's files "
                       "(sweep sampler from_files); the appendix grids need drawn ones", sources)
        if part == SENSITIVITY:
            names = s["algorithms"] + ([s["baseline"]["algorithm"]] if s.get("baseline") else [])
        else:
            names = [s["algorithm"]]
        for name in names:
            if name not in catalog.algorithms() or catalog.is_search(name):
                study.fail(key, f"unknown or search algorithm {name!r}: the grid trains populations", sources)
        try:
            if part == SENSITIVITY:
                for algorithm, cell in sensitivity_cells(config):
                    load_settings(s["dataset"], algorithm, cell_overrides(config, algorithm, cell))
            else:
                exact = exact_algorithm(config)
                if exact not in catalog.algorithms() or catalog.is_search(exact):
                    study.fail(f"{key}.exact_algorithm", f"unknown or search algorithm {exact!r}", sources)
                for T, K in quality_cells(config):
                    settings = load_settings(s["dataset"], s["algorithm"], quality_overrides(config, T, K))
                    if settings["hypergradient"] != "neumann":
                        raise ConfigError(f"{s['algorithm']} is not a Neumann-series method")
                    if load_settings(s["dataset"], exact, exact_overrides(config, T, K))["hypergradient"] != "unroll":
                        raise ConfigError(f"exact_algorithm {exact} does not differentiate through its steps "
                                          "(hypergradient unroll)")
        except ConfigError as err:
            study.fail(key, str(err), sources)


def quality_resources(config: dict) -> dict:
    """threads, mem_mb, runtime and gpu of the quality study's one job, which steps every cell's population
    in turn: estimated (onepass.jobs.resources) as the exact reference's unrolled hypergradient (the
    costlier of the two) at the grid's largest T and K, for every cell's hyperparameter steps together."""
    s = spec(config, QUALITY)
    T, K = max(s["update_intervals"]), max(s["lookbacks"])
    steps = s["hyperparameter_steps"] * len(quality_cells(config))
    run = load_settings(s["dataset"], "DiffThroughOpt", {**quality_overrides(config, T, min(K, T)),
                                                         "unroll_steps": min(K, T), "hyperparameter_steps": steps})
    return jobs.resources(config, s["dataset"], "DiffThroughOpt", s["initialisations"], run=run)


def quality_overrides(config: dict, T: int, K: int) -> dict:
    """The settings of the quality study's cell (T, K)."""
    s = spec(config, QUALITY)
    return {**study.overrides(config, s["dataset"], s["algorithm"]), "weight_steps": None,
            "update_interval": T, "neumann_terms": K}


def exact_algorithm(config: dict) -> str:
    """The algorithm of the quality study's exact runs (``exact_algorithm``, default Diff-through-Opt)."""
    return spec(config, QUALITY).get("exact_algorithm", "DiffThroughOpt")


def exact_overrides(config: dict, T: int, K: int) -> dict:
    """The settings of the exact run matched to the quality study's cell (T, K): K unrolled steps."""
    s = spec(config, QUALITY)
    return {**study.overrides(config, s["dataset"], exact_algorithm(config)), "weight_steps": None,
            "update_interval": T, "unroll_steps": K}


# ---- where the appendix lives -----------------------------------------------------------------------------
def appendix_dir(config: dict) -> str:
    """The appendix studies' directory: results/<study>/appendix."""
    return f"{study.study_dir(config)}/appendix"


def cell_runs_dir(config: dict, algorithm: str, cell: str) -> str:
    """The runs of one sensitivity cell (one seed<S>/ per seed)."""
    return f"{appendix_dir(config)}/{SENSITIVITY}/runs/{algorithm}/{cell}"


def cell_metrics(config: dict, algorithm: str, cell: str) -> list[str]:
    """The metrics.json of every run of a sensitivity cell."""
    runs = cell_runs_dir(config, algorithm, cell)
    return [f"{paths.run_dir(runs, seed)}/metrics.json" for seed in sensitivity_seeds(config)]


# ---- the sensitivity table ---------------------------------------------------------------------------------
TABLE_COLUMNS = ("algorithm", "cell", "update_interval", "lookback", "runs", "diverged", "median_test_metric",
                 "mean_test_metric")


def nanmedian(values: list[float]) -> float:
    """The median of the finite values (NaN when there are none)."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def final_metric(metrics: dict) -> float:
    """A run's final test metric; NaN for a run that diverged (as the paper's nanmedian leaves them out)."""
    value = metrics.get("test_metric")
    if metrics.get("diverged") or not isinstance(value, (int, float)) or not math.isfinite(value):
        return math.nan
    return float(value)


def sensitivity_rows(config: dict) -> list[dict]:
    """One row per (algorithm, cell): its runs, how many diverged, the median (the paper's statistic) and
    mean of the final test metric over the runs that did not."""
    rows = []
    for algorithm, cell in sensitivity_cells(config):
        finals = []
        for path in cell_metrics(config, algorithm, cell):
            try:
                finals.append(final_metric(json.loads(Path(path).read_text())))
            except (OSError, ValueError) as err:
                raise ConfigError(f"cannot read the run {path}: {err}") from None
        T, K = parse_cell(cell) or (None, None)
        finite = [v for v in finals if math.isfinite(v)]
        rows.append({"algorithm": algorithm, "cell": cell, "update_interval": T, "lookback": K,
                     "runs": len(finals), "diverged": len(finals) - len(finite),
                     "median_test_metric": nanmedian(finals),
                     "mean_test_metric": sum(finite) / len(finite) if finite else math.nan})
    return rows


def write_table(path, rows: list[dict], columns) -> None:
    """A TSV of ``rows`` (empty cells for None), written atomically."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=list(columns), delimiter="\t", lineterminator="\n")
            out.writeheader()
            out.writerows({k: ("" if row[k] is None else row[k]) for k in columns} for row in rows)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), write)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m onepass.appendix", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("sensitivity-table", help="the sensitivity study's table from its runs")
    t.add_argument("--config", required=True, help="the study config as JSON")
    t.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        config = study.from_json(args.config)
        rows = sensitivity_rows(config)
        write_table(args.out, rows, TABLE_COLUMNS)
        print(f"{len(rows)} cells -> {args.out}")
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
