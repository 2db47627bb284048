"""Input images and output videos."""

from __future__ import annotations

import io

import av
import numpy as np
import PIL.Image
import pytest

from svdpipe.errors import InvalidRequestError
from svdpipe.images import load_image
from svdpipe.video import encode_video, format_from_path, write_video


def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    PIL.Image.new(mode, (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def _noisy_png() -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_load_image_converts_to_rgb():
    img = load_image(_png(20, 10, "RGBA"))
    assert img.mode == "RGB" and img.size == (20, 10)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"definitely not an image", "not a readable image"),
        (_noisy_png()[:4000], "truncated"),
    ],
)
def test_bad_images(data, message):
    with pytest.raises(InvalidRequestError, match=message):
        load_image(data)


def test_pixel_limit():
    with pytest.raises(InvalidRequestError, match="pixels; the limit is 100"):
        load_image(_png(20, 10), max_pixels=100)


def test_missing_file(tmp_path):
    with pytest.raises(InvalidRequestError, match="not found"):
        load_image(tmp_path / "nope.png")


@pytest.mark.parametrize("fmt", ["mp4", "webm", "gif"])
def test_videos_decode_back(fmt, tmp_path):
    frames = np.random.default_rng(0).random((5, 48, 80, 3), dtype=np.float32)
    path = write_video(frames, tmp_path / f"out.{fmt}", fps=7)
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        codec = container.streams.video[0].codec_context.name
    assert len(decoded) == 5
    assert decoded[0].shape == (48, 80, 3)
    assert codec == {"mp4": "h264", "webm": "vp9", "gif": "gif"}[fmt]


def test_gif_is_nearly_lossless_on_flat_frames(tmp_path):
    frames = np.full((2, 16, 16, 3), 0.5, dtype=np.float32)
    path = write_video(frames, tmp_path / "flat.gif")
    with av.open(str(path)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert np.abs(first.astype(int) - 128).max() <= 1


def test_npy_round_trip():
    frames = np.random.default_rng(1).random((3, 8, 8, 3), dtype=np.float32)
    back = np.load(io.BytesIO(encode_video(frames, "npy")))
    np.testing.assert_array_equal(back, frames)


def test_format_from_path():
    assert format_from_path("a/b.MP4") == "mp4"
    with pytest.raises(ValueError, match=r"\.mp4, \.webm"):
        format_from_path("clip.avi")
