"""The UCI Energy study end to end through Snakemake, against its compute floor (and, optionally, one run per job).

    python benchmarks/study.py [--initialisations 200] [--members-per-job auto] [--cores 2] [--share 20]

Copies the workflow into a temporary directory and runs, on the local profile, the paper's UCI Energy study:
Random, Random_SteppedLR, Random_Validation, Lorraine, Baydin, Ours_LR, Ours_LR_Momentum, Ours_HDLR_Momentum
and DiffThroughOpt on ``--initialisations`` initialisations at the paper's 4000-step schedule, with tables,
figures and analysis pages (the data prepared beforehand, outside the timing). Before it, in this process,
the overhead benchmark (``benchmarks/overhead.py``) measures every algorithm's training time per member and
weight step on one thread; the *floor* is the sum over algorithms of members x weight steps x that cost,
divided by ``--cores``: the study's training alone, with nothing else running. Prints the study's wall time,
the floor and their ratio. With ``--share N``, also the same study cut to N initialisations with one run per
job (``members_per_job: 1``: the old pipeline's unit), its time scaled to the full study for the ratio.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from onepass import data, study as studies  # noqa: E402
from onepass.train import tune_allocator  # noqa: E402

from overhead import measure, members  # noqa: E402  (benchmarks/overhead.py)

ALGORITHMS = ["Random", "Random_SteppedLR", "Random_Validation", "Lorraine", "Baydin", "Ours_LR",
              "Ours_LR_Momentum", "Ours_HDLR_Momentum", "DiffThroughOpt"]
FILES = ["Snakefile", "workflow", "config", "onepass", "profiles", "envs", "pyproject.toml"]
DATASET = "uci_energy"


def study(name: str, initialisations: int, members_per_job) -> dict:
    return {"study": name, "datasets": [DATASET], "algorithms": {DATASET: ALGORITHMS},
            "sweep": {"initialisations": {DATASET: initialisations}},
            "members_per_job": {"default": members_per_job}, "gpu": {DATASET: 0},
            "resources": {"default": {"threads": 1}}, "appendix": None}


def snakemake(workdir: Path, cores: int, *args) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args, "--profile", "profiles/local", "--cores",
                           str(cores), "--configfile", "bench.yaml"], cwd=workdir, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(proc.stdout[-4000:])
    return time.perf_counter() - start


def run(config: dict, cores: int, workdir: Path) -> float:
    (workdir / "bench.yaml").write_text(yaml.safe_dump(config))
    snakemake(workdir, cores, "results/data/uci_energy/prepared.pt")   # data first, outside the timing
    return snakemake(workdir, cores)


def floor_seconds(initialisations: int, cores: int, data_dir: Path, n: int, steps: int) -> float:
    """The study's training time at the overhead benchmark's rate (one process, one thread, a population of
    ``n`` for ``steps`` weight steps), shared by ``cores``; prints each algorithm's rate."""
    torch.set_num_threads(1)
    tune_allocator()
    if not data.prepared_path(DATASET, data_dir).exists():
        data.prepare(DATASET, data_dir)
    loaded = data.load(DATASET, data_dir)
    config = studies.apply_defaults(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    config = {**config, **study("floor", initialisations, "auto"),
              "sweep": {**config["sweep"], "initialisations": {DATASET: initialisations}}}
    measure(DATASET, "Random", members(2), loaded, 20, "cpu")  # warm-up: allocator, kernels
    total = 0.0
    for algorithm in ALGORITHMS:
        per_step, _ = measure(DATASET, algorithm, members(n), loaded, steps, "cpu")
        settings = studies.settings(config, DATASET, algorithm)
        weight_steps = settings["hyperparameter_steps"] * settings["update_interval"]
        seconds = per_step * weight_steps * len(studies.seeds(config, DATASET, algorithm))
        print(f"  {algorithm:20s} {1e3 * per_step:.4f} ms per member-step, {seconds:7.1f} s for "
              f"{initialisations} x {weight_steps} steps", flush=True)
        total += seconds
    return total / cores


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--initialisations", type=int, default=200)
    p.add_argument("--members-per-job", default="auto", help="a number, or auto (onepass.study)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--floor-members", type=int, default=25, help="population of the floor's measurement")
    p.add_argument("--floor-steps", type=int, default=1000, help="weight steps of the floor's measurement")
    p.add_argument("--share", type=int, default=0,
                   help="also the study with one run per job on this many initialisations (0: not)")
    args = p.parse_args()
    members_per_job = args.members_per_job if args.members_per_job == "auto" else int(args.members_per_job)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in FILES:
            (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, workdir / name)
        print(f"floor: the overhead benchmark, a population of {args.floor_members}, {args.floor_steps} weight "
              f"steps, one thread", flush=True)
        floor = floor_seconds(args.initialisations, args.cores, workdir / "results" / "data", args.floor_members,
                              args.floor_steps)
        population = run(study("bench_population", args.initialisations, members_per_job), args.cores, workdir)
        print(f"study: {len(ALGORITHMS)} algorithms x {args.initialisations} initialisations, members_per_job "
              f"{args.members_per_job}, {args.cores} cores: {population / 60:.1f} min wall", flush=True)
        print(f"floor: {floor / 60:.1f} min (sum of members x weight steps x cost per member-step, / {args.cores} "
              f"cores)")
        print(f"ratio study / floor: {population / floor:.2f}", flush=True)
        if args.share:
            single = run(study("bench_single", args.share, 1), args.cores, workdir)
            scaled = single * args.initialisations / args.share
            print(f"one run per job: {len(ALGORITHMS)} x {args.share} in {single / 60:.1f} min, "
                  f"{scaled / 60:.1f} min scaled to {args.initialisations}; ratio {scaled / population:.1f}x")


if __name__ == "__main__":
    main()
