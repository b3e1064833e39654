"""Cost of each hyperparameter-optimisation algorithm relative to plain training (Random), on the same members.

    python benchmarks/overhead.py [--datasets uci_energy fashion_mnist] [--members 25] [--steps 1000] [--repeats 1]

For each dataset, every algorithm trains the same population (``--members`` initialisations drawn as the
study draws them: log-uniform lr in [1e-4, 1e-2], weight decay in [1e-6, 1e-3], momentum in [0, 0.9]) for
``--steps`` weight steps, in one process, one after another; then (``--single``) the same algorithms as
populations of one (a single run, the unit of the old one-run-per-job pipeline) for one member. The table
shows the training time (evaluations excluded) per member and weight step, and its ratio to Random's; ``cpu
ms`` is the same in the process's CPU time, which other processes on a shared machine lengthen less than
the wall-clock time. With ``--repeats R`` the algorithms take turns R times and each row shows its best run.

The roofline, measured in the same run: the time of the step's own matmuls at the population's shapes (for
every Linear layer of the network, the forward ``bmm`` and the weight- and input-gradient ``bmm`` of
backpropagation, on Random's batch: the full training + validation split when the dataset trains full
batch) is the step's *bound* (CPU time, the best of 7 loops), printed per member-step above the table; ``x
bound`` is each algorithm's time over it. The rates of those matmuls and of a 1024 x 1024 matmul (the
machine's) are printed in GFLOP/s.
Prepared data are looked for in --data-dir and prepared there (from ONEPASS_DATA_MIRRORS) when missing.
"""

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from onepass import catalog, data
from onepass.population import Member, Population
from onepass.problems import Problem
from onepass.settings import load_settings
from onepass.train import train, tune_allocator

GRADIENT_BASED = ["Lorraine", "Baydin", "Ours_LR", "Ours_LR_Momentum", "Ours_HDLR_Momentum", "DiffThroughOpt"]


def members(n: int) -> list[Member]:
    rng = random.Random(2022)
    return [Member(s, 10 ** rng.uniform(-4, -2), 10 ** rng.uniform(-6, -3), rng.uniform(0, 0.9)) for s in range(n)]


def best_time(fn, calls: int = 20, repeats: int = 7) -> float:
    """Seconds per call of ``fn``: the best of ``repeats`` loops of ``calls`` calls, in the process's CPU time
    (on a quiet machine its wall-clock time; on a shared one, less lengthened by the others)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - start) / calls)
    return best


def matmul_rate(size: int = 1024) -> float:
    """GFLOP/s of a float32 ``size`` x ``size`` matmul."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size ** 3 / best_time(lambda: a @ b, calls=5) / 1e9


def step_matmuls(dataset: str, loaded, n: int) -> list[tuple]:
    """The ``bmm`` shapes ((n, rows, k), (n, k, cols)) of one weight step of an MLP population of ``n`` on
    Random's batch: per Linear layer (in -> out) the forward product, the weight gradient and (beyond the
    first layer) the input gradient. Empty for networks that are not MLPs."""
    settings = load_settings(dataset, "Random")
    problem = Problem(settings, loaded, torch.device("cpu"))
    layers = [m for m in problem.template.modules() if isinstance(m, nn.Linear)]
    if settings["model"] not in ("mlp", "mlp_bn") or not layers:
        return []
    rows = settings["batch_size"] or sum(len(getattr(loaded, s)[0]) for s in settings["train_on"].split("+"))
    shapes = []
    for k, layer in enumerate(layers):
        i, o = layer.in_features, layer.out_features
        shapes += [((n, rows, i), (n, i, o)), ((n, i, rows), (n, rows, o))]
        if k:
            shapes.append(((n, rows, o), (n, o, i)))
    return shapes


def roofline(dataset: str, loaded, n: int) -> tuple[float, float] | None:
    """(seconds per member-step of the step's matmuls, their GFLOP/s), or None for a network that is not
    an MLP."""
    shapes = step_matmuls(dataset, loaded, n)
    if not shapes:
        return None
    seconds = flops = 0.0
    for a_shape, b_shape in shapes:
        a, b = torch.randn(a_shape), torch.randn(b_shape)
        seconds += best_time(lambda: torch.bmm(a, b))
        flops += 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]
    return seconds / n, flops / seconds / 1e9


class StepCPUTime:
    """The process's CPU time inside :meth:`Population.step` (the steps ``train_time_s`` times by the clock)."""

    def __init__(self):
        self.seconds, self.step = 0.0, Population.step

    def __enter__(self):
        def timed(population):
            start = time.process_time()
            try:
                return self.step(population)
            finally:
                self.seconds += time.process_time() - start
        Population.step = timed
        return self

    def __exit__(self, *exc):
        Population.step = self.step


def measure(dataset: str, algorithm: str, group: list[Member], loaded, steps: int, device: str) -> tuple:
    """(training seconds per member and weight step, the same in CPU time, wall seconds of the whole
    population)."""
    with tempfile.TemporaryDirectory() as out, StepCPUTime() as cpu:
        start = time.perf_counter()
        metrics = train(dataset, algorithm, group, None, [Path(out) / f"s{m.seed}" for m in group], Path(out) / "ck",
                        device, overrides={"weight_steps": steps, "log_every": steps}, data=loaded,
                        progress_every=0)
        wall = time.perf_counter() - start
    per_step = metrics[0]["weight_steps"] * len(group)
    return metrics[0]["train_time_s"] / metrics[0]["weight_steps"], cpu.seconds / per_step, wall


def table(dataset, algorithms, group, loaded, steps, title, device, bound=None, repeats=1):
    """Each algorithm's time per member-step (the best of ``repeats`` runs, the algorithms taking turns), its
    ratio to the first's (Random's) and to ``bound``."""
    runs = {a: [] for a in algorithms}
    for _ in range(repeats):
        for algorithm in algorithms:
            runs[algorithm].append(measure(dataset, algorithm, group, loaded, steps, device))
    print(f"\n{title}")
    print(f"{'algorithm':22s} {'ms/member-step':>15s} {'ratio':>6s} {'x bound':>8s} {'cpu ms':>7s} {'ratio':>6s} "
          f"{'x bound':>8s} {'wall s':>7s}")
    best = {a: [min(r[k] for r in runs[a]) for k in range(3)] for a in algorithms}
    base = best[algorithms[0]]
    for algorithm in algorithms:
        per_step, cpu, wall = best[algorithm]
        columns = []
        for value, first in ((per_step, base[0]), (cpu, base[1])):
            columns.append(f"{1e3 * value:{15 if not columns else 7}.4f} {value / first:6.2f} "
                           + (f"{value / bound:8.2f}" if bound else f"{'-':>8s}"))
        print(f"{algorithm:22s} {' '.join(columns)} {wall:7.1f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["uci_energy", "fashion_mnist"])
    p.add_argument("--algorithms", nargs="+", default=GRADIENT_BASED)
    p.add_argument("--members", type=int, default=25)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--single", action="store_true", help="also as populations of one (one member)")
    p.add_argument("--repeats", type=int, default=1, help="runs of every algorithm, taking turns; the best counts")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default="results/data")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    algorithms = ["Random"] + args.algorithms
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}, {args.steps} weight steps")
    if args.device == "cpu":
        print(f"a 1024 x 1024 float32 matmul: {matmul_rate():.1f} GFLOP/s")
    for dataset in args.datasets:
        if not data.prepared_path(dataset, args.data_dir).exists():
            data.prepare(dataset, args.data_dir)
        loaded = data.load(dataset, args.data_dir)
        label = catalog.dataset_label(dataset)
        measure(dataset, "Random", members(2), loaded, 20, args.device)  # warm-up: allocator, kernels
        for n in [args.members] + ([1] if args.single else []):
            bound = roofline(dataset, loaded, n) if args.device == "cpu" else None
            title = f"{label}: a population of {n}" if n > 1 else f"{label}: a population of one"
            if bound:
                title += (f"\nbound: the step's matmuls at these shapes, {1e3 * bound[0]:.4f} ms per member-step "
                          f"({bound[1]:.1f} GFLOP/s)")
            table(dataset, algorithms, members(n), loaded, args.steps, title, args.device, bound and bound[0],
                  args.repeats)


if __name__ == "__main__":
    main()
