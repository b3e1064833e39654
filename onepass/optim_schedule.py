"""A OnePassSGD run's hyperparameters as data: the schedule it used, replayable with plain torch.optim.SGD,
and its hyperparameter steps written to TensorBoard.

    sched = onepass.schedule(opt)                      # per weight step and group: lr, weight decay, momentum
    sgd = torch.optim.SGD(model.parameters(), lr=sched.at(0)["lr"])
    for step in range(len(sched)):
        sched.apply(sgd, step)                         # or LambdaLR(sgd, sched.lr_lambda()) for the lr alone
        ...; loss.backward(); sgd.step()

``onepass.write_tensorboard(opt, SummaryWriter())`` writes every hyperparameter step's values.
"""

from __future__ import annotations

import json
from pathlib import Path

NAMES = ("lr", "weight_decay", "momentum")


class Schedule:
    """The hyperparameters each weight step of a run used: ``values[step][group] = (lr, weight_decay,
    momentum)`` (lr with the scheduler's multiplier; a per-weight lr by its mean, so that replay is then an
    approximation)."""

    def __init__(self, values):
        self.values = [[tuple(float(x) for x in group) for group in step] for step in values]

    def __len__(self) -> int:
        return len(self.values)

    def at(self, step: int, group: int = 0) -> dict:
        """{lr, weight_decay, momentum} of weight step ``step`` (0-based), parameter group ``group``."""
        return dict(zip(NAMES, self.values[step][group]))

    def apply(self, optimizer, step: int) -> None:
        """Set every parameter group of ``optimizer`` (torch.optim.SGD, ...) to weight step ``step``'s values;
        past the schedule's end, its last step's."""
        row = self.values[min(step, len(self.values) - 1)]
        if len(row) != len(optimizer.param_groups):
            raise ValueError(f"Schedule: {len(row)} parameter groups, the optimiser has "
                             f"{len(optimizer.param_groups)}")
        for group, values in zip(optimizer.param_groups, row):
            group.update(zip(NAMES, values))

    def lr_lambda(self, group: int = 0):
        """The lr as a multiplier of its first value, for ``torch.optim.lr_scheduler.LambdaLR`` (stepped once
        per weight step, the optimiser built with the first lr)."""
        first = self.values[0][group][0]
        return lambda step: self.values[min(step, len(self.values) - 1)][group][0] / first

    def save(self, path) -> None:
        """The schedule as JSON: {"names": [...], "values": [[[lr, wd, mom] per group] per step]}."""
        Path(path).write_text(json.dumps({"names": list(NAMES), "values": self.values}))

    @classmethod
    def load(cls, path) -> "Schedule":
        return cls(json.loads(Path(path).read_text())["values"])


def schedule(opt) -> Schedule:
    """The schedule a :class:`onepass.optim.OnePassSGD` run used so far (its ``trace``)."""
    return Schedule(opt.trace)


def write_tensorboard(opt, writer, prefix: str = "onepass") -> None:
    """Every hyperparameter step's values of ``opt`` as scalars ``<prefix>/group<i>/<name>`` at their weight
    step, to a ``torch.utils.tensorboard.SummaryWriter`` (or anything with its ``add_scalar``)."""
    for row in opt.history:
        for name in NAMES:
            writer.add_scalar(f"{prefix}/group{row['group']}/{name}", row[name], row["step"])
