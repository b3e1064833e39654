"""ASHA and PBT with Ray Tune (``ASHAScheduler``, ``PopulationBasedTraining``) on a local Ray instance that lives
only inside the search's job; every trial is a population of one of the search's inner algorithm, driven
through the population's public interface (step, report, hyperparameters, state)."""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from .. import catalog
from ..population import Member, Population
from ..problems import to_device
from ..settings import HYPERPARAMETERS
from .record import add_evaluation
from .space import space_point


_DATA_CACHE: dict = {}


def _trial_data(ctx: dict):
    """The dataset on the trial's device, loaded once per Ray worker process."""
    proportion = ctx["inner"].get("validation_proportion")
    key = (ctx["dataset"], ctx["data_dir"], ctx["device"], ctx["inner"]["preprocessing"], proportion)
    if key not in _DATA_CACHE:
        from ..data import load, with_validation_proportion
        _DATA_CACHE.clear()
        data = load(catalog.dataset(ctx["dataset"]).base, ctx["data_dir"], ctx["inner"]["preprocessing"])
        if proportion is not None:
            data = with_validation_proportion(data, proportion)
        _DATA_CACHE[key] = to_device(data, torch.device(ctx["device"]))
    return _DATA_CACHE[key]


def explore(config: dict, rng: random.Random, settings: dict) -> dict:
    """Ray's PBT explore of a trial's config (natural units; the paper's search space held log10 lr, log10
    weight decay and momentum): each value is resampled from the search space with probability
    ``pbt_resample_probability``, else multiplied by a random choice of ``pbt_perturbation_factors``; lr and
    weight decay through their log10 with ``pbt_perturb_space: log10`` (the paper), else themselves; momentum
    in natural units, then clipped to the space and to [0, 1 - 1e-6] (the paper's custom explore)."""
    point = space_point(settings, rng)
    lo, hi = settings["search_momentum"]
    lo, hi = max(lo, 0.0), min(hi, 1.0 - 1e-6)
    new = {}
    for name in HYPERPARAMETERS:
        if rng.random() < settings["pbt_resample_probability"]:
            new[name] = point[name]
            continue
        factor = float(rng.choice(settings["pbt_perturbation_factors"]))
        if name == "momentum":
            new[name] = min(max(config[name] * factor, lo), hi)
        elif settings["pbt_perturb_space"] == "log10":
            new[name] = 10.0 ** (math.log10(config[name]) * factor)
        else:
            new[name] = config[name] * factor
    return new


def _stored(name: str, value: float, settings: dict) -> float:
    """A config value in the space the ratio of the paper's rescaling is taken in: log10 lr and weight decay
    (``pbt_perturb_space: log10``; natural otherwise), momentum's logit (as the paper's trial stored it)."""
    if name == "momentum":
        return math.log(value / (1 - value)) if 0 < value < 1 else math.copysign(math.inf, value - 0.5)
    return math.log10(value) if settings["pbt_perturb_space"] == "log10" else value


@torch.no_grad()
def rescale(population: Population, old: dict, new: dict, settings: dict) -> None:
    """The paper's trial restored under a perturbed config (its train.py, load_training_state): each tuned
    hyperparameter of the copied state (a population of one) is multiplied by new / old of its config value,
    in the space the value is stored in (:func:`_stored`), so a resample scales the tuned value rather than
    replacing it. Where the inner algorithm tunes nothing, tuned and config values agree and this sets the new
    config. A ratio that is not finite (an old value of 0 there, momentum 0) sets the new value instead."""
    current = {k: v[0] for k, v in population.hyperparameters().items()}
    for name in HYPERPARAMETERS:
        a, b = _stored(name, old[name], settings), _stored(name, new[name], settings)
        ratio = b / a if a != 0 and math.isfinite(a) and math.isfinite(b) else math.nan
        if not math.isfinite(ratio):
            population.set_hyperparameter(0, name, new[name])
        elif name == "momentum":
            logit = _stored(name, current[name], settings) * ratio
            population.set_hyperparameter(0, name, 1 / (1 + math.exp(-logit)) if logit > -700 else 0.0)
        elif settings["pbt_perturb_space"] == "log10":
            population.multiply_log10_hyperparameter(0, name, ratio)
        else:
            population.scale_hyperparameter(0, name, ratio)


def perturb(population: Population, rng: random.Random, settings: dict, config: dict | None = None) -> dict:
    """PBT's explore of a trial whose state was copied: its config (``config``, natural units; default its
    current hyperparameters) explored (:func:`explore`) and its tuned hyperparameters rescaled by new / old
    (:func:`rescale`); returns the new config."""
    config = config or {k: v[0] for k, v in population.hyperparameters().items()}
    new = explore(config, rng, settings)
    rescale(population, config, new, settings)
    return new


def time_units(settings: dict, inner: dict) -> tuple[str, int, int]:
    """(the result key that is the scheduler's time, weight steps per time unit, the run's length in time
    units) for ``search_time_unit``."""
    if settings["search_time_unit"] == "weight_steps":
        return "weight_step", 1, inner["hyperparameter_steps"] * inner["update_interval"]
    return "hyper_step", inner["update_interval"], inner["hyperparameter_steps"]


def ray_trial(config: dict, ctx: dict) -> None:
    """One ASHA/PBT trial: a population of one (:class:`onepass.population.Population`) reporting to Ray Tune
    (runs in a Ray worker) every ``search_report_every`` time units: weight steps (inside a hyperparameter
    step too, as the paper's trainable) or hyperparameter steps."""
    from ray import tune

    torch.set_num_threads(1)
    data = _trial_data(ctx)
    point = ctx["points"][config["trial"]]
    trial = Population(ctx["inner"], data, [Member(point["run_seed"], point["lr"], point["weight_decay"],
                                                   point["momentum"])], torch.device(ctx["device"]))
    # the trial's config (Ray's values in the paper: the initial hyperparameters it was started or restored
    # with), kept apart from the hyperparameters the inner algorithm tunes
    own = {k: point[k] for k in HYPERPARAMETERS}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "trial.pt", map_location=ctx["device"], weights_only=True)
        trial.load_state_dict(state["run"])
        own = dict(state["config"])
        if state["explore"] != config["explore"]:  # PBT's exploit copied this state: explore from its config
            own = perturb(trial, random.Random(config["explore"]), ctx["settings"], own)
    settings, search = ctx["settings"], ctx["search"]
    total, T = ctx["inner"]["hyperparameter_steps"], ctx["inner"]["update_interval"]
    by_weight = settings["search_time_unit"] == "weight_steps"
    every = settings["search_report_every"]
    interval = settings["pbt_perturbation_interval"] if search == "pbt" else None
    count = {"weight": trial.weight_step, "idle": 0, "hyper": 0}   # at the last report; idle, hyper since

    def result(report: dict, diverged: bool) -> dict:
        new_weight = trial.weight_step - count["weight"] - count["idle"]
        out = {**{k: report[k] for k in ("train_loss", "valid_loss", "test_loss", "test_metric", "test_accuracy",
                                         "test_perplexity", *HYPERPARAMETERS)},
               "diverged": diverged,
               "score": ctx["penalty"] if diverged or not math.isfinite(report["valid_loss"])
               else report["valid_loss"],
               "hyper_step": trial.hyper_step, "weight_step": trial.weight_step,
               "new_weight_steps": new_weight, "new_hyper_steps": count["hyper"],
               "run_seed": point["run_seed"], "train_time_s": trial.train_time}
        count.update(weight=trial.weight_step, idle=0, hyper=0)
        return out

    def inside_step() -> None:   # a report after a weight step inside a hyperparameter step
        w = trial.weight_step
        if w % T and w % every == 0:
            report = trial.report()[0]
            tune.report(result(report, False))

    if by_weight:
        trial.weight_step_hook = inside_step
    while trial.hyper_step < total:
        just_diverged = False
        if not bool(trial.alive[0]):  # PBT: idle (no training) until exploit replaces this state
            trial.hyper_step += 1
            trial.weight_step += T     # the scheduler's clock goes on
            count["idle"] += T
        else:
            just_diverged = bool(trial.step())
            count["hyper"] += 1
        diverged = not bool(trial.alive[0])
        now = trial.weight_step if by_weight else trial.hyper_step
        end = trial.hyper_step == total
        due = now % every == 0 or end
        if not (due or (just_diverged and search == "asha")):
            continue
        row = result(trial.report()[0], diverged)
        if interval is not None and (now % interval == 0 or end):
            with tempfile.TemporaryDirectory(prefix="onepass-trial-") as d:
                torch.save({"run": trial.state_dict(), "explore": config["explore"], "config": own},
                           Path(d) / "trial.pt")
                tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(row)
        if diverged and search == "asha":
            return


def make_scheduler(settings: dict, inner: dict, seed: int):
    """Ray Tune's ASHAScheduler or PopulationBasedTraining for ``settings['search']``, its time the result key
    of ``search_time_unit`` (:func:`time_units`)."""
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    time_attr, _, length = time_units(settings, inner)
    if settings["search"] == "asha":
        return ASHAScheduler(time_attr=time_attr, max_t=length, grace_period=settings["asha_grace_period"],
                             reduction_factor=settings["asha_reduction_factor"])
    explorer = random.Random(seed + 1)
    # Asynchronous by default (the paper's): a trial exploits/explores when it reaches its own perturbation
    # point, and Ray pauses it there while others are behind, so a population larger than the CPUs still
    # advances together; pbt_synch: synchronous generations.
    return PopulationBasedTraining(
        time_attr=time_attr, perturbation_interval=settings["pbt_perturbation_interval"],
        hyperparam_mutations={"explore": lambda: 0},  # the trial itself perturbs its copied run state
        quantile_fraction=settings["pbt_quantile_fraction"], resample_probability=0.0,
        custom_explore_fn=lambda config: {**config, "explore": explorer.getrandbits(62)},
        synch=bool(settings["pbt_synch"]))


def ray_environment() -> None:
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
    points = [{**space_point(settings, rng), "run_seed": 1000 * seed + i} for i in range(n)]
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
    ray_environment()
    import ray
    from ray import tune
    rows: list[dict] = []
    trial_ids: dict = {}
    start = [time.perf_counter()]

    class Recorder(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            index = trial_ids.setdefault(trial.trial_id, len(trial_ids))
            row = add_evaluation(rows, {
                "trial": index, "run_seed": result["run_seed"], "hyper_step": result["hyper_step"],
                "weight_steps": result["weight_step"],
                **{k: result[k] for k in (*HYPERPARAMETERS, "train_loss", "valid_loss",
                                          "test_loss", "test_metric", "test_accuracy", "test_perplexity",
                                          "diverged", "score", "new_weight_steps", "new_hyper_steps")},
                "wall_time_s": result["train_time_s"], "cumulative_time_s": time.perf_counter() - start[0],
                "min_test_metric": result["test_metric"]})
            if not quiet and (len(rows) % 50 == 0):
                print(f"{len(rows)} reports, best valid_loss={row['best_valid_loss']:.4g}", file=sys.stderr,
                      flush=True)

    scheduler = make_scheduler(settings, inner, seed)
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
