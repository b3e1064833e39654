"""A Random and an Ours population, step by step, against plain PyTorch on a tiny float64 MLP.

The references share nothing with onepass's update code: every member is an ``nn.Module`` trained by
``torch.optim.SGD`` (PyTorch's own momentum and weight-decay conventions) on the batches the population drew,
and Ours' hypergradient is the paper's formula written with dense Jacobians of the flat weight vector,

    g = - v . sum_{j<K} (I - du/dw)^j . du/dlambda,   u(w, lambda) = lr (mom b + grad L_train(w) + wd w),

lambda = (log10 lr, log10 wd, logit mom), b the momentum buffer before the last step (held constant), the
Jacobians at the weights before it and v = dL_val/dw at the weights after it; ``torch.optim.Adam`` (or SGD)
then steps lambda. Only the batches (recorded as the population's streams hand them out) and the initial
weights are taken from the population.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onepass.data import Dataset
from onepass.population import Member, Population
from onepass.settings import load_settings

INPUTS, HIDDEN, BATCH = 4, 50, 6          # the paper's UCI network inputs-50-1, minibatches of 6 rows
T, STEPS = 4, 4                            # weight steps per hyperparameter step; hyperparameter steps
MEMBERS = [Member(0, 0.05, 1e-2, 0.5), Member(7, 0.02, 3e-3, 0.8)]   # far from log10(lr)'s bounds [-10, 0]
TOL = {"rtol": 1e-12, "atol": 1e-14}


pytestmark = pytest.mark.usefixtures("float64_default")   # exact comparisons in float64


def tiny_dataset() -> Dataset:
    """A generated regression problem: 24 training, 12 validation and 8 test rows of 4 inputs."""
    g = torch.Generator().manual_seed(20)
    w = torch.tensor([1.0, -2.0, 0.5, 0.3], dtype=torch.float64)

    def rows(n):
        x = torch.randn(n, INPUTS, generator=g, dtype=torch.float64)
        y = torch.tanh(x @ w) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
        return x, y.unsqueeze(1)

    return Dataset(name="tiny", family="uci", task="regression", train=rows(24), valid=rows(12), test=rows(8),
                   input_shape=(INPUTS,), num_classes=None, vocab_size=None,
                   normalisers={"y_mean": torch.tensor(0.0), "y_std": torch.tensor(1.0)})


def recording(stream) -> list:
    """Every batch ``stream`` hands out from now on, in order (the stream itself unchanged)."""
    seen, draw = [], stream.next

    def next_batch():
        batch = draw()
        seen.append(tuple(t.detach().clone() for t in batch))
        return batch

    stream.next = next_batch
    return seen


def population(algorithm: str, overrides=None):
    """A float64 population of MEMBERS on the tiny dataset, its initial weights and the lists its training
    and validation batches will be recorded in."""
    settings = load_settings("uci_energy", algorithm, {"batch_size": BATCH, "update_interval": T,
                                                       "hidden_units": HIDDEN, **(overrides or {})})
    pop = Population(settings, tiny_dataset(), MEMBERS, torch.device("cpu"))
    assert all(p.dtype == torch.float64 for p in pop.params)
    initial = [p.detach().clone() for p in pop.params]
    return pop, settings, initial, recording(pop.train_stream), recording(pop.val_stream)


def member_batch(batch, i):
    """Member ``i``'s rows of a recorded batch (minibatches carry the members on their first dimension)."""
    x, y = batch
    assert x.shape == (len(MEMBERS), BATCH, INPUTS)
    return x[i], y[i]


def reference_net(initial, i) -> nn.Module:
    """An nn.Module MLP inputs-HIDDEN-1 (ReLU) holding member ``i``'s initial weights."""
    net = nn.Sequential(nn.Linear(INPUTS, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))
    with torch.no_grad():
        for p, w in zip(net.parameters(), initial, strict=True):
            assert p.shape == w[i].shape
            p.copy_(w[i])
    return net


def sgd_step(net, opt, batch) -> None:
    opt.zero_grad()
    F.mse_loss(net(batch[0]), batch[1]).backward()
    opt.step()


def assert_weights_equal(pop, nets) -> None:
    for i, net in enumerate(nets):
        for p, ref in zip(pop.params, net.parameters(), strict=True):
            torch.testing.assert_close(p.detach()[i], ref.detach(), **TOL)


# ---- the hand-written hypergradient on the flat weight vector -----------------------------------------
SHAPES = [(HIDDEN, INPUTS), (HIDDEN,), (1, HIDDEN), (1,)]


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def mlp_loss(theta: torch.Tensor, batch) -> torch.Tensor:
    """Mean squared error of the MLP whose weights are the flat vector ``theta``."""
    sizes = [math.prod(s) for s in SHAPES]
    w1, b1, w2, b2 = (t.reshape(s) for t, s in zip(torch.split(theta, sizes), SHAPES))
    x, y = batch
    return ((torch.relu(x @ w1.T + b1) @ w2.T + b2 - y) ** 2).mean()


def unconstrained(m: Member) -> torch.Tensor:
    """lambda = (log10 lr, log10 wd, logit momentum) of a member's initial hyperparameters."""
    return torch.tensor([math.log10(m.lr), math.log10(m.weight_decay), math.log(m.momentum / (1 - m.momentum))])


def natural(lam: torch.Tensor):
    return 10.0 ** lam[0], 10.0 ** lam[1], torch.sigmoid(lam[2])


def update(theta, lam, buf, batch) -> torch.Tensor:
    """u(w, lambda): the SGD step's update w_{t-1} - w_t with the momentum buffer ``buf`` held constant."""
    theta = theta if theta.requires_grad else theta.detach().requires_grad_(True)
    grad, = torch.autograd.grad(mlp_loss(theta, batch), theta, create_graph=True)
    lr, wd, mom = natural(lam)
    return lr * (mom * buf + grad + wd * theta)


def dense_hypergradient(theta, lam, buf, batch, val_batch, terms: int) -> torch.Tensor:
    """-v . sum_{j<terms} (I - J_w)^j . J_lambda with explicit [P, P] and [P, 3] Jacobians."""
    jac = torch.autograd.functional.jacobian
    j_w = jac(lambda w: update(w, lam, buf, batch), theta)
    j_l = jac(lambda h: update(theta, h, buf, batch), lam)
    after = (theta - update(theta, lam, buf, batch)).detach().requires_grad_(True)
    v, = torch.autograd.grad(mlp_loss(after, val_batch), after)
    step = torch.eye(len(theta)) - j_w
    series = sum(torch.linalg.matrix_power(step, j) for j in range(terms))
    return -(v @ series @ j_l)


def test_the_reference_direct_term_is_the_finite_difference_derivative():
    """With one term the formula is d/dlambda L_val(w - u(w, lambda)): the reference's Jacobian in lambda,
    its v and its sign checked by central differences, with a momentum buffer that makes du/dm nonzero."""
    g = torch.Generator().manual_seed(3)
    theta = 0.3 * torch.randn(sum(math.prod(s) for s in SHAPES), generator=g, dtype=torch.float64)
    buf = 0.1 * torch.randn(len(theta), generator=g, dtype=torch.float64)
    data = tiny_dataset()
    batch, val_batch = tuple(t[:BATCH] for t in data.train), tuple(t[:BATCH] for t in data.valid)
    lam = torch.tensor([math.log10(0.05), math.log10(1e-2), 0.4])
    ours = dense_hypergradient(theta, lam, buf, batch, val_batch, terms=1)

    def val_after(h):
        return float(mlp_loss((theta - update(theta, h, buf, batch)).detach(), val_batch))

    eps = 1e-5
    fd = torch.tensor([(val_after(lam + eps * e) - val_after(lam - eps * e)) / (2 * eps) for e in torch.eye(3)])
    assert bool((fd.abs() > 1e-6).all())
    torch.testing.assert_close(ours, fd, rtol=1e-7, atol=1e-11)


def test_random_population_is_torch_sgd_for_every_member():
    """Random: every member's weights after every hyperparameter step are those torch.optim.SGD(lr, momentum,
    weight_decay) reaches from its initial weights on its batches; no validation batch is drawn."""
    pop, _, initial, train_batches, val_batches = population("Random")
    nets = [reference_net(initial, i) for i in range(len(MEMBERS))]
    opts = [torch.optim.SGD(net.parameters(), lr=m.lr, momentum=m.momentum, weight_decay=m.weight_decay)
            for net, m in zip(nets, MEMBERS)]
    for step in range(STEPS):
        pop.step()
        assert len(train_batches) == T * (step + 1)
        for i, (net, opt) in enumerate(zip(nets, opts)):
            for batch in train_batches[-T:]:
                sgd_step(net, opt, member_batch(batch, i))
        assert_weights_equal(pop, nets)
    assert not val_batches
    assert not torch.equal(train_batches[0][0][0], train_batches[0][0][1])   # members see their own batches
    for now, before in zip(pop.params, initial):
        assert float((now.detach() - before).abs().max()) > 1e-3               # and the weights moved
    for name, values in pop.hyperparameters().items():                         # fixed hyperparameters
        assert values == pytest.approx([getattr(m, name) for m in MEMBERS], rel=1e-12)


@pytest.mark.parametrize("hyper_optimiser", ["adam", "sgd"])
def test_ours_population_is_sgd_with_the_dense_neumann_hypergradient(hyper_optimiser):
    """Ours (WD+LR+M): T - 1 torch.optim.SGD steps, the dense-Jacobian hypergradient of the last step, one
    step of torch.optim.Adam (the paper's; SGD too, which unlike Adam sees the hypergradient's scale) on the
    unconstrained hyperparameters; weights and hyperparameters equal the population's after every step."""
    pop, s, initial, train_batches, val_batches = population("Ours_LR_Momentum",
                                                             {"hyper_optimiser": hyper_optimiser})
    assert s["hypergradient"] == "neumann" and s["optimise"] == ["lr", "weight_decay", "momentum"]
    nets = [reference_net(initial, i) for i in range(len(MEMBERS))]
    opts = [torch.optim.SGD(net.parameters(), lr=m.lr, momentum=m.momentum, weight_decay=m.weight_decay)
            for net, m in zip(nets, MEMBERS)]
    lams = [unconstrained(m).requires_grad_(True) for m in MEMBERS]
    cls = torch.optim.Adam if hyper_optimiser == "adam" else torch.optim.SGD
    hyper_opts = [cls([lam], lr=s["hyper_lr"]) for lam in lams]
    for step in range(STEPS):
        pop.step()
        assert len(train_batches) == T * (step + 1) and len(val_batches) == step + 1
        for i, (net, opt, lam, hyper_opt) in enumerate(zip(nets, opts, lams, hyper_opts)):
            batches = [member_batch(b, i) for b in train_batches[-T:]]
            for batch in batches[:-1]:
                sgd_step(net, opt, batch)
            theta = flat(net.parameters())
            buf = flat(opt.state[p]["momentum_buffer"] for p in net.parameters())
            hypergrad = dense_hypergradient(theta, lam.detach(), buf, batches[-1],
                                            member_batch(val_batches[-1], i), s["neumann_terms"])
            sgd_step(net, opt, batches[-1])
            lam.grad = hypergrad
            hyper_opt.step()
            with torch.no_grad():
                assert s["log10_lr_min"] < float(lam[0]) < s["log10_lr_max"]    # log10(lr)'s clip not reached
                lr, wd, mom = natural(lam)
            opt.param_groups[0].update(lr=float(lr), weight_decay=float(wd), momentum=float(mom))
        assert_weights_equal(pop, nets)
        got = pop.hyperparameters()
        for column, name in enumerate(("lr", "weight_decay", "momentum")):
            want = [float(natural(lam.detach())[column]) for lam in lams]
            assert got[name] == pytest.approx(want, rel=1e-12), (step, name)
    # every hyperparameter moved a million times the tolerance at least (under SGD weight decay's hypergradient
    # is small: a move of 1e-6 in log10(wd) is a relative change of 2e-6)
    for lam, m in zip(lams, MEMBERS):
        assert bool(((lam.detach() - unconstrained(m)).abs() > 1e-6).all()), lam
