"""The prepared file ``DATA_DIR/DATASET/prepared.pt``: what it holds, how it is written, and the helpers the
preparers build its tensors with.

One prepared file serves both choices of :func:`onepass.data.load`'s ``preprocessing`` (the run setting of
that name): ``"paper"`` (default) cuts and normalises as the paper's code
(github.com/rmclarke/OptimisingWeightUpdateHyperparameters at 8568f76) did, ``"corrected"`` permutes with
``SPLIT_SEED`` = 0 (the legacy NumPy ``RandomState(0).permutation(n)``, whose stream NumPy keeps frozen across
versions) and takes statistics from the training split alone. Preparing is deterministic: two preparations
give byte-identical files.

Content: ``torch.save`` of a dict with ``format_version`` (``FORMAT_VERSION``), the dataset's description
(``name``, ``family``, ``task``, ``input_shape``, ``num_classes``, ``vocab``, ``vocab_size``,
``preprocessing``: the choices held, ``split_seed``, ``raw_sha256``) and its data: for UCI and the images,
``examples`` (``inputs``/``targets`` of every example in file order: UCI rows as float64; images uint8, the
official training images then the test images) and ``choices``, for each choice the int64 row indices of
each split into ``examples`` (``splits``) and the ``normalisers`` (UCI float64 ``x_mean``/``x_std``/
``y_mean``/``y_std``; images float32 ``x_mean``/``x_std`` and ``pixel_divisor``, 1 or 255); for Penn
Treebank the final ``streams``; for a dataset of one's own its ``user_splits``. Loading another format
version is an error asking to re-run ``prepare``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..settings import SETTINGS

FORMAT_VERSION = 2
PREPROCESSING = SETTINGS["preprocessing"].choices  # the choices load() offers (the run setting of that name)
SPLIT_SEED = 0
PREPARED_NAME = "prepared.pt"
SPLITS = ("train", "valid", "test")


def prepared_path(name: str, data_dir: str | os.PathLike) -> Path:
    """Where the prepared file of ``name`` lives: ``DATA_DIR/NAME/prepared.pt``."""
    return Path(data_dir) / name / PREPARED_NAME


def save_prepared(content: dict, target: Path) -> None:
    """``torch.save`` ``content`` to ``target`` atomically, through a file object: the zip's record names
    then do not depend on the (temporary) file name, so the bytes are the same every time."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            torch.save(content, out)

    atomic_write(target, write)


# ------------------------------------------------------------------------- helpers of the preparers


def permutation(n: int) -> np.ndarray:
    """The fixed, documented permutation of ``n`` items (NumPy's frozen legacy RandomState stream)."""
    return np.random.RandomState(SPLIT_SEED).permutation(n)


def f32(a) -> torch.Tensor:
    """A float32 tensor with its own storage."""
    return torch.from_numpy(np.array(a, dtype=np.float32))


def f64(a) -> torch.Tensor:
    """A float64 tensor with its own storage."""
    return torch.from_numpy(np.array(a, dtype=np.float64))


def i64(a) -> torch.Tensor:
    """An int64 tensor with its own storage (a view would save its whole base array)."""
    return torch.from_numpy(np.array(a, dtype=np.int64))


def split_indices(order: np.ndarray, sizes: Iterable[int]) -> dict[str, torch.Tensor]:
    """``order`` cut into consecutive train/valid/test pieces of ``sizes`` rows."""
    bounds = np.cumsum((0, *sizes))
    return {s: i64(order[bounds[i] : bounds[i + 1]]) for i, s in enumerate(SPLITS)}
