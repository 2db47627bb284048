"""Which request sizes a model can run, derived from its configs (pure; no torch).

SVD's VAE and UNet normalise with GroupNorm, which needs more than one value per group: values per group are
batch x channels / groups x height x width at that layer. A small output leaves the deepest layers a single
value (the tiny model at 8x8: a 1x1 latent with one channel per group) and torch refuses to run it. So the
smallest size depends on the model's channels and on the batch a layer sees (the VAE encoder: one image; the
UNet: the frames; with classifier-free guidance twice that, but a latency mode may run each guidance half on
an actor of its own, so only the frames count). SVD's own channels (320/32 in the UNet, 128/32 in the
VAE) leave every size runnable; small test models are where this bites.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from svdpipe.errors import InvalidRequestError

if TYPE_CHECKING:
    from svdpipe.config import ResolvedParams
    from svdpipe.models import ModelSpec

GROUPS = 32  # diffusers' SVD blocks normalise with 32 groups (the VAE encoder's is its config's norm_num_groups)


def _fewest_values(
    channels: Sequence[int], groups: int, height: int, width: int, batch: int, shrink: Callable[[int], int]
) -> int:
    """Fewest values per group over a down path: level i sees min(channels in, out) at the i-th shrunk size."""
    fewest = math.inf
    previous = channels[0]
    for level, out in enumerate(channels):
        per_group = min(previous, out) / groups
        fewest = min(fewest, batch * per_group * height * width)
        previous = out
        if level < len(channels) - 1:
            height, width = shrink(height), shrink(width)
    return int(fewest)


def fewest_norm_values(
    vae_channels: Sequence[int],
    vae_groups: int,
    unet_channels: Sequence[int],
    height: int,
    width: int,
    num_frames: int,
) -> int:
    """Fewest values any GroupNorm group sees for an output of `height` x `width` pixels (at least 2 to run).

    The VAE encoder sees one image and halves it (floor) at each of its levels but the last; the UNet sees the
    latent frames (twice with guidance) and halves (ceil) at each level but its last. The decoder's layers see
    the latent size with the encoder's deepest channels, or more, so the encoder bounds them.
    """
    vae = _fewest_values(vae_channels, vae_groups, height, width, 1, lambda n: n // 2)
    factor = 2 ** (len(vae_channels) - 1)
    unet = _fewest_values(unet_channels, GROUPS, height // factor, width // factor, num_frames, lambda n: -(-n // 2))
    return min(vae, unet)


def check_request(
    params: ResolvedParams, spec: ModelSpec, max_video_pixels: int | None = None, max_clips: int | None = None
) -> None:
    """Raise InvalidRequestError, naming the field and the limit, for a request this model cannot run (or that
    exceeds this deployment's `max_video_pixels` per clip or its `max_clips`)."""
    h, w, frames = params.height, params.width, params.num_frames
    m = spec.size_multiple
    if h % m or w % m:
        raise InvalidRequestError(
            f"height and width must be multiples of {m} for this model (its VAE downsamples {m}x); got "
            f"{h}x{w}. Nearest valid: {max(m, round(h / m) * m)}x{max(m, round(w / m) * m)}"
        )
    if spec.fewest_norm_values(h, w, frames) < 2:
        side = smallest_square(spec, frames)
        raise InvalidRequestError(
            f"height and width: {h}x{w} is too small for this model at {frames} frame(s) (a GroupNorm layer of "
            f"its VAE or UNet would normalise a single value); it runs from {side}x{side} (or a larger area, or "
            "more frames)"
        )
    if max_video_pixels is not None and frames * h * w > max_video_pixels:
        raise InvalidRequestError(
            f"num_frames x height x width: {frames}x{h}x{w} = {frames * h * w} pixels exceeds this deployment's "
            f"limit of {max_video_pixels} (max_video_pixels)"
        )
    if max_clips is not None and params.num_clips > max_clips:
        raise InvalidRequestError(
            f"num_clips: {params.num_clips} exceeds this deployment's limit of {max_clips} clips (max_clips)"
        )


def smallest_square(spec: ModelSpec, num_frames: int) -> int:
    """The smallest height = width this model runs at `num_frames` frames."""
    side = spec.size_multiple
    while spec.fewest_norm_values(side, side, num_frames) < 2:
        side += spec.size_multiple
    return side


def describe_limits(spec: ModelSpec, max_video_pixels: int, max_image_pixels: int, max_image_side: int) -> str:
    """The request limits of a deployment, in words (the API documentation of POST /v1/videos states them)."""
    m, frames = spec.size_multiple, spec.default_num_frames
    one, many = smallest_square(spec, 1), smallest_square(spec, frames)
    return (
        f"Limits of this deployment: height and width are multiples of {m} (the model's VAE downsamples {m}x), "
        f"at least {one}x{one} for 1 frame and {many}x{many} for {frames} as squares (its GroupNorm layers need two "
        f"values per group; some smaller oblong sizes run, and are accepted); num_frames x height x width "
        f"at most {max_video_pixels}; the image at most {max_image_pixels} pixels and {max_image_side} pixels a "
        "side, any smaller size down to 1x1. A request outside them gets 400 with a message naming the field "
        "and the limit; an accepted job fails only for a reason outside the request."
    )
