"""Preparing a dataset of one's own (family ``user``): its splits as the user's ``data`` function returns
them (see :mod:`onepass.user`), stored as they are; no raw files, no choices of preprocessing."""

from __future__ import annotations

from .. import catalog
from ..user import UserCodeError, prepared
from .fileformat import FORMAT_VERSION, PREPROCESSING
from .sources import DataError


def prepare_user(name: str) -> dict:
    """The prepared content of the user dataset ``name``; an error of the user's code is a DataError."""
    entry = catalog.dataset(name)
    try:
        return {"format_version": FORMAT_VERSION, "name": name, "family": "user", "task": entry.task,
                "vocab_size": None, "vocab": None, "preprocessing": list(PREPROCESSING), "examples": None,
                "choices": None, "streams": None, **prepared(entry)}
    except UserCodeError as err:
        raise DataError(str(err)) from None
