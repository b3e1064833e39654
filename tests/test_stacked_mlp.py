"""The plain MLP's population path (onepass.stacked, batched matmuls written out) against one
``nn.Module`` per member: losses, gradients (through autograd, and written out as the plain step takes
them) and Hessian-vector products (autograd's double backward, and the R-operator written out), on
generated regression and classification data, with one batch shared by all members and with a batch per
member."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from onepass.data import Dataset
from onepass.problems import Problem
from onepass.settings import load_settings

N, ROWS, INPUTS, CLASSES = 3, 7, 5, 4


pytestmark = pytest.mark.usefixtures("float64_default")   # exact comparisons in float64


def dataset(task: str) -> Dataset:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(ROWS, INPUTS, generator=g)
    y = torch.randn(ROWS, 1, generator=g) if task == "regression" else torch.randint(CLASSES, (ROWS,), generator=g)
    return Dataset(name="tiny", family="uci", task=task, train=(x, y), valid=(x, y), test=(x, y),
                   input_shape=(INPUTS,), num_classes=None if task == "regression" else CLASSES, vocab_size=None,
                   normalisers={"y_mean": torch.tensor(0.0), "y_std": torch.tensor(1.0)})


def per_member_losses(problem: Problem, params, batch, shared: bool) -> torch.Tensor:
    """Every member's loss from its own nn.Module, reduced as F.mse_loss / F.cross_entropy reduce."""
    losses = []
    for i in range(N):
        state = {name: p[i] for name, p in zip(problem.names, params)}
        x, y = batch if shared else (batch[0][i], batch[1][i])
        out = functional_call(problem.template, state, (x,))
        losses.append(F.mse_loss(out, y) if problem.task == "regression" else F.cross_entropy(out, y))
    return torch.stack(losses)


@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("shared", [True, False])
def test_population_mlp_is_every_members_network(task, shared):
    data = dataset(task)
    problem = Problem({**load_settings("uci_energy", "Random"), "hidden_units": 6}, data, torch.device("cpu"))
    assert problem.stacked
    params, buffers = problem.initial_state([0, 1, 2])
    params = [p.requires_grad_(True) for p in params]
    x, y = data.train
    if shared:
        batch = (x, y)
    else:
        order = torch.stack([torch.randperm(ROWS, generator=torch.Generator().manual_seed(s)) for s in range(N)])
        batch = (x[order], y[order])
    mine, aux = problem.losses(params, buffers, batch, shared)
    reference = per_member_losses(problem, params, batch, shared)
    assert aux == ()
    torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-14)
    # gradients and a Hessian-vector product (what the Neumann series differentiates)
    g_mine = torch.autograd.grad(mine.sum(), params, create_graph=True)
    g_ref = torch.autograd.grad(reference.sum(), params, create_graph=True)
    for a, b in zip(g_mine, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # the plain step's gradients, backpropagation written out
    losses, grads = problem.stacked_grads([p.detach() for p in params], batch)
    torch.testing.assert_close(losses, reference.detach(), rtol=1e-12, atol=1e-14)
    for a, b in zip(grads, g_ref):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-14)
    v = [torch.randn_like(p) for p in params]
    hv_mine = torch.autograd.grad(g_mine, params, grad_outputs=v)
    hv_ref = torch.autograd.grad(g_ref, params, grad_outputs=v)
    for a, b in zip(hv_mine, hv_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # the same product by the R-operator, written out (the Neumann series' products)
    losses, grads, hvp = problem.stacked_curvature([p.detach() for p in params], batch)
    for a, b in zip(grads, g_ref):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-14)
    for a, b in zip(hvp(v), hv_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
