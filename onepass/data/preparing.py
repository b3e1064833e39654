"""Preparing a dataset: fetch and verify its raw files, turn them into the prepared file (its family's
preparer) and write that atomically. On any error every file created by the call is removed again.

Each family's preparer is a function ``(name, {raw file name: path}) -> content`` in its own module
(:mod:`~onepass.data.uci`, :mod:`~onepass.data.images`, :mod:`~onepass.data.penn_treebank`); a dataset of
one's own (:mod:`~onepass.data.user`) has no raw files. :mod:`onepass.data.fileformat` describes the content.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .. import catalog
from .fetching import cleanup_on_error, fetch_into
from .fileformat import FORMAT_VERSION, PREPROCESSING, SPLIT_SEED, prepared_path, save_prepared
from .images import prepare_cifar10, prepare_fashion_mnist
from .penn_treebank import prepare_penn_treebank
from .sources import check_name, sources_for
from .uci import prepare_uci
from .user import prepare_user

PREPARERS = {
    "uci": prepare_uci,
    "fashion_mnist": prepare_fashion_mnist,
    "cifar10": prepare_cifar10,
    "penn_treebank": prepare_penn_treebank,
}


def prepare(
    name: str,
    data_dir: str | os.PathLike,
    mirrors: Iterable[str | os.PathLike] | None = None,
    sources: str | os.PathLike | None = None,
    download: bool = True,
) -> Path:
    """Fetch, verify and prepare ``name``; write ``DATA_DIR/NAME/prepared.pt`` atomically and return its path.

    On any error every file created by this call is removed again.
    """
    family = check_name(name)
    target = prepared_path(name, data_dir)
    if family == "user":
        content = prepare_user(name)
        with cleanup_on_error(Path(data_dir) / name):
            save_prepared(content, target)
        return target
    with cleanup_on_error(Path(data_dir) / name) as created:
        raw = fetch_into(name, data_dir, mirrors, sources, download, created, inits=False)
        content = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "family": family,
            "task": catalog.dataset(name).task,
            "num_classes": None,
            "vocab_size": None,
            "vocab": None,
            "preprocessing": list(PREPROCESSING),
            "examples": None,  # UCI, images: every example in file order
            "choices": None,  # UCI, images: {preprocessing: split indices and normalisers}
            "streams": None,  # Penn Treebank: the final token streams (the same for every choice)
            "split_seed": SPLIT_SEED,
            "raw_sha256": {f: src.sha256 for src in sources_for(name, sources) if (f := src.file) in raw},
        }
        content.update(PREPARERS[family](name, raw))
        save_prepared(content, target)
    return target
