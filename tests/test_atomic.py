"""Tests of onepass.atomic.atomic_write, the one writer of every file other jobs read."""

from __future__ import annotations

import os
import stat

import pytest

from onepass.atomic import atomic_write


def test_writes_with_umask_mode_and_leaves_no_temporary(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "new" / "a.txt", lambda tmp: tmp.write_text("hello\n"))
    finally:
        os.umask(old)
    target = tmp_path / "new" / "a.txt"
    assert target.read_text() == "hello\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old\n")

    def write(tmp):
        tmp.write_text("half")
        raise RuntimeError("checksum mismatch")

    with pytest.raises(RuntimeError, match="checksum mismatch"):
        atomic_write(target, write)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_file_synced_before_rename_and_directory_after(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        calls.append((stat.S_ISDIR(st.st_mode), st.st_ino, target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(target, lambda tmp: tmp.write_bytes(b"x" * 10))
    assert calls == [(False, target.stat().st_ino, False), (True, tmp_path.stat().st_ino, True)]
