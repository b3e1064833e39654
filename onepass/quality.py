"""The hypergradient-quality study (the paper's Figure 8): how near the paper's approximate hypergradient
comes to the exact one.

The paper's quantity (the default figure): in every cell (T, K <= T) of onepass.appendix's grid, matched runs
of the paper's method (K Neumann terms) and of Diff-through-Opt (K unrolled steps), from the same
initialisations, weights and batches, with no clipping of the hyperparameters, take their first
hyperparameter step (T weight steps, then the hypergradient through Adam); per run, the relative error
abs(update_true - update_ours) / abs(update_true) of the first *update* of lr and of weight decay (in natural
units), averaged over the runs (its paper_plots.py, hypergradient_comparison).

This project's own comparison (a second figure): beside each of the first few hyperparameter steps of a
population of the paper's method, the exact hypergradient through the same last K weight steps, from the
same weights, on the same batches and the same validation batch (:func:`step_with_reference`): the cosine
similarity and the norm ratio of the two hypergradient vectors, and the relative error of each
hyperparameter's hypergradient. It leaves the hyperparameter optimiser out (Adam's first step is nearly
sign-only, so the paper's quantity mostly tells whether the two signs agree).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from . import appendix, catalog, study
from .data import load
from .hypergrad import unrolled_hypergradient
from .population import Member, Population
from .problems import to_device
from .settings import ConfigError, load_settings
from .train import resolve_device

MEMBER_COLUMNS = ("update_interval", "lookback", "hyper_step", "seed", "hyperparameter", "ours", "exact")
SUMMARY_COLUMNS = ("update_interval", "lookback", "quantity", "values", "mean", "median")
UPDATE_COLUMNS = ("update_interval", "lookback", "seed", "hyperparameter", "ours", "exact")
# per cell: how the two hypergradients (vectors over the optimised hyperparameters) compare, then the
# relative error of each hyperparameter's hypergradient
VECTOR_QUANTITIES = ("cosine_similarity", "magnitude_ratio")
# the paper's quantity: the first update of these, in natural units
PAPER_HYPERPARAMETERS = ("lr", "weight_decay")
NO_CLIPPING = {"log10_lr_min": -1.0e6, "log10_lr_max": 1.0e6}   # the paper's comparison clipped nothing


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


def step_with_reference(population: Population) -> dict:
    """One hyperparameter step of a population of the paper's method (hypergradient ``neumann``), exactly as
    :meth:`Population.step`, that also returns the hypergradient it took and the exact one (Diff-through-Opt
    through the same last ``neumann_terms`` weight steps, from the same weights, batches and validation
    batch): {"neumann": {name: [N] tensor}, "exact": {...}} for the optimised hyperparameters. Members that
    diverge in it are frozen as by :meth:`Population.step`."""
    s = population.settings
    if s["hypergradient"] != "neumann":
        raise ValueError(f"a reference hypergradient is for the neumann method, not {s['hypergradient']!r}")
    T, window = s["update_interval"], s["neumann_terms"]
    if window > T:
        raise ValueError(f"a reference hypergradient needs neumann_terms ({window}) <= update_interval ({T})")
    tick = time.perf_counter()
    for position in range(T - window):
        population.take_weight_step(position, population.train_stream.next(), population.val_stream.next)
    batches = [population.train_stream.next() for _ in range(window)]
    val_batch = population.val_stream.next()
    exact = exact_hypergradient(population, batches, val_batch)
    for position, batch in enumerate(batches, start=T - window):
        population.take_weight_step(position, batch, lambda: val_batch)
    population.hyper_step += 1
    population.check_divergence()
    population.train_time += time.perf_counter() - tick
    return {"neumann": population.last_hypergradient, "exact": exact}


def exact_hypergradient(population: Population, batches: list, val_batch) -> dict:
    """Diff-through-Opt's hypergradient through steps on ``batches`` from the population's current weights
    (which it leaves alone), scored on ``val_batch``."""
    batch_iter = iter(batches)
    with population.kernels():
        grads, *_ = unrolled_hypergradient(
            population.hypergradient_losses, lambda p, b: population.val_losses(p, b)[0], tuple(population.params),
            tuple(population.bufs), lambda: next(batch_iter), len(batches), val_batch,
            population.hypers.trainable(), population.hypers.fixed(), population.settings["clip_grad_norm"],
            lr_mask=population.lr_mask)
    return grads


def compare(config: dict, data_dir, device: str = "cpu") -> list[dict]:
    """Every member's hypergradients, ours and exact, at each of the first hyperparameter steps of every cell
    of the quality grid (a diverged member's are NaN)."""
    s = appendix.spec(config, appendix.QUALITY)
    dataset, algorithm = s["dataset"], s["algorithm"]
    dev = resolve_device(device)
    members = _members(config, dataset, algorithm)
    data, rows = None, []
    for T, K in appendix.quality_cells(config):
        settings = load_settings(dataset, algorithm, appendix.quality_overrides(config, T, K))
        if settings["lr_per_weight"]:
            raise ConfigError(f"the quality study compares scalar hypergradients; {algorithm} has one lr per weight")
        if data is None:
            data = to_device(load(catalog.dataset(dataset).base, data_dir, settings["preprocessing"]), dev)
        population = Population(settings, data, members, dev)
        for step in range(s["hyperparameter_steps"]):
            out = step_with_reference(population)
            alive = population.alive.tolist()
            for name in out["neumann"]:
                ours, exact = out["neumann"][name].tolist(), out["exact"][name].tolist()
                for member, a, b, ok in zip(members, ours, exact, alive):
                    rows.append({"update_interval": T, "lookback": K, "hyper_step": step, "seed": member.seed,
                                 "hyperparameter": name, "ours": a if ok else math.nan,
                                 "exact": b if ok else math.nan})
    return rows


def _members(config: dict, dataset: str, algorithm: str) -> list[Member]:
    s = appendix.spec(config, appendix.QUALITY)
    return [Member(**study.member_of(config, dataset, algorithm, seed)) for seed in range(s["initialisations"])]


def first_updates(config: dict, data_dir, device: str = "cpu") -> list[dict]:
    """The paper's comparison: every member's first update of lr and weight decay (natural units) in matched
    runs of the paper's method and of the exact algorithm (``appendix.quality.exact_algorithm``,
    Diff-through-Opt) in every cell of the quality grid, no hyperparameter clipping (NaN for a member that
    diverged)."""
    s = appendix.spec(config, appendix.QUALITY)
    dataset, dev = s["dataset"], resolve_device(device)
    data, rows = None, []
    for T, K in appendix.quality_cells(config):
        updates = {}
        for role, algorithm, overrides in (("ours", s["algorithm"], appendix.quality_overrides(config, T, K)),
                                           ("exact", appendix.exact_algorithm(config),
                                            appendix.exact_overrides(config, T, K))):
            settings = load_settings(dataset, algorithm, {**overrides, **NO_CLIPPING})
            if data is None:
                data = to_device(load(catalog.dataset(dataset).base, data_dir, settings["preprocessing"]), dev)
            population = Population(settings, data, _members(config, dataset, algorithm), dev)
            before = population.hyperparameters()
            population.step()
            after, alive = population.hyperparameters(), population.alive.tolist()
            updates[role] = {n: [a - b if ok else math.nan for a, b, ok in zip(after[n], before[n], alive)]
                             for n in PAPER_HYPERPARAMETERS}
        for name in PAPER_HYPERPARAMETERS:
            for seed, a, b in zip(range(s["initialisations"]), updates["ours"][name], updates["exact"][name]):
                rows.append({"update_interval": T, "lookback": K, "seed": seed, "hyperparameter": name,
                             "ours": a, "exact": b})
    return rows


def paper_summary(rows: list[dict]) -> list[dict]:
    """Per cell and hyperparameter: the relative error of the first update, ``relative_error_<name>``, its mean
    over the runs (the paper's statistic: NaN ones left out, as its nanmean) and median; ``values`` counts the
    finite ones."""
    cells: dict = {}
    for row in rows:
        key = (row["update_interval"], row["lookback"], f"relative_error_{row['hyperparameter']}")
        cells.setdefault(key, []).append(relative_error(row["ours"], row["exact"]))
    return [{"update_interval": T, "lookback": K, "quantity": quantity,
             "values": sum(math.isfinite(v) for v in values), "mean": _mean(values),
             "median": appendix.nanmedian(values)} for (T, K, quantity), values in cells.items()]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def summarise(rows: list[dict]) -> list[dict]:
    """This project's comparison, per cell: the mean and median over members and steps of the cosine
    similarity and the norm ratio of the two hypergradient vectors, and of the relative error of each
    hyperparameter's hypergradient; ``values`` counts the finite ones."""
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
    p.add_argument("--updates", required=True, help="output: every run's first updates, ours and exact (TSV)")
    p.add_argument("--paper", required=True, help="output: the paper's relative error per cell (TSV)")
    p.add_argument("--members", required=True, help="output: every member's hypergradients (TSV)")
    p.add_argument("--summary", required=True, help="output: this project's comparison per cell (TSV)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = study.from_json(args.config)
        updates = first_updates(config, args.data_dir, args.device)
        rows = compare(config, args.data_dir, args.device)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    appendix.write_table(args.updates, updates, UPDATE_COLUMNS)
    appendix.write_table(args.paper, paper_summary(updates), SUMMARY_COLUMNS)
    appendix.write_table(args.members, rows, MEMBER_COLUMNS)
    appendix.write_table(args.summary, summarise(rows), SUMMARY_COLUMNS)
    print(f"{len(appendix.quality_cells(config))} cells: {len(updates)} first updates -> {args.paper}, "
          f"{len(rows)} member hypergradients -> {args.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
