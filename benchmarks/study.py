"""The UCI Energy study end to end through Snakemake, against its compute floor (and, optionally, one run per job).

    python benchmarks/study.py [--initialisations 200] [--members-per-job auto] [--cores 2] [--share 20]

Copies the workflow into a temporary directory and runs, on the local profile, the paper's UCI Energy study:
Random, Random_SteppedLR, Random_Validation, Lorraine, Baydin, Ours_LR, Ours_LR_Momentum, Ours_HDLR_Momentum
and DiffThroughOpt on ``--initialisations`` initialisations at the paper's 4000-step schedule, with tables,
figures and analysis pages (the data prepared beforehand, outside the timing). Before it, in this process,
the overhead benchmark (``benchmarks/overhead.py``) measures every algorithm's training time per member and
weight step on one thread, alone and as ``--cores`` copies at once; the *floor* is the sum over algorithms
of members x weight steps x that cost, divided by ``--cores``: the study's training alone, with nothing else
running. Prints the study's wall time, the floor and their ratio (also against the floor measured with every
core busy). With ``--share N``, also the same study cut to N initialisations with one run per
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


def rates(n: int, steps: int, data_dir: str) -> dict:
    """Every algorithm's training time per member and weight step (the overhead benchmark: one process, one
    thread, a population of ``n`` for ``steps`` weight steps)."""
    torch.set_num_threads(1)
    tune_allocator()
    loaded = data.load(DATASET, data_dir)
    measure(DATASET, "Random", members(2), loaded, 20, "cpu")  # warm-up: allocator, kernels
    return {algorithm: measure(DATASET, algorithm, members(n), loaded, steps, "cpu")[0] for algorithm in ALGORITHMS}


def floor_seconds(per_step: dict, initialisations: int, cores: int) -> float:
    """The study's training time at ``per_step`` (seconds per member-step of every algorithm), shared by
    ``cores``: the sum over algorithms of members x weight steps x cost, divided by the cores."""
    config = studies.apply_defaults(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    config = {**config, **study("floor", initialisations, "auto"),
              "sweep": {**config["sweep"], "initialisations": {DATASET: initialisations}}}
    total = 0.0
    for algorithm in ALGORITHMS:
        settings = studies.settings(config, DATASET, algorithm)
        weight_steps = settings["hyperparameter_steps"] * settings["update_interval"]
        total += per_step[algorithm] * weight_steps * len(studies.seeds(config, DATASET, algorithm))
    return total / cores


def measure_floor(initialisations: int, cores: int, data_dir: Path, n: int, steps: int) -> tuple[float, float]:
    """(the floor from the overhead benchmark alone, the floor from ``cores`` copies of it run at once);
    prints every algorithm's cost both ways. The second shows what running a job on every core costs
    (shared caches, memory bandwidth, or virtual cores on one physical core)."""
    import json

    if not data.prepared_path(DATASET, data_dir).exists():
        data.prepare(DATASET, data_dir)
    alone = rates(n, steps, str(data_dir))
    command = [sys.executable, __file__, "--rates", str(n), str(steps), str(data_dir)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(cores)]
    copies = [json.loads(proc.communicate()[0]) for proc in procs]
    if any(proc.returncode for proc in procs):
        raise SystemExit("a copy of the overhead benchmark failed")
    together = {a: sum(c[a] for c in copies) / cores for a in ALGORITHMS}
    print(f"{'algorithm':20s} {'ms/member-step alone':>21s} {f'{cores} at once':>10s}")
    for a in ALGORITHMS:
        print(f"{a:20s} {1e3 * alone[a]:21.4f} {1e3 * together[a]:10.4f}", flush=True)
    return floor_seconds(alone, initialisations, cores), floor_seconds(together, initialisations, cores)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--initialisations", type=int, default=200)
    p.add_argument("--members-per-job", default="auto", help="a number, or auto (onepass.study)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--floor-members", type=int, default=25, help="population of the floor's measurement")
    p.add_argument("--floor-steps", type=int, default=1000, help="weight steps of the floor's measurement")
    p.add_argument("--share", type=int, default=0,
                   help="also the study with one run per job on this many initialisations (0: not)")
    p.add_argument("--rates", nargs=3, metavar=("MEMBERS", "STEPS", "DATA_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rates:  # one copy of the floor's measurement, as JSON on stdout
        import json
        print(json.dumps(rates(int(args.rates[0]), int(args.rates[1]), args.rates[2])))
        return
    members_per_job = args.members_per_job if args.members_per_job == "auto" else int(args.members_per_job)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in FILES:
            (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, workdir / name)
        print(f"floor: the overhead benchmark, a population of {args.floor_members}, {args.floor_steps} weight "
              f"steps, one thread", flush=True)
        floor, floor_together = measure_floor(args.initialisations, args.cores, workdir / "results" / "data",
                                              args.floor_members, args.floor_steps)
        population = run(study("bench_population", args.initialisations, members_per_job), args.cores, workdir)
        print(f"study: {len(ALGORITHMS)} algorithms x {args.initialisations} initialisations, members_per_job "
              f"{args.members_per_job}, {args.cores} cores: {population / 60:.1f} min wall", flush=True)
        print(f"floor: {floor / 60:.1f} min (sum of members x weight steps x cost per member-step, / {args.cores} "
              f"cores); {floor_together / 60:.1f} min at the cost measured with {args.cores} copies at once")
        print(f"ratio study / floor: {population / floor:.2f} ({population / floor_together:.2f} against the "
              f"floor of {args.cores} copies at once)", flush=True)
        if args.share:
            single = run(study("bench_single", args.share, 1), args.cores, workdir)
            scaled = single * args.initialisations / args.share
            print(f"one run per job: {len(ALGORITHMS)} x {args.share} in {single / 60:.1f} min, "
                  f"{scaled / 60:.1f} min scaled to {args.initialisations}; ratio {scaled / population:.1f}x")


if __name__ == "__main__":
    main()
