"""The Snakemake workflow: lint and format, the full study's plan, config checks, a tiny end-to-end study,
reruns (a changed setting, a deleted run, one seed's chunk), stale runs, two studies side by side, a new
algorithm added as one file, the profiles and the conda environments.

Snakemake runs in temporary copies of the workflow, so the repository's results/ stays clean.
"""

import hashlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import yaml

from onepass import catalog, figures, study

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.pipeline
CPU = {"gpu": {"uci_energy": 0, "fashion_mnist": 0}}
TINY = {
    "study": "tiny",
    "datasets": ["uci_energy"],
    "algorithms": {"uci_energy": ["Random", "Random_Validation", "Ours_LR"]},
    "sweep": {"initialisations": {"uci_energy": 3}},
    "members_per_job": {"default": 3},
    "overrides": {"all": {"all": {"hyperparameter_steps": 5, "log_every": 10}}},
    "appendix": None,   # config.yaml's appendix studies left out
    **CPU,
}


def snakemake(workdir, *args, check=True):
    """Run Snakemake in ``workdir`` (targets first, then options); return the completed process."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-6000:]}")
    return proc


def job_counts(output):
    """The 'Job stats' table of a Snakemake run or dry run as {rule: count}."""
    if "Job stats:" not in output:
        return {}
    counts = {}
    for line in output.split("Job stats:", 1)[1].splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def planned_jobs(output: str) -> list[dict]:
    """Every job of a dry run printed with -p: its rule, resources and shell command."""
    found = []
    for block in re.split(r"\n(?=(?:local)?rule \S+:\n)", output):
        m = re.match(r"(?:local)?rule (\S+):\n", block)
        if not m:
            continue
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        resources = dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}
        found.append({"rule": m.group(1), "resources": resources, "shell": shell.group(1) if shell else ""})
    return found


def trained(counts):
    """{rule: count} of the training jobs of a job table."""
    return {rule: n for rule, n in counts.items() if rule.startswith("train_")}


def report_text(path: Path) -> str:
    """The report's own HTML with every HTML file it embeds (as base64 data URLs) decoded and appended."""
    import base64
    text = path.read_text()
    embedded = re.findall(r"data:text/html[^,\"]*,([A-Za-z0-9+/=]+)", text)
    return "\n".join([text, *(base64.b64decode(e).decode("utf-8", "replace") for e in embedded)])


def digests(directory: Path) -> dict:
    """{relative path: (SHA-256, mtime)} of every file under ``directory``."""
    return {str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def local(*config_files, options=()):
    """The local profile's arguments, the config files last (--configfile takes several: anything after
    them would be read as one)."""
    return ["--profile", "profiles/local", "--cores", "2", *options, "--configfile", *config_files]


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory, copy_workflow):
    """The workflow's files copied into a fresh directory."""
    return copy_workflow(tmp_path_factory.mktemp("workflow"))


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, copy_workflow, mirror):
    """The tiny study run once to completion: uci_energy, 3 algorithms x 3 seeds, 5 hyperparameter steps."""
    workdir = copy_workflow(tmp_path_factory.mktemp("tiny"), {**TINY, "data_mirrors": [mirror]})
    proc = snakemake(workdir, *local("tiny.yaml"))
    return workdir, proc.stdout


# ---- static checks ----------------------------------------------------------------------------------------
def test_lint_is_clean(workflow_copy):
    proc = snakemake(workflow_copy, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout


def test_snakefmt_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_full_study_dry_run_plans_population_jobs(workflow_copy):
    """The paper's study planned where one GPU is offered: its jobs, and every job that passes --device cuda
    asks for a GPU (and none asks for one it does not use)."""
    proc = snakemake(workflow_copy, "all", "-n", "-p", "--resources", "gpu=1")
    counts = job_counts(proc.stdout)
    planned = planned_jobs(proc.stdout)
    assert sum("--device cuda" in j["shell"] for j in planned) == 395 + 156 + 1   # chunks, cells, quality
    for job in planned:
        assert ("--device cuda" in job["shell"]) == (int(job["resources"].get("gpu", 0)) >= 1), job
    config = study.validate(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                            yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text()))
    runs = sum(len(study.seeds(config, d, a)) for d in config["datasets"] for a in study.algorithms(config, d))
    # the one-pass study: 8 UCI sets x 9 algorithms x 200, Fashion-MNIST 10 x 100 (Long Diff-through-Opt
    # (Medium) included), Penn Treebank and CIFAR-10 9 x 50; BayesOpt's 32 repetitions on UCI Energy, Kin8nm,
    # Power and Fashion-MNIST; one ASHA, ASHA (Ours), PBT and PBT (Ours) search on UCI Energy; the appendix:
    # Fashion-MNIST with BatchNorm 9 x 100, the short-horizon comparisons 4 x 60 on 4 datasets, Long
    # Diff-through-Opt (Full) 36 on UCI Energy, the validation proportions 2 x 200 at 3 proportions, the proof
    # of concept's 500 Random runs and 50 of Ours (WD+LR)
    assert runs == (8 * 9 * 200 + 10 * 100 + 2 * 9 * 50 + 32 * 4 + 4
                    + 9 * 100 + 4 * 4 * 60 + 36 + 3 * 2 * 200 + 500 + 50) == 20078
    jobs = trained(counts)
    # hundreds of population jobs, not one per run, sized for about an hour's training each (onepass.packing,
    # the same on any machine): Penn Treebank and CIFAR-10 5 seeds a job (members_per_job), UCI Energy's short
    # horizons 12, the rest from the estimated time of a member (a UCI set's 200 seeds of Random in one job)
    # (387 for the paper's studies, and one job each for the validation proportions' 3 x 2 populations of 200
    # and the proof of concept's 500 Random and 50 Ours (WD+LR) runs: 8 more)
    assert sum(jobs.values()) == 387 + 8
    assert jobs["train_uci_energy_Random_0_199"] == jobs["train_penn_treebank_Ours_LR_45_49"] == 1
    assert all(jobs[f"train_uci_energy_valid{p}_{a}_0_199"] == 1
               for p in (25, 375, 50) for a in ("Ours_LR_Momentum", "Ours_HDLR_Momentum"))
    assert jobs["train_uci_energy_concept_Random_0_499"] == jobs["train_uci_energy_concept_ours_Ours_LR_0_49"] == 1
    assert all(n == 1 for n in jobs.values())
    assert counts["total"] <= 1000
    assert counts["prepare_data"] == 11       # the variants use their base's prepared data
    assert counts["sweep"] == counts["collect"] == counts["analysis_page"] == 21
    assert counts["figure"] == 21 * len(figures.KINDS)
    # the paper's cross-dataset outputs: the learning rates of 8 UCI sets, the run durations of 3 large ones,
    # the best test metric over time of 8 datasets, the test-error CDFs of 4 classification datasets
    # (Fashion-MNIST, CIFAR-10, BatchNorm, Fashion-MNIST's Standalone comparison); the validation-proportion
    # table; the proof of concept
    assert counts["paper_figure"] == 8 + 3 + 8 + 4
    assert counts["validation_proportion_table"] == counts["proof_of_concept_figure"] == 1


def test_quick_study_plan_with_the_slurm_profile(workflow_copy):
    """The quick study on the SLURM profile, which offers GPUs, and where no GPU is offered (gpu=0): the
    same jobs (every seed of a UCI Energy algorithm in one job, a search's two repetitions in one), only
    their device differs."""
    proc = snakemake(workflow_copy, "-n", "--profile", "profiles/slurm", "--configfile", "config/quick.yaml")
    on_gpu = trained(job_counts(proc.stdout))
    assert on_gpu["train_uci_energy_Ours_LR_0_49"] == 1 and "train_fashion_mnist_Random_0_5" in on_gpu
    assert "--device cuda" in proc.stdout and "--device cpu" not in proc.stdout
    proc = snakemake(workflow_copy, "-n", "--profile", "profiles/slurm", "--resources", "gpu=0",
                     "--configfile", "config/quick.yaml")
    jobs = trained(job_counts(proc.stdout))
    assert jobs == on_gpu and jobs["train_uci_energy_BayesOpt_0_1"] == 1
    assert ("python -m onepass.search --plan results/quick/sweep/uci_energy/chunks/BayesOpt/seeds0-1.json"
            " --runs-dir results/quick/runs/uci_energy/BayesOpt") in proc.stdout
    assert ("python -m onepass.train --plan results/quick/sweep/uci_energy/chunks/Ours_LR/seeds0-49.json"
            " --runs-dir results/quick/runs/uci_energy/Ours_LR") in proc.stdout
    assert "--device cpu" in proc.stdout and "--device cuda" not in proc.stdout


# ---- config checks: one short message naming the key and the file ----------------------------------------
BAD = [
    ("bogus_key: 1", "config key 'bogus_key' in bad.yaml: unknown key"),
    ("datasets: [uci_nope]", "config key 'datasets.0' in bad.yaml: unknown dataset 'uci_nope'"),
    ("algorithms: {uci_energy: [Nope]}", "config key 'algorithms.uci_energy.0' in bad.yaml: unknown algorithm"),
    ("sweep: {seed: abc}", "config key 'sweep.seed' in bad.yaml"),
    ("overrides: {all: {all: {bogus_setting: 1}}}",
     "config key 'overrides.all.all.bogus_setting' in bad.yaml: unknown setting 'bogus_setting'"),
    ("gpu: {uci_energy: many}", "config key 'gpu.uci_energy' in bad.yaml"),
    ("overrides: {uci_energy: {Ours_LR: {weight_steps: many}}}",
     "config key 'overrides.uci_energy.Ours_LR.weight_steps' in bad.yaml: setting 'weight_steps' must be integer"),
    ("sweep: {samplers: {momentum: {type: uniform, range: [0, 1.5]}}}",
     "config key 'sweep.samplers.momentum' in bad.yaml: initial momentum must be a finite value >= 0 and <= 1, "
     "got 1.5"),
    ("sweep: {samplers: {lr: {type: uniform, range: [-0.1, 0.1]}}}",
     "config key 'sweep.samplers.lr' in bad.yaml: initial lr must be a finite value >= 0, got -0.1"),
    ("sweep: {samplers: {weight_decay: {type: log_uniform, range: [0, 0.1]}}}",
     "config key 'sweep.samplers.weight_decay' in bad.yaml: log_uniform needs a positive range"),
    ("overrides: {all: {DiffThroughOpt: {unroll_steps: 20}}}",
     "config key 'overrides.all.DiffThroughOpt' in bad.yaml: the merged run settings of DiffThroughOpt on "
     "uci_energy are invalid: setting 'unroll_steps' must not exceed 'update_interval'"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[b[0].split(":")[0] + str(i) for i, b in enumerate(BAD)])
def test_bad_config_stops_the_dry_run_with_a_short_message(workflow_copy, tmp_path, text, message):
    (workflow_copy / "bad.yaml").write_text(text + "\n")
    proc = snakemake(workflow_copy, "-n", "--configfile", "config/quick.yaml", "bad.yaml",
                     "--directory", str(workflow_copy), check=False)
    assert proc.returncode != 0
    assert message in proc.stdout, proc.stdout[-3000:]
    error = proc.stdout[proc.stdout.index("StudyConfigError"):]
    assert len(error.splitlines()) <= 8, error       # a few lines: no schema or config dump
    assert "$schema" not in proc.stdout and "additionalProperties" not in proc.stdout


def test_numbers_written_as_1e_minus_6_are_numbers(workflow_copy):
    (workflow_copy / "exp.yaml").write_text(
        "sweep: {samplers: {lr: {type: log_uniform, range: [1e-6, 1e-1]}}}\n"
        "overrides: {uci_energy: {Ours_LR: {hyper_lr: 3e-2}}}\n")
    proc = snakemake(workflow_copy, "-n", "--configfile", "config/quick.yaml", "exp.yaml")
    assert "train_uci_energy_Ours_LR_0_49" in proc.stdout


# ---- the tiny study end to end -----------------------------------------------------------------------------
def test_tiny_study_produces_runs_tables_figures_pages(tiny_study):
    wd, output = tiny_study
    assert sum(trained(job_counts(output)).values()) == 3   # one population job per algorithm
    res = wd / "results" / "tiny"
    runs_tsv = (res / "tables" / "uci_energy" / "runs.tsv").read_text()
    assert runs_tsv.splitlines()[0] == "# status: 9 done, 0 diverged, 0 stale, 0 missing of 9 runs"
    runs = pd.read_csv(res / "tables" / "uci_energy" / "runs.tsv", sep="\t", comment="#")
    assert len(runs) == 9 and set(runs["population_size"]) == {3}
    summary = pd.read_csv(res / "tables" / "uci_energy" / "summary.tsv", sep="\t")
    assert {"Random", "Random_3Batched", "Ours_LR"} <= set(summary["algorithm"])
    paper = (res / "tables" / "paper_tables.md").read_text()
    assert "### UCI Energy" in paper and "Ours (WD+LR)" in paper
    assert "Ours (WD+LR)" in (res / "tables" / "paper_tables.html").read_text()
    for fig in figures.KINDS:
        for ext in ("png", "svg"):
            assert (res / "figures" / "uci_energy" / f"{fig}.{ext}").stat().st_size > 1000
    page = (res / "analysis" / "uci_energy.html").read_text()
    assert page.count("data:image/png;base64,") == len(figures.KINDS)
    assert list((res / "benchmarks" / "train" / "uci_energy").glob("*/seeds0-2.tsv"))
    assert (res / "logs" / "train" / "uci_energy" / "Ours_LR" / "seeds0-2.log").exists()
    assert not (wd / "results" / "runs").exists() and (wd / "results" / "data" / "uci_energy").is_dir()


def test_seed_is_the_same_initialisation_for_every_algorithm(tiny_study):
    wd, _ = tiny_study
    init = pd.read_csv(wd / "results" / "tiny" / "sweep" / "uci_energy" / "initialisations.tsv", sep="\t")
    for algorithm in TINY["algorithms"]["uci_energy"]:
        for row in init.to_dict("records"):
            path = wd / "results" / "tiny" / "runs" / "uci_energy" / algorithm / f"seed{int(row['seed'])}"
            metrics = json.loads((path / "metrics.json").read_text())
            assert metrics["init_lr"] == row["lr"]
            assert metrics["init_weight_decay"] == row["weight_decay"]
            assert metrics["init_momentum"] == row["momentum"]
            assert metrics["hyperparameter_steps"] == 5


def test_report_holds_the_tables_and_pages(tiny_study):
    wd, _ = tiny_study
    snakemake(wd, "--report", "results/tiny/report.html", "--configfile", "tiny.yaml")
    report = report_text(wd / "results" / "tiny" / "report.html")
    for needle in ("summary.html", "paper_tables.html", "uci_energy.html", "error_vs_hyperparameter.png",
                   "Population study of", "Table 1: UCI regression", "population analysis",
                   catalog.algorithm("Ours_LR").label):
        assert needle in report, needle


# ---- reruns ---------------------------------------------------------------------------------------------
@pytest.fixture
def study_copy(tmp_path, copy_workflow, mirror):
    """A fresh copy with the tiny study (2 seeds a job, so that chunks are visible) run to completion."""
    config = {**TINY, "sweep": {"initialisations": {"uci_energy": 4}}, "members_per_job": {"default": 2},
              "data_mirrors": [mirror]}
    workdir = copy_workflow(tmp_path / "wf", config)
    snakemake(workdir, *local("tiny.yaml"))
    return workdir


def test_changed_override_retrains_exactly_its_runs(study_copy):
    wd = study_copy
    runs = wd / "results" / "tiny" / "runs" / "uci_energy"
    before = {a: digests(runs / a) for a in TINY["algorithms"]["uci_energy"]}
    (wd / "change.yaml").write_text(yaml.safe_dump({"overrides": {"uci_energy": {"Ours_LR": {"hyper_lr": 0.02}}}}))
    planned = trained(job_counts(snakemake(wd, "-n", *local("tiny.yaml", "change.yaml")).stdout))
    assert planned == {"train_uci_energy_Ours_LR_0_1": 1, "train_uci_energy_Ours_LR_2_3": 1}
    snakemake(wd, *local("tiny.yaml", "change.yaml"))
    for seed in range(4):
        metrics = json.loads((runs / "Ours_LR" / f"seed{seed}" / "metrics.json").read_text())
        assert metrics["settings"]["hyper_lr"] == 0.02 and not metrics["diverged"]
    for algorithm in ("Random", "Random_Validation"):
        assert digests(runs / algorithm) == before[algorithm]
    runs_tsv = wd / "results" / "tiny" / "tables" / "uci_energy" / "runs.tsv"
    assert runs_tsv.read_text().startswith("# status: 12 done, 0 diverged, 0 stale")
    assert "Nothing to be done" in snakemake(wd, "-n", *local("tiny.yaml", "change.yaml")).stdout


def test_deleted_metrics_retrain_the_run_from_scratch_and_only_its_chunk(study_copy):
    """A plain rerun notices the deleted run (rule all asks for it by name), retrains its chunk from
    scratch, and everything after it follows."""
    wd = study_copy
    victim = wd / "results" / "tiny" / "runs" / "uci_energy" / "Ours_LR" / "seed3" / "metrics.json"
    old = json.loads(victim.read_text())
    res = wd / "results" / "tiny"
    outputs = [res / "tables" / "uci_energy" / "runs.tsv", res / "tables" / "paper_tables.md",
               res / "analysis" / "uci_energy.html"]
    before = {p: p.stat().st_mtime for p in outputs}
    victim.unlink()
    proc = snakemake(wd, *local("tiny.yaml"))
    assert trained(job_counts(proc.stdout)) == {"train_uci_energy_Ours_LR_2_3": 1}
    log = (res / "logs" / "train" / "uci_energy" / "Ours_LR" / "seeds2-3.log").read_text()
    assert "resumed" not in log                      # from scratch: the finished checkpoint was deleted
    new = json.loads(victim.read_text())
    assert new["test_metric"] == pytest.approx(old["test_metric"], rel=1e-6)
    for p in outputs:
        assert p.stat().st_mtime > before[p], p


def test_asking_for_one_seed_runs_only_its_chunk(study_copy):
    wd = study_copy
    target = "results/tiny/runs/uci_energy/Random/seed2/metrics.json"
    (wd / target).unlink()
    proc = snakemake(wd, target, *local("tiny.yaml"))  # the target first
    counts = job_counts(proc.stdout)
    assert trained(counts) == {"train_uci_energy_Random_2_3": 1} and "collect" not in counts
    assert (wd / target).exists()


def test_a_finished_study_moves_without_retraining(tmp_path, copy_workflow, mirror):
    """A study finished with `members_per_job: auto` on 2 cores is planned again with other cores, with a GPU
    offered: nothing to do. Grown by two seeds, only the new seeds train."""
    config = {**TINY, "sweep": {"initialisations": {"uci_energy": 4}}, "members_per_job": {"default": "auto"},
              "gpu": {"uci_energy": 1}, "data_mirrors": [mirror]}   # wants a GPU where one is offered
    wd = copy_workflow(tmp_path / "wf", config)
    snakemake(wd, *local("tiny.yaml"))
    packed = json.loads((wd / "results" / "tiny" / "packing" / "uci_energy.json").read_text())
    assert packed["chunks"] == {a: [[0, 1, 2, 3]] for a in TINY["algorithms"]["uci_energy"]}
    moves = [("--cores", "1"), ("--cores", "8"), ("--resources", "gpu=1"), ("--cores", "2")]
    for move in moves:
        args = ["-n", "--profile", "profiles/local", *move, "--configfile", "tiny.yaml"]
        out = snakemake(wd, *args).stdout
        assert "Nothing to be done" in out and not trained(job_counts(out)), (move, out[-3000:])
    (wd / "grow.yaml").write_text(yaml.safe_dump({"sweep": {"initialisations": {"uci_energy": 6}}}))
    out = snakemake(wd, "-n", *local("tiny.yaml", "grow.yaml")).stdout
    assert trained(job_counts(out)) == {f"train_uci_energy_{a}_4_5": 1 for a in TINY["algorithms"]["uci_energy"]}


def test_stale_run_is_reported_and_left_out_of_the_tables(study_copy):
    wd = study_copy
    res = wd / "results" / "tiny"
    # the override changes, but Snakemake is told to look at file times only: the runs are kept as they are;
    # the dataset's plan is remade from the new config, and collection finds the runs recorded under other
    # settings than the plan's
    (wd / "change.yaml").write_text(yaml.safe_dump({"overrides": {"uci_energy": {"Ours_LR": {"hyper_lr": 0.02}}}}))
    proc = snakemake(wd, *local("tiny.yaml", "change.yaml", options=("--rerun-triggers", "mtime",
                                                                      "--forcerun", "sweep")))
    assert not trained(job_counts(proc.stdout))
    status = (res / "tables" / "uci_energy" / "runs.tsv").read_text().splitlines()[0]
    assert status == "# status: 8 done, 0 diverged, 4 stale, 0 missing of 12 runs"
    runs = pd.read_csv(res / "tables" / "uci_energy" / "runs.tsv", sep="\t", comment="#")
    assert set(runs[runs["status"] == "stale"]["algorithm"]) == {"Ours_LR"}
    assert runs[runs["status"] == "stale"]["stale_reason"].str.contains("hyper_lr").all()
    summary = pd.read_csv(res / "tables" / "uci_energy" / "summary.tsv", sep="\t").set_index("algorithm")
    assert summary.loc["Ours_LR", "stale"] == 4 and summary.loc["Ours_LR", "done"] == 0
    assert pd.isna(summary.loc["Ours_LR", "mean"])
    assert "4 stale" in (res / "analysis" / "uci_energy.html").read_text()


def test_two_studies_never_touch_each_others_files(tiny_study, mirror):
    wd, _ = tiny_study
    first = digests(wd / "results" / "tiny")
    data = digests(wd / "results" / "data")
    other = {**TINY, "study": "other", "overrides": {"all": {"all": {"hyperparameter_steps": 3, "log_every": 10}}},
             "data_mirrors": [mirror]}
    (wd / "other.yaml").write_text(yaml.safe_dump(other))
    proc = snakemake(wd, *local("other.yaml"))
    assert sum(trained(job_counts(proc.stdout)).values()) == 3
    assert digests(wd / "results" / "tiny") == first           # not a byte or a time changed
    assert digests(wd / "results" / "data") == data            # the prepared data are shared, not redone
    assert (wd / "results" / "other" / "tables" / "uci_energy" / "runs.tsv").exists()
    metrics = json.loads((wd / "results" / "other" / "runs" / "uci_energy" / "Random" / "seed0" /
                          "metrics.json").read_text())
    assert metrics["hyperparameter_steps"] == 3
    # and the first study is still complete and up to date
    assert "Nothing to be done" in snakemake(wd, "-n", *local("tiny.yaml")).stdout


def test_a_new_algorithm_is_one_yaml_file(tmp_path, copy_workflow, mirror):
    """A copy of Ours_LR with another hyper_lr and label, added as config/algorithms/<name>.yaml, runs
    through the whole study and shows its label everywhere; no code is edited."""
    config = {**TINY, "algorithms": {"uci_energy": ["Random", "Ours_LR", "Ours_LR_Fast"]},
              "data_mirrors": [mirror]}
    wd = copy_workflow(tmp_path / "wf", config)
    entry = yaml.safe_load((wd / "config" / "algorithms" / "Ours_LR.yaml").read_text())
    entry.update(label="Ours (WD+LR, fast)", rank=99, style={"colour": "#00ff00", "linestyle": "-."})
    entry["settings"]["hyper_lr"] = 0.2
    (wd / "config" / "algorithms" / "Ours_LR_Fast.yaml").write_text(yaml.safe_dump(entry))
    snakemake(wd, *local("tiny.yaml"))
    snakemake(wd, "--report", "results/tiny/report.html", "--configfile", "tiny.yaml")
    res = wd / "results" / "tiny"
    metrics = json.loads((res / "runs" / "uci_energy" / "Ours_LR_Fast" / "seed0" / "metrics.json").read_text())
    assert metrics["settings"]["hyper_lr"] == 0.2
    label = "Ours (WD+LR, fast)"
    assert label in (res / "tables" / "paper_tables.md").read_text()
    assert label in (res / "tables" / "uci_energy" / "summary.html").read_text()
    assert label in (res / "analysis" / "uci_energy.html").read_text()
    assert label.encode() in (res / "figures" / "uci_energy" / "edf.svg").read_bytes()
    assert label in report_text(res / "report.html")
    changed = subprocess.run(["diff", "-rq", str(ROOT / "onepass"), str(wd / "onepass"), "-x", "__pycache__"],
                             capture_output=True, text=True)
    assert changed.returncode == 0, changed.stdout


# ---- environments -------------------------------------------------------------------------------------------
def test_conda_env_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["cifar"]
    env = yaml.safe_load((ROOT / "envs" / "onepass.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    norm = lambda reqs: sorted(r.replace(" ", "").lower() for r in reqs)  # noqa: E731
    assert norm(pip) == norm(deps)


def test_readme_commands_put_targets_first():
    """`--configfile` takes several files: a target after it would be read as a config file."""
    text = (ROOT / "README.md").read_text()
    for line in text.splitlines():
        if "snakemake" in line and "--configfile" in line:
            after = line.split("--configfile", 1)[1].split()
            for before, token in zip(after[1:], after[2:]):   # a path after the config files is an option's
                assert not token.startswith("results/") or before.startswith("-"), line


def test_appendix_studies_run_as_jobs_of_their_own(tmp_path, copy_workflow, mirror):
    """The sensitivity grid's cells are training jobs of their own (K <= T for Diff-through-Opt), each cell
    its fixed number of hyperparameter steps; the table, the quality comparison and both heatmaps follow."""
    steps = 3
    config = {**TINY, "data_mirrors": [mirror], "appendix": {
        "sensitivity": {"dataset": "uci_energy", "initialisations": 2, "algorithms": ["Ours_LR_Momentum", "DiffThroughOpt"],
                        "update_intervals": [1, 2], "lookbacks": [1, 2], "hyperparameter_steps": steps,
                        "baseline": {"algorithm": "Random", "overrides": {"weight_steps": 20}}},
        "quality": {"dataset": "uci_energy", "initialisations": 2, "algorithm": "Ours_LR_Momentum",
                    "update_intervals": [1, 2], "lookbacks": [1, 2], "hyperparameter_steps": 2}}}
    wd = copy_workflow(tmp_path / "wf", config)
    figures_dir = "results/tiny/appendix/figures"
    figures = [f"{figures_dir}/{name}.png" for name in ("sensitivity", "quality", "quality_direct")]
    proc = snakemake(wd, *figures, *local("tiny.yaml"))
    counts = job_counts(proc.stdout)
    cells = {rule for rule in counts if rule.startswith("sensitivity_") and rule not in
             ("sensitivity_plan", "sensitivity_table")}
    assert cells == {"sensitivity_Ours_LR_Momentum_T1_K1", "sensitivity_Ours_LR_Momentum_T1_K2",
                     "sensitivity_Ours_LR_Momentum_T2_K1", "sensitivity_Ours_LR_Momentum_T2_K2",
                     "sensitivity_DiffThroughOpt_T1_K1", "sensitivity_DiffThroughOpt_T2_K1",
                     "sensitivity_DiffThroughOpt_T2_K2", "sensitivity_Random_baseline"}
    assert counts["hypergradient_quality"] == 1 and counts["appendix_figure"] == 2
    assert counts["quality_direct_figure"] == 1
    runs = wd / "results/tiny/appendix/sensitivity/runs"
    for algorithm, cell, weight_steps in [("Ours_LR_Momentum", "T2_K1", 2 * steps), ("DiffThroughOpt", "T1_K1", steps),
                                          ("Random", "baseline", 20)]:
        for seed in (0, 1):
            metrics = json.loads((runs / algorithm / cell / f"seed{seed}" / "metrics.json").read_text())
            assert metrics["weight_steps"] == weight_steps, (algorithm, cell)
    table = (wd / "results/tiny/appendix/sensitivity/sensitivity.tsv").read_text().splitlines()
    assert len(table) == 1 + 8 and table[0].startswith("algorithm\tcell\tupdate_interval\tlookback")
    # the paper's quantity: cells (1,1), (2,1), (2,2) x the first update's relative error of lr, weight decay
    paper = (wd / "results/tiny/appendix/quality/quality.tsv").read_text().splitlines()
    assert len(paper) == 1 + 3 * 2
    # this project's: cosine similarity, norm ratio, relative error of lr, weight decay, momentum
    direct = (wd / "results/tiny/appendix/quality/direct.tsv").read_text().splitlines()
    assert len(direct) == 1 + 3 * 5
    for name in ("sensitivity", "quality", "quality_direct"):
        assert (wd / figures_dir / f"{name}.svg").stat().st_size > 10_000
    # nothing left to do
    again = snakemake(wd, *figures, *local("tiny.yaml"))
    assert "Nothing to be done" in again.stdout
