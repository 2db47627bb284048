"""The cost of a wide step on P GPUs, projected from a one-GPU step time (pure, no torch): compute share with
frame and position imbalance, all-to-all bytes from the shapes, per-collective latency, link bandwidth.

The link figures are ASSUMPTIONS, not measurements; the compute split is a FLOP count, not a timing. Replace both
with measurements when a multi-GPU machine is at hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from svdpipe.architectures import FULL_UNET
from svdpipe.wide.splits import frame_splits, max_share
from svdpipe.wide.traffic import forward_bytes, switches

# Share of the UNet's FLOPs in layers that run on position shards (temporal ResNets 5.93 %, temporal transformer
# blocks 27.22 %), counted by scripts/wide_flops.py (torch's FlopCounterMode on meta tensors) for SVD-XT at a
# 72x128 latent, 25 frames, batch 2: 159.9 TFLOP per step. The rest (spatial ResNets 24.2 %, spatial transformer
# blocks 35.6 %, convs in/out, resampling, projections) runs on frame shards. Time shares may differ (the temporal
# layers' small matmuls are less efficient), which this model does not know.
TEMPORAL_FLOP_SHARE = 0.3315


@dataclass(frozen=True)
class Link:
    """An interconnect between the GPUs of a wide step."""

    name: str
    bandwidth: float  # bytes/s one GPU sends in an all-to-all (achieved, not peak)
    latency_s: float  # fixed cost of one collective (launch and synchronisation)
    note: str


LINKS: dict[str, Link] = {
    "nvlink": Link(
        "nvlink",
        315e9,
        20e-6,
        "ASSUMED: H100 NVLink 4 through NVSwitch, ~315 GB/s achieved per GPU, 20 us per collective",
    ),
    "pcie": Link(
        "pcie", 20e9, 50e-6, "ASSUMED: PCIe through the host, ~20 GB/s achieved per GPU, 50 us per collective"
    ),
}


@dataclass(frozen=True)
class VideoShape:
    """The request shape a projection is for."""

    unet_config: Mapping[str, Any]
    frames: int
    height: int  # latent rows (pixels / 8)
    width: int  # latent columns
    item_bytes: int  # bytes per activation element (2: fp16)


SVD_XT = VideoShape({**FULL_UNET, "num_frames": 25}, frames=25, height=72, width=128, item_bytes=2)


@dataclass(frozen=True)
class WideStep:
    """One guided denoising step spread over `gpus` GPUs, split into what bounds it."""

    parts: int  # P: ranks sharing one UNet call
    cfg_halves: bool  # the unconditional and conditional halves on two groups of P
    compute_s: float  # the busiest rank's share of the UNet
    transfer_s: float  # the busiest rank's bytes over the link
    latency_s: float  # collectives x the link's per-collective cost
    bytes_per_rank: int  # the busiest rank's bytes per step

    @property
    def gpus(self) -> int:
        return self.parts * (2 if self.cfg_halves else 1)

    @property
    def total_s(self) -> float:
        # No overlap of communication with compute: an upper bound on what a tuned implementation would take.
        return self.compute_s + self.transfer_s + self.latency_s


def compute_share(parts: int, shape: VideoShape = SVD_XT, temporal_share: float = TEMPORAL_FLOP_SHARE) -> float:
    """The busiest rank's fraction of one UNet call: ceil(F/P)/F of the frame-sharded layers plus, for the
    position-sharded ones, ceil(HW/P)/HW at the level where that is worst (the innermost, fewest positions)."""
    position_share = max(
        max_share(s.height * s.width, parts) for s in switches(shape.unet_config, shape.height, shape.width)
    )
    return (1 - temporal_share) * max_share(shape.frames, parts) + temporal_share * position_share


def wide_step(
    step_s: float,
    parts: int,
    link: Link,
    cfg_halves: bool = False,
    shape: VideoShape = SVD_XT,
    temporal_share: float = TEMPORAL_FLOP_SHARE,
) -> WideStep:
    """A guided step (the UNet on [uncond, cond]) that takes `step_s` on one GPU, spread over P GPUs, or over
    two groups of P with `cfg_halves` (each group one half, batch 1; ASSUMED to cost half the batch of two).

    With halves, each rank then swaps its frames of the prediction with its counterpart in the other group for
    the guidance mix; the Euler update is per element, so latents stay sharded from step to step."""
    if parts < 1 or step_s <= 0:
        raise ValueError(f"need parts >= 1 and a positive step time, got parts={parts}, step_s={step_s}")
    batch = 1 if cfg_halves else 2
    per_call_s = step_s / 2 if cfg_halves else step_s
    traffic = forward_bytes(shape.unet_config, batch, shape.frames, shape.height, shape.width, parts, shape.item_bytes)
    sent = max(traffic.total_bytes) if parts > 1 else 0
    collectives = traffic.all_to_all_calls + traffic.stats_calls if parts > 1 else 0
    if cfg_halves:
        out_channels = shape.unet_config.get("out_channels", 4)
        sent += max(frame_splits(shape.frames, parts)) * out_channels * shape.height * shape.width * shape.item_bytes
        collectives += 1
    return WideStep(
        parts=parts,
        cfg_halves=cfg_halves,
        compute_s=per_call_s * compute_share(parts, shape, temporal_share),
        transfer_s=sent / link.bandwidth,
        latency_s=collectives * link.latency_s,
        bytes_per_rank=sent,
    )


@dataclass(frozen=True)
class Projection:
    """An idle request's latency with wide steps, against one GPU doing everything."""

    label: str
    link: str
    step: WideStep
    one_gpu_step_s: float
    latency_s: float  # hop + encode + steps x wide step + decode (one GPU) + mux
    one_gpu_latency_s: float
    # The same with the decode's frames spread over the step's GPUs in contiguous chunks: equal to the pipeline
    # with decode_chunk_size = ceil(F / GPUs) (the VAE decoder mixes frames within a chunk), not to one chunk.
    latency_split_decode_s: float

    @property
    def step_ratio(self) -> float:
        return self.step.total_s / self.one_gpu_step_s

    @property
    def latency_ratio(self) -> float:
        return self.latency_s / self.one_gpu_latency_s

    @property
    def latency_split_decode_ratio(self) -> float:
        return self.latency_split_decode_s / self.one_gpu_latency_s


def project(
    label: str,
    parts: int,
    cfg_halves: bool,
    link: Link,
    step_s: float,
    steps: int,
    encode_s: float,
    decode_s: float,
    mux_s: float,
    hop_s: float,
    shape: VideoShape = SVD_XT,
) -> Projection:
    """Idle-request latency (nothing else queued) with every step wide, from one-GPU phase costs."""
    step = wide_step(step_s, parts, link, cfg_halves, shape)
    fixed = hop_s + encode_s + mux_s
    return Projection(
        label=label,
        link=link.name,
        step=step,
        one_gpu_step_s=step_s,
        latency_s=fixed + steps * step.total_s + decode_s,
        one_gpu_latency_s=fixed + steps * step_s + decode_s,
        latency_split_decode_s=fixed + steps * step.total_s + decode_s * max_share(shape.frames, step.gpus),
    )
