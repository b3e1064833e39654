"""The records a run leaves: ``metrics.json``, ``history.csv`` and TensorBoard events, written the same way
by training runs and black-box searches, each file atomically and durably (onepass.atomic)."""

from __future__ import annotations

import csv
import json
import platform
import shutil
from pathlib import Path

from .atomic import atomic_write  # the modules that write records import it from here too
from .settings import HYPERPARAMETERS
from .version import __version__

HISTORY_COLUMNS = ["step", "hyper_step", "time_s", "train_loss", "valid_loss", "test_loss", "test_metric",
                   *HYPERPARAMETERS]
INTEGER_COLUMNS = ("step", "hyper_step")


def write_history(path: Path, rows: list[dict]) -> None:
    """``history.csv``: one row per logged evaluation, in :data:`HISTORY_COLUMNS`."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, HISTORY_COLUMNS)
            w.writeheader()
            for row in rows:
                w.writerow({k: int(row[k]) if k in INTEGER_COLUMNS else repr(float(row[k])) for k in HISTORY_COLUMNS})
    atomic_write(path, write)


def write_metrics(path: Path, metrics: dict) -> None:
    """``metrics.json`` (NaN written as JSON's NaN, as Python's json module reads it)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(metrics, indent=1) + "\n"))


def write_tensorboard(directory: Path, rows: list[dict]) -> None:
    """TensorBoard events of a history (``tensorboard --logdir``), written afresh into ``directory``."""
    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(directory, ignore_errors=True)
    writer = SummaryWriter(str(directory))
    try:
        for row in rows:
            for key in HISTORY_COLUMNS[3:]:
                writer.add_scalar(key, row[key], row["step"])
    finally:
        writer.close()


def versions(**extra) -> dict:
    """Versions of the software a run used (plus ``extra``, e.g. a search library's)."""
    import numpy
    import torch

    return {"onepass": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), **extra}


def task_metrics(task: str, test_metric: float, accuracy, perplexity) -> dict:
    """The task-specific metric fields of ``metrics.json`` (None where they do not apply)."""
    nan = float("nan")
    return {"test_mse_unnormalised": test_metric if task == "regression" else None,
            "test_accuracy": (nan if accuracy is None else accuracy) if task == "classification" else None,
            "test_perplexity": (nan if perplexity is None else perplexity) if task == "language_model" else None}
