"""Training runs in which SGD's hyperparameters are optimised as the weights train, a population at a time.

    # one run (a population of one)
    python -m onepass.train --dataset uci_energy --algorithm Ours_LR_Momentum --seed 0 \\
        --lr 1e-3 --weight-decay 1e-4 --momentum 0.5 --data-dir results/data --out runs/x
    # a chunk of a study's seeds, as one population (what the workflow runs)
    python -m onepass.train --plan results/quick/sweep/uci_energy/chunks/Ours_LR/seeds0-24.json \\
        --data-dir results/data --runs-dir results/quick/runs/uci_energy/Ours_LR [--mem-mb 4000]

Every member writes its own run directory: ``metrics.json``, ``history.csv`` and TensorBoard events under
``tb/`` (written when the population finishes). A population is trained in groups that fit the memory
budget (``--mem-mb``, or the GPU's free memory), one after another; each group checkpoints atomically every
``checkpoint_every`` hyperparameter steps, and started again with the same arguments it resumes and ends
with the same metrics. A checkpoint that cannot be read, or that was written under other settings, is moved
aside with a one-line notice and the group starts afresh. A finished population deletes its checkpoints
unless ``keep_checkpoint`` is set. A member whose training loss becomes NaN/inf or exceeds
``divergence_threshold`` (where set) is frozen and recorded as diverged (the command still exits 0).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import os
import sys
import time
from pathlib import Path

import torch

from . import catalog, memory
from .population import Member, Population
from .progress import EVERY_S, ProgressLog
from .problems import batchable, to_device
from .records import task_metrics, versions, write_history, write_metrics, write_tensorboard
from .settings import HYPERPARAMETERS, ConfigError, check, check_initial, identity, load_settings

CHECKPOINT_VERSION = 2


def tune_allocator() -> None:
    """Keep freed memory in the process (glibc): without it every large tensor of a step is mapped afresh
    and page-faulted in, which slows the CPU engine by about a third."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 1 << 30)   # M_MMAP_THRESHOLD
            libc.mallopt(-1, 1 << 30)   # M_TRIM_THRESHOLD


def resolve_device(name: str) -> torch.device:
    """``cpu`` or ``cuda`` (a ConfigError if CUDA is asked for but not available)."""
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available")
    return torch.device(name)


def move_aside(path: Path, why: str) -> Path:
    """Rename ``path`` to ``<path>.<why>`` (replacing an older one) and return the new path."""
    target = path.with_name(f"{path.name}.{why}")
    os.replace(path, target)
    return target


def load_checkpoint(path: Path, signature: dict, device) -> dict | None:
    """The state saved at ``path`` if it can be read and was written by a population with this
    ``signature``; otherwise None, the file moved aside with a one-line notice on stderr."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict) or "population" not in state:
            raise ValueError("not a checkpoint of this program")
    except Exception as err:  # truncated by a crash or a full disk, or not a checkpoint at all
        moved = move_aside(path, "unreadable")
        print(f"warning: checkpoint {path} cannot be read ({type(err).__name__}: {str(err)[:120]}); "
              f"moved to {moved}, starting afresh", file=sys.stderr)
        return None
    if state.get("version") != CHECKPOINT_VERSION or state.get("signature") != signature:
        moved = move_aside(path, "stale")
        print(f"notice: checkpoint {path} was written under other settings; moved to {moved}, starting afresh",
              file=sys.stderr)
        return None
    return state


def _progress(total: int, initial: int, enabled: bool, label: str):
    """A progress bar on a terminal (hyperparameter steps, members alive and diverged, median validation
    loss); nothing in a log file."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=label, unit="hyperstep", file=sys.stderr,
                disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True, leave=False)


def track_min_test(population: Population) -> torch.Tensor:
    """Every member's running minimum of the test metric, evaluated now and after every weight step (the
    population's weight-step hook) while it trains, NaN ignored: the paper's BayesOpt statistic took the
    minimum over the test metric its runs logged at every weight step. Returns the [N] float64 minima, kept
    up to date in place."""
    lowest = torch.full((population.size,), math.inf, dtype=torch.float64)

    @torch.no_grad()
    def update() -> None:
        metric = population.evaluate("test")["metric"].detach().double().cpu()
        metric[~population.alive.cpu()] = math.nan   # a frozen member's zeroed weights are no run's
        torch.fmin(lowest, metric, out=lowest)

    population.weight_step_hook = update
    update()
    return lowest


def train_population(dataset: str, algorithm: str, settings: dict, members: list[Member], data, device,
                     out_dirs: list[Path], checkpoint: Path, quiet: bool = True,
                     progress_every: float = EVERY_S) -> list[dict]:
    """Train ``members`` as one population and write each member's outputs into its ``out_dirs`` entry;
    returns every member's metrics. Progress shows as a bar on a terminal (unless ``quiet``), else as a log
    line every ``progress_every`` seconds or 5% of the steps (onepass.progress; 0: none, for the inner runs
    of a search, which reports its own), and then each member's history.csv so far, at most every
    ``progress_every`` seconds (TensorBoard's events are written at the end)."""
    wall_start = time.perf_counter()
    population = Population(settings, data, members, device)
    signature = {"dataset": dataset, "algorithm": algorithm, "settings": identity(settings),
                 "members": [m.as_dict() for m in members]}
    state = load_checkpoint(checkpoint, signature, device)
    elapsed_before = 0.0
    lowest = track_min_test(population) if settings["track_min_test"] else None
    if state is not None:
        population.load_state_dict(state["population"])
        elapsed_before = state["wall_time"]
        if lowest is not None:
            lowest.copy_(state["min_test"])
        print(f"resumed from {checkpoint} at hyperparameter step {population.hyper_step}", file=sys.stderr)

    def save():
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        from .records import atomic_write
        content = {"version": CHECKPOINT_VERSION, "signature": signature, "population": population.state_dict(),
                   "wall_time": elapsed_before + time.perf_counter() - wall_start}
        if lowest is not None:
            content["min_test"] = lowest
        atomic_write(checkpoint, lambda tmp: torch.save(content, tmp))

    total = settings["hyperparameter_steps"]
    label = f"{algorithm} seeds {members[0].seed}-{members[-1].seed}" if len(members) > 1 else \
        f"{algorithm} seed {members[0].seed}"
    with _progress(total, population.hyper_step, not quiet, label) as bar:
        written = time.monotonic()   # when the members' history.csv were last written
        lines = None if not bar.disable or progress_every <= 0 else \
            ProgressLog(label, total, population.hyper_step, progress_every, unit="hyperparameter step")
        if population.last_logged_step is None:
            population.log()
        while population.hyper_step < total and bool(population.alive.any()):
            population.step()
            if population.log_due():
                population.log()
                valid = [h[-1]["valid_loss"] for h, alive in zip(population.histories, population.alive.tolist())
                         if alive]
                bar.set_postfix(alive=len(valid), diverged=population.size - len(valid),
                                median_valid=f"{float(torch.tensor(valid).median()):.4g}" if valid else "-")
            bar.update(1)
            if lines is not None and lines.due(population.hyper_step):
                report_progress(lines, population)
                if time.monotonic() - written >= progress_every:  # history.csv so far, every 30 s at most
                    for history, out in zip(population.histories, out_dirs):
                        Path(out).mkdir(parents=True, exist_ok=True)
                        write_history(Path(out) / "history.csv", history)
                    written = time.monotonic()
            if population.hyper_step % settings["checkpoint_every"] == 0 or population.hyper_step == total:
                save()
        if lines is not None and lines.last_done < population.hyper_step:
            report_progress(lines, population, force=True)
    save()  # the finished state: a job killed while writing its outputs resumes at once
    wall = elapsed_before + time.perf_counter() - wall_start
    return write_members(dataset, algorithm, population, data, device, out_dirs, wall,
                         None if lowest is None else lowest.tolist())


def report_progress(lines: ProgressLog, population: Population, force: bool = False) -> None:
    """A progress line of the population: alive and diverged members, median losses of the last logged
    step of the members alive."""
    alive = population.alive.tolist()
    last = [h[-1] for h, ok in zip(population.histories, alive) if ok and h]
    lines.update(population.hyper_step, sum(alive), population.size - sum(alive),
                 [r["train_loss"] for r in last], [r["valid_loss"] for r in last], force=force)


def write_members(dataset: str, algorithm: str, population: Population, data, device, out_dirs, wall: float,
                  min_test: list | None = None):
    """Write every member's history.csv, TensorBoard events and metrics.json (with ``min_test``, each
    member's running minimum of the test metric, as ``min_test_metric``); returns the metrics."""
    results = population.results()
    share = population.size
    metrics = []
    for i, (member, result, out) in enumerate(zip(population.members, results, out_dirs)):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        history = population.histories[i]
        write_history(out / "history.csv", history)
        write_tensorboard(out / "tb", history)
        m = {"dataset": dataset, "family": population.settings["family"], "task": data.task,
             "algorithm": algorithm, "seed": member.seed,
             **{f"init_{k}": getattr(member, k) for k in HYPERPARAMETERS},
             **{f"final_{k}": v for k, v in result["final"].items()},
             **{k: result[k] for k in ("train_loss", "valid_loss", "test_loss", "test_metric")},
             **task_metrics(data.task, result["test_metric"], result["test_accuracy"], result["test_perplexity"]),
             "weight_steps": result["weight_steps"], "hyperparameter_steps": result["hyperparameter_steps"],
             "train_time_s": population.member_time(), "wall_time_s": wall / share,
             "population_size": population.size, "device": str(device), "diverged": result["diverged"],
             "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "versions": versions(),
             "settings": population.member_settings(i)}
        if min_test is not None:
            m["min_test_metric"] = min_test[i] if math.isfinite(min_test[i]) else math.nan
        write_metrics(out / "metrics.json", m)
        metrics.append(m)
    return metrics


def member_budget(device: torch.device, mem_mb: float | None) -> float | None:
    """Bytes a population may use: the job's memory on the CPU, the GPU's free memory on CUDA."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 0.9 * free
    return None if mem_mb is None else mem_mb * 2 ** 20


def train(dataset: str, algorithm: str, members: list[Member], data_dir, out_dirs: list, checkpoint_dir,
          device: str = "cpu", overrides=None, data=None, quiet: bool = True, mem_mb: float | None = None,
          checkpoint_name: str | None = None, progress_every: float = EVERY_S) -> list[dict]:
    """Train ``members`` of (dataset, algorithm), in groups that fit the memory budget, one after another;
    member i writes into ``out_dirs[i]``. Returns every member's metrics."""
    settings = load_settings(dataset, algorithm, overrides)
    if catalog.is_search(algorithm):
        raise ConfigError(f"algorithm {algorithm!r} is a search: run it with python -m onepass.search")
    dev = resolve_device(device)
    for member in members:
        try:
            member.check()
        except ValueError as err:
            raise ConfigError(str(err)) from None
        check(member.settings, f"the settings of seed {member.seed}")
    if data is None:
        from .data import load
        data = load(catalog.dataset(dataset).base, data_dir, settings["preprocessing"])
    if settings["validation_proportion"] is not None:
        from .data import with_validation_proportion
        data = with_validation_proportion(data, settings["validation_proportion"])
    data = to_device(data, dev)
    tune_allocator()
    if settings["model"] in memory.LARGE_MODEL_MB or not batchable(settings, data):  # populations of one
        sizes = [1] * len(members)
    else:
        base = memory.base_bytes(dataset) if dev.type == "cpu" else 0
        sizes = memory.groups(len(members), memory.member_bytes(dataset, settings), member_budget(dev, mem_mb),
                              base)
    checkpoint_dir = Path(checkpoint_dir)
    wanted, start, metrics = [], 0, []
    for size in sizes:
        group = members[start:start + size]
        name = checkpoint_name or f"seeds{group[0].seed}-{group[-1].seed}.pt"
        wanted.append(checkpoint_dir / name)
        start += size
    for old in checkpoint_dir.glob("seeds*.pt") if checkpoint_name is None and checkpoint_dir.is_dir() else []:
        if old not in wanted:  # a group of another memory plan: its members are in other groups now
            print(f"notice: removing checkpoint {old}, of another division of the population", file=sys.stderr)
            old.unlink()
    start = 0
    for size, path in zip(sizes, wanted):
        group, dirs = members[start:start + size], out_dirs[start:start + size]
        start += size
        metrics += train_population(dataset, algorithm, settings, group, data, dev, [Path(d) for d in dirs],
                                    path, quiet, progress_every)
    if not settings["keep_checkpoint"]:
        for path in wanted:
            path.unlink(missing_ok=True)
        if checkpoint_dir != Path(out_dirs[0]):
            with contextlib.suppress(OSError):
                checkpoint_dir.rmdir()
                checkpoint_dir.parent.rmdir()
    return metrics


def run(dataset: str, algorithm: str, seed: int, lr: float, weight_decay: float, momentum: float,
        data_dir, out, device: str = "cpu", overrides=None, data=None, quiet: bool = True,
        progress_every: float = EVERY_S) -> dict:
    """Train one run (a population of one) and write its outputs under ``out``; returns its metrics.
    ``data`` may be an already loaded dataset; ``overrides`` are ``key=value`` strings or a dict."""
    from .settings import parse_overrides

    extra = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides or []))
    for name, value in zip(HYPERPARAMETERS, (lr, weight_decay, momentum)):
        check_initial(name, value, "--" + name.replace("_", "-"))
    member = Member(int(seed), float(lr), float(weight_decay), float(momentum))
    return train(dataset, algorithm, [member], data_dir, [Path(out)], Path(out), device, extra, data, quiet,
                 checkpoint_name="checkpoint.pt", progress_every=progress_every)[0]


def train_chunk(plan_path, data_dir, runs_dir, device: str | None = None, overrides=None, quiet: bool = True,
                mem_mb: float | None = None, progress_every: float = EVERY_S) -> list[dict]:
    """Train a chunk of a study's seeds as one population, from its chunk plan (onepass.study.chunk_plan)."""
    from . import paths, plans, study

    content = plans.read_plan(plan_path)
    members = [Member(**m) for m in content["members"]]
    seeds = [m.seed for m in members]
    extra = {**content["overrides"], **(overrides or {})}
    runs_dir = Path(runs_dir)
    return train(content["dataset"], content["algorithm"], members, data_dir,
                 [Path(paths.run_dir(runs_dir, s)) for s in seeds],
                 runs_dir / ".checkpoints" / study.chunk_name(seeds), device or "cpu", extra,
                 quiet=quiet, mem_mb=mem_mb, progress_every=progress_every)


# ---- the command line ------------------------------------------------------------------------------------
def run_arguments(prog: str, description: str, **help) -> argparse.ArgumentParser:
    """The command line shared by ``onepass.train`` and ``onepass.search``: one run (--dataset --algorithm
    ... --out) or a chunk of a study's seeds (--plan --runs-dir); ``help`` replaces an option's help text."""
    text = {"seed": "seed of the run", "lr": "initial learning rate", "weight_decay": "initial weight decay",
            "momentum": "initial momentum", "out": "output directory of this run",
            "overrides": "override a setting of config/datasets/*.yaml or config/algorithms/*.yaml",
            "threads": "CPU threads for torch (default: torch's own choice, e.g. from OMP_NUM_THREADS)",
            "quiet": "no progress bar", **help}
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--dataset", help="one run: the dataset")
    p.add_argument("--algorithm", help=text.get("algorithm"))
    p.add_argument("--seed", type=int, help=text["seed"])
    p.add_argument("--lr", type=float, help=text["lr"])
    p.add_argument("--weight-decay", type=float, help=text["weight_decay"])
    p.add_argument("--momentum", type=float, help=text["momentum"])
    p.add_argument("--out", help=text["out"])
    p.add_argument("--plan", help="a chunk's plan (results/<study>/sweep/<dataset>/chunks/<algorithm>/seeds<A>-<B>.json)")
    p.add_argument("--runs-dir", help="with --plan: the algorithm's runs directory (one seed<S>/ per seed)")
    p.add_argument("--data-dir", required=True, help="where `python -m onepass.data prepare` wrote the data")
    p.add_argument("--device", default=None, help="cpu or cuda (default cpu; the workflow passes the study's choice)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=text["overrides"])
    p.add_argument("--threads", type=int, default=None, help=text["threads"])
    p.add_argument("--mem-mb", type=float, default=None, help="memory budget of the job (MB): the population "
                   "is trained in groups that fit it")
    p.add_argument("--quiet", action="store_true", help=text["quiet"])
    p.add_argument("--progress-every", type=float, default=EVERY_S, metavar="SECONDS",
                   help=f"without a progress bar: a progress line every SECONDS (default {EVERY_S:g}) or 5%% of "
                        "the steps, whichever comes first")
    return p


def check_arguments(args) -> None:
    """One of the two forms, complete (a ConfigError naming what is missing or extra)."""
    single = ("dataset", "algorithm", "seed", *HYPERPARAMETERS, "out")
    chunk = ("plan", "runs_dir")
    if args.plan is not None:
        missing = [k for k in chunk if getattr(args, k) is None]
        extra = [k for k in single if getattr(args, k) is not None]
    else:
        missing = [k for k in single if getattr(args, k) is None]
        extra = [k for k in chunk if getattr(args, k) is not None]
    if missing:
        raise ConfigError("missing " + ", ".join("--" + k.replace("_", "-") for k in missing))
    if extra:
        raise ConfigError("--plan and " + ", ".join("--" + k.replace("_", "-") for k in extra)
                          + " do not go together")


def run_from_arguments(single, chunk, args, **kwargs):
    """Call ``single`` (one run) or ``chunk`` (a chunk of a plan) with the parsed command line; returns
    (exit status, list of metrics or None). A bad config or missing data is a one-line message (status 2
    or 1), not a traceback."""
    from .data import DataError
    from .settings import parse_overrides

    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    try:
        check_arguments(args)
        if args.plan is None:
            return 0, [single(args.dataset, args.algorithm, args.seed, args.lr, args.weight_decay, args.momentum,
                              args.data_dir, args.out, args.device or "cpu", args.overrides, quiet=args.quiet,
                              **kwargs)]
        return 0, chunk(args.plan, args.data_dir, args.runs_dir, args.device, parse_overrides(args.overrides),
                        quiet=args.quiet, mem_mb=args.mem_mb, progress_every=args.progress_every, **kwargs)
    except (ConfigError, catalog.CatalogError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2, None
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1, None


def summary_line(metrics: list[dict]) -> str:
    """One line per population: runs done and diverged, the median test metric, the time."""
    first = metrics[0]
    done = [m["test_metric"] for m in metrics if not m["diverged"]]
    median = sorted(done)[len(done) // 2] if done else math.nan
    seeds = f"seed {first['seed']}" if len(metrics) == 1 else f"seeds {first['seed']}-{metrics[-1]['seed']}"
    state = (f"test_metric={median:.6g}" if len(metrics) == 1 else f"median test_metric={median:.6g}") \
        if done else "DIVERGED"
    diverged = len(metrics) - len(done)
    return (f"{first['dataset']} {first['algorithm']} {seeds}: {state}"
            f"{f' ({diverged} of {len(metrics)} diverged)' if len(metrics) > 1 and diverged else ''} "
            f"({first['weight_steps']} weight steps, {sum(m['wall_time_s'] for m in metrics):.1f} s)")


def main(argv=None) -> int:
    args = run_arguments("python -m onepass.train", __doc__.split("\n\n")[0]).parse_args(argv)
    code, metrics = run_from_arguments(run, train_chunk, args)
    if code:
        return code
    print(summary_line(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
