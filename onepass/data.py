"""Data layer: fetch, verify, prepare and load the study's datasets.

Command line (``python -m onepass.data``)::

    prepare DATASET --data-dir DIR [--mirror DIR]... [--sources FILE] [--offline]
    fetch   DATASET --data-dir DIR [--mirror DIR]... [--sources FILE] [--offline]
    list    [--data-dir DIR]                      (default data dir: ./data)

``prepare`` writes the raw files and ``DIR/DATASET/prepared.pt`` and prints the prepared path; ``fetch`` only
the raw files (for a login node with internet). Errors exit with status 1 and a one-line message.

Sources. ``config/sources.tsv`` lists, for every raw file, its upstream URL (or the archive holding it and the
member's path), its SHA-256 and the relative path of the offline copy; no URL or checksum lives in this code.

Fetching. Mirrors are local directories, searched in order: the ``--mirror`` options or, when none is given,
the ``:``-separated ``ONEPASS_DATA_MIRRORS``; a mirror that does not exist is an error. For each raw file every
mirror is searched for ``MIRROR_PATH`` (the table's offline layout, e.g. ``uci_energy/data.txt``),
``DATASET/FILE`` and ``FILE``; for an archive member, then for the archive (``ARCHIVE``, ``DATASET/ARCHIVE``);
then the archive already in ``DIR/DATASET/``; then upstream is downloaded (urllib, tqdm progress on stderr).
Every file is verified against its SHA-256 before it is renamed into place (temporary file in the target
directory, then ``os.replace``): a mismatch is an error naming the file and both digests, and a failed
``fetch``/``prepare`` removes every file it created. A raw file already in ``DIR/DATASET/`` with the right
digest is reused. A digest recorded as unknown (``-``) is reported on stderr but not enforced; this only
concerns the Penn Treebank archive ``simple-examples.tgz``, whose members are all verified.
Archives are never unpacked to disk by name: every member is first checked (no absolute path, no ``..``, no
link leaving the archive, no device file; plus :func:`tarfile.data_filter`), then the needed members are read
into memory, verified and written under fixed names. A truncated or corrupt archive is an error.

Preparing (deterministic; two preparations give byte-identical files). One prepared file serves both choices
of :func:`load`'s ``preprocessing`` (the run setting of that name): ``"paper"`` (default) cuts and normalises as
the paper's code (github.com/rmclarke/OptimisingWeightUpdateHyperparameters at 8568f76) did, ``"corrected"``
permutes with ``SPLIT_SEED`` = 0 (the legacy NumPy ``RandomState(0).permutation(n)``, whose stream NumPy keeps
frozen across versions) and takes statistics from the training split alone.

- UCI: whitespace-separated numbers; inputs all columns but the last, target the last (Naval: columns 1-16
  inputs, 17 target, 18 dropped). The rows, taken in an order, are cut into the paper's train/valid/test sizes
  (``data.splits`` of the catalogue entry), in that order. paper: the order of ``data.paper_order`` (the
  paper's ``permutation_indices.txt``; it names a duplicated row by its first occurrence, so an index may
  repeat); inputs and targets standardised with the mean and unbiased std of train+valid. corrected: the
  seeded permutation; the training split's mean and population std. A (numerically) constant column gets
  std 1.
- Fashion-MNIST: IDX ``.gz`` files, inputs flattened to 784; the last 10,000 of the 60,000 official training
  images validate, the first 50,000 train, the official 10,000 test images are the test set. paper: official
  order; each pixel standardised with the mean and unbiased std of the raw 0-255 values of all 60,000
  training images (a pixel with std 0 is only centred). corrected: the training images permuted first;
  pixels scaled to [0, 1] and standardised with one scalar mean/std of the training split.
- CIFAR-10: pickled batches in ``cifar-10-python.tar.gz``; the last 5,000 of the 50,000 training images
  validate, ``test_batch`` is the test set. paper: official order; the fixed per-channel constants of
  ``data.paper_normalisation`` applied to unscaled 0-255 pixels (the constants are statistics of [0, 1]
  pixels: the paper's slip, kept by its authors). corrected: permuted first; pixels scaled to [0, 1] before
  the per-channel standardisation with training statistics.
- Penn Treebank (the same for both choices): ``<eos>`` is appended to every line; the vocabulary (at most
  10,000 tokens) is built from the training text, sorted by frequency (descending) then token; words outside
  it map to ``<unk>``. The study's validation/test are the official valid/test texts. Streams are 1-D int64.

Prepared file: ``torch.save`` of a dict with ``format_version`` (``FORMAT_VERSION``), the dataset's
description (``name``, ``family``, ``task``, ``input_shape``, ``num_classes``, ``vocab``, ``vocab_size``,
``preprocessing``: the choices held, ``split_seed``, ``raw_sha256``) and its data: for UCI and the images,
``examples`` (``inputs``/``targets`` of every example in file order: UCI rows as float64; images uint8, the
official training images then the test images) and ``choices``, for each choice the int64 row indices of
each split into ``examples`` (``splits``) and the ``normalisers`` (UCI float64 ``x_mean``/``x_std``/
``y_mean``/``y_std``; images float32 ``x_mean``/``x_std`` and ``pixel_divisor``, 1 or 255); for Penn
Treebank the final ``streams``. :func:`load` takes the chosen rows and standardises them (UCI in float64,
images in float32; both returned as float32). Loading another format version is an error asking to re-run
``prepare``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import http.client
import os
import pickle
import struct
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from . import catalog
from .settings import SETTINGS
from .study import MIRRORS_ENV

FORMAT_VERSION = 2
PREPROCESSING = SETTINGS["preprocessing"].choices  # the choices load() offers (the run setting of that name)
SPLIT_SEED = 0
PREPARED_NAME = "prepared.pt"

DEFAULT_SOURCES = Path(__file__).resolve().parents[1] / "config" / "sources.tsv"
DEFAULT_DATA_DIR = "results/data"  # where the pipeline prepares them



def datasets() -> dict[str, str]:
    """Every dataset of the catalogue (config/datasets/*.yaml) with its family; variants (``same_as``) are not
    prepared themselves: they load their base's data."""
    return {name: d.family for name, d in catalog.datasets().items() if not d.is_variant}


def uci_splits(name: str) -> tuple[int, int, int]:
    """Rows of a UCI set's training, validation and test splits (its catalogue entry's data.splits)."""
    return tuple(catalog.dataset(name).data["splits"])


CIFAR_MEMBERS = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)] + ["cifar-10-batches-py/test_batch"]
EOS, UNK = "<eos>", "<unk>"
SPLITS = ("train", "valid", "test")
SOURCE_COLUMNS = ["dataset", "file", "url", "member", "sha256", "archive_sha256", "mirror_path"]
CHUNK = 1 << 20
INIT_PREFIX = "paper_init_"  # raw files that are the paper's published initialisations, not data to prepare


class DataError(Exception):
    """A user-facing data problem (bad name, missing mirror, wrong checksum, unsafe archive, ...)."""


# ----------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """One raw file of a dataset (a row of the sources table); ``None`` means "none" or "unknown"."""

    dataset: str
    file: str
    url: str
    member: str | None
    sha256: str | None
    archive_sha256: str | None
    mirror_path: str | None

    @property
    def archive(self) -> str | None:
        """File name of the archive holding this file (the URL's last part), if it is an archive member."""
        return self.url.rstrip("/").rsplit("/", 1)[-1] if self.member else None


def read_sources(path: str | os.PathLike | None = None) -> dict[str, list[Source]]:
    """Read the sources table (default ``config/sources.tsv``) into ``{dataset: [Source, ...]}``."""
    path = Path(path) if path is not None else DEFAULT_SOURCES
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read sources table {path}: {exc.strerror or exc}") from None
    rows = [(n, line.split("\t")) for n, line in enumerate(lines, 1) if line.strip() and not line.startswith("#")]
    if not rows or rows[0][1] != SOURCE_COLUMNS:
        raise DataError(f"sources table {path} must start with the header: {' '.join(SOURCE_COLUMNS)}")
    table: dict[str, list[Source]] = {}
    for lineno, cells in rows[1:]:
        source = _parse_source_row(cells, f"{path}:{lineno}")
        table.setdefault(source.dataset, []).append(source)
    return table


def _parse_source_row(cells: list[str], where: str) -> Source:
    """Turn one table row into a :class:`Source`, checking names and digests."""
    if len(cells) != len(SOURCE_COLUMNS):
        raise DataError(f"{where}: expected {len(SOURCE_COLUMNS)} tab-separated columns, found {len(cells)}")
    values = {col: (None if cell.strip() in ("", "-") else cell.strip()) for col, cell in zip(SOURCE_COLUMNS, cells)}
    if values["dataset"] not in datasets():
        raise DataError(f"{where}: unknown dataset {values['dataset']!r}")
    if not values["file"] or not values["url"] or "/" in values["file"]:
        raise DataError(f"{where}: a row needs a plain file name and a URL")
    for col in ("sha256", "archive_sha256"):
        digest = values[col]
        if digest is not None and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)):
            raise DataError(f"{where}: {col} must be 64 lower-case hex digits or '-', got {digest!r}")
    return Source(**values)


def _sources_for(name: str, sources: str | os.PathLike | None) -> list[Source]:
    """The rows of dataset ``name``."""
    rows = read_sources(sources).get(name)
    if not rows:
        raise DataError(f"the sources table has no rows for dataset {name!r}")
    return rows


def check_name(name: str) -> str:
    """Return the family of dataset ``name``, or raise a DataError listing the known names."""
    known = datasets()
    if name not in known:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(known)}")
    return known[name]


# ----------------------------------------------------------------------------------------------- mirrors


def resolve_mirrors(mirrors: Iterable[str | os.PathLike] | None = None) -> list[Path]:
    """The ordered mirror directories: ``mirrors`` if given, else ``$ONEPASS_DATA_MIRRORS`` (``:``-separated).

    Raises DataError naming the first one that is not an existing directory.
    """
    origin = "--mirror"
    if mirrors is None:
        origin = MIRRORS_ENV
        mirrors = [m for m in os.environ.get(MIRRORS_ENV, "").split(":") if m]
    paths = [Path(m).expanduser() for m in mirrors]
    for path in paths:
        if not path.is_dir():
            raise DataError(f"mirror directory does not exist: {path} (from {origin})")
    return paths


def _find_in_mirrors(mirrors: list[Path], relpaths: list[str]) -> Path | None:
    """First ``mirror/relpath`` that is a file, mirrors in order."""
    for mirror in mirrors:
        for rel in relpaths:
            if (mirror / rel).is_file():
                return mirror / rel
    return None


def _file_candidates(src: Source) -> list[str]:
    """Relative paths under which a mirror may hold the file itself."""
    return list(dict.fromkeys(p for p in (src.mirror_path, f"{src.dataset}/{src.file}", src.file) if p))


def _archive_candidates(src: Source) -> list[str]:
    """Relative paths under which a mirror may hold the archive containing the file."""
    return [f"{src.dataset}/{src.archive}", src.archive]


# ------------------------------------------------------------------------------------ verified writing


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(what: str, expected: str | None, actual: str) -> None:
    """Raise on a mismatch; only report when no digest is known."""
    if expected is None:
        print(f"warning: no known SHA-256 for {what}; got {actual} (not verified)", file=sys.stderr)
    elif actual != expected:
        raise DataError(f"SHA-256 mismatch for {what}: expected {expected}, got {actual}")


def _file_mode() -> int:
    """Permissions of a newly created file under the current umask (mkstemp would give 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def _atomic_file(target: Path) -> Iterator:
    """Yield a binary file in ``target``'s directory; renamed onto ``target`` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _install(target: Path, chunks: Iterable[bytes], expected: str | None, what: str) -> None:
    """Write ``chunks`` to ``target`` atomically, verifying their SHA-256 before the rename."""
    digest = hashlib.sha256()
    with _atomic_file(target) as out:
        for chunk in chunks:
            digest.update(chunk)
            out.write(chunk)
        _check_digest(what, expected, digest.hexdigest())


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(CHUNK), b"")


# ------------------------------------------------------------------------------------------- download


def _download(src: Source, target: Path, expected: str | None, mirrors: list[Path], download: bool) -> None:
    """Download ``src.url`` to ``target`` (verified, atomic) or raise a DataError saying what was tried."""
    looked = ", ".join(_file_candidates(src) + (_archive_candidates(src) if src.member else []))
    tried = f"not found in mirrors [{', '.join(map(str, mirrors)) or 'none configured'}] (looked for {looked})"
    what = f"{src.dataset}/{src.file}"
    if not download:
        raise DataError(f"cannot obtain {what}: {tried} and downloads are disabled (--offline)")
    print(f"{src.dataset}: downloading {src.url}", file=sys.stderr)
    try:
        with urllib.request.urlopen(src.url, timeout=60) as response:
            _install(target, _response_chunks(response, target.name), expected, f"{target.name} from {src.url}")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"cannot obtain {what}: {tried} and the download from {src.url} failed: {reason}") from None


def _response_chunks(response, label: str) -> Iterator[bytes]:
    """Read an HTTP response in chunks with a tqdm progress bar on stderr."""
    from tqdm import tqdm

    total = int(response.headers.get("Content-Length") or 0) or None
    with tqdm(total=total, unit="B", unit_scale=True, desc=label, file=sys.stderr, mininterval=1.0) as bar:
        for chunk in iter(lambda: response.read(CHUNK), b""):
            bar.update(len(chunk))
            yield chunk


# ------------------------------------------------------------------------------------------- archives


def _unsafe_reason(member: tarfile.TarInfo, dest: Path) -> str | None:
    """Why extracting ``member`` under ``dest`` would be unsafe, or None."""
    name = PurePosixPath(member.name)
    if member.name.startswith(("/", "\\")) or (member.name[:1].isalpha() and member.name[1:2] == ":"):
        return "absolute path"
    if ".." in name.parts:
        return "path with '..'"
    if member.issym() or member.islnk():
        link = PurePosixPath(member.linkname)
        if link.is_absolute():
            return f"link to absolute path {member.linkname}"
        depth = 0
        for part in ((name.parent if member.issym() else PurePosixPath()) / link).parts:
            depth += -1 if part == ".." else (part != ".")
            if depth < 0:
                return f"link {member.linkname} leaves the archive"
    elif not (member.isfile() or member.isdir()):
        return "device, FIFO or other special file"
    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the stdlib's own "data" extraction filter
        try:
            tarfile.data_filter(member, str(dest))
        except tarfile.FilterError as exc:
            return str(exc)
    return None


def read_archive_members(archive: Path, wanted: Iterable[str]) -> dict[str, bytes]:
    """Read the regular-file members ``wanted`` of a tar archive (any compression) into memory.

    Every member of the archive is checked first (see :func:`_unsafe_reason`); an unsafe member, a missing
    wanted member or a truncated/corrupt archive raises DataError. A leading ``./`` in names is ignored.
    """
    wanted, found = set(wanted), {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                reason = _unsafe_reason(member, archive.parent)
                if reason:
                    raise DataError(f"archive {archive} has an unsafe member {member.name!r}: {reason}")
                name = str(PurePosixPath(member.name))
                if name in wanted:
                    if not member.isfile():
                        raise DataError(f"archive {archive}: member {member.name!r} is not a regular file")
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"archive {archive} is truncated or corrupt: {exc}") from None
    missing = sorted(wanted - found.keys())
    if missing:
        raise DataError(f"archive {archive} has no member {missing[0]!r}")
    return found


# ------------------------------------------------------------------------------------------- fetching


@contextlib.contextmanager
def _cleanup_on_error(directory: Path) -> Iterator[list[Path]]:
    """Yield a list to record created files; on error remove them (and ``directory`` if new and empty)."""
    existed = directory.exists()
    created: list[Path] = []
    try:
        yield created
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        if not existed:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def _fetch_one(src: Source, target: Path, mirrors: list[Path], download: bool, created: list[Path]) -> None:
    """Make ``target`` a verified copy of ``src``: mirror copy, then archive (mirror/local/download), then URL."""
    what = f"{src.dataset}/{src.file}"
    copy = _find_in_mirrors(mirrors, _file_candidates(src))
    if copy is not None:
        print(f"{src.dataset}: {src.file} <- {copy}", file=sys.stderr)
        created.append(target)
        _install(target, _file_chunks(copy), src.sha256, f"{what} (mirror copy {copy})")
        return
    if src.member is None:
        created.append(target)
        _download(src, target, src.sha256, mirrors, download)
        return
    archive = _find_in_mirrors(mirrors, _archive_candidates(src))
    if archive is not None:
        if src.archive_sha256 is not None:
            _check_digest(f"archive {archive}", src.archive_sha256, sha256_file(archive))
    else:
        archive = target.parent / src.archive
        if not archive.is_file():  # a local archive was verified when it was downloaded
            created.append(archive)
            _download(src, archive, src.archive_sha256, mirrors, download)
    print(f"{src.dataset}: {src.file} <- {archive}:{src.member}", file=sys.stderr)
    data = read_archive_members(archive, [src.member])[src.member]
    created.append(target)
    _install(target, [data], src.sha256, f"{what} (member {src.member} of {archive})")


def _is_verified(path: Path, src: Source) -> bool:
    """Whether an existing raw file can be reused (it exists and matches its digest, if one is known)."""
    if not path.is_file():
        return False
    if src.sha256 is None or sha256_file(path) == src.sha256:
        return True
    print(f"warning: {path} does not match its SHA-256; fetching it again", file=sys.stderr)
    return False


def _fetch_into(name, data_dir, mirrors, sources, download, created, inits=None) -> dict[str, Path]:
    """Fetch the rows of ``name``: all of them (``inits`` None), its data files alone (False) or its
    published initialisations alone (True)."""
    rows = _sources_for(name, sources)
    if inits is not None:
        rows = [src for src in rows if src.file.startswith(INIT_PREFIX) == inits]
    mirror_dirs = resolve_mirrors(mirrors)
    raw = {}
    for src in rows:
        target = Path(data_dir) / name / src.file
        if not _is_verified(target, src):
            _fetch_one(src, target, mirror_dirs, download, created)
        raw[src.file] = target
    return raw


def fetch(
    name: str,
    data_dir: str | os.PathLike,
    mirrors: Iterable[str | os.PathLike] | None = None,
    sources: str | os.PathLike | None = None,
    download: bool = True,
) -> dict[str, Path]:
    """Put every verified raw file of ``name`` in ``DATA_DIR/NAME/``; return ``{file name: path}``."""
    check_name(name)
    with _cleanup_on_error(Path(data_dir) / name) as created:
        return _fetch_into(name, data_dir, mirrors, sources, download, created)


def init_digests(name: str, sources: str | os.PathLike | None = None) -> dict[int, str]:
    """The paper's published initialisations of ``name`` as listed in the sources table, without fetching
    them: ``{N: SHA-256}`` of its ``paper_init_N.yaml`` rows (empty for a dataset that has none)."""
    rows = read_sources(sources).get(name) or []
    return dict(sorted((int(s.file[len(INIT_PREFIX):].split(".")[0]), s.sha256)
                       for s in rows if s.file.startswith(INIT_PREFIX)))


def fetch_inits(
    name: str,
    data_dir: str | os.PathLike,
    mirrors: Iterable[str | os.PathLike] | None = None,
    sources: str | os.PathLike | None = None,
    download: bool = True,
) -> dict[int, Path]:
    """Put the paper's published initialisations of ``name`` (``paper_init_N.yaml`` rows) in
    ``DATA_DIR/NAME/``; return ``{N: path}`` (empty for a dataset that has none)."""
    check_name(name)
    with _cleanup_on_error(Path(data_dir) / name) as created:
        if not any(src.file.startswith(INIT_PREFIX) for src in _sources_for(name, sources)):
            return {}
        raw = _fetch_into(name, data_dir, mirrors, sources, download, created, inits=True)
    return dict(sorted((int(f[len(INIT_PREFIX):].split(".")[0]), p) for f, p in raw.items()))


# ------------------------------------------------------------------------------------------ preparing


def _permutation(n: int) -> np.ndarray:
    """The fixed, documented permutation of ``n`` items (NumPy's frozen legacy RandomState stream)."""
    return np.random.RandomState(SPLIT_SEED).permutation(n)


def _standardiser(x: np.ndarray, ddof: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and std of ``x`` (float64; ``ddof`` 0: population, 1: unbiased); numerically constant
    columns get std 1."""
    mean, std = x.mean(axis=0), x.std(axis=0, ddof=ddof)
    constant = std <= 1e-10 * np.maximum(np.abs(mean), 1.0)
    return mean, np.where(constant, 1.0, std)


def _f32(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


def _f64(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64))


def _i64(a) -> torch.Tensor:
    """An int64 tensor with its own storage (a view would save its whole base array)."""
    return torch.from_numpy(np.array(a, dtype=np.int64))


def _split_indices(order: np.ndarray, sizes: Iterable[int]) -> dict[str, torch.Tensor]:
    """``order`` cut into consecutive train/valid/test pieces of ``sizes`` rows."""
    bounds = np.cumsum((0, *sizes))
    return {s: _i64(order[bounds[i] : bounds[i + 1]]) for i, s in enumerate(SPLITS)}


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


def _uci_choice(x, y, order, sizes, fit_rows: int, ddof: int) -> dict:
    """Split indices and float64 normalisers (from the first ``fit_rows`` rows of ``order``) of one choice."""
    fit = order[:fit_rows]
    x_mean, x_std = _standardiser(x[fit], ddof)
    y_mean, y_std = _standardiser(y[fit], ddof)
    normalisers = {"x_mean": _f64(x_mean), "x_std": _f64(x_std), "y_mean": _f64(y_mean), "y_std": _f64(y_std)}
    return {"splits": _split_indices(order, sizes), "normalisers": normalisers}


def _prepare_uci(name: str, raw: dict[str, Path]) -> dict:
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
        "examples": {"inputs": _f64(x), "targets": _f64(y)},
        "choices": {
            "paper": _uci_choice(x, y, paper_order, sizes, fit_rows=sizes[0] + sizes[1], ddof=1),
            "corrected": _uci_choice(x, y, _permutation(len(table)), sizes, fit_rows=sizes[0], ddof=0),
        },
        "inputs_encoding": "float64",
        "input_shape": [x.shape[1]],
    }


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
    order = _permutation(n)
    mean, std = _pixel_stats(images[order[: n - n_valid]], channel_axis)
    return {
        "examples": {
            "inputs": torch.from_numpy(np.concatenate([images, test_images])),
            "targets": torch.from_numpy(np.concatenate([labels, test_labels]).astype(np.int64)),
        },
        "choices": {
            "paper": {
                "splits": {"train": _i64(np.arange(n - n_valid)), "valid": _i64(np.arange(n - n_valid, n)),
                           "test": _i64(test)},
                "normalisers": {"x_mean": _f32(paper_mean), "x_std": _f32(paper_std)},
                "pixel_divisor": 1.0,  # raw 0-255 values
            },
            "corrected": {
                "splits": {"train": _i64(order[: n - n_valid]), "valid": _i64(order[n - n_valid :]),
                           "test": _i64(test)},
                "normalisers": {"x_mean": _f32(mean), "x_std": _f32(std)},
                "pixel_divisor": 255.0,  # scaled to [0, 1]
            },
        },
        "inputs_encoding": "pixels_uint8",
        "num_classes": 10,
    }


def _prepare_fashion_mnist(name: str, raw: dict[str, Path]) -> dict:
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
    import io

    try:
        batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as exc:
        raise DataError(f"CIFAR-10 batch {member} is not a valid pickled batch: {exc}") from None
    if len(images) != len(labels):
        raise DataError(f"CIFAR-10 batch {member}: {len(images)} images but {len(labels)} labels")
    return images, labels


def _prepare_cifar10(name: str, raw: dict[str, Path]) -> dict:
    members = read_archive_members(raw["cifar-10-python.tar.gz"], CIFAR_MEMBERS)
    batches = [_read_cifar_batch(members.pop(m), m) for m in CIFAR_MEMBERS]
    images = np.concatenate([b[0] for b in batches[:-1]])
    labels = np.concatenate([b[1] for b in batches[:-1]])
    content = _image_content(name, images, labels, *batches[-1], channel_axis=1)
    return {**content, "input_shape": [3, 32, 32]}


def _tokenise(path: Path) -> list[str]:
    """Whitespace tokens of a text file, with ``<eos>`` after every line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}") from None
    return [token for line in text.splitlines() for token in line.split() + [EOS]]


def _build_vocab(tokens: list[str], size: int) -> list[str]:
    """At most ``size`` tokens, by frequency (descending) then token; ``<unk>`` kept if cut."""
    ranked = sorted(Counter(tokens).items(), key=lambda item: (-item[1], item[0]))
    vocab = [token for token, _ in ranked[:size]]
    if len(ranked) > size and UNK not in vocab:
        vocab[-1] = UNK
    return vocab


def _encode(tokens: list[str], index: dict[str, int], where: str) -> torch.Tensor:
    """Token ids (int64); out-of-vocabulary words become ``<unk>`` (an error if there is none)."""
    unk = index.get(UNK)
    ids = [index.get(token, unk) for token in tokens]
    if unk is None and None in ids:
        raise DataError(f"{where}: word {tokens[ids.index(None)]!r} is not in the training vocabulary")
    return torch.tensor(ids, dtype=torch.int64)


def _prepare_penn_treebank(name: str, raw: dict[str, Path]) -> dict:
    tokens = {s: _tokenise(raw[f"ptb.{s}.txt"]) for s in SPLITS}
    vocab = _build_vocab(tokens["train"], catalog.dataset(name).data["vocabulary"])
    index = {token: i for i, token in enumerate(vocab)}
    streams = {s: _encode(tokens[s], index, str(raw[f"ptb.{s}.txt"])) for s in SPLITS}
    return {"streams": streams, "inputs_encoding": "tokens", "input_shape": [], "vocab": vocab,
            "vocab_size": len(vocab)}


PREPARERS = {
    "uci": _prepare_uci,
    "fashion_mnist": _prepare_fashion_mnist,
    "cifar10": _prepare_cifar10,
    "penn_treebank": _prepare_penn_treebank,
}


def prepared_path(name: str, data_dir: str | os.PathLike) -> Path:
    """Where the prepared file of ``name`` lives: ``DATA_DIR/NAME/prepared.pt``."""
    return Path(data_dir) / name / PREPARED_NAME


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
    if family == "user":
        return _prepare_user(name, data_dir)
    with _cleanup_on_error(Path(data_dir) / name) as created:
        raw = _fetch_into(name, data_dir, mirrors, sources, download, created, inits=False)
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
            "raw_sha256": {f: src.sha256 for src in _sources_for(name, sources) if (f := src.file) in raw},
        }
        content.update(PREPARERS[family](name, raw))
        target = prepared_path(name, data_dir)
        with _atomic_file(target) as out:
            torch.save(content, out)  # a file object: the zip's record names do not depend on the file name
    return target


def _prepare_user(name: str, data_dir) -> Path:
    """A dataset of one's own: its splits as the user's ``data`` function returns them (onepass.user)."""
    from .user import UserCodeError, prepared

    entry = catalog.dataset(name)
    try:
        content = {"format_version": FORMAT_VERSION, "name": name, "family": "user", "task": entry.task,
                   "vocab_size": None, "vocab": None, "preprocessing": list(PREPROCESSING), "examples": None,
                   "choices": None, "streams": None, **prepared(entry)}
    except UserCodeError as err:
        raise DataError(str(err)) from None
    target = prepared_path(name, data_dir)
    with _cleanup_on_error(Path(data_dir) / name), _atomic_file(target) as out:
        torch.save(content, out)
    return target


# -------------------------------------------------------------------------------------------- loading


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
    ``preprocessing`` says: ``"paper"`` (as the paper's code) or ``"corrected"`` (see the module doc)."""
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


# ------------------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m onepass.data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command, help_text in (
        ("prepare", "fetch, verify and prepare a dataset"),
        ("fetch", "fetch and verify raw files only"),
    ):
        sub = commands.add_parser(command, help=help_text)
        sub.add_argument("dataset")
        sub.add_argument("--data-dir", required=True, help="writes DATA_DIR/DATASET/")
        sub.add_argument(
            "--mirror", action="append", help=f"local mirror directory (repeatable; default ${MIRRORS_ENV})"
        )
        sub.add_argument("--sources", help=f"sources table (default {DEFAULT_SOURCES})")
        sub.add_argument("--offline", action="store_true", help="never download; mirrors only")
    listing = commands.add_parser("list", help="list the known datasets and whether each is prepared")
    listing.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            for name, family in datasets().items():
                print(f"{name}\t{family}\t{status(name, args.data_dir)}")
        else:
            action = prepare if args.command == "prepare" else fetch
            result = action(args.dataset, args.data_dir, args.mirror, args.sources, download=not args.offline)
            print(result if args.command == "prepare" else "\n".join(map(str, result.values())))
    except DataError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
