"""A population trained with its training steps through torch.compile (Population.compile) ends where the eager
one ends, to float tolerance: the weights, the hyperparameters and every final metric."""

import math

import pytest
import torch

from onepass.data import Dataset
from onepass.population import Member, Population
from onepass.settings import load_settings

MEMBERS = [Member(0, 0.05, 1e-3, 0.5), Member(3, 0.02, 1e-4, 0.8)]


def dataset() -> Dataset:
    g = torch.Generator().manual_seed(5)
    w = torch.tensor([1.0, -2.0, 0.5, 0.3])

    def rows(n):
        x = torch.randn(n, 4, generator=g)
        return x, (torch.tanh(x @ w) + 0.1 * torch.randn(n, generator=g)).unsqueeze(1)

    return Dataset(name="tiny", family="uci", task="regression", train=rows(40), valid=rows(20), test=rows(20),
                   input_shape=(4,), num_classes=None, vocab_size=None,
                   normalisers={"y_mean": torch.tensor(0.0), "y_std": torch.tensor(1.0)})


def trained(algorithm: str, compiled: bool) -> Population:
    settings = load_settings("uci_energy", algorithm, {"hidden_units": 8, "batch_size": 10, "update_interval": 3,
                                                       "hyperparameter_steps": 4})
    population = Population(settings, dataset(), MEMBERS, "cpu")
    if compiled:
        population.compile()
    for _ in range(settings["hyperparameter_steps"]):
        population.step()
    return population


@pytest.mark.parametrize("algorithm", ["Random", "Ours_LR_Momentum"])
def test_compiled_training_ends_where_eager_training_ends(one_torch_thread, algorithm):
    eager, compiled = trained(algorithm, False), trained(algorithm, True)
    assert compiled.compiled_loss is not None and eager.compiled_loss is None
    for a, b in zip(eager.params, compiled.params):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for name, values in eager.hyperparameters().items():
        assert compiled.hyperparameters()[name] == pytest.approx(values, rel=1e-5)
    for mine, reference in zip(compiled.results(), eager.results()):
        for key in ("train_loss", "valid_loss", "test_loss", "test_metric"):
            assert math.isfinite(reference[key])
            assert mine[key] == pytest.approx(reference[key], rel=1e-5)
    assert eager.hyperparameters()["lr"] != [m.lr for m in MEMBERS] or algorithm == "Random"


def test_compile_is_refused_where_the_model_is_not_a_plain_mlp():
    settings = load_settings("uci_energy", "Random", {"model": "mlp_bn", "hidden_units": 8})
    with pytest.raises(ValueError, match="plain MLP"):
        Population(settings, dataset(), MEMBERS[:1], "cpu").compile()
