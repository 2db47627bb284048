"""Reading and checking input images (size limits against decompression bombs, clear errors)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import PIL.Image

from svdpipe.errors import InvalidRequestError

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
DEFAULT_MAX_PIXELS = 36_000_000  # e.g. 6000x6000; far above any SVD input, far below a bomb
# CLIP preprocessing blurs with a kernel that grows with the side (diffusers' _resize_with_antialiasing): a
# 2x1,000,000 image takes a minute on a CPU, and the time grows with the square of the side.
DEFAULT_MAX_SIDE = 16_384


def load_image(
    source: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = DEFAULT_MAX_SIDE
) -> PIL.Image.Image:
    """Open an image from bytes or a path as RGB (alpha dropped, as diffusers' load_image does)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InvalidRequestError(f"image file not found: {path}")
        data = path.read_bytes()
    else:
        data = source
    if not data:
        raise InvalidRequestError("the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(data))
            fmt = image.format
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidRequestError(
                    f"image: {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
                )
            if max(width, height) > max_side:
                raise InvalidRequestError(f"image: {width}x{height} has a side over the limit of {max_side} pixels")
            if fmt not in SUPPORTED_FORMATS:
                raise InvalidRequestError(f"unsupported image format {fmt}; use one of {', '.join(SUPPORTED_FORMATS)}")
            image.load()
    except InvalidRequestError:
        raise
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as exc:
        raise InvalidRequestError(f"image rejected as a decompression bomb: {exc}") from exc
    except PIL.UnidentifiedImageError as exc:
        raise InvalidRequestError(f"not a readable image (expected one of {', '.join(SUPPORTED_FORMATS)})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidRequestError(f"could not read the image: {exc}") from exc
    return image.convert("RGB")


def clip_ready(image: PIL.Image.Image) -> PIL.Image.Image:
    """The image with any 1-pixel side repeated to 2 pixels (the same picture), unchanged otherwise.

    diffusers' CLIP preprocessing blurs before it resizes to 224x224, padding each side by reflection, which
    needs at least 2 pixels; a 1-pixel-high or -wide image (even 1x1) is otherwise a valid input.
    """
    width, height = image.size
    if width >= 2 and height >= 2:
        return image
    return image.resize((max(width, 2), max(height, 2)), PIL.Image.Resampling.NEAREST)
