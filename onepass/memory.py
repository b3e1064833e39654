"""Memory and time of population jobs, estimated from the problem's size, and a population cut into groups
that fit a memory budget.

The estimates are simple models of what a member holds (weights, buffers, optimiser state: a few times the
parameter count; activations: rows per step x layer widths, times the weight steps a hypergradient keeps in
its graph), with constants measured on the CPU (``benchmarks/memory.py`` prints the measured and estimated
peaks side by side). They are deliberately generous; a job killed for memory is resubmitted with more on
every retry, and the config's ``resources`` key overrides them.
"""

from __future__ import annotations

import math

from . import catalog

FLOAT_BYTES = 4
BASE_MB = 450                 # a job's process before its first member and its data: Python, torch, workspace
RUNNER_MB = 250               # the workflow manager's process beside it in the job (a cluster job reruns
                              # Snakemake on the workflow: 200 MB peak measured for the quick study's DAG)
DATA_COPIES = 2               # the dataset in memory: the prepared tensors and the normalised float copy
STATE_COPIES = 12             # weights, buffers, gradients, Neumann vectors, reset copies, per-weight Adam state
# activations per row and unit (per step held in the graph): measured 0.6 / 0.8 / 1.8 on UCI Energy
# (benchmarks/memory.py), about half the values below
ACTIVATION_COPIES = {"none": 6, "baydin": 6, "neumann": 8, "unroll": 3}
EVALUATION_COPIES = 8         # evaluating a chunk of rows: hidden units, outputs, losses
FLOPS_PER_SECOND = {"cpu": 4e9, "cuda": 2e11}    # per thread (CPU) / per GPU, for small batched MLPs
TIME_FACTOR = {"none": 1.0, "baydin": 1.5, "neumann": 2.0, "unroll": 3.0}
SAFETY = 3.0                  # runtime estimates are multiplied by this
MIN_RUNTIME = 10              # minutes
LARGE_MODEL_MB = {"lstm": 16000, "resnet18": 16000}   # host memory of a population of one (GPU jobs)
# minutes per member on one GPU: from the work of a run (ResNet-18: 32,400 steps of 100 images, about 6 PFLOP;
# the LSTM: 23,910 steps of 40 x 70 tokens, about 8 PFLOP) at a few TFLOP/s, with the SAFETY margin; not
# measured here (no GPU), and a job killed for time is resubmitted with twice as much
LARGE_MODEL_RUNTIME = {"lstm": 240, "resnet18": 180}
# Ray Tune's own cost of an ASHA/PBT search, per trial started and per report (seconds, on one CPU thread):
# measured on UCI Energy (README, "Black-box baselines")
RAY_TRIAL_S = 0.25
RAY_REPORT_S = 0.011              # a report: full-split validation + test evaluation and tune.report


def asha_fraction(settings: dict, length: int) -> float:
    """Expected share of a full run that an ASHA trial trains: rungs at grace * rf^k below ``length`` (time
    units), a trial reaching each rung going on with probability 1 / rf."""
    grace, rf = settings["asha_grace_period"], float(settings["asha_reduction_factor"])
    total, reached, go_on, k = 0.0, 0.0, 1.0, 0
    while reached < length:
        rung = min(grace * rf ** k, length)
        total += go_on * (rung - reached)
        reached, go_on, k = rung, go_on / rf, k + 1
    return total / length


def _rows(dataset: str, settings: dict) -> tuple[int, int]:
    """(rows of one training step, rows of one evaluation chunk) of a dataset's runs."""
    entry = catalog.dataset(dataset)
    splits = entry.data.get("splits")
    if settings["batch_size"]:
        train = settings["batch_size"]
    elif splits:
        train = splits[0] + (splits[1] if settings["train_on"] == "train+valid" else 0)
    else:
        train = settings["eval_batch_size"]
    evaluation = min(settings["eval_batch_size"], max(splits) if splits else settings["eval_batch_size"])
    return train, evaluation


def mlp_sizes(dataset: str, settings: dict) -> tuple[int, int]:
    """(parameters, activation units per example) of a dataset's MLP."""
    shape = catalog.dataset(dataset).shape
    features, outputs, hidden = shape.get("features", 1), shape.get("outputs", 1), settings["hidden_units"]
    bn = settings["model"] == "mlp_bn"
    params = features * hidden + hidden + hidden * outputs + outputs + (2 * hidden if bn else 0)
    return params, hidden * (2 if bn else 1) + outputs


def member_bytes(dataset: str, settings: dict) -> int:
    """Estimated peak bytes one member of a vmapped population adds to a job."""
    params, units = mlp_sizes(dataset, settings)
    train_rows, eval_rows = _rows(dataset, settings)
    method = settings["hypergradient"]
    held = settings["unroll_steps"] if method == "unroll" else 1
    step = train_rows * units * ACTIVATION_COPIES[method] * held
    if settings["batch_size"]:  # every member's own batch of inputs
        step += 2 * train_rows * catalog.dataset(dataset).shape.get("features", 1)
    evaluation = EVALUATION_COPIES * eval_rows * units
    return FLOAT_BYTES * (STATE_COPIES * params + max(step, evaluation))


def base_bytes(dataset: str) -> int:
    """Estimated bytes of a job before its first member: the process and the dataset in memory."""
    entry = catalog.dataset(dataset)
    splits = entry.data.get("splits")
    examples = sum(splits) if splits else entry.shape.get("examples", 0)
    return BASE_MB * 2 ** 20 + DATA_COPIES * FLOAT_BYTES * examples * entry.shape.get("features", 1)


def groups(n_members: int, per_member: int, budget_bytes: float | None, base_bytes: float = 0) -> list[int]:
    """Sizes of the groups a population of ``n_members`` is trained in, one after another, so that the base
    plus a group's members stay within ``budget_bytes`` (None: one group). At least one member per group."""
    if n_members < 1:
        return []
    if budget_bytes is None:
        return [n_members]
    fit = max(1, int((budget_bytes - base_bytes) // max(per_member, 1)))
    count = math.ceil(n_members / fit)
    small, extra = divmod(n_members, count)   # as even as possible
    return [small + 1] * extra + [small] * (count - extra)


def member_seconds(dataset: str, settings: dict, search: str = "none", threads: int = 1) -> float:
    """Estimated seconds one member (a search: one repetition) of a job trains on ``threads`` CPU threads,
    without the :data:`SAFETY` margin: what a job's size is chosen from (onepass.packing)."""
    model = settings["model"]
    if model in LARGE_MODEL_MB:
        return LARGE_MODEL_RUNTIME[model] * 60 / SAFETY
    return _cpu_seconds(dataset, settings, 1, search, threads)


def _cpu_seconds(dataset: str, settings: dict, n_members: int, search: str, threads: int,
                 device: str = "cpu") -> float:
    """Expected seconds of ``n_members`` members (or repetitions of a search) of an MLP on ``device``."""
    params, _ = mlp_sizes(dataset, settings)
    train_rows, _ = _rows(dataset, settings)
    weight_steps = settings["hyperparameter_steps"] * settings["update_interval"]
    flops = 6 * train_rows * params * weight_steps * n_members * TIME_FACTOR[settings["hypergradient"]]
    overhead_s = 0.0
    if search != "none":
        evaluations = {"bayesopt": settings["search_initial_points"] + settings["search_guided_points"],
                       "asha": settings["search_trials"], "pbt": settings["search_trials"]}[search]
        if search in ("asha", "pbt"):
            by_weight = settings.get("search_time_unit", "hyper_steps") == "weight_steps"
            length = weight_steps if by_weight else settings["hyperparameter_steps"]
            share = asha_fraction(settings, length) if search == "asha" else 1.0
            evaluations *= share
            reports = settings["search_trials"] * share * length / settings["search_report_every"]
            overhead_s = (settings["search_trials"] * RAY_TRIAL_S + reports * RAY_REPORT_S) / max(threads, 1)
        flops *= evaluations
    rate = FLOPS_PER_SECOND[device] * (threads if device == "cpu" else 1)
    return flops / rate + overhead_s


def job_estimate(dataset: str, settings: dict, n_members: int, device: str, search: str = "none",
                 threads: int = 1) -> dict:
    """Estimated ``mem_mb`` and ``runtime`` (minutes) of one job training ``n_members`` seeds (for a search:
    ``n_members`` repetitions, each a sequence of inner runs, one at a time)."""
    model = settings["model"]
    if model in LARGE_MODEL_MB:
        return {"mem_mb": LARGE_MODEL_MB[model], "runtime": LARGE_MODEL_RUNTIME[model] * max(n_members, 1)}
    per_member = member_bytes(dataset, settings)
    members = 1 if search != "none" else n_members
    mem_mb = RUNNER_MB + (base_bytes(dataset) + members * per_member) / 2 ** 20
    if search in ("asha", "pbt"):  # Ray's own processes and a worker per thread
        mem_mb += 1500 + 500 * threads
    seconds = _cpu_seconds(dataset, settings, n_members, search, threads, device)
    runtime = max(MIN_RUNTIME, math.ceil(SAFETY * seconds / 60))
    return {"mem_mb": int(math.ceil(mem_mb)), "runtime": runtime}
