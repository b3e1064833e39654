"""The GPU check of issue 17: every GPU path of the study checked and timed in one call, each part bounded in time.

    PYTHONPATH=. python benchmarks/gpu.py --out DIR [--budget-s 420]      # on a GPU machine (benchmarks/gpu.sh)
    PYTHONPATH=. python benchmarks/gpu.py --out DIR --cpu --tiny           # every part at toy size on the CPU

Writes ``DIR/gpu.json`` (rewritten as every part goes: after each algorithm, every two seconds of pytest; so a
run killed part-way still leaves what it finished, the part it was in marked ``running``) and ``DIR/gpu.log``.
The parts, in order:

- ``penn_treebank_lstm`` and ``cifar10_resnet18``: seconds per hyperparameter step of Random, Ours_LR_Momentum
  and DiffThroughOpt for a population of one of the real network (10,000-word vocabulary, 40 x 70 batches, 650
  units; torchvision's ResNet-18, batch 100) on generated data in the real formats, with the peak memory and
  the paper-schedule run and study these imply. ResNet-18 is skipped, with the reason, where torchvision does
  not import.
- ``uci_energy_population`` (200 members, the paper's 4000 weight steps) and ``fashion_mnist_population`` (100
  members, 300 weight steps), each for the same three algorithms, trained as a job trains them (the engine's
  Population, evaluations at ``log_every``): wall time, training time per member and weight step beside a
  short run of its first 25 members on the CPU (one thread, as the study's CPU jobs), and the peak memory.
  Initialisations are the study's (``sweep`` of config/config.yaml). Real data where prepared
  (``--data-dir``) or where the offline mirrors (``ONEPASS_DATA_MIRRORS``) hold them, else generated tensors
  of the real shapes; the JSON says which.
- ``compiled_populations``: Random and Ours_LR_Momentum on the UCI Energy and Fashion-MNIST populations (200
  members, 1000 weight steps; 100 members, 300 weight steps), eager and then with the training steps' loss
  through ``torch.compile(mode="reduce-overhead")`` (:meth:`onepass.population.Population.compile`: CUDA
  graphs on a GPU; on the CPU inductor alone), the same members for the same steps: training time per member
  and weight step of each (the compiled one without its first hyperparameter step), their ratio, the
  compilation with the first hyperparameter step, and the largest difference between the two runs' final
  weights and training losses (the same numbers to float round-off). ``--tiny`` compiles with the
  ``aot_eager`` backend (the same tracing, no code generation) so that the CPU test takes seconds.
- ``group_size``: the group sizes :func:`onepass.train.train` plans for each population (its budget: 90 % of
  the GPU's free memory; on the CPU the job's ``mem_mb`` estimate) beside the members the measured peak
  allows in that budget.
- ``cuda_tests``: ``pytest -m cuda tests/test_cuda.py`` in a subprocess, with its counts (it gets the time the
  other parts left; on a machine without CUDA every test skips).

The engine runs eager unless asked (``Population.compile``); only ``compiled_populations`` asks. Each part has a
share of ``--budget-s``: between steps a part past its share stops and records what it finished (status
``stopped``; algorithms it did not start are ``not reached``), and one stuck inside a step is interrupted at
1.5 times its share plus a minute (20 s with ``--tiny``). ``--tiny`` runs every part at toy size (about 20 s
on one CPU core); tests/test_gpu_benchmark.py runs it so. Peaks on the CPU are the process's resident set,
which keeps memory freed by earlier work: there they are lower bounds.

Needs torch, numpy and pyyaml (onepass.catalog and onepass.settings read YAML), pytest, tqdm and
tensorboard for the cuda tests, and torchvision for ResNet-18: the GPU machine's image has them all,
so nothing travels with the working tree but, optionally, the offline mirrors (``bash benchmarks/gpu.sh
--stage``). Where pyyaml is missing, ``pip download pyyaml`` here and install the wheel there first.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # this checkout's onepass, also without PYTHONPATH

import torch  # noqa: E402

from onepass import catalog, data, memory, sweep  # noqa: E402
from onepass.population import Member, Population  # noqa: E402
from onepass.problems import to_device  # noqa: E402
from onepass.settings import load_settings  # noqa: E402
from onepass.train import member_budget, tune_allocator  # noqa: E402

ALGORITHMS = ["Random", "Ours_LR_Momentum", "DiffThroughOpt"]
PARTS = ["penn_treebank_lstm", "cifar10_resnet18", "uci_energy_population", "fashion_mnist_population",
         "compiled_populations", "group_size", "cuda_tests"]
COMPILED_ALGORITHMS = ["Random", "Ours_LR_Momentum"]
COMPILE_MODE = "reduce-overhead"
# shares of the budget; cuda_tests, last, gets whatever the others left (at least its share)
SHARES = {"penn_treebank_lstm": 0.12, "cifar10_resnet18": 0.12, "uci_energy_population": 0.22,
          "fashion_mnist_population": 0.16, "compiled_populations": 0.12, "group_size": 0.0, "cuda_tests": 0.26}
PTB_TOKENS = (929_589, 73_760, 82_430)   # the official train/valid/test streams with <eos> (onepass.data)
MB = 2 ** 20

# sizes: full (the study's) and tiny (toy, for the CPU test)
FULL = {
    "large_timed_steps": 5,
    "lstm": {"vocab": 10_000, "tokens": PTB_TOKENS, "overrides": {}},
    "resnet": {"image": 32, "rows": None, "overrides": {}},
    "populations": {"uci_energy": (200, 4000), "fashion_mnist": (100, 300)},
    "compiled": {"uci_energy": (200, 1000), "fashion_mnist": (100, 300)},
    "compile_backend": "inductor",
    "population_overrides": {},
    "cpu_reference_hyper_steps": 3,
    "cpu_reference_members": 25,   # as the README's CPU overhead table
}
TINY = {
    "large_timed_steps": 2,
    "lstm": {"vocab": 50, "tokens": (3000, 400, 400),
             "overrides": {"hidden_units": 16, "embedding_dim": 16, "batch_size": 4, "bptt": 8,
                           "eval_batch_size": 4}},
    "resnet": {"image": 8, "rows": (40, 10, 10), "overrides": {"batch_size": 2, "eval_batch_size": 10}},
    "populations": {"uci_energy": (12, 40), "fashion_mnist": (6, 30)},
    "compiled": {"uci_energy": (4, 20), "fashion_mnist": (3, 20)},
    "compile_backend": "aot_eager",   # dynamo and AOTAutograd without inductor's code generation: seconds, not minutes
    "population_overrides": {"log_every": 20},
    "fashion_mnist_rows": (400, 100, 100),
    "cpu_reference_hyper_steps": 2,
    "cpu_reference_members": 4,
}


class PartTimeout(Exception):
    """A part ran past its hard limit inside a step."""


class Budget:
    """Seconds from now to a deadline."""

    def __init__(self, seconds: float):
        self.seconds, self.start = max(0.0, seconds), time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def passed(self) -> bool:
        return self.left() <= 0

    def share(self, k: int) -> Budget:
        """An even share of what is left among ``k`` pieces of work still to do."""
        return Budget(self.left() / max(k, 1))


@contextlib.contextmanager
def hard_limit(seconds: float):
    """PartTimeout in the main thread after ``seconds`` (between Python bytecodes, so after a kernel returns)."""
    def alarm(signum, frame):
        raise PartTimeout(f"interrupted after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def finite(value):
    """``value`` with every NaN or infinity replaced by None (strict JSON)."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Report:
    """gpu.json, rewritten atomically after every part, and gpu.log."""

    def __init__(self, out: Path, header: dict):
        out.mkdir(parents=True, exist_ok=True)
        self.path, self.log_path = out / "gpu.json", out / "gpu.log"
        self.log_path.write_text("")
        self.doc = {**header, "parts": {}}
        self.write()

    def write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(finite(self.doc), indent=2, default=str, allow_nan=False) + "\n")
        os.replace(tmp, self.path)

    def part(self, name: str, result: dict) -> None:
        self.doc["parts"][name] = result
        self.write()

    def log(self, message: str) -> None:
        line = f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def append_raw(self, text: str) -> None:
        if not text:
            return
        with open(self.log_path, "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")


# ---- memory and time ---------------------------------------------------------------------------------------
class Peak:
    """Peak memory of a piece of work: torch.cuda.max_memory_allocated on a GPU; on the CPU the process's peak
    resident set (VmHWM, reset through /proc/self/clear_refs where allowed, else ru_maxrss: the process so far)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "torch.cuda.max_memory_allocated" if device.type == "cuda" else None

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.kind = "VmHWM (peak resident set of the process since this work began)"
        except OSError:
            self.kind = "ru_maxrss (peak resident set of the process so far)"

    def current_bytes(self) -> int | None:
        """Memory held now (allocated on a GPU, resident on the CPU)."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return _proc_status_kb("VmRSS") * 1024 if _proc_status_kb("VmRSS") is not None else None

    def peak_bytes(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        if self.kind and self.kind.startswith("VmHWM") and _proc_status_kb("VmHWM") is not None:
            return _proc_status_kb("VmHWM") * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # kB on Linux

    def record(self) -> dict:
        peak = self.peak_bytes()
        out = {"peak_mb": None if peak is None else round(peak / MB, 1), "peak_kind": self.kind}
        if self.device.type == "cuda":
            out["peak_reserved_mb"] = round(torch.cuda.max_memory_reserved(self.device) / MB, 1)
        return out


def _proc_status_kb(key: str) -> int | None:
    with contextlib.suppress(OSError, AttributeError):
        found = re.search(rf"^{key}:\s+(\d+)", Path("/proc/self/status").read_text(), re.M)
        return int(found.group(1)) if found else None
    return None


def release(device: torch.device) -> None:
    """Give the memory of finished work back (so that the next peak starts from the data alone)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- data --------------------------------------------------------------------------------------------------
def study_sweep() -> dict:
    """The study's sweep (initial hyperparameters of every seed, initialisations per dataset)."""
    return catalog.read_yaml(catalog.config_dir() / "config.yaml")["sweep"]


def members(dataset: str, n: int) -> list[Member]:
    """Seeds 0..n-1 of ``dataset`` with the study's initial hyperparameters: the paper's initialisation
    files where the study takes them from files and a mirror holds them, else random draws from the
    samplers' ranges (timings do not depend on which)."""
    spec = study_sweep()
    drawn = [sweep.draw(spec, dataset, s) for s in range(n)]
    if any(isinstance(v, dict) for d in drawn for v in d.values()):
        try:
            with tempfile.TemporaryDirectory() as tmp:
                inits = data.fetch_inits(catalog.dataset(dataset).base, tmp, download=False)
                drawn = [sweep.resolve(d, inits) for d in drawn]
        except (data.DataError, KeyError):
            ranges = {key: {k: v for k, v in s.items() if k != "by_dataset"} for key, s in spec["samplers"].items()}
            drawn = [sweep.draw({**spec, "samplers": ranges}, dataset, s) for s in range(n)]
    return [Member(s, d["lr"], d["weight_decay"], d["momentum"]) for s, d in enumerate(drawn)]


def generated(name: str, splits: tuple[int, int, int], input_shape: tuple, vocab: int | None = None) -> data.Dataset:
    """A dataset as :func:`onepass.data.load` returns it, from generated tensors of the real shapes:
    standardised inputs with a linear target (regression) or labels of its classes, or a token stream."""
    g = torch.Generator().manual_seed(0)
    entry = catalog.dataset(name)
    classes = entry.shape.get("outputs") if entry.task == "classification" else None
    if entry.task == "language_model":
        parts = [(torch.randint(0, vocab, (n,), generator=g), None) for n in splits]
        return data.Dataset(name, entry.family, entry.task, *parts, input_shape=(), num_classes=None,
                            vocab_size=vocab, vocab=[f"w{i}" for i in range(vocab)])
    parts = []
    w = torch.randn(math.prod(input_shape), 1, generator=g)
    for n in splits:
        x = torch.randn(n, *input_shape, generator=g)
        if entry.task == "regression":
            y = x.reshape(n, -1) @ w / math.sqrt(w.numel()) + 0.1 * torch.randn(n, 1, generator=g)
        else:
            y = torch.randint(0, classes, (n,), generator=g)
        parts.append((x, y))
    normalisers = {"y_mean": torch.tensor(0.0), "y_std": torch.tensor(1.0)} if entry.task == "regression" else {}
    return data.Dataset(name, entry.family, entry.task, *parts, input_shape=tuple(input_shape),
                        num_classes=classes, vocab_size=None, normalisers=normalisers)


def real_or_generated(name: str, data_dir: Path, tiny: bool, report: Report) -> tuple[data.Dataset, str]:
    """UCI Energy or Fashion-MNIST: prepared in ``data_dir``, else prepared from the offline mirrors, else
    generated (always generated in tiny mode); with a line saying which."""
    entry = catalog.dataset(name)
    if tiny:
        if name == "fashion_mnist":
            rows = TINY["fashion_mnist_rows"]
        else:
            rows = tuple(entry.data["splits"])
        ds = generated(name, rows, (entry.shape["features"],))
        return ds, f"generated (tiny: {rows[0]}/{rows[1]}/{rows[2]} rows of {entry.shape['features']} inputs)"
    if data.prepared_path(name, data_dir).exists():
        return data.load(name, data_dir), f"real (prepared file {data.prepared_path(name, data_dir)})"
    try:
        mirrors = data.resolve_mirrors()
    except Exception as err:   # an ONEPASS_DATA_MIRRORS entry that does not exist
        report.log(f"{name}: mirrors unusable ({err})")
        mirrors = []
    if mirrors:
        scratch = Path(tempfile.mkdtemp(prefix="gpu-bench-data-"))
        try:
            data.prepare(name, scratch, mirrors=mirrors, download=False)
            return data.load(name, scratch), f"real (prepared from the mirrors {[str(m) for m in mirrors]})"
        except Exception as err:
            report.log(f"{name}: not prepared from the mirrors ({type(err).__name__}: {err}); generated instead")
    if name == "fashion_mnist":
        spec = entry.data["validation"]
        rows = (spec["of"] - spec["last"], spec["last"], entry.shape["examples"] - spec["of"])
    else:
        rows = tuple(entry.data["splits"])
    ds = generated(name, rows, (entry.shape["features"],))
    return ds, f"generated ({rows[0]}/{rows[1]}/{rows[2]} rows of {entry.shape['features']} inputs)"


def on(device: torch.device, ds: data.Dataset) -> data.Dataset:
    """A copy of the dataset's split tuples on ``device`` (the original stays where it is)."""
    return to_device(dataclasses.replace(ds), device)


# ---- the large models: seconds per hyperparameter step -----------------------------------------------------
def large_model_part(name: str, ds: data.Dataset, overrides: dict, device, budget: Budget, steps: int,
                     result: dict, save=lambda: None) -> None:
    """Seconds per hyperparameter step (median of up to ``steps``, after one warm-up step) of each algorithm on
    a population of one; filled into ``result['algorithms']`` as it goes, ``save()`` after each."""
    spec = study_sweep()
    initialisations = spec["initialisations"][name]
    peak = Peak(device)
    algos = result.setdefault("algorithms", {a: {"status": "not reached"} for a in ALGORITHMS})
    for k, algorithm in enumerate(ALGORITHMS):
        mine = budget.share(len(ALGORITHMS) - k)
        settings = load_settings(name, algorithm, overrides)
        paper = load_settings(name, algorithm)
        row = algos[algorithm] = {"status": "running", "hyper_steps_timed": 0,
                                  "weight_steps_per_hyper_step": settings["update_interval"]}
        peak.reset()
        before = peak.current_bytes()
        row["memory_before_mb"] = None if before is None else round(before / MB, 1)
        start = time.perf_counter()
        population = Population(settings, ds, members(name, 1), device)
        population.step()   # warm-up: kernels, cuDNN plans, the allocator
        sync(device)
        row["setup_and_first_step_s"] = round(time.perf_counter() - start, 4)
        times = []
        while len(times) < steps:
            tick = time.perf_counter()
            population.step()
            sync(device)
            times.append(time.perf_counter() - tick)
            row.update(hyper_steps_timed=len(times), seconds_per_hyper_step=round(statistics.median(times), 5),
                       **peak.record())
            if len(times) < steps and mine.passed():
                row["status"] = "stopped"
                break
        else:
            row["status"] = "done"
        per_step = row["seconds_per_hyper_step"]
        run_h = per_step * paper["hyperparameter_steps"] / 3600
        row.update(diverged=not bool(population.alive.all()), paper_hyper_steps=paper["hyperparameter_steps"],
                   projected_paper_run_hours=round(run_h, 4), study_initialisations=initialisations,
                   projected_study_hours=round(run_h * initialisations, 3))
        del population
        release(device)
        save()


def lstm_part(cfg, device, budget, result, save) -> None:
    lstm = cfg["lstm"]
    ds = on(device, generated("penn_treebank", lstm["tokens"], (), vocab=lstm["vocab"]))
    settings = load_settings("penn_treebank", "Random", lstm["overrides"])
    result.update(data=f"generated token streams ({'/'.join(map(str, lstm['tokens']))} tokens, vocabulary "
                       f"{lstm['vocab']})", batch=f"{settings['batch_size']} x {settings['bptt']}",
                  hidden_units=settings["hidden_units"], embedding_dim=settings["embedding_dim"],
                  layers=settings["lstm_layers"], overrides=lstm["overrides"])
    large_model_part("penn_treebank", ds, lstm["overrides"], device, budget, cfg["large_timed_steps"], result, save)


def resnet_part(cfg, device, budget, result, save) -> None:
    from onepass.models import resnet18
    try:
        resnet18(10)
    except RuntimeError as err:
        result.update(status="skipped", reason=str(err))
        return
    res = cfg["resnet"]
    entry = catalog.dataset("cifar10")
    spec = entry.data["validation"]
    rows = res["rows"] or (spec["of"] - spec["last"], spec["last"], entry.shape["examples"] - spec["of"])
    ds = on(device, generated("cifar10", rows, (3, res["image"], res["image"])))
    settings = load_settings("cifar10", "Random", res["overrides"])
    result.update(data=f"generated images ({'/'.join(map(str, rows))} of 3 x {res['image']} x {res['image']})",
                  batch=settings["batch_size"], overrides=res["overrides"])
    large_model_part("cifar10", ds, res["overrides"], device, budget, cfg["large_timed_steps"], result, save)


# ---- populations -------------------------------------------------------------------------------------------
def planned_groups(name: str, settings: dict, n: int, device: torch.device) -> dict:
    """The groups :func:`onepass.train.train` would cut ``n`` members into here and now, and their budget."""
    per_member = memory.member_bytes(name, settings)
    if device.type == "cuda":
        budget, base, source = member_budget(device, None), 0, "0.9 x the GPU's free memory"
        free, total = torch.cuda.mem_get_info(device)
        extra = {"gpu_free_mb": round(free / MB, 1), "gpu_total_mb": round(total / MB, 1)}
    else:
        mem_mb = memory.job_estimate(name, settings, n, "cpu")["mem_mb"]
        budget, base, source = member_budget(device, mem_mb), memory.base_bytes(name), "the job's mem_mb estimate"
        extra = {"job_mem_mb": mem_mb}
    return {"groups": memory.groups(n, per_member, budget, base), "budget_mb": round(budget / MB, 1),
            "budget_from": source, "estimated_base_mb": round(base / MB, 1),
            "estimated_member_mb": round(per_member / MB, 3), **extra}


def train_population(name, algorithm, settings, ds, group, device, budget: Budget | None, row: dict,
                     evaluate: bool = True, compile_mode: str | None = None) -> Population:
    """Train ``group`` as a job's population does (evaluations at log_every when ``evaluate``), stopping between
    hyperparameter steps once ``budget`` has passed; fills ``row`` as it goes. With ``compile_mode``, the training
    steps' loss goes through ``torch.compile`` in that mode."""
    start = time.perf_counter()
    population = Population(settings, ds, group, device)
    if compile_mode is not None:
        population.compile(compile_mode)
    if evaluate:
        population.log()
    total = settings["hyperparameter_steps"]
    row.update(hyper_steps_planned=total, weight_steps_planned=total * settings["update_interval"])
    while population.hyper_step < total and bool(population.alive.any()):
        population.step()
        if evaluate and population.log_due():
            population.log()
        sync(device)
        n, steps = population.size, population.weight_step
        row.update(hyper_steps_done=population.hyper_step, weight_steps_done=steps,
                   wall_s=round(time.perf_counter() - start, 3), train_s=round(population.train_time, 3),
                   per_member_step_ms=round(1e3 * population.train_time / (n * steps), 6))
        if budget is not None and population.hyper_step < total and budget.passed():
            row["status"] = "stopped"
            return population
    row["status"] = "done"
    row["diverged_members"] = int((~population.alive).sum())
    return population


def population_part(name: str, cfg: dict, device, budget: Budget, datasets: dict, result: dict,
                    save=lambda: None) -> None:
    """The population of ``name`` for each algorithm (``save()`` after each), then its CPU reference."""
    n, weight_steps = cfg["populations"][name]
    ds, source = datasets[name]
    device_ds = on(device, ds)
    result.update(members=n, weight_steps=weight_steps, data=source)
    group = members(name, n)
    peak = Peak(device)
    algos = result.setdefault("algorithms", {a: {"status": "not reached"} for a in ALGORITHMS})
    cpu = torch.device("cpu")
    for k, algorithm in enumerate(ALGORITHMS):
        mine = budget.share(len(ALGORITHMS) - k)
        overrides = {"weight_steps": weight_steps, **cfg["population_overrides"]}
        settings = load_settings(name, algorithm, overrides)
        row = algos[algorithm] = {"status": "running"}
        row["plan"] = planned_groups(name, settings, n, device)
        peak.reset()
        before = peak.current_bytes()
        population = train_population(name, algorithm, settings, device_ds, group, device, mine, row)
        row.update(**peak.record())
        peak_bytes = peak.peak_bytes()
        if before is not None and peak_bytes is not None:
            row["measured_base_mb"] = round(before / MB, 1)
            row["measured_member_mb"] = round((peak_bytes - before) / n / MB, 3)
        del population
        release(device)
        save()
        # the same population on the CPU for a few hyperparameter steps, one thread (the study's CPU jobs)
        if not row.get("per_member_step_ms"):
            continue
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            ref_steps = cfg["cpu_reference_hyper_steps"] * settings["update_interval"]
            ref = {}
            train_population(name, algorithm, load_settings(name, algorithm, {"weight_steps": ref_steps}), ds,
                             group[:cfg["cpu_reference_members"]], cpu, None, ref, evaluate=False)
        finally:
            torch.set_num_threads(threads)
        row["cpu_reference"] = {"threads": 1, "members": min(n, cfg["cpu_reference_members"]),
                                "weight_steps": ref["weight_steps_done"],
                                "per_member_step_ms": ref["per_member_step_ms"]}
        row["speedup_over_cpu"] = round(ref["per_member_step_ms"] / row["per_member_step_ms"], 3)
        save()


def compiled_part(cfg, device, budget: Budget, datasets: dict, result: dict, save=lambda: None) -> None:
    """Each population of ``cfg['compiled']`` for :data:`COMPILED_ALGORITHMS`, eager then compiled
    (:data:`COMPILE_MODE`) for the hyperparameter steps the eager run finished in its share of ``budget``."""
    backend = cfg["compile_backend"]
    result.update(backend=backend, mode=COMPILE_MODE if backend == "inductor" else None)
    rows = result.setdefault("runs", {f"{name}/{a}": {"status": "not reached"} for name in cfg["compiled"]
                                      for a in COMPILED_ALGORITHMS})
    todo = list(rows)
    for k, key in enumerate(todo):
        name, algorithm = key.split("/")
        n, weight_steps = cfg["compiled"][name]
        ds = on(device, datasets[name][0])
        group = members(name, n)
        row = rows[key] = {"status": "running", "members": n}
        mine = budget.share(2 * (len(todo) - k))
        eager = {}
        settings = load_settings(name, algorithm, {"weight_steps": weight_steps})
        first = train_population(name, algorithm, settings, ds, group, device, mine, eager, evaluate=False)
        steps = first.hyper_step
        row.update(hyper_steps=steps, weight_steps=first.weight_step,
                   eager_per_member_step_ms=eager["per_member_step_ms"])
        settings = {**settings, "hyperparameter_steps": steps}
        start = time.perf_counter()
        second = Population(settings, ds, group, device)
        second.compile(result["mode"], backend)
        second.step()
        sync(device)
        row["compile_and_first_step_s"] = round(time.perf_counter() - start, 3)
        first_step = second.train_time
        while second.hyper_step < steps and bool(second.alive.any()):
            second.step()
        sync(device)
        if second.weight_step > settings["update_interval"]:
            timed = (second.train_time - first_step) / (n * (second.weight_step - settings["update_interval"]))
            row["compiled_per_member_step_ms"] = round(1e3 * timed, 6)
            row["compiled_over_eager"] = round(row["compiled_per_member_step_ms"] / row["eager_per_member_step_ms"], 3)
        row["max_weight_difference"] = max(float((a - b).detach().abs().max())
                                           for a, b in zip(first.params, second.params))
        row["max_train_loss_difference"] = float((first.last_loss - second.last_loss).abs().max())
        row["status"] = "done" if eager["status"] == "done" else "stopped"
        del first, second
        release(device)
        save()
        if budget.passed():
            break


def group_size_part(report: Report, device, result: dict) -> None:
    """For every population measured: the planned groups against the members its measured peak fits."""
    checks = result.setdefault("checks", {})
    for part in ("uci_energy_population", "fashion_mnist_population"):
        for algorithm, row in report.doc["parts"].get(part, {}).get("algorithms", {}).items():
            plan, measured = row.get("plan"), row.get("measured_member_mb")
            if not plan or not measured or measured <= 0:
                continue
            base = row["measured_base_mb"] if device.type == "cpu" else 0.0
            fits = max(1, math.floor((plan["budget_mb"] - base) / measured))
            largest = max(plan["groups"])
            checks[f"{part.removesuffix('_population')}/{algorithm}"] = {
                "members": sum(plan["groups"]), "planned_groups": plan["groups"], "budget_mb": plan["budget_mb"],
                "estimated_member_mb": plan["estimated_member_mb"], "measured_member_mb": measured,
                "estimate_over_measured": round(plan["estimated_member_mb"] / measured, 3),
                "members_fitting_measured": fits, "largest_planned_group_fits": largest <= fits,
                "largest_group_measured_peak_mb": round(base + largest * measured, 1)}
    if not checks:
        result.update(status="skipped", reason="no population measured a peak")
    elif device.type == "cpu":
        result["note"] = ("CPU peaks are the process's resident set: memory freed by earlier work stays in the "
                          "process (onepass.train.tune_allocator), so the measured per-member figures are lower "
                          "bounds; the check is meant for the GPU")


# ---- pytest -m cuda ------------------------------------------------------------------------------------------
OUTCOMES = ("passed", "failed", "skipped", "error", "xfailed", "xpassed")
PYTEST_POLL_S = 2.0   # pytest's output is read into the log and its counts into the JSON this often


def parse_pytest(output: str) -> dict:
    """Counts of a ``pytest -v -rfEs`` output from its per-test lines (so that a run cut short still counts
    what finished), the failed tests' ids, the selected tests, the summary line and the skips' reasons."""
    counts = dict.fromkeys(OUTCOMES, 0)
    failed = []
    for test, outcome in re.findall(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b", output, re.M):
        key = {"xfail": "xfailed", "xpass": "xpassed"}.get(outcome.lower(), outcome.lower())
        counts[key] += 1
        if key in ("failed", "error"):
            failed.append(test)
    result = {"counts": counts, "finished_tests": sum(counts.values()), "failed_tests": failed[:100]}
    summary = re.findall(r"^=+ (.*\bin [\d.]+s.*) =+$", output, re.M)
    if summary:
        result["summary"] = summary[-1]
    collected = re.search(r"collected (\d+) items?(?: / (\d+) deselected)?", output)
    if collected:
        result["selected"] = int(collected.group(1)) - int(collected.group(2) or 0)
    reasons: dict[str, int] = {}
    for count, reason in re.findall(r"^SKIPPED \[(\d+)\] \S+: (.*)$", output, re.M):
        reasons[reason] = reasons.get(reason, 0) + int(count)
    result["skip_reasons"] = reasons
    return result


def cuda_tests_part(report: Report, budget: Budget, result: dict) -> None:
    """``pytest -m cuda tests/test_cuda.py`` with a timeout (stopped: killed at the part's budget), and what
    :func:`parse_pytest` reads from its output."""
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-v", "-rfEs",
               "-p", "no:cacheprovider"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result["command"] = " ".join(command[1:])
    lines: list[str] = []
    report.append_raw("---- pytest -m cuda ----")
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as proc:
        def read():
            for line in proc.stdout:
                lines.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        logged = 0
        while proc.poll() is None:
            if budget.passed():
                os.killpg(proc.pid, signal.SIGKILL)
                result["status"] = "stopped"
                proc.wait()
                break
            with contextlib.suppress(subprocess.TimeoutExpired):   # woken at the deadline, not a poll later
                proc.wait(timeout=max(0.0, min(PYTEST_POLL_S, budget.left())))
            done = len(lines)
            report.append_raw("".join(lines[logged:done]))
            logged = done
            result.update(parse_pytest("".join(lines)))
            report.write()
        reader.join(timeout=10)
    report.append_raw("".join(lines[logged:]) + "---- end of pytest ----")
    output = "".join(lines)
    result["returncode"] = None if result["status"] == "stopped" else proc.returncode
    parsed = parse_pytest(output)
    result.update(parsed)
    summary = parsed.get("summary")
    result["all_passed"] = (proc.returncode == 0 and parsed["counts"]["passed"] > 0
                            and parsed["counts"]["failed"] + parsed["counts"]["error"] == 0)
    if result.get("returncode") not in (0, None) and not summary:
        result["output_tail"] = output[-3000:]


# ---- the driver ------------------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "cuda_available": torch.cuda.is_available(),
           "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_mb=round(props.total_memory / MB), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), capability=f"{props.major}.{props.minor}")
    try:
        import torchvision
        env["torchvision"] = torchvision.__version__
    except Exception as err:
        env["torchvision"] = f"not importable ({type(err).__name__}: {str(err)[:200]})"
    return env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="directory for gpu.json and gpu.log")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (without it, CUDA is required)")
    p.add_argument("--tiny", action="store_true", help="every part at toy size")
    p.add_argument("--budget-s", type=float, default=420.0, help="seconds for all parts together")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS, help="only these parts")
    p.add_argument("--part-budget", action="append", default=[], metavar="PART=SECONDS",
                   help="this part's seconds instead of its share of --budget-s")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--data-dir", type=Path, default=ROOT / "results" / "data",
                   help="prepared datasets to use where present (default: results/data)")
    args = p.parse_args(argv)
    fixed = {}
    for item in args.part_budget:
        part, _, seconds = item.partition("=")
        if part not in PARTS:
            p.error(f"--part-budget: unknown part {part!r} (known: {', '.join(PARTS)})")
        try:
            fixed[part] = float(seconds)
        except ValueError:
            p.error(f"--part-budget {item}: seconds must be a number")
    if not args.cpu and not torch.cuda.is_available():
        p.error("CUDA is not available here: pass --cpu to run on the CPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu" if args.cpu else "cuda")
    cfg = TINY if args.tiny else FULL
    tune_allocator()
    total = Budget(args.budget_s)
    report = Report(args.out, {
        "schema": 1, "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "finished": None,
        "mode": {"device": device.type, "tiny": args.tiny, "budget_s": args.budget_s},
        "environment": environment(device),
        "compilation": {"engine": "eager PyTorch by default (onepass/population.py)",
                        "torch_compile": f"mode {COMPILE_MODE!r}, against eager, in part compiled_populations"},
        "data": {}})
    report.log(f"device {device}, tiny={args.tiny}, budget {args.budget_s:.0f} s, parts {' '.join(args.parts)}")
    datasets = {}
    for name in ("uci_energy", "fashion_mnist"):
        if f"{name}_population" in args.parts or "compiled_populations" in args.parts:
            tick = time.perf_counter()
            datasets[name] = real_or_generated(name, args.data_dir, args.tiny, report)
            report.doc["data"][name] = datasets[name][1]
            report.log(f"{name}: {datasets[name][1]} ({time.perf_counter() - tick:.1f} s)")
    report.write()
    runners = {
        "penn_treebank_lstm": lambda b, r: lstm_part(cfg, device, b, r, report.write),
        "cifar10_resnet18": lambda b, r: resnet_part(cfg, device, b, r, report.write),
        "uci_energy_population": lambda b, r: population_part("uci_energy", cfg, device, b, datasets, r,
                                                              report.write),
        "fashion_mnist_population": lambda b, r: population_part("fashion_mnist", cfg, device, b, datasets, r,
                                                                 report.write),
        "compiled_populations": lambda b, r: compiled_part(cfg, device, b, datasets, r, report.write),
        "group_size": lambda b, r: group_size_part(report, device, r),
        "cuda_tests": lambda b, r: cuda_tests_part(report, b, r),
    }
    for name in [part for part in PARTS if part in args.parts]:
        if name in fixed:
            seconds = fixed[name]
        elif name == "cuda_tests":
            seconds = max(total.left() - 5.0, 60.0 if not args.tiny else 20.0)
        else:
            seconds = SHARES[name] * args.budget_s
        budget = Budget(seconds)
        result = {"status": "running", "budget_s": round(seconds, 1)}
        report.part(name, result)   # in the JSON while it runs: a run killed now says where
        report.log(f"{name}: started, budget {seconds:.0f} s")
        try:
            with hard_limit(1.5 * seconds + (20 if args.tiny else 60)) if name != "cuda_tests" \
                    else contextlib.nullcontext():
                runners[name](budget, result)
            if result["status"] == "running":
                parts = [*result.get("algorithms", {}).values(), *result.get("runs", {}).values()]
                result["status"] = "stopped" if any(r.get("status") == "stopped" for r in parts) else "done"
        except PartTimeout as err:
            result.update(status="stopped", reason=str(err))
        except Exception as err:   # one part's failure must not cost the others their results
            result.update(status="failed", error=f"{type(err).__name__}: {err}")
            report.append_raw(traceback.format_exc())
        for row in [*result.get("algorithms", {}).values(), *result.get("runs", {}).values()]:
            if row.get("status") == "running":
                row["status"] = "stopped" if result["status"] == "stopped" else "failed"
        result["elapsed_s"] = round(budget.elapsed(), 2)
        # the process's host memory (a job's mem_mb): its peak resident set so far, kB on Linux
        result["host_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        report.part(name, result)
        report.log(f"{name}: {result['status']} in {result['elapsed_s']:.1f} s"
                   + (f" ({result.get('reason') or result.get('error')})" if result.get("reason")
                      or result.get("error") else ""))
    report.doc["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    report.doc["elapsed_s"] = round(total.elapsed(), 1)
    report.write()
    report.log(f"done in {total.elapsed():.0f} s: {args.out / 'gpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
