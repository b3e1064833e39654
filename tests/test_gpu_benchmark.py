"""benchmarks/gpu.py, the GPU check of issue 17, run as on the GPU machine but on the CPU at toy size (--tiny),
with one part given no time so that it must stop after its first step and say so."""

import importlib.util
import json
import math
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu.py"
PARTS = {"penn_treebank_lstm", "cifar10_resnet18", "uci_energy_population", "fashion_mnist_population",
         "compiled_populations", "group_size", "cuda_tests"}
ALGORITHMS = {"Random", "Ours_LR_Momentum", "DiffThroughOpt"}


def gpu_module():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def strict(text: str):
    """JSON without NaN or infinities (which json.loads would otherwise accept)."""
    def refuse(name):
        raise ValueError(f"non-finite number {name} in gpu.json")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--tiny", "--threads", "1", "--out", str(out),
                           "--part-budget", "uci_energy_population=0"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return strict((out / "gpu.json").read_text()), (out / "gpu.log").read_text()


def test_every_part_ran_and_the_json_is_complete(tiny_run):
    doc, log = tiny_run
    assert set(doc["parts"]) == PARTS
    assert doc["finished"] and doc["mode"] == {"device": "cpu", "tiny": True, "budget_s": 420.0}
    assert doc["data"]["uci_energy"].startswith("generated") and doc["data"]["fashion_mnist"].startswith("generated")
    assert "reduce-overhead" in doc["compilation"]["torch_compile"]
    assert "---- pytest -m cuda ----" in log and "done in" in log
    for part in PARTS:
        assert doc["parts"][part]["elapsed_s"] >= 0 and doc["parts"][part]["host_peak_rss_mb"] > 100


def test_large_models_time_every_algorithm(tiny_run):
    doc, _ = tiny_run
    lstm = doc["parts"]["penn_treebank_lstm"]
    assert lstm["status"] == "done" and set(lstm["algorithms"]) == ALGORITHMS
    for row in lstm["algorithms"].values():
        assert row["status"] == "done" and row["hyper_steps_timed"] == 2 and row["weight_steps_per_hyper_step"] == 10
        assert row["seconds_per_hyper_step"] > 0 and row["setup_and_first_step_s"] > 0 and row["peak_mb"] > 0
        # the paper's Penn Treebank run: 2391 hyperparameter steps; 50 initialisations in the study
        assert row["projected_paper_run_hours"] == pytest.approx(row["seconds_per_hyper_step"] * 2391 / 3600,
                                                                 abs=1e-4)
        assert row["projected_study_hours"] == pytest.approx(50 * row["projected_paper_run_hours"], abs=1e-2)
    resnet = doc["parts"]["cifar10_resnet18"]
    if "not importable" in doc["environment"]["torchvision"]:
        assert resnet["status"] == "skipped" and "torchvision" in resnet["reason"]
    else:
        assert resnet["status"] == "done" and set(resnet["algorithms"]) == ALGORITHMS
        assert all(r["seconds_per_hyper_step"] > 0 for r in resnet["algorithms"].values())


def test_a_part_over_its_budget_stops_after_its_first_step(tiny_run):
    doc, _ = tiny_run
    part = doc["parts"]["uci_energy_population"]
    assert part["status"] == "stopped" and part["budget_s"] == 0 and part["members"] == 12
    for row in part["algorithms"].values():
        assert row["status"] == "stopped"
        assert (row["hyper_steps_done"], row["weight_steps_done"]) == (1, 10)
        assert (row["hyper_steps_planned"], row["weight_steps_planned"]) == (4, 40)
        assert 0 < row["train_s"] <= row["wall_s"]
        assert row["per_member_step_ms"] == pytest.approx(1e3 * row["train_s"] / (12 * 10), rel=0.05)


def test_populations_beside_the_cpu(tiny_run):
    doc, _ = tiny_run
    part = doc["parts"]["fashion_mnist_population"]
    assert part["status"] == "done" and part["members"] == 6 and set(part["algorithms"]) == ALGORITHMS
    for row in part["algorithms"].values():
        assert row["status"] == "done" and row["weight_steps_done"] == 30 and row["hyper_steps_done"] == 3
        assert row["diverged_members"] == 0 and row["peak_mb"] > 0 and row["plan"]["groups"] == [6]
        ref = row["cpu_reference"]
        assert (ref["threads"], ref["members"], ref["weight_steps"]) == (1, 4, 20) and ref["per_member_step_ms"] > 0
        assert row["speedup_over_cpu"] == pytest.approx(ref["per_member_step_ms"] / row["per_member_step_ms"],
                                                        rel=1e-2)


def test_compiled_populations_against_eager(tiny_run):
    """Random and Ours on both populations, eager then through torch.compile, for the same steps: both timed,
    the compilation counted, and the two runs' final weights the same to float round-off."""
    doc, _ = tiny_run
    part = doc["parts"]["compiled_populations"]
    assert part["status"] == "done" and part["backend"] == "aot_eager" and part["mode"] is None
    assert set(part["runs"]) == {f"{d}/{a}" for d in ("uci_energy", "fashion_mnist")
                                 for a in ("Random", "Ours_LR_Momentum")}
    for key, row in part["runs"].items():
        assert row["status"] == "done" and row["hyper_steps"] == 2 and row["weight_steps"] == 20, key
        assert row["eager_per_member_step_ms"] > 0 and row["compiled_per_member_step_ms"] > 0
        assert row["compiled_over_eager"] == pytest.approx(
            row["compiled_per_member_step_ms"] / row["eager_per_member_step_ms"], rel=1e-2)
        assert row["compile_and_first_step_s"] > 0
        assert 0 <= row["max_weight_difference"] < 1e-4 and 0 <= row["max_train_loss_difference"] < 1e-4


def test_group_sizes_against_the_measured_peaks(tiny_run):
    doc, _ = tiny_run
    checks = doc["parts"]["group_size"]["checks"]
    assert checks and set(checks) <= {f"{d}/{a}" for d in ("uci_energy", "fashion_mnist") for a in ALGORITHMS}
    for key, check in checks.items():
        dataset, algorithm = key.split("/")
        row = doc["parts"][f"{dataset}_population"]["algorithms"][algorithm]
        assert sum(check["planned_groups"]) == check["members"] == {"uci_energy": 12, "fashion_mnist": 6}[dataset]
        fits = max(1, math.floor((check["budget_mb"] - row["measured_base_mb"]) / check["measured_member_mb"]))
        assert check["members_fitting_measured"] == fits
        assert check["largest_planned_group_fits"] == (max(check["planned_groups"]) <= fits)


def test_cuda_tests_counted(tiny_run):
    doc, _ = tiny_run
    part = doc["parts"]["cuda_tests"]
    assert part["status"] == "done" and part["returncode"] == 0 and part["selected"] > 0
    if not torch.cuda.is_available():
        counts = part["counts"]
        assert counts["skipped"] == part["finished_tests"] == part["selected"] and counts["passed"] == 0
        assert not part["all_passed"]
        assert sum(part["skip_reasons"].values()) == part["selected"]
        assert all("CUDA" in reason for reason in part["skip_reasons"])


def test_pytest_output_parsed():
    output = """collected 9 items / 4 deselected / 5 selected

tests/test_cuda.py::test_a[x-1] PASSED                                   [ 20%]
tests/test_cuda.py::test_a[x-2] FAILED                                   [ 40%]
tests/test_cuda.py::test_b PASSED                                        [ 60%]
tests/test_cuda.py::test_c SKIPPED (no mirror)                           [ 80%]
tests/test_cuda.py::test_d ERROR                                         [100%]
=========================== short test summary info ============================
SKIPPED [1] tests/test_cuda.py:40: no mirror holds uci_energy/data.txt
FAILED tests/test_cuda.py::test_a[x-2] - AssertionError
==== 1 failed, 2 passed, 1 skipped, 4 deselected, 1 error in 12.31s ====
"""
    parsed = gpu_module().parse_pytest(output)
    assert parsed["counts"] == {"passed": 2, "failed": 1, "skipped": 1, "error": 1, "xfailed": 0, "xpassed": 0}
    assert parsed["finished_tests"] == 5 and parsed["selected"] == 5
    assert parsed["failed_tests"] == ["tests/test_cuda.py::test_a[x-2]", "tests/test_cuda.py::test_d"]
    assert parsed["summary"] == "1 failed, 2 passed, 1 skipped, 4 deselected, 1 error in 12.31s"
    assert parsed["skip_reasons"] == {"no mirror holds uci_energy/data.txt": 1}


def test_unknown_part_budget_is_a_one_line_error(capsys, tmp_path):
    with pytest.raises(SystemExit):
        gpu_module().main(["--cpu", "--out", str(tmp_path), "--part-budget", "lstm=3"])
    assert "unknown part 'lstm'" in capsys.readouterr().err
    assert not (tmp_path / "gpu.json").exists()


def test_a_step_past_the_hard_limit_is_interrupted():
    gpu = gpu_module()
    start = time.perf_counter()
    with pytest.raises(gpu.PartTimeout):
        with gpu.hard_limit(0.2):
            while time.perf_counter() - start < 5:
                pass
    assert time.perf_counter() - start < 2


def test_the_json_is_rewritten_with_each_part(tmp_path):
    gpu = gpu_module()
    report = gpu.Report(tmp_path, {"schema": 1})
    result = {"status": "running", "loss": float("nan")}
    report.part("one", result)
    assert strict((tmp_path / "gpu.json").read_text())["parts"]["one"] == {"status": "running", "loss": None}
    result["status"] = "done"   # a part's progress reaches the file at the next write
    report.write()
    assert strict((tmp_path / "gpu.json").read_text())["parts"]["one"]["status"] == "done"


def test_pytest_past_its_budget_is_killed_and_counted_as_stopped(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--tiny", "--out", str(tmp_path), "--parts",
                           "cuda_tests", "--part-budget", "cuda_tests=0.5"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    part = strict((tmp_path / "gpu.json").read_text())["parts"]["cuda_tests"]
    assert set(strict((tmp_path / "gpu.json").read_text())["parts"]) == {"cuda_tests"}
    assert part["status"] == "stopped" and part["returncode"] is None and not part["all_passed"]
    assert part["elapsed_s"] < 30
