"""onepass.OnePassSGD, the optimiser for one's own training loop: it is the engine's population of one (the
same seed, settings and batches give the engine's weights and hyperparameters, algorithm by algorithm),
plain SGD equals torch.optim.SGD, its state resumes exactly, and the README's example runs as written."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from onepass import OnePassSGD, data
from onepass.batches import BatchStream
from onepass.models import MLP
from onepass.population import VALID_SEED_OFFSET, Member, Population
from onepass.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = ["Random", "Lorraine", "Baydin", "Ours_LR", "Ours_LR_Momentum", "Ours_HDLR_Momentum",
              "DiffThroughOpt"]
SEED, LR, WD, MOM = 3, 0.05, 1e-3, 0.6


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    yield


def toy_dataset() -> data.Dataset:
    """A small regression problem laid out as a prepared UCI set (8 features, 1 target)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 8, generator=g)
    y = (x @ torch.randn(8, 1, generator=g)).tanh() + 0.1 * torch.randn(120, 1, generator=g)
    return data.Dataset(name="uci_energy", family="uci", task="regression", train=(x[:80], y[:80]),
                        valid=(x[80:100], y[80:100]), test=(x[100:], y[100:]), input_shape=(8,), num_classes=None,
                        vocab_size=None, normalisers={"y_mean": torch.zeros(()), "y_std": torch.ones(())})


def run_settings(algorithm: str) -> dict:
    return load_settings("uci_energy", algorithm, {"batch_size": 16, "hidden_units": 8, "weight_steps": 60})


def engine_run(algorithm: str, ds):
    """The engine's population of one for SEED: its final weights and hyperparameters."""
    settings = run_settings(algorithm)
    pop = Population(settings, ds, [Member(SEED, LR, WD, MOM)], "cpu")
    for _ in range(settings["hyperparameter_steps"]):
        pop.step()
    return [p.detach()[0] for p in pop.params], {k: v[0] for k, v in pop.hyperparameters().items()}, settings


def optimiser_run(algorithm: str, ds, settings: dict):
    """The same run through OnePassSGD: the model built as the engine builds member SEED, the batches of the
    engine's streams for SEED given one by one."""
    torch.manual_seed(SEED)
    model = MLP(8, settings["hidden_units"], 1)
    opt = OnePassSGD(model, lr=LR, weight_decay=WD, momentum=MOM, algorithm=algorithm)
    parts = [getattr(ds, s) for s in settings["train_on"].split("+")]
    train = BatchStream(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), 16, [SEED])
    valid = BatchStream(*ds.valid, 16, [SEED + VALID_SEED_OFFSET])
    for _ in range(settings["hyperparameter_steps"] * settings["update_interval"]):
        x, y = train.next()
        val = None
        if opt.hyper_step_due:
            vx, vy = valid.next()
            val = (vx[0], vy[0])
        opt.step(F.mse_loss, (x[0], y[0]), val_batch=val)
    return model, opt


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_optimiser_is_the_engines_population_of_one(algorithm):
    ds = toy_dataset()
    weights, hypers, settings = engine_run(algorithm, ds)
    model, opt = optimiser_run(algorithm, ds, settings)
    assert opt.weight_step == 60 and opt.hyper_step == settings["hyperparameter_steps"]
    for w, p in zip(weights, model.parameters()):
        torch.testing.assert_close(p.detach(), w, rtol=1e-5, atol=1e-6)   # float32 round-off
    got = opt.hyperparameters
    for name in ("lr", "weight_decay", "momentum"):
        assert got[name] == pytest.approx(hypers[name], rel=1e-5)
    initial = {"lr": LR, "weight_decay": WD, "momentum": MOM}
    for name in ("lr", "weight_decay", "momentum"):  # tuned exactly where the algorithm's YAML says
        moved = abs(got[name] - initial[name]) > 1e-6 * initial[name]
        assert moved == (name in settings["optimise"]), (name, got[name])


def test_plain_sgd_is_torch_sgd():
    """Random (fixed hyperparameters) is torch.optim.SGD with the same lr, momentum and weight decay."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g)
    torch.manual_seed(0)
    ours = MLP(8, 6, 1)
    torch.manual_seed(0)
    ref = MLP(8, 6, 1)
    opt = OnePassSGD(ours, lr=0.1, weight_decay=0.01, momentum=0.9, algorithm="Random")
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, weight_decay=0.01, momentum=0.9)
    for i in range(25):
        batch = (x[i % 4 * 16:(i % 4 + 1) * 16], y[i % 4 * 16:(i % 4 + 1) * 16])
        opt.step(F.mse_loss, batch)
        sgd.zero_grad()
        F.mse_loss(ref(batch[0]), batch[1]).backward()
        sgd.step()
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def resumed(algorithm: str, saved_after: int, seed: int):
    """An uninterrupted run of 30 steps, and one saved after ``saved_after`` steps and loaded into a fresh
    optimiser and model: (uninterrupted model and optimiser, resumed model and optimiser right after the load,
    the uninterrupted weights at the save, the remaining steps)."""
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)) for _ in range(30)]
    val = (torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g))

    def fresh():
        torch.manual_seed(0)
        model = MLP(8, 6, 1)
        return model, OnePassSGD(model, lr=0.02, weight_decay=1e-3, momentum=0.5, algorithm=algorithm)

    model, opt = fresh()
    snapshot = None
    for i, b in enumerate(batches):
        opt.step(F.mse_loss, b, val_batch=val)
        if i + 1 == saved_after:
            snapshot = [p.detach().clone() for p in model.parameters()]
    model2, opt2 = fresh()
    for b in batches[:saved_after]:
        opt2.step(F.mse_loss, b, val_batch=val)
    model3, opt3 = fresh()
    opt3.load_state_dict(opt2.state_dict())
    rest = [lambda b=b: opt3.step(F.mse_loss, b, val_batch=val) for b in batches[saved_after:]]
    return (model, opt), (model3, opt3), snapshot, rest


@pytest.mark.parametrize("algorithm", ["Ours_HDLR_Momentum", "DiffThroughOpt", "Baydin"])
def test_state_dict_resumes_exactly(algorithm):
    """Saved after 13 steps (inside a block) and loaded into a fresh optimiser and model, it ends bitwise
    where the uninterrupted run ends."""
    (model, opt), (model3, opt3), _, rest = resumed(algorithm, 13, seed=2)
    for step in rest:
        step()
    for a, b in zip(model.parameters(), model3.parameters()):
        assert torch.equal(a, b)
    assert opt.hyperparameters == opt3.hyperparameters


@pytest.mark.parametrize("saved_after", [16, 19])
def test_state_dict_resumes_exactly_inside_the_unrolled_window(saved_after):
    """Diff-through-Opt (T 10, its last 5 steps differentiated) saved inside its window (after 16 and 19
    steps: 1 and 4 of the window's 5 steps taken) resumes bitwise where the uninterrupted run goes, and the
    loaded model holds the window's current weights, not those at its start."""
    (model, opt), (model3, opt3), snapshot, rest = resumed("DiffThroughOpt", saved_after, seed=4)
    for a, b in zip(model3.parameters(), snapshot):
        assert torch.equal(a, b)
    for step in rest:
        step()
    for a, b in zip(model.parameters(), model3.parameters()):
        assert torch.equal(a, b)
    assert opt.hyperparameters == opt3.hyperparameters and opt3.hyper_step == 3


def test_bad_use_is_a_clear_error():
    model = MLP(2, 3, 1)
    with pytest.raises(ConfigError, match="OnePassSGD: algorithm 'BayesOpt' is not one of"):
        OnePassSGD(model, algorithm="BayesOpt")
    with pytest.raises(TypeError, match="unknown option 'neuman_terms'"):
        OnePassSGD(model, neuman_terms=3)
    with pytest.raises(ConfigError, match="setting 'optimise' in OnePassSGD: unknown hyperparameter 'beta'"):
        OnePassSGD(model, optimise=("lr", "beta"))
    opt = OnePassSGD(model, update_interval=2)
    batch = (torch.ones(4, 2), torch.ones(4, 1))
    opt.step(F.mse_loss, batch)
    with pytest.raises(ValueError, match="weight step 2 ends a block of 2 .*pass val_batch"):
        opt.step(F.mse_loss, batch)


README_BLOCK = re.compile(r"<!-- optimiser example: examples/optimiser\.py -->\n```python\n(.*?)```", re.S)


def test_readme_example_is_the_example_file_and_runs(capsys):
    """The README's optimiser example is examples/optimiser.py, verbatim, and runs as written: the
    hyperparameters it prints are the tuned ones, and its model beats the mean predictor on held-out data."""
    block = README_BLOCK.search((ROOT / "README.md").read_text())
    assert block, "README.md has no optimiser example block"
    source = (ROOT / "examples" / "optimiser.py").read_text()
    assert block.group(1) == source
    namespace = {"__name__": "__main__"}
    exec(compile(source, "examples/optimiser.py", "exec"), namespace)
    out = capsys.readouterr().out
    assert re.search(r"lr \S+ weight decay \S+ momentum \S+", out), out
    opt, model, (x_test, y_test) = namespace["opt"], namespace["model"], namespace["test"]
    assert opt.hyper_step == opt.weight_step // 10 and opt.hyperparameters["lr"] != 0.01
    with torch.no_grad():
        mse = F.mse_loss(model(x_test), y_test).item()
    assert mse < F.mse_loss(torch.full_like(y_test, y_test.mean()), y_test).item()
