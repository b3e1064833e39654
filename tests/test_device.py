"""Any machine, no edits: the device chosen where the study runs, configs that stay what they say, every job
declaring the resources it uses, and the plan of a study in a few lines.

Snakemake runs in temporary copies of the workflow (tests/test_pipeline.py's helpers)."""

import json
import re

import pytest
import yaml

from test_pipeline import job_counts, local, planned_jobs, snakemake, trained

pytestmark = pytest.mark.pipeline

# A GPU study in small: every kind of job that can train (population chunks, a search, sensitivity cells,
# the quality grid).
GPU_STUDY = {
    "study": "gpu",
    "datasets": ["uci_energy"],
    "algorithms": {"uci_energy": ["Random", "Ours_LR", "BayesOpt"]},
    "sweep": {"initialisations": {"uci_energy": 3}},
    "repetitions": {"BayesOpt": 1},
    "device": "cuda",
    "appendix": {
        "sensitivity": {"dataset": "uci_energy", "initialisations": 2, "algorithms": ["Ours_LR_Momentum"],
                        "update_intervals": [1, 2], "lookbacks": [1], "hyperparameter_steps": 2,
                        "baseline": {"algorithm": "Random", "overrides": {"weight_steps": 10}}},
        "quality": {"dataset": "uci_energy", "initialisations": 2, "algorithm": "Ours_LR_Momentum",
                    "update_intervals": [1], "lookbacks": [1], "hyperparameter_steps": 1}},
}


@pytest.fixture(scope="module")
def gpu_copy(tmp_path_factory, copy_workflow):
    return copy_workflow(tmp_path_factory.mktemp("gpu"), GPU_STUDY)


def test_every_job_that_passes_device_cuda_asks_for_a_gpu(gpu_copy):
    proc = snakemake(gpu_copy, "-n", "-p", "--resources", "gpu=1", "--configfile", "tiny.yaml")
    found = planned_jobs(proc.stdout)
    on_gpu = [j for j in found if "--device cuda" in j["shell"]]
    kinds = {re.sub(r"_(uci_energy_)?[A-Za-z_]*\d.*$", "", j["rule"]) for j in on_gpu}
    # population chunks, the search's repetition, the sensitivity cells and the quality job
    assert {j["rule"] for j in on_gpu} >= {"train_uci_energy_Random_0_2", "train_uci_energy_BayesOpt_0_0",
                                           "sensitivity_Ours_LR_Momentum_T2_K1", "sensitivity_Random_baseline",
                                           "hypergradient_quality"}, kinds
    for job in on_gpu:
        assert int(job["resources"].get("gpu", 0)) >= 1, job
        assert int(job["resources"]["mem_mb"]) > 0 and int(job["resources"]["runtime"]) > 0, job
    # and no job asks for a GPU it does not use
    for job in found:
        if int(job["resources"].get("gpu", 0)):
            assert "--device cuda" in job["shell"], job


def test_no_gpu_offered_cuda_forced_stops_the_dry_run_in_one_line(gpu_copy):
    proc = snakemake(gpu_copy, "-n", "--resources", "gpu=0", "--configfile", "tiny.yaml", check=False)
    assert proc.returncode != 0
    line = ("config key 'device' in tiny.yaml: cuda asks for a GPU for uci_energy (gpu.default), but this run "
            "offers none (no CUDA device here and no gpu resource): run where one is (--resources gpu=N, a GPU "
            "partition in profiles/slurm), or set device: auto or cpu")
    assert line in proc.stdout.splitlines(), proc.stdout[-3000:]


def test_auto_device_follows_the_gpus_offered(gpu_copy):
    """device: auto (the default): the same config on a machine with a GPU and on one without."""
    (gpu_copy / "auto.yaml").write_text("device: auto\n")
    with_gpu = planned_jobs(snakemake(gpu_copy, "-n", "-p", "--resources", "gpu=1", "--configfile", "tiny.yaml",
                              "auto.yaml").stdout)
    without = planned_jobs(snakemake(gpu_copy, "-n", "-p", "--resources", "gpu=0", "--configfile", "tiny.yaml",
                             "auto.yaml").stdout)
    training = [j for j in with_gpu if j["rule"].startswith("train_")]
    assert training and all("--device cuda" in j["shell"] and j["resources"]["gpu"] == "1" for j in training)
    assert all("--device cuda" not in j["shell"] and j["resources"].get("gpu", "0") == "0" for j in without)


def test_device_is_no_part_of_a_chunk_plan(gpu_copy):
    """A CPU-trained and a GPU-trained run of one seed are the same run: moving a study between machines
    rewrites no plan, so nothing retrains."""
    from onepass import study

    config = study.apply_defaults(study.normalise(yaml.safe_load((gpu_copy / "config" / "config.yaml").read_text())))
    on_gpu = study.chunk_plan({**config, "device": "cuda"}, "uci_energy", "Ours_LR", [0, 1])
    on_cpu = study.chunk_plan({**config, "device": "cpu"}, "uci_energy", "Ours_LR", [0, 1])
    assert json.dumps(on_gpu, sort_keys=True) == json.dumps(on_cpu, sort_keys=True)
    assert "device" not in on_gpu and "device" not in study.plan({**config, "device": "cuda"}, "uci_energy")


def test_gpu_default_means_every_dataset(gpu_copy):
    from onepass import jobs

    config = {"datasets": ["uci_energy", "uci_yacht"], "gpu": {"default": 1, "uci_yacht": 0}, "device": "cuda"}
    assert jobs.gpus_wanted(config, "uci_energy") == 1 and jobs.gpus_wanted(config, "uci_yacht") == 0
    assert jobs.device(config, "uci_energy") == "cuda" and jobs.device(config, "uci_yacht") == "cpu"
    assert jobs.resolve_device({**config, "device": "auto"}, 0) == "cpu"
    assert jobs.resolve_device({**config, "device": "auto"}, 2) == "cuda"
    assert jobs.resolve_device({**config, "device": "cpu"}, 2) == "cpu"


def test_three_line_config_plans_only_its_dataset(tmp_path, copy_workflow):
    """A config naming one dataset gets no appendix study from config/config.yaml (only what it names),
    and the plan of the study is told in a few lines."""
    workdir = copy_workflow(tmp_path)
    (workdir / "mine.yaml").write_text("study: mine\ndatasets: [uci_yacht]\nsweep: {initialisations: {uci_yacht: 3}}\n")
    proc = snakemake(workdir, "-n", "--configfile", "mine.yaml")
    counts = job_counts(proc.stdout)
    assert not [r for r in counts if "sensitivity" in r or "quality" in r or r == "appendix_figure"], counts
    assert {r.split("_uci_yacht_")[0] for r in trained(counts)} == {"train"}
    assert sum(trained(counts).values()) == 9          # the paper's 9 algorithms on a UCI set, 3 seeds each
    assert counts["collect"] == counts["summary_table"] == counts["analysis_page"] == 1
    assert re.search(r"^study mine \(device cpu\): 27 runs in 9 training jobs \(0 on a GPU\), asking for about "
                     r"[\d.]+ CPU-hours and 0\.0 GPU-hours", proc.stdout, re.M), proc.stdout[:3000]


def test_full_config_runs_one_uci_dataset_on_this_cpu(tmp_path, copy_workflow, mirror):
    """The paper's config, unedited, on a machine without a GPU: one UCI set's summary plans and trains on
    the CPU (schedule and population shortened on the command line)."""
    workdir = copy_workflow(tmp_path)
    target = "results/full/tables/uci_yacht/summary.tsv"
    (workdir / "short.yaml").write_text(yaml.safe_dump({
        "data_mirrors": [mirror], "sweep": {"initialisations": {"uci_yacht": 2}},
        "overrides": {"all": {"all": {"weight_steps": 20, "log_every": 10}}}}))
    proc = snakemake(workdir, target, *local("config/config.yaml", "short.yaml"))
    assert sum(trained(job_counts(proc.stdout)).values()) == 9
    metrics = [json.loads(p.read_text()) for p in (workdir / "results/full/runs/uci_yacht").glob("*/seed*/metrics.json")]
    assert len(metrics) == 18 and {m["device"] for m in metrics} == {"cpu"}
    assert (workdir / target).is_file()


def test_visible_gpus_without_torch(monkeypatch, tmp_path):
    """The GPUs counted for the device choice: the driver's, limited by CUDA_VISIBLE_DEVICES; inside a
    cluster job, the devices the scheduler made visible."""
    from onepass import devices

    driver = tmp_path / "gpus"
    for i in range(2):
        (driver / f"0000:0{i}:00.0").mkdir(parents=True)
    monkeypatch.setattr(devices, "DRIVER_GPUS", driver)
    assert devices.visible_gpus(environ={}) == 2
    assert devices.visible_gpus(environ={"CUDA_VISIBLE_DEVICES": "1"}) == 1
    assert devices.visible_gpus(environ={"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert devices.visible_gpus(environ={"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, in_job=True) == 0
    monkeypatch.setattr(devices, "DRIVER_GPUS", tmp_path / "none")
    monkeypatch.setenv("PATH", str(tmp_path))              # no nvidia-smi either: no driver
    assert devices.visible_gpus(environ={"CUDA_VISIBLE_DEVICES": "0,1"}) == 0
    assert devices.visible_gpus(environ={"CUDA_VISIBLE_DEVICES": "0,1"}, in_job=True) == 2
