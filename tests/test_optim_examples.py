"""The optimiser's examples run as written: examples/optimiser.py (the README quotes it verbatim), the
dict-batch model and the plain loop with parameter groups."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
README_BLOCK = re.compile(r"<!-- optimiser example: examples/optimiser\.py -->\n```python\n(.*?)```", re.S)


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    yield


def run_example(name: str) -> dict:
    namespace = {"__name__": "__main__"}
    path = ROOT / "examples" / name
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace


def test_readme_example_is_the_example_file_and_runs(capsys):
    """The README's optimiser example is examples/optimiser.py, verbatim, and runs as written: the
    hyperparameters it prints are the tuned ones, and its model beats the mean predictor on held-out data."""
    block = README_BLOCK.search((ROOT / "README.md").read_text())
    assert block, "README.md has no optimiser example block"
    assert block.group(1) == (ROOT / "examples" / "optimiser.py").read_text()
    namespace = run_example("optimiser.py")
    out = capsys.readouterr().out
    assert re.search(r"lr \S+ weight decay \S+ momentum \S+", out), out
    opt, model, (x_test, y_test) = namespace["opt"], namespace["model"], namespace["test"]
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.hyper_step == opt.weight_step // 10 and opt.hyperparameters[0]["lr"] != 0.01
    with torch.no_grad():
        mse = F.mse_loss(model(x_test), y_test).item()
    assert mse < 0.6 * F.mse_loss(torch.full_like(y_test, y_test.mean()), y_test).item()


def test_the_dict_batch_example_trains(capsys):
    namespace = run_example("optimiser_dict_batch.py")
    assert "validation MSE" in capsys.readouterr().out
    assert namespace["loss_of"](namespace["model"], namespace["valid"]).item() < 0.2 * namespace["first"]
    assert namespace["opt"].hyper_step == 40


def test_the_parameter_groups_example_keeps_biases_free_of_weight_decay(capsys):
    namespace = run_example("optimiser_groups.py")
    out = capsys.readouterr().out
    assert "group 1: lr" in out and "300 steps exported" in out
    opt = namespace["opt"]
    decay, no_decay = opt.hyperparameters
    assert no_decay["weight_decay"] == 0.0 and opt.param_groups[1]["weight_decay"] == 0.0
    assert decay["weight_decay"] != pytest.approx(1e-3, rel=1e-2) and decay["lr"] != pytest.approx(no_decay["lr"])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0125)   # StepLR halved it at steps 150 and 300
    assert namespace["loss_on"](namespace["valid"], slice(None)).item() < 0.5 * namespace["valid"][1].var().item()
    assert len(namespace["schedule"]) == 300
