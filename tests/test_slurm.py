"""The SLURM profile against a real SLURM scheduler: a local single-node cluster
(scripts/slurm-up.sh: munged, mariadbd, slurmdbd, slurmctld, slurmd from Debian's packages).

A tiny study (uci_energy, 2 algorithms x 2 seeds, 5 hypersteps) runs through profiles/slurm
layered with profiles/slurm-test, in a temporary copy of the workflow:

1. every training run goes through sbatch, bundled into group jobs; sacct lists them COMPLETED and
   each run's metrics.json records the SLURM job it ran in;
2. the same study with profiles/local gives the same runs.tsv (apart from wall time / job id);
3. runs made to fail (a run setting python -m onepass.train rejects, for one algorithm) are
   reported and retried (--retries 1), and a rerun after the fix resubmits only the failed runs
   and what depends on them;
4. a training run whose time limit is too short ends as TIMEOUT and Snakemake reports it (run in
   the background in a second copy, alongside the study);
5. a run of a dataset the config puts on a GPU is submitted with a GPU request SLURM accepts
   and gets a GPU allocated (a stand-in device on a machine without one, where the run then
   stops for want of CUDA);
6. the stop script ends every daemon the start script started.

Needs root (apt-get, daemons) and the offline copy of uci_energy; about 4-5 minutes on 2 cores,
plus about 20 s of apt-get the first time.
Select with `-m slurm`, skip with `-m "not slurm"`.
"""

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
SLURM_DIR = Path(os.environ.get("ONEPASS_SLURM_DIR", "/tmp/onepass-slurm"))
PARTITION = os.environ.get("ONEPASS_SLURM_PARTITION", "onepass")
DAEMONS = ["munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"]
DATASET = "uci_energy"
ALGORITHMS = ["Random", "Ours_LR"]
SEEDS = [0, 1]
TINY = {
    "datasets": [DATASET],
    "algorithms": {DATASET: ALGORITHMS},
    "sweep": {"initialisations": {DATASET: len(SEEDS)}},
    "overrides": {"all": {"all": {"hyperparameter_steps": 5, "log_every": 1}}},
}
RUNS_TSV = f"results/tables/{DATASET}/runs.tsv"
TIMEOUT_TARGET = f"results/runs/{DATASET}/Random/seed9/metrics.json"
GPU_TARGET = f"results/runs/{DATASET}/Random/seed0/metrics.json"
SLURM_PROFILE = ["--profile", "profiles/slurm", "--workflow-profile", "profiles/slurm-test"]
NOT_COMPARED = ["wall_time_s", "slurm_job_id"]  # timing and where it ran
REPORT = {}


# ---- helpers ----------------------------------------------------------------------------------


def uci_mirror():
    """A directory holding uci_energy/data.txt: ONEPASS_DATA_MIRRORS or ../shared/datasets."""
    candidates = os.environ.get("ONEPASS_DATA_MIRRORS", "").split(":")
    candidates.append(str(ROOT.parent / "shared" / "datasets"))
    for d in candidates:
        if d and (Path(d) / DATASET / "data.txt").exists():
            return str(Path(d).resolve())
    return None


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
    env = dict(os.environ)
    env["SLURM_CONF"] = str(SLURM_DIR / "etc" / "slurm.conf")
    env["ONEPASS_SLURM_PARTITION"] = PARTITION
    env["ONEPASS_DATA_MIRRORS"] = mirror
    return env


def snakemake(workdir, env, *args, timeout=420):
    """Run Snakemake; return (returncode, combined output, seconds)."""
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout)
    return proc.returncode, proc.stdout, time.time() - start


def submitted(output):
    """SLURM job ids of the sbatch submissions a Snakemake run reports."""
    return [int(j) for j in re.findall(r"has been submitted with SLURM jobid (\d+)", output)]


def sacct_states(job_ids, env):
    """{job id: state} from sacct (the accounting database, not the scheduler's memory)."""
    if not job_ids:
        return {}
    states = {}
    for _ in range(20):  # the accounting record trails the job's end by a moment
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobIDRaw,State",
                              "-j", ",".join(map(str, job_ids))],
                             env=env, text=True, capture_output=True, check=True).stdout
        states = {int(i): s.split()[0] for i, s in
                  (line.split("|") for line in out.splitlines() if line.strip())}
        if len(states) == len(set(job_ids)) and not any(
                s in ("PENDING", "RUNNING", "COMPLETING") for s in states.values()):
            break
        time.sleep(1)
    return states


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


def metrics(workdir, algorithm, seed):
    path = workdir / "results" / "runs" / DATASET / algorithm / f"seed{seed}" / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


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
def mirror():
    m = uci_mirror()
    if m is None:
        pytest.skip("no offline copy of uci_energy (set ONEPASS_DATA_MIRRORS)")
    return m


@pytest.fixture(scope="module")
def local_study(tmp_path_factory, mirror, copy_workflow):
    """The tiny study with profiles/local, started in the background (compared later)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("local"), {**TINY, "data_mirrors": [mirror]})
    env = dict(os.environ, ONEPASS_DATA_MIRRORS=mirror)
    log = open(workdir / "snakemake.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", RUNS_TSV, "--profile",
                             "profiles/local", "--cores", "1", "--configfile", "tiny.yaml"],
                            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    yield workdir, proc
    if proc.poll() is None:
        proc.kill()
    log.close()


@contextlib.contextmanager
def background_snakemake(workdir: Path, env: dict, *args):
    """Snakemake started in the background in ``workdir`` (log: snakemake.log), stopped on exit."""
    with open(workdir / "snakemake.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)


@pytest.fixture(scope="module")
def timeout_study(cluster, mirror, tmp_path_factory, copy_workflow):
    """One extra run (seed 9) far too long for a 1-minute limit, no retries; started in the
    background in its own copy so that its minute-plus on the cluster overlaps the study."""
    workdir = copy_workflow(tmp_path_factory.mktemp("timeout"),
                            {**TINY, "data_mirrors": [mirror]})
    (workdir / "slow.yaml").write_text(yaml.safe_dump(
        {"overrides": {DATASET: {"Random": {"hyperparameter_steps": 10_000_000,
                                            "log_every": 1_000_000}}}}))
    with background_snakemake(workdir, slurm_env(mirror), TIMEOUT_TARGET, *SLURM_PROFILE,
                              "--configfile", "tiny.yaml", "slow.yaml",
                              "--set-resources", "train:runtime=1", "--retries", "0") as proc:
        yield workdir, proc


@pytest.fixture(scope="module")
def gpu_study(cluster, mirror, tmp_path_factory, copy_workflow):
    """One run of a dataset the config sends to a GPU (rule train_gpu: resource gpu=1, the SLURM
    profile's set-resources for it), in its own copy, in the background."""
    config = {**TINY, "data_mirrors": [mirror], "gpu": {DATASET: 1}}
    workdir = copy_workflow(tmp_path_factory.mktemp("gpu"), config)
    with background_snakemake(workdir, slurm_env(mirror), GPU_TARGET, *SLURM_PROFILE,
                              "--configfile", "tiny.yaml", "--retries", "0") as proc:
        yield workdir, proc


@pytest.fixture(scope="module")
def slurm_study(cluster, mirror, local_study, timeout_study, gpu_study, tmp_path_factory,
                copy_workflow):
    """The tiny study through profiles/slurm + profiles/slurm-test."""
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm"), {**TINY, "data_mirrors": [mirror]})
    env = slurm_env(mirror)
    rc, out, seconds = snakemake(workdir, env, RUNS_TSV, *SLURM_PROFILE, "--configfile", "tiny.yaml")
    REPORT["study_s"] = round(seconds, 1)
    (workdir / "snakemake-1.log").write_text(out)
    assert rc == 0, f"the SLURM study failed:\n{out[-8000:]}"
    return {"workdir": workdir, "env": env, "output": out}


# ---- tests ------------------------------------------------------------------------------------


def test_training_runs_go_through_sbatch_in_group_jobs(slurm_study):
    workdir, env, out = slurm_study["workdir"], slurm_study["env"], slurm_study["output"]
    jobs = submitted(out)
    assert jobs, f"no sbatch submission reported: the jobs did not go through SLURM\n{out[-4000:]}"
    states = sacct_states(jobs, env)
    assert states == {j: "COMPLETED" for j in jobs}, states
    n_runs = len(ALGORITHMS) * len(SEEDS)
    assert job_counts(out).get("train") == n_runs
    assert "Group job train_uci" in out
    assert len(jobs) < n_runs, "the tiny UCI runs were not bundled into group jobs"
    for algorithm in ALGORITHMS:
        for seed in SEEDS:
            m = metrics(workdir, algorithm, seed)
            assert m is not None, (algorithm, seed)
            assert m["slurm_job_id"] is not None and int(m["slurm_job_id"]) in jobs, \
                f"{algorithm} seed {seed} did not run in a job this study submitted: {m['slurm_job_id']}"
    runs = read_runs(workdir / RUNS_TSV)
    assert (runs["status"] == "done").all()
    # the SLURM logs of successful jobs are kept (slurm-keep-successful-logs)
    logs = list((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert logs and any("train" in p.read_text() for p in logs)


def test_local_profile_gives_the_same_runs_tsv(slurm_study, local_study):
    workdir, proc = local_study
    assert proc.wait(timeout=420) == 0, (workdir / "snakemake.log").read_text()[-6000:]
    local = read_runs(workdir / RUNS_TSV)
    assert local["slurm_job_id"].isna().all()
    assert read_runs(slurm_study["workdir"] / RUNS_TSV)["slurm_job_id"].notna().all()
    same_runs(workdir / RUNS_TSV, slurm_study["workdir"] / RUNS_TSV)


def test_failed_job_is_reported_and_rerun_resubmits_only_it(slurm_study, local_study):
    workdir, env = slurm_study["workdir"], slurm_study["env"]
    keep = {s: metrics(workdir, "Random", s) for s in SEEDS}
    keep_mtime = {s: (workdir / f"results/runs/{DATASET}/Random/seed{s}/metrics.json").stat().st_mtime
                  for s in SEEDS}
    # A run setting python -m onepass.train rejects (log_every must be >= 1), for one algorithm.
    (workdir / "broken.yaml").write_text(yaml.safe_dump(
        {"overrides": {DATASET: {"Ours_LR": {"log_every": 0}}}}))
    rc, out, seconds = snakemake(workdir, env, RUNS_TSV, *SLURM_PROFILE, "--retries", "1",
                                 "--configfile", "tiny.yaml", "broken.yaml")
    REPORT["failing_s"] = round(seconds, 1)
    (workdir / "snakemake-2.log").write_text(out)
    assert rc != 0, out[-4000:]
    assert "Error in rule train" in out and "Ours_LR" in out, out[-4000:]
    failed = submitted(out)
    states = sacct_states(failed, env)
    assert failed and set(states.values()) == {"FAILED"}, states
    assert len(failed) == 2, f"expected the failed job and one retry (--retries 1), got {failed}"
    assert job_counts(out).get("train") == len(SEEDS)  # only Ours_LR: its params changed
    assert all(metrics(workdir, "Ours_LR", s) is None for s in SEEDS)
    # the group job stops at its first failing run (one CPU: the runs go one after another)
    logs = [(workdir / f"results/logs/train/{DATASET}/Ours_LR/seed{s}.log").read_text()
            for s in SEEDS]
    assert any("log_every" in log for log in logs), logs

    # Fixed: the same command without the bad setting resubmits only the failed runs.
    rc, out, seconds = snakemake(workdir, env, RUNS_TSV, *SLURM_PROFILE, "--configfile", "tiny.yaml")
    REPORT["rerun_s"] = round(seconds, 1)
    (workdir / "snakemake-3.log").write_text(out)
    assert rc == 0, out[-6000:]
    counts = job_counts(out)
    assert counts.get("train") == len(SEEDS), counts
    assert counts.get("collect") == 1, counts
    assert not re.search(r"wildcards: dataset=uci_energy, algorithm=Random,", out)
    jobs = submitted(out)
    assert jobs and sacct_states(jobs, env) == {j: "COMPLETED" for j in jobs}
    assert not set(jobs) & set(failed)
    for s in SEEDS:
        assert int(metrics(workdir, "Ours_LR", s)["slurm_job_id"]) in jobs
        assert metrics(workdir, "Random", s) == keep[s]  # untouched
        assert (workdir / f"results/runs/{DATASET}/Random/seed{s}/metrics.json").stat().st_mtime \
            == keep_mtime[s]
    # and the rerun reproduces the local profile's study
    lworkdir, lproc = local_study
    if lproc.wait(timeout=420) == 0:
        same_runs(lworkdir / RUNS_TSV, workdir / RUNS_TSV)


def test_time_limit_exceeded_ends_as_timeout(timeout_study, slurm_study):
    workdir, proc = timeout_study
    rc = proc.wait(timeout=420)
    out = (workdir / "snakemake.log").read_text()
    assert rc != 0, out[-4000:]
    jobs = submitted(out)
    assert len(jobs) == 1, out[-4000:]
    assert sacct_states(jobs, slurm_study["env"]) == {jobs[0]: "TIMEOUT"}
    # Snakemake reports the failed job and shows SLURM's log (show-failed-logs)
    assert "Error in rule train" in out and "DUE TO TIME LIMIT" in out, out[-4000:]
    assert not (workdir / TIMEOUT_TARGET).exists()


def test_gpu_request_is_accepted_and_allocates_a_gpu(gpu_study, slurm_study):
    workdir, proc = gpu_study
    rc = proc.wait(timeout=420)
    out = (workdir / "snakemake.log").read_text()
    assert "rule train_gpu:" in out, out[-4000:]
    jobs = submitted(out)
    assert len(jobs) == 1, f"the GPU job was not submitted:\n{out[-4000:]}"
    tres = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "AllocTRES", "-j", str(jobs[0])],
                          env=slurm_study["env"], text=True, capture_output=True).stdout
    assert "gres/gpu=1" in tres, tres
    state = sacct_states(jobs, slurm_study["env"])[jobs[0]]
    import torch
    if torch.cuda.is_available():  # a machine with a real GPU: the run trains on it
        assert rc == 0 and state == "COMPLETED", out[-4000:]
        assert metrics(workdir, "Random", 0)["device"].startswith("cuda")
    else:  # stand-in GPU: SLURM allocates it, the run stops for want of CUDA
        assert rc != 0 and state == "FAILED", (state, out[-4000:])
        log = (workdir / f"results/logs/train/{DATASET}/Random/seed0.log").read_text()
        assert "CUDA is not available" in log, log[-2000:]


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
    REPORT["test_wall_s"] = round(time.time() - REPORT.get("started", time.time()), 1)
    print(f"\nSLURM test: {json.dumps(REPORT)}", file=sys.stderr)
    (SLURM_DIR / "test-report.json").write_text(json.dumps(REPORT, indent=1) + "\n")
