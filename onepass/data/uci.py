"""Preparing the UCI regression sets (one ``data.txt`` each, plus the paper's row order).

Whitespace-separated numbers; inputs all columns but the last, target the last (Naval: columns 1-16 inputs,
17 target, 18 dropped). The rows, taken in an order, are cut into the paper's train/valid/test sizes
(``data.splits`` of the catalogue entry), in that order. paper: the order of ``data.paper_order`` (the
paper's ``permutation_indices.txt``; it names a duplicated row by its first occurrence, so an index may
repeat); inputs and targets standardised with the mean and unbiased std of train+valid. corrected: the seeded
permutation; the training split's mean and population std. A (numerically) constant column gets std 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import catalog
from .fileformat import f64, permutation, split_indices
from .sources import DataError


def uci_splits(name: str) -> tuple[int, int, int]:
    """Rows of a UCI set's training, validation and test splits (its catalogue entry's data.splits)."""
    return tuple(catalog.dataset(name).data["splits"])


def _standardiser(x: np.ndarray, ddof: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and std of ``x`` (float64; ``ddof`` 0: population, 1: unbiased); numerically constant
    columns get std 1."""
    mean, std = x.mean(axis=0), x.std(axis=0, ddof=ddof)
    constant = std <= 1e-10 * np.maximum(np.abs(mean), 1.0)
    return mean, np.where(constant, 1.0, std)


def _parse_table(path: Path) -> np.ndarray:
    """Whitespace-separated numbers, one row a line (blank lines skipped), as float64."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append([float(v) for v in line.split()])
        except ValueError:
            raise DataError(f"{path}:{lineno}: not a row of numbers") from None
        if len(rows[-1]) != len(rows[0]):
            raise DataError(f"{path}:{lineno}: {len(rows[-1])} columns where line 1 has {len(rows[0])}")
    return np.array(rows, dtype=np.float64)


def _read_row_order(path: Path, table: np.ndarray) -> np.ndarray:
    """A row order of ``table`` (one 0-based row index a line) that reorders its rows. The paper's files
    name a duplicated row (Concrete, Power, Wine) by its first occurrence, so an index may repeat; the rows
    taken in this order must still be the table's rows, each used once."""
    try:
        order = np.array([int(line) for line in path.read_text(encoding="utf-8").split()], dtype=np.int64)
    except ValueError:
        raise DataError(f"{path}: not a list of row indices, one a line") from None
    n = len(table)
    if len(order) != n or order.min(initial=0) < 0 or order.max(initial=0) >= n:
        raise DataError(f"{path}: expected {n} row indices in 0..{n - 1}, one a line")
    if not np.array_equal(_sorted_rows(table[order]), _sorted_rows(table)):
        raise DataError(f"{path}: the rows in this order are not a reordering of the {n} rows of data.txt")
    return order


def _sorted_rows(table: np.ndarray) -> np.ndarray:
    return table[np.lexsort(table.T[::-1])]


def _choice(x, y, order, sizes, fit_rows: int, ddof: int) -> dict:
    """Split indices and float64 normalisers (from the first ``fit_rows`` rows of ``order``) of one choice."""
    fit = order[:fit_rows]
    x_mean, x_std = _standardiser(x[fit], ddof)
    y_mean, y_std = _standardiser(y[fit], ddof)
    normalisers = {"x_mean": f64(x_mean), "x_std": f64(x_std), "y_mean": f64(y_mean), "y_std": f64(y_std)}
    return {"splits": split_indices(order, sizes), "normalisers": normalisers}


def prepare_uci(name: str, raw: dict[str, Path]) -> dict:
    """The prepared content of UCI set ``name`` from its raw files ``{file name: path}``."""
    table = _parse_table(raw["data.txt"])
    spec = catalog.dataset(name).data
    if "target" in spec:  # e.g. Naval: columns 1-16 inputs, 17 target, 18 dropped
        lo, hi = spec["inputs"]
        x, y = table[:, lo:hi], table[:, spec["target"]:spec["target"] + 1]
    else:
        x, y = table[:, :-1], table[:, -1:]
    sizes = uci_splits(name)
    if len(table) != sum(sizes):
        raise DataError(f"{raw['data.txt']}: {len(table)} rows, expected {sum(sizes)} for {name}")
    if spec.get("paper_order") not in raw:
        raise DataError(f"{name}: data.paper_order of its catalogue entry must name one of its raw files")
    paper_order = _read_row_order(raw[spec["paper_order"]], table)
    return {
        "examples": {"inputs": f64(x), "targets": f64(y)},
        "choices": {
            "paper": _choice(x, y, paper_order, sizes, fit_rows=sizes[0] + sizes[1], ddof=1),
            "corrected": _choice(x, y, permutation(len(table)), sizes, fit_rows=sizes[0], ddof=0),
        },
        "inputs_encoding": "float64",
        "input_shape": [x.shape[1]],
    }
