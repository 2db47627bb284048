"""`TransformerSpatioTemporalModel.forward` on a frame shard: spatial attention per frame, temporal attention
per position (two all-to-alls per layer), frame position embeddings from global frame indices.

Runs the model's own submodules and weights; only the data movement around them is new.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from svdpipe.wide.layout import frames_to_positions, positions_to_frames
from svdpipe.wide.splits import FrameShard, position_splits

if TYPE_CHECKING:
    import torch
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    from svdpipe.wide.comm import Communicator


def wide_transformer(
    comm: Communicator,
    model: TransformerSpatioTemporalModel,
    x: torch.Tensor,
    context_local: torch.Tensor,
    context: torch.Tensor,
    shard: FrameShard,
) -> torch.Tensor:
    """The model on this rank's frames x (B*F_r, C, H, W) -> (B*F_r, C, H, W).

    context_local: the cross-attention states of this rank's frames (B*F_r, L, D); context: the states of each
    sample (B, L, D). diffusers takes the temporal blocks' context from frame 0, which a rank without frame 0
    does not hold; the UNet repeats each sample's states over its frames, so frame 0's are `context`."""
    import torch

    batch, frames, local = shard.batch, shard.frames, shard.local_frames
    _, _, height, width = x.shape
    positions = position_splits(height, width, shard.parts)
    frame_sizes = list(shard.frame_sizes)
    me = shard.rank
    time_context = context[:, None].broadcast_to(batch, positions[me], *context.shape[1:])
    time_context = time_context.reshape(batch * positions[me], *context.shape[1:])

    residual = x
    hidden = model.norm(x)  # GroupNorm over (C/32, H, W) of each frame: per frame
    inner_dim = hidden.shape[1]
    hidden = model.proj_in(hidden.permute(0, 2, 3, 1).reshape(batch * local, height * width, inner_dim))

    # Frame position embedding of the global frame indices (diffusers: arange(num_frames) per sample).
    frame_ids = torch.arange(shard.start, shard.start + local, device=x.device).repeat(batch, 1).reshape(-1)
    emb = model.time_pos_embed(model.time_proj(frame_ids).to(dtype=hidden.dtype))[:, None, :]
    indicator = torch.zeros(batch, local, dtype=hidden.dtype, device=x.device)

    for block, temporal_block in zip(model.transformer_blocks, model.temporal_transformer_blocks, strict=True):
        hidden = block(hidden, encoder_hidden_states=context_local)
        mix = (hidden + emb).view(batch, local, height * width, -1)
        mix = frames_to_positions(comm, mix, frame_sizes, positions)
        mix = temporal_block(
            mix.reshape(batch * frames, positions[me], -1), num_frames=frames, encoder_hidden_states=time_context
        )
        mix = positions_to_frames(comm, mix.view(batch, frames, positions[me], -1), frame_sizes, positions)
        hidden = model.time_mixer(
            x_spatial=hidden, x_temporal=mix.reshape(batch * local, height * width, -1), image_only_indicator=indicator
        )

    hidden = model.proj_out(hidden)
    hidden = hidden.reshape(batch * local, height, width, inner_dim).permute(0, 3, 1, 2).contiguous()
    return hidden + residual
