"""Writing frames as mp4 (H.264), webm (VP9), gif, or raw .npy."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path
from typing import get_args

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
    import av

    codec, pix_fmt, options = {
        "mp4": ("libx264", "yuv420p", {"crf": "18", "preset": "medium", "movflags": "+faststart"}),
        "webm": ("libvpx-vp9", "yuv420p", {"crf": "30", "b": "0"}),
    }[fmt]
    _, height, width, _ = frames.shape
    # yuv420p needs even sizes; SVD sizes are multiples of 8, but pad anything else rather than fail.
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with av.open(buf, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = width + pad_w, height + pad_h
        stream.pix_fmt = pix_fmt
        stream.options = options
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
