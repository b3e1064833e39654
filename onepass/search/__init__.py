"""Black-box hyperparameter searches around training runs: BayesOpt (scikit-optimize), ASHA and PBT (Ray Tune).

    python -m onepass.search --dataset uci_energy --algorithm BayesOpt --seed 0 \\
        --lr 1e-3 --weight-decay 1e-4 --momentum 0.5 --data-dir results/data --out runs/x [--threads 4]

The arguments are those of ``python -m onepass.train``; ``--algorithm`` names a search config
(config/algorithms/{BayesOpt,ASHA,ASHA_Ours,PBT,PBT_Ours}.yaml), ``--seed`` seeds the whole search, and
--lr/--weight-decay/--momentum are only recorded (as init_*): the search draws its own points from
log10 lr in ``search_log10_lr``, log10 weight decay in ``search_log10_weight_decay`` and momentum in
``search_momentum``.  ``--set`` overrides search settings and the settings of every inner run alike.

- **BayesOpt**: scikit-optimize's ``Optimizer`` (Gaussian process, ask/tell): ``search_initial_points``
  random points, then ``search_guided_points`` guided ones.  Each evaluation is a full run of
  ``search_inner_algorithm`` (Random_Validation: fixed hyperparameters, training split) written under
  ``OUT/evaluations/NNN``, scored by its final full-validation loss; a diverged evaluation is recorded as
  diverged and told to the surrogate as the finite ``bayesopt_diverged_penalty`` (the paper's per-dataset
  value) or else ``search_diverged_penalty``; the acquisition is ``bayesopt_acquisition`` (LCB, kappa
  ``bayesopt_kappa``) on the ``bayesopt_surrogate`` GP.  Evaluation i trains with
  seed ``1000 * seed + i``.  Killed and started again, the search replays its finished evaluations from
  their outputs (the optimiser is deterministic for a seed).
- **ASHA** / **PBT**: Ray Tune's ``ASHAScheduler`` / ``PopulationBasedTraining`` on a local Ray instance
  started inside the job (``--threads`` CPUs, else ``$SLURM_CPUS_PER_TASK``, ``$OMP_NUM_THREADS`` or the
  CPUs this process may use; the GPUs for ``--device cuda``), one CPU per trial, Ray's state under
  ``OUT/ray`` and its session files in a short temporary directory; both removed or stopped when the
  job ends, whatever happens.  A trial is a population of one (:class:`onepass.population.Population`) of ``search_inner_algorithm``
  that reports its full-validation loss every ``search_report_every`` units of ``search_time_unit`` (weight
  steps by default, as the paper: reports inside a hyperparameter step too; or hyperparameter steps), the
  unit of the scheduler's time, grace period and perturbation interval too.  A diverged
  trial reports ``search_diverged_penalty``; under ASHA it stops, under PBT it idles until it is replaced.
  PBT's exploit copies a top trial's saved run state (weights, momentum buffers, hyperparameters and
  their optimiser) and its explore perturbs that state's *current* hyperparameters: each is resampled
  from the search space with probability ``pbt_resample_probability``, else multiplied by one of
  ``pbt_perturbation_factors`` (lr and weight decay: their log10 by default, ``pbt_perturb_space``; momentum
  then clipped to the space and to [0, 1 - 1e-6]); training goes on from there.  PBT is asynchronous by
  default, as the paper's (``pbt_synch``); Ray pauses a trial at its perturbation point while others are
  behind, so a population larger than the CPUs still advances together.  Trial i starts from the i-th point drawn from the space and trains
  with seed ``1000 * seed + i``; a seed fixes the points and perturbations, not Ray's interleaving.

Outputs in OUT: ``metrics.json`` with the keys of a training run, taken from the best evaluation by
validation loss (NaN losses and ``diverged: true`` when every evaluation diverged) plus ``evaluations``,
``diverged_evaluations``, ``best_evaluation``, ``inner_algorithm``; ``evaluations.csv``
(:data:`EVALUATION_COLUMNS`, one row per evaluation or trial report, in the order they arrived);
``history.csv`` in the training run's columns, one row per evaluation: the best-so-far evaluation's
values against the search's cumulative weight steps (``step``), hyperparameter steps (``hyper_step``) and
wall time (``time_s``: seconds since the search started; for Ray, since the tuner started, after
``ray.init`` but with its worker processes' start-up).  A search is scored by validation loss only; a
diverged evaluation's score is ``search_diverged_penalty`` (10 by default: see config/algorithms).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from .. import catalog
from ..settings import (HYPERPARAMETERS, SETTINGS, ConfigError, check_initial, load_settings, parse_overrides,
                        search_settings_keys)
from ..train import resolve_device, run_arguments, run_from_arguments
from .record import finish

SEARCHES = ("bayesopt", "asha", "pbt")


# ---- settings ----------------------------------------------------------------------------------------
def _is_search_key(key: str) -> bool:
    return key in search_settings_keys()


def search_settings(dataset: str, algorithm: str, overrides=None) -> tuple[dict, dict]:
    """(search settings, settings of every inner run), both checked; ``overrides`` go to both. The search
    settings carry the algorithm's ``search`` kind and ``label`` from its catalogue entry."""
    extra = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides or []))
    settings = load_settings(dataset, algorithm, extra)
    entry = catalog.algorithm(algorithm)
    if not entry.is_search:
        raise ConfigError(f"algorithm {algorithm!r} is not a search; run it with python -m onepass.train")
    settings.update(search=entry.search, label=entry.label)
    inner_name = settings["search_inner_algorithm"]
    if inner_name not in catalog.algorithms() or catalog.is_search(inner_name):
        raise ConfigError(f"setting 'search_inner_algorithm' must name a training algorithm, got {inner_name!r}")
    inner = load_settings(dataset, inner_name, {k: v for k, v in extra.items() if not _is_search_key(k)})
    if settings["search"] == "pbt" and settings["pbt_perturbation_interval"] % settings["search_report_every"]:
        raise ConfigError("setting 'pbt_perturbation_interval' must be a multiple of 'search_report_every'")
    if (settings["search"] == "pbt" and settings["search_time_unit"] == "weight_steps"
            and settings["pbt_perturbation_interval"] % inner["update_interval"]):
        raise ConfigError("setting 'pbt_perturbation_interval' (in weight steps) must be a multiple of the inner "
                          "run's 'update_interval' (a run state is saved at the end of a hyperparameter step)")
    return settings, inner


# ---- the command ---------------------------------------------------------------------------------------
def run(dataset: str, algorithm: str, seed: int, lr: float, weight_decay: float, momentum: float,
        data_dir, out, device: str = "cpu", overrides=None, data=None, quiet: bool = True,
        threads: int | None = None) -> dict:
    """Run the search ``algorithm`` and write its outputs under ``out``; returns the metrics dict (the
    arguments are those of :func:`onepass.train.run`; ``threads``: CPUs for Ray's trials)."""
    wall_start = time.perf_counter()
    extra = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides or []))
    settings, inner = search_settings(dataset, algorithm, extra)
    dev = resolve_device(device)
    for name, value in zip(HYPERPARAMETERS, (lr, weight_decay, momentum)):
        check_initial(name, value, "--" + name.replace("_", "-"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        from ..data import load
        data = load(catalog.dataset(dataset).base, data_dir, inner["preprocessing"])
    task = data.task
    inner_overrides = {k: v for k, v in extra.items() if not _is_search_key(k)}
    extra_versions = {}
    if settings["search"] == "bayesopt":
        import skopt

        from .bayesopt import bayesopt
        extra_versions["scikit-optimize"] = skopt.__version__
        rows, search_time = bayesopt(dataset, seed, settings, inner_overrides, data, data_dir, out, device, quiet)
    else:
        from .ray_tune import ray_environment, ray_search
        ray_environment()
        import ray
        extra_versions["ray"] = ray.__version__
        rows, search_time = ray_search(dataset, seed, settings, inner, data_dir, out, device, threads, quiet)
    base = {"dataset": dataset, "family": settings["family"], "task": task, "algorithm": algorithm, "seed": seed,
            "init_lr": lr, "init_weight_decay": weight_decay, "init_momentum": momentum, "inner_settings": inner}
    recorded = {k: v for k, v in settings.items() if k in SETTINGS}   # as load_settings gives them
    return finish(out, rows, base, task, recorded, search_time, wall_start, str(dev), extra_versions,
                  settings["search"])


def run_chunk(plan_path, data_dir, runs_dir, device: str | None = None, overrides=None, quiet: bool = True,
              mem_mb: float | None = None, threads: int | None = None, progress_every: float | None = None) -> list:
    """Run a chunk of a study's repetitions of a search, one after another, from its chunk plan (seed s is
    repetition s, written into ``runs_dir/seed<s>``); ``mem_mb`` is not used (a search trains one network at
    a time); ``progress_every`` is not used either (a BayesOpt search writes a progress line per evaluation,
    Ray Tune its own status table)."""
    from .. import paths, plans

    content = plans.read_plan(plan_path)
    extra = {**content["overrides"], **(overrides or {})}
    return [run(content["dataset"], content["algorithm"], m["seed"], m["lr"], m["weight_decay"], m["momentum"],
                data_dir, paths.run_dir(runs_dir, m["seed"]), device or "cpu", extra, quiet=quiet,
                threads=threads)
            for m in content["members"]]


_TERMINATED: list = []


def _terminate(signum, frame):
    _TERMINATED.append(signum)
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    args = run_arguments(
        "python -m onepass.search", __doc__.split("\n\n")[0],
        algorithm="BayesOpt, ASHA, ASHA_Ours, PBT or PBT_Ours", seed="seed of the whole search",
        lr="recorded as init_lr (the search draws its own)", weight_decay="recorded as init_weight_decay",
        momentum="recorded as init_momentum", out="output directory of this search",
        overrides="override a search setting or a setting of every inner run",
        threads="CPUs: torch threads for BayesOpt, concurrent Ray trials for ASHA/PBT",
        quiet="do not print progress").parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (SLURM's time limit, snakemake, kill) unwinds like Ctrl-C, so that Ray is stopped
        signal.signal(signal.SIGTERM, _terminate)
    try:
        code, metrics = run_from_arguments(run, run_chunk, args, threads=args.threads)
    except SystemExit:
        if _TERMINATED:  # Ray may turn the signal into SystemExit(1): exit as terminated by it
            print(f"terminated by signal {_TERMINATED[0]}; Ray stopped", file=sys.stderr)
            raise SystemExit(128 + _TERMINATED[0]) from None
        raise
    if code:
        return code
    for m in metrics:
        state = "every evaluation DIVERGED" if m["diverged"] else f"test_metric={m['test_metric']:.6g}"
        print(f"{m['dataset']} {m['algorithm']} seed {m['seed']}: {state} ({m['evaluations']} evaluations, "
              f"{m['diverged_evaluations']} diverged, {m['wall_time_s']:.1f} s)")
    return 0
