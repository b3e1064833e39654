"""The engine on a CUDA GPU: every algorithm on every model, checkpoints across devices, CPU/CUDA agreement.

Marked ``cuda`` and skipped without a GPU; on a GPU machine run ``python -m pytest -m cuda``. Datasets: UCI
Energy and Fashion-MNIST from the offline mirrors (conftest), Penn Treebank and CIFAR-10 generated in their real
formats; the ResNet-18 cases skip where torchvision does not import.
"""

import json
import math
import shutil

import pytest
import torch

from onepass import catalog, data
from onepass.population import Member, Population
from onepass.problems import to_device
from onepass.settings import load_settings
from onepass.train import load_checkpoint, run, train

ALGORITHMS = [n for n, a in catalog.algorithms().items() if not a.is_search and not a.is_derived]
CUDA_PROBLEM = None if torch.cuda.is_available() else "torch.cuda.is_available() is False"
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(CUDA_PROBLEM is not None, reason=f"needs a CUDA GPU ({CUDA_PROBLEM})")]

TINY_LSTM = {"hidden_units": 12, "embedding_dim": 8, "batch_size": 4, "bptt": 6, "eval_batch_size": 3}
# case: (dataset, its overrides, initial learning rate, members of a population)
CASES = {
    "uci_energy": ("uci_energy", {}, 1e-3, 3),
    "fashion_mnist": ("fashion_mnist", {}, 0.01, 3),
    "fashion_mnist_bn": ("fashion_mnist", {"model": "mlp_bn"}, 0.01, 3),
    "penn_treebank": ("penn_treebank", TINY_LSTM, 0.5, 1),
    "cifar10": ("cifar10", {"batch_size": 8, "eval_batch_size": 50}, 0.01, 1),
}


@pytest.fixture(scope="module")
def generated_data(tmp_path_factory):
    """A function: Penn Treebank or CIFAR-10 prepared from generated files, loaded (once each)."""
    from test_train import cifar_files, ptb_files

    loaded = {}

    def get(name):
        if name not in loaded:
            tmp = tmp_path_factory.mktemp(name)
            mirror, table = (ptb_files if name == "penn_treebank" else cifar_files)(tmp)
            data.prepare(name, tmp / "data", mirrors=[mirror], sources=table)
            loaded[name] = data.load(name, tmp / "data")
        return loaded[name]

    return get


def dataset_of(case: str, request, generated_data):
    """The loaded dataset of a case (mirrors as conftest finds them; generated text and images)."""
    name = CASES[case][0]
    if name == "cifar10":
        from test_resnet import torchvision_problem
        if torchvision_problem():
            pytest.skip(f"ResNet-18 needs a torchvision matching torch {torch.__version__} "
                        f"({torchvision_problem()})")
    if name in ("penn_treebank", "cifar10"):
        return generated_data(name)
    fixture = "uci_energy_dir" if name == "uci_energy" else "fashion_mnist_data"
    return data.load(name, request.getfixturevalue(fixture))


def few_steps(algorithm: str) -> dict:
    """Three hyperparameter steps of four weight steps each (Baydin: one)."""
    settings = {"hyperparameter_steps": 3, "log_every": 1}
    if algorithm != "Baydin":
        settings.update(update_interval=4, unroll_steps=4)
    return settings


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_trains_on_cuda(algorithm, case, request, generated_data, tmp_path):
    name, overrides, lr, n = CASES[case]
    ds = dataset_of(case, request, generated_data)
    group = [Member(seed, lr * 2 ** seed, 1e-4, 0.5) for seed in range(n)]
    metrics = train(name, algorithm, group, None, [tmp_path / f"seed{m.seed}" for m in group], tmp_path / "ck",
                    device="cuda", overrides={**overrides, **few_steps(algorithm)}, data=ds)
    optimised = load_settings(name, algorithm)["optimise"]
    for m in metrics:
        assert m["device"] == "cuda" and not m["diverged"] and m["population_size"] == n
        assert all(math.isfinite(m[k]) for k in ("train_loss", "valid_loss", "test_loss", "test_metric"))
        assert m["hyperparameter_steps"] == 3 and m["weight_steps"] == (3 if algorithm == "Baydin" else 12)
        for hyper in ("lr", "weight_decay", "momentum"):
            changed = m[f"final_{hyper}"] != pytest.approx(m[f"init_{hyper}"], rel=1e-5)
            assert changed == (hyper in optimised or (algorithm == "Random_SteppedLR" and hyper == "lr")), hyper
    if n > 1:   # members differ: each trained from its own initialisation and hyperparameters
        assert len({m["test_loss"] for m in metrics}) == n


# ---- checkpoints across devices -------------------------------------------------------------------------
SHORT = {"hyperparameter_steps": 6, "checkpoint_every": 3, "log_every": 20}


class Crash(Exception):
    """Stands for a job killed after its checkpoint at hyperparameter step 3."""


def energy(out, device, data_dir, algorithm="Ours_LR_Momentum", **extra):
    return run("uci_energy", algorithm, 0, 1e-3, 1e-4, 0.5, data_dir, out, device=device,
               overrides={**SHORT, **extra})


def same_run(a: dict, b: dict, rel: float) -> None:
    """Two metrics records of the same run agree to ``rel`` (times and device aside)."""
    for key in ("test_metric", "valid_loss", "train_loss", "final_lr", "final_weight_decay", "final_momentum"):
        assert a[key] == pytest.approx(b[key], rel=rel), key
    for key in ("weight_steps", "hyperparameter_steps", "diverged", "seed", "settings"):
        assert a[key] == b[key], key


def test_checkpoint_written_on_cuda_resumes_on_cuda_and_on_the_cpu(uci_energy_dir, tmp_path, monkeypatch,
                                                                  capsys):
    reference = energy(tmp_path / "ref", "cuda", uci_energy_dir)
    step = Population.step

    def crash_after_the_checkpoint(self):
        if self.hyper_step == 4:
            raise Crash
        return step(self)

    monkeypatch.setattr(Population, "step", crash_after_the_checkpoint)
    with pytest.raises(Crash):
        energy(tmp_path / "run", "cuda", uci_energy_dir)
    monkeypatch.setattr(Population, "step", step)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    (tmp_path / "cpu").mkdir()
    shutil.copy(checkpoint, tmp_path / "cpu" / "checkpoint.pt")

    # read on the CPU: every tensor mapped there
    signature = torch.load(checkpoint, map_location="cpu", weights_only=True)["signature"]
    state = load_checkpoint(checkpoint, signature, torch.device("cpu"))
    tensors = [t for t in torch.utils._pytree.tree_leaves(state) if isinstance(t, torch.Tensor)]
    assert state["population"]["hyper_step"] == 3 and tensors and {t.device.type for t in tensors} == {"cpu"}
    assert {t.device.type for t in state["population"]["params"]} == {"cpu"}

    # resumed on CUDA: the uninterrupted run's results
    resumed = energy(tmp_path / "run", "cuda", uci_energy_dir)
    assert "resumed from" in capsys.readouterr().err
    same_run(resumed, reference, rel=1e-6)
    assert not checkpoint.exists()
    # resumed on the CPU: the same run to float32 round-off, finished there
    on_cpu = energy(tmp_path / "cpu", "cpu", uci_energy_dir)
    assert "at hyperparameter step 3" in capsys.readouterr().err
    assert on_cpu["device"] == "cpu" and reference["device"] == "cuda"
    same_run(on_cpu, reference, rel=2e-4)
    written = json.loads((tmp_path / "cpu" / "metrics.json").read_text())
    assert written["weight_steps"] == 60


# ---- CUDA and CPU agree -----------------------------------------------------------------------------------
@pytest.fixture
def full_float32():
    """IEEE float32 on the GPU (no TF32 in cuBLAS or cuDNN), so that CUDA and CPU differ by round-off only."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("algorithm", ["Random", "Ours_LR_Momentum", "DiffThroughOpt"])
def test_cuda_and_cpu_runs_of_a_seed_agree(algorithm, uci_energy_dir, tmp_path, full_float32):
    group = [Member(seed, 10 ** (-3.5 + 0.5 * seed), 10 ** (-5 + seed), 0.2 + 0.2 * seed) for seed in range(3)]
    settings = {"weight_steps": 40, "log_every": 20}
    runs = {device: train("uci_energy", algorithm, group, uci_energy_dir,
                          [tmp_path / device / str(m.seed) for m in group], tmp_path / device / "ck",
                          device=device, overrides=settings)
            for device in ("cpu", "cuda")}
    for on_cpu, on_cuda in zip(runs["cpu"], runs["cuda"]):
        assert on_cpu["device"] == "cpu" and on_cuda["device"] == "cuda"
        same_run(on_cuda, on_cpu, rel=2e-4)


@pytest.mark.parametrize("algorithm", ["Ours_LR_Momentum", "DiffThroughOpt"])
def test_lstm_hypergradient_on_cuda_equals_the_cpu_one(algorithm, generated_data, full_float32):
    """cuDNN's LSTM has no double backward: the engine turns cuDNN off inside hypergradients on CUDA. The
    hypergradient after a plain step (cuDNN's kernels on CUDA) equals the CPU's to float32 round-off."""
    ptb = generated_data("penn_treebank")
    settings = load_settings("penn_treebank", algorithm, {**TINY_LSTM, "update_interval": 2, "unroll_steps": 2})
    grads = {}
    for device in ("cpu", "cuda"):
        population = Population(settings, to_device(ptb, torch.device(device)), [Member(0, 0.5, 1e-3, 0.5)],
                                torch.device(device))
        got = grads[device] = {}
        step = population.hypers.step
        population.hypers.step = lambda g, frozen=None, got=got, step=step: (got.update(g), step(g, frozen))
        population.hyperparameter_step()
        assert population.weight_step == 2 and torch.isfinite(population.last_loss).all()
    to_device(ptb, torch.device("cpu"))
    assert set(grads["cuda"]) == set(settings["optimise"]) == {"lr", "weight_decay", "momentum"}
    for name in settings["optimise"]:
        cpu, cuda = grads["cpu"][name], grads["cuda"][name]
        assert cuda.device.type == "cuda" and cpu.abs().min() > 0, name
        torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-3, atol=1e-7, msg=name)
