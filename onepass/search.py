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
  diverged and told to the surrogate as the finite ``search_diverged_penalty``.  Evaluation i trains with
  seed ``1000 * seed + i``.  Killed and started again, the search replays its finished evaluations from
  their outputs (the optimiser is deterministic for a seed).
- **ASHA** / **PBT**: Ray Tune's ``ASHAScheduler`` / ``PopulationBasedTraining`` on a local Ray instance
  started inside the job (``--threads`` CPUs, else ``$SLURM_CPUS_PER_TASK``, ``$OMP_NUM_THREADS`` or the
  CPUs this process may use; the GPUs for ``--device cuda``), one CPU per trial, Ray's state under
  ``OUT/ray`` and its session files in a short temporary directory; both removed or stopped when the
  job ends, whatever happens.  A trial is a :class:`onepass.train.Run` of ``search_inner_algorithm``
  that reports its full-validation loss every ``search_report_every`` hyperparameter steps.  A diverged
  trial reports ``search_diverged_penalty``; under ASHA it stops, under PBT it idles until it is replaced.
  PBT's exploit copies a top trial's saved run state (weights, momentum buffers, hyperparameters and
  their optimiser) and its explore perturbs that state's *current* hyperparameters: each is resampled
  from the search space with probability ``pbt_resample_probability``, else multiplied by one of
  ``pbt_perturbation_factors`` (momentum then clipped to the space); training goes on from there.
  PBT is synchronous (generations of ``pbt_perturbation_interval`` steps), so a population larger than
  the CPUs still advances together.  Trial i starts from the i-th point drawn from the space and trains
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

import csv
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

from . import catalog
from .settings import SETTINGS, ConfigError, load_settings, parse_overrides, search_settings_keys
from .population import Member, Population
from .problems import to_device
from .records import atomic_write, versions, write_history, write_metrics
from .train import resolve_device, run_arguments, run_from_arguments

SEARCHES = ("bayesopt", "asha", "pbt")
SPACE_KEYS = {"lr": "search_log10_lr", "weight_decay": "search_log10_weight_decay", "momentum": "search_momentum"}
# evaluations.csv: evaluation (row index), trial (0, 1, ... in order of first report), run_seed, hyper_step
# and weight_steps of the reported run state, its lr / weight_decay / momentum then, its losses (NaN when
# diverged), score (what the search was told), wall_time_s (training time of that run state; for PBT
# including the states it copied), cumulative_time_s (since the search started), cumulative_weight_steps and
# cumulative_hyper_steps (steps trained by the whole search so far), best_valid_loss and best_test_metric
# (of the best evaluation by validation loss so far).
EVALUATION_COLUMNS = [
    "evaluation", "trial", "run_seed", "hyper_step", "weight_steps", "lr", "weight_decay", "momentum",
    "train_loss", "valid_loss", "test_loss", "test_metric", "test_accuracy", "test_perplexity", "diverged",
    "score", "wall_time_s", "cumulative_time_s", "cumulative_weight_steps", "cumulative_hyper_steps",
    "best_valid_loss", "best_test_metric"]
NAN = float("nan")


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
    return settings, inner


def _space_point(settings: dict, rng: random.Random) -> dict:
    """One point drawn uniformly from the search space (log-uniform lr and weight decay)."""
    lo, hi = settings["search_log10_lr"]
    lr = 10.0 ** rng.uniform(lo, hi)
    lo, hi = settings["search_log10_weight_decay"]
    wd = 10.0 ** rng.uniform(lo, hi)
    return {"lr": lr, "weight_decay": wd, "momentum": rng.uniform(*settings["search_momentum"])}


# ---- the record of evaluations -------------------------------------------------------------------------
def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def add_evaluation(rows: list[dict], row: dict) -> dict:
    """Append ``row`` with its index, cumulative steps and the best-so-far columns (by validation loss)."""
    prev = rows[-1] if rows else None
    row["evaluation"] = len(rows)
    row["cumulative_weight_steps"] = (prev["cumulative_weight_steps"] if prev else 0) + row.pop("new_weight_steps")
    row["cumulative_hyper_steps"] = (prev["cumulative_hyper_steps"] if prev else 0) + row.pop("new_hyper_steps")
    best = best_index(rows + [row])
    row["best_valid_loss"] = NAN if best is None else (rows + [row])[best]["valid_loss"]
    row["best_test_metric"] = NAN if best is None else (rows + [row])[best]["test_metric"]
    rows.append(row)
    return row


def best_index(rows: list[dict]) -> int | None:
    """Index of the non-diverged row with the lowest finite validation loss (the first on ties)."""
    best = None
    for i, row in enumerate(rows):
        if row["diverged"] or not _finite(row["valid_loss"]):
            continue
        if best is None or row["valid_loss"] < rows[best]["valid_loss"]:
            best = i
    return best


def write_evaluations(path: Path, rows: list[dict]) -> None:
    def fmt(v):
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, float):
            return repr(v)
        return "" if v is None else v

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, EVALUATION_COLUMNS)
            w.writeheader()
            for row in rows:
                w.writerow({k: fmt(row.get(k)) for k in EVALUATION_COLUMNS})
    atomic_write(path, write)


def search_history(rows: list[dict]) -> list[dict]:
    """history.csv rows: per evaluation, the best-so-far evaluation's values against cumulative budget."""
    out = []
    for i, row in enumerate(rows):
        best = best_index(rows[:i + 1])
        b = rows[best] if best is not None else {}
        out.append({"step": row["cumulative_weight_steps"], "hyper_step": row["cumulative_hyper_steps"],
                    "time_s": row["cumulative_time_s"],
                    **{k: b.get(k, NAN) for k in ("train_loss", "valid_loss", "test_loss", "test_metric",
                                                   "lr", "weight_decay", "momentum")}})
    return out


def _finish(out: Path, rows: list[dict], base: dict, task: str, settings: dict, search_time: float,
            wall_start: float, device: str, extra_versions: dict) -> dict:
    """Write evaluations.csv, history.csv and metrics.json; return the metrics."""
    write_evaluations(out / "evaluations.csv", rows)
    write_history(out / "history.csv", search_history(rows))
    best = best_index(rows)
    b = rows[best] if best is not None else {}
    metrics = dict(base)
    metrics.update({f"final_{k}": b.get(k, NAN) for k in ("lr", "weight_decay", "momentum")})
    metrics.update({k: b.get(k, NAN) for k in ("train_loss", "valid_loss", "test_loss", "test_metric")})
    metrics.update({
        "test_mse_unnormalised": b.get("test_metric", NAN) if task == "regression" else None,
        "test_accuracy": b.get("test_accuracy", NAN) if task == "classification" else None,
        "test_perplexity": b.get("test_perplexity", NAN) if task == "language_model" else None,
        "weight_steps": rows[-1]["cumulative_weight_steps"] if rows else 0,
        "hyperparameter_steps": rows[-1]["cumulative_hyper_steps"] if rows else 0,
        "train_time_s": search_time, "wall_time_s": time.perf_counter() - wall_start, "device": device,
        "diverged": best is None, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "versions": versions(**extra_versions), "settings": settings,
        "evaluations": len(rows), "diverged_evaluations": sum(bool(r["diverged"]) for r in rows),
        "best_evaluation": best, "inner_algorithm": settings["search_inner_algorithm"]})
    write_metrics(out / "metrics.json", metrics)
    return metrics


# ---- BayesOpt -----------------------------------------------------------------------------------------
def bayesopt(dataset: str, seed: int, settings: dict, inner_overrides: dict, data, data_dir, out: Path,
             device: str, quiet: bool = True) -> tuple[list[dict], float]:
    """Gaussian-process Bayesian optimisation with scikit-optimize's ask/tell ``Optimizer``; returns the
    evaluation rows and the search's duration in seconds."""
    from skopt import Optimizer
    from skopt.space import Real

    from .train import run as train_run

    space = [Real(*map(float, settings["search_log10_lr"]), name="log10_lr"),
             Real(*map(float, settings["search_log10_weight_decay"]), name="log10_weight_decay"),
             Real(*map(float, settings["search_momentum"]), name="momentum")]
    opt = Optimizer(space, base_estimator="GP", n_initial_points=settings["search_initial_points"],
                    initial_point_generator="random", random_state=seed)
    total = settings["search_initial_points"] + settings["search_guided_points"]
    penalty = float(settings["search_diverged_penalty"])
    rows: list[dict] = []
    start = time.perf_counter()
    for i in range(total):
        with warnings.catch_warnings():  # a GP fitted to few or constant scores warns; it is still usable
            warnings.simplefilter("ignore")
            x = opt.ask()
        lr, wd, mom = 10.0 ** float(x[0]), 10.0 ** float(x[1]), min(max(float(x[2]), 0.0), 1.0)
        run_seed = 1000 * seed + i
        tick = time.perf_counter()
        m = train_run(dataset, settings["search_inner_algorithm"], run_seed, lr, wd, mom, data_dir,
                      out / "evaluations" / f"{i:03d}", device, inner_overrides, data=data)
        score = penalty if m["diverged"] or not math.isfinite(m["valid_loss"]) else m["valid_loss"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.tell(x, float(score))
        row = add_evaluation(rows, {
            "trial": i, "run_seed": run_seed, "hyper_step": m["hyperparameter_steps"],
            "weight_steps": m["weight_steps"], "lr": lr, "weight_decay": wd, "momentum": mom,
            **{k: m[k] for k in ("train_loss", "valid_loss", "test_loss", "test_metric")},
            "test_accuracy": _num(m["test_accuracy"]), "test_perplexity": _num(m["test_perplexity"]),
            "diverged": m["diverged"], "score": score, "wall_time_s": time.perf_counter() - tick,
            "cumulative_time_s": time.perf_counter() - start, "new_weight_steps": m["weight_steps"],
            "new_hyper_steps": m["hyperparameter_steps"]})
        write_evaluations(out / "evaluations.csv", rows)
        if not quiet:
            print(f"evaluation {i}: lr={lr:.3g} wd={wd:.3g} momentum={mom:.3g} valid_loss={row['valid_loss']:.4g}"
                  f"{' (diverged)' if m['diverged'] else ''} best={row['best_valid_loss']:.4g}",
                  file=sys.stderr, flush=True)
    return rows, time.perf_counter() - start


def _num(x) -> float:
    return NAN if x is None else float(x)


# ---- ASHA and PBT on Ray Tune ---------------------------------------------------------------------------
_DATA_CACHE: dict = {}


def _trial_data(ctx: dict):
    """The dataset on the trial's device, loaded once per Ray worker process."""
    key = (ctx["dataset"], ctx["data_dir"], ctx["device"], ctx["inner"]["preprocessing"])
    if key not in _DATA_CACHE:
        from .data import load
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = to_device(load(ctx["dataset"], ctx["data_dir"], ctx["inner"]["preprocessing"]),
                                     torch.device(ctx["device"]))
    return _DATA_CACHE[key]


@torch.no_grad()
def perturb(population: Population, rng: random.Random, settings: dict) -> None:
    """PBT's explore on a trial's current hyperparameters (a population of one, in place): each one is
    resampled from the search space with probability ``pbt_resample_probability``, else multiplied by a random
    choice of ``pbt_perturbation_factors``; momentum is then clipped to the space."""
    current = {k: v[0] for k, v in population.hyperparameters().items()}
    point = _space_point(settings, rng)
    lo, hi = settings["search_momentum"]
    for name in ("lr", "weight_decay", "momentum"):
        if rng.random() < settings["pbt_resample_probability"]:
            population.set_hyperparameter(0, name, point[name])
            continue
        factor = float(rng.choice(settings["pbt_perturbation_factors"]))
        if name == "momentum":
            population.set_hyperparameter(0, name, min(max(current[name] * factor, lo), hi))
        else:  # log-parametrised: multiplying is a shift (keeps per-weight learning rates' spread)
            population.scale_hyperparameter(0, name, factor)


def ray_trial(config: dict, ctx: dict) -> None:
    """One ASHA/PBT trial: a population of one (:class:`onepass.population.Population`) reporting to Ray Tune
    (runs in a Ray worker)."""
    from ray import tune

    torch.set_num_threads(1)
    data = _trial_data(ctx)
    point = ctx["points"][config["trial"]]
    trial = Population(ctx["inner"], data, [Member(point["run_seed"], point["lr"], point["weight_decay"],
                                                   point["momentum"])], torch.device(ctx["device"]))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "trial.pt", map_location=ctx["device"], weights_only=True)
        trial.load_state_dict(state["run"])
        if state["explore"] != config["explore"]:  # PBT's exploit copied this state: explore from it
            perturb(trial, random.Random(config["explore"]), ctx["settings"])
    total, every = ctx["inner"]["hyperparameter_steps"], ctx["settings"]["search_report_every"]
    interval = ctx["settings"]["pbt_perturbation_interval"] if ctx["search"] == "pbt" else None
    steps_at_report, trained = trial.weight_step, 0
    while trial.hyper_step < total:
        just_diverged = False
        if not bool(trial.alive[0]):  # PBT: idle (no training) until exploit replaces this state
            trial.hyper_step += 1
        else:
            just_diverged = bool(trial.step())
            trained += 1
        diverged = not bool(trial.alive[0])
        due = trial.hyper_step % every == 0 or trial.hyper_step == total
        if not (due or (just_diverged and ctx["search"] == "asha")):
            continue
        report = trial.report()[0]
        result = {**{k: report[k] for k in ("train_loss", "valid_loss", "test_loss", "test_metric", "test_accuracy",
                                            "test_perplexity", "lr", "weight_decay", "momentum", "diverged")},
                  "score": ctx["penalty"] if diverged or not math.isfinite(report["valid_loss"])
                  else report["valid_loss"],
                  "hyper_step": trial.hyper_step, "weight_step": trial.weight_step,
                  "new_weight_steps": trial.weight_step - steps_at_report, "new_hyper_steps": trained,
                  "run_seed": point["run_seed"], "train_time_s": trial.train_time}
        steps_at_report, trained = trial.weight_step, 0
        if interval is not None and (trial.hyper_step % interval == 0 or trial.hyper_step == total):
            with tempfile.TemporaryDirectory(prefix="onepass-trial-") as d:
                torch.save({"run": trial.state_dict(), "explore": config["explore"]}, Path(d) / "trial.pt")
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(result)
        if diverged and ctx["search"] == "asha":
            return


def _ray_environment() -> None:
    """Ray's process-wide settings, before Ray is first imported (it reads some of them only then): no
    usage statistics, Tune's own loggers off (evaluations.csv is the record), and token authentication
    with a token of this process held in its environment (none is written to ~/.ray); the single-node
    mode, in which Ray listens on the loopback address only."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # single node: bind to the loopback address
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] = "0"
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"] == "token" and not os.environ.get("RAY_AUTH_TOKEN"):
        import secrets
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def _ray_cpus(threads: int | None) -> int:
    for value in (threads, os.environ.get("SLURM_CPUS_PER_TASK"), os.environ.get("OMP_NUM_THREADS")):
        try:
            if value is not None and int(value) >= 1:
                return int(value)
        except ValueError:
            pass
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def ray_search(dataset: str, seed: int, settings: dict, inner: dict, data_dir, out: Path, device: str,
               threads: int | None = None, quiet: bool = True) -> tuple[list[dict], float]:
    """ASHA or PBT (``settings['search']``) with Ray Tune on a local Ray instance that lives only inside
    this call; returns the trial reports as evaluation rows and the search's duration in seconds."""
    import psutil

    num_cpus = _ray_cpus(threads)
    num_gpus = torch.cuda.device_count() if device == "cuda" else 0
    rng = random.Random(seed)
    n = settings["search_trials"]
    points = [{**_space_point(settings, rng), "run_seed": 1000 * seed + i} for i in range(n)]
    ctx = {"dataset": dataset, "data_dir": str(Path(data_dir).resolve()), "device": device, "inner": inner,
           "settings": settings, "search": settings["search"], "points": points,
           "penalty": float(settings["search_diverged_penalty"])}
    storage = out.resolve() / "ray"
    shutil.rmtree(storage, ignore_errors=True)  # a Ray search is not resumed: start it afresh
    # Ray's sockets live under its temp dir and their paths must stay below ~107 characters.
    base = tempfile.gettempdir() if len(tempfile.gettempdir()) <= 40 else "/tmp"
    ray_tmp = tempfile.mkdtemp(prefix="onepass-ray-", dir=base)
    saved_env = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_ADDRESS")}
    package_parent = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
    os.environ.pop("RAY_ADDRESS", None)
    _ray_environment()
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    rows: list[dict] = []
    trial_ids: dict = {}
    start = [time.perf_counter()]

    class Recorder(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            index = trial_ids.setdefault(trial.trial_id, len(trial_ids))
            row = add_evaluation(rows, {
                "trial": index, "run_seed": result["run_seed"], "hyper_step": result["hyper_step"],
                "weight_steps": result["weight_step"],
                **{k: result[k] for k in ("lr", "weight_decay", "momentum", "train_loss", "valid_loss",
                                          "test_loss", "test_metric", "test_accuracy", "test_perplexity",
                                          "diverged", "score", "new_weight_steps", "new_hyper_steps")},
                "wall_time_s": result["train_time_s"], "cumulative_time_s": time.perf_counter() - start[0]})
            if not quiet and (len(rows) % 50 == 0):
                print(f"{len(rows)} reports, best valid_loss={row['best_valid_loss']:.4g}", file=sys.stderr,
                      flush=True)

    if settings["search"] == "asha":
        scheduler = ASHAScheduler(time_attr="hyper_step", max_t=inner["hyperparameter_steps"],
                                  grace_period=settings["asha_grace_period"],
                                  reduction_factor=settings["asha_reduction_factor"])
    else:
        explorer = random.Random(seed + 1)
        scheduler = PopulationBasedTraining(
            time_attr="hyper_step", perturbation_interval=settings["pbt_perturbation_interval"],
            hyperparam_mutations={"explore": lambda: 0},  # the trial itself perturbs its copied run state
            quantile_fraction=settings["pbt_quantile_fraction"], resample_probability=0.0,
            custom_explore_fn=lambda config: {**config, "explore": explorer.getrandbits(62)},
            synch=True)  # generations: a population larger than the CPUs still advances together
    before = {p.pid for p in _still_children(psutil)}
    main_thread = threading.current_thread() is threading.main_thread()
    on_sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 _temp_dir=ray_tmp, object_store_memory=100 * 1024 ** 2,
                 logging_level="warning", log_to_driver=not quiet, configure_logging=True)
        if on_sigterm is not None:  # Ray's own handler would exit at once: keep the caller's, which unwinds
            signal.signal(signal.SIGTERM, on_sigterm)
        random.seed(seed)  # Ray's schedulers draw from the global generators
        import numpy
        numpy.random.seed(seed)
        trainable = tune.with_resources(tune.with_parameters(ray_trial, ctx=ctx),
                                        {"cpu": 1, "gpu": num_gpus / num_cpus if num_gpus else 0})
        tuner = tune.Tuner(
            trainable, param_space={"trial": tune.grid_search(list(range(n))), "explore": 0},
            tune_config=tune.TuneConfig(metric="score", mode="min", scheduler=scheduler,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=storage.name, storage_path=str(storage.parent), verbose=0,
                                      callbacks=[Recorder()], log_to_file=True,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=4),
                                      failure_config=tune.FailureConfig(max_failures=0)))
        import logging
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)  # no result.json
        start[0] = time.perf_counter()
        results = tuner.fit()
        duration = time.perf_counter() - start[0]
        if results.errors:
            raise RuntimeError(f"{len(results.errors)} Ray trial(s) failed; the first: {results.errors[0]}")
    finally:
        started = [p for p in _still_children(psutil) if p.pid not in before]
        try:
            ray.shutdown()
        finally:
            _stop(list({p.pid: p for p in started + _still_children(psutil) if p.pid not in before}.values()))
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            logs = Path(ray_tmp) / "session_latest" / "logs"
            if sys.exc_info()[0] is not None and logs.is_dir():  # keep Ray's logs of a failed search
                shutil.copytree(logs, out / "ray_logs", dirs_exist_ok=True, ignore_dangling_symlinks=True)
            shutil.rmtree(ray_tmp, ignore_errors=True)
    return rows, duration


def _still_children(psutil) -> list:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _stop(processes, timeout: float = 10.0) -> None:
    """Terminate (then kill) those of ``processes`` (started by this job's Ray) that are still alive."""
    import psutil

    alive = [p for p in processes if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=timeout)


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
    for name, value in (("lr", lr), ("weight-decay", weight_decay), ("momentum", momentum)):
        if not math.isfinite(value) or value < 0 or (name == "momentum" and value > 1):
            raise ConfigError(f"--{name} must be a finite value >= 0{' and <= 1' if name == 'momentum' else ''}, "
                              f"got {value}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        from .data import load
        data = load(dataset, data_dir, inner["preprocessing"])
    task = data.task
    inner_overrides = {k: v for k, v in extra.items() if not _is_search_key(k)}
    extra_versions = {}
    if settings["search"] == "bayesopt":
        import skopt
        extra_versions["scikit-optimize"] = skopt.__version__
        rows, search_time = bayesopt(dataset, seed, settings, inner_overrides, data, data_dir, out, device, quiet)
    else:
        _ray_environment()
        import ray
        extra_versions["ray"] = ray.__version__
        rows, search_time = ray_search(dataset, seed, settings, inner, data_dir, out, device, threads, quiet)
    base = {"dataset": dataset, "family": settings["family"], "task": task, "algorithm": algorithm, "seed": seed,
            "init_lr": lr, "init_weight_decay": weight_decay, "init_momentum": momentum, "inner_settings": inner}
    recorded = {k: v for k, v in settings.items() if k in SETTINGS}   # as load_settings gives them
    return _finish(out, rows, base, task, recorded, search_time, wall_start, str(dev), extra_versions)


def run_chunk(plan_path, data_dir, runs_dir, device: str | None = None, overrides=None, quiet: bool = True,
              mem_mb: float | None = None, threads: int | None = None) -> list:
    """Run a chunk of a study's repetitions of a search, one after another, from its chunk plan (seed s is
    repetition s, written into ``runs_dir/seed<s>``); ``mem_mb`` is not used (a search trains one network at
    a time)."""
    from . import study

    content = study.read_plan(plan_path)
    extra = {**content["overrides"], **(overrides or {})}
    return [run(content["dataset"], content["algorithm"], m["seed"], m["lr"], m["weight_decay"], m["momentum"],
                data_dir, study.run_dir(runs_dir, m["seed"]), device or content["device"], extra, quiet=quiet,
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


if __name__ == "__main__":
    sys.exit(main())
