"""Where the pipeline keeps its files, and the variable naming the data mirrors: facts that the study, the data
layer and the collection of runs all read, kept in a module that imports nothing of the package so that none of
them imports another for them."""

from __future__ import annotations

from pathlib import Path

MIRRORS_ENV = "ONEPASS_DATA_MIRRORS"  # directories holding dataset files, ':'-separated (see onepass.data)
RESULTS = "results"


def data_dir() -> str:
    """Prepared data, shared by every study (its content does not depend on the study)."""
    return f"{RESULTS}/data"


RUN_FILES = ("metrics.json", "history.csv")   # what a finished run has written


def run_dir(runs: str | Path, seed: int) -> str:
    """A run's directory inside its algorithm's runs directory."""
    return f"{runs}/seed{seed}"


def finished(run: str | Path) -> bool:
    """Whether the run in directory ``run`` has finished: every one of :data:`RUN_FILES` exists."""
    return all((Path(run) / name).exists() for name in RUN_FILES)
