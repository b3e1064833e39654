"""Hypergradients of the validation loss with respect to the unconstrained hyperparameters, for a population.

Weights, momentum buffers and hyperparameters carry the members on their leading dimension (see
:mod:`onepass.updates`); a loss function ``loss_fn(params, batch) -> [N]`` returns every member's loss. Members
are independent, so differentiating the *sum* of their losses gives each member its own derivative, and every
function here is exactly the per-member computation done for all members at once.

* :func:`linearised_update` + :func:`neumann_hypergradient` - the paper's method (and Lorraine et al.'s):
  implicit function theorem at the last weight update u(w, lambda) = w_{t-1} - w_t, with the inverse Jacobian
  replaced by a truncated Neumann series,  g = -v . sum_{j<i} (I - du/dw)^j . du/dlambda,  v = dL_val/dw.
  The products with du/dw are vector-Jacobian products through the gradient (Hessian-vector products); the
  product with du/dlambda is in closed form (:func:`onepass.updates.update_vjp`).
* :func:`baydin_hypergradient` - hypergradient descent (Baydin et al.): -grad L(w_t) . grad L(w_{t-1}).
* :class:`Unroll` / :func:`unrolled_hypergradient` - exact differentiation through a window of weight steps
  (Diff-through-Opt and its long variants).
"""

from __future__ import annotations

import torch

from .updates import clip_by_norm, natural, sgd_step, spread, update_vjp

Tensors = tuple[torch.Tensor, ...]


def linearised_update(loss_fn, params: Tensors, bufs: Tensors, batch, lr, wd, mom,
                      max_norm: float | None = None):
    """The weight update u(w) = lr (mom b + clip(grad L(w)) + wd w) from ``params`` on ``batch``, with its graph
    to the weights kept for :func:`neumann_hypergradient`.

    Returns (w, u, d, losses, aux): the differentiable copy of the weights, the update, the new momentum
    buffers d = u / lr, the members' training losses and the loss function's aux output. The step itself is
    w - u (detached); the buffers b are held constant, as the paper's method does."""
    w = tuple(p.detach().requires_grad_(True) for p in params)
    losses, aux = loss_fn(w, batch)
    grads = torch.autograd.grad(losses.sum(), w, create_graph=True)
    u, d = update_with_graph(w, bufs, grads, lr, wd, mom, max_norm)
    return w, u, d, losses.detach(), aux


def neumann_hypergradient(w: Tensors, u: Tensors, val_grad: Tensors, terms: int, bufs: Tensors, lr, wd, mom,
                          names, hvp=None) -> dict:
    """g = -v . sum_{j<terms} (I - du/dw)^j . du/dlambda for every member, for the hyperparameters ``names``.

    ``w``/``u`` come from :func:`linearised_update` (its graph is reused for all ``terms - 1`` products),
    ``val_grad`` is v = dL_val/dw after the step, and ``bufs``/``lr``/``wd``/``mom`` are those the update
    was taken with. Given ``hvp(v)`` (the training loss's Hessian at ``w`` times v, a list like the
    weights: :func:`onepass.stacked.population_mlp_grads`), the products are p . du/dw = H (lr p) + wd lr p
    instead (H is symmetric; u needs no graph then). Returns {name: [N] tensor} (a per-weight lr: a tuple
    shaped like the weights)."""
    total = neumann_series(w, u, val_grad, terms, products(hvp, lr, wd, w))
    detached = tuple(x.detach() for x in u)
    grads = update_vjp(total, detached, tuple(x.detach() for x in w), bufs, lr, wd, mom, names)
    return torch.utils._pytree.tree_map(torch.neg, grads)


def baydin_hypergradient(grads_now: Tensors, grads_prev: Tensors) -> torch.Tensor:
    """dL(w_t)/d(lr) for plain SGD, every member: -grad L(w_t) . grad L(w_{t-1}), shape [N]."""
    return -sum((a * b).reshape(a.shape[0], -1).sum(1) for a, b in zip(grads_now, grads_prev))


class Unroll:
    """Differentiable SGD steps from (params0, bufs0), one :meth:`step` at a time, every member at once;
    :meth:`finish` gives the exact hypergradient of the validation loss after them.

    ``hypers``/``fixed`` are the unconstrained hyperparameters that are / are not differentiated; ``lr_mask``
    ([N], optional) multiplies the learning rates (0 for members that no longer train). Taking the steps one at
    a time lets a caller that is handed one batch per call (:class:`onepass.optim.OnePassSGD`) move its weights
    with every call."""

    def __init__(self, params0: Tensors, bufs0: Tensors, hypers: dict, fixed: dict,
                 lr_mask: torch.Tensor | None = None):
        self.leaves = torch.utils._pytree.tree_map(lambda t: t.detach().requires_grad_(True), hypers)
        lr, wd, mom = natural({**fixed, **self.leaves})
        if lr_mask is not None:
            lr = tuple(x * lr_mask.reshape(lr_mask.shape + (1,) * (x.dim() - 1)) for x in lr) \
                if isinstance(lr, tuple) else lr * lr_mask
        self.hypers = (lr, wd, mom)
        self.w = tuple(p.detach().requires_grad_(True) for p in params0)
        self.b = tuple(x.detach() for x in bufs0)
        self.losses = []
        self.batches = []    # the batches stepped on, to rebuild the steps from (params0, bufs0)

    def step(self, loss_fn, batch, max_norm: float | None = None):
        """One differentiable step on ``batch``: returns (the training losses [N] before it, detached, aux)."""
        loss, aux = loss_fn(self.w, batch)
        self.losses.append(loss.detach())
        self.batches.append(batch)
        grads = clip_by_norm(torch.autograd.grad(loss.sum(), self.w, create_graph=True), max_norm)
        self.w, self.b = sgd_step(self.w, self.b, grads, *self.hypers)
        return loss.detach(), aux

    def weights(self) -> tuple[Tensors, Tensors]:
        """The weights and momentum buffers after the steps so far, detached."""
        return tuple(x.detach() for x in self.w), tuple(x.detach() for x in self.b)

    def finish(self, val_loss_fn, val_batch):
        """(hypergradient dict, final weights, final buffers, validation losses [N], training losses
        [steps, N]), all but the first detached."""
        val = val_loss_fn(self.w, val_batch)
        flat, spec = torch.utils._pytree.tree_flatten(self.leaves)
        grads = torch.autograd.grad(val.sum(), flat, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for x, g in zip(flat, grads)]
        return (torch.utils._pytree.tree_unflatten(grads, spec), *self.weights(), val.detach(),
                torch.stack(self.losses))


def unrolled_hypergradient(loss_fn, val_loss_fn, params0: Tensors, bufs0: Tensors, next_batch, steps: int,
                           val_batch, hypers: dict, fixed: dict, max_norm: float | None = None, carry=None,
                           lr_mask: torch.Tensor | None = None):
    """Exact hypergradient of the validation loss after ``steps`` differentiable SGD steps from
    (params0, bufs0), every member at once (:class:`Unroll` in one call).

    ``loss_fn(params, batch) -> (losses [N], aux)``; ``next_batch()`` yields the training batches in order and
    ``carry(aux)`` (optional) receives each step's auxiliary output (an LSTM's hidden state). Returns
    (hypergradient dict, final weights, final buffers, validation losses [N], training losses [steps, N]),
    all but the first detached."""
    unroll = Unroll(params0, bufs0, hypers, fixed, lr_mask)
    for _ in range(steps):
        _, aux = unroll.step(loss_fn, next_batch(), max_norm)
        if carry is not None:
            carry(aux)
    return unroll.finish(val_loss_fn, val_batch)


def update_with_graph(w: Tensors, bufs: Tensors, grads: Tensors, lr, wd, mom, max_norm: float | None = None):
    """(u, d): the update u = lr d, d = mom b + clip(grads) + wd w, keeping the graph of ``grads`` (taken
    with ``create_graph``) and of ``w``; the body of :func:`linearised_update`, for a caller that takes the
    gradients itself (:mod:`onepass.optim`)."""
    grads = clip_by_norm(grads, max_norm)
    moms, wds, lrs = spread(mom, w), spread(wd, w), spread(lr, w)
    d = tuple(m * b + g + x * p for p, b, g, m, x in zip(w, bufs, grads, moms, wds))
    return tuple(l * x for l, x in zip(lrs, d)), d


def products(hvp, lr, wd, w: Tensors):
    """p -> p . du/dw from a Hessian-vector product ``hvp`` of the training loss: H (lr p) + wd lr p (H is
    symmetric); None without one (the products then go through the update's graph)."""
    if hvp is None:
        return None
    lrs, wds = spread(lr, w), spread(wd, w)

    def vjp(p):
        q = [l * x for l, x in zip(lrs, p)]
        return tuple(h.add_(x * y) for h, x, y in zip(hvp(q), wds, q))
    return vjp


def neumann_series(w: Tensors, u: Tensors, val_grad: Tensors, terms: int, vjp=None) -> Tensors:
    """v . sum_{j<terms} (I - du/dw)^j, v = ``val_grad``: the cotangent that :func:`neumann_hypergradient`
    contracts with du/dlambda (:func:`onepass.updates.update_vjp`). ``vjp(p)`` = p . du/dw
    (:func:`products`), else a vector-Jacobian product through ``u``'s graph."""
    p = tuple(v.detach() for v in val_grad)
    total = p
    for _ in range(terms - 1):
        dw = vjp(p) if vjp is not None else torch.autograd.grad(u, w, grad_outputs=p, retain_graph=True)
        p = tuple(x - y for x, y in zip(p, dw))          # p <- p (I - du/dw)
        total = tuple(x + y for x, y in zip(total, p))
    return total
