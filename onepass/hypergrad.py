"""Hypergradients of the validation loss with respect to the unconstrained hyperparameters.

All functions are pure over tensors: weights, momentum buffers and hyperparameters go in as tuples / dicts
of tensors, loss functions as ``loss_fn(params, batch) -> scalar`` closures.

* :func:`neumann_hypergradient` - the paper's method (and Lorraine et al.'s): implicit function theorem at
  the last weight update u(w, lambda) = w_{t-1} - w_t, with the inverse Jacobian replaced by a truncated
  Neumann series,  g = -v . sum_{j<i} (I - du/dw)^j . du/dlambda,  v = dL_val/dw.
* :func:`baydin_hypergradient` - hypergradient descent (Baydin et al.): -grad L(w_t) . grad L(w_{t-1}).
* :func:`unrolled_hypergradient` - exact differentiation through a window of weight steps
  (Diff-through-Opt and its long variants).
"""

from __future__ import annotations

import torch

from .updates import clip_by_norm, natural, sgd_step, update_direction

Tensors = tuple[torch.Tensor, ...]


def _sub(a: Tensors, b: Tensors) -> Tensors:
    return tuple(x - y for x, y in zip(a, b))


def _add(a: Tensors, b: Tensors) -> Tensors:
    return tuple(x + y for x, y in zip(a, b))


def neumann_hypergradient(train_loss, params_prev: Tensors, bufs_prev: Tensors, train_batch,
                          val_grad: Tensors, hypers: dict, fixed: dict, terms: int,
                          max_norm: float | None = None) -> dict:
    """Approximate implicit hypergradient through the last weight update.

    ``params_prev``/``bufs_prev``/``train_batch`` are the weights, momentum buffers (held constant) and
    batch of the last weight step; ``val_grad`` is v = dL_val/dw at the weights after that step.
    One ``torch.func.vjp`` closure of u is reused for all ``terms`` products.  Returns a dict shaped like
    ``hypers``.
    """
    def u(w, h):
        return update_direction(w, h, bufs_prev, train_batch, train_loss, fixed, max_norm)

    _, vjp_fn = torch.func.vjp(u, tuple(params_prev), hypers)
    p = tuple(val_grad)
    total = p
    for _ in range(terms - 1):
        dw, _ = vjp_fn(p)
        p = _sub(p, dw)          # p <- p (I - du/dw)
        total = _add(total, p)
    _, dh = vjp_fn(total)
    return torch.utils._pytree.tree_map(torch.neg, dh)


def baydin_hypergradient(grads_now: Tensors, grads_prev: Tensors) -> torch.Tensor:
    """dL(w_t)/d(lr) for plain SGD: -grad L(w_t) . grad L(w_{t-1})."""
    return -sum((a * b).sum() for a, b in zip(grads_now, grads_prev))


def unrolled_hypergradient(train_loss_aux, val_loss, params0: Tensors, bufs0: Tensors, next_batch, steps: int,
                           val_batch, hypers: dict, fixed: dict, max_norm: float | None = None,
                           carry=None):
    """Exact hypergradient of ``val_loss`` after ``steps`` differentiable SGD steps from (params0, bufs0).

    ``train_loss_aux(params, batch) -> (loss, aux)``; ``next_batch()`` yields the training batches in order
    and ``carry(aux)`` (optional) receives each step's auxiliary output (an LSTM's hidden state).
    Returns (hypergradient dict, final weights, final buffers, validation loss, training losses of the
    window as a 1-D tensor), all but the first detached.
    """
    leaves = torch.utils._pytree.tree_map(lambda t: t.detach().requires_grad_(True), hypers)
    lr, wd, mom = natural({**fixed, **leaves})
    w = tuple(p.detach().requires_grad_(True) for p in params0)
    b = tuple(x.detach() for x in bufs0)
    losses = []
    for _ in range(steps):
        loss, aux = train_loss_aux(w, next_batch())
        losses.append(loss.detach())
        if carry is not None:
            carry(aux)
        grads = clip_by_norm(torch.autograd.grad(loss, w, create_graph=True), max_norm)
        w, b = sgd_step(w, b, grads, lr, wd, mom)
    val = val_loss(w, val_batch)
    flat, spec = torch.utils._pytree.tree_flatten(leaves)
    grads = torch.autograd.grad(val, flat, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(flat, grads)]
    return (torch.utils._pytree.tree_unflatten(grads, spec), tuple(x.detach() for x in w),
            tuple(x.detach() for x in b), val.detach(), torch.stack(losses))
