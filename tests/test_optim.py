"""onepass.OnePassSGD, the optimiser for one's own training loop, on its closure / backward API: it is the
engine's population of one (the same seed, settings and batches give the engine's weights and
hyperparameters, algorithm by algorithm), plain SGD equals torch.optim.SGD, a frozen or unused parameter
stays bit-identical, parameter groups are tuned each on its own (their hypergradients against float64
finite differences and the one-group ones), its state resumes bitwise, and bad use is a clear error."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onepass import OnePassSGD, data
from onepass.batches import BatchStream
from onepass.models import MLP
from onepass.population import VALID_SEED_OFFSET, Member, Population
from onepass.settings import ConfigError, load_settings

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


def optimiser_run(algorithm: str, ds, settings: dict, backward: bool):
    """The same run through OnePassSGD: the model built as the engine builds member SEED, the batches of the
    engine's streams for SEED given one by one; ``backward``: the steps that need no closure take
    ``loss.backward(); opt.step()``, else every step takes ``opt.step(closure, val_closure=...)``."""
    torch.manual_seed(SEED)
    model = MLP(8, settings["hidden_units"], 1)
    opt = OnePassSGD(model.parameters(), lr=LR, weight_decay=WD, momentum=MOM, algorithm=algorithm, model=model)
    parts = [getattr(ds, s) for s in settings["train_on"].split("+")]
    train = BatchStream(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), 16, [SEED])
    valid = BatchStream(*ds.valid, 16, [SEED + VALID_SEED_OFFSET])
    for _ in range(settings["hyperparameter_steps"] * settings["update_interval"]):
        x, y = (t[0] for t in train.next())
        val_closure = None
        if opt.hyper_step_due:
            vx, vy = (t[0] for t in valid.next())
            val_closure = lambda: F.mse_loss(model(vx), vy)   # noqa: E731
        if backward and not opt.needs_closure:
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            assert opt.step() is None
        else:
            loss = opt.step(lambda: F.mse_loss(model(x), y), val_closure=val_closure)
            assert loss.shape == () and torch.isfinite(loss)
    return model, opt


@pytest.mark.parametrize("backward", [False, True], ids=["closure", "backward"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_optimiser_is_the_engines_population_of_one(algorithm, backward):
    ds = toy_dataset()
    weights, hypers, settings = engine_run(algorithm, ds)
    model, opt = optimiser_run(algorithm, ds, settings, backward)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.weight_step == 60 and opt.hyper_step == settings["hyperparameter_steps"]
    for w, p in zip(weights, model.parameters()):
        torch.testing.assert_close(p.detach(), w, rtol=1e-5, atol=1.2e-7)   # float32 round-off
    [got] = opt.hyperparameters
    for name in ("lr", "weight_decay", "momentum"):
        assert got[name] == pytest.approx(hypers[name], rel=1e-5)
    initial = {"lr": LR, "weight_decay": WD, "momentum": MOM}
    for name in ("lr", "weight_decay", "momentum"):  # tuned exactly where the algorithm's YAML says
        moved = abs(got[name] - initial[name]) > 1e-6 * initial[name]
        assert moved == (name in settings["optimise"]), (name, got[name])
    # torch's shapes: a momentum buffer per parameter, the group's tuned values in param_groups
    assert all(opt.state[p]["momentum_buffer"].shape == p.shape for p in model.parameters())
    for name in ("weight_decay", "momentum"):
        assert opt.param_groups[0][name] == pytest.approx(got[name], rel=1e-6)


def test_plain_sgd_is_torch_sgd():
    """Random (fixed hyperparameters) is torch.optim.SGD with the same lr, momentum and weight decay, with
    the backward loop and with a closure."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g)
    torch.manual_seed(0)
    ours, ours2, ref = MLP(8, 6, 1), MLP(8, 6, 1), MLP(8, 6, 1)
    ours2.load_state_dict(ours.state_dict())
    ref.load_state_dict(ours.state_dict())
    opt = OnePassSGD(ours.parameters(), lr=0.1, weight_decay=0.01, momentum=0.9, algorithm="Random")
    opt2 = OnePassSGD(ours2.parameters(), lr=0.1, weight_decay=0.01, momentum=0.9, algorithm="Random")
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, weight_decay=0.01, momentum=0.9)
    for i in range(25):
        bx, by = x[i % 4 * 16:(i % 4 + 1) * 16], y[i % 4 * 16:(i % 4 + 1) * 16]
        for o, m in ((opt, ours), (sgd, ref)):
            o.zero_grad()
            F.mse_loss(m(bx), by).backward()
            o.step()
        opt2.step(lambda: F.mse_loss(ours2(bx), by))
    for a, b, c in zip(ours.parameters(), ref.parameters(), ours2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert torch.equal(a, c)


class WithSpare(nn.Module):
    """An MLP and a parameter its forward never uses."""

    def __init__(self):
        super().__init__()
        self.mlp = MLP(4, 5, 1)
        self.spare = nn.Parameter(torch.randn(3))

    def forward(self, x):
        return self.mlp(x)


@pytest.mark.parametrize("algorithm", ["Ours_LR_Momentum", "Baydin", "DiffThroughOpt"])
def test_frozen_and_unused_parameters_stay_bit_identical(algorithm):
    """The first layer's weight (requires_grad=False) and the unused parameter keep their bits and get no
    optimiser state, while the other parameters train."""
    torch.manual_seed(0)
    model = WithSpare()
    model.mlp.net[1].weight.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = OnePassSGD(model.parameters(), lr=0.05, weight_decay=1e-2, momentum=0.5, algorithm=algorithm, model=model,
                     update_interval=1 if algorithm == "Baydin" else 4, unroll_steps=2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
    for step in range(20):
        closure = lambda: F.mse_loss(model(x), y)   # noqa: E731
        if opt.needs_closure:
            opt.step(closure, val_closure=closure)
        else:
            opt.zero_grad()
            closure().backward()
            opt.step()
    after = dict(model.named_parameters())
    for name in ("spare", "mlp.net.1.weight"):
        assert torch.equal(after[name], before[name]) and after[name] not in opt.state, name
    assert all(not torch.equal(p, before[n]) for n, p in after.items() if n not in ("spare", "mlp.net.1.weight"))
    assert opt.hyper_step == 20 // opt.settings["update_interval"] and opt.last_hypergradient


def grouped(model: MLP, tuned_second: bool = True, **kw) -> list[dict]:
    """Three groups: the first layer's weight, the second's (other initial weight decay; tuned or not) and
    the biases (no weight decay, not tuned)."""
    net = model.net
    return [{"params": [net[1].weight], **kw}, {"params": [net[3].weight], "weight_decay": 1e-2,
                                                **({} if tuned_second else {"optimise": []})},
            {"params": [net[1].bias, net[3].bias], "weight_decay": 0.0, "optimise": []}]


def test_groups_are_tuned_each_on_its_own_and_an_untuned_group_keeps_its_values():
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(96, 8, generator=g), torch.randn(96, 1, generator=g)
    torch.manual_seed(0)
    model = MLP(8, 6, 1)
    opt = OnePassSGD(grouped(model), lr=0.05, weight_decay=1e-3, momentum=0.6, model=model, update_interval=5)
    for step in range(60):
        i = slice(step % 4 * 16, step % 4 * 16 + 16)
        closure = lambda: F.mse_loss(model(x[i]), y[i])   # noqa: E731
        opt.step(closure, val_closure=lambda: F.mse_loss(model(x[64:]), y[64:]))
    first, second, biases = opt.hyperparameters
    assert first["lr"] != pytest.approx(0.05, rel=1e-3) and second["lr"] != pytest.approx(0.05, rel=1e-3)
    assert first["lr"] != pytest.approx(second["lr"], rel=1e-3)
    assert first["weight_decay"] != pytest.approx(second["weight_decay"], rel=1e-2)
    assert opt.param_groups[2]["lr"] == 0.05 and opt.param_groups[2]["weight_decay"] == 0.0
    assert opt.param_groups[2]["momentum"] == 0.6
    assert biases["lr"] == pytest.approx(0.05, rel=1e-6) and biases["momentum"] == pytest.approx(0.6, rel=1e-6)
    assert biases["weight_decay"] == 0.0 and 2 not in opt.last_hypergradient
    assert len({step[2] for step in opt.trace}) == 1      # the biases' values at every step the same
    assert len(opt.history) == 3 * 12 and {row["group"] for row in opt.history} == {0, 1, 2}


def float64_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(16, 8, generator=g, dtype=torch.float64),
                torch.randn(16, 1, generator=g, dtype=torch.float64)) for _ in range(4)]
    torch.manual_seed(seed)
    return MLP(8, 6, 1).double(), batches


def test_group_hypergradients_equal_float64_finite_differences():
    """With one Neumann term the hypergradient is exactly d L_val(w - u(lambda)) / d lambda, the weights,
    buffers and gradient held: per group, against central differences in float64 of that loss computed by
    hand (lambda: log10 lr, log10 weight decay, logit momentum)."""
    model, batches = float64_problem()
    opt = OnePassSGD(grouped(model, weight_decay=3e-3), lr=0.05, weight_decay=1e-3, momentum=0.6, model=model,
                     update_interval=1, neumann_terms=1)
    (x, y), (vx, vy) = batches[0], batches[1]
    opt.step(lambda: F.mse_loss(model(x), y), val_closure=lambda: F.mse_loss(model(vx), vy))   # momentum now
    (x, y), (vx, vy) = batches[2], batches[3]
    params = [p for group in opt.param_groups for p in group["params"]]
    w = [p.detach().clone() for p in params]
    b = [opt.state[p]["momentum_buffer"].clone() for p in params]
    grads = torch.autograd.grad(F.mse_loss(model(x), y), params)
    values = [dict(h) for h in opt.hyperparameters]
    opt.step(lambda: F.mse_loss(model(x), y), val_closure=lambda: F.mse_loss(model(vx), vy))
    owner = [gi for gi, group in enumerate(opt.param_groups) for _ in group["params"]]

    def val_loss(gi, name, shift):
        new = []
        for p, wi, bi, gr, k in zip(params, w, b, grads, owner):
            v = dict(values[k])
            if k == gi:
                v[name] = v[name] * 10 ** shift if name != "momentum" else \
                    1 / (1 + (1 / v[name] - 1) * math.exp(-shift))     # sigmoid(logit(mu) + shift)
            new.append(wi - v["lr"] * (v["momentum"] * bi + gr + v["weight_decay"] * wi))
        order = {id(p): t for p, t in zip(params, new)}
        state = {n: order[id(q)] for n, q in model.named_parameters()}
        return F.mse_loss(torch.func.functional_call(model, state, (vx,)), vy).item()

    eps = 1e-4   # float64: truncation error ~eps^2, round-off ~1e-16 / eps
    checked = 0
    for gi in (0, 1):
        for name, value in opt.last_hypergradient[gi].items():
            fd = (val_loss(gi, name, eps) - val_loss(gi, name, -eps)) / (2 * eps)
            assert value.dtype == torch.float64
            assert float(value[0]) == pytest.approx(fd, rel=1e-6, abs=1e-12), (gi, name)
            checked += 1
    assert checked == 6


def test_split_groups_sum_to_the_one_group_hypergradient():
    """The Neumann series (5 terms) is taken over all groups at once: the parameters split into two groups of
    the same hyperparameters give hypergradients that sum to those of the one group (float64)."""
    runs = []
    for split in (False, True):
        model, batches = float64_problem(1)
        params = list(model.parameters())
        groups = [{"params": params[:2]}, {"params": params[2:]}] if split else params
        opt = OnePassSGD(groups, lr=0.05, weight_decay=1e-3, momentum=0.6, model=model, update_interval=2)
        for i in range(2):     # to the first hyperparameter step (Adam's steps then differ)
            x, y = batches[i + 1]
            opt.step(lambda: F.mse_loss(model(x), y), val_closure=lambda: F.mse_loss(model(batches[0][0]),
                                                                                     batches[0][1]))
        runs.append(opt.last_hypergradient)
        assert opt.hyper_step == 1
    one, two = runs
    for name in ("lr", "weight_decay", "momentum"):
        torch.testing.assert_close(two[0][name] + two[1][name], one[0][name], rtol=1e-10, atol=1e-14)


def resumed(algorithm: str, saved_after: int, seed: int):
    """An uninterrupted run of 30 steps, and one saved after ``saved_after`` steps and loaded into a fresh
    optimiser and model: (uninterrupted model and optimiser, resumed model and optimiser, the remaining
    steps as functions of (model, opt))."""
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)) for _ in range(30)]
    val = (torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g))

    def fresh():
        torch.manual_seed(0)
        model = MLP(8, 6, 1)
        return model, OnePassSGD(model, lr=0.02, weight_decay=1e-3, momentum=0.5, algorithm=algorithm)

    def step(model, opt, b):
        if opt.needs_closure:
            opt.step(lambda: F.mse_loss(model(b[0]), b[1]), val_closure=lambda: F.mse_loss(model(val[0]), val[1]))
        else:
            opt.zero_grad()
            F.mse_loss(model(b[0]), b[1]).backward()
            opt.step()

    model, opt = fresh()
    for b in batches:
        step(model, opt, b)
    model2, opt2 = fresh()
    for b in batches[:saved_after]:
        step(model2, opt2, b)
    saved = opt2.state_dict()
    model3, opt3 = fresh()
    model3.load_state_dict(model2.state_dict())
    opt3.load_state_dict(saved)
    for b in batches[saved_after:]:
        step(model3, opt3, b)
    return (model, opt), (model3, opt3)


@pytest.mark.parametrize("algorithm", ["Ours_HDLR_Momentum", "DiffThroughOpt", "Baydin"])
def test_state_dict_resumes_exactly(algorithm):
    """Saved after 13 steps (inside a block) and loaded into a fresh optimiser and model, it ends bitwise
    where the uninterrupted run ends, with the same history and trace."""
    (model, opt), (model3, opt3) = resumed(algorithm, 13, seed=2)
    for a, b in zip(model.parameters(), model3.parameters()):
        assert torch.equal(a, b)
    assert opt.hyperparameters == opt3.hyperparameters and opt.history == opt3.history
    assert opt.trace == opt3.trace and opt3.weight_step == 30


def test_bad_use_is_a_clear_error():
    model = MLP(2, 3, 1)
    with pytest.raises(ConfigError, match="OnePassSGD: algorithm 'BayesOpt' is not one of"):
        OnePassSGD(model, algorithm="BayesOpt")
    with pytest.raises(TypeError, match="unknown option 'neuman_terms'"):
        OnePassSGD(model, neuman_terms=3)
    with pytest.raises(ConfigError, match="setting 'optimise' in OnePassSGD: unknown hyperparameter 'beta'"):
        OnePassSGD(model, optimise=("lr", "beta"))
    with pytest.raises(ConfigError, match="needs the module its closures run: .*model=model"):
        OnePassSGD(model.parameters())
    with pytest.raises(ConfigError, match="parameter group 0 holds a parameter that is not model's"):
        OnePassSGD([nn.Parameter(torch.ones(2))], model=model)
    opt = OnePassSGD(model, update_interval=2)
    x, y = torch.ones(4, 2), torch.ones(4, 1)
    F.mse_loss(model(x), y).backward()
    opt.step()
    with pytest.raises(ValueError, match=r"weight step 2 is differentiated .*opt.step\(closure, val_closure=...\)"):
        opt.step()

    def torch_style():
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss
    with pytest.raises(RuntimeError, match="the closure returns the loss without calling backward"):
        OnePassSGD(model, algorithm="Random").step(torch_style)
    dto = OnePassSGD(model, algorithm="DiffThroughOpt")
    for _ in range(6):
        dto.step(lambda: F.mse_loss(model(x), y))
    with pytest.raises(RuntimeError, match="inside its window of differentiated steps"):
        dto.state_dict()
