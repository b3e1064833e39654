"""Atomic, durable file writing: the one way onepass writes a file that another job or a later run reads.

A file is written under a temporary name in its own directory, flushed to disk (``fsync``), given the
permissions a new file gets under the umask, renamed onto its name (``os.replace``, atomic on POSIX) and the
directory is flushed too, so that after a crash the name holds either the old file or the whole new one,
never a part. If writing fails, the temporary file is removed and the old file (if any) stays.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

# A directory's fsync that the filesystem does not offer (some network and FUSE filesystems) is skipped.
_NO_DIRECTORY_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES}


def new_file_mode() -> int:
    """Permissions of a newly created file under the current umask (mkstemp would give 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` to write a temporary file beside ``path``, then make it ``path`` durably.

    ``write`` gets the temporary file's path (an existing empty file it may overwrite or open itself) and
    may raise to abandon the write (e.g. a checksum that does not match): nothing is then left behind. The
    parent directory is created if missing. After ``write`` returns the file is fsynced, renamed onto
    ``path`` and the directory fsynced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        _fsync_path(tmp, os.O_RDONLY)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    try:
        _fsync_path(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        if exc.errno not in _NO_DIRECTORY_SYNC:
            raise


def _fsync_path(path: Path, flags: int) -> None:
    """fsync the file or directory at ``path``."""
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
