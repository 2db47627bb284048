"""Bytes a wide UNet forward moves, from the shapes alone (pure, no torch): what `TorchComm` should count.

Each `SpatioTemporalResBlock` and each temporal transformer layer switches to the position layout and back (two
all-to-alls of its activations); each temporal ResNet's two GroupNorms all-gather 2 * B * 32 fp64
statistics (per-group means and variances). Bytes are logical: what leaves each rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from svdpipe.wide.splits import frame_splits, position_splits

GROUPS = 32  # GroupNorm groups in diffusers' TemporalResnetBlock
STATS_ITEM_BYTES = 8  # the statistics travel in fp64


@dataclass(frozen=True)
class Switch:
    """One round trip frame layout -> position layout -> frame layout of a (B, F, C, H, W) activation."""

    channels: int
    height: int
    width: int
    norms: int  # distributed GroupNorms run in the position layout (2 in a temporal ResNet, 0 in a transformer)


@dataclass(frozen=True)
class Traffic:
    """What each rank sends in one forward, in rank order."""

    all_to_all_bytes: tuple[int, ...]
    stats_bytes: tuple[int, ...]
    all_to_all_calls: int
    stats_calls: int

    @property
    def total_bytes(self) -> tuple[int, ...]:
        return tuple(a + s for a, s in zip(self.all_to_all_bytes, self.stats_bytes, strict=True))


def _per_block(value: Any, blocks: int) -> list[int]:
    return [value] * blocks if isinstance(value, int) else list(value)


def switches(unet_config: Mapping[str, Any], height: int, width: int) -> list[Switch]:
    """Every layout round trip of one forward at a latent of height x width, in the order the forward runs them.

    Follows `UNetSpatioTemporalConditionModel.__init__`'s defaults for keys the config leaves out."""
    down_types = list(unet_config.get("down_block_types", ()))
    up_types = list(unet_config.get("up_block_types", ()))
    channels = list(unet_config["block_out_channels"])
    n = len(channels)
    layers = _per_block(unet_config.get("layers_per_block", 2), n)
    depth = _per_block(unet_config.get("transformer_layers_per_block", 1), n)
    heads = _per_block(unet_config.get("num_attention_heads", (5, 10, 20, 20)), n)
    inner = [h * (c // h) for h, c in zip(heads, channels, strict=True)]  # transformer width
    sizes = [(height, width)]
    for _ in range(n - 1):  # a 3x3 stride-2 conv with padding 1 takes ceil of half
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))

    out: list[Switch] = []

    def resnet(c: int, size: tuple[int, int]) -> None:
        out.append(Switch(c, *size, norms=2))

    def transformer(level: int, size: tuple[int, int]) -> None:
        out.extend(Switch(inner[level], *size, norms=0) for _ in range(depth[level]))

    for i, kind in enumerate(down_types):
        for _ in range(layers[i]):
            resnet(channels[i], sizes[i])
            if kind.startswith("CrossAttn"):
                transformer(i, sizes[i])
    resnet(channels[-1], sizes[-1])
    transformer(n - 1, sizes[-1])
    resnet(channels[-1], sizes[-1])
    for i, kind in enumerate(up_types):
        level = n - 1 - i
        for _ in range(layers[level] + 1):
            resnet(channels[level], sizes[level])
            if kind.startswith("CrossAttn"):
                transformer(level, sizes[level])
    return out


def forward_bytes(
    unet_config: Mapping[str, Any], batch: int, frames: int, height: int, width: int, parts: int, item_bytes: int
) -> Traffic:
    """Bytes each of `parts` ranks sends in one wide forward of a (batch, frames) sample at a height x width
    latent with activations of `item_bytes` bytes (2: fp16, 4: fp32, 8: fp64)."""
    fr = frame_splits(frames, parts)
    a2a = [0] * parts
    stats = [0] * parts
    calls = norms = 0
    for s in switches(unet_config, height, width):
        pos = position_splits(s.height, s.width, parts)
        positions = s.height * s.width
        for r in range(parts):
            to_positions = batch * fr[r] * s.channels * (positions - pos[r])  # my frames, others' positions
            to_frames = batch * pos[r] * s.channels * (frames - fr[r])  # my positions, others' frames
            a2a[r] += (to_positions + to_frames) * item_bytes
            stats[r] += s.norms * 2 * batch * GROUPS * STATS_ITEM_BYTES * (parts - 1)
        calls += 2
        norms += s.norms
    return Traffic(tuple(a2a), tuple(stats), calls, norms)


def gather_bytes(
    batch: int, frames: int, channels: int, height: int, width: int, parts: int, item_bytes: int
) -> tuple[int, ...]:
    """Bytes each rank sends to `gather_frames` a (batch, frames, channels, height, width) prediction: its
    frames to each of the other ranks."""
    per_frame = batch * channels * height * width * item_bytes
    return tuple(f * per_frame * (parts - 1) for f in frame_splits(frames, parts))
