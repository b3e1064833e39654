"""The hypergradient methods, one object each behind one interface, and the weights they step.

A run (:class:`onepass.population.Population`, a population of members fed by its batch streams) is a
:class:`WeightSteps`: weights, momentum buffers and hyperparameters stacked on a leading member dimension, and
the few functions a run supplies (the training and validation losses, what a step records). Its hyperparameter step is a block of
``update_interval`` (T) weight steps; :meth:`WeightSteps.take_weight_step` hands the weight step at each
position of the block to the method the ``hypergradient`` setting names (:data:`METHODS`), chosen once:

* ``none`` - plain SGD; at the block's end, the Random_SteppedLR factor (``lr_step_factor``);
* ``baydin`` - hypergradient descent, every step (T = 1): -grad L(w_t) . grad L(w_{t-1});
* ``neumann`` - the paper's method: T - 1 plain steps, the last linearised, its update's graph giving the
  Neumann series (:func:`onepass.hypergrad.neumann_hypergradient`);
* ``unroll`` - Diff-through-Opt: T - unroll_steps plain steps, then the last ``unroll_steps`` differentiable
  (:class:`onepass.hypergrad.Unroll`), a step at a time; its long variants first reset the weights.

:class:`onepass.optim.OnePassSGD` takes the same steps on a user's own model from the same math
(:mod:`onepass.hypergrad`, :mod:`onepass.updates`); tests/test_optim.py pins it to a population of one.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod

import torch

from .hypergrad import Unroll, baydin_hypergradient, linearised_update, neumann_hypergradient, update_with_graph
from .updates import clip_by_norm, per_member, sgd_step_, spread


class WeightSteps(ABC):
    """Weights, buffers and hyperparameters that a hypergradient method steps; subclasses give the losses.

    Attributes a subclass sets: ``settings``, ``params`` and ``bufs`` (lists of [N, ...] tensors), ``hypers``
    (:class:`onepass.updates.Hyperparameters`), ``alive`` ([N] bool, or None when every member always trains),
    ``initial_weights`` (the weights the long variants reset to, or None), ``lr_step_factor`` ([N] or None) and
    ``method`` (:func:`method_for`)."""

    alive = None
    initial_weights = None
    lr_step_factor = None
    grads_prev = None        # baydin: the previous step's gradients
    window = None            # unroll: the open window of differentiable steps (an Unroll)
    block_hypers = None      # the spread hyperparameters of the block's plain steps
    last_hypergradient = None   # the hypergradient of the last hyperparameter update ({name: [N]})

    # ---- what a subclass provides -------------------------------------------------------------------
    @abstractmethod
    def train_grads(self, batch, clip: bool = True) -> tuple:
        """(training losses [N] detached, gradients list) on ``batch`` at the current weights, running
        statistics updated and the step recorded as the run records a plain step."""

    @abstractmethod
    def hypergradient_losses(self, params, batch) -> tuple:
        """([N] training losses, aux) at ``params``: a pure function of the weights (running statistics alone)."""

    @abstractmethod
    def val_losses(self, params, batch) -> tuple:
        """([N] validation losses, aux) at ``params``, a pure function of the weights."""

    def carry(self, aux) -> None:
        """A training step's auxiliary output (an LSTM's hidden state) for the next batch."""

    def val_carry(self, aux) -> None:
        """A validation loss's auxiliary output for the next validation batch."""

    def track_stats(self, batch) -> None:
        """Running statistics follow a step taken outside :meth:`train_grads` (the linearised step)."""

    def record_loss(self, losses: torch.Tensor) -> None:
        """A step's training losses, for a step taken outside :meth:`train_grads`."""

    def after_plain_step(self) -> None:
        """Called after every plain weight step."""

    def kernels(self):
        """The context of every hypergradient computation."""
        return contextlib.nullcontext()

    def curvature(self, batch):
        """(training losses [N], gradients, hvp) at the current weights on ``batch``, ``hvp(v)`` the Hessian of
        the summed losses times v, where the run has them written out (a plain MLP, unclipped); else None
        (autograd's graph gives them)."""
        return None

    # ---- shared -------------------------------------------------------------------------------------
    @property
    def frozen(self):
        """[N] bool of the members whose hyperparameters no longer move (None: every member moves)."""
        return None if self.alive is None else ~self.alive

    @property
    def lr_mask(self):
        """[N] 1/0 of the members that train (None: every member trains)."""
        return None if self.alive is None else self.alive.to(self.params[0].dtype)

    def natural(self):
        """(lr, weight_decay, momentum) per member, lr masked to 0 for members that no longer train."""
        lr, wd, mom = self.hypers.natural()
        mask = self.lr_mask
        if mask is not None:
            lr = tuple(x * per_member(mask, x) for x in lr) if isinstance(lr, tuple) else lr * mask
        return lr, wd, mom

    def spread(self):
        """:meth:`natural`, one tensor per weight tensor."""
        lr, wd, mom = self.natural()
        return spread(lr, self.params), spread(wd, self.params), spread(mom, self.params)

    def take_weight_step(self, position: int, batch, valid) -> torch.Tensor:
        """The weight step at ``position`` of a block (0 .. T - 1) on the training ``batch``; ``valid()`` gives
        a validation batch when the method needs one. Returns the training losses [N] before the step."""
        if position == 0:
            self.block_hypers = None
        return self.method.weight_step(self, position, batch, valid)

    def plain_hypers(self):
        """The spread hyperparameters of the block's plain steps: :meth:`spread` at the first one."""
        if self.block_hypers is None:
            self.block_hypers = self.spread()
        return self.block_hypers


def plain_step(run: WeightSteps, batch) -> torch.Tensor:
    """One SGD step, in place, with the block's hyperparameters."""
    losses, grads = run.train_grads(batch)
    sgd_step_(run.params, run.bufs, grads, *run.plain_hypers())
    run.after_plain_step()
    return losses


def validation_gradient(run: WeightSteps, params, batch) -> tuple:
    """v = dL_val/dw at ``params`` on ``batch``."""
    w = tuple(p.detach().requires_grad_(True) for p in params)
    losses, aux = run.val_losses(w, batch)
    if aux:
        run.val_carry(aux)
    return torch.autograd.grad(losses.sum(), w)


class Method(ABC):
    """A hypergradient method: what the weight step at each position of a block of T does."""

    name = ""

    def needs_validation(self, settings: dict, position: int) -> bool:
        """Whether the step at ``position`` takes a validation batch."""
        return False

    @abstractmethod
    def weight_step(self, run: WeightSteps, position: int, batch, valid) -> torch.Tensor:
        """The step at ``position`` on ``batch`` (``valid()``: a validation batch); the training losses [N]."""


class Plain(Method):
    """``none``: plain SGD at fixed hyperparameters; Random_SteppedLR's lr factor at every block's end."""

    name = "none"

    def weight_step(self, run, position, batch, valid):
        losses = plain_step(run, batch)
        if position == run.settings["update_interval"] - 1 and run.lr_step_factor is not None:
            run.hypers.scale_lr(run.lr_step_factor)
        return losses


class Baydin(Method):
    """``baydin``: the hypergradient from this and the previous step's unclipped gradients (as the paper's
    code; ``baydin_clipped_gradients``: the clipped ones), then the clipped step with the new lr.

    ``baydin_new_gradient: same_batch`` (the paper's on Penn Treebank, whose unshuffled validation loader was
    the training data in lockstep, train.py:207-208, 531-536): the clipped step first, then the hypergradient
    from the gradient at the new weights on the same batch and this step's, as the paper's
    BaydinHypergradientDescent (optimisers.py:56-77)."""

    name = "baydin"

    def weight_step(self, run, position, batch, valid):
        s = run.settings
        losses, grads = run.train_grads(batch, clip=False)
        clipped = list(clip_by_norm(grads, s["clip_grad_norm"]))
        seen = clipped if s["baydin_clipped_gradients"] else grads
        if s["baydin_new_gradient"] == "same_batch":
            sgd_step_(run.params, run.bufs, clipped, *run.spread())
            w = tuple(p.detach().requires_grad_(True) for p in run.params)
            new = list(torch.autograd.grad(run.hypergradient_losses(w, batch)[0].sum(), w))
            if s["baydin_clipped_gradients"]:
                new = list(clip_by_norm(new, s["clip_grad_norm"]))
            run.last_hypergradient = {"lr": baydin_hypergradient(new, seen)}
            run.hypers.step(run.last_hypergradient, run.frozen)
            return losses
        if run.grads_prev is not None:
            run.last_hypergradient = {"lr": baydin_hypergradient(seen, run.grads_prev)}
            run.hypers.step(run.last_hypergradient, run.frozen)
        run.grads_prev = [g.detach().clone() for g in seen]
        sgd_step_(run.params, run.bufs, clipped, *run.spread())
        return losses


class Neumann(Method):
    """``neumann``: plain steps, the block's last linearised; the Neumann series with the validation gradient
    at the new weights gives the hypergradient."""

    name = "neumann"

    def needs_validation(self, settings, position):
        return position == settings["update_interval"] - 1

    def weight_step(self, run, position, batch, valid):
        if not self.needs_validation(run.settings, position):
            return plain_step(run, batch)
        s = run.settings
        lr, wd, mom = run.natural()
        curvature = run.curvature(batch)
        if curvature is not None:
            losses, train_grads, hvp = curvature
            w, aux = tuple(p.detach() for p in run.params), ()
            u, d = update_with_graph(w, run.bufs, train_grads, lr, wd, mom)
        else:
            hvp = None
            with run.kernels():
                w, u, d, losses, aux = linearised_update(run.hypergradient_losses, run.params, run.bufs, batch,
                                                         lr, wd, mom, s["clip_grad_norm"])
        if aux:
            run.carry(aux)
        run.track_stats(batch)   # the running statistics follow this step as they follow the plain ones
        run.record_loss(losses)
        new_params = tuple((x - y).detach() for x, y in zip(w, u))
        new_bufs = [x.detach() for x in d]
        with run.kernels():
            val_grad = validation_gradient(run, new_params, valid())
            grads = neumann_hypergradient(w, u, val_grad, s["neumann_terms"], tuple(run.bufs), lr, wd, mom,
                                          run.hypers.optimise, hvp)
        del w, u, d
        with torch.no_grad():
            torch._foreach_copy_(run.params, list(new_params))
        run.bufs = new_bufs
        run.last_hypergradient = grads
        run.hypers.step(grads, run.frozen)
        return losses


class Unrolled(Method):
    """``unroll``: (long variants: the weights reset,) plain steps, then the block's last ``unroll_steps``
    differentiable from the window's first weights; at its end the exact hypergradient. Inside the window the
    run's own weights stay at the window's start (:attr:`WeightSteps.window` holds the current ones)."""

    name = "unroll"

    def needs_validation(self, settings, position):
        return position == settings["update_interval"] - 1

    def weight_step(self, run, position, batch, valid):
        s = run.settings
        start = s["update_interval"] - s["unroll_steps"]
        if position == 0 and run.initial_weights is not None:
            with torch.no_grad():
                torch._foreach_copy_(run.params, run.initial_weights)
                if s["reset_momentum"]:
                    torch._foreach_zero_(run.bufs)
        if position < start:
            return plain_step(run, batch)
        if run.window is None:
            self.open(run)
        with run.kernels():
            losses, aux = run.window.step(run.hypergradient_losses, batch, s["clip_grad_norm"])
        if aux:
            run.carry(aux)
        if not self.needs_validation(s, position):
            return losses
        window, run.window = run.window, None
        with run.kernels():
            grads, weights, bufs, _, all_losses = window.finish(lambda p, b: run.val_losses(p, b)[0], valid())
        with torch.no_grad():
            torch._foreach_copy_(run.params, list(weights))
            torch._foreach_copy_(run.bufs, list(bufs))
        for loss in all_losses:
            run.record_loss(loss)
        run.last_hypergradient = grads
        run.hypers.step(grads, run.frozen)
        return losses

    def open(self, run) -> None:
        """A window of differentiable steps from the run's current weights."""
        run.window = Unroll(tuple(run.params), tuple(run.bufs), run.hypers.trainable(), run.hypers.fixed(),
                            lr_mask=run.lr_mask)

    def reopen(self, run, batches: list) -> None:
        """The open window again, from its first weights (the run's) and its ``batches`` so far (a resumed
        run)."""
        self.open(run)
        for batch in batches:
            with run.kernels():
                run.window.step(run.hypergradient_losses, batch, run.settings["clip_grad_norm"])


METHODS = {m.name: m for m in (Plain(), Baydin(), Neumann(), Unrolled())}


def method_for(settings: dict) -> Method:
    """The method the ``hypergradient`` setting names."""
    return METHODS[settings["hypergradient"]]
