"""The Snakemake workflow: lint, the full study's DAG, a tiny end-to-end study, rebuilding one
run, config validation, the profiles and the conda environment.

Snakemake runs in a temporary copy of the workflow, so the repository's results/ stays clean.
"""

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# the one-pass study (19,600 runs) + 32 repetitions of BayesOpt on 4 datasets and of ASHA, ASHA (Ours),
# PBT and PBT (Ours) on UCI Energy
FULL_TRAINING_JOBS = 8 * 11 * 200 + 11 * 100 + 9 * 50 + 9 * 50 + 32 * (4 + 4)  # = 19,856
TINY = {
    "datasets": ["uci_energy"],
    "algorithms": {"uci_energy": ["Random", "Random_Validation", "Ours_LR"]},
    "sweep": {"initialisations": {"uci_energy": 3}},
    "overrides": {"all": {"all": {"hyperparameter_steps": 5, "log_every": 1}}},
}


def uci_mirror():
    """A directory holding uci_energy/data.txt: ONEPASS_DATA_MIRRORS or ../shared/datasets."""
    candidates = os.environ.get("ONEPASS_DATA_MIRRORS", "").split(":")
    candidates.append(str(ROOT.parent / "shared" / "datasets"))
    for d in candidates:
        if d and (Path(d) / "uci_energy" / "data.txt").exists():
            return str(Path(d).resolve())
    return None


def snakemake(workdir, *args, check=True):
    """Run Snakemake in ``workdir``; return the completed process (stdout + stderr)."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-6000:]}")
    return proc


def job_counts(output):
    """The 'Job stats' table of a Snakemake run or dry run as {rule: count}."""
    block = output.split("Job stats:", 1)[1]
    counts = {}
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory, copy_workflow):
    """The workflow's files copied into a fresh directory."""
    return copy_workflow(tmp_path_factory.mktemp("workflow"))


@pytest.fixture(scope="module")
def tiny_study(workflow_copy):
    """The tiny study run once to completion: uci_energy, 3 algorithms x 3 seeds, 5 hypersteps."""
    mirror = uci_mirror()
    if mirror is None:
        pytest.skip("no offline copy of uci_energy (set ONEPASS_DATA_MIRRORS)")
    config = {**TINY, "data_mirrors": [mirror]}
    (workflow_copy / "tiny.yaml").write_text(yaml.safe_dump(config))
    start = time.time()
    proc = snakemake(workflow_copy, "--profile", "profiles/local", "--configfile", "tiny.yaml",
                     "--cores", "2")
    return workflow_copy, proc.stdout, time.time() - start


# ---- static checks ----------------------------------------------------------------------


@pytest.mark.pipeline
def test_lint_is_clean(workflow_copy):
    proc = snakemake(workflow_copy, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout


@pytest.mark.pipeline
def test_full_study_dry_run_plans_every_training_run(workflow_copy):
    proc = snakemake(workflow_copy, "-n", "--quiet", "rules", "all")
    counts = job_counts(proc.stdout)
    assert counts["train"] + counts["train_gpu"] == FULL_TRAINING_JOBS
    assert counts["train_gpu"] == 2 * 9 * 50  # Penn Treebank and CIFAR-10 (config key gpu)
    assert counts["prepare_data"] == counts["sweep"] == counts["collect"] == 11
    assert counts["figure"] == 11 * 6 and counts["analysis_page"] == 11


@pytest.mark.pipeline
def test_quick_study_and_slurm_profile_plan(workflow_copy):
    proc = snakemake(workflow_copy, "-n", "--profile", "profiles/slurm", "--configfile",
                     "config/quick.yaml")
    counts = job_counts(proc.stdout)
    quick = yaml.safe_load((ROOT / "config" / "quick.yaml").read_text())
    repetitions = quick["repetitions"]
    expected = sum(min(repetitions.get(a, n), n)
                   for d in quick["datasets"]
                   for n in [quick["sweep"]["initialisations"][d]]
                   for a in quick["algorithms"][d])
    assert counts["train"] == expected
    assert "Group job train_uci" in proc.stdout  # tiny UCI runs bundled per submission
    assert "--device cpu" in proc.stdout
    # the searches: 2 repetitions each, run by onepass.search, each a job of its own
    for search in ("BayesOpt", "ASHA", "PBT"):
        assert repetitions[search] == 2
        for seed in range(2):
            assert (f"python -m onepass.search --dataset uci_energy --algorithm {search} --seed {seed} "
                    in proc.stdout)
        assert f"--algorithm {search} --seed 2 " not in proc.stdout
        # not inside the group job train_uci, whose members are printed indented
        assert re.search(rf"^    wildcards: dataset=uci_energy, algorithm={search},", proc.stdout, re.M)
        assert not re.search(rf"^ {{5,}}wildcards: dataset=uci_energy, algorithm={search},", proc.stdout,
                             re.M)
    assert "python -m onepass.train --dataset uci_energy --algorithm Random --seed 11 " in proc.stdout
    assert "--repetitions BayesOpt=2 ASHA=2 PBT=2 --out results/tables/uci_energy/runs.tsv" in proc.stdout


@pytest.mark.pipeline
@pytest.mark.parametrize("override,needle", [
    ("bogus_key=1", "'bogus_key' was unexpected"),
    ("datasets=[uci_nope]", "'uci_nope' is not one of"),
    ("algorithms={uci_energy: [Nope]}", "'Nope' is not one of"),
    ("sweep={seed: abc}", "instance['sweep']['seed']"),
    ("overrides={all: {all: {bogus_setting: 1}}}", "overrides.all.all.bogus_setting"),
    ("gpu={uci_energy: many}", "instance['gpu']['uci_energy']"),
])
def test_invalid_config_is_rejected_naming_the_key(workflow_copy, tmp_path, override, needle):
    proc = snakemake(workflow_copy, "-n", "-s", str(workflow_copy / "Snakefile"),
                     "--directory", str(tmp_path), "--configfile",
                     str(workflow_copy / "config" / "config.yaml"), "--config", override,
                     check=False)
    assert proc.returncode != 0
    assert needle in proc.stdout, proc.stdout[-3000:]
    assert not (tmp_path / "results").exists()


def test_conda_env_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["cifar"]
    env = yaml.safe_load((ROOT / "envs" / "onepass.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    norm = lambda reqs: sorted(r.replace(" ", "").lower() for r in reqs)  # noqa: E731
    assert norm(pip) == norm(deps)


def test_figure_list_matches_figures_module():
    text = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    listed = re.search(r"FIGURES = \[(.*?)\]", text, re.S).group(1)
    from onepass import figures
    assert re.findall(r'"(\w+)"', listed) == list(figures.KINDS)


# ---- the tiny end-to-end study ----------------------------------------------------------


@pytest.mark.pipeline
def test_tiny_study_produces_runs_tables_figures_pages(tiny_study):
    wd, output, seconds = tiny_study
    assert job_counts(output)["train"] == 9
    res = wd / "results"
    runs_tsv = (res / "tables" / "uci_energy" / "runs.tsv").read_text()
    assert runs_tsv.startswith("# status: ") and "missing of 9 runs" in runs_tsv.splitlines()[0]
    runs = pd.read_csv(res / "tables" / "uci_energy" / "runs.tsv", sep="\t", comment="#")
    assert len(runs) == 9 and set(runs["status"]) <= {"done", "diverged"}
    summary = pd.read_csv(res / "tables" / "uci_energy" / "summary.tsv", sep="\t")
    assert {"Random", "Random_3Batched", "Ours_LR"} <= set(summary["algorithm"])
    paper = (res / "tables" / "paper_tables.md").read_text()
    assert "### UCI Energy" in paper and "Ours (WD+LR)" in paper
    for fig in ("edf", "test_vs_step", "test_vs_time", "trajectories",
                "error_vs_hyperparameter", "best_worst"):
        for ext in ("png", "svg"):
            assert (res / "figures" / "uci_energy" / f"{fig}.{ext}").stat().st_size > 1000
    page = (res / "analysis" / "uci_energy.html").read_text()
    assert page.count("data:image/png;base64,") == 6
    assert list((res / "benchmarks" / "train" / "uci_energy").glob("*/seed*.tsv"))
    assert (res / "logs" / "train" / "uci_energy" / "Ours_LR" / "seed0.log").exists()


@pytest.mark.pipeline
def test_seed_is_the_same_initialisation_for_every_algorithm(tiny_study):
    wd, _, _ = tiny_study
    init = pd.read_csv(wd / "results" / "sweep" / "uci_energy" / "initialisations.tsv", sep="\t")
    for algorithm in TINY["algorithms"]["uci_energy"]:
        for row in init.to_dict("records"):
            path = wd / "results" / "runs" / "uci_energy" / algorithm / f"seed{int(row['seed'])}"
            metrics = json.loads((path / "metrics.json").read_text())
            assert metrics["init_lr"] == row["lr"]
            assert metrics["init_weight_decay"] == row["weight_decay"]
            assert metrics["init_momentum"] == row["momentum"]
            assert metrics["hyperparameter_steps"] == 5


@pytest.mark.pipeline
def test_report(tiny_study):
    wd, _, _ = tiny_study
    snakemake(wd, "--report", "results/report.html", "--configfile", "tiny.yaml")
    report = (wd / "results" / "report.html").read_text()
    for needle in ("Empirical distribution", "paper_tables.md", "uci_energy.html",
                   "error_vs_hyperparameter.png", "Population study of"):
        assert needle in report


@pytest.mark.pipeline
def test_deleted_run_is_rebuilt_alone_and_tables_follow(tiny_study):
    wd, _, _ = tiny_study
    res = wd / "results"
    victim = res / "runs" / "uci_energy" / "Ours_LR" / "seed1" / "metrics.json"
    tables = [res / "tables" / "uci_energy" / "runs.tsv", res / "tables" / "uci_energy" / "summary.tsv",
              res / "tables" / "paper_tables.md", res / "analysis" / "uci_energy.html"]
    before = {p: p.stat().st_mtime for p in tables}
    victim.unlink()
    args = ["--profile", "profiles/local", "--configfile", "tiny.yaml", "--cores", "2"]
    planned = job_counts(snakemake(wd, "-n", *args).stdout)
    assert planned["train"] == 1
    proc = snakemake(wd, *args)
    assert job_counts(proc.stdout)["train"] == 1
    assert "results/runs/uci_energy/Ours_LR/seed1/metrics.json" in proc.stdout
    assert victim.exists()
    for p in tables:
        assert p.stat().st_mtime > before[p], p
    assert "Nothing to be done" in snakemake(wd, "-n", *args).stdout
