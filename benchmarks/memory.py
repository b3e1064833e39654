"""What a member adds to a job's peak memory, measured, against onepass.memory's estimate.

    python benchmarks/memory.py [--datasets uci_energy fashion_mnist] [--small 1] [--large 9]

For each algorithm, a fresh process trains ``--small`` members and another ``--large`` members for one
hyperparameter step (enough to reach the peak: the hypergradient of the first step holds as much as any
later one) and reports its peak resident memory (VmHWM, reset after the fork that started it). The
difference per member is what a member costs; the table puts it beside ``onepass.memory.member_bytes`` and
shows the base a job needs before its first member (the small run's peak less its members) beside
``onepass.memory.base_bytes``.
"""

import argparse
import subprocess
import sys
import tempfile

from onepass import catalog, memory
from onepass.settings import load_settings

SCRIPT = """
import re, sys, torch
from pathlib import Path
from onepass.population import Member
from onepass.train import train
open('/proc/self/clear_refs', 'w').write('5')
torch.set_num_threads(1)
dataset, algorithm, n, data_dir, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
members = [Member(s, 1e-3, 1e-4, 0.5) for s in range(n)]
train(dataset, algorithm, members, data_dir, [out / f"s{s}" for s in range(n)], out / "ck",
      overrides={"hyperparameter_steps": 1, "log_every": 10 ** 9})
print(int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024)
"""


def peak(dataset: str, algorithm: str, n: int, data_dir: str) -> int:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([sys.executable, "-c", SCRIPT, dataset, algorithm, str(n), data_dir, out],
                              capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return int(proc.stdout.split()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["uci_energy", "fashion_mnist"])
    p.add_argument("--small", type=int, default=1)
    p.add_argument("--large", type=int, default=9)
    p.add_argument("--data-dir", default="results/data")
    args = p.parse_args()
    mb = 2 ** 20
    for dataset in args.datasets:
        print(f"\n{catalog.dataset_label(dataset)}")
        print(f"{'algorithm':32s} {'measured MB/member':>19s} {'estimated':>10s} {'base MB':>8s} {'estimated':>10s}")
        for algorithm, entry in catalog.algorithms().items():
            if entry.is_search or entry.is_derived:
                continue
            settings = load_settings(dataset, algorithm)
            small, large = (peak(dataset, algorithm, n, args.data_dir) for n in (args.small, args.large))
            per_member = (large - small) / (args.large - args.small)
            base = small - args.small * per_member
            print(f"{algorithm:32s} {per_member / mb:19.1f} {memory.member_bytes(dataset, settings) / mb:10.1f} "
                  f"{base / mb:8.0f} {memory.base_bytes(dataset) / mb:10.0f}", flush=True)


if __name__ == "__main__":
    main()
