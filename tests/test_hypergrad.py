"""Every hypergradient against an exact reference on small float64 problems."""

import math

import pytest
import torch

from onepass.hypergrad import baydin_hypergradient, neumann_hypergradient, unrolled_hypergradient
from onepass.updates import Hyperparameters, natural, sgd_step, sgd_step_, to_unconstrained

LN10 = math.log(10.0)


@pytest.fixture(autouse=True, scope="module")
def float64():
    """Exact references need float64; restore the default afterwards for the other test modules."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def unconstrained(lr, wd, mom):
    return {"lr": torch.tensor(to_unconstrained("lr", lr)),
            "weight_decay": torch.tensor(to_unconstrained("weight_decay", wd)),
            "momentum": torch.tensor(to_unconstrained("momentum", mom))}


# ---- a ridge-regression problem with a closed-form optimum ---------------------------------------------
@pytest.fixture(scope="module")
def ridge():
    g = torch.Generator().manual_seed(0)
    X, Xv = torch.randn(40, 5, generator=g), torch.randn(30, 5, generator=g)
    w_true = torch.randn(5, generator=g)
    y, yv = X @ w_true + 0.3 * torch.randn(40, generator=g), Xv @ w_true + 0.3 * torch.randn(30, generator=g)
    return X, y, Xv, yv


def quadratic_loss(params, batch):
    X, y = batch
    return 0.5 * ((X @ params[0] - y) ** 2).mean()


def test_neumann_equals_implicit_function_theorem_at_the_optimum(ridge):
    X, y, Xv, yv = ridge
    lr, wd, mom = 0.05, 0.1, 0.6
    A = X.T @ X / len(X)
    M = A + wd * torch.eye(5)
    w_star = torch.linalg.solve(M, X.T @ y / len(X))
    v = Xv.T @ (Xv @ w_star - yv) / len(Xv)
    # closed form: dL_val/dc with wd = 10**c; w* does not depend on lr or momentum
    expected_wd = -(v @ torch.linalg.solve(M, w_star)) * wd * LN10

    h = unconstrained(lr, wd, mom)
    grads = neumann_hypergradient(quadratic_loss, (w_star,), (torch.zeros(5),), (X, y), (v,), h, {},
                                  terms=3000)
    assert grads["weight_decay"].item() == pytest.approx(expected_wd.item(), rel=1e-8)
    assert abs(grads["lr"].item()) < 1e-12
    assert abs(grads["momentum"].item()) < 1e-12
    # few terms are only an approximation: the series really is being summed
    few = neumann_hypergradient(quadratic_loss, (w_star,), (torch.zeros(5),), (X, y), (v,), h, {}, terms=5)
    assert abs(few["weight_decay"].item() - expected_wd.item()) > 1e-3 * abs(expected_wd.item())


# ---- a small nonlinear network -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def net():
    g = torch.Generator().manual_seed(1)
    params = (0.5 * torch.randn(4, 3, generator=g), 0.5 * torch.randn(4, generator=g), 0.5 * torch.randn(4, generator=g))
    bufs = tuple(0.1 * torch.randn(p.shape, generator=g) for p in params)
    batches = [(torch.randn(16, 3, generator=g), torch.randn(16, generator=g)) for _ in range(6)]
    val = (torch.randn(20, 3, generator=g), torch.randn(20, generator=g))
    return params, bufs, batches, val


def mlp_loss(params, batch):
    W, b, v = params
    x, y = batch
    return ((torch.tanh(x @ W.T + b) @ v - y) ** 2).mean()


def mlp_loss_aux(params, batch):
    return mlp_loss(params, batch), None


def unrolled_val_loss(h, params, bufs, batches, val):
    lr, wd, mom = natural(h)
    w, b = params, bufs
    for batch in batches:
        grads = torch.autograd.grad(mlp_loss(w, batch), w, create_graph=True) if w[0].requires_grad else \
            torch.func.grad(mlp_loss)(w, batch)
        w, b = sgd_step(w, b, grads, lr, wd, mom)
    return mlp_loss(w, val)


def test_neumann_with_one_term_is_the_exact_one_step_gradient(net):
    params, bufs, batches, val = net
    h = unconstrained(0.1, 1e-2, 0.7)
    leaves = {k: v.clone().requires_grad_() for k, v in h.items()}
    w0 = tuple(p.clone().requires_grad_() for p in params)
    exact = torch.autograd.grad(unrolled_val_loss(leaves, w0, bufs, batches[:1], val), list(leaves.values()))

    lr, wd, mom = natural(h)
    grads = torch.func.grad(mlp_loss)(params, batches[0])
    w1, _ = sgd_step(params, bufs, grads, lr, wd, mom)
    v = torch.func.grad(mlp_loss)(w1, val)
    approx = neumann_hypergradient(mlp_loss, params, bufs, batches[0], v, h, {}, terms=1)
    for name, ref in zip(leaves, exact):
        assert approx[name].item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-14)


def test_diff_through_opt_equals_central_finite_differences(net):
    params, bufs, batches, val = net
    h = unconstrained(0.2, 3e-2, 0.5)
    it = iter(batches[:5])
    grads, w, b, val_loss, losses = unrolled_hypergradient(mlp_loss_aux, mlp_loss, params, bufs, lambda: next(it),
                                                           5, val, h, {})
    assert losses.shape == (5,)
    assert val_loss.item() == pytest.approx(unrolled_val_loss(h, params, bufs, batches[:5], val).item(), rel=1e-12)
    eps = 1e-6
    for name in h:
        up = {**h, name: h[name] + eps}
        down = {**h, name: h[name] - eps}
        fd = (unrolled_val_loss(up, params, bufs, batches[:5], val)
              - unrolled_val_loss(down, params, bufs, batches[:5], val)) / (2 * eps)
        assert grads[name].item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-10), name


def test_unrolled_only_differentiates_the_optimised_hyperparameters(net):
    params, bufs, batches, val = net
    h = unconstrained(0.2, 3e-2, 0.5)
    fixed = {"momentum": h.pop("momentum")}
    it = iter(batches[:3])
    grads, *_ = unrolled_hypergradient(mlp_loss_aux, mlp_loss, params, bufs, lambda: next(it), 3, val, h, fixed)
    assert set(grads) == {"lr", "weight_decay"}
    full = unconstrained(0.2, 3e-2, 0.5)
    it = iter(batches[:3])
    ref, *_ = unrolled_hypergradient(mlp_loss_aux, mlp_loss, params, bufs, lambda: next(it), 3, val, full, {})
    assert grads["lr"].item() == pytest.approx(ref["lr"].item(), rel=1e-12)


def test_baydin_is_the_analytic_dot_product_and_the_true_lr_derivative(ridge):
    X, y, _, _ = ridge
    A, bvec = X.T @ X / len(X), X.T @ y / len(X)
    w_prev = torch.linspace(-1, 1, 5)
    g_prev = A @ w_prev - bvec
    lr = torch.tensor(0.07, requires_grad=True)
    w_now = w_prev - lr * g_prev                    # plain SGD step
    g_now = A @ w_now.detach() - bvec
    h = baydin_hypergradient((g_now,), (g_prev,))
    assert h.item() == pytest.approx(-(g_now @ g_prev).item(), rel=1e-12)
    (true,) = torch.autograd.grad(quadratic_loss((w_now,), (X, y)), lr)
    assert h.item() == pytest.approx(true.item(), rel=1e-10)


def test_per_weight_learning_rates(net):
    params, bufs, batches, val = net
    scalar = unconstrained(0.1, 1e-2, 0.7)
    per_weight = {**scalar, "lr": tuple(torch.full(p.shape, scalar["lr"].item()) for p in params)}
    lr, wd, mom = natural(scalar)
    w1, _ = sgd_step(params, bufs, torch.func.grad(mlp_loss)(params, batches[0]), lr, wd, mom)
    v = torch.func.grad(mlp_loss)(w1, val)
    g_scalar = neumann_hypergradient(mlp_loss, params, bufs, batches[0], v, scalar, {}, terms=5)
    g_hd = neumann_hypergradient(mlp_loss, params, bufs, batches[0], v, per_weight, {}, terms=5)
    assert [g.shape for g in g_hd["lr"]] == [p.shape for p in params]
    assert sum(g.sum() for g in g_hd["lr"]).item() == pytest.approx(g_scalar["lr"].item(), rel=1e-10)
    assert g_hd["weight_decay"].item() == pytest.approx(g_scalar["weight_decay"].item(), rel=1e-10)
    assert g_hd["momentum"].item() == pytest.approx(g_scalar["momentum"].item(), rel=1e-10)
    # and the elementwise rates are not all the same: it is a genuine per-weight gradient
    assert torch.cat([g.reshape(-1) for g in g_hd["lr"]]).std() > 0


@pytest.mark.parametrize("per_weight", [False, True])
def test_in_place_step_matches_the_pure_step(net, per_weight):
    params, bufs, batches, _ = net
    lr = [torch.rand(p.shape) * 0.1 for p in params] if per_weight else 0.05
    grads = torch.func.grad(mlp_loss)(params, batches[0])
    ref_w, ref_b = sgd_step(params, bufs, grads, tuple(lr) if per_weight else lr, 1e-3, 0.9)
    w, b = [p.clone() for p in params], [x.clone() for x in bufs]
    sgd_step_(w, b, [g.clone() for g in grads], lr, 1e-3, 0.9)
    for x, y in zip(w + b, ref_w + ref_b):
        torch.testing.assert_close(x, y, rtol=1e-14, atol=1e-15)


def test_hyperparameter_bounds_and_units():
    h = Hyperparameters(0.5, 1e-3, 0.9, ["lr"], optimiser="sgd", hyper_lr=100.0, dtype=torch.float64)
    assert h.summary() == pytest.approx({"lr": 0.5, "weight_decay": 1e-3, "momentum": 0.9}, rel=1e-12)
    h.step({"lr": torch.tensor(-1.0)})          # a huge step up: log10(lr) is clipped at 0
    assert h.summary()["lr"] == pytest.approx(1.0)
    h.step({"lr": torch.tensor(1.0)})           # and at -10 below
    assert h.summary()["lr"] == pytest.approx(1e-10)
    assert h.summary()["momentum"] == pytest.approx(0.9)   # not optimised: untouched
    h.scale_lr(0.5)
    assert h.summary()["lr"] == pytest.approx(1e-10)       # scaled, then clipped again


def test_neumann_hypergradient_vmaps_over_a_population(net):
    """Pure over tensors: one vmapped call gives every member's hypergradient of a population."""
    params, bufs, batches, _ = net
    g = torch.Generator().manual_seed(5)
    P = 3
    pop_params = tuple(p + 0.1 * torch.randn((P,) + p.shape, generator=g) for p in params)
    pop_bufs = tuple(b.expand((P,) + b.shape).clone() for b in bufs)
    pop_h = {"lr": torch.tensor([-1.0, -2.0, -1.5]), "weight_decay": torch.tensor([-3.0, -4.0, -2.0]),
             "momentum": torch.tensor([0.0, 1.0, -1.0])}
    val_grads = tuple(torch.randn((P,) + p.shape, generator=g) for p in params)

    def one(w, b, h, v):
        return neumann_hypergradient(mlp_loss, w, b, batches[0], v, h, {}, terms=5)

    population = torch.func.vmap(one)(pop_params, pop_bufs, pop_h, val_grads)
    for i in range(P):
        ref = one(tuple(p[i] for p in pop_params), tuple(b[i] for b in pop_bufs),
                  {k: v[i] for k, v in pop_h.items()}, tuple(v[i] for v in val_grads))
        for name in ref:
            torch.testing.assert_close(population[name][i], ref[name], rtol=1e-12, atol=1e-14)
