"""Training jobs' scheduling priority (onepass.jobs.priority): the longest jobs start first."""

from pathlib import Path

import pytest
import yaml

from onepass import jobs, study

ROOT = Path(__file__).resolve().parents[1]


def test_the_longest_jobs_start_first():
    """On UCI Energy, Diff-through-Opt's step costs about 2.3x Ours (WD+LR+M)'s and Ours about 1.2-1.3x
    Random's (benchmarks/overhead.py, README): a job's priority follows that order and its members, so that a
    run on two cores starts Diff-through-Opt's 200 seeds first instead of last."""
    config = study.apply_defaults(study.normalise(yaml.safe_load((ROOT / "config" / "config.yaml").read_text())))
    p = {a: jobs.priority(config, "uci_energy", a, 200) for a in ("Random", "Ours_LR_Momentum", "DiffThroughOpt")}
    assert p["DiffThroughOpt"] > p["Ours_LR_Momentum"] > p["Random"] > 0
    assert jobs.priority(config, "uci_energy", "Random", 100) == pytest.approx(p["Random"] / 2, abs=1)
    assert all(isinstance(v, int) for v in p.values())    # Snakemake's priority is an integer
