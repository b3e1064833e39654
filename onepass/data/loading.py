"""Loading a prepared dataset: :func:`load` reads ``DATA_DIR/DATASET/prepared.pt`` (see
:mod:`onepass.data.fileformat`), takes the rows of the chosen ``preprocessing`` and standardises them (UCI in
float64, images in float32; both returned as float32) into a :class:`Dataset`; :func:`status` says whether a
dataset is prepared in the current format.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .fileformat import FORMAT_VERSION, PREPROCESSING, SPLITS, prepared_path
from .sources import DataError, check_name

@dataclass
class Dataset:
    """A prepared dataset; each split is ``(inputs, targets)`` (targets None for language modelling)."""

    name: str
    family: str
    task: str  # "regression" | "classification" | "language_model"
    train: tuple
    valid: tuple
    test: tuple
    input_shape: tuple
    num_classes: int | None
    vocab_size: int | None
    normalisers: dict[str, torch.Tensor] = field(default_factory=dict)
    vocab: list[str] | None = None  # Penn Treebank: token of each id
    preprocessing: str = "paper"  # the choice the splits were made with (see PREPROCESSING)

    @property
    def target_scale(self) -> float:
        """y_std for regression, else 1.0 (unnormalised MSE = normalised MSE * target_scale**2)."""
        return float(self.normalisers["y_std"].item()) if self.task == "regression" else 1.0

    def unnormalise_targets(self, y: torch.Tensor) -> torch.Tensor:
        """Map normalised regression targets (or predictions) back to the original units; identity otherwise."""
        if self.task != "regression":
            return y
        mean, std = (self.normalisers[k].to(device=y.device, dtype=y.dtype) for k in ("y_mean", "y_std"))
        return y * std + mean


def _read_prepared(path: Path, name: str, mmap: bool = False) -> dict:
    """Load a prepared file and check its format version."""
    command = f"python -m onepass.data prepare {name} --data-dir {path.parent.parent}"
    if not path.is_file():
        raise DataError(f"dataset {name} is not prepared ({path} is missing): run `{command}`")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        version = content.get("format_version")
    except Exception as exc:
        raise DataError(f"cannot read prepared file {path} ({exc}): re-run `{command}`") from None
    if version != FORMAT_VERSION:
        raise DataError(
            f"{path} has format version {version} but this code reads version {FORMAT_VERSION}: re-run `{command}`"
        )
    return content


def check_preprocessing(preprocessing: str) -> str:
    """Return ``preprocessing`` if it is one of :data:`PREPROCESSING`, else raise a one-line DataError."""
    if preprocessing not in PREPROCESSING:
        raise DataError(f"unknown preprocessing {preprocessing!r}; known: {', '.join(PREPROCESSING)}")
    return preprocessing


def _standardise_pixels(pixels: torch.Tensor, divisor: float, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 divided by ``divisor`` -> standardised; statistics of shape () (overall),
    (C,) (per channel, broadcast over H, W) or the image's own shape (per pixel)."""
    shape = mean.shape + (1,) * (pixels.dim() - 1 - mean.dim())
    return (pixels.to(torch.float32) / divisor - mean.reshape(shape)) / std.reshape(shape)


def _choice_splits(content: dict, preprocessing: str) -> tuple[dict, dict]:
    """The (inputs, targets) of each split and the float32 normalisers of one choice."""
    examples, choice = content["examples"], content["choices"][preprocessing]
    normalisers = {k: v.to(torch.float32) for k, v in choice["normalisers"].items()}
    splits = {}
    for s in SPLITS:
        index = choice["splits"][s]
        inputs, targets = examples["inputs"][index], examples["targets"][index]
        if content["inputs_encoding"] == "pixels_uint8":
            inputs = _standardise_pixels(inputs, choice["pixel_divisor"], normalisers["x_mean"],
                                         normalisers["x_std"])
        else:  # float64 table: standardised in float64, then float32
            n = choice["normalisers"]
            inputs = ((inputs - n["x_mean"]) / n["x_std"]).to(torch.float32)
            targets = ((targets - n["y_mean"]) / n["y_std"]).to(torch.float32)
        splits[s] = (inputs, targets)
    return splits, normalisers


def load(name: str, data_dir: str | os.PathLike, preprocessing: str = "paper") -> Dataset:
    """The prepared dataset ``name`` from ``DATA_DIR/NAME/prepared.pt``, split and normalised as
    ``preprocessing`` says: ``"paper"`` (as the paper's code) or ``"corrected"`` (see
    :mod:`onepass.data.fileformat`)."""
    check_name(name)
    check_preprocessing(preprocessing)
    content = _read_prepared(prepared_path(name, data_dir), name)
    if content["streams"] is not None:  # Penn Treebank: the same for every choice
        splits, normalisers = {s: (content["streams"][s], None) for s in SPLITS}, {}
    elif content.get("user_splits") is not None:  # a user's data, as its function returned them
        splits, normalisers = content["user_splits"], {"y_mean": torch.zeros(()), "y_std": torch.ones(())}
    else:
        splits, normalisers = _choice_splits(content, preprocessing)
    return Dataset(
        name=name,
        family=content["family"],
        task=content["task"],
        **splits,
        input_shape=tuple(content["input_shape"]),
        num_classes=content["num_classes"],
        vocab_size=content["vocab_size"],
        normalisers=normalisers,
        vocab=content["vocab"],
        preprocessing=preprocessing,
    )


def status(name: str, data_dir: str | os.PathLike) -> str:
    """'prepared', 'not prepared' or 'stale (...)' for dataset ``name`` in ``data_dir``."""
    path = prepared_path(name, data_dir)
    if not path.is_file():
        return "not prepared"
    try:
        _read_prepared(path, name, mmap=True)
    except DataError:
        return "stale or unreadable: re-run prepare"
    return "prepared"


def with_validation_proportion(dataset: Dataset, proportion: float) -> Dataset:
    """``dataset`` with its training and validation rows (in that order) re-cut as the paper's
    ``--validation_proportion`` (its datasets.make_split_datasets): of the n rows, round(n (1 - p)) train
    (rounded half to even, as numpy's rint) and the rest validate; the test split and the normalisers unchanged.
    """
    if dataset.task == "language_model":
        raise DataError(f"{dataset.name}: validation_proportion re-cuts rows of examples; a token stream has none")
    if not 0 < proportion < 1:
        raise DataError(f"validation_proportion must lie strictly between 0 and 1, got {proportion!r}")
    inputs = torch.cat([dataset.train[0], dataset.valid[0]])
    targets = torch.cat([dataset.train[1], dataset.valid[1]])
    n_train = round(len(inputs) * (1 - proportion))
    if not 0 < n_train < len(inputs):
        raise DataError(f"validation_proportion {proportion} leaves {dataset.name} an empty split")
    return replace(dataset, train=(inputs[:n_train], targets[:n_train]),
                   valid=(inputs[n_train:], targets[n_train:]))
