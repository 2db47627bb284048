"""Switching a wide step's activations between the frame layout and the position layout with one all-to-all.

Both layouts are (batch, frames, positions, channels) with positions the flattened height x width:
- frame layout: this rank's frames, every position: (B, F_r, H*W, C), for per-frame layers;
- position layout: every frame, this rank's positions: (B, F, S_r, C), for temporal layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from svdpipe.wide.splits import offsets

if TYPE_CHECKING:
    import torch

    from svdpipe.wide.comm import Communicator


def frames_to_positions(
    comm: Communicator, x: torch.Tensor, frame_sizes: list[int], position_sizes: list[int]
) -> torch.Tensor:
    """(B, F_r, S, C) on rank r -> (B, F, S_r, C): each rank sends every other rank that rank's positions."""
    import torch

    batch, _, positions, channels = x.shape
    me = comm.rank
    assert x.shape[1] == frame_sizes[me] and positions == sum(position_sizes), "shard shape disagrees with splits"
    starts = offsets(position_sizes)
    send = torch.cat([x[:, :, s : s + n].reshape(-1) for s, n in zip(starts, position_sizes, strict=True)])
    send_sizes = [batch * frame_sizes[me] * n * channels for n in position_sizes]
    recv_sizes = [batch * f * position_sizes[me] * channels for f in frame_sizes]
    recv = comm.all_to_all(send, send_sizes, recv_sizes)
    chunks = recv.split(recv_sizes)
    return torch.cat(
        [c.view(batch, f, position_sizes[me], channels) for c, f in zip(chunks, frame_sizes, strict=True)], dim=1
    )


def positions_to_frames(
    comm: Communicator, x: torch.Tensor, frame_sizes: list[int], position_sizes: list[int]
) -> torch.Tensor:
    """(B, F, S_r, C) on rank r -> (B, F_r, S, C): the inverse of `frames_to_positions`."""
    import torch

    batch, frames, _, channels = x.shape
    me = comm.rank
    assert x.shape[2] == position_sizes[me] and frames == sum(frame_sizes), "shard shape disagrees with splits"
    starts = offsets(frame_sizes)
    send = torch.cat([x[:, s : s + n].reshape(-1) for s, n in zip(starts, frame_sizes, strict=True)])
    send_sizes = [batch * n * position_sizes[me] * channels for n in frame_sizes]
    recv_sizes = [batch * frame_sizes[me] * n * channels for n in position_sizes]
    recv = comm.all_to_all(send, send_sizes, recv_sizes)
    chunks = recv.split(recv_sizes)
    return torch.cat(
        [c.view(batch, frame_sizes[me], n, channels) for c, n in zip(chunks, position_sizes, strict=True)], dim=2
    )
