"""`UNetSpatioTemporalConditionModel.forward` for one rank of a wide step: the rank's frames in, the same frames
of the prediction out, exact against the single-process forward.

Per-frame layers (conv_in/out, spatial ResNets and attention, down/up-sampling, their GroupNorms) run on the
rank's frames; temporal layers run on a shard of positions holding every frame (`resblock`, `transformer`).
The module and its weights are the caller's; nothing is copied. The forward re-walks diffusers' blocks, so it is
tied to the diffusers versions it was checked against (`TESTED_DIFFUSERS`) and refuses others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from svdpipe.wide.resblock import wide_resblock
from svdpipe.wide.splits import FrameShard, shard_range
from svdpipe.wide.transformer import wide_transformer

if TYPE_CHECKING:
    import torch
    from diffusers import UNetSpatioTemporalConditionModel

    from svdpipe.wide.comm import Communicator

TESTED_DIFFUSERS = ("0.42",)  # major.minor series whose SVD forwards this module mirrors


def check_diffusers_version(version: str | None = None) -> None:
    """Raise RuntimeError unless diffusers (or `version`) is in a series the wide forward was checked against."""
    if version is None:
        import diffusers

        version = diffusers.__version__
    series = ".".join(version.split(".")[:2])
    if series not in TESTED_DIFFUSERS:
        tested = ", ".join(f"{s}.x" for s in TESTED_DIFFUSERS)
        raise RuntimeError(
            f"the wide UNet forward mirrors diffusers {tested} and was not checked against diffusers {version}; "
            "check its forwards (unet_spatio_temporal_condition, resnet, transformer_temporal) and extend "
            "TESTED_DIFFUSERS"
        )


def shard_frames(sample: torch.Tensor, parts: int, rank: int) -> torch.Tensor:
    """Rank `rank`'s frames of a full (B, F, ...) sample: what it passes to `wide_unet_forward`."""
    frames = shard_range(sample.shape[1], parts, rank)
    return sample[:, frames.start : frames.stop]


def gather_frames(comm: Communicator, shard: torch.Tensor, frames: int) -> torch.Tensor:
    """Every rank's frame shard (B, F_r, ...) joined into the full (B, F, ...) on every rank (an all-gather of
    uneven shards, through the all-to-all; its bytes are counted like the forward's)."""
    import torch

    shards = FrameShard.of(shard.shape[0], frames, comm.size, comm.rank)
    per_frame = shard[0, 0].numel() if shard.shape[1] else 0
    send = shard.reshape(-1).repeat(comm.size)
    recv_sizes = [shards.batch * f * per_frame for f in shards.frame_sizes]
    recv = comm.all_to_all(send, [shard.numel()] * comm.size, recv_sizes)
    chunks = zip(recv.split(recv_sizes), shards.frame_sizes, strict=True)
    return torch.cat([c.view(shards.batch, f, *shard.shape[2:]) for c, f in chunks], dim=1)


def lowest_resolution(unet: UNetSpatioTemporalConditionModel, height: int, width: int) -> tuple[int, int]:
    """(H, W) of the innermost level: each downsampler (3x3, stride 2, padding 1) takes ceil of half."""
    for _ in range(unet.num_upsamplers):
        height, width = (height + 1) // 2, (width + 1) // 2
    return height, width


def _check_shapes(unet: UNetSpatioTemporalConditionModel, sample: torch.Tensor, shard: FrameShard) -> None:
    if sample.ndim != 5 or sample.shape[1] != shard.local_frames:
        raise ValueError(
            f"rank {shard.rank} of {shard.parts} holds {shard.local_frames} of {shard.frames} frames; "
            f"expected a (batch, {shard.local_frames}, channels, height, width) sample, got {tuple(sample.shape)}"
        )
    low_h, low_w = lowest_resolution(unet, *sample.shape[-2:])
    if low_h * low_w < shard.parts:
        raise ValueError(
            f"the innermost level has {low_h}x{low_w} positions, fewer than the {shard.parts} ranks sharing them"
        )


def wide_unet_forward(
    unet: UNetSpatioTemporalConditionModel,
    comm: Communicator,
    sample: torch.Tensor,
    timestep: torch.Tensor | float | int,
    encoder_hidden_states: torch.Tensor,
    added_time_ids: torch.Tensor,
    num_frames: int,
) -> torch.Tensor:
    """This rank's frames of `unet(sample, timestep, encoder_hidden_states, added_time_ids).sample`.

    Every rank of `comm` calls this together, with:
    - sample: its own frames (B, F_r, C_in, H, W), `shard_frames(full_sample, comm.size, comm.rank)`; frames are
      split contiguously, the first F % P ranks holding one more (`frame_splits`);
    - timestep, encoder_hidden_states (B, L, D), added_time_ids (B, 3): the whole batch's, as for the UNet;
    - num_frames: F, the frame count of the whole sample.
    Returns its frames of the prediction (B, F_r, C_out, H, W); `gather_frames` joins them. B may be 2 (the
    unconditional and conditional halves of classifier-free guidance)."""
    import torch
    from diffusers.utils.torch_utils import maybe_adjust_dtype_for_device

    check_diffusers_version()
    batch = sample.shape[0]
    shard = FrameShard.of(batch, num_frames, comm.size, comm.rank)
    _check_shapes(unet, sample, shard)
    local = shard.local_frames

    # 1. time: every rank embeds the whole batch (a few small matmuls) rather than receive it
    timesteps = timestep
    if not torch.is_tensor(timesteps):
        dtype = torch.float64 if isinstance(timestep, float) else torch.int64
        timesteps = torch.tensor([timesteps], dtype=maybe_adjust_dtype_for_device(dtype, sample.device))
        timesteps = timesteps.to(sample.device)
    elif timesteps.ndim == 0:
        timesteps = timesteps[None].to(sample.device)
    timesteps = timesteps.expand(batch)
    emb = unet.time_embedding(unet.time_proj(timesteps).to(dtype=sample.dtype))
    time_embeds = unet.add_time_proj(added_time_ids.flatten()).reshape((batch, -1)).to(emb.dtype)
    emb = emb + unet.add_embedding(time_embeds)
    # The embedding is the same for every frame of a sample; the temporal ResNets take all frames' rows.
    temb_all = emb.repeat_interleave(num_frames, dim=0)
    temb_local = emb.repeat_interleave(local, dim=0)
    context_local = encoder_hidden_states.repeat_interleave(local, dim=0)

    # 2. pre-process, per frame
    hidden = unet.conv_in(sample.flatten(0, 1))

    # 3. down, keeping every layer's output for the up path's skip connections
    skips: list[torch.Tensor] = [hidden]

    def run(block: torch.nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """A down or up block's resnets and attentions in diffusers' order; returns each layer's output."""
        outputs = ()
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for resnet, attention in zip(block.resnets, attentions, strict=True):
            if hasattr(block, "upsamplers"):  # an up block: the skip connection, popped last-in first-out
                hidden = torch.cat([hidden, skips.pop()], dim=1)
            hidden = wide_resblock(comm, resnet, hidden, temb_local, temb_all, shard)
            if attention is not None:
                hidden = wide_transformer(comm, attention, hidden, context_local, encoder_hidden_states, shard)
            outputs += (hidden,)
        return hidden, outputs

    for block in unet.down_blocks:
        hidden, outputs = run(block, hidden)
        skips.extend(outputs)
        for downsampler in block.downsamplers or []:
            hidden = downsampler(hidden)
            skips.append(hidden)

    # 4. mid: resnet, then (attention, resnet) pairs
    mid = unet.mid_block
    hidden = wide_resblock(comm, mid.resnets[0], hidden, temb_local, temb_all, shard)
    for attention, resnet in zip(mid.attentions, mid.resnets[1:], strict=True):
        hidden = wide_transformer(comm, attention, hidden, context_local, encoder_hidden_states, shard)
        hidden = wide_resblock(comm, resnet, hidden, temb_local, temb_all, shard)

    # 5. up; sizes that do not halve evenly are forced back to the down path's (as diffusers does)
    up_factor = 2**unet.num_upsamplers
    force_size = any(s % up_factor != 0 for s in sample.shape[-2:])
    for i, block in enumerate(unet.up_blocks):
        hidden, _ = run(block, hidden)
        upsample_size = skips[-1].shape[2:] if force_size and i < len(unet.up_blocks) - 1 else None
        for upsampler in block.upsamplers or []:
            hidden = upsampler(hidden, upsample_size)

    # 6. post-process, per frame
    hidden = unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))
    return hidden.reshape(batch, local, *hidden.shape[1:])
