"""The one-pass optimiser for any PyTorch training loop: a ``torch.optim.Optimizer`` (SGD, PyTorch's
conventions) whose lr, weight decay and momentum are tuned per parameter group as the network trains, by the
catalogue's gradient-based algorithms.

    opt = onepass.OnePassSGD(model.parameters(), lr=1e-3, weight_decay=1e-4, momentum=0.5, model=model)
    for x, y, vx, vy in batches:
        if opt.needs_closure:     # the last step of every block of T: the hypergradient
            opt.step(lambda: F.mse_loss(model(x), y), val_closure=lambda: F.mse_loss(model(vx), vy))
        else:
            opt.zero_grad(); F.mse_loss(model(x), y).backward(); opt.step()

The contract. A step takes its gradients from ``p.grad`` (``loss.backward(); opt.step()``), or, given
``closure``, from the loss it returns (the closure computes the loss and returns it without calling
``backward()``: the optimiser differentiates it itself). The step that ends a block of ``update_interval``
(T) steps (:attr:`needs_closure`; for Diff-through-Opt the last ``unroll_steps`` of the block) needs
``closure`` and ``val_closure``: the optimiser evaluates them through ``torch.func.functional_call`` on
``model`` with the module's own parameters standing for themselves (second-order terms: Hessian-vector
products through the weight update), and at the new weights for the validation loss. Parameters are updated
in place; ones with ``requires_grad=False`` or without a gradient are left untouched (as SGD leaves them).

The math is the engine's (:mod:`onepass.updates`, :mod:`onepass.hypergrad`); with one parameter group the
steps are those of the engine's population of one (tests/test_optim.py pins it algorithm by algorithm). With
several groups the weight step and the Neumann series are taken over all of them at once, and each group's
hypergradient is contracted with its own hyperparameters.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn
from torch.func import functional_call

from . import catalog
from .hypergrad import Unroll, baydin_hypergradient, neumann_series, update_with_graph
from .problems import frozen_batchnorm_stats
from .settings import SETTINGS, ConfigError, check
from .updates import Hyperparameters, clip_by_norm, clip_by_norm_, per_member, sgd_step_, to_unconstrained, \
    update_vjp

# the run settings the optimiser takes from an algorithm's YAML and lets a caller change
OPTIONS = ("optimise", "update_interval", "neumann_terms", "unroll_steps", "hyper_lr", "hyper_optimiser",
           "lr_per_weight", "clip_grad_norm", "baydin_clipped_gradients", "log10_lr_min", "log10_lr_max",
           "lr_step_factor")
NAMES = ("lr", "weight_decay", "momentum")


def choices() -> list[str]:
    """The catalogue's algorithms the optimiser runs: every trained one that keeps training from where it is
    (not the searches, the derived Random (3-batched) or Long Diff-through-Opt's weight resets)."""
    return [name for name, a in catalog.algorithms().items()
            if not a.is_search and not a.is_derived and not a.settings.get("reset_weights")]


def _settings(algorithm: str, given: dict) -> dict:
    """The algorithm's settings (config/algorithms/<algorithm>.yaml over the defaults) with ``given`` laid
    over them, checked like a run's."""
    if algorithm not in choices():
        raise ConfigError(f"OnePassSGD: algorithm {algorithm!r} is not one of {', '.join(choices())}")
    entry = catalog.algorithm(algorithm)
    settings = {key: spec.default for key, spec in SETTINGS.items()}
    settings.update(check(entry.settings, f"config/algorithms/{algorithm}.yaml"))
    settings.update(check({k: v for k, v in given.items() if v is not None}, "OnePassSGD"))
    if settings["hypergradient"] == "baydin" and settings["update_interval"] != 1:
        raise ConfigError("OnePassSGD: the baydin hypergradient needs update_interval 1")
    if settings["hypergradient"] == "unroll" and settings["unroll_steps"] > settings["update_interval"]:
        raise ConfigError("OnePassSGD: unroll_steps must not exceed update_interval")
    return settings


def _world() -> int:
    """The number of processes of the default torch.distributed group (1 outside one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _mean_over_ranks(tensors) -> None:
    """Every tensor := its mean over the ranks (in place; the same bits on every rank)."""
    world = _world()
    for t in tensors:
        dist.all_reduce(t)
        t.div_(world)


class _Call(nn.Module):
    """A module whose forward calls a closure: ``functional_call`` on it stands given tensors in for
    ``model``'s parameters (a submodule) while the closure runs the model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn):
        return fn()


class OnePassSGD(torch.optim.Optimizer):
    """SGD whose hyperparameters the ``algorithm`` tunes, per parameter group, from the user's own loop.

    ``params``: parameters or parameter groups, as for ``torch.optim.SGD`` (a module stands for its
    parameters and is taken as ``model``). A group's ``optimise`` (default: the algorithm's) lists which of
    lr, weight_decay, momentum it tunes; ``optimise=[]`` keeps its values as given. ``model``: the module the
    closures run, needed by the algorithms that differentiate through the weight update (Neumann,
    Diff-through-Opt). ``algorithm``: a name of ``config/algorithms`` (:func:`choices`); its YAML gives every
    option not passed (``update_interval`` T, ``neumann_terms``, ``hyper_lr``, ...: :data:`OPTIONS`).

    A group's ``lr`` is a multiplier's handle for ``torch.optim.lr_scheduler``: a step uses the tuned lr
    times ``group['lr'] / group['initial_lr']`` (1 until a scheduler changes ``lr``). The tuned weight
    decay and momentum are written to their group after each hyperparameter step; untuned ones are read from
    the group at every step (a scheduler may drive them). :attr:`history` holds the values of every
    hyperparameter step, :attr:`trace` those of every weight step (:func:`onepass.optim_schedule.schedule`)."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.0,
                 algorithm: str = "Ours_LR_Momentum", *, model: nn.Module | None = None, **options):
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(f"OnePassSGD got an unknown option {unknown[0]!r}; options: {', '.join(OPTIONS)}")
        if isinstance(options.get("optimise"), (tuple, str)):
            options["optimise"] = [options["optimise"]] if isinstance(options["optimise"], str) \
                else list(options["optimise"])
        if isinstance(params, nn.Module):
            model, params = (params if model is None else model), params.parameters()
        self.settings = s = _settings(algorithm, options)
        self.algorithm, self.model, self.method = algorithm, model, s["hypergradient"]
        if self.method in ("neumann", "unroll") and model is None:
            raise ConfigError(f"OnePassSGD: {algorithm} differentiates through the weight update and needs the "
                              f"module its closures run: OnePassSGD(params, ..., model=model)")
        self._hypers, self._tuned, self._given = [], [], []
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      optimise=list(s["optimise"])))
        if self.method == "unroll" and len(self.param_groups) != 1:
            raise ConfigError(f"OnePassSGD: {algorithm} takes one parameter group")
        self._names = {} if model is None else {id(p): n for n, p in model.named_parameters()}
        if model is not None:
            for gi, group in enumerate(self.param_groups):
                if any(id(p) not in self._names for p in group["params"]):
                    raise ConfigError(f"OnePassSGD: parameter group {gi} holds a parameter that is not model's")
        self._call = None if model is None else _Call(model)
        self.weight_step = 0      # weight steps taken
        self.hyper_step = 0       # hyperparameter steps taken
        self.history = []         # per hyperparameter step and group: {step, group, lr, weight_decay, momentum}
        self.trace = []           # per weight step: per group (lr, weight_decay, momentum) that step used
        self._window = None       # Diff-through-Opt: the open window of differentiated steps
        self._entries = []        # ... and the parameters it trains
        self.last_hypergradient = {}   # per group: the hypergradient of its last hyperparameter update

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["optimise"] = list(group["optimise"])
        check({"optimise": group["optimise"]}, f"OnePassSGD parameter group {len(self.param_groups) - 1}")
        group.setdefault("initial_lr", group["lr"])
        p = group["params"][0]
        s = self.settings
        h = Hyperparameters(
            [group["lr"]], [group["weight_decay"]], [group["momentum"]], group["optimise"],
            per_weight_shapes=[q.shape for q in group["params"]] if s["lr_per_weight"] else None,
            optimiser=s["hyper_optimiser"], hyper_lr=s["hyper_lr"],
            log10_lr_bounds=(s["log10_lr_min"], s["log10_lr_max"]),
            dtype=p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32, device=p.device)
        self._hypers.append(h)
        self._given.append({name: group[name] for name in NAMES})
        self._tuned.append(None)
        self._refresh(len(self._hypers) - 1)

    # ---- what a caller reads ----------------------------------------------------------------------------
    @property
    def hyperparameters(self) -> list[dict]:
        """Per group, the lr, weight decay and momentum the next step uses (a per-weight lr by its mean)."""
        return [dict(zip(NAMES, values)) for values in self._used()]

    @property
    def needs_closure(self) -> bool:
        """Whether the next :meth:`step` needs ``closure`` (and, when :attr:`hyper_step_due`, ``val_closure``)."""
        T, position = self.settings["update_interval"], self.weight_step % self.settings["update_interval"]
        if self.method == "unroll":
            return position >= T - self.settings["unroll_steps"]
        return self.method == "neumann" and position == T - 1

    @property
    def hyper_step_due(self) -> bool:
        """Whether the next :meth:`step` updates the hyperparameters from ``val_closure``."""
        T = self.settings["update_interval"]
        return self.method in ("neumann", "unroll") and self.weight_step % T == T - 1

    # ---- the hyperparameters of a group -----------------------------------------------------------------
    def _sync(self, gi: int) -> None:
        """An untuned weight decay or momentum := its group's value, when the group's value changed."""
        h, group = self._hypers[gi], self.param_groups[gi]
        for name in ("weight_decay", "momentum"):
            if name not in h.optimise and group[name] != self._given[gi][name]:
                with torch.no_grad():
                    h.values[name].fill_(to_unconstrained(name, float(group[name])))
                self._given[gi][name] = group[name]
                self._refresh(gi)

    def _scale(self, gi: int) -> float:
        group = self.param_groups[gi]
        return group["lr"] / group["initial_lr"] if group["initial_lr"] else 1.0

    def _natural(self, gi: int):
        """(lr, weight_decay, momentum) tensors of group ``gi`` for a step: lr [1] (a per-weight lr: a tuple
        of [1, *shape]) times the scheduler's multiplier, weight decay and momentum [1]."""
        self._sync(gi)
        lr, wd, mom = self._hypers[gi].natural()
        scale = self._scale(gi)
        if scale != 1.0:
            lr = tuple(x * scale for x in lr) if isinstance(lr, tuple) else lr * scale
        return lr, wd, mom

    def _refresh(self, gi: int) -> None:
        """The cached natural values of group ``gi`` (read once per hyperparameter step, not per weight step)."""
        values = self._hypers[gi].summary()
        self._tuned[gi] = tuple(float(values[name][0]) for name in NAMES)
        for name, value in zip(NAMES[1:], self._tuned[gi][1:]):
            if name in self._hypers[gi].optimise:
                self.param_groups[gi][name] = self._given[gi][name] = value

    def _used(self) -> list[tuple]:
        """Per group (lr, weight decay, momentum) of the next step: an untuned weight decay or momentum as its
        group gives it (the step uses 1e-30 for 0 and 1e-7 for momentum 0, see onepass.updates)."""
        out = []
        for gi, (lr, wd, mom) in enumerate(self._tuned):
            group, optimise = self.param_groups[gi], self._hypers[gi].optimise
            out.append((lr * self._scale(gi), wd if "weight_decay" in optimise else float(group["weight_decay"]),
                        mom if "momentum" in optimise else float(group["momentum"])))
        return out

    def _hyper_update(self, gi: int, grads: dict) -> None:
        """One step of group ``gi``'s hyperparameter optimiser on ``grads`` (averaged over the ranks)."""
        h = self._hypers[gi]
        if h.optimiser is None:
            return
        if _world() > 1:
            grads = {k: tuple(x.clone() for x in v) if isinstance(v, tuple) else v.clone() for k, v in grads.items()}
            _mean_over_ranks([x for v in grads.values() for x in (v if isinstance(v, tuple) else (v,))])
        self.last_hypergradient[gi] = grads
        h.step(grads)
        self._refresh(gi)

    def _record_hyper_step(self) -> None:
        self.hyper_step += 1
        for gi, values in enumerate(self._used()):
            self.history.append({"step": self.weight_step, "group": gi, **dict(zip(NAMES, values))})

    # ---- the weights -------------------------------------------------------------------------------------
    def _buffer(self, p: torch.Tensor) -> torch.Tensor:
        """p's momentum buffer (torch's ``state[p]['momentum_buffer']``, zeros at first) viewed as [1, *shape]."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["momentum_buffer"].unsqueeze(0)

    def _spread(self, value, i: int, like: torch.Tensor) -> torch.Tensor:
        """A group's hyperparameter for its ``i``-th parameter (``like``: [1, *shape])."""
        return value[i] if isinstance(value, tuple) else per_member(value, like)

    def _trainable(self):
        """(group, index, parameter) of every parameter that may train (``requires_grad``)."""
        return [(gi, i, p) for gi, group in enumerate(self.param_groups)
                for i, p in enumerate(group["params"]) if p.requires_grad]

    def _gradients(self, closure):
        """(loss or None, {(group, index): gradient}) of the trainable parameters that have one: ``p.grad``,
        or the gradient of the loss ``closure()`` returns."""
        entries = self._trainable()
        if closure is None:
            return None, {(gi, i): p.grad for gi, i, p in entries if p.grad is not None}
        with torch.enable_grad():
            loss = closure()
            try:
                grads = torch.autograd.grad(loss, [p for _, _, p in entries], allow_unused=True)
            except RuntimeError as error:
                raise RuntimeError("OnePassSGD: the closure returns the loss without calling backward() (the "
                                   f"optimiser differentiates it itself): {error}") from error
        return loss.detach(), {(gi, i): g for (gi, i, _), g in zip(entries, grads) if g is not None}

    def _sgd(self, grads: dict, clip: bool = True, stacked: bool = False) -> None:
        """One SGD step (in place) of the parameters with a gradient in ``grads`` ({(group, index): grad
        shaped like the parameter, left as it is; ``stacked``: [1, *shape] copies, overwritten})."""
        P, B, G, L, W, M = [], [], [], [], [], []
        natural = [self._natural(gi) for gi in range(len(self.param_groups))]
        for (gi, i), g in grads.items():
            p = self.param_groups[gi]["params"][i]
            P.append(p.detach().unsqueeze(0))
            B.append(self._buffer(p))
            G.append(g if stacked else g.detach().unsqueeze(0).clone())
            lr, wd, mom = natural[gi]
            L.append(self._spread(lr, i, P[-1]))
            W.append(per_member(wd, P[-1]))
            M.append(per_member(mom, P[-1]))
        if clip:
            clip_by_norm_(G, self.settings["clip_grad_norm"])
        if P:
            sgd_step_(P, B, G, L, W, M)

    def _at(self, fn, weights: dict, frozen_stats: bool = False):
        """``fn()`` with the tensors ``weights`` ({parameter id: [1, *shape]}) standing in for those
        parameters of ``model`` (``torch.func.functional_call``); ``frozen_stats``: BatchNorm's running
        statistics left alone (a pure function of the weights)."""
        state = {"model." + self._names[key]: w[0] for key, w in weights.items()}
        with frozen_batchnorm_stats(self.model) if frozen_stats else nullcontext():
            return functional_call(self._call, state, (fn,), strict=False)

    # ---- steps ------------------------------------------------------------------------------------------
    def step(self, closure=None, val_closure=None):
        """One weight step (see the module's docstring for the contract); every T-th also a hyperparameter
        step. Returns the closure's training loss (before the step), or None without a closure."""
        T = self.settings["update_interval"]
        if self.needs_closure and (closure is None or (self.hyper_step_due and val_closure is None)):
            raise ValueError(f"OnePassSGD: weight step {self.weight_step + 1} is differentiated for the "
                             f"hypergradient (a block of {T}): call opt.step(closure, val_closure=...)")
        if self.method == "neumann" and self.needs_closure:
            self.trace.append(self._used())
            loss = self._neumann(closure, val_closure)
        elif self.method == "unroll" and self.needs_closure:
            self.trace.append(self._used())
            loss = self._unrolled(closure, val_closure)
        else:
            loss, grads = self._gradients(closure)
            if self.method == "baydin":
                self._baydin(grads)
            else:
                self.trace.append(self._used())
                self._sgd(grads)
        self.weight_step += 1
        if self.weight_step % T == 0:
            factor = self.settings["lr_step_factor"]
            if self.method == "none" and factor is not None:
                for gi, h in enumerate(self._hypers):
                    h.scale_lr(torch.tensor([float(factor)], device=h.values["weight_decay"].device))
                    self._refresh(gi)
            self._record_hyper_step()
        return loss

    def _baydin(self, grads: dict) -> None:
        """Hypergradient descent: per group -grad L(w_t) . grad L(w_{t-1}) (the unclipped gradients, as the
        paper's code; ``baydin_clipped_gradients``: the clipped ones), then the clipped step with the new lr."""
        keys = list(grads)
        now = tuple(grads[k].detach().unsqueeze(0) for k in keys)
        clipped = clip_by_norm(now, self.settings["clip_grad_norm"])
        seen = clipped if self.settings["baydin_clipped_gradients"] else now
        for gi in range(len(self.param_groups)):
            pairs = [(g, self.state[self.param_groups[gi]["params"][i]].get("previous_grad"))
                     for (group, i), g in zip(keys, seen) if group == gi]
            pairs = [(g, prev.unsqueeze(0)) for g, prev in pairs if prev is not None]
            if pairs:
                hypergradient = baydin_hypergradient(*zip(*pairs))
                self._hyper_update(gi, {"lr": hypergradient})
        for (gi, i), g in zip(keys, seen):
            self.state[self.param_groups[gi]["params"][i]]["previous_grad"] = g[0].detach().clone()
        self.trace.append(self._used())
        self._sgd(dict(zip(keys, (x.clone() for x in clipped))), clip=False, stacked=True)

    def _neumann(self, closure, val_closure) -> torch.Tensor:
        """The paper's step: the block's last weight update linearised (its graph through the gradient of
        ``closure``'s loss at the module's own weights), the validation gradient at the new weights, the
        Neumann series, and every group's hypergradient."""
        s = self.settings
        entries = self._trainable()
        w = {id(p): p.detach().unsqueeze(0).requires_grad_(True) for _, _, p in entries}
        with torch.enable_grad():
            loss = self._at(closure, w)
            grads = torch.autograd.grad(loss, list(w.values()), create_graph=True, allow_unused=True)
            used = [(e, g) for e, g in zip(entries, grads) if g is not None]
            natural = [self._natural(gi) for gi in range(len(self.param_groups))]
            ws = tuple(w[id(p)] for (_, _, p), _ in used)
            bufs = tuple(self._buffer(p) for (_, _, p), _ in used)
            lrs = [self._spread(natural[gi][0], i, x) for ((gi, i, _), _), x in zip(used, ws)]
            wds = [per_member(natural[gi][1], x) for ((gi, _, _), _), x in zip(used, ws)]
            moms = [per_member(natural[gi][2], x) for ((gi, _, _), _), x in zip(used, ws)]
            u, d = update_with_graph(ws, bufs, tuple(g for _, g in used), lrs, wds, moms, s["clip_grad_norm"])
        if _world() > 1:   # the weight step with the gradient averaged over the ranks (DDP's)
            mean = [g.detach().clone() for _, g in used]
            _mean_over_ranks(mean)
            _, d = update_with_graph(tuple(x.detach() for x in ws), bufs, tuple(mean), lrs, wds, moms,
                                     s["clip_grad_norm"])
            new_params = tuple(x.detach() - l * y for x, l, y in zip(ws, lrs, d))
        else:
            new_params = tuple((x - y).detach() for x, y in zip(ws, u))
        new_bufs = [x.detach() for x in d]
        at_new = {**w, **{id(p): x.requires_grad_(True) for ((_, _, p), _), x in zip(used, new_params)}}
        with torch.enable_grad():
            val_loss = self._at(val_closure, at_new, frozen_stats=True)
            val_grad = torch.autograd.grad(val_loss, [at_new[id(p)] for (_, _, p), _ in used], allow_unused=True)
            val_grad = tuple(torch.zeros_like(x) if g is None else g for x, g in zip(ws, val_grad))
            total = neumann_series(ws, u, val_grad, s["neumann_terms"])
        hypergradients = {}
        for gi, (lr, wd, mom) in enumerate(natural):
            ks = [k for k, ((group, _, _), _) in enumerate(used) if group == gi]
            names = self._hypers[gi].optimise
            if not ks or not names:
                continue
            pick = lambda xs: tuple(xs[k] for k in ks)    # noqa: E731
            grads_g = update_vjp(pick(total), pick([x.detach() for x in u]), pick([x.detach() for x in ws]),
                                 pick(bufs), pick(lrs) if isinstance(lr, tuple) else lr, wd, mom, names)
            grads_g = torch.utils._pytree.tree_map(torch.neg, grads_g)
            if isinstance(lr, tuple) and "lr" in grads_g:   # every parameter of the group: 0 without a gradient
                full = [torch.zeros_like(x) for x in lr]
                for k, g in zip(ks, grads_g["lr"]):
                    full[used[k][0][1]] = g
                grads_g["lr"] = tuple(full)
            hypergradients[gi] = grads_g
        del u, d, total
        with torch.no_grad():
            for ((_, _, p), _), x, b in zip(used, new_params, new_bufs):
                p.copy_(x[0])
                self.state[p]["momentum_buffer"].copy_(b[0])
        for gi, grads_g in hypergradients.items():
            self._hyper_update(gi, grads_g)
        return loss.detach()

    def _unrolled(self, closure, val_closure) -> torch.Tensor:
        """Diff-through-Opt: a differentiable step of the block's window (opened at its first step from
        copies of the weights); at the block's end the exact hypergradient of ``val_closure``'s loss. The
        module holds the window's current weights after every step."""
        if _world() > 1:
            raise RuntimeError(f"OnePassSGD: {self.algorithm} does not run under torch.distributed")
        h = self._hypers[0]
        if self._window is None:   # the window trains the parameters that closure's loss reaches
            entries = [p for _, _, p in self._trainable()]
            with torch.enable_grad():
                probe = {id(p): p.detach().unsqueeze(0).requires_grad_(True) for p in entries}
                reached = torch.autograd.grad(self._at(closure, probe, frozen_stats=True), list(probe.values()),
                                              allow_unused=True)
            self._entries = entries = [p for p, g in zip(entries, reached) if g is not None]
            if h.per_weight and len(entries) != len(self.param_groups[0]["params"]):
                raise ConfigError(f"OnePassSGD: {self.algorithm} with a per-weight lr trains every parameter")
            self._sync(0)   # untuned values from the group
            scale = self._scale(0)
            mask = None if scale == 1.0 else torch.tensor([scale], dtype=h.values["weight_decay"].dtype,
                                                           device=h.values["weight_decay"].device)
            self._window = Unroll(tuple(p.detach().unsqueeze(0).clone() for p in entries),
                                  tuple(self._buffer(p).clone() for p in entries), h.trainable(), h.fixed(),
                                  lr_mask=mask)
        entries = self._entries

        def losses(fn):
            return lambda ws, _: (self._at(fn, dict(zip(map(id, entries), ws)), frozen_stats=True).reshape(1), ())

        with torch.enable_grad():
            loss, _ = self._window.step(losses(closure), None, self.settings["clip_grad_norm"])
        if not self.hyper_step_due:
            with torch.no_grad():
                torch._foreach_copy_(entries, [x[0] for x in self._window.weights()[0]])
            return loss[0]
        window, self._window = self._window, None
        with torch.enable_grad():
            grads, weights, bufs, _, _ = window.finish(lambda ws, b: losses(val_closure)(ws, b)[0], None)
        with torch.no_grad():
            torch._foreach_copy_(entries, [x[0] for x in weights])
            torch._foreach_copy_([self.state[p]["momentum_buffer"] for p in entries], [x[0] for x in bufs])
        self._hyper_update(0, grads)
        return loss[0]

    # ---- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """torch's optimiser state (``state``: per parameter its momentum buffer (Baydin: its previous
        gradient); ``param_groups``) and, under ``onepass``, the tuned hyperparameters, their optimisers'
        states, the step counts, :attr:`history` and :attr:`trace`. Diff-through-Opt's is taken outside its
        window of differentiated steps."""
        if self._window is not None:
            raise RuntimeError(f"OnePassSGD: {self.algorithm} is inside its window of differentiated steps "
                               f"(weight step {self.weight_step}); save at a step where opt.needs_closure is False")
        out = super().state_dict()
        out["onepass"] = {"algorithm": self.algorithm, "settings": dict(self.settings),
                          "hypers": [h.state_dict() for h in self._hypers], "weight_step": self.weight_step,
                          "hyper_step": self.hyper_step, "history": [dict(r) for r in self.history],
                          "trace": list(self.trace)}
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("onepass", None)
        if extra is None or extra["algorithm"] != self.algorithm or extra["settings"] != self.settings:
            raise ValueError(f"OnePassSGD: the state is not one of {self.algorithm} with these settings")
        super().load_state_dict(state_dict)
        for gi, (h, saved) in enumerate(zip(self._hypers, extra["hypers"])):
            h.load_state_dict(saved)
            self._given[gi] = {name: self.param_groups[gi][name] for name in NAMES}
            self._refresh(gi)
        self.weight_step, self.hyper_step = extra["weight_step"], extra["hyper_step"]
        self.history, self.trace = [dict(r) for r in extra["history"]], list(extra["trace"])
        self._window = None

    def __repr__(self) -> str:
        groups = "; ".join(", ".join(f"{k}={v:.3g}" for k, v in values.items()) + f" (optimise {g['optimise']})"
                           for values, g in zip(self.hyperparameters, self.param_groups))
        return f"OnePassSGD({self.algorithm}: {groups})"
