"""The hypergradient-quality study (the paper's Figure 8): how near the paper's approximate hypergradient
comes to the exact one.

In every cell (T, K <= T) of onepass.appendix's grid, a population of the paper's method (K Neumann terms,
T weight steps per hyperparameter step) takes its first few hyperparameter steps; beside each, the exact
hypergradient through the same last K weight steps, from the same weights, on the same batches and the same
validation batch (Population.step_with_reference). Compared: the cosine similarity and the norm ratio of the
two hypergradient vectors, and the paper's relative error per hyperparameter. The paper compared the first
hyperparameter updates of matched runs; comparing the hypergradients themselves leaves the hyperparameter
optimiser out.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from . import appendix, catalog, study
from .data import load
from .population import Member, Population
from .problems import to_device
from .settings import ConfigError, load_settings
from .train import resolve_device

MEMBER_COLUMNS = ("update_interval", "lookback", "hyper_step", "seed", "hyperparameter", "ours", "exact")
SUMMARY_COLUMNS = ("update_interval", "lookback", "quantity", "values", "mean", "median")
# per cell: how the two hypergradients (vectors over the optimised hyperparameters) compare, then the
# paper's relative error per hyperparameter
VECTOR_QUANTITIES = ("cosine_similarity", "magnitude_ratio")


def relative_error(ours: float, exact: float) -> float:
    """|exact - ours| / |exact| (NaN where the exact hypergradient is zero or not finite)."""
    if not math.isfinite(exact) or exact == 0 or not math.isfinite(ours):
        return math.nan
    return abs(exact - ours) / abs(exact)


def cosine_and_ratio(ours: list[float], exact: list[float]) -> tuple[float, float]:
    """The cosine similarity of two hypergradient vectors and the ratio of their norms |ours| / |exact|."""
    if not all(math.isfinite(v) for v in [*ours, *exact]):
        return math.nan, math.nan
    dot = sum(a * b for a, b in zip(ours, exact))
    norm_ours, norm_exact = math.sqrt(sum(a * a for a in ours)), math.sqrt(sum(b * b for b in exact))
    if norm_ours == 0 or norm_exact == 0:
        return math.nan, math.nan
    return dot / (norm_ours * norm_exact), norm_ours / norm_exact


def compare(config: dict, data_dir, device: str = "cpu") -> list[dict]:
    """Every member's hypergradients, ours and exact, at each of the first hyperparameter steps of every cell
    of the quality grid (a diverged member's are NaN)."""
    s = appendix.spec(config, appendix.QUALITY)
    dataset, algorithm = s["dataset"], s["algorithm"]
    dev = resolve_device(device)
    members = [Member(**study.member_of(config, dataset, algorithm, seed)) for seed in range(s["initialisations"])]
    data, rows = None, []
    for T, K in appendix.quality_cells(config):
        settings = load_settings(dataset, algorithm, appendix.quality_overrides(config, T, K))
        if settings["lr_per_weight"]:
            raise ConfigError(f"the quality study compares scalar hypergradients; {algorithm} has one lr per weight")
        if data is None:
            data = to_device(load(catalog.dataset(dataset).base, data_dir, settings["preprocessing"]), dev)
        population = Population(settings, data, members, dev)
        for step in range(s["hyperparameter_steps"]):
            out = population.step_with_reference()
            alive = population.alive.tolist()
            for name in out["neumann"]:
                ours, exact = out["neumann"][name].tolist(), out["exact"][name].tolist()
                for member, a, b, ok in zip(members, ours, exact, alive):
                    rows.append({"update_interval": T, "lookback": K, "hyper_step": step, "seed": member.seed,
                                 "hyperparameter": name, "ours": a if ok else math.nan,
                                 "exact": b if ok else math.nan})
    return rows


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def summarise(rows: list[dict]) -> list[dict]:
    """Per cell: the mean and median over members and steps of the cosine similarity and the norm ratio of
    the two hypergradient vectors, and of the relative error of each hyperparameter's (the paper's
    statistic is its mean); ``values`` counts the finite ones."""
    cells: dict = {}
    for row in rows:
        member = cells.setdefault((row["update_interval"], row["lookback"]), {}).setdefault(
            (row["hyper_step"], row["seed"]), {})
        member[row["hyperparameter"]] = (row["ours"], row["exact"])
    out = []
    for (T, K), members in cells.items():
        names = list(next(iter(members.values())))
        quantities = {q: [] for q in VECTOR_QUANTITIES}
        quantities.update({f"relative_error_{n}": [] for n in names})
        for grads in members.values():
            cosine, ratio = cosine_and_ratio([grads[n][0] for n in names], [grads[n][1] for n in names])
            quantities["cosine_similarity"].append(cosine)
            quantities["magnitude_ratio"].append(ratio)
            for n in names:
                quantities[f"relative_error_{n}"].append(relative_error(*grads[n]))
        for quantity, values in quantities.items():
            out.append({"update_interval": T, "lookback": K, "quantity": quantity,
                        "values": sum(math.isfinite(v) for v in values), "mean": _mean(values),
                        "median": appendix.nanmedian(values)})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m onepass.quality", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="the study config as JSON")
    p.add_argument("--data-dir", required=True, help="where `python -m onepass.data prepare` wrote the data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--members", required=True, help="output: every member's hypergradients (TSV)")
    p.add_argument("--summary", required=True, help="output: per cell and hyperparameter (TSV)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = study.from_json(args.config)
        rows = compare(config, args.data_dir, args.device)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = summarise(rows)
    appendix.write_table(args.members, rows, MEMBER_COLUMNS)
    appendix.write_table(args.summary, summary, SUMMARY_COLUMNS)
    print(f"{len(appendix.quality_cells(config))} cells, {len(rows)} member hypergradients -> {args.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
