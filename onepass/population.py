"""The population engine: N members of one (dataset, algorithm) trained at once.

Every ``update_interval`` (T) weight steps the algorithm's hypergradient updates each member's hyperparameters.
Each member has its own seed (its weight initialisation and batch order), its own initial hyperparameters and
its own per-member settings (:data:`PER_MEMBER_SETTINGS`, e.g. Random_SteppedLR's factor). Weights, momentum
buffers, BatchNorm statistics, hyperparameters and their optimiser state are stacked on a leading member
dimension, and every algorithm's logic is written once, for the whole population: member i computes what a
population of one with its seed computes (to the round-off of batched kernels). A single run is a population
of one.

A member that diverges (training loss NaN/inf or, where one is set, above ``divergence_threshold``, or
hyperparameters no longer finite) is frozen at that hyperparameter step and recorded as diverged: its weights
are zeroed and its learning rate masked to 0, so that it costs nothing numerically; the others go on.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field

import torch

from .methods import WeightSteps, method_for
from .problems import Problem
from .records import HISTORY_COLUMNS
from .reports import NAN, Reports
from .settings import HYPERPARAMETERS, check_initial
from .updates import Hyperparameters, clip_by_norm_, to_unconstrained

PER_MEMBER_SETTINGS = ("lr_step_factor",)
VALID_SEED_OFFSET = 1_000_003  # a member's validation batches: their own stream, seeded seed + this
STATS_SEED_OFFSET = 2_000_006  # the validation batches BatchNorm's running statistics absorb (their own stream)
# a population's state besides its weights, buffers and hyperparameters (state_dict, load_state_dict)
STREAMS = ("train_stream", "val_stream", "stats_stream")
STATE = ("initial_weights", "hyper_step", "weight_step", "train_time", "grads_prev", "last_loss", "loss_sum",
         "loss_count", "alive", "stopped", "histories", "last_logged_step")


@dataclass(frozen=True)
class Member:
    """One member: its seed, initial hyperparameters (natural units) and per-member settings."""

    seed: int
    lr: float
    weight_decay: float
    momentum: float
    settings: dict = field(default_factory=dict)

    def check(self) -> None:
        """ValueError naming the value if an initial hyperparameter is out of its domain."""
        for name in HYPERPARAMETERS:
            check_initial(name, getattr(self, name), f"seed {self.seed}: initial {name}")
        unknown = sorted(set(self.settings) - set(PER_MEMBER_SETTINGS))
        if unknown:
            raise ValueError(f"seed {self.seed}: {unknown[0]!r} cannot differ between members of a population")

    def as_dict(self) -> dict:
        return asdict(self)


class Population(WeightSteps, Reports):
    """State and steps of a population; :func:`onepass.train.train_population` drives it, the hypergradient
    method of its settings (:mod:`onepass.methods`) takes its weight steps."""

    def __init__(self, settings: dict, dataset, members: list[Member], device: torch.device | str):
        device = torch.device(device)
        self.settings, self.members, self.device = settings, list(members), device
        n = len(self.members)
        self.problem = Problem(settings, dataset, device)
        params, self.buffers = self.problem.initial_state([m.seed for m in self.members])
        self.params = [p.requires_grad_(True) for p in params]
        self.bufs = [torch.zeros_like(p) for p in self.params]
        shapes = [p.shape[1:] for p in self.params] if settings["lr_per_weight"] else None
        self.hypers = Hyperparameters(
            [m.lr for m in self.members], [m.weight_decay for m in self.members],
            [m.momentum for m in self.members], settings["optimise"], per_weight_shapes=shapes,
            optimiser=settings["hyper_optimiser"], hyper_lr=settings["hyper_lr"],
            log10_lr_bounds=(settings["log10_lr_min"], settings["log10_lr_max"]), dtype=self.params[0].dtype,
            device=device)
        factors = [m.settings.get("lr_step_factor", settings["lr_step_factor"]) for m in self.members]
        self.lr_step_factor = None if all(f is None for f in factors) else \
            torch.tensor([1.0 if f is None else f for f in factors], device=device)
        seeds = [m.seed for m in self.members]
        self.train_stream = self.problem.stream(settings["train_on"], seeds)
        self.val_stream = self.problem.stream("valid", [s + VALID_SEED_OFFSET for s in seeds])
        self.has_batchnorm = any(name.endswith("running_mean") for name in self.problem.buffer_names)
        # the paper's quirk (batchnorm_absorbs): a validation (or, for Baydin, training) batch in train mode
        # every weight step
        absorbs = {"validation": "valid", "training": settings["train_on"]}.get(settings["batchnorm_absorbs"])
        self.stats_stream = self.problem.stream(absorbs, [s + STATS_SEED_OFFSET for s in seeds]) \
            if self.has_batchnorm and absorbs else None
        # cuDNN's LSTM has no double backward: on CUDA the hypergradients of a recurrent model run on the
        # native kernels (cuDNN's convolutions and BatchNorm have one, so the ResNet keeps them)
        self.no_cudnn = device.type == "cuda" and any(isinstance(m, torch.nn.RNNBase)
                                                      for m in self.problem.template.modules())
        self.initial_weights = [p.detach().clone() for p in self.params] if settings["reset_weights"] else None
        self.hyper_step = 0
        self.weight_step = 0
        self.train_time = 0.0
        self.method = method_for(settings)
        self.grads_prev = None
        self.last_loss = torch.zeros(n, device=device)
        self.loss_sum = torch.zeros(n, device=device)
        self.loss_count = 0
        self.alive = torch.ones(n, dtype=torch.bool, device=device)
        self.stopped = [None] * n     # (weight step, hyper step, hyperparameters) where a member diverged
        self.histories: list[list[dict]] = [[] for _ in range(n)]
        self.last_logged_step = None
        # called after every plain weight step (an outer search's report inside a hyperparameter step)
        self.weight_step_hook = None
        self.compiled_loss = None   # the training steps' loss through torch.compile (:meth:`compile`)

    @property
    def size(self) -> int:
        return len(self.members)

    def member_settings(self, i: int) -> dict:
        """The settings member ``i`` ran with (the population's, with its own per-member settings)."""
        return {**self.settings, **self.members[i].settings}

    # ---- the weight steps: the run's side of onepass.methods -----------------------------------------
    def _losses(self, params, batch, stream, track_stats=False):
        return self.problem.losses(params, self.buffers, batch, stream.shared, track_stats)

    def compile(self, mode: str | None = None, backend: str = "inductor") -> None:
        """Take the training steps' loss (forward and backward) through ``torch.compile`` (``backend``; with
        inductor, ``mode`` ``reduce-overhead``: CUDA graphs on a GPU). Only for a plain MLP's population; the
        hypergradients' losses stay eager (a compiled graph has no double backward). Same numbers to float
        round-off."""
        if not self.problem.stacked:
            raise ValueError(f"torch.compile is only for plain MLP populations, not model {self.settings['model']!r}")
        problem, buffers, shared = self.problem, self.buffers, self.train_stream.shared
        self.compiled_loss = torch.compile(lambda params, batch: problem.losses(params, buffers, batch, shared, True),
                                           mode=mode, backend=backend, dynamic=False)

    def train_grads(self, batch, clip: bool = True) -> tuple:
        if self.problem.stacked and self.compiled_loss is None:   # backpropagation written out
            (losses, grads), aux = self.problem.stacked_grads(self.params, batch), ()
        else:
            losses, aux = self.compiled_loss(tuple(self.params), batch) if self.compiled_loss is not None \
                else self._losses(self.params, batch, self.train_stream, track_stats=True)
            grads = list(torch.autograd.grad(losses.sum(), self.params))
        if aux:
            self.train_stream.carry(aux)
        if clip:
            clip_by_norm_(grads, self.settings["clip_grad_norm"])
        self.record_loss(losses.detach())
        return self.last_loss, grads

    def curvature(self, batch):
        if not self.problem.stacked or self.settings["clip_grad_norm"] is not None:
            return None
        return self.problem.stacked_curvature([p.detach() for p in self.params], batch)

    def hypergradient_losses(self, params, batch) -> tuple:
        return self._losses(params, batch, self.train_stream)

    def val_losses(self, params, batch) -> tuple:
        return self._losses(params, batch, self.val_stream)

    def carry(self, aux) -> None:
        self.train_stream.carry(aux)

    def val_carry(self, aux) -> None:
        self.val_stream.carry(aux)

    def track_stats(self, batch) -> None:
        if self.has_batchnorm:
            with torch.no_grad():
                self._losses(self.params, batch, self.train_stream, track_stats=True)

    def record_loss(self, losses: torch.Tensor) -> None:
        """A weight step's training losses; the weight step counted (and the paper's BatchNorm quirk)."""
        self.last_loss = losses
        self.loss_sum += losses
        self.loss_count += 1
        self.weight_step += 1
        if self.stats_stream is not None:
            with torch.no_grad():
                self._losses(self.params, self.stats_stream.next(), self.stats_stream, track_stats=True)

    def after_plain_step(self) -> None:
        if self.weight_step_hook is not None:
            self.weight_step_hook()

    def kernels(self):
        """cuDNN off where its kernels lack double backward."""
        return torch.backends.cudnn.flags(enabled=False) if self.no_cudnn else contextlib.nullcontext()

    def hyperparameter_step(self) -> None:
        """T weight steps, each on the next training batch, and (for the hypergradient methods) one
        hyperparameter update of every member."""
        for position in range(self.settings["update_interval"]):
            self.take_weight_step(position, self.train_stream.next(), self.val_stream.next)
        self.hyper_step += 1

    # ---- divergence -----------------------------------------------------------------------------------
    def check_divergence(self) -> list[int]:
        """Freeze and record the members that diverged in the last hyperparameter step; returns them."""
        bad = ~torch.isfinite(self.last_loss) | ~self.hypers.finite()
        if self.settings["divergence_threshold"] is not None and self.settings["divergence_check"] == "training":
            bad |= self.last_loss > self.settings["divergence_threshold"]
        bad &= self.alive
        newly = bad.nonzero().flatten().tolist()
        if not newly:
            return []
        summary = {k: v.tolist() for k, v in self.hypers.summary().items()}
        time_s = self.member_time()
        for i in newly:
            hypers = {k: summary[k][i] for k in summary}
            self.stopped[i] = (self.weight_step, self.hyper_step, hypers)
            self.histories[i].append({**{k: NAN for k in HISTORY_COLUMNS}, "step": self.weight_step,
                                      "hyper_step": self.hyper_step, "time_s": time_s, **hypers})
        self.alive &= ~bad
        with torch.no_grad():
            for t in self.params + self.bufs + ([] if self.grads_prev is None else self.grads_prev):
                t[bad] = 0.0
            self.hypers.reset(bad)
        return newly

    # ---- the interface of outer searches (PBT, ASHA): step, report (Reports), change hyperparameters --
    def step(self) -> list[int]:
        """One hyperparameter step of the members still training, timed; returns the members that diverged
        in it (they are frozen and recorded)."""
        tick = time.perf_counter()
        self.hyperparameter_step()
        newly = self.check_divergence()
        self.train_time += time.perf_counter() - tick
        return newly

    def hyperparameters(self) -> dict:
        """Every member's current hyperparameters in natural units (lists; a per-weight lr by its mean)."""
        return {k: v.tolist() for k, v in self.hypers.summary().items()}

    @torch.no_grad()
    def set_hyperparameter(self, member: int, name: str, value: float) -> None:
        """Set one member's hyperparameter ``name`` to ``value`` (natural units; every per-weight rate alike)."""
        for leaf in self.hypers.leaves(name):
            leaf[member] = to_unconstrained(name, value)
        self.hypers.clip()

    @torch.no_grad()
    def scale_hyperparameter(self, member: int, name: str, factor: float) -> None:
        """Multiply one member's learning rate or weight decay by ``factor`` (a shift of its log10, which
        keeps the spread of per-weight rates), then clip."""
        if name not in ("lr", "weight_decay"):
            raise ValueError(f"only lr and weight_decay are scaled, not {name!r}")
        for leaf in self.hypers.leaves(name):
            leaf[member] += math.log10(factor)
        self.hypers.clip()

    @torch.no_grad()
    def multiply_log10_hyperparameter(self, member: int, name: str, factor: float) -> None:
        """Multiply the log10 of one member's learning rate or weight decay by ``factor`` (the paper's PBT
        explore, on the log10 values it searched over; every per-weight rate alike), then clip."""
        if name not in ("lr", "weight_decay"):
            raise ValueError(f"only lr and weight_decay have a log10 to multiply, not {name!r}")
        for leaf in self.hypers.leaves(name):
            leaf[member] *= factor
        self.hypers.clip()

    def state_dict(self) -> dict:
        return {"params": [p.detach() for p in self.params], "buffers": self.buffers, "bufs": self.bufs,
                "hypers": self.hypers.state_dict(),
                **{k: None if getattr(self, k) is None else getattr(self, k).state_dict() for k in STREAMS},
                **{k: getattr(self, k) for k in STATE}}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for target, saved in zip(self.params + self.buffers, state["params"] + state["buffers"]):
                target.copy_(saved)
        self.bufs = list(state["bufs"])
        self.hypers.load_state_dict(state["hypers"])
        for key in STREAMS:
            if getattr(self, key) is not None:
                getattr(self, key).load_state_dict(state[key])
        for key in STATE:
            setattr(self, key, state[key])
