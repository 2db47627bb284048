"""Atomic files under ``data_dir``: a write goes to a temporary file, is synced, then renamed into place."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

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
    """Write ``data`` to a fresh temporary file next to ``final`` and fsync it; return its path."""
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
