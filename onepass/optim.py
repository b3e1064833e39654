"""The one-pass optimiser for any PyTorch training loop: SGD whose lr, weight decay and momentum are tuned as
the network trains, by the catalogue's gradient-based algorithms.

    opt = onepass.OnePassSGD(model, lr=1e-3, weight_decay=1e-4, momentum=0.5)   # Ours (WD+LR+M)
    for step in range(1000):
        loss = opt.step(F.mse_loss, next(train_batches), val_batch=next(val_batches))
    opt.hyperparameters     # {'lr': ..., 'weight_decay': ..., 'momentum': ...}

It is the engine's population of one: the weights are held as a population of one member (a leading
dimension of 1), and every weight step is taken by the engine's own method object (:mod:`onepass.methods`,
the one :class:`onepass.population.Population` calls), on the batch the caller gives instead of the engine's
batch streams; tests/test_optim.py pins a run against the engine's run of the same seed, settings and
batches, algorithm by algorithm. After every step the module's parameters hold the new weights.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.func import functional_call

from . import catalog
from .methods import WeightSteps, method_for
from .problems import frozen_batchnorm_stats
from .settings import SETTINGS, ConfigError, check
from .updates import Hyperparameters, clip_by_norm_

# the run settings the optimiser takes from an algorithm's YAML and lets a caller change
OPTIONS = ("optimise", "update_interval", "neumann_terms", "unroll_steps", "hyper_lr", "hyper_optimiser",
           "lr_per_weight", "clip_grad_norm", "baydin_clipped_gradients", "log10_lr_min", "log10_lr_max",
           "lr_step_factor")


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


class OnePassSGD(WeightSteps):
    """SGD (PyTorch's conventions) on ``model``'s parameters whose hyperparameters the ``algorithm`` tunes.

    ``algorithm`` is a name of ``config/algorithms`` (:func:`choices`: ``Ours_LR_Momentum`` (the default),
    ``Ours_LR``, ``Ours_HDLR_Momentum``, ``Baydin``, ``DiffThroughOpt``, ``Lorraine``, ``Random`` for plain
    SGD, ...); its YAML gives every option left at None (``optimise``: which of lr, weight_decay, momentum
    are tuned; ``update_interval`` T; ``neumann_terms``; ``hyper_lr``; ...). :meth:`step` takes one weight
    step; every T-th step also updates the hyperparameters, from a validation batch for the Neumann and
    Diff-through-Opt hypergradients (Baydin's needs none)."""

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.0,
                 algorithm: str = "Ours_LR_Momentum", **options):
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(f"OnePassSGD got an unknown option {unknown[0]!r}; options: {', '.join(OPTIONS)}")
        if isinstance(options.get("optimise"), (tuple, str)):
            options["optimise"] = [options["optimise"]] if isinstance(options["optimise"], str) \
                else list(options["optimise"])
        self.settings = s = _settings(algorithm, options)
        self.algorithm, self.model, self.method = algorithm, model, method_for(s)
        self.names = [name for name, _ in model.named_parameters()]
        self.params = [p.detach().unsqueeze(0).clone().requires_grad_(True) for _, p in model.named_parameters()]
        self.bufs = [torch.zeros_like(p) for p in self.params]
        device = self.params[0].device
        shapes = [p.shape[1:] for p in self.params] if s["lr_per_weight"] else None
        self.hypers = Hyperparameters(
            [lr], [weight_decay], [momentum], s["optimise"], per_weight_shapes=shapes,
            optimiser=s["hyper_optimiser"], hyper_lr=s["hyper_lr"],
            log10_lr_bounds=(s["log10_lr_min"], s["log10_lr_max"]), device=device)
        if s["lr_step_factor"] is not None:
            self.lr_step_factor = torch.tensor([float(s["lr_step_factor"])], device=device)
        self.has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        self.weight_step = 0      # weight steps taken
        self.hyper_step = 0       # hyperparameter steps (blocks of T weight steps) completed
        self.loss_fn = self.val_loss_fn = None   # the losses of the step being taken
        self.pending_window = None   # Diff-through-Opt: a loaded state's open window (its batches, weights)

    # ---- what a caller reads ----------------------------------------------------------------------------
    @property
    def hyperparameters(self) -> dict:
        """The current lr, weight decay and momentum (natural units; a per-weight lr by its mean)."""
        return {k: float(v[0]) for k, v in self.hypers.summary().items()}

    @property
    def hyper_step_due(self) -> bool:
        """Whether the next :meth:`step` updates the hyperparameters from ``val_batch``."""
        return self.method.needs_validation(self.settings, self.weight_step % self.settings["update_interval"])

    # ---- the model as a function of the stacked weights: the run's side of onepass.methods -------------
    def _losses(self, params, batch, loss_fn, track_stats: bool = True):
        """([1] loss, ()) of the model with weights ``params`` on ``batch`` = (inputs, targets): the engine's
        loss form (a loss per member and an aux output). Without ``track_stats``, BatchNorm uses batch
        statistics and leaves its running statistics alone (a pure function of the weights)."""
        inputs, targets = batch
        state = dict(zip(self.names, (p[0] for p in params)))
        with nullcontext() if track_stats else frozen_batchnorm_stats(self.model):
            out = functional_call(self.model, state, (inputs,), strict=False)
        return loss_fn(out, targets).reshape(1), ()

    def train_grads(self, batch, clip: bool = True) -> tuple:
        losses, _ = self._losses(self.params, batch, self.loss_fn)
        grads = list(torch.autograd.grad(losses.sum(), self.params))
        if clip:
            clip_by_norm_(grads, self.settings["clip_grad_norm"])
        return losses.detach(), grads

    def hypergradient_losses(self, params, batch) -> tuple:
        return self._losses(params, batch, self.loss_fn, track_stats=False)

    def val_losses(self, params, batch) -> tuple:
        return self._losses(params, batch, self.val_loss_fn, track_stats=False)

    def track_stats(self, batch) -> None:
        if self.has_batchnorm:
            with torch.no_grad():
                self._losses(self.params, batch, self.loss_fn)

    # ---- steps ------------------------------------------------------------------------------------------
    def step(self, loss_fn, batch, val_batch=None, val_loss_fn=None) -> torch.Tensor:
        """One weight step on ``batch`` = (inputs, targets), the loss ``loss_fn(model(inputs), targets)``
        (a scalar: ``torch.nn.functional.mse_loss``, ``cross_entropy``, ...); every ``update_interval``-th
        step (:attr:`hyper_step_due`) also a hyperparameter step, scored by ``val_loss_fn`` (default
        ``loss_fn``) on ``val_batch``. Returns the training loss (before the step)."""
        T = self.settings["update_interval"]
        if self.hyper_step_due and val_batch is None:
            raise ValueError(f"OnePassSGD: weight step {self.weight_step + 1} ends a block of {T} and updates the "
                             f"hyperparameters: pass val_batch")
        self.loss_fn, self.val_loss_fn = loss_fn, val_loss_fn or loss_fn
        if self.pending_window is not None:
            window, self.pending_window = self.pending_window, None
            self.method.reopen(self, window["batches"])
        loss = self.take_weight_step(self.weight_step % T, batch, lambda: val_batch)
        self.weight_step += 1
        if self.weight_step % T == 0:
            self.hyper_step += 1
        self._write_back()
        return loss[0]

    @torch.no_grad()
    def _write_back(self, weights=None) -> None:
        """The module's parameters := the current weights (inside Diff-through-Opt's window, the window's)."""
        if weights is None:
            weights = self.params if self.window is None else self.window.weights()[0]
        for (_, p), w in zip(self.model.named_parameters(), weights):
            p.copy_(w[0])

    # ---- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resumed optimiser needs (the module's own state_dict holds its weights too); inside
        Diff-through-Opt's window, the weights at its start and its batches so far."""
        return {"algorithm": self.algorithm, "settings": dict(self.settings),
                "params": [p.detach().clone() for p in self.params], "bufs": [b.clone() for b in self.bufs],
                "hypers": self.hypers.state_dict(), "weight_step": self.weight_step,
                "hyper_step": self.hyper_step, "grads_prev": self.grads_prev,
                "window": self.pending_window if self.window is None else
                {"batches": list(self.window.batches), "weights": list(self.window.weights()[0])}}

    def load_state_dict(self, state: dict) -> None:
        if state["algorithm"] != self.algorithm or state["settings"] != self.settings:
            raise ValueError(f"OnePassSGD: a state of {state['algorithm']} with other settings cannot be loaded "
                             f"into {self.algorithm}")
        with torch.no_grad():
            for p, saved in zip(self.params, state["params"]):
                p.copy_(saved)
        self.bufs = [b.clone() for b in state["bufs"]]
        self.hypers.load_state_dict(state["hypers"])
        self.weight_step, self.hyper_step = state["weight_step"], state["hyper_step"]
        self.grads_prev, self.pending_window = state["grads_prev"], state["window"]
        self.window = self.block_hypers = None
        self._write_back(None if self.pending_window is None else self.pending_window["weights"])

    def __repr__(self) -> str:
        values = ", ".join(f"{k}={v:.3g}" for k, v in self.hyperparameters.items())
        return f"OnePassSGD({self.algorithm}, {values}, optimise={list(self.settings['optimise'])})"
