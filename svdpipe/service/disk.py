"""Free space in the data directory, and the decision whether it is enough to accept new jobs."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

MB = 2**20
# Errors that mean "no room": the disk is full, or the user's quota is.
FULL_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT})


def free_bytes(path: str | Path) -> int:
    """Bytes free for an unprivileged writer on the filesystem that holds ``path``."""
    return shutil.disk_usage(path).free


def below_floor(free: int, min_free_mb: float) -> bool:
    """Whether ``free`` bytes is less than the floor of ``min_free_mb`` MiB (a floor of 0 is never crossed)."""
    return min_free_mb > 0 and free < min_free_mb * MB


def clips_work_bytes(num_clips: int, num_frames: int, height: int, width: int) -> int:
    """Room a video of ``num_clips`` clips takes in the data directory while it runs (0 for one clip, which is
    written whole at the end): its work directory keeps every finished clip as uint8 RGB frames (3 bytes a
    pixel; the .npy headers are noise). The video file itself, streamed beside them, is the floor's business
    (min_free_mb): mp4 and webm are a few percent of the raw frames."""
    if num_clips <= 1:
        return 0
    return num_clips * num_frames * height * width * 3


def is_full(exc: BaseException) -> bool:
    """Whether ``exc`` is the operating system saying the filesystem (or a quota) is full."""
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


def full_message(path: str | Path, free: int | None = None) -> str:
    """What a user reads when the data directory has no room."""
    room = "" if free is None else f" ({free / MB:.1f} MB free)"
    return f"the data directory {path} is full{room}; free some space or retry later"
