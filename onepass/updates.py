"""SGD's weight update (PyTorch's conventions) and its hyperparameters in an unconstrained space.

d = grad L(w) + xi * w;   b <- mu * b + d;   w <- w - eta * b,
with eta = 10**a, xi = 10**c, mu = sigmoid(m).  The pure functions here take and return tuples of tensors
so that they can be differentiated (and vmapped) with ``torch.func``; :func:`sgd_step_` is the same step
done in place with ``torch._foreach_*`` for the plain training loop.
"""

from __future__ import annotations

import math

import torch

Tensors = tuple[torch.Tensor, ...]

MOMENTUM_EPS = 1e-7  # momentum is kept inside (eps, 1 - eps) so that its logit is finite


def to_unconstrained(name: str, value: float) -> float:
    """Natural hyperparameter value -> the unconstrained value that is optimised."""
    if name in ("lr", "weight_decay"):
        return math.log10(max(value, 1e-30))
    if name == "momentum":
        mu = min(max(value, MOMENTUM_EPS), 1 - MOMENTUM_EPS)
        return math.log(mu / (1 - mu))
    raise KeyError(name)


def natural(hypers: dict) -> tuple:
    """(lr, weight_decay, momentum) in natural units from unconstrained tensors; lr may be a tuple
    of per-weight tensors."""
    a = hypers["lr"]
    lr = tuple(10.0 ** x for x in a) if isinstance(a, (tuple, list)) else 10.0 ** a
    return lr, 10.0 ** hypers["weight_decay"], torch.sigmoid(hypers["momentum"])


def clip_by_norm(grads: Tensors, max_norm: float | None) -> Tensors:
    """Scale ``grads`` to global norm at most ``max_norm`` (as ``torch.nn.utils.clip_grad_norm_``)."""
    if max_norm is None:
        return grads
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return tuple(g * scale for g in grads)


def sgd_step(params: Tensors, bufs: Tensors, grads: Tensors, lr, wd, mom) -> tuple[Tensors, Tensors]:
    """One SGD step as a pure function: returns (new weights, new momentum buffers)."""
    lrs = lr if isinstance(lr, (tuple, list)) else (lr,) * len(params)
    new_bufs = tuple(mom * b + g + wd * w for w, b, g in zip(params, bufs, grads))
    new_params = tuple(w - l * b for w, b, l in zip(params, new_bufs, lrs))
    return new_params, new_bufs


def update_direction(params: Tensors, hypers: dict, bufs: Tensors, batch, loss_fn, fixed: dict,
                     max_norm: float | None = None) -> Tensors:
    """u(w, lambda) = w_{t-1} - w_t: the weight update taken from ``params`` with momentum buffers ``bufs``
    (held constant) on ``batch``.  ``hypers`` are the differentiated unconstrained hyperparameters,
    ``fixed`` the others."""
    grads = clip_by_norm(torch.func.grad(loss_fn)(params, batch), max_norm)
    lr, wd, mom = natural({**fixed, **hypers})
    lrs = lr if isinstance(lr, tuple) else (lr,) * len(params)
    return tuple(l * (mom * b + g + wd * w) for w, b, g, l in zip(params, bufs, grads, lrs))


@torch.no_grad()
def sgd_step_(params: list, bufs: list, grads: list, lr, wd: float, mom: float) -> None:
    """The same step in place. ``grads`` is overwritten; ``lr`` is a float or a list of per-weight tensors."""
    if wd != 0.0:
        torch._foreach_add_(grads, params, alpha=wd)
    torch._foreach_mul_(bufs, mom)
    torch._foreach_add_(bufs, grads)
    if isinstance(lr, (list, tuple)):
        torch._foreach_addcmul_(params, bufs, lr, value=-1.0)
    else:
        torch._foreach_add_(params, bufs, alpha=-lr)


@torch.no_grad()
def clip_by_norm_(grads: list, max_norm: float | None) -> None:
    """In-place global-norm clipping of a list of gradients (same rule as :func:`clip_by_norm`)."""
    if max_norm is not None:
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))


class Hyperparameters:
    """The unconstrained hyperparameters of one run, their optimiser and their bounds.

    ``values`` maps lr / weight_decay / momentum to 0-dim tensors (lr: a list of per-weight tensors when
    ``per_weight_shapes`` is given).  Only the names in ``optimise`` are updated.
    """

    def __init__(self, lr: float, weight_decay: float, momentum: float, optimise=(), *,
                 per_weight_shapes=None, optimiser: str = "adam", hyper_lr: float = 0.05,
                 log10_lr_bounds=(-10.0, 0.0), dtype=torch.float32, device="cpu"):
        def scalar(name, value):
            return torch.tensor(to_unconstrained(name, value), dtype=dtype, device=device)

        self.bounds = log10_lr_bounds
        self.optimise = tuple(optimise)
        a = scalar("lr", lr)
        self.values = {
            "lr": [a.expand(s).clone() for s in per_weight_shapes] if per_weight_shapes else a,
            "weight_decay": scalar("weight_decay", weight_decay),
            "momentum": scalar("momentum", momentum),
        }
        self.clip()
        leaves = [t for name in self.optimise for t in self._leaves(name)]
        self.optimiser = None
        if leaves:
            cls = torch.optim.Adam if optimiser == "adam" else torch.optim.SGD
            self.optimiser = cls(leaves, lr=hyper_lr)

    @property
    def per_weight(self) -> bool:
        return isinstance(self.values["lr"], list)

    def _leaves(self, name: str) -> list:
        value = self.values[name]
        return list(value) if isinstance(value, list) else [value]

    def trainable(self) -> dict:
        """Detached copies of the optimised hyperparameters (the inputs that hypergradients are taken to)."""
        out = {}
        for name in self.optimise:
            value = self.values[name]
            out[name] = tuple(v.detach() for v in value) if isinstance(value, list) else value.detach()
        return out

    def _tree(self) -> dict:
        """``values`` with a per-weight lr as a tuple, the form :func:`natural` takes."""
        return {name: tuple(v) if isinstance(v, list) else v for name, v in self.values.items()}

    def fixed(self) -> dict:
        """The hyperparameters that are held constant, as a dict of tensors."""
        return {name: v for name, v in self._tree().items() if name not in self.optimise}

    def for_step(self):
        """(lr, weight_decay, momentum) for :func:`sgd_step_`: floats, lr a list of tensors if per weight."""
        with torch.no_grad():
            lr, wd, mom = natural(self._tree())
        lr = list(lr) if isinstance(lr, tuple) else lr.item()
        return lr, wd.item(), mom.item()

    @torch.no_grad()
    def clip(self) -> None:
        for a in self._leaves("lr"):
            a.clamp_(*self.bounds)

    @torch.no_grad()
    def scale_lr(self, factor: float) -> None:
        """Multiply the learning rate by ``factor`` (Random_SteppedLR), then clip."""
        for a in self._leaves("lr"):
            a.add_(math.log10(factor))
        self.clip()

    def step(self, grads: dict) -> None:
        """One optimiser step on the unconstrained hyperparameters with ``grads`` (same structure as
        :meth:`trainable`), then clip log10(lr)."""
        for name in self.optimise:
            for leaf, g in zip(self._leaves(name), grads[name] if self.per_weight and name == "lr"
                               else [grads[name]]):
                leaf.grad = g.detach().to(leaf.dtype).reshape(leaf.shape).clone()
        self.optimiser.step()
        self.optimiser.zero_grad(set_to_none=True)
        self.clip()

    def summary(self) -> dict:
        """Natural values as floats; a per-weight learning rate is summarised by its mean."""
        with torch.no_grad():
            lr, wd, mom = natural(self._tree())
            if isinstance(lr, tuple):
                lr = torch.cat([x.reshape(-1) for x in lr]).mean()
        return {"lr": float(lr), "weight_decay": float(wd), "momentum": float(mom)}

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for name in self.values for t in self._leaves(name))

    def state_dict(self) -> dict:
        return {"values": {k: [t.clone() for t in self._leaves(k)] for k in self.values},
                "optimiser": self.optimiser.state_dict() if self.optimiser else None}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for name, saved in state["values"].items():
            for leaf, value in zip(self._leaves(name), saved):
                leaf.copy_(value)
        if self.optimiser is not None:
            self.optimiser.load_state_dict(state["optimiser"])
