"""One training run in which SGD's hyperparameters are optimised as the weights train.

    python -m onepass.train --dataset uci_energy --algorithm Ours_LR_Momentum --seed 0 \\
        --lr 1e-3 --weight-decay 1e-4 --momentum 0.5 --data-dir results/data --out runs/x

Every ``update_interval`` (T) weight steps the algorithm's hypergradient updates the hyperparameters.
The run writes ``metrics.json``, ``history.csv``, TensorBoard events under ``tb/`` and an atomic
``checkpoint.pt`` every ``checkpoint_every`` hyperparameter steps; started again with the same arguments
it resumes from the checkpoint and ends with the same metrics.  A run whose training loss becomes
NaN/inf or exceeds ``divergence_threshold`` stops and is recorded as diverged (exit status 0).
:func:`run` is the same as a function, for outer searches.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from . import __version__
from . import catalog
from .settings import ConfigError, load_settings
from .hypergrad import baydin_hypergradient, neumann_hypergradient, unrolled_hypergradient
from .models import build_model
from .problems import Problem, frozen_batchnorm_stats
from .updates import Hyperparameters, clip_by_norm_, sgd_step_

CHECKPOINT_VERSION = 1
HISTORY_COLUMNS = ["step", "hyper_step", "time_s", "train_loss", "valid_loss", "test_loss", "test_metric",
                   "lr", "weight_decay", "momentum"]


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so that ``path`` is never half-written."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _dataset_to(dataset, device):
    for split in ("train", "valid", "test"):
        inputs, targets = getattr(dataset, split)
        setattr(dataset, split, (inputs.to(device), None if targets is None else targets.to(device)))
    return dataset


def _outputs(dataset) -> int:
    if dataset.task == "regression":
        return dataset.train[1].shape[-1]
    return dataset.vocab_size if dataset.task == "language_model" else dataset.num_classes


class Run:
    """State and steps of one run; :func:`run` (or an outer search) drives it."""

    def __init__(self, settings: dict, dataset, seed: int, lr: float, weight_decay: float, momentum: float,
                 device: torch.device):
        self.settings, self.seed, self.device = settings, seed, device
        torch.manual_seed(seed)
        model = build_model(settings, tuple(dataset.input_shape), _outputs(dataset)).to(device)
        model.train()
        self.problem = Problem(model, dataset, settings)
        self.params = self.problem.params
        self.bufs = [torch.zeros_like(p) for p in self.params]
        shapes = [p.shape for p in self.params] if settings["lr_per_weight"] else None
        self.hypers = Hyperparameters(
            lr, weight_decay, momentum, settings["optimise"], per_weight_shapes=shapes,
            optimiser=settings["hyper_optimiser"], hyper_lr=settings["hyper_lr"],
            log10_lr_bounds=(settings["log10_lr_min"], settings["log10_lr_max"]), device=device)
        self.train_stream = self.problem.stream(settings["train_on"], seed)
        self.val_stream = self.problem.stream("valid", seed + 1_000_003)
        self.initial_weights = [p.detach().clone() for p in self.params] if settings["reset_weights"] else None
        self.hyper_step = 0
        self.weight_step = 0
        self.train_time = 0.0
        self.grads_prev = None
        self.last_loss = torch.zeros((), device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.loss_count = 0
        self.history: list[dict] = []

    # ---- steps ----------------------------------------------------------------------------------------
    def _grads(self, batch):
        loss, aux = self.problem.step_loss(batch)
        grads = list(torch.autograd.grad(loss, self.params))
        if aux:
            self.train_stream.carry(aux)
        clip_by_norm_(grads, self.settings["clip_grad_norm"])
        self._record_loss(loss.detach())
        return grads

    def _record_loss(self, loss) -> None:
        self.last_loss = loss
        self.loss_sum += loss
        self.loss_count += 1
        self.weight_step += 1

    def weight_step_(self, lr, wd, mom, batch=None) -> None:
        """One plain SGD step in place (the lean loop: autograd.grad plus foreach updates)."""
        grads = self._grads(self.train_stream.next() if batch is None else batch)
        sgd_step_(self.params, self.bufs, grads, lr, wd, mom)

    def hyperparameter_step(self) -> None:
        """T weight steps and, for the hypergradient algorithms, one hyperparameter update."""
        s = self.settings
        method, T = s["hypergradient"], s["update_interval"]
        if method == "none":
            lr, wd, mom = self.hypers.for_step()
            for _ in range(T):
                self.weight_step_(lr, wd, mom)
        elif method == "baydin":
            grads = self._grads(self.train_stream.next())
            if self.grads_prev is not None:
                self.hypers.step({"lr": baydin_hypergradient(grads, self.grads_prev)})
            self.grads_prev = [g.detach().clone() for g in grads]
            sgd_step_(self.params, self.bufs, grads, *self.hypers.for_step())
        elif method == "neumann":
            lr, wd, mom = self.hypers.for_step()
            for _ in range(T - 1):
                self.weight_step_(lr, wd, mom)
            batch = self.train_stream.next()
            params_prev = tuple(p.detach().clone() for p in self.params)
            bufs_prev = tuple(b.clone() for b in self.bufs)
            self.weight_step_(lr, wd, mom, batch)
            val_grad = self._val_grad()
            with self._double_backward_ok():
                grads = neumann_hypergradient(
                    self.problem.loss, params_prev, bufs_prev, batch, val_grad, self.hypers.trainable(),
                    self.hypers.fixed(), s["neumann_terms"], s["clip_grad_norm"])
            self.hypers.step(grads)
        elif method == "unroll":
            if self.initial_weights is not None:
                with torch.no_grad():
                    torch._foreach_copy_(self.params, self.initial_weights)
                    torch._foreach_zero_(self.bufs)
            lr, wd, mom = self.hypers.for_step()
            for _ in range(T - s["unroll_steps"]):
                self.weight_step_(lr, wd, mom)
            with self._double_backward_ok():
                grads, weights, bufs, _, losses = unrolled_hypergradient(
                    self.problem.loss_aux, self.problem.loss, tuple(self.params), tuple(self.bufs),
                    self.train_stream.next, s["unroll_steps"], self.val_stream.next(), self.hypers.trainable(),
                    self.hypers.fixed(), s["clip_grad_norm"], carry=self.train_stream.carry)
            with torch.no_grad():
                torch._foreach_copy_(self.params, list(weights))
                torch._foreach_copy_(self.bufs, list(bufs))
            for loss in losses:
                self._record_loss(loss)
            self.hypers.step(grads)
        if s["lr_step_factor"] is not None and method == "none":
            self.hypers.scale_lr(s["lr_step_factor"])
        self.hyper_step += 1

    def _val_grad(self):
        """v = dL_val/dw at the current weights on the next validation batch (batch statistics, running
        statistics left alone)."""
        with frozen_batchnorm_stats(self.problem.model):
            loss, aux = self.problem.step_loss(self.val_stream.next())
        if aux:
            self.val_stream.carry(aux)
        return torch.autograd.grad(loss, self.params)

    def _double_backward_ok(self):
        """cuDNN's LSTM has no double backward: use the native kernels inside hypergradients."""
        return torch.backends.cudnn.flags(enabled=False) if self.device.type == "cuda" else contextlib.nullcontext()

    # ---- bookkeeping ----------------------------------------------------------------------------------
    def diverged(self) -> bool:
        loss = float(self.last_loss)
        return not math.isfinite(loss) or loss > self.settings["divergence_threshold"] or not self.hypers.is_finite()

    def log(self) -> dict:
        """Evaluate on the validation and test splits and append a history row."""
        train = float(self.loss_sum) / self.loss_count if self.loss_count else float("nan")
        self.loss_sum.zero_()
        self.loss_count = 0
        valid, test = self.problem.evaluate("valid"), self.problem.evaluate("test")
        row = {"step": self.weight_step, "hyper_step": self.hyper_step, "time_s": self.train_time,
               "train_loss": train, "valid_loss": valid["loss"], "test_loss": test["loss"],
               "test_metric": test["metric"], **self.hypers.summary()}
        self.history.append(row)
        return row

    def state_dict(self) -> dict:
        return {"model": self.problem.model.state_dict(), "bufs": self.bufs, "hypers": self.hypers.state_dict(),
                "train_stream": self.train_stream.state_dict(), "val_stream": self.val_stream.state_dict(),
                "initial_weights": self.initial_weights, "hyper_step": self.hyper_step,
                "weight_step": self.weight_step, "train_time": self.train_time, "grads_prev": self.grads_prev,
                "last_loss": self.last_loss, "loss_sum": self.loss_sum, "loss_count": self.loss_count,
                "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.problem.model.load_state_dict(state["model"])
        with torch.no_grad():
            torch._foreach_copy_(self.bufs, state["bufs"])
        self.hypers.load_state_dict(state["hypers"])
        self.train_stream.load_state_dict(state["train_stream"])
        self.val_stream.load_state_dict(state["val_stream"])
        for key in ("initial_weights", "hyper_step", "weight_step", "train_time", "grads_prev", "last_loss",
                    "loss_sum", "loss_count", "history"):
            setattr(self, key, state[key])


def _versions() -> dict:
    import numpy
    return {"onepass": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {name!r}")
    return torch.device(name)


def run(dataset: str, algorithm: str, seed: int, lr: float, weight_decay: float, momentum: float,
        data_dir, out, device: str = "cpu", overrides=None, data=None, quiet: bool = True) -> dict:
    """Train one run and write its outputs under ``out``; returns the metrics dict.

    ``data`` may be an already loaded :class:`onepass.data.Dataset` (outer searches load it once);
    ``overrides`` are ``key=value`` strings or a dict of settings.
    """
    wall_start = time.perf_counter()
    settings = load_settings(dataset, algorithm, overrides)
    if catalog.is_search(algorithm):
        raise ConfigError(f"algorithm {algorithm!r} is a search: run it with python -m onepass.search")
    dev = resolve_device(device)
    for name, value in (("lr", lr), ("weight-decay", weight_decay), ("momentum", momentum)):
        if not math.isfinite(value) or value < 0 or (name == "momentum" and value > 1):
            raise ConfigError(f"--{name} must be a finite value >= 0{' and <= 1' if name == 'momentum' else ''}, "
                              f"got {value}")
    if data is None:
        from .data import load
        data = load(dataset, data_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = _dataset_to(data, dev)
    job = Run(settings, data, seed, lr, weight_decay, momentum, dev)
    signature = {"dataset": dataset, "algorithm": algorithm, "seed": seed, "lr": lr,
                 "weight_decay": weight_decay, "momentum": momentum, "settings": settings}
    checkpoint = out / "checkpoint.pt"
    elapsed_before = 0.0
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=dev, weights_only=False)
        if state.get("version") != CHECKPOINT_VERSION or state.get("signature") != signature:
            raise ConfigError(f"{checkpoint} was written by a run with other arguments or settings; "
                              "delete it to start this run afresh")
        job.load_state_dict(state["run"])
        elapsed_before = state["wall_time"]
        print(f"resumed from {checkpoint} at hyperparameter step {job.hyper_step}", file=sys.stderr)

    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(out / "tb"), purge_step=job.weight_step if job.history else None)

    def emit(row):
        for key in HISTORY_COLUMNS[3:]:
            writer.add_scalar(key, row[key], row["step"])
        if not quiet:
            print(" ".join(f"{k}={row[k]:.4g}" for k in HISTORY_COLUMNS), file=sys.stderr, flush=True)

    def save_checkpoint():
        state = {"version": CHECKPOINT_VERSION, "signature": signature, "run": job.state_dict(),
                 "wall_time": elapsed_before + time.perf_counter() - wall_start}
        atomic_write(checkpoint, lambda tmp: torch.save(state, tmp))
        write_history(out / "history.csv", job.history)

    if not job.history:
        emit(job.log())
    total, diverged = settings["hyperparameter_steps"], False
    while job.hyper_step < total:
        tick = time.perf_counter()
        job.hyperparameter_step()
        diverged = job.diverged()
        job.train_time += time.perf_counter() - tick
        if diverged:
            break
        if job.weight_step // settings["log_every"] > job.history[-1]["step"] // settings["log_every"] \
                or job.hyper_step == total:
            emit(job.log())
        if job.hyper_step % settings["checkpoint_every"] == 0 or job.hyper_step == total:
            save_checkpoint()
    writer.close()
    if job.history and job.history[-1]["hyper_step"] != job.hyper_step:
        job.history.append({**{k: float("nan") for k in HISTORY_COLUMNS}, "step": job.weight_step,
                            "hyper_step": job.hyper_step, "time_s": job.train_time, **job.hypers.summary()})
    write_history(out / "history.csv", job.history)

    init = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum}
    final = job.hypers.summary()
    metrics = {"dataset": dataset, "family": settings["family"], "task": data.task, "algorithm": algorithm,
               "seed": seed, **{f"init_{k}": v for k, v in init.items()},
               **{f"final_{k}": v for k, v in final.items()}}
    nan = float("nan")
    if diverged:
        losses = {"train_loss": nan, "valid_loss": nan, "test_loss": nan, "test_metric": nan}
        extra = {"test_mse_unnormalised": nan if data.task == "regression" else None,
                 "test_accuracy": nan if data.task == "classification" else None,
                 "test_perplexity": nan if data.task == "language_model" else None}
    else:
        train, valid, test = (job.problem.evaluate(split) for split in ("train", "valid", "test"))
        losses = {"train_loss": train["loss"], "valid_loss": valid["loss"], "test_loss": test["loss"],
                  "test_metric": test["metric"]}
        extra = {"test_mse_unnormalised": test["metric"] if data.task == "regression" else None,
                 "test_accuracy": test.get("accuracy"),
                 "test_perplexity": test.get("perplexity")}
    metrics.update(losses)
    metrics.update(extra)
    metrics.update({"weight_steps": job.weight_step, "hyperparameter_steps": job.hyper_step,
                    "train_time_s": job.train_time,
                    "wall_time_s": elapsed_before + time.perf_counter() - wall_start,
                    "device": str(dev), "diverged": diverged,
                    "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "versions": _versions(),
                    "settings": settings})
    atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=1) + "\n"))
    return metrics


def write_history(path: Path, rows: list[dict]) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, HISTORY_COLUMNS)
            w.writeheader()
            for row in rows:
                w.writerow({k: repr(float(row[k])) if k not in ("step", "hyper_step") else int(row[k])
                            for k in HISTORY_COLUMNS})
    atomic_write(path, write)


def run_arguments(prog: str, description: str, **help) -> argparse.ArgumentParser:
    """The single-run command line, shared by ``onepass.train`` and ``onepass.search``; ``help``
    replaces the help text of an option (keys as the option's dest)."""
    text = {"seed": None, "lr": "initial learning rate", "weight_decay": "initial weight decay",
            "momentum": "initial momentum", "out": "output directory of this run",
            "overrides": "override a setting of config/datasets/*.yaml or config/algorithms/*.yaml",
            "threads": "CPU threads for torch (default: torch's own choice, e.g. from OMP_NUM_THREADS)",
            "quiet": "do not print the logged evaluations", **help}
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--dataset", required=True)
    p.add_argument("--algorithm", required=True, help=text.get("algorithm"))
    p.add_argument("--seed", type=int, required=True, help=text["seed"])
    p.add_argument("--lr", type=float, required=True, help=text["lr"])
    p.add_argument("--weight-decay", type=float, required=True, help=text["weight_decay"])
    p.add_argument("--momentum", type=float, required=True, help=text["momentum"])
    p.add_argument("--data-dir", required=True, help="where `python -m onepass.data prepare` wrote the data")
    p.add_argument("--out", required=True, help=text["out"])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=text["overrides"])
    p.add_argument("--threads", type=int, default=None, help=text["threads"])
    p.add_argument("--quiet", action="store_true", help=text["quiet"])
    return p


def run_from_arguments(run_fn, args, **kwargs):
    """Call ``run_fn`` with the parsed command line; returns (exit status, metrics or None).
    A bad config or missing data is a one-line message (status 2 or 1), not a traceback."""
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    try:
        return 0, run_fn(args.dataset, args.algorithm, args.seed, args.lr, args.weight_decay, args.momentum,
                         args.data_dir, args.out, args.device, args.overrides, quiet=args.quiet, **kwargs)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2, None
    except Exception as err:
        if type(err).__name__ == "DataError":
            print(f"error: {err}", file=sys.stderr)
            return 1, None
        raise


def main(argv=None) -> int:
    args = run_arguments("python -m onepass.train", __doc__.split("\n\n")[0]).parse_args(argv)
    code, metrics = run_from_arguments(run, args)
    if code:
        return code
    state = "DIVERGED" if metrics["diverged"] else f"test_metric={metrics['test_metric']:.6g}"
    print(f"{args.dataset} {args.algorithm} seed {args.seed}: {state} "
          f"({metrics['weight_steps']} weight steps, {metrics['wall_time_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
