"""CIFAR-10's real ResNet-18 (torchvision) in the population engine, on generated CIFAR-format data.

torchvision must match torch: these tests are marked ``torchvision`` and skip where it does not import (the
main .venv's CPU torch has no matching torchvision on PyPI). CI runs them in a second environment with a
matching pair (.ci/run: .venv-vision), where ONEPASS_REQUIRE_TORCHVISION=1 turns the skip into a failure.
"""

import dataclasses
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from onepass import catalog, data
from onepass.models import VMAPPABLE, build_model
from onepass.population import Member, Population
from onepass.settings import load_settings
from onepass.train import run, train

ALGORITHMS = [n for n, a in catalog.algorithms().items() if not a.is_search and not a.is_derived]


def torchvision_problem() -> str | None:
    """Why torchvision cannot be used beside this torch, or None if it can."""
    try:
        import torchvision  # noqa: F401
    except Exception as err:  # ImportError, or a torchvision built for another torch
        return f"{type(err).__name__}: {str(err)[:100]}"
    return None


PROBLEM = torchvision_problem()
if PROBLEM and os.environ.get("ONEPASS_REQUIRE_TORCHVISION") == "1":
    raise RuntimeError(f"ONEPASS_REQUIRE_TORCHVISION=1 but torchvision does not import ({PROBLEM})")
pytestmark = [
    pytest.mark.torchvision,
    pytest.mark.skipif(PROBLEM is not None, reason=f"ResNet-18 needs a torchvision matching torch "
                       f"{torch.__version__} ({PROBLEM}); CI runs these tests in .venv-vision"),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """One torch thread: two on a busy 2-core machine crawl."""


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """Generated CIFAR-10 in the real format (90 training, 10 validation, 20 test images), prepared and
    loaded."""
    from test_data import cifar_setup

    tmp = tmp_path_factory.mktemp("cifar")
    mirror, table, _ = cifar_setup(tmp)
    data.prepare("cifar10", tmp / "data", mirrors=[mirror], sources=table)
    return data.load("cifar10", tmp / "data")


def test_the_model_is_torchvisions_resnet18_in_populations_of_one():
    import torchvision

    settings = load_settings("cifar10", "Random")
    net = build_model(settings, (3, 32, 32), 10)
    assert isinstance(net, torchvision.models.ResNet) and settings["model"] == "resnet18"
    assert sum(p.numel() for p in net.parameters()) == 11_181_642   # ResNet-18 with 10 classes
    assert "resnet18" not in VMAPPABLE


def small(algorithm: str) -> dict:
    """Two hyperparameter steps of two weight steps each (Baydin: one), batches of four images."""
    settings = {"hyperparameter_steps": 2, "batch_size": 4, "eval_batch_size": 50, "log_every": 1}
    if algorithm != "Baydin":
        settings.update(update_interval=2, unroll_steps=2)
    return settings


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_trains_resnet18(algorithm, cifar, tmp_path):
    m = run("cifar10", algorithm, 0, 0.01, 1e-4, 0.5, None, tmp_path / "run", overrides=small(algorithm),
            data=cifar)
    assert not m["diverged"] and m["population_size"] == 1 and m["settings"]["model"] == "resnet18"
    assert all(math.isfinite(m[k]) for k in ("train_loss", "valid_loss", "test_loss"))
    assert 0 <= m["test_accuracy"] <= 1 and m["test_metric"] == m["test_loss"]
    assert m["hyperparameter_steps"] == 2 and m["weight_steps"] == (2 if algorithm == "Baydin" else 4)
    settings = load_settings("cifar10", algorithm)
    for name in ("lr", "weight_decay", "momentum"):
        changed = m[f"final_{name}"] != pytest.approx(m[f"init_{name}"], rel=1e-5)
        stepped = algorithm == "Random_SteppedLR" and name == "lr"
        assert changed == (name in settings["optimise"] or stepped), name
    header, *rows = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(rows) == 3   # before training and after each hyperparameter step


def test_two_members_are_trained_as_two_populations_of_one(cifar, tmp_path):
    members = [Member(0, 0.01, 1e-4, 0.5), Member(1, 0.01, 1e-4, 0.5)]
    out = [tmp_path / "a", tmp_path / "b"]
    metrics = train("cifar10", "Ours_LR", members, None, out, tmp_path / "ck", overrides=small("Ours_LR"),
                    data=cifar)
    assert [m["population_size"] for m in metrics] == [1, 1]
    assert metrics[0]["test_loss"] != metrics[1]["test_loss"]


# ---- the Neumann hypergradient through the ResNet against finite differences, in float64 ---------------
@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_neumann_hypergradient_through_resnet18_equals_finite_differences(cifar, float64):
    """With one Neumann term, the engine's hypergradient after a plain step is the exact derivative of the
    validation loss after the next SGD step, the weights and momentum before that step held fixed (batch
    statistics in BatchNorm, as the hypergradient code uses). The reference is written here, independently,
    on torchvision's network, and differentiated by central differences."""
    from torchvision.models import resnet18

    tiny = dataclasses.replace(cifar, train=(cifar.train[0][:8].double(), cifar.train[1][:8]),
                               valid=(cifar.valid[0][:6].double(), cifar.valid[1][:6]))
    settings = load_settings("cifar10", "Ours_LR_Momentum", {"batch_size": None, "update_interval": 2,
                                                              "neumann_terms": 1, "hyperparameter_steps": 1})
    population = Population(settings, tiny, [Member(0, 0.05, 1e-2, 0.5)], torch.device("cpu"))
    h = [population.hypers.tree()[k].item() for k in ("lr", "weight_decay", "momentum")]  # float64, as the weights
    initial = [p[0].detach().clone() for p in population.params]
    got = {}
    step = population.hypers.step
    population.hypers.step = lambda grads, frozen=None: (got.update(grads), step(grads, frozen))
    population.hyperparameter_step()

    torch.manual_seed(0)
    net = resnet18(num_classes=10)   # float64: the network the engine builds for seed 0
    names = [n for n, _ in net.named_parameters()]
    w0 = [p.detach() for p in net.parameters()]
    buffers = dict(net.named_buffers())
    assert all(torch.equal(a, b) for a, b in zip(initial, w0))   # the engine's member starts from these

    def loss(weights, split):
        x, y = getattr(tiny, split)
        state = {**dict(zip(names, weights)), **{k: b.clone() for k, b in buffers.items()}}
        return F.cross_entropy(functional_call(net, state, (x,)), y)   # train mode: batch statistics

    def grad(weights):
        w = [t.detach().requires_grad_(True) for t in weights]
        return [g.detach() for g in torch.autograd.grad(loss(w, "train"), w)]

    def natural(a, c, m):
        return 10.0 ** a, 10.0 ** c, torch.sigmoid(m)

    # the plain step, with the hyperparameters the engine computes (in the population's dtype); then the step
    # differentiated
    lr, wd, mom = natural(*(torch.tensor(v, dtype=torch.float64) for v in h))
    g0 = grad(w0)
    b1 = [g + wd * w for g, w in zip(g0, w0)]
    w1 = [w - lr * b for w, b in zip(w0, b1)]
    g1 = grad(w1)

    @torch.no_grad()
    def validation_after_step(a, c, m):
        lr, wd, mom = natural(torch.tensor(a), torch.tensor(c), torch.tensor(m))
        return loss([w - lr * (mom * b + g + wd * w) for w, b, g in zip(w1, b1, g1)], "valid").item()

    # around the engine's hyperparameters exactly (the loss is so curved in lr that a rounding of the point
    # shows); a small step, as ReLUs and max-pooling make the loss only piecewise smooth
    point = [math.log10(lr.item()), math.log10(wd.item()), math.log(mom.item() / (1 - mom.item()))]
    eps = 1e-6
    for i, name in enumerate(("lr", "weight_decay", "momentum")):
        up, down = list(point), list(point)
        up[i] += eps
        down[i] -= eps
        expected = (validation_after_step(*up) - validation_after_step(*down)) / (2 * eps)
        assert abs(expected) > 1e-6, name   # each hyperparameter matters: a real check
        assert got[name].item() == pytest.approx(expected, rel=1e-6), name
