"""Progress lines for job logs, in the manner of pycls: a long job says at a steady cadence how far it is,
how its population is doing and when it will end, so that ``tail -f`` on a job's log or a SLURM ``.out``
shows a running study (the terminal progress bar shows only on a terminal).

A line is written when ``every_s`` seconds have passed since the last one, or another ``every_fraction`` of
the steps is done, whichever comes first, and at the end::

    [progress] Ours_LR seeds 0-24: step 120/400 (30%) | alive 25, diverged 0 | median train 0.0123,
    valid 0.0456 | elapsed 0:00:31, ETA 0:01:12
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from typing import Callable, TextIO

EVERY_S = 30.0
EVERY_FRACTION = 0.05


def clock_text(seconds: float) -> str:
    """``h:mm:ss`` (``-`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def median_text(values: list[float]) -> str:
    """The median of the finite values, 4 significant digits (``-`` when there are none)."""
    finite = [v for v in values if math.isfinite(v)]
    return f"{statistics.median(finite):.4g}" if finite else "-"


class ProgressLog:
    """Writes progress lines of one loop of ``total`` steps, of which ``initial`` were done before (a
    resumed job); the ETA extrapolates the rate of the steps done in this process."""

    def __init__(self, label: str, total: int, initial: int = 0, every_s: float = EVERY_S,
                 every_fraction: float = EVERY_FRACTION, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, unit: str = "step"):
        self.label, self.total, self.initial, self.unit = label, total, initial, unit
        self.every_s, self.every_steps = every_s, max(1, math.ceil(every_fraction * total))
        self.stream, self.clock = stream, clock
        self.start = self.last_time = clock()
        self.last_done = initial

    def due(self, done: int) -> bool:
        """Whether a line is due after ``done`` steps."""
        return (done >= self.total or done - self.last_done >= self.every_steps
                or self.clock() - self.last_time >= self.every_s)

    def line(self, done: int, alive: int, diverged: int, train_loss: list[float], valid_loss: list[float]) -> str:
        """The progress line after ``done`` steps."""
        elapsed = self.clock() - self.start
        rate = (done - self.initial) / elapsed if elapsed > 0 else math.nan
        eta = (self.total - done) / rate if rate and math.isfinite(rate) and rate > 0 else math.nan
        if done >= self.total:
            eta = 0.0
        percent = 100.0 * done / self.total if self.total else 100.0
        return (f"[progress] {self.label}: {self.unit} {done}/{self.total} ({percent:.0f}%) | alive {alive}, "
                f"diverged {diverged} | median train {median_text(train_loss)}, valid {median_text(valid_loss)} "
                f"| elapsed {clock_text(elapsed)}, ETA {clock_text(eta)}")

    def update(self, done: int, alive: int, diverged: int, train_loss: list[float],
               valid_loss: list[float], force: bool = False) -> str | None:
        """Write (and return) the line if one is due (or ``force``), flushed at once."""
        if not (force or self.due(done)):
            return None
        text = self.line(done, alive, diverged, train_loss, valid_loss)
        stream = self.stream or sys.stderr
        print(text, file=stream, flush=True)
        self.last_time, self.last_done = self.clock(), done
        return text
