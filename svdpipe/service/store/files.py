"""Atomic files under ``data_dir``: a write goes to a temporary file, is synced, then renamed into place."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

from svdpipe.errors import StorageFullError
from svdpipe.service.disk import free_bytes, full_message, is_full

TMP_SUFFIX = ".tmp"
# Temporary files younger than this may be another replica's write in progress (shared data_dir): left alone.
STALE_TMP_S = 3600.0


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_tmp(final: Path, data: bytes) -> Path:
    """Write ``data`` to a fresh temporary file next to ``final`` and fsync it; return its path.

    :class:`~svdpipe.errors.StorageFullError` if the filesystem is full; the temporary file is removed then."""
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # never leave part of a file behind
        if is_full(exc):
            raise StorageFullError(full_message(final.parent, free_bytes(final.parent))) from exc
        raise
    return tmp


def stage_file(source: Path, final: Path) -> Path:
    """Move ``source`` to a fresh temporary file next to ``final`` (renamed on the same filesystem, else copied
    and synced) and return its path; ``os.replace`` it onto ``final`` to publish it. ``source`` is gone afterwards.

    :class:`~svdpipe.errors.StorageFullError` if a copy does not fit; nothing is left of it then."""
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")
    with open(source, "rb") as f:
        os.fsync(f.fileno())  # its bytes are on disk before a rename makes it the video
    try:
        os.rename(source, tmp)
        return tmp
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    try:  # another filesystem: copy in chunks (never the whole video in memory)
        with open(source, "rb") as src, open(tmp, "xb") as dst:
            shutil.copyfileobj(src, dst, 2**20)
            dst.flush()
            os.fsync(dst.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_full(exc):
            raise StorageFullError(full_message(final.parent, free_bytes(final.parent))) from exc
        raise
    source.unlink(missing_ok=True)
    return tmp
