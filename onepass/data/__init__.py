"""Data layer: fetch, verify, prepare and load the study's datasets.

Command line (``python -m onepass.data``)::

    prepare DATASET --data-dir DIR [--mirror DIR]... [--sources FILE] [--offline]
    fetch   DATASET --data-dir DIR [--mirror DIR]... [--sources FILE] [--offline]
    list    [--data-dir DIR]                      (default data dir: results/data)

``prepare`` writes the raw files and ``DIR/DATASET/prepared.pt`` and prints the prepared path; ``fetch`` only
the raw files (for a login node with internet). Errors exit with status 1 and a one-line message.

The package is cut by stage; each module's docstring says what it does and why:

- :mod:`~onepass.data.sources`: the sources table (``config/sources.tsv``: URLs, SHA-256s), the mirrors and
  the dataset names;
- :mod:`~onepass.data.fetching` and :mod:`~onepass.data.archives`: raw files fetched from mirrors or
  upstream, verified before they are renamed into place, and archive members read safely;
- :mod:`~onepass.data.fileformat`: the prepared file, its two choices of ``preprocessing`` and the tensor
  helpers of the preparers;
- one module per family's preparation: :mod:`~onepass.data.uci`, :mod:`~onepass.data.images`
  (Fashion-MNIST, CIFAR-10), :mod:`~onepass.data.penn_treebank`, :mod:`~onepass.data.user` (one's own);
  :mod:`~onepass.data.preparing` runs them;
- :mod:`~onepass.data.loading`: :func:`load` and :func:`status`;
- :mod:`~onepass.data.cli`: the command line.

Everything public is reachable here, so ``from onepass.data import load`` (and every other name) works; the
sources table's names are imported at once, the others (which import torch) when first asked for, so that
planning a study (which reads only the sources table) does not load torch (about 185 MB).
"""

import importlib

_LAZY = {"read_archive_members": "archives", "main": "cli", "CHUNK": "fetching", "fetch": "fetching",
         "fetch_inits": "fetching", "sha256_file": "fetching", "FORMAT_VERSION": "fileformat",
         "PREPARED_NAME": "fileformat", "PREPROCESSING": "fileformat", "SPLIT_SEED": "fileformat",
         "SPLITS": "fileformat", "prepared_path": "fileformat", "CIFAR_MEMBERS": "images", "Dataset": "loading",
         "check_preprocessing": "loading", "load": "loading", "status": "loading",
         "with_validation_proportion": "loading", "EOS": "penn_treebank",
         "UNK": "penn_treebank", "PREPARERS": "preparing", "prepare": "preparing", "uci_splits": "uci"}


def __getattr__(name):
    """A public name of a submodule that imports torch, imported when first asked for (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


from .sources import (DEFAULT_DATA_DIR, DEFAULT_SOURCES, INIT_PREFIX, MIRRORS_ENV, SOURCE_COLUMNS, DataError,
                      Source, check_name, datasets, init_digests, read_sources, resolve_mirrors)

__all__ = ["CHUNK", "CIFAR_MEMBERS", "DEFAULT_DATA_DIR", "DEFAULT_SOURCES", "DataError", "Dataset", "EOS",
           "FORMAT_VERSION", "INIT_PREFIX", "MIRRORS_ENV", "PREPARED_NAME", "PREPARERS", "PREPROCESSING",
           "SOURCE_COLUMNS", "SPLITS", "SPLIT_SEED", "Source", "UNK", "check_name", "check_preprocessing",
           "datasets", "fetch", "fetch_inits", "init_digests", "load", "main", "prepare", "prepared_path",
           "read_archive_members", "read_sources", "resolve_mirrors", "sha256_file", "status", "uci_splits",
           "with_validation_proportion"]
