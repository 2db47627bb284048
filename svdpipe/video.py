"""Writing frames as mp4 (H.264), webm (VP9), gif, or raw .npy."""

from __future__ import annotations

import io
import os
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any, get_args

import numpy as np

from svdpipe.config import OutputFormat

CONTENT_TYPES: dict[str, str] = {
    "mp4": "video/mp4",
    "webm": "video/webm",
    "gif": "image/gif",
    "npy": "application/octet-stream",
}


def format_from_path(path: str | Path) -> OutputFormat:
    """The output format named by a file's extension."""
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in get_args(OutputFormat):
        raise ValueError(f"cannot tell the output format from {str(path)!r}: use .mp4, .webm, .gif or .npy")
    return ext  # type: ignore[return-value]


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """As diffusers' numpy_to_pil rounds its float frames: (x * 255).round(), here clipped for safety."""
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


def encode_video(frames: np.ndarray, fmt: OutputFormat, fps: int = 7) -> bytes:
    """Frames (F, H, W, 3), float in [0, 1] or already uint8 (to_uint8's rounding), as the bytes of a file of
    format `fmt`; .npy keeps the float frames, so it needs them."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (F, H, W, 3), got {frames.shape}")
    buf = io.BytesIO()
    if fmt == "npy":
        if frames.dtype == np.uint8:
            raise ValueError(".npy output holds the float frames; got uint8 frames")
        np.save(buf, frames.astype(np.float32))
        return buf.getvalue()
    pixels = frames if frames.dtype == np.uint8 else to_uint8(frames)
    if fmt == "gif":
        images = [_pil(f) for f in pixels]
        images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    else:
        _encode_av(pixels, fmt, fps, buf)
    return buf.getvalue()


def write_video(frames: np.ndarray, path: str | Path, fps: int = 7) -> Path:
    """Write frames to `path` in the format its extension names."""
    path = Path(path)
    data = encode_video(frames, format_from_path(path), fps)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _pil(frame: np.ndarray):
    import PIL.Image

    return PIL.Image.fromarray(frame)


def _encode_av(frames: np.ndarray, fmt: str, fps: int, buf: io.BytesIO) -> None:
    writer = _AvWriter(buf, fmt, fps)
    writer.append(frames)
    writer.close()


class _AvWriter:
    """An mp4 (H.264), webm (VP9) or gif encoder taking frames as they come (uint8, (n, H, W, 3))."""

    _CODECS = {
        "mp4": ("libx264", "yuv420p", {"crf": "18", "preset": "medium", "movflags": "+faststart"}),
        "webm": ("libvpx-vp9", "yuv420p", {"crf": "30", "b": "0"}),
        "gif": ("gif", "rgb8", {}),  # a fixed 8-bit palette (streamed; whole-file gifs use PIL's adaptive one)
    }

    def __init__(self, target: io.BytesIO | str | Path, fmt: str, fps: int) -> None:
        import av

        self.fmt, self.fps = fmt, fps
        self._container = av.open(target, mode="w", format=fmt)
        self._stream: Any = None
        self._pad = (0, 0)

    def append(self, frames: np.ndarray) -> None:
        import av

        _, height, width, _ = frames.shape
        if self._stream is None:
            codec, pix_fmt, options = self._CODECS[self.fmt]
            # yuv420p needs even sizes; SVD sizes are multiples of 8, but pad anything else rather than fail.
            self._pad = (height % 2, width % 2) if pix_fmt == "yuv420p" else (0, 0)
            self._stream = self._container.add_stream(codec, rate=Fraction(self.fps))
            self._stream.width, self._stream.height = width + self._pad[1], height + self._pad[0]
            self._stream.pix_fmt = pix_fmt
            self._stream.options = options
        if any(self._pad):
            frames = np.pad(frames, ((0, 0), (0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
        for frame in frames:
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                self._container.mux(packet)

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()


class VideoStream:
    """A video file written clip by clip (frames as they come; at most the frames of one append in memory): to
    `path`'s partial name first, renamed to `path` by close(). .npy gets its header (the whole video's shape) up
    front and float32 frames appended; mp4, webm and gif are encoded frame by frame."""

    def __init__(self, path: str | Path, fmt: OutputFormat, fps: int, total_frames: int) -> None:
        self.path = Path(path)
        self.fmt, self.total = fmt, total_frames
        self.written = 0
        # A name of this writer's own: two writers of one video (a replica that lost its lease and the one that
        # took the job over) never write into each other's file; the last complete one is renamed into place.
        self._partial = self.path.with_name(f".{self.path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
        self._file: Any = None
        self._av: _AvWriter | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "npy":
            self._file = open(self._partial, "wb")  # noqa: SIM115 - closed by close() or abort()
        else:
            self._av = _AvWriter(str(self._partial), fmt, fps)

    def append(self, frames: np.ndarray) -> None:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames of shape (F, H, W, 3), got {frames.shape}")
        if self.written + len(frames) > self.total:
            raise ValueError(f"{self.path.name}: {self.written + len(frames)} frames, more than {self.total}")
        if self._file is not None:
            if frames.dtype == np.uint8:
                raise ValueError(".npy output holds the float frames; got uint8 frames")
            if self.written == 0:
                header = {
                    "descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                    "fortran_order": False,
                    "shape": (self.total, *frames.shape[1:]),
                }
                np.lib.format.write_array_header_2_0(self._file, header)
            self._file.write(np.ascontiguousarray(frames, dtype="<f4").tobytes())
        else:
            assert self._av is not None
            self._av.append(frames if frames.dtype == np.uint8 else to_uint8(frames))
        self.written += len(frames)

    def close(self) -> Path:
        """Finish the file and give it its name; it must hold every frame announced."""
        if self.written != self.total:
            self.abort()
            raise ValueError(f"{self.path.name}: {self.written} of {self.total} frames written")
        if self._file is not None:
            self._file.close()
        elif self._av is not None:
            self._av.close()
        self._partial.replace(self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        try:
            if self._file is not None:
                self._file.close()
            elif self._av is not None:
                self._av.close()
        except Exception:  # an encoder that failed may fail again on close: the file goes either way
            pass
        self._partial.unlink(missing_ok=True)
