"""Where a dataset's raw files come from: the sources table and the local mirrors.

Sources. ``config/sources.tsv`` lists, for every raw file, its upstream URL (or the archive holding it and the
member's path), its SHA-256 and the relative path of the offline copy; no URL or checksum lives in this code.
A digest recorded as unknown (``-``) is reported but not enforced; this only concerns the Penn Treebank
archive ``simple-examples.tgz``, whose members are all verified. Rows named ``paper_init_N.yaml`` are the
paper's published initialisations, not data to prepare.

Mirrors are local directories, searched in order: the ``--mirror`` options or, when none is given, the
``:``-separated ``ONEPASS_DATA_MIRRORS``; a mirror that does not exist is an error. A mirror may hold a raw
file as ``MIRROR_PATH`` (the table's offline layout, e.g. ``uci_energy/data.txt``), ``DATASET/FILE`` or
``FILE``, and an archive as ``DATASET/ARCHIVE`` or ``ARCHIVE``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .. import catalog
from ..paths import MIRRORS_ENV, data_dir

DEFAULT_SOURCES = Path(__file__).resolve().parents[2] / "config" / "sources.tsv"
DEFAULT_DATA_DIR = data_dir()  # where the pipeline prepares them (onepass.paths says where)
SOURCE_COLUMNS = ["dataset", "file", "url", "member", "sha256", "archive_sha256", "mirror_path"]
INIT_PREFIX = "paper_init_"  # raw files that are the paper's published initialisations, not data to prepare


class DataError(Exception):
    """A user-facing data problem (bad name, missing mirror, wrong checksum, unsafe archive, ...)."""


# ----------------------------------------------------------------------------------------------- datasets


def datasets() -> dict[str, str]:
    """Every dataset of the catalogue (config/datasets/*.yaml) with its family; variants (``same_as``) are not
    prepared themselves: they load their base's data."""
    return {name: d.family for name, d in catalog.datasets().items() if not d.is_variant}


def check_name(name: str) -> str:
    """Return the family of dataset ``name``, or raise a DataError listing the known names."""
    known = datasets()
    if name not in known:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(known)}")
    return known[name]


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


def sources_for(name: str, sources: str | os.PathLike | None) -> list[Source]:
    """The rows of dataset ``name`` in the sources table ``sources`` (default ``config/sources.tsv``)."""
    rows = read_sources(sources).get(name)
    if not rows:
        raise DataError(f"the sources table has no rows for dataset {name!r}")
    return rows


def init_number(file: str) -> int:
    """N of a ``paper_init_N.yaml`` file name."""
    return int(file[len(INIT_PREFIX):].split(".")[0])


def init_digests(name: str, sources: str | os.PathLike | None = None) -> dict[int, str]:
    """The paper's published initialisations of ``name`` as listed in the sources table, without fetching
    them: ``{N: SHA-256}`` of its ``paper_init_N.yaml`` rows (empty for a dataset that has none)."""
    rows = read_sources(sources).get(name) or []
    return dict(sorted((init_number(s.file), s.sha256) for s in rows if s.file.startswith(INIT_PREFIX)))


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


def find_in_mirrors(mirrors: list[Path], relpaths: list[str]) -> Path | None:
    """First ``mirror/relpath`` that is a file, mirrors in order."""
    for mirror in mirrors:
        for rel in relpaths:
            if (mirror / rel).is_file():
                return mirror / rel
    return None


def file_candidates(src: Source) -> list[str]:
    """Relative paths under which a mirror may hold the file itself."""
    return list(dict.fromkeys(p for p in (src.mirror_path, f"{src.dataset}/{src.file}", src.file) if p))


def archive_candidates(src: Source) -> list[str]:
    """Relative paths under which a mirror may hold the archive containing the file."""
    return [f"{src.dataset}/{src.archive}", src.archive]
