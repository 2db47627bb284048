"""Atomic files under ``data_dir``: a write goes to a temporary file, is synced, then renamed into place."""

from __future__ import annotations

import os
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
