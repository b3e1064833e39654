"""Where the pipeline keeps its files, and the variable naming the data mirrors: facts that the study and the
data layer both read, kept in a module that imports nothing of the package so that neither imports the other."""

from __future__ import annotations

MIRRORS_ENV = "ONEPASS_DATA_MIRRORS"  # directories holding dataset files, ':'-separated (see onepass.data)
RESULTS = "results"


def data_dir() -> str:
    """Prepared data, shared by every study (its content does not depend on the study)."""
    return f"{RESULTS}/data"
