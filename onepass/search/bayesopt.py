"""BayesOpt: Gaussian-process Bayesian optimisation with scikit-optimize's ask/tell ``Optimizer`` over the search
space; each evaluation is a full run of the search's inner algorithm (a population of one)."""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path

from ..progress import ProgressLog
from .record import add_evaluation, number, write_evaluations


def finished(where: Path, seed: int, lr: float, weight_decay: float, momentum: float) -> dict | None:
    """The metrics of an evaluation already run (a search killed and started again replays its finished
    evaluations: the optimiser asks for the same points again, for the same seed), else None."""
    path = where / "metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    same = (metrics.get("seed"), metrics.get("init_lr"), metrics.get("init_weight_decay"),
            metrics.get("init_momentum")) == (seed, lr, weight_decay, momentum)
    return metrics if same else None


def lowest_test_metric(where: Path, metrics: dict) -> float:
    """The lowest finite test metric of an evaluation: its ``min_test_metric``, the running minimum over every
    weight step (the inner run's ``track_min_test``, which BayesOpt sets), whose running minimum over the
    search is the paper's BayesOpt statistic. An evaluation recorded before that existed falls back to its
    history.csv (every log_every weight steps) and final value (NaN if none is finite)."""
    import csv

    if "min_test_metric" in metrics:
        value = metrics["min_test_metric"]
        return float(value) if isinstance(value, (int, float)) else float("nan")
    values = [metrics.get("test_metric")]
    path = where / "history.csv"
    if path.exists():
        with open(path, newline="") as f:
            values += [float(r["test_metric"]) for r in csv.DictReader(f) if r.get("test_metric") not in (None, "")]
    values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return min(values) if values else float("nan")


def diverged_penalty(settings: dict) -> float:
    """The validation loss told to the surrogate for a diverged evaluation: ``bayesopt_diverged_penalty`` (the
    paper's per-dataset value, set in the dataset YAMLs) when set, else ``search_diverged_penalty``."""
    value = settings.get("bayesopt_diverged_penalty")
    return float(settings["search_diverged_penalty"] if value is None else value)


def evaluation_score(metrics: dict, penalty: float) -> float:
    """What the surrogate is told for an evaluation, as the paper's launch_run (bayesopt.py:30-38): its final
    validation loss where that is finite, however large (on Fashion-MNIST a run past the 1e3 threshold trains
    to the end under ``divergence_check: post_hoc`` and scores its own loss), else ``penalty``; a run frozen
    during training (``divergence_check: training``) records NaN losses and scores ``penalty``."""
    value = metrics.get("valid_loss")
    finite = isinstance(value, (int, float)) and math.isfinite(value)
    return penalty if metrics.get("diverged") or not finite else float(value)


def surrogate(settings: dict, seed: int):
    """The Gaussian process: ``matern52`` a Matern(nu=2.5) kernel with alpha 1e-6, normalised scores and 5
    restarts of the kernel's optimiser (the paper's bayes_opt defaults); ``skopt`` scikit-optimize's default
    ("GP": constant * Matern(2.5) with per-dimension length scales, plus fitted noise)."""
    if settings["bayesopt_surrogate"] == "skopt":
        return "GP"
    from skopt.learning import GaussianProcessRegressor
    from skopt.learning.gaussian_process.kernels import Matern   # scikit-learn's, with the gradient LCB needs

    return GaussianProcessRegressor(kernel=Matern(nu=2.5), alpha=1e-6, normalize_y=True, n_restarts_optimizer=5,
                                    random_state=seed)


def acquisition(settings: dict) -> dict:
    """scikit-optimize's acquisition arguments: LCB with ``bayesopt_kappa`` (the paper's UCB, kappa 2.576, on
    the negated loss), or another acquisition function with its defaults (gp_hedge: scikit-optimize's own)."""
    kind = settings["bayesopt_acquisition"]
    if kind == "LCB":
        return {"acq_func": "LCB", "acq_func_kwargs": {"kappa": float(settings["bayesopt_kappa"])}}
    return {"acq_func": kind}


def make_optimizer(settings: dict, seed: int):
    """scikit-optimize's ask/tell ``Optimizer`` over log10 lr, log10 weight decay and momentum."""
    from skopt import Optimizer
    from skopt.space import Real

    space = [Real(*map(float, settings["search_log10_lr"]), name="log10_lr"),
             Real(*map(float, settings["search_log10_weight_decay"]), name="log10_weight_decay"),
             Real(*map(float, settings["search_momentum"]), name="momentum")]
    return Optimizer(space, base_estimator=surrogate(settings, seed),
                     n_initial_points=settings["search_initial_points"], initial_point_generator="random",
                     random_state=seed, **acquisition(settings))


def bayesopt(dataset: str, seed: int, settings: dict, inner_overrides: dict, data, data_dir, out: Path,
             device: str, quiet: bool = True) -> tuple[list[dict], float]:
    """Gaussian-process Bayesian optimisation with scikit-optimize's ask/tell ``Optimizer``; returns the
    evaluation rows and the search's duration in seconds."""
    from ..train import run as train_run

    opt = make_optimizer(settings, seed)
    total = settings["search_initial_points"] + settings["search_guided_points"]
    penalty = diverged_penalty(settings)
    rows: list[dict] = []
    start = time.perf_counter()
    lines = ProgressLog(f"BayesOpt seed {seed}", total, unit="evaluation")
    for i in range(total):
        with warnings.catch_warnings():  # a GP fitted to few or constant scores warns; it is still usable
            warnings.simplefilter("ignore")
            x = opt.ask()
        lr, wd, mom = 10.0 ** float(x[0]), 10.0 ** float(x[1]), min(max(float(x[2]), 0.0), 1.0)
        run_seed = 1000 * seed + i
        tick = time.perf_counter()
        where = out / "evaluations" / f"{i:03d}"
        m = finished(where, run_seed, lr, wd, mom)
        if m is None:
            m = train_run(dataset, settings["search_inner_algorithm"], run_seed, lr, wd, mom, data_dir, where,
                          device, {**inner_overrides, "track_min_test": True}, data=data, progress_every=0)
        score = evaluation_score(m, penalty)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.tell(x, float(score))
        row = add_evaluation(rows, {
            "trial": i, "run_seed": run_seed, "hyper_step": m["hyperparameter_steps"],
            "weight_steps": m["weight_steps"], "lr": lr, "weight_decay": wd, "momentum": mom,
            **{k: m[k] for k in ("train_loss", "valid_loss", "test_loss", "test_metric")},
            "test_accuracy": number(m["test_accuracy"]), "test_perplexity": number(m["test_perplexity"]),
            "diverged": m["diverged"], "score": score, "min_test_metric": lowest_test_metric(where, m), "wall_time_s": time.perf_counter() - tick,
            "cumulative_time_s": time.perf_counter() - start, "new_weight_steps": m["weight_steps"],
            "new_hyper_steps": m["hyperparameter_steps"]})
        write_evaluations(out / "evaluations.csv", rows)
        diverged = sum(bool(r["diverged"]) for r in rows)
        lines.update(i + 1, len(rows) - diverged, diverged, [r["train_loss"] for r in rows],
                     [r["valid_loss"] for r in rows], force=True)
        if not quiet:
            print(f"evaluation {i}: lr={lr:.3g} wd={wd:.3g} momentum={mom:.3g} valid_loss={row['valid_loss']:.4g}"
                  f"{' (diverged)' if m['diverged'] else ''} best={row['best_valid_loss']:.4g}",
                  file=sys.stderr, flush=True)
    return rows, time.perf_counter() - start
