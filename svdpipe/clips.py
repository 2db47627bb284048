"""Long videos as chained clips: each clip's parameters, the image it starts from, and the work directory that
makes a video resumable.

The reference is diffusers' own loop: `StableVideoDiffusionPipeline` called K times, call k with
`generator=torch.Generator("cpu").manual_seed(seed + k)` and, for k > 0, `image=` the last frame of call k-1 as
`output_type="pil"` rounds it; the frames concatenated. Clip k here is that call: its seed is `seed + k` and its
image is the previous clip's last frame rounded by `video.to_uint8` (diffusers' numpy_to_pil rounding), passed on
as a lossless PNG. So a K-clip video equals the loop, as a single clip equals one call.

A work directory holds what a video has finished: `request.json` (whose video it is), `clip-NNNN.npy` per
finished clip (the frames as the output format holds them: float32 for .npy, uint8 for video files), each
written atomically, so a video that stops (a replica or actor lost) resumes at the first clip not there, and its
result is the uninterrupted run's. No Ray, no torch.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from svdpipe.config import OutputFormat, ResolvedParams

logger = logging.getLogger(__name__)

_REQUEST = "request.json"
_COLORS = "colors.json"


def clip_params(params: ResolvedParams, k: int) -> ResolvedParams:
    """Clip k's parameters: the request's, with seed + k (the loop's generator for call k)."""
    if not 0 <= k < params.num_clips:
        raise ValueError(f"clip {k} of a {params.num_clips}-clip request")
    return params.model_copy(update={"seed": params.seed + k})


def image_png(frame: np.ndarray) -> bytes:
    """One frame (H, W, 3), float in [0, 1] or already uint8, as the PNG the next clip starts from: rounded as
    diffusers' output_type='pil' rounds it (video.to_uint8), and lossless from there."""
    import PIL.Image

    from svdpipe.video import to_uint8

    pixels = frame if frame.dtype == np.uint8 else to_uint8(frame)
    buf = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def color_stats(frames: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of frames (F, H, W, 3), on the [0, 1] scale."""
    x = frames.astype(np.float64) / (255.0 if frames.dtype == np.uint8 else 1.0)
    return x.mean(axis=(0, 1, 2)).tolist(), x.std(axis=(0, 1, 2)).tolist()


def match_colors(frames: np.ndarray, reference: tuple[list[float], list[float]]) -> np.ndarray:
    """Frames with each channel's mean and standard deviation moved to `reference`'s (clip 0's): curbs the colour
    drift of long chains. Not exact against the diffusers loop: opt-in (VideoParams.color_match)."""
    mean, std = color_stats(frames)
    scale = 255.0 if frames.dtype == np.uint8 else 1.0
    x = frames.astype(np.float64) / scale
    ref_mean, ref_std = np.asarray(reference[0]), np.asarray(reference[1])
    x = (x - np.asarray(mean)) / np.maximum(np.asarray(std), 1e-6) * ref_std + ref_mean
    x = np.clip(x, 0.0, 1.0)
    if frames.dtype == np.uint8:
        return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return x.astype(frames.dtype)


@dataclass(frozen=True)
class ClipOutput:
    """Where and how the mux actor keeps one video's clips (sent with each clip's mux call)."""

    work_dir: str
    clip: int  # this clip's index
    num_clips: int
    output_format: OutputFormat
    fps: int
    color_match: bool = False

    @property
    def video_path(self) -> Path:
        return Path(self.work_dir) / f"video.{self.output_format}"


class ClipDir:
    """The finished clips of one video in its work directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def clip_path(self, k: int) -> Path:
        return self.path / f"clip-{k:04d}.npy"

    def claim(self, params: ResolvedParams, fmt: OutputFormat) -> int:
        """Make the directory this video's and return how many clips it already holds (0..K). A directory that
        holds another request's clips (other parameters or format) is emptied: its clips are not this video's."""
        wanted = {"params": params.model_dump(), "output_format": fmt}
        self.path.mkdir(parents=True, exist_ok=True)
        marker = self.path / _REQUEST
        try:
            current = json.loads(marker.read_text())
        except (OSError, ValueError):
            current = None
        if current != wanted:
            if current is not None:
                logger.warning("work directory %s held another request's clips: starting over", self.path)
            for child in self.path.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
            data = json.dumps(wanted, sort_keys=True).encode()
            write_atomic(marker, lambda f: f.write(data))
        return self.done(params.num_clips)

    def done(self, num_clips: int) -> int:
        """How many clips, from clip 0 on without a gap, are finished here."""
        k = 0
        while k < num_clips and self.clip_path(k).is_file():
            k += 1
        return k

    def write_clip(self, k: int, frames: np.ndarray) -> Path:
        path = self.clip_path(k)
        write_atomic(path, lambda f: np.save(f, frames))  # straight to the file: no copy of the clip in memory
        return path

    def read_clip(self, k: int) -> np.ndarray:
        """Clip k's frames, mapped from the file (pages are read as they are used)."""
        return np.load(self.clip_path(k), mmap_mode="r")

    def last_frame(self, k: int) -> np.ndarray:
        return np.array(self.read_clip(k)[-1])

    def colors(self) -> tuple[list[float], list[float]] | None:
        """Clip 0's colour statistics, once its mux call has written them (color_match)."""
        try:
            data: Any = json.loads((self.path / _COLORS).read_text())
        except (OSError, ValueError):
            return None
        return data["mean"], data["std"]

    def set_colors(self, stats: tuple[list[float], list[float]]) -> None:
        data = json.dumps({"mean": stats[0], "std": stats[1]}).encode()
        write_atomic(self.path / _COLORS, lambda f: f.write(data))


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a file at `path` with `write(file)` through a temporary file in the same directory and a rename: a
    reader sees the old file or the whole new one, never a part (and a crash leaves no partial file under the
    name)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
