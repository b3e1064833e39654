"""Reading members of tar archives safely: a downloaded archive is untrusted input.

Archives are never unpacked to disk by name: every member is first checked (no absolute path, no ``..``, no
link leaving the archive, no device file; plus :func:`tarfile.data_filter`), then the needed members are read
into memory, to be verified and written under fixed names by the caller. A truncated or corrupt archive is
an error.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from .sources import DataError


def unsafe_reason(member: tarfile.TarInfo, dest: Path) -> str | None:
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

    Every member of the archive is checked first (see :func:`unsafe_reason`); an unsafe member, a missing
    wanted member or a truncated/corrupt archive raises DataError. A leading ``./`` in names is ignored.
    """
    wanted, found = set(wanted), {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                reason = unsafe_reason(member, archive.parent)
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
