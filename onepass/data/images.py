"""Preparing the image sets: Fashion-MNIST (IDX ``.gz`` files) and CIFAR-10 (pickled batches in
``cifar-10-python.tar.gz``). Both keep the official training images then the test images as uint8, with the
split indices and pixel normalisers of each choice; :func:`onepass.data.load` standardises in float32.

- Fashion-MNIST: inputs flattened to 784; the last 10,000 of the 60,000 official training images validate,
  the first 50,000 train, the official 10,000 test images are the test set. paper: official order; each
  pixel standardised with the mean and unbiased std of the raw 0-255 values of all 60,000 training images (a
  pixel with std 0 is only centred). corrected: the training images permuted first; pixels scaled to [0, 1]
  and standardised with one scalar mean/std of the training split.
- CIFAR-10: the last 5,000 of the 50,000 training images validate, ``test_batch`` is the test set. paper:
  official order; the fixed per-channel constants of ``data.paper_normalisation`` applied to unscaled 0-255
  pixels (the constants are statistics of [0, 1] pixels: the paper's slip, kept by its authors). corrected:
  permuted first; pixels scaled to [0, 1] before the per-channel standardisation with training statistics.
  The batches are unpickled by an unpickler that can only build NumPy arrays.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .. import catalog
from .archives import read_archive_members
from .fileformat import f32, i64, permutation
from .sources import DataError

CIFAR_MEMBERS = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)] + ["cifar-10-batches-py/test_batch"]

def _read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX array from a ``.gz`` file."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} is truncated or corrupt: {exc}") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    pixels = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if pixels.size != int(np.prod(shape)):
        raise DataError(f"{path}: {pixels.size} values for shape {shape}")
    return pixels.reshape(shape)


def _pixel_stats(pixels: np.ndarray, channel_axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of uint8 pixels scaled to [0, 1], overall or per channel (exact histograms)."""
    if channel_axis is None:
        groups = [pixels]
    else:
        groups = [np.take(pixels, c, axis=channel_axis) for c in range(pixels.shape[channel_axis])]
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for group in groups:
        counts = np.bincount(group.ravel(), minlength=256).astype(np.float64)
        mean = counts @ values / counts.sum()
        means.append(mean)
        stds.append(np.sqrt(counts @ (values - mean) ** 2 / counts.sum()))
    squeeze = (lambda a: a[0]) if channel_axis is None else (lambda a: a)
    return squeeze(np.array(means)), squeeze(np.array(stds))


def _per_pixel_stats(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and unbiased std of raw 0-255 uint8 pixels (rows are images), from exact integer
    sums; a pixel with zero std gets std 1 (it is then only centred)."""
    n = len(pixels)
    total, squares = np.zeros(pixels.shape[1], np.int64), np.zeros(pixels.shape[1], np.int64)
    for start in range(0, n, 4096):
        chunk = pixels[start : start + 4096].astype(np.int64)
        total += chunk.sum(axis=0)
        squares += (chunk * chunk).sum(axis=0)
    spread = n * squares - total * total  # n (n - 1) times the unbiased variance, exactly
    std = np.sqrt(spread / (n * (n - 1.0)))
    return total / n, np.where(spread == 0, 1.0, std)


def _image_content(name: str, images, labels, test_images, test_labels, channel_axis: int | None) -> dict:
    """Official training images followed by the test images (uint8), and the split indices and pixel
    normalisers of each choice: paper (official order, last images validate) and corrected (permuted)."""
    n, spec = len(images), catalog.dataset(name).data
    n_valid = round(n * spec["validation"]["last"] / spec["validation"]["of"])
    test = np.arange(n, n + len(test_images))
    if channel_axis is None:  # Fashion-MNIST: per-pixel statistics of all official training images
        paper_mean, paper_std = _per_pixel_stats(images)
    else:  # CIFAR-10: the paper's fixed per-channel constants
        constants = spec.get("paper_normalisation") or {}
        paper_mean, paper_std = np.asarray(constants.get("mean")), np.asarray(constants.get("std"))
        if paper_mean.shape != (images.shape[channel_axis],) or paper_std.shape != paper_mean.shape:
            raise DataError(f"{name}: data.paper_normalisation of its catalogue entry needs a mean and a std "
                            f"per channel")
    order = permutation(n)
    mean, std = _pixel_stats(images[order[: n - n_valid]], channel_axis)
    return {
        "examples": {
            "inputs": torch.from_numpy(np.concatenate([images, test_images])),
            "targets": torch.from_numpy(np.concatenate([labels, test_labels]).astype(np.int64)),
        },
        "choices": {
            "paper": {
                "splits": {"train": i64(np.arange(n - n_valid)), "valid": i64(np.arange(n - n_valid, n)),
                           "test": i64(test)},
                "normalisers": {"x_mean": f32(paper_mean), "x_std": f32(paper_std)},
                "pixel_divisor": 1.0,  # raw 0-255 values
            },
            "corrected": {
                "splits": {"train": i64(order[: n - n_valid]), "valid": i64(order[n - n_valid :]),
                           "test": i64(test)},
                "normalisers": {"x_mean": f32(mean), "x_std": f32(std)},
                "pixel_divisor": 255.0,  # scaled to [0, 1]
            },
        },
        "inputs_encoding": "pixels_uint8",
        "num_classes": 10,
    }


def prepare_fashion_mnist(name: str, raw: dict[str, Path]) -> dict:
    """The prepared content of Fashion-MNIST from its four IDX files ``{file name: path}``."""
    images, labels, test_images, test_labels = (
        _read_idx(raw[f"{prefix}-ubyte.gz"])
        for prefix in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
    )
    images, test_images = images.reshape(len(images), -1), test_images.reshape(len(test_images), -1)
    if len(images) != len(labels) or len(test_images) != len(test_labels):
        raise DataError("fashion_mnist: image and label files have different lengths")
    content = _image_content(name, images, labels, test_images, test_labels, channel_axis=None)
    return {**content, "input_shape": [images.shape[1]]}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches that only builds NumPy arrays (pickle can otherwise run any code)."""

    ALLOWED = {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(data: bytes, member: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3, 32, 32) uint8 and labels (n,) of one pickled CIFAR-10 batch."""
    try:
        batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as exc:
        raise DataError(f"CIFAR-10 batch {member} is not a valid pickled batch: {exc}") from None
    if len(images) != len(labels):
        raise DataError(f"CIFAR-10 batch {member}: {len(images)} images but {len(labels)} labels")
    return images, labels


def prepare_cifar10(name: str, raw: dict[str, Path]) -> dict:
    """The prepared content of CIFAR-10 from its archive ``{file name: path}``."""
    members = read_archive_members(raw["cifar-10-python.tar.gz"], CIFAR_MEMBERS)
    batches = [_read_cifar_batch(members.pop(m), m) for m in CIFAR_MEMBERS]
    images = np.concatenate([b[0] for b in batches[:-1]])
    labels = np.concatenate([b[1] for b in batches[:-1]])
    content = _image_content(name, images, labels, *batches[-1], channel_axis=1)
    return {**content, "input_shape": [3, 32, 32]}
