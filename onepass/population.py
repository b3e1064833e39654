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

from .hypergrad import baydin_hypergradient, linearised_update, neumann_hypergradient, unrolled_hypergradient
from .problems import Problem
from .records import HISTORY_COLUMNS
from .settings import HYPERPARAMETERS, check_initial
from .updates import (Hyperparameters, clip_by_norm, clip_by_norm_, per_member, sgd_step_, spread,
                      to_unconstrained)

PER_MEMBER_SETTINGS = ("lr_step_factor",)
VALID_SEED_OFFSET = 1_000_003  # a member's validation batches: their own stream, seeded seed + this
STATS_SEED_OFFSET = 2_000_006  # the validation batches BatchNorm's running statistics absorb (their own stream)
NAN = float("nan")


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


class Population:
    """State and steps of a population; :func:`onepass.train.train_population` drives it."""

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
        # the paper's quirk (batchnorm_absorbs_validation): a validation batch in train mode every weight step
        self.stats_stream = self.problem.stream("valid", [s + STATS_SEED_OFFSET for s in seeds]) \
            if self.has_batchnorm and settings["batchnorm_absorbs_validation"] else None
        # cuDNN's LSTM has no double backward: on CUDA the hypergradients of a recurrent model run on the
        # native kernels (cuDNN's convolutions and BatchNorm have one, so the ResNet keeps them)
        self.no_cudnn = device.type == "cuda" and any(isinstance(m, torch.nn.RNNBase)
                                                      for m in self.problem.template.modules())
        self.initial_weights = [p.detach().clone() for p in self.params] if settings["reset_weights"] else None
        self.hyper_step = 0
        self.weight_step = 0
        self.train_time = 0.0
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

    @property
    def size(self) -> int:
        return len(self.members)

    def member_settings(self, i: int) -> dict:
        """The settings member ``i`` ran with (the population's, with its own per-member settings)."""
        return {**self.settings, **self.members[i].settings}

    # ---- hyperparameters for the weight steps ---------------------------------------------------------
    def _natural(self):
        """(lr, weight_decay, momentum) per member, lr masked to 0 for members that no longer train."""
        lr, wd, mom = self.hypers.natural()
        mask = self.alive.to(wd.dtype)
        lr = tuple(x * per_member(mask, x) for x in lr) if isinstance(lr, tuple) else lr * mask
        return lr, wd, mom

    def _spread(self):
        lr, wd, mom = self._natural()
        return spread(lr, self.params), spread(wd, self.params), spread(mom, self.params)

    # ---- steps ----------------------------------------------------------------------------------------
    def _losses(self, params, batch, stream, track_stats=False):
        return self.problem.losses(params, self.buffers, batch, stream.shared, track_stats)

    def _grads(self, batch, clip: bool = True) -> list:
        losses, aux = self._losses(self.params, batch, self.train_stream, track_stats=True)
        grads = list(torch.autograd.grad(losses.sum(), self.params))
        if aux:
            self.train_stream.carry(aux)
        if clip:
            clip_by_norm_(grads, self.settings["clip_grad_norm"])
        self._record_loss(losses.detach())
        return grads

    def _record_loss(self, losses: torch.Tensor) -> None:
        self.last_loss = losses
        self.loss_sum += losses
        self.loss_count += 1
        self.weight_step += 1
        if self.stats_stream is not None:
            with torch.no_grad():
                self._losses(self.params, self.stats_stream.next(), self.stats_stream, track_stats=True)

    def _weight_step(self, hypers, batch=None) -> None:
        """One plain SGD step of every member, in place (autograd.grad plus foreach updates), on the next
        training batch (or on ``batch``)."""
        grads = self._grads(self.train_stream.next() if batch is None else batch)
        sgd_step_(self.params, self.bufs, grads, *hypers)
        if self.weight_step_hook is not None:
            self.weight_step_hook()

    def _hypergradient_kernels(self):
        """The context of every hypergradient computation: cuDNN off where its kernels lack double backward."""
        return torch.backends.cudnn.flags(enabled=False) if self.no_cudnn else contextlib.nullcontext()

    def _val_grad(self, params, batch=None) -> tuple:
        """v = dL_val/dw at ``params`` on every member's next validation batch (or ``batch``); batch statistics,
        running statistics left alone."""
        w = tuple(p.detach().requires_grad_(True) for p in params)
        losses, aux = self._losses(w, self.val_stream.next() if batch is None else batch, self.val_stream)
        if aux:
            self.val_stream.carry(aux)
        return torch.autograd.grad(losses.sum(), w)

    def hyperparameter_step(self) -> None:
        """T weight steps and, for the hypergradient algorithms, one hyperparameter update of every member."""
        s = self.settings
        method, T = s["hypergradient"], s["update_interval"]
        frozen = ~self.alive
        if method == "none":
            hypers = self._spread()
            for _ in range(T):
                self._weight_step(hypers)
        elif method == "baydin":
            # the hypergradient from the unclipped training gradients (as the paper's code), the step clipped;
            # baydin_clipped_gradients: the clipped ones for both
            grads = self._grads(self.train_stream.next(), clip=False)
            clipped = list(clip_by_norm(grads, s["clip_grad_norm"]))
            seen = clipped if s["baydin_clipped_gradients"] else grads
            if self.grads_prev is not None:
                self.hypers.step({"lr": baydin_hypergradient(seen, self.grads_prev)}, frozen)
            self.grads_prev = [g.detach().clone() for g in seen]
            sgd_step_(self.params, self.bufs, clipped, *self._spread())
        elif method == "neumann":
            self._neumann_step(T)
        elif method == "unroll":
            self._unrolled_step(T)
        if self.lr_step_factor is not None and method == "none":
            self.hypers.scale_lr(self.lr_step_factor)
        self.hyper_step += 1

    def _neumann_step(self, T: int, reference: bool = False) -> dict | None:
        """T - 1 plain steps, then the last step linearised: its update's graph gives the Neumann products.
        With ``reference``, also the exact hypergradient through the last ``neumann_terms`` steps from the
        same weights, on the same batches (returned; the step itself is unchanged)."""
        s = self.settings
        hypers = self._spread()
        exact, val_batch, batches = None, None, []
        if reference:
            window = s["neumann_terms"]
            if window > T:
                raise ValueError(f"a reference hypergradient needs neumann_terms ({window}) <= "
                                 f"update_interval ({T})")
            for _ in range(T - window):
                self._weight_step(hypers)
            batches = [self.train_stream.next() for _ in range(window)]
            val_batch = self.val_stream.next()
            exact = self._exact_hypergradient(batches, val_batch)
            for batch in batches[:-1]:
                self._weight_step(hypers, batch)
        else:
            for _ in range(T - 1):
                self._weight_step(hypers)
        batch = batches[-1] if reference else self.train_stream.next()
        lr, wd, mom = self._natural()
        loss_fn = self.problem.loss_function(self.buffers, self.train_stream.shared)
        with self._hypergradient_kernels():
            w, u, d, losses, aux = linearised_update(loss_fn, self.params, self.bufs, batch, lr, wd, mom,
                                                     s["clip_grad_norm"])
        if aux:
            self.train_stream.carry(aux)
        if self.has_batchnorm:  # the running statistics follow this step as they follow the plain ones
            with torch.no_grad():
                self._losses(self.params, batch, self.train_stream, track_stats=True)
        self._record_loss(losses)
        new_params = tuple((x - y).detach() for x, y in zip(w, u))
        new_bufs = [x.detach() for x in d]
        with self._hypergradient_kernels():
            val_grad = self._val_grad(new_params, val_batch)
            grads = neumann_hypergradient(w, u, val_grad, s["neumann_terms"], tuple(self.bufs), lr, wd, mom,
                                          self.hypers.optimise)
        del w, u, d
        with torch.no_grad():
            torch._foreach_copy_(self.params, list(new_params))
        self.bufs = new_bufs
        self.hypers.step(grads, ~self.alive)
        return {"neumann": grads, "exact": exact} if reference else None

    def _exact_hypergradient(self, batches: list, val_batch) -> dict:
        """Diff-through-Opt's hypergradient through steps on ``batches`` from the current weights (which it
        leaves alone), scored on ``val_batch``."""
        batch_iter = iter(batches)

        def val_loss(params, batch):
            return self._losses(params, batch, self.val_stream)[0]

        with self._hypergradient_kernels():
            grads, *_ = unrolled_hypergradient(
                self.problem.loss_function(self.buffers, self.train_stream.shared), val_loss, tuple(self.params),
                tuple(self.bufs), lambda: next(batch_iter), len(batches), val_batch, self.hypers.trainable(),
                self.hypers.fixed(), self.settings["clip_grad_norm"], lr_mask=self.alive.to(self.last_loss.dtype))
        return grads

    def _unrolled_step(self, T: int) -> None:
        """Reset (Long variants), T - unroll_steps plain steps, then the exact hypergradient through the last
        unroll_steps steps."""
        s = self.settings
        if self.initial_weights is not None:
            with torch.no_grad():
                torch._foreach_copy_(self.params, self.initial_weights)
                if s["reset_momentum"]:
                    torch._foreach_zero_(self.bufs)
        hypers = self._spread()
        for _ in range(T - s["unroll_steps"]):
            self._weight_step(hypers)

        def val_loss(params, batch):
            return self._losses(params, batch, self.val_stream)[0]

        with self._hypergradient_kernels():
            grads, weights, bufs, _, losses = unrolled_hypergradient(
                self.problem.loss_function(self.buffers, self.train_stream.shared), val_loss, tuple(self.params),
                tuple(self.bufs), self.train_stream.next, s["unroll_steps"], self.val_stream.next(),
                self.hypers.trainable(), self.hypers.fixed(), s["clip_grad_norm"], carry=self.train_stream.carry,
                lr_mask=self.alive.to(self.last_loss.dtype))
        with torch.no_grad():
            torch._foreach_copy_(self.params, list(weights))
            torch._foreach_copy_(self.bufs, list(bufs))
        for loss in losses:
            self._record_loss(loss)
        self.hypers.step(grads, ~self.alive)

    # ---- divergence -----------------------------------------------------------------------------------
    def check_divergence(self) -> list[int]:
        """Freeze and record the members that diverged in the last hyperparameter step; returns them."""
        bad = ~torch.isfinite(self.last_loss) | ~self.hypers.finite()
        if self.settings["divergence_threshold"] is not None:
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

    # ---- the interface of outer searches (PBT, ASHA): step, report, change hyperparameters -------------
    def step(self) -> list[int]:
        """One hyperparameter step of the members still training, timed; returns the members that diverged
        in it (they are frozen and recorded)."""
        tick = time.perf_counter()
        self.hyperparameter_step()
        newly = self.check_divergence()
        self.train_time += time.perf_counter() - tick
        return newly

    def step_with_reference(self) -> dict:
        """One hyperparameter step of a population of the paper's method (hypergradient ``neumann``), exactly
        as :meth:`step`, that also returns the hypergradient it took and the exact one (Diff-through-Opt
        through the same last ``neumann_terms`` weight steps, from the same weights, batches and validation
        batch): {"neumann": {name: [N] tensor}, "exact": {...}} for the optimised hyperparameters. Members
        that diverge in it are frozen as by :meth:`step`."""
        if self.settings["hypergradient"] != "neumann":
            raise ValueError(f"a reference hypergradient is for the neumann method, not "
                             f"{self.settings['hypergradient']!r}")
        tick = time.perf_counter()
        out = self._neumann_step(self.settings["update_interval"], reference=True)
        self.hyper_step += 1
        self.check_divergence()
        self.train_time += time.perf_counter() - tick
        return out

    def report(self) -> list[dict]:
        """Every member's state now: training loss averaged since the last report, validation and test losses
        and metrics, current hyperparameters, steps. Members that diverged report NaN losses."""
        train = (self.loss_sum / self.loss_count).tolist() if self.loss_count else [NAN] * self.size
        self.loss_sum.zero_()
        self.loss_count = 0
        valid, test = self.evaluate("valid"), self.evaluate("test")
        hypers = {k: v.tolist() for k, v in self.hypers.summary().items()}
        out = []
        for i, alive in enumerate(self.alive.tolist()):
            values = {"train_loss": train[i], "valid_loss": float(valid["loss"][i]),
                      "test_loss": float(test["loss"][i]), "test_metric": float(test["metric"][i]),
                      "test_accuracy": float(test["accuracy"][i]) if "accuracy" in test else NAN,
                      "test_perplexity": float(test["perplexity"][i]) if "perplexity" in test else NAN}
            if not alive:
                values = {k: NAN for k in values}
            out.append({**values, **{k: v[i] for k, v in hypers.items()}, "diverged": not alive,
                        "hyper_step": self.hyper_step, "weight_step": self.weight_step})
        return out

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

    # ---- bookkeeping ----------------------------------------------------------------------------------
    def member_time(self) -> float:
        """Training time per member so far: the population's training time shared out among its members."""
        return self.train_time / self.size

    def log_due(self) -> bool:
        """Whether the last hyperparameter step reached a logging point (or the end)."""
        every = self.settings["log_every"]
        return (self.last_logged_step is None or self.weight_step // every > self.last_logged_step // every
                or self.hyper_step == self.settings["hyperparameter_steps"])

    def evaluate(self, split: str) -> dict:
        """Every member's loss and metrics on a whole split: a dict of [N] tensors."""
        return self.problem.evaluate(self.params, self.buffers, split)

    def log(self) -> None:
        """Evaluate every training member on the validation and test splits and append a history row each."""
        train = (self.loss_sum / self.loss_count).tolist() if self.loss_count else [NAN] * self.size
        self.loss_sum.zero_()
        self.loss_count = 0
        valid, test = self.evaluate("valid"), self.evaluate("test")
        hypers = {k: v.tolist() for k, v in self.hypers.summary().items()}
        columns = {"valid_loss": valid["loss"].tolist(), "test_loss": test["loss"].tolist(),
                   "test_metric": test["metric"].tolist()}
        time_s = self.member_time()
        for i in self.alive.nonzero().flatten().tolist():
            self.histories[i].append({"step": self.weight_step, "hyper_step": self.hyper_step, "time_s": time_s,
                                      "train_loss": train[i], **{k: v[i] for k, v in columns.items()},
                                      **{k: v[i] for k, v in hypers.items()}})
        self.last_logged_step = self.weight_step

    def results(self) -> list[dict]:
        """Every member's final record: steps, hyperparameters, losses on every split (NaN once diverged)."""
        splits = {s: self.evaluate(s) for s in ("train", "valid", "test")} if bool(self.alive.any()) else {}
        hypers = {k: v.tolist() for k, v in self.hypers.summary().items()}
        out = []
        for i in range(self.size):
            if self.stopped[i] is not None:
                weight_step, hyper_step, final = self.stopped[i]
                values = {"train_loss": NAN, "valid_loss": NAN, "test_loss": NAN, "test_metric": NAN,
                          "test_accuracy": NAN, "test_perplexity": NAN}
            else:
                weight_step, hyper_step = self.weight_step, self.hyper_step
                final = {k: v[i] for k, v in hypers.items()}
                values = {f"{s}_loss": float(splits[s]["loss"][i]) for s in ("train", "valid", "test")}
                test = splits["test"]
                values["test_metric"] = float(test["metric"][i])
                values["test_accuracy"] = float(test["accuracy"][i]) if "accuracy" in test else None
                values["test_perplexity"] = float(test["perplexity"][i]) if "perplexity" in test else None
            out.append({"diverged": self.stopped[i] is not None, "weight_steps": weight_step,
                        "hyperparameter_steps": hyper_step, "final": final, **values})
        return out

    def state_dict(self) -> dict:
        return {"params": [p.detach() for p in self.params], "buffers": self.buffers, "bufs": self.bufs,
                "hypers": self.hypers.state_dict(), "train_stream": self.train_stream.state_dict(),
                "val_stream": self.val_stream.state_dict(), "initial_weights": self.initial_weights,
                "stats_stream": None if self.stats_stream is None else self.stats_stream.state_dict(),
                "hyper_step": self.hyper_step, "weight_step": self.weight_step, "train_time": self.train_time,
                "grads_prev": self.grads_prev, "last_loss": self.last_loss, "loss_sum": self.loss_sum,
                "loss_count": self.loss_count, "alive": self.alive, "stopped": self.stopped,
                "histories": self.histories, "last_logged_step": self.last_logged_step}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for target, saved in zip(self.params + self.buffers, state["params"] + state["buffers"]):
                target.copy_(saved)
        self.bufs = list(state["bufs"])
        self.hypers.load_state_dict(state["hypers"])
        self.train_stream.load_state_dict(state["train_stream"])
        self.val_stream.load_state_dict(state["val_stream"])
        if self.stats_stream is not None:
            self.stats_stream.load_state_dict(state["stats_stream"])
        for key in ("initial_weights", "hyper_step", "weight_step", "train_time", "grads_prev", "last_loss",
                    "loss_sum", "loss_count", "alive", "stopped", "histories", "last_logged_step"):
            setattr(self, key, state[key])
