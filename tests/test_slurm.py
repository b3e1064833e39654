"""The SLURM profile against a real SLURM scheduler: a local single-node cluster
(scripts/slurm-up.sh: munged, mariadbd, slurmdbd, slurmctld, slurmd from Debian's packages; one
node in a CPU partition and a GPU partition with a stand-in GPU).

A tiny study (uci_energy, Random and Ours_LR x 4 seeds, 2 seeds per population job, 5 hypersteps)
runs through profiles/slurm layered with profiles/slurm-test, in a temporary copy of the workflow:

1. every training job goes through sbatch, one job per chunk of seeds (4 jobs for 8 runs), to the
   partition the plugin picks from the partitions file, with the memory and time limit estimated
   from the problem size; sacct lists them COMPLETED and each run's metrics.json records the SLURM
   job it ran in (the job whose comment names its chunk's rule);
2. the same study with profiles/local gives the same runs.tsv (apart from timing and job ids);
3. a job that fails at run time is reported and retried (--retries 1) with twice the memory and
   time, and a rerun after the fix resubmits only that job and what depends on it, leaving every
   other run's files untouched. The failure simulates a job input damaged where Snakemake
   cannot see it (the prepared data truncated on the shared file system, its time stamp
   unchanged): the job is forced (--forcerun) and onepass.train, on the compute node, cannot read
   the data; the same input fails the retry too. The fix puts the file back as it was;
4. a training job whose time limit is too short ends as TIMEOUT and Snakemake reports it, with
   the job's checkpoint left for a resubmission to resume from (run in the background in a
   second copy, alongside the failure test);
5. a job of a dataset the config puts on a GPU goes to the GPU partition with a GPU request SLURM
   accepts and allocates (a stand-in device on a machine without one, where the run then stops
   for want of CUDA);
6. profiles/slurm/partitions.yaml is a partition file the plugin reads, sending GPU jobs to the GPU
   partition and the others to the CPU one;
7. the stop script ends every daemon the start script started;
8. a study packed with `members_per_job: auto` runs on the cluster although its jobs' own Snakemake
   sees other cores than the submitting one (`--cores all` on the node, 1 where it was submitted):
   the jobs read the packing the submitting process wrote (onepass.packing), never decide their own.

Needs root (apt-get, daemons) and the offline copy of uci_energy; about 3 minutes on 2 cores,
plus about 20 s of apt-get the first time. The timings go to $ONEPASS_SLURM_DIR/test-report.json.
Select with `-m slurm`, skip with `-m "not slurm"`.
"""

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from onepass import figures

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
SLURM_DIR = Path(os.environ.get("ONEPASS_SLURM_DIR", "/tmp/onepass-slurm"))
PARTITION = os.environ.get("ONEPASS_SLURM_PARTITION", "onepass")
GPU_PARTITION = f"{PARTITION}-gpu"  # scripts/slurm-up.sh
DAEMONS = ["munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"]
STUDY = "slurmtest"
DATASET = "uci_energy"
ALGORITHMS = ["Random", "Ours_LR"]
SEEDS = [0, 1, 2, 3]
CHUNKS = [[0, 1], [2, 3]]  # members_per_job: 2
TINY = {
    "study": STUDY,
    "datasets": [DATASET],
    "algorithms": {DATASET: ALGORITHMS},
    "sweep": {"initialisations": {DATASET: len(SEEDS)}},
    "members_per_job": {"default": len(CHUNKS[0])},
    "gpu": {DATASET: 0},
    "overrides": {"all": {"all": {"hyperparameter_steps": 5, "log_every": 1}}},
    "appendix": None,   # config.yaml's appendix studies left out
}
RESULTS = f"results/{STUDY}"
RUNS_TSV = f"{RESULTS}/tables/{DATASET}/runs.tsv"
PAGE = f"{RESULTS}/analysis/{DATASET}.html"
# What depends on the runs, made again after the rerun: collection, tables, figures, the page.
# what a retrained chunk of UCI Energy redoes: its collection, table, figures and page, the paper tables, and
# the paper's per-dataset figures config/config.yaml's paper_figures lists it for (a UCI set's learning rates;
# a BayesOpt dataset's best test metric over time)
DOWNSTREAM = {"collect": 1, "summary_table": 1, "figure": len(figures.KINDS), "paper_figure": 2,
              "analysis_page": 1, "paper_tables": 1, "all": 1}
BROKEN = ("Ours_LR", CHUNKS[0])  # the chunk whose job is made to fail
SLOW = ("Random", CHUNKS[0])  # the chunk run into its time limit, and the one put on a GPU
SLURM_PROFILE = ["--profile", "profiles/slurm", "--workflow-profile", "profiles/slurm-test"]
NOT_COMPARED = ["train_time_s", "wall_time_s", "slurm_job_id"]  # timing and where it ran
FINAL = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL"}
REPORT = {}


# ---- helpers ----------------------------------------------------------------------------------


def rule(algorithm, chunk):
    """The training rule of a chunk of seeds (workflow/rules/train.smk)."""
    return f"train_{DATASET}_{algorithm}_{chunk[0]}_{chunk[-1]}"


def run_dir(algorithm, seed):
    return f"{RESULTS}/runs/{DATASET}/{algorithm}/seed{seed}"


def plan_path(algorithm, chunk):
    return f"{RESULTS}/sweep/{DATASET}/chunks/{algorithm}/seeds{chunk[0]}-{chunk[-1]}.json"


def data_path():
    return f"results/data/{DATASET}/prepared.pt"


def train_log(algorithm, chunk):
    return f"{RESULTS}/logs/train/{DATASET}/{algorithm}/seeds{chunk[0]}-{chunk[-1]}.log"


def daemon_pids():
    """{daemon: pid} from the pid files of scripts/slurm-up.sh."""
    pids = {}
    for name in DAEMONS:
        f = SLURM_DIR / "run" / f"{name}.pid"
        if f.exists():
            text = f.read_text().strip()
            if text.isdigit():
                pids[name] = int(text)
    return pids


def alive(pid):
    """The process exists and is not a zombie (an exited daemon whose parent, init, has not
    reaped it yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def slurm_env(mirror):
    """The environment of Snakemake and the client commands: this cluster, the data mirror, and
    this interpreter's bin directory first on PATH (the jobs' shell commands call `python`)."""
    env = dict(os.environ)
    env["SLURM_CONF"] = str(SLURM_DIR / "etc" / "slurm.conf")
    env["ONEPASS_SLURM_DIR"] = str(SLURM_DIR)
    env["ONEPASS_DATA_MIRRORS"] = str(mirror)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def snakemake(workdir, env, *args, timeout=420):
    """Run Snakemake; return (returncode, combined output, seconds)."""
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout)
    return proc.returncode, proc.stdout, time.time() - start


@contextlib.contextmanager
def background_snakemake(workdir: Path, env: dict, *args):
    """Snakemake started in the background in ``workdir`` (log: snakemake.log). If it is still
    running on exit (a test failed first), it is interrupted as with Ctrl-C, which cancels its
    SLURM jobs (SIGTERM would wait for them), and killed if that does not end it."""
    with open(workdir / "snakemake.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        proc.started = time.time()
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def finish(workdir, proc, name, timeout=420):
    """Wait for a background Snakemake; return (returncode, its output)."""
    rc = proc.wait(timeout=timeout)
    REPORT.setdefault(f"{name}_s", round(time.time() - proc.started, 1))
    return rc, (workdir / "snakemake.log").read_text()


def submitted(output):
    """SLURM job ids of the sbatch submissions a Snakemake run reports, in order."""
    return [int(j) for j in re.findall(r"has been submitted with SLURM jobid (\d+)", output)]


def slurm_logs(output):
    """{SLURM job id: its SLURM log} as a Snakemake run reports them."""
    return {int(j): Path(p) for j, p in
            re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (.*?)\)\.", output)}


def sacct(job_ids, env):
    """{job id: {field: value}} from the accounting database (not the scheduler's memory), once
    every job is there in a final state (the record trails the job's end by a moment)."""
    fields = ["JobIDRaw", "State", "Comment", "Partition", "ReqMem", "Timelimit", "AllocTRES"]
    records = {}
    for _ in range(30):
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", ",".join(fields),
                              "-j", ",".join(map(str, job_ids))],
                             env=env, text=True, capture_output=True, check=True).stdout
        records = {int(r["JobIDRaw"]): r for r in
                   (dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip())}
        for r in records.values():
            r["State"] = r["State"].split()[0]  # "CANCELLED by 0" -> CANCELLED
        if set(records) == set(job_ids) and all(r["State"] in FINAL for r in records.values()):
            break
        time.sleep(1)
    return records


def megabytes(reqmem):
    """sacct's ReqMem (e.g. 702M, 1.37G, 702Mn) in MB."""
    m = re.fullmatch(r"([\d.]+)([KMGT])[nc]?", reqmem)
    assert m, reqmem
    return round(float(m.group(1)) * {"K": 2 ** -10, "M": 1, "G": 2 ** 10, "T": 2 ** 20}[m.group(2)])


def minutes(timelimit):
    """sacct's Timelimit ([D-]HH:MM:SS) in minutes."""
    days, _, clock = timelimit.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return (int(days or 0) * 24 + h) * 60 + m + s / 60


def job_counts(output):
    """The 'Job stats' table of a Snakemake run as {rule: count}."""
    counts = {}
    if "Job stats:" not in output:
        return counts
    for line in output.split("Job stats:", 1)[1].splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def trained(counts):
    """The training rules among a run's job counts."""
    return {r: n for r, n in counts.items() if r.startswith("train_")}


def declared_resources(output, name):
    """mem_mb and runtime Snakemake printed for the (first) job of rule ``name``."""
    block = re.search(rf"\nrule {name}:\n(?:    .*\n)*?    resources: (.*)", output)
    assert block, f"no job of rule {name} in the output"
    res = block.group(1)
    return {k: int(re.search(rf"\b{k}=(\d+)", res).group(1)) for k in ("mem_mb", "runtime")}


def metrics(workdir, algorithm, seed):
    path = workdir / run_dir(algorithm, seed) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def snapshot(workdir, runs):
    """{file: (bytes, mtime)} of the metrics.json and history.csv of ``runs`` [(algorithm, seed)]."""
    out = {}
    for algorithm, seed in runs:
        for name in ("metrics.json", "history.csv"):
            path = workdir / run_dir(algorithm, seed) / name
            out[str(path)] = (path.read_bytes(), path.stat().st_mtime_ns)
    return out


def read_runs(path):
    return pd.read_csv(path, sep="\t", comment="#")


def same_runs(a, b):
    """runs.tsv a and b agree apart from the timing / job id columns."""
    a, b = (read_runs(p).drop(columns=NOT_COMPARED) for p in (a, b))
    pd.testing.assert_frame_equal(a, b)


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """The local SLURM cluster, started for this module and stopped after it (unless it was
    already running, which is left as found)."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("no SLURM and no apt-get to install it")
    before = daemon_pids()
    running = len(before) == len(DAEMONS) and all(alive(p) for p in before.values())
    start = time.time()
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "slurm-up.sh")], text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, f"slurm-up.sh failed:\n{proc.stdout}\n{proc.stderr}"
    REPORT["bring_up_s"] = round(time.time() - start, 1)
    REPORT["slurm"] = subprocess.run(["slurmctld", "-V"], text=True,
                                     capture_output=True).stdout.strip()
    REPORT["started"] = start
    info = {"started_here": not running, "pids": daemon_pids()}
    yield info
    if info["started_here"]:
        subprocess.run(["bash", str(ROOT / "scripts" / "slurm-down.sh")], timeout=120)


@pytest.fixture(scope="module")
def study_copy(shared_datasets, copy_workflow, tmp_path_factory):
    """A function making a copy of the workflow with the tiny study (plus ``extra`` config) as
    tiny.yaml."""
    def make(name, **extra):
        return copy_workflow(tmp_path_factory.mktemp(name),
                             {**TINY, "data_mirrors": [str(shared_datasets)], **extra})
    return make


@pytest.fixture(scope="module")
def env(shared_datasets):
    return slurm_env(shared_datasets)


@pytest.fixture(scope="module")
def local_study(study_copy, env):
    """The tiny study with profiles/local, started in the background (compared later)."""
    workdir = study_copy("local")
    with background_snakemake(workdir, env, RUNS_TSV, "--profile", "profiles/local",
                              "--cores", "1", "--configfile", "tiny.yaml") as proc:
        yield workdir, proc


@pytest.fixture(scope="module")
def timeout_study(cluster, study_copy, env):
    """One chunk on a schedule far too long for a 1-minute limit, no retries; started in the
    background in its own copy so that its minute-plus on the cluster overlaps the failure test."""
    algorithm, chunk = SLOW
    workdir = study_copy("timeout")
    (workdir / "slow.yaml").write_text(yaml.safe_dump(
        {"overrides": {DATASET: {algorithm: {"hyperparameter_steps": 10_000_000,
                                             "log_every": 1_000_000}}}}))
    with background_snakemake(workdir, env, f"{run_dir(algorithm, chunk[0])}/metrics.json",
                              *SLURM_PROFILE, "--set-resources", f"{rule(*SLOW)}:runtime=1",
                              "--retries", "0", "--configfile", "tiny.yaml", "slow.yaml") as proc:
        yield workdir, proc


@pytest.fixture(scope="module")
def gpu_study(cluster, study_copy, env):
    """One chunk of a dataset the config puts on a GPU (gpu: {uci_energy: 1}: the job asks for
    one GPU and trains with --device cuda), in its own copy, in the background."""
    algorithm, chunk = SLOW
    workdir = study_copy("gpu", gpu={DATASET: 1})
    with background_snakemake(workdir, env, f"{run_dir(algorithm, chunk[0])}/metrics.json",
                              *SLURM_PROFILE, "--retries", "0", "--configfile", "tiny.yaml") as proc:
        yield workdir, proc


@pytest.fixture(scope="module")
def slurm_study(cluster, local_study, study_copy, env):
    """The tiny study through profiles/slurm + profiles/slurm-test (with the local study running
    alongside, on this machine's other core)."""
    workdir = study_copy("slurm")
    rc, out, seconds = snakemake(workdir, env, "all", *SLURM_PROFILE, "--configfile", "tiny.yaml")
    REPORT["study_s"] = round(seconds, 1)
    (workdir / "snakemake-1.log").write_text(out)
    assert rc == 0, f"the SLURM study failed:\n{out[-8000:]}"
    return {"workdir": workdir, "output": out}


# ---- tests ------------------------------------------------------------------------------------


def test_training_jobs_go_through_sbatch_one_per_chunk(slurm_study, env):
    workdir, out = slurm_study["workdir"], slurm_study["output"]
    jobs = submitted(out)
    assert jobs, f"no sbatch submission reported: the jobs did not go through SLURM\n{out[-4000:]}"
    records = sacct(jobs, env)
    assert {j: r["State"] for j, r in records.items()} == {j: "COMPLETED" for j in jobs}, records
    # one job per chunk of seeds, each named by its rule in the job's comment
    chunk_rules = {rule(a, c) for a in ALGORITHMS for c in CHUNKS}
    job_of = {r["Comment"].removeprefix("rule_"): j for j, r in records.items()}
    assert len(jobs) == len(chunk_rules) < len(ALGORITHMS) * len(SEEDS)
    assert set(job_of) == chunk_rules, records
    assert trained(job_counts(out)) == {r: 1 for r in chunk_rules}
    for name, job in job_of.items():
        record = records[job]
        # the plugin picked the CPU partition from the partitions file (no GPU asked for)
        assert f"Auto-selected partition '{PARTITION}' for job {name}" in out
        assert record["Partition"] == PARTITION and "gres/gpu" not in record["AllocTRES"], record
        # memory and time limit as the rule estimated them from the problem size
        declared = declared_resources(out, name)
        assert megabytes(record["ReqMem"]) == declared["mem_mb"] > 0, (record, declared)
        assert minutes(record["Timelimit"]) == declared["runtime"] > 0, (record, declared)
        # the SLURM log of a successful job is kept (slurm-keep-successful-logs)
        assert slurm_logs(out)[job] == workdir / ".snakemake" / "slurm_logs" / f"rule_{name}" / f"{job}.log"
        assert slurm_logs(out)[job].exists()
    for algorithm in ALGORITHMS:
        for chunk in CHUNKS:
            for seed in chunk:
                m = metrics(workdir, algorithm, seed)
                assert m is not None, (algorithm, seed)
                assert int(m["slurm_job_id"]) == job_of[rule(algorithm, chunk)], (algorithm, seed, m)
                assert m["population_size"] == len(chunk)
    runs = read_runs(workdir / RUNS_TSV)
    assert len(runs) == len(ALGORITHMS) * len(SEEDS) and (runs["status"] == "done").all()
    assert (workdir / PAGE).exists()  # the whole study, up to the analysis page


def test_local_profile_gives_the_same_runs_tsv(slurm_study, local_study):
    workdir, proc = local_study
    rc, log = finish(workdir, proc, "local_study")
    assert rc == 0, log[-6000:]
    assert "SLURM jobid" not in log
    assert read_runs(workdir / RUNS_TSV)["slurm_job_id"].isna().all()
    assert read_runs(slurm_study["workdir"] / RUNS_TSV)["slurm_job_id"].notna().all()
    same_runs(workdir / RUNS_TSV, slurm_study["workdir"] / RUNS_TSV)


def test_failed_job_is_retried_larger_and_rerun_resubmits_only_it(slurm_study, timeout_study, gpu_study,
                                                                  local_study, env):
    # (The timeout and GPU studies start now, in the background: this test runs one job at a
    # time, which leaves them the cluster's other CPU.)
    workdir = slurm_study["workdir"]
    algorithm, chunk = BROKEN
    broken_rule = rule(*BROKEN)
    others = [(a, s) for a in ALGORITHMS for s in SEEDS if (a, s) not in {(algorithm, s) for s in chunk}]
    before = snapshot(workdir, others)
    # Damage the prepared data where Snakemake cannot see it (same time stamp) and force the job.
    data = workdir / data_path()
    good, stat = data.read_bytes(), data.stat()
    data.write_bytes(good[: len(good) // 2])
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    rc, out, seconds = snakemake(workdir, env, "all", *SLURM_PROFILE, "--retries", "1",
                                 "--forcerun", broken_rule, "--configfile", "tiny.yaml")
    REPORT["failing_s"] = round(seconds, 1)
    (workdir / "snakemake-2.log").write_text(out)
    assert rc != 0, out[-4000:]
    assert f"Error in rule {broken_rule}" in out, out[-4000:]
    assert trained(job_counts(out)) == {broken_rule: 1}, job_counts(out)
    # the job and its retry (--retries 1), both FAILED, the retry with twice the memory and time
    failed = submitted(out)
    records = sacct(failed, env)
    assert len(failed) == 2, f"expected the failed job and one retry, got {failed}\n{out[-4000:]}"
    assert [records[j]["State"] for j in failed] == ["FAILED", "FAILED"], records
    assert {records[j]["Comment"] for j in failed} == {f"rule_{broken_rule}"}, records
    first, retry = (records[j] for j in failed)
    assert megabytes(retry["ReqMem"]) == 2 * megabytes(first["ReqMem"]), (first, retry)
    assert minutes(retry["Timelimit"]) == 2 * minutes(first["Timelimit"]), (first, retry)
    # the run-time error, in the job's log; the failed job's outputs are removed, the rest untouched
    assert "cannot read prepared file" in (workdir / train_log(*BROKEN)).read_text()
    assert all(metrics(workdir, algorithm, s) is None for s in chunk)
    assert snapshot(workdir, others) == before

    # The fix: the data as it was (same time stamp). The study's command (rule all asks for the
    # chunk whose outputs the failure removed) resubmits only that chunk's job, then redoes what
    # depends on its runs.
    data.write_bytes(good)
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    rc, out, seconds = snakemake(workdir, env, "all", *SLURM_PROFILE, "--configfile", "tiny.yaml")
    REPORT["rerun_s"] = round(seconds, 1)
    (workdir / "snakemake-3.log").write_text(out)
    assert rc == 0, out[-6000:]
    counts = job_counts(out)
    expected = {broken_rule: 1, **DOWNSTREAM}
    assert counts == {**expected, "total": sum(expected.values())}, counts
    assert (workdir / plan_path(algorithm, chunk)).exists()
    jobs = submitted(out)
    records = sacct(jobs, env)
    assert len(jobs) == 1 and records[jobs[0]]["State"] == "COMPLETED", records
    assert records[jobs[0]]["Comment"] == f"rule_{broken_rule}" and jobs[0] not in failed
    for s in chunk:
        assert int(metrics(workdir, algorithm, s)["slurm_job_id"]) == jobs[0]
    assert snapshot(workdir, others) == before  # same bytes, same mtimes
    assert (read_runs(workdir / RUNS_TSV)["status"] == "done").all()
    # and the rerun reproduces the local profile's study
    lworkdir, lproc = local_study
    if lproc.wait(timeout=420) == 0:
        same_runs(lworkdir / RUNS_TSV, workdir / RUNS_TSV)


def test_time_limit_exceeded_ends_as_timeout(timeout_study, slurm_study, env):
    workdir, proc = timeout_study
    rc, out = finish(workdir, proc, "timeout_study")
    assert rc != 0, out[-4000:]
    jobs = submitted(out)
    assert len(jobs) == 1, out[-4000:]
    record = sacct(jobs, env)[jobs[0]]
    assert record["State"] == "TIMEOUT" and minutes(record["Timelimit"]) == 1, record
    # Snakemake reports the failed job with SLURM's state and names SLURM's log, which says why
    assert f"Error in rule {rule(*SLOW)}" in out, out[-4000:]
    assert f"SLURM-job '{jobs[0]}' failed, SLURM status is: 'TIMEOUT'" in out, out[-4000:]
    slurm_log = slurm_logs(out)[jobs[0]]
    assert str(slurm_log) in out.split(f"Error in rule {rule(*SLOW)}", 1)[1]
    assert "DUE TO TIME LIMIT" in slurm_log.read_text(), slurm_log.read_text()[-2000:]
    algorithm, chunk = SLOW
    assert not (workdir / run_dir(algorithm, chunk[0]) / "metrics.json").exists()
    # what it had trained is checkpointed: a resubmission with a longer limit resumes from there
    checkpoints = list((workdir / RESULTS / "runs" / DATASET / algorithm / ".checkpoints").rglob("*.pt"))
    assert checkpoints, "the timed-out job left no checkpoint"


def test_gpu_job_goes_to_the_gpu_partition_and_gets_a_gpu(gpu_study, slurm_study, env):
    workdir, proc = gpu_study
    rc, out = finish(workdir, proc, "gpu_study")
    assert f"Auto-selected partition '{GPU_PARTITION}' for job {rule(*SLOW)}" in out, out[-4000:]
    jobs = submitted(out)
    assert len(jobs) == 1, f"the GPU job was not submitted:\n{out[-4000:]}"
    record = sacct(jobs, env)[jobs[0]]
    assert record["Partition"] == GPU_PARTITION, record
    assert "gres/gpu=1" in record["AllocTRES"], record
    import torch

    algorithm, chunk = SLOW
    if torch.cuda.is_available():  # a machine with a real GPU: the run trains on it
        assert rc == 0 and record["State"] == "COMPLETED", out[-4000:]
        assert metrics(workdir, algorithm, chunk[0])["device"].startswith("cuda")
    else:  # stand-in GPU: SLURM allocates it, the run stops for want of CUDA
        assert rc != 0 and record["State"] == "FAILED", (record, out[-4000:])
        log = (workdir / train_log(*SLOW)).read_text()
        assert "CUDA is not available" in log, log[-2000:]


def test_profile_partitions_file_routes_gpu_jobs():
    """profiles/slurm/partitions.yaml, read by the plugin as slurm-partition-config would: a GPU
    job fits only `gpu`, a CPU job goes to `cpu`."""
    plugin = pytest.importorskip("snakemake_executor_plugin_slurm.partitions")
    get_best_partition, read_partition_file = plugin.get_best_partition, plugin.read_partition_file
    partitions = read_partition_file(ROOT / "profiles" / "slurm" / "partitions.yaml")
    logger = logging.getLogger("test_slurm")

    def job(gpu):
        return SimpleNamespace(name="train_x", threads=1,
                               resources={"mem_mb": 2000, "runtime": 60, "gpu": gpu})

    assert get_best_partition(partitions, job(1), logger) == "gpu"
    assert get_best_partition(partitions, job(0), logger) == "cpu"


def test_jobs_seeing_other_cores_train_the_submitted_chunks(cluster, slurm_study, study_copy, env):
    """members_per_job: auto, one algorithm: the packing (all 4 seeds in one job) is written where the
    study is submitted (1 core); the job's Snakemake on the node runs with --cores all (2 here), where the
    old per-parse choice (keep every core busy) cut 2 chunks of 2 and found no rule for the job."""
    workdir = study_copy("auto", algorithms={DATASET: ["Random"]}, members_per_job={"default": "auto"})
    rc, out, _ = snakemake(workdir, env, RUNS_TSV, *SLURM_PROFILE, "--configfile", "tiny.yaml")
    (workdir / "snakemake.log").write_text(out)
    assert rc == 0, out[-6000:]
    packed = json.loads((workdir / RESULTS / "packing" / f"{DATASET}.json").read_text())
    assert packed["chunks"] == {"Random": [SEEDS]}
    jobs = submitted(out)
    records = sacct(jobs, env)
    assert [records[j]["State"] for j in jobs] == ["COMPLETED"], records
    assert records[jobs[0]]["Comment"] == f"rule_{rule('Random', SEEDS)}"
    # the premise: the job's own Snakemake saw more cores than the submitting one's 1 (2 in CI's run)
    cores = re.search(r"Provided cores: (\d+)", slurm_logs(out)[jobs[0]].read_text())
    REPORT["auto_job_cores"] = int(cores.group(1)) if cores else None
    assert REPORT["auto_job_cores"] and REPORT["auto_job_cores"] > 1, slurm_logs(out)[jobs[0]].read_text()[-2000:]
    for seed in SEEDS:
        m = metrics(workdir, "Random", seed)
        assert int(m["slurm_job_id"]) == jobs[0] and m["population_size"] == len(SEEDS)


def test_stop_script_leaves_no_daemon(cluster):
    if not cluster["started_here"]:
        pytest.skip("the cluster was running before these tests; it is left running")
    pids = daemon_pids()
    assert set(pids) == set(DAEMONS), pids
    assert all(alive(p) for p in pids.values()), pids
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "slurm-down.sh")], text=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    still = {n: p for n, p in pids.items() if alive(p)}
    assert not still, f"still running after slurm-down.sh: {still}"
    assert not any((SLURM_DIR / "run" / f"{n}.pid").exists() for n in DAEMONS)
    # idempotent
    assert subprocess.run(["bash", str(ROOT / "scripts" / "slurm-down.sh")],
                          capture_output=True).returncode == 0
    REPORT["test_wall_s"] = round(time.time() - REPORT.pop("started", time.time()), 1)
    print(f"\nSLURM test: {json.dumps(REPORT)}", file=sys.stderr)
    (SLURM_DIR / "test-report.json").write_text(json.dumps(REPORT, indent=1) + "\n")
