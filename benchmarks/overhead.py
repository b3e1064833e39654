"""Cost of each hyperparameter-optimisation algorithm relative to plain training (Random), on the same members.

    python benchmarks/overhead.py [--datasets uci_energy fashion_mnist] [--members 25] [--steps 1000]

For each dataset, every algorithm trains the same population (``--members`` initialisations drawn as the
study draws them: log-uniform lr in [1e-4, 1e-2], weight decay in [1e-6, 1e-3], momentum in [0, 0.9]) for
``--steps`` weight steps, in one process, one after another; then (``--single``) the same algorithms as
populations of one (a single run, the unit of the old one-run-per-job pipeline) for one member. The table
shows the training time (evaluations excluded) per member and weight step, and its ratio to Random's.
Prepared data are looked for in --data-dir and prepared there (from ONEPASS_DATA_MIRRORS) when missing.
"""

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from onepass import catalog, data
from onepass.population import Member
from onepass.train import train, tune_allocator

GRADIENT_BASED = ["Lorraine", "Baydin", "Ours_LR", "Ours_LR_Momentum", "Ours_HDLR_Momentum", "DiffThroughOpt"]


def members(n: int) -> list[Member]:
    rng = random.Random(2022)
    return [Member(s, 10 ** rng.uniform(-4, -2), 10 ** rng.uniform(-6, -3), rng.uniform(0, 0.9)) for s in range(n)]


def measure(dataset: str, algorithm: str, group: list[Member], loaded, steps: int, device: str) -> tuple[float, float]:
    """(training seconds per member and weight step, wall seconds of the whole population)."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        metrics = train(dataset, algorithm, group, None, [Path(out) / f"s{m.seed}" for m in group], Path(out) / "ck", device,
                        overrides={"weight_steps": steps, "log_every": steps}, data=loaded)
        wall = time.perf_counter() - start
    return metrics[0]["train_time_s"] / metrics[0]["weight_steps"], wall


def table(dataset, algorithms, group, loaded, steps, title, device):
    print(f"\n{title}")
    print(f"{'algorithm':22s} {'ms/member-step':>15s} {'ratio':>6s} {'wall s':>7s}")
    base = None
    for algorithm in algorithms:
        per_step, wall = measure(dataset, algorithm, group, loaded, steps, device)
        base = base or per_step
        print(f"{algorithm:22s} {1e3 * per_step:15.4f} {per_step / base:6.2f} {wall:7.1f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["uci_energy", "fashion_mnist"])
    p.add_argument("--algorithms", nargs="+", default=GRADIENT_BASED)
    p.add_argument("--members", type=int, default=25)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--single", action="store_true", help="also as populations of one (one member)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default="results/data")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    algorithms = ["Random"] + args.algorithms
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}, {args.steps} weight steps")
    for dataset in args.datasets:
        if not data.prepared_path(dataset, args.data_dir).exists():
            data.prepare(dataset, args.data_dir)
        loaded = data.load(dataset, args.data_dir)
        label = catalog.dataset_label(dataset)
        measure(dataset, "Random", members(2), loaded, 20, args.device)  # warm-up: allocator, kernels
        table(dataset, algorithms, members(args.members), loaded, args.steps,
              f"{label}: a population of {args.members}", args.device)
        if args.single:
            table(dataset, algorithms, members(1), loaded, args.steps, f"{label}: a population of one", args.device)


if __name__ == "__main__":
    main()
