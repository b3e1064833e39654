"""Every hypergradient against an exact reference on small float64 problems, and every population
computation against the per-member loop.

The functions under test take weights stacked on a leading member dimension (see onepass.updates); the
references are written independently, for one member, with torch.func.
"""

import math

import pytest
import torch

from onepass.hypergrad import (baydin_hypergradient, linearised_update, neumann_hypergradient,
                               unrolled_hypergradient)
from onepass.updates import (Hyperparameters, clip_by_norm, clip_by_norm_, natural, sgd_step, sgd_step_, spread,
                             to_unconstrained)

LN10 = math.log(10.0)
NAMES = ("lr", "weight_decay", "momentum")


@pytest.fixture(autouse=True, scope="module")
def float64():
    """Exact references need float64; restore the default afterwards for the other test modules."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def unconstrained(lr, wd, mom):
    """Unconstrained hyperparameters of a population (one entry per member)."""
    return {"lr": torch.tensor([to_unconstrained("lr", x) for x in lr]),
            "weight_decay": torch.tensor([to_unconstrained("weight_decay", x) for x in wd]),
            "momentum": torch.tensor([to_unconstrained("momentum", x) for x in mom])}


def member(tree, i):
    """Member i of a stacked tree, keeping a member dimension of 1."""
    return torch.utils._pytree.tree_map(lambda t: t[i:i + 1], tree)


# ---- a ridge-regression problem with a closed-form optimum ---------------------------------------------
@pytest.fixture(scope="module")
def ridge():
    g = torch.Generator().manual_seed(0)
    X, Xv = torch.randn(40, 5, generator=g), torch.randn(30, 5, generator=g)
    w_true = torch.randn(5, generator=g)
    y, yv = X @ w_true + 0.3 * torch.randn(40, generator=g), Xv @ w_true + 0.3 * torch.randn(30, generator=g)
    return X, y, Xv, yv


def ridge_losses(params, batch):
    """Every member's 0.5 * mean squared error: weights [N, 5], a shared batch."""
    X, y = batch
    return 0.5 * ((params[0] @ X.T - y) ** 2).mean(1), ()


def neumann(loss_fn, params, bufs, batch, val_grad_of, h, names, terms, max_norm=None):
    """The engine's Neumann hypergradient: linearise the step, v at the new weights, the series."""
    lr, wd, mom = natural(h)
    w, u, d, _, _ = linearised_update(loss_fn, params, bufs, batch, lr, wd, mom, max_norm)
    new = tuple((x - y).detach() for x, y in zip(w, u))
    return neumann_hypergradient(w, u, val_grad_of(new), terms, bufs, lr, wd, mom, names)


def test_neumann_equals_implicit_function_theorem_at_the_optimum(ridge):
    X, y, Xv, yv = ridge
    wds = [0.1, 0.02]
    h = unconstrained([0.05, 0.08], wds, [0.6, 0.3])
    A = X.T @ X / len(X)
    w_star, v, expected = [], [], []
    for wd in wds:
        M = A + wd * torch.eye(5)
        w = torch.linalg.solve(M, X.T @ y / len(X))
        grad_val = Xv.T @ (Xv @ w - yv) / len(Xv)
        w_star.append(w)
        v.append(grad_val)
        # closed form: dL_val/dc with wd = 10**c; w* does not depend on lr or momentum
        expected.append(-(grad_val @ torch.linalg.solve(M, w)) * wd * LN10)
    params, bufs = (torch.stack(w_star),), (torch.zeros(2, 5),)
    v = (torch.stack(v),)
    grads = neumann(ridge_losses, params, bufs, (X, y), lambda _: v, h, NAMES, terms=3000)
    for i in range(2):
        assert grads["weight_decay"][i].item() == pytest.approx(expected[i].item(), rel=1e-8)
    # at the optimum the update is zero, so lr and momentum have no hypergradient
    assert grads["lr"].abs().max().item() < 1e-12 and grads["momentum"].abs().max().item() < 1e-12
    # few terms are only an approximation: the series really is being summed
    few = neumann(ridge_losses, params, bufs, (X, y), lambda _: v, h, NAMES, terms=5)
    assert abs(few["weight_decay"][0].item() - expected[0].item()) > 1e-3 * abs(expected[0].item())


# ---- a small nonlinear network -------------------------------------------------------------------------
P = 3  # members


@pytest.fixture(scope="module")
def net():
    g = torch.Generator().manual_seed(1)
    params = (0.5 * torch.randn(P, 4, 3, generator=g), 0.5 * torch.randn(P, 4, generator=g),
              0.5 * torch.randn(P, 4, generator=g))
    bufs = tuple(0.1 * torch.randn(p.shape, generator=g) for p in params)
    batches = [(torch.randn(16, 3, generator=g), torch.randn(16, generator=g)) for _ in range(6)]
    val = (torch.randn(20, 3, generator=g), torch.randn(20, generator=g))
    h = unconstrained([0.1, 0.2, 0.05], [1e-2, 3e-2, 1e-3], [0.7, 0.5, 0.2])
    return params, bufs, batches, val, h


def one_loss(params, batch):
    """One member's loss (unstacked weights): a tanh network."""
    W, b, v = params
    x, y = batch
    return ((torch.tanh(x @ W.T + b) @ v - y) ** 2).mean()


def mlp_losses(params, batch):
    """Every member's loss: the same network with weights stacked on a member dimension."""
    return torch.vmap(one_loss, in_dims=(0, None))(params, batch), ()


def val_grad(batch):
    return lambda params: torch.vmap(torch.func.grad(one_loss), in_dims=(0, None))(params, batch)


def unrolled_val_loss(h, params, bufs, batches, val):
    """Reference: member 0's validation loss after differentiable SGD steps, for one member's unstacked
    hyperparameters ``h`` (scalars) and weights."""
    lr, wd, mom = natural(h)
    w, b = params, bufs
    for batch in batches:
        grads = torch.func.grad(one_loss)(w, batch) if not w[0].requires_grad else \
            torch.autograd.grad(one_loss(w, batch), w, create_graph=True)
        b = tuple(mom * x + g + wd * p for p, x, g in zip(w, b, grads))
        w = tuple(p - lr * x for p, x in zip(w, b))
    return one_loss(w, val)


def reference_neumann(params, bufs, batch, v, h, terms, max_norm=None):
    """The paper's formula for one member with torch.func only: g = -v . sum_j (I - du/dw)^j . du/dlambda,
    du/dlambda by a vjp too (the engine uses its closed form)."""
    def u(w, hh):
        lr, wd, mom = natural(hh)
        g = torch.func.grad(one_loss)(w, batch)
        if max_norm is not None:
            norm = torch.sqrt(sum((x ** 2).sum() for x in g))
            g = tuple(x * torch.clamp(max_norm / (norm + 1e-6), max=1.0) for x in g)
        lrs = lr if isinstance(lr, tuple) else (lr,) * len(w)
        return tuple(l * (mom * b + x + wd * p) for p, b, x, l in zip(w, bufs, g, lrs))
    _, vjp = torch.func.vjp(u, params, h)
    p, total = v, v
    for _ in range(terms - 1):
        dw, _ = vjp(p)
        p = tuple(a - b for a, b in zip(p, dw))
        total = tuple(a + b for a, b in zip(total, p))
    _, dh = vjp(total)
    return torch.utils._pytree.tree_map(torch.neg, dh)


@pytest.mark.parametrize("max_norm", [None, 0.05])
def test_neumann_equals_the_formula_with_autograd_everywhere(net, max_norm):
    params, bufs, batches, val, h = net
    lr, wd, mom = natural(h)
    w, u, d, _, _ = linearised_update(mlp_losses, params, bufs, batches[0], lr, wd, mom, max_norm)
    new = tuple((x - y).detach() for x, y in zip(w, u))
    v = val_grad(val)(new)
    got = neumann_hypergradient(w, u, v, 7, bufs, lr, wd, mom, NAMES)
    for i in range(P):
        ref = reference_neumann(tuple(p[i] for p in params), tuple(b[i] for b in bufs), batches[0],
                                tuple(x[i] for x in v), {k: x[i] for k, x in h.items()}, 7, max_norm)
        for name in NAMES:
            assert got[name][i].item() == pytest.approx(ref[name].item(), rel=1e-10, abs=1e-14), (name, i)


def test_linearised_update_is_the_sgd_step(net):
    params, bufs, batches, _, h = net
    lr, wd, mom = natural(h)
    w, u, d, losses, _ = linearised_update(mlp_losses, params, bufs, batches[0], lr, wd, mom)
    grads = torch.vmap(torch.func.grad(one_loss), in_dims=(0, None))(params, batches[0])
    ref_w, ref_b = sgd_step(params, bufs, grads, lr, wd, mom)
    for a, b in zip(ref_w, (x - y for x, y in zip(w, u))):
        torch.testing.assert_close(a, b.detach(), rtol=1e-14, atol=1e-15)
    for a, b in zip(ref_b, d):
        torch.testing.assert_close(a, b.detach(), rtol=1e-14, atol=1e-15)
    assert losses.shape == (P,)


def test_neumann_with_one_term_is_the_exact_one_step_gradient(net):
    params, bufs, batches, val, h = net
    got = neumann(mlp_losses, params, bufs, batches[0], val_grad(val), h, NAMES, terms=1)
    for i in range(P):
        leaves = {k: x[i].clone().requires_grad_() for k, x in h.items()}
        w0 = tuple(p[i].clone().requires_grad_() for p in params)
        exact = torch.autograd.grad(unrolled_val_loss(leaves, w0, tuple(b[i] for b in bufs), batches[:1], val),
                                    list(leaves.values()))
        for name, ref in zip(leaves, exact):
            assert got[name][i].item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-14)


def test_diff_through_opt_equals_central_finite_differences(net):
    params, bufs, batches, val, h = net
    it = iter(batches[:5])
    grads, w, b, val_loss, losses = unrolled_hypergradient(
        mlp_losses, lambda p, bt: mlp_losses(p, bt)[0], params, bufs, lambda: next(it), 5, val, h, {})
    assert losses.shape == (5, P)
    eps = 1e-6
    for i in range(P):
        one = {k: x[i] for k, x in h.items()}
        w0, b0 = tuple(p[i] for p in params), tuple(x[i] for x in bufs)
        assert val_loss[i].item() == pytest.approx(unrolled_val_loss(one, w0, b0, batches[:5], val).item(),
                                                   rel=1e-12)
        for name in one:
            up, down = {**one, name: one[name] + eps}, {**one, name: one[name] - eps}
            fd = (unrolled_val_loss(up, w0, b0, batches[:5], val)
                  - unrolled_val_loss(down, w0, b0, batches[:5], val)) / (2 * eps)
            assert grads[name][i].item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-10), (name, i)


def test_unrolled_only_differentiates_the_optimised_hyperparameters(net):
    params, bufs, batches, val, h = net
    fixed = {"momentum": h["momentum"]}
    trained = {k: v for k, v in h.items() if k != "momentum"}
    it = iter(batches[:3])
    grads, *_ = unrolled_hypergradient(mlp_losses, lambda p, bt: mlp_losses(p, bt)[0], params, bufs,
                                       lambda: next(it), 3, val, trained, fixed)
    assert set(grads) == {"lr", "weight_decay"}
    it = iter(batches[:3])
    ref, *_ = unrolled_hypergradient(mlp_losses, lambda p, bt: mlp_losses(p, bt)[0], params, bufs,
                                     lambda: next(it), 3, val, h, {})
    torch.testing.assert_close(grads["lr"], ref["lr"], rtol=1e-12, atol=0)


def test_baydin_is_the_analytic_dot_product_and_the_true_lr_derivative(ridge):
    X, y, _, _ = ridge
    A, bvec = X.T @ X / len(X), X.T @ y / len(X)
    w_prev = torch.stack([torch.linspace(-1, 1, 5), torch.linspace(1, -2, 5)])
    g_prev = w_prev @ A - bvec
    lr = torch.tensor([0.07, 0.02], requires_grad=True)
    w_now = w_prev - lr[:, None] * g_prev                    # plain SGD step, each member its own lr
    g_now = w_now.detach() @ A - bvec
    h = baydin_hypergradient((g_now,), (g_prev,))
    torch.testing.assert_close(h, -(g_now * g_prev).sum(1), rtol=1e-12, atol=0)
    (true,) = torch.autograd.grad(ridge_losses((w_now,), (X, y))[0].sum(), lr)
    torch.testing.assert_close(h, true, rtol=1e-10, atol=0)


def test_per_weight_learning_rates(net):
    params, bufs, batches, val, scalar = net
    per_weight = {**scalar, "lr": tuple(scalar["lr"].reshape((P,) + (1,) * (p.dim() - 1)).expand(p.shape).clone()
                                        for p in params)}
    g_scalar = neumann(mlp_losses, params, bufs, batches[0], val_grad(val), scalar, NAMES, terms=5)
    g_hd = neumann(mlp_losses, params, bufs, batches[0], val_grad(val), per_weight, NAMES, terms=5)
    assert [g.shape for g in g_hd["lr"]] == [p.shape for p in params]
    torch.testing.assert_close(sum(g.reshape(P, -1).sum(1) for g in g_hd["lr"]), g_scalar["lr"], rtol=1e-10,
                               atol=0)
    torch.testing.assert_close(g_hd["weight_decay"], g_scalar["weight_decay"], rtol=1e-10, atol=0)
    torch.testing.assert_close(g_hd["momentum"], g_scalar["momentum"], rtol=1e-10, atol=0)
    # and the elementwise rates are not all the same: it is a genuine per-weight gradient
    assert torch.cat([g[0].reshape(-1) for g in g_hd["lr"]]).std() > 0
    # a member's per-weight hypergradient is the formula with per-weight rates, for that member
    lr, wd, mom = natural(per_weight)
    w, u, _, _, _ = linearised_update(mlp_losses, params, bufs, batches[0], lr, wd, mom)
    v = val_grad(val)(tuple((x - y).detach() for x, y in zip(w, u)))
    one = {k: tuple(x[1] for x in value) if isinstance(value, tuple) else value[1] for k, value in per_weight.items()}
    ref = reference_neumann(tuple(p[1] for p in params), tuple(b[1] for b in bufs), batches[0],
                            tuple(x[1] for x in v), one, 5)
    for got, want in zip(g_hd["lr"], ref["lr"]):
        torch.testing.assert_close(got[1], want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("per_weight", [False, True])
def test_in_place_step_matches_the_pure_step(net, per_weight):
    params, bufs, batches, _, h = net
    lr, wd, mom = natural(h)
    if per_weight:
        lr = tuple(torch.rand(p.shape) * 0.1 for p in params)
    grads = torch.vmap(torch.func.grad(one_loss), in_dims=(0, None))(params, batches[0])
    ref_w, ref_b = sgd_step(params, bufs, grads, lr, wd, mom)
    w, b = [p.clone() for p in params], [x.clone() for x in bufs]
    sgd_step_(w, b, [g.clone() for g in grads], spread(lr, params), spread(wd, params), spread(mom, params))
    for x, y in zip(w + b, list(ref_w) + list(ref_b)):
        torch.testing.assert_close(x, y, rtol=1e-14, atol=1e-15)


def test_clipping_is_per_member_as_torch_clips_one_network(net):
    params, _, batches, _, _ = net
    grads = torch.vmap(torch.func.grad(one_loss), in_dims=(0, None))(params, batches[0])
    clipped = clip_by_norm(grads, 0.1)
    in_place = [g.clone() for g in grads]
    clip_by_norm_(in_place, 0.1)
    for i in range(P):
        ref = [torch.nn.Parameter(torch.zeros_like(g[i])) for g in grads]
        for r, g in zip(ref, grads):
            r.grad = g[i].clone()
        torch.nn.utils.clip_grad_norm_(ref, 0.1)
        for a, b, c in zip(clipped, in_place, ref):
            torch.testing.assert_close(a[i], c.grad, rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(b[i], c.grad, rtol=1e-12, atol=1e-15)


def test_population_hypergradients_equal_the_per_member_loop(net):
    """Every member of a population gets exactly what a population of one with its weights gets."""
    params, bufs, batches, val, h = net
    together = neumann(mlp_losses, params, bufs, batches[0], val_grad(val), h, NAMES, terms=5)
    it = iter(batches[:3])
    unrolled, *_ = unrolled_hypergradient(mlp_losses, lambda p, bt: mlp_losses(p, bt)[0], params, bufs,
                                          lambda: next(it), 3, val, h, {})
    for i in range(P):
        alone = neumann(mlp_losses, member(params, i), member(bufs, i), batches[0], val_grad(val), member(h, i),
                        NAMES, terms=5)
        it = iter(batches[:3])
        alone_unrolled, *_ = unrolled_hypergradient(mlp_losses, lambda p, bt: mlp_losses(p, bt)[0],
                                                    member(params, i), member(bufs, i), lambda: next(it), 3, val,
                                                    member(h, i), {})
        for name in NAMES:
            torch.testing.assert_close(together[name][i:i + 1], alone[name], rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(unrolled[name][i:i + 1], alone_unrolled[name], rtol=1e-12, atol=1e-15)


def test_hyperparameter_bounds_units_and_frozen_members():
    h = Hyperparameters([0.5, 0.5], [1e-3, 1e-3], [0.9, 0.9], ["lr"], optimiser="sgd", hyper_lr=100.0,
                        dtype=torch.float64)
    assert h.summary()["lr"].tolist() == pytest.approx([0.5, 0.5], rel=1e-12)
    h.step({"lr": torch.tensor([-1.0, -1.0])}, frozen=torch.tensor([False, True]))
    assert h.summary()["lr"].tolist() == pytest.approx([1.0, 0.5])      # clipped at log10 = 0; member 1 frozen
    h.step({"lr": torch.tensor([1.0, 1.0])})                             # and at -10 below
    assert h.summary()["lr"].tolist() == pytest.approx([1e-10, 1e-10])
    assert h.summary()["momentum"].tolist() == pytest.approx([0.9, 0.9])  # not optimised: untouched
    h.scale_lr(torch.tensor([0.5, 2.0]))
    assert h.summary()["lr"].tolist() == pytest.approx([1e-10, 2e-10])   # scaled, then clipped again
    assert h.finite().tolist() == [True, True]
