"""Fetching a dataset's raw files into ``DATA_DIR/DATASET/``, each verified against its SHA-256.

For each raw file (a row of the sources table, :mod:`onepass.data.sources`) every mirror is searched for the
file; for an archive member, then for the archive; then the archive already in ``DATA_DIR/DATASET/``; then
upstream is downloaded (urllib, tqdm progress on stderr). Every file is verified against its SHA-256 before
it is renamed into place (:func:`onepass.atomic.atomic_write`): a mismatch is an error naming the file and
both digests, and a failed ``fetch``/``prepare`` removes every file it created. A raw file already in
``DATA_DIR/DATASET/`` with the right digest is reused. Archive members are read as
:mod:`onepass.data.archives` says.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..atomic import atomic_write
from .archives import read_archive_members
from .sources import (INIT_PREFIX, DataError, Source, archive_candidates, check_name, file_candidates,
                      find_in_mirrors, init_number, resolve_mirrors, sources_for)

CHUNK = 1 << 20


# ------------------------------------------------------------------------------------ verified writing


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    for chunk in file_chunks(Path(path)):
        digest.update(chunk)
    return digest.hexdigest()


def file_chunks(path: Path) -> Iterator[bytes]:
    """The bytes of a file, in pieces of :data:`CHUNK`."""
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(CHUNK), b"")


def check_digest(what: str, expected: str | None, actual: str) -> None:
    """Raise on a mismatch; only report when no digest is known."""
    if expected is None:
        print(f"warning: no known SHA-256 for {what}; got {actual} (not verified)", file=sys.stderr)
    elif actual != expected:
        raise DataError(f"SHA-256 mismatch for {what}: expected {expected}, got {actual}")


def install(target: Path, chunks: Iterable[bytes], expected: str | None, what: str) -> None:
    """Write ``chunks`` to ``target`` atomically, verifying their SHA-256 before the rename."""
    def write(tmp: Path) -> None:
        digest = hashlib.sha256()
        with open(tmp, "wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
        check_digest(what, expected, digest.hexdigest())

    atomic_write(target, write)


@contextlib.contextmanager
def cleanup_on_error(directory: Path) -> Iterator[list[Path]]:
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


# ------------------------------------------------------------------------------------------- download


def _download(src: Source, target: Path, expected: str | None, mirrors: list[Path], download: bool) -> None:
    """Download ``src.url`` to ``target`` (verified, atomic) or raise a DataError saying what was tried."""
    looked = ", ".join(file_candidates(src) + (archive_candidates(src) if src.member else []))
    tried = f"not found in mirrors [{', '.join(map(str, mirrors)) or 'none configured'}] (looked for {looked})"
    what = f"{src.dataset}/{src.file}"
    if not download:
        raise DataError(f"cannot obtain {what}: {tried} and downloads are disabled (--offline)")
    print(f"{src.dataset}: downloading {src.url}", file=sys.stderr)
    try:
        with urllib.request.urlopen(src.url, timeout=60) as response:
            install(target, _response_chunks(response, target.name), expected, f"{target.name} from {src.url}")
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


# ------------------------------------------------------------------------------------------- fetching


def _fetch_one(src: Source, target: Path, mirrors: list[Path], download: bool, created: list[Path]) -> None:
    """Make ``target`` a verified copy of ``src``: mirror copy, then archive (mirror/local/download), then URL."""
    what = f"{src.dataset}/{src.file}"
    copy = find_in_mirrors(mirrors, file_candidates(src))
    if copy is not None:
        print(f"{src.dataset}: {src.file} <- {copy}", file=sys.stderr)
        created.append(target)
        install(target, file_chunks(copy), src.sha256, f"{what} (mirror copy {copy})")
        return
    if src.member is None:
        created.append(target)
        _download(src, target, src.sha256, mirrors, download)
        return
    archive = find_in_mirrors(mirrors, archive_candidates(src))
    if archive is not None:
        if src.archive_sha256 is not None:
            check_digest(f"archive {archive}", src.archive_sha256, sha256_file(archive))
    else:
        archive = target.parent / src.archive
        if not archive.is_file():  # a local archive was verified when it was downloaded
            created.append(archive)
            _download(src, archive, src.archive_sha256, mirrors, download)
    print(f"{src.dataset}: {src.file} <- {archive}:{src.member}", file=sys.stderr)
    data = read_archive_members(archive, [src.member])[src.member]
    created.append(target)
    install(target, [data], src.sha256, f"{what} (member {src.member} of {archive})")


def _is_verified(path: Path, src: Source) -> bool:
    """Whether an existing raw file can be reused (it exists and matches its digest, if one is known)."""
    if not path.is_file():
        return False
    if src.sha256 is None or sha256_file(path) == src.sha256:
        return True
    print(f"warning: {path} does not match its SHA-256; fetching it again", file=sys.stderr)
    return False


def fetch_into(name, data_dir, mirrors, sources, download, created, inits=None) -> dict[str, Path]:
    """Fetch the rows of ``name`` into ``DATA_DIR/NAME/``, recording new files in ``created`` (see
    :func:`cleanup_on_error`): all rows (``inits`` None), its data files alone (False) or its published
    initialisations alone (True). Returns ``{file name: path}``."""
    rows = sources_for(name, sources)
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
    with cleanup_on_error(Path(data_dir) / name) as created:
        return fetch_into(name, data_dir, mirrors, sources, download, created)


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
    with cleanup_on_error(Path(data_dir) / name) as created:
        if not any(src.file.startswith(INIT_PREFIX) for src in sources_for(name, sources)):
            return {}
        raw = fetch_into(name, data_dir, mirrors, sources, download, created, inits=True)
    return dict(sorted((init_number(f), p) for f, p in raw.items()))
