"""`SpatioTemporalResBlock.forward` on a frame shard: the spatial ResNet per frame, the temporal ResNet and the
blend per position, with distributed GroupNorm statistics; two all-to-alls.

Runs the block's own submodules and weights; only the data movement around them is new.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from svdpipe.wide.groupnorm import distributed_group_norm
from svdpipe.wide.layout import frames_to_positions, positions_to_frames
from svdpipe.wide.splits import FrameShard, position_splits

if TYPE_CHECKING:
    import torch
    from diffusers.models.resnet import SpatioTemporalResBlock, TemporalResnetBlock

    from svdpipe.wide.comm import Communicator


def temporal_resnet(
    comm: Communicator, block: TemporalResnetBlock, x: torch.Tensor, temb: torch.Tensor | None, positions: list[int]
) -> torch.Tensor:
    """`TemporalResnetBlock.forward` on a position shard x (B, C, F, S_r, 1), temb (B, F, T) of every frame;
    `positions[q]`: how many positions rank q holds.

    The (3, 1, 1) convolutions act per position, so a column of positions is as good as the (H, W) plane; only
    the two GroupNorms, whose statistics span all positions, talk to the other ranks."""

    def norm(module: torch.nn.GroupNorm, h: torch.Tensor) -> torch.Tensor:
        per_position = h.shape[1] // module.num_groups * h.shape[2]  # channels of a group x frames
        return distributed_group_norm(comm, module, h, [per_position * n for n in positions])

    hidden = block.conv1(block.nonlinearity(norm(block.norm1, x)))
    if block.time_emb_proj is not None:
        temb = block.time_emb_proj(block.nonlinearity(temb))[:, :, :, None, None]
        hidden = hidden + temb.permute(0, 2, 1, 3, 4)
    hidden = norm(block.norm2, hidden)
    hidden = block.conv2(block.dropout(block.nonlinearity(hidden)))
    shortcut = block.conv_shortcut(x) if block.conv_shortcut is not None else x
    return shortcut + hidden


def wide_resblock(
    comm: Communicator,
    block: SpatioTemporalResBlock,
    x: torch.Tensor,
    temb_local: torch.Tensor | None,
    temb_all: torch.Tensor | None,
    shard: FrameShard,
) -> torch.Tensor:
    """The block on this rank's frames x (B*F_r, C, H, W) -> (B*F_r, C_out, H, W).

    temb_local: the time embedding of this rank's frames (B*F_r, T); temb_all: of every frame (B*F, T), which
    the temporal ResNet, holding all frames of its positions, needs."""
    import torch

    batch, frames = shard.batch, shard.frames
    hidden = block.spatial_res_block(x, temb_local)
    _, channels, height, width = hidden.shape
    positions = position_splits(height, width, shard.parts)
    frame_sizes = list(shard.frame_sizes)

    # 1. frame layout -> position layout (B, C, F, S_r, 1): the temporal ResNet's (B, C, F, H, W) with (H, W)
    #    replaced by a column of this rank's positions
    seq = hidden.view(batch, shard.local_frames, channels, height * width).transpose(2, 3)
    columns = frames_to_positions(comm, seq, frame_sizes, positions)
    spatial = columns.permute(0, 3, 1, 2).unsqueeze(-1)

    # 2. temporal ResNet, and the blend (per element) while the layout is at hand
    temb = temb_all.view(batch, frames, -1) if temb_all is not None else None
    temporal = temporal_resnet(comm, block.temporal_res_block, spatial, temb, positions)
    indicator = torch.zeros(batch, frames, dtype=hidden.dtype, device=hidden.device)
    mixed = block.time_mixer(x_spatial=spatial, x_temporal=temporal, image_only_indicator=indicator)

    # 3. back to this rank's frames
    back = positions_to_frames(comm, mixed.squeeze(-1).permute(0, 2, 3, 1), frame_sizes, positions)
    return back.transpose(2, 3).reshape(batch * shard.local_frames, channels, height, width)
