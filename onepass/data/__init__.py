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

Everything public is imported here, so ``from onepass.data import load`` (and every other name) works.
"""

from .archives import read_archive_members
from .cli import main
from .fetching import CHUNK, fetch, fetch_inits, sha256_file
from .fileformat import FORMAT_VERSION, PREPARED_NAME, PREPROCESSING, SPLIT_SEED, SPLITS, prepared_path
from .images import CIFAR_MEMBERS
from .loading import Dataset, check_preprocessing, load, status, with_validation_proportion
from .penn_treebank import EOS, UNK
from .preparing import PREPARERS, prepare
from .sources import (DEFAULT_DATA_DIR, DEFAULT_SOURCES, INIT_PREFIX, MIRRORS_ENV, SOURCE_COLUMNS, DataError,
                      Source, check_name, datasets, init_digests, read_sources, resolve_mirrors)
from .uci import uci_splits

__all__ = ["CHUNK", "CIFAR_MEMBERS", "DEFAULT_DATA_DIR", "DEFAULT_SOURCES", "DataError", "Dataset", "EOS",
           "FORMAT_VERSION", "INIT_PREFIX", "MIRRORS_ENV", "PREPARED_NAME", "PREPARERS", "PREPROCESSING",
           "SOURCE_COLUMNS", "SPLITS", "SPLIT_SEED", "Source", "UNK", "check_name", "check_preprocessing",
           "datasets", "fetch", "fetch_inits", "init_digests", "load", "main", "prepare", "prepared_path",
           "read_archive_members", "read_sources", "resolve_mirrors", "sha256_file", "status", "uci_splits",
           "with_validation_proportion"]
