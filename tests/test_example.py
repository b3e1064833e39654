"""The worked example of a problem of one's own (examples/diabetes/): its study runs from the README's one
command (with a shortened schedule) through runs, tables, figures and the analysis page, and a bad
module:function in its dataset YAML stops the dry run with one line naming the key."""

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.pipeline
SHORT = {"overrides": {"diabetes": {"all": {"weight_steps": 40, "log_every": 20}}},
         "sweep": {"initialisations": {"diabetes": 4}}}


def readme_command() -> list[str]:
    """The README's command of the example study."""
    lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()
             if "snakemake" in line and "--configfile examples/diabetes/study.yaml" in line]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


@pytest.fixture()
def example_copy(tmp_path, copy_workflow):
    wd = copy_workflow(tmp_path / "wf")
    shutil.copytree(ROOT / "examples", wd / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    return wd


def run(wd, args):
    return subprocess.run(args, cwd=wd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_example_study_runs_from_the_readme_command(example_copy):
    command = readme_command()
    assert command[:3] == ["python", "-m", "snakemake"] and command[-2] == "--configfile"
    (example_copy / "short.yaml").write_text(yaml.safe_dump(SHORT))
    proc = run(example_copy, [sys.executable, *command[1:], "short.yaml"])   # a config file after the study's
    assert proc.returncode == 0, proc.stdout[-5000:]
    res = example_copy / "results" / "diabetes"
    algorithms = yaml.safe_load((ROOT / "examples" / "diabetes" / "study.yaml").read_text())["algorithms"]["diabetes"]
    summary = pd.read_csv(res / "tables" / "diabetes" / "summary.tsv", sep="\t")
    trained = summary[summary.algorithm != "Random_3Batched"]
    assert sorted(trained.algorithm) == sorted(algorithms)
    assert (trained.done == 4).all() and (trained.diverged == 0).all()
    assert set(summary.metric) == {"test MSE (standardised targets)"}
    for name in ("edf.svg", "trajectories.svg"):
        assert (res / "figures" / "diabetes" / name).stat().st_size > 1000
    assert "Diabetes" in (res / "analysis" / "diabetes.html").read_text()
    metrics = json.loads((res / "runs" / "diabetes" / "Ours_LR_Momentum" / "seed2" / "metrics.json").read_text())
    assert metrics["weight_steps"] == 40 and metrics["population_size"] == 4   # the seeds batched by torch.func
    assert metrics["settings"]["model"] == "diabetes:network" and metrics["family"] == "user"
    drawn = pd.read_csv(res / "sweep" / "diabetes" / "initialisations.tsv", sep="\t").set_index("seed")
    assert metrics["init_lr"] == pytest.approx(drawn.loc[2, "lr"])
    # the prepared data are the user's function's splits, as given
    sys.path.insert(0, str(ROOT / "examples" / "diabetes"))
    try:
        import diabetes
        (x, y), _, _ = diabetes.splits()
    finally:
        sys.path.remove(str(ROOT / "examples" / "diabetes"))
    prepared = torch.load(example_copy / "results" / "data" / "diabetes" / "prepared.pt", weights_only=True)
    assert torch.equal(prepared["user_splits"]["train"][0], x)
    assert torch.equal(prepared["user_splits"]["train"][1], y.unsqueeze(1))


@pytest.mark.parametrize("model,message", [
    ("diabetes:netwrk", "key 'model': module 'diabetes' has no function 'netwrk' (diabetes:netwrk)"),
    ("diabetis:network", "key 'model': cannot import module 'diabetis' of diabetis:network "
                         "(ModuleNotFoundError: No module named 'diabetis'"),
])
def test_a_bad_function_name_stops_the_dry_run_naming_the_key(example_copy, model, message):
    path = example_copy / "examples" / "diabetes" / "datasets" / "diabetes.yaml"
    path.write_text(path.read_text().replace("model: diabetes:network", f"model: {model}"))
    proc = run(example_copy, [sys.executable, "-m", "snakemake", "-n", "--configfile",
                              "examples/diabetes/study.yaml"])
    assert proc.returncode != 0
    lines = [line for line in proc.stdout.splitlines() if message in line]
    assert len(lines) == 1, proc.stdout[-3000:]
    assert lines[0].startswith("config key 'datasets.0' in examples/diabetes/study.yaml: ")
    error = proc.stdout[proc.stdout.index("StudyConfigError"):]
    assert len(error.splitlines()) <= 8, error
