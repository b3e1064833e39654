"""SGD's weight update (PyTorch's conventions) and its hyperparameters, for a population of members.

    d = grad L(w) + xi * w;   b <- mu * b + d;   w <- w - eta * b,
    eta = 10**a,  xi = 10**c,  mu = sigmoid(m)   (a, c, m: the unconstrained values that are optimised).

Every tensor carries the members on its leading dimension: weights and momentum buffers ``[N, *shape]``,
a scalar hyperparameter ``[N]``, a per-weight learning rate ``[N, *shape]`` per weight tensor. Members never
mix: each member's result depends on its own slices only, so the gradient of the *sum* of the members'
losses is every member's own gradient. The pure functions take and return tuples (for differentiation);
:func:`sgd_step_` is the same step in place with ``torch._foreach_*`` for the plain training loop.
"""

from __future__ import annotations

import math

import torch

Tensors = tuple[torch.Tensor, ...]

MOMENTUM_EPS = 1e-7  # momentum is kept inside (eps, 1 - eps) so that its logit is finite
LN10 = math.log(10.0)


def to_unconstrained(name: str, value: float) -> float:
    """Natural hyperparameter value -> the unconstrained value that is optimised."""
    if name in ("lr", "weight_decay"):
        return math.log10(max(value, 1e-30))
    if name == "momentum":
        mu = min(max(value, MOMENTUM_EPS), 1 - MOMENTUM_EPS)
        return math.log(mu / (1 - mu))
    raise KeyError(name)


def per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` of shape [N] viewed as [N, 1, ..., 1] to broadcast against ``like`` ([N, *shape])."""
    return values.reshape(values.shape[:1] + (1,) * (like.dim() - 1))


def spread(value, params: Tensors) -> Tensors:
    """A hyperparameter as one tensor per weight tensor, broadcastable against it: a per-weight tuple as it
    is, an [N] tensor viewed per member."""
    if isinstance(value, (tuple, list)):
        return tuple(value)
    return tuple(per_member(value, p) for p in params)


def natural(values: dict) -> tuple:
    """(lr, weight_decay, momentum) in natural units from unconstrained tensors; lr may be a tuple of
    per-weight tensors."""
    a = values["lr"]
    lr = tuple(10.0 ** x for x in a) if isinstance(a, (tuple, list)) else 10.0 ** a
    return lr, 10.0 ** values["weight_decay"], torch.sigmoid(values["momentum"])


def member_norms(tensors: Tensors) -> torch.Tensor:
    """Global L2 norm of every member's slices of ``tensors``: shape [N]."""
    squares = [t.reshape(t.shape[0], -1).pow(2).sum(1) for t in tensors]
    return torch.stack(squares).sum(0).sqrt()


def clip_by_norm(grads: Tensors, max_norm: float | None) -> Tensors:
    """Scale each member's gradients to global norm at most ``max_norm`` (``clip_grad_norm_``'s rule)."""
    if max_norm is None:
        return tuple(grads)
    scale = torch.clamp(max_norm / (member_norms(grads) + 1e-6), max=1.0)
    return tuple(g * per_member(scale, g) for g in grads)


@torch.no_grad()
def clip_by_norm_(grads: list, max_norm: float | None) -> None:
    """In-place :func:`clip_by_norm`."""
    if max_norm is not None:
        scale = torch.clamp(max_norm / (member_norms(grads) + 1e-6), max=1.0)
        torch._foreach_mul_(grads, [per_member(scale, g) for g in grads])


def sgd_step(params: Tensors, bufs: Tensors, grads: Tensors, lr, wd, mom) -> tuple[Tensors, Tensors]:
    """One SGD step as a pure function: returns (new weights, new momentum buffers). ``lr``/``wd``/``mom``
    are [N] tensors (``lr`` may be per weight)."""
    lrs, wds, moms = spread(lr, params), spread(wd, params), spread(mom, params)
    new_bufs = tuple(m * b + g + x * w for w, b, g, m, x in zip(params, bufs, grads, moms, wds))
    new_params = tuple(w - l * b for w, b, l in zip(params, new_bufs, lrs))
    return new_params, new_bufs


@torch.no_grad()
def sgd_step_(params: list, bufs: list, grads: list, lr: Tensors, wd: Tensors, mom: Tensors) -> None:
    """The same step in place; ``grads`` is overwritten. ``lr``/``wd``/``mom`` are already spread per weight
    tensor (see :func:`spread`)."""
    torch._foreach_addcmul_(grads, params, wd)
    torch._foreach_mul_(bufs, mom)
    torch._foreach_add_(bufs, grads)
    torch._foreach_addcmul_(params, bufs, lr, value=-1.0)


def update_vjp(cotangent: Tensors, u: Tensors, params: Tensors, bufs: Tensors, lr, wd, mom,
               names) -> dict:
    """``cotangent . du/dlambda`` for the update u = lr (mom b + g + wd w), in closed form, for the
    unconstrained hyperparameters ``names``: du/da = ln10 u, du/dc = ln10 lr wd w, du/dm = lr mom (1 - mom) b
    (g does not depend on the hyperparameters). Returns [N] tensors (a per-weight lr: a tuple per weight)."""
    out = {}
    with torch.no_grad():
        if "lr" in names:
            terms = tuple(LN10 * c * x for c, x in zip(cotangent, u))
            if isinstance(lr, (tuple, list)):
                out["lr"] = terms
            else:
                out["lr"] = sum(t.reshape(t.shape[0], -1).sum(1) for t in terms)
        lrs = spread(lr, params)
        if "weight_decay" in names:
            out["weight_decay"] = sum((c * l * w).reshape(c.shape[0], -1).sum(1)
                                      for c, l, w in zip(cotangent, lrs, params)) * (LN10 * wd)
        if "momentum" in names:
            out["momentum"] = sum((c * l * b).reshape(c.shape[0], -1).sum(1)
                                  for c, l, b in zip(cotangent, lrs, bufs)) * (mom * (1 - mom))
    return out


class Hyperparameters:
    """The unconstrained hyperparameters of a population, their optimiser and their bounds.

    ``values`` maps lr / weight_decay / momentum to [N] tensors (lr: a list of [N, *shape] tensors, one per
    weight tensor, when ``per_weight_shapes`` is given). Only the names in ``optimise`` are updated. The
    optimiser (Adam or SGD) works elementwise, so every member has its own optimiser state."""

    def __init__(self, lr, weight_decay, momentum, optimise=(), *, per_weight_shapes=None,
                 optimiser: str = "adam", hyper_lr: float = 0.05, log10_lr_bounds=(-10.0, 0.0),
                 dtype=torch.float32, device="cpu"):
        def unconstrained(name, values):
            return torch.tensor([to_unconstrained(name, float(v)) for v in values], dtype=dtype, device=device)

        self.bounds = log10_lr_bounds
        self.optimise = tuple(optimise)
        a = unconstrained("lr", lr)
        self.values = {
            "lr": [a.reshape((len(a),) + (1,) * len(s)).expand((len(a),) + tuple(s)).clone()
                   for s in per_weight_shapes] if per_weight_shapes else a,
            "weight_decay": unconstrained("weight_decay", weight_decay),
            "momentum": unconstrained("momentum", momentum),
        }
        self.clip()
        leaves = [t for name in self.optimise for t in self.leaves(name)]
        self.optimiser = None
        if leaves:
            for leaf in leaves:
                leaf.requires_grad_(True)
            cls = torch.optim.Adam if optimiser == "adam" else torch.optim.SGD
            self.optimiser = cls(leaves, lr=hyper_lr)

    @property
    def per_weight(self) -> bool:
        return isinstance(self.values["lr"], list)

    def leaves(self, name: str) -> list:
        """The tensors holding hyperparameter ``name`` (one, or one per weight tensor)."""
        value = self.values[name]
        return list(value) if isinstance(value, list) else [value]

    def tree(self) -> dict:
        """``values`` detached, a per-weight lr as a tuple: the form :func:`natural` takes."""
        return {name: tuple(v.detach() for v in value) if isinstance(value, list) else value.detach()
                for name, value in self.values.items()}

    def trainable(self) -> dict:
        """Detached copies of the optimised hyperparameters (what hypergradients are taken with respect to)."""
        tree = self.tree()
        return {name: tree[name] for name in self.optimise}

    def fixed(self) -> dict:
        """The hyperparameters that are held constant."""
        tree = self.tree()
        return {name: v for name, v in tree.items() if name not in self.optimise}

    def natural(self) -> tuple:
        """(lr, weight_decay, momentum) in natural units, detached."""
        with torch.no_grad():
            return natural(self.tree())

    @torch.no_grad()
    def clip(self) -> None:
        for a in self.leaves("lr"):
            a.clamp_(*self.bounds)

    @torch.no_grad()
    def scale_lr(self, factors: torch.Tensor) -> None:
        """Multiply every member's learning rate by its factor ([N]; Random_SteppedLR), then clip."""
        shift = torch.log10(factors)
        for a in self.leaves("lr"):
            a.add_(per_member(shift.to(a.dtype), a))
        self.clip()

    def step(self, grads: dict, frozen: torch.Tensor | None = None) -> None:
        """One optimiser step on the unconstrained hyperparameters with ``grads`` (shaped like
        :meth:`trainable`), then clip log10(lr). Members where ``frozen`` ([N] bool) is set keep their values."""
        if self.optimiser is None:
            return
        kept = None
        if frozen is not None and bool(frozen.any()):
            kept = {name: [t.detach().clone() for t in self.leaves(name)] for name in self.optimise}
        for name in self.optimise:
            given = grads[name]
            for leaf, g in zip(self.leaves(name), given if isinstance(given, (tuple, list)) else [given]):
                leaf.grad = g.detach().to(leaf.dtype).reshape(leaf.shape).clone()
        self.optimiser.step()
        self.optimiser.zero_grad(set_to_none=True)
        self.clip()
        if kept is not None:
            with torch.no_grad():
                for name, saved in kept.items():
                    for leaf, old in zip(self.leaves(name), saved):
                        leaf.copy_(torch.where(per_member(frozen, leaf), old, leaf))

    @torch.no_grad()
    def reset(self, members: torch.Tensor) -> None:
        """Set the unconstrained values of the ``members`` ([N] bool) to 0, a finite placeholder for members
        that no longer train (a diverged member's values may be inf or NaN)."""
        for name in self.values:
            for leaf in self.leaves(name):
                leaf.masked_fill_(per_member(members, leaf).expand_as(leaf), 0.0)

    def summary(self) -> dict:
        """Natural values per member as [N] tensors; a per-weight learning rate is summarised by its mean."""
        with torch.no_grad():
            lr, wd, mom = natural(self.tree())
            if isinstance(lr, tuple):
                n = lr[0].shape[0]
                total = sum(x.reshape(n, -1).sum(1) for x in lr)
                lr = total / sum(x[0].numel() for x in lr)
        return {"lr": lr, "weight_decay": wd, "momentum": mom}

    def finite(self) -> torch.Tensor:
        """Whether each member's hyperparameters are all finite: [N] bool."""
        checks = [torch.isfinite(t).reshape(t.shape[0], -1).all(1) for name in self.values for t in self.leaves(name)]
        return torch.stack(checks).all(0)

    def state_dict(self) -> dict:
        return {"values": {k: [t.detach().clone() for t in self.leaves(k)] for k in self.values},
                "optimiser": self.optimiser.state_dict() if self.optimiser else None}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for name, saved in state["values"].items():
            for leaf, value in zip(self.leaves(name), saved):
                leaf.copy_(value)
        if self.optimiser is not None:
            self.optimiser.load_state_dict(state["optimiser"])
