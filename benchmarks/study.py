"""The UCI Energy study end to end through Snakemake, with population jobs and with one run per job.

    python benchmarks/study.py [--initialisations 200] [--members-per-job 25] [--share 20] [--cores 2]

Copies the workflow into a temporary directory and runs, on the local profile, the paper's UCI Energy study:
Random, Random_SteppedLR, Random_Validation, Lorraine, Baydin, Ours_LR, Ours_LR_Momentum, Ours_HDLR_Momentum
and DiffThroughOpt on ``--initialisations`` initialisations at the paper's 4000-step schedule, with tables,
figures and analysis pages (the data prepared beforehand, outside the timing). Then the same study cut to
``--share`` initialisations with one run per job (``members_per_job: 1``: the old pipeline's unit), whose
time is scaled to the full study for the ratio. Prints both wall times and the ratio.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = ["Random", "Random_SteppedLR", "Random_Validation", "Lorraine", "Baydin", "Ours_LR",
              "Ours_LR_Momentum", "Ours_HDLR_Momentum", "DiffThroughOpt"]
FILES = ["Snakefile", "workflow", "config", "onepass", "profiles", "envs", "pyproject.toml"]


def study(name: str, initialisations: int, members_per_job: int) -> dict:
    return {"study": name, "datasets": ["uci_energy"], "algorithms": {"uci_energy": ALGORITHMS},
            "sweep": {"initialisations": {"uci_energy": initialisations}},
            "members_per_job": {"default": members_per_job}, "gpu": {"uci_energy": 0},
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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--initialisations", type=int, default=200)
    p.add_argument("--members-per-job", type=int, default=25)
    p.add_argument("--share", type=int, default=20, help="initialisations of the one-run-per-job study")
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in FILES:
            (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, workdir / name)
        population = run(study("bench_population", args.initialisations, args.members_per_job), args.cores, workdir)
        print(f"population jobs ({args.members_per_job} members): {len(ALGORITHMS)} algorithms x "
              f"{args.initialisations} initialisations in {population / 60:.1f} min", flush=True)
        single = run(study("bench_single", args.share, 1), args.cores, workdir)
        scaled = single * args.initialisations / args.share
        print(f"one run per job: {len(ALGORITHMS)} x {args.share} in {single / 60:.1f} min, "
              f"{scaled / 60:.1f} min scaled to {args.initialisations}; ratio {scaled / population:.1f}x")


if __name__ == "__main__":
    main()
