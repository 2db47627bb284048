"""Pure helpers of wide steps: uneven frame and position splits (never padded), and the analytic byte count."""

from __future__ import annotations

import pytest

from svdpipe.architectures import FULL_UNET, TINY_UNET
from svdpipe.wide.splits import FrameShard, even_splits, frame_splits, max_share, offsets, position_splits, shard_range
from svdpipe.wide.traffic import forward_bytes, gather_bytes, switches


def test_even_splits_are_contiguous_uneven_and_unpadded():
    assert even_splits(7, 2) == [4, 3]
    assert even_splits(7, 3) == [3, 2, 2]
    assert even_splits(7, 4) == [2, 2, 2, 1]
    assert even_splits(25, 7) == [4, 4, 4, 4, 3, 3, 3]
    assert even_splits(8, 4) == [2, 2, 2, 2]
    for n in range(1, 30):
        for parts in range(1, n + 1):
            sizes = even_splits(n, parts)
            assert sum(sizes) == n and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_splits_refuse_empty_shards_and_bad_ranks():
    with pytest.raises(ValueError, match="without an empty shard"):
        even_splits(3, 4)
    with pytest.raises(ValueError, match="at least 1"):
        even_splits(3, 0)
    with pytest.raises(ValueError, match="outside"):
        shard_range(7, 2, 2)


def test_ranges_offsets_and_frame_shards():
    assert offsets([3, 2, 2]) == [0, 3, 5]
    assert [shard_range(7, 3, r) for r in range(3)] == [range(0, 3), range(3, 5), range(5, 7)]
    assert position_splits(10, 14, 3) == [47, 47, 46]
    assert frame_splits(25, 4) == [7, 6, 6, 6]
    shard = FrameShard.of(2, 7, 3, 2)
    assert (shard.frames, shard.parts, shard.local_frames, shard.start) == (7, 3, 2, 5)
    assert shard.frame_slice == slice(5, 7)
    with pytest.raises(ValueError, match="outside"):
        FrameShard.of(2, 7, 3, 3)


def test_per_frame_guidance_is_sliced_by_global_frame():
    import torch

    from svdpipe.sampler import guidance_scales

    full = guidance_scales(1.0, 3.0, 7, 1, 5)  # rises from the first to the last frame of the whole video
    parts = [full[:, FrameShard.of(1, 7, 3, r).frame_slice] for r in range(3)]
    assert torch.equal(torch.cat(parts, dim=1), full)
    assert parts[2][0, 0].item() == full[0, 5].item()  # rank 2 starts at global frame 5, not 0


def test_max_share_is_the_busiest_ranks_fraction():
    assert max_share(25, 4) == 7 / 25
    assert max_share(25, 7) == 4 / 25
    assert max_share(72 * 128, 4) == 0.25


def test_layout_switches_follow_the_unet_blocks():
    tiny = switches(TINY_UNET, 10, 14)
    # down: 2 (resnet, transformer) + 2 resnets; mid: resnet, transformer, resnet; up: 3 resnets + 3 pairs
    assert sum(s.norms == 2 for s in tiny) == 12 and sum(s.norms == 0 for s in tiny) == 6
    assert {(s.height, s.width) for s in tiny} == {(10, 14), (5, 7)}
    full = switches(FULL_UNET, 72, 128)
    assert sum(s.norms == 2 for s in full) == 2 * 4 + 2 + 3 * 4  # 22 temporal ResNets
    assert sum(s.norms == 0 for s in full) == 2 * 3 + 1 + 3 * 3  # 16 transformers
    assert {(s.height, s.width) for s in full} == {(72, 128), (36, 64), (18, 32), (9, 16)}


def test_forward_bytes_by_hand_for_one_level():
    config = {
        "block_out_channels": (32,),
        "down_block_types": ("DownBlockSpatioTemporal",),
        "up_block_types": ("UpBlockSpatioTemporal",),
        "layers_per_block": 1,
        "num_attention_heads": 1,
    }
    # resnets: 1 down, 2 mid (plus one mid transformer), 2 up: 5 resnets, 1 transformer, all 32 channels at 2x3
    traffic = forward_bytes(config, batch=1, frames=3, height=2, width=3, parts=2, item_bytes=2)
    # rank 0: 2 frames x 3 other positions + 3 positions x 1 other frame, of 32 channels, each way once per switch
    per_switch_rank0 = (2 * 3 + 3 * 1) * 32 * 2
    per_switch_rank1 = (1 * 3 + 3 * 2) * 32 * 2
    assert traffic.all_to_all_bytes == (6 * per_switch_rank0, 6 * per_switch_rank1)
    assert traffic.all_to_all_calls == 12 and traffic.stats_calls == 10
    assert traffic.stats_bytes == (10 * 64 * 8, 10 * 64 * 8)  # mean and variance of 32 groups, fp64
    assert gather_bytes(1, 3, 4, 2, 3, 2, 2) == (2 * 4 * 6 * 2, 1 * 4 * 6 * 2)


def test_one_rank_moves_nothing():
    traffic = forward_bytes(TINY_UNET, 2, 7, 10, 14, 1, 4)
    assert traffic.total_bytes == (0,)
