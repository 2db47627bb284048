"""The wide forwards of one SpatioTemporalResBlock and one TransformerSpatioTemporalModel, ranks simulated in
threads of one process: exact against diffusers' own block forward; plus the forward's refusals."""

from __future__ import annotations

import pytest
import torch

from svdpipe.wide.resblock import wide_resblock
from svdpipe.wide.splits import FrameShard, shard_range
from svdpipe.wide.transformer import wide_transformer
from svdpipe.wide.unet import check_diffusers_version, shard_frames, wide_unet_forward
from tests.unit.wide_support import LocalStats, ThreadGroup, one_thread, tiny_unet, unet_inputs

BATCH, FRAMES, HEIGHT, WIDTH = 2, 7, 6, 7  # uneven over 2, 3 and 4 ranks, in frames and positions


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(torch.float64)


def _frames_of(x: torch.Tensor, parts: int, rank: int) -> torch.Tensor:
    """Rank `rank`'s rows of a (B*F, ...) tensor."""
    frames = shard_range(FRAMES, parts, rank)
    return x.view(BATCH, FRAMES, *x.shape[1:])[:, frames.start : frames.stop].flatten(0, 1)


def _run_resblock(block, x, temb, parts, wrap=None):
    def work(comm):
        with torch.no_grad():
            shard = FrameShard.of(BATCH, FRAMES, parts, comm.rank)
            local = _frames_of(x, parts, comm.rank)
            out = wide_resblock(
                wrap(comm) if wrap else comm, block, local, _frames_of(temb, parts, comm.rank), temb, shard
            )
            return out.view(BATCH, -1, *out.shape[1:])

    return torch.cat(ThreadGroup(parts).run(work), dim=1).flatten(0, 1)


@pytest.mark.parametrize("parts", [2, 3, 4])
def test_resblock_is_exact(unet, parts):
    block = unet.down_blocks[0].resnets[0]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH * FRAMES, block.spatial_res_block.in_channels, HEIGHT, WIDTH, generator=gen).double()
    temb = torch.randn(BATCH, 128, generator=gen).double().repeat_interleave(FRAMES, dim=0)
    indicator = torch.zeros(BATCH, FRAMES, dtype=torch.float64)
    with torch.no_grad(), one_thread():
        expected = block(x, temb, image_only_indicator=indicator)
    assert (_run_resblock(block, x, temb, parts) - expected).abs().max().item() < 1e-12
    # the negative control: GroupNorm statistics of the local positions only
    assert (_run_resblock(block, x, temb, parts, LocalStats) - expected).abs().max().item() > 1e-4


@pytest.mark.parametrize("parts", [2, 3, 4])
def test_transformer_is_exact(unet, parts):
    model = unet.down_blocks[0].attentions[0]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(BATCH * FRAMES, model.in_channels, HEIGHT, WIDTH, generator=gen).double()
    context = torch.randn(BATCH, 1, 32, generator=gen).double()
    context_all = context.repeat_interleave(FRAMES, dim=0)
    indicator = torch.zeros(BATCH, FRAMES, dtype=torch.float64)
    with torch.no_grad(), one_thread():
        expected = model(x, encoder_hidden_states=context_all, image_only_indicator=indicator, return_dict=False)[0]

    def work(comm):
        with torch.no_grad():
            shard = FrameShard.of(BATCH, FRAMES, parts, comm.rank)
            local = _frames_of(x, parts, comm.rank)
            out = wide_transformer(comm, model, local, _frames_of(context_all, parts, comm.rank), context, shard)
            return out.view(BATCH, -1, *out.shape[1:]), comm.count

    results = ThreadGroup(parts).run(work)
    got = torch.cat([r[0] for r in results], dim=1).flatten(0, 1)
    assert (got - expected).abs().max().item() < 1e-12
    assert all(r[1].all_to_all_calls == 2 and r[1].stats_calls == 0 for r in results)


def test_refuses_untested_diffusers_versions():
    check_diffusers_version("0.42.1")
    for version in ("0.41.0", "0.43.0", "1.42.0"):
        with pytest.raises(RuntimeError, match=rf"0\.42\.x.*{version}"):
            check_diffusers_version(version)


def test_refuses_shards_that_do_not_fit(unet):
    inputs = unet_inputs(unet, 1, 3, 4, 4, torch.float64)
    sample = inputs.pop("sample")

    def forward(comm, frames, sample):
        return wide_unet_forward(unet, comm, sample, **inputs, num_frames=frames)

    with pytest.raises(ValueError, match="without an empty shard"):  # 3 frames over 4 ranks
        ThreadGroup(4).run(lambda comm: forward(comm, 3, sample[:, :1]))
    with pytest.raises(ValueError, match="holds 2 of 3 frames"):  # rank 0 handed every frame
        ThreadGroup(2).run(lambda comm: forward(comm, 3, sample))
    # 2x2 positions at the innermost level of a 4x4 latent: not enough for 5 ranks
    wide = unet_inputs(unet, 1, 5, 4, 4, torch.float64)["sample"]
    with pytest.raises(ValueError, match="fewer than the 5 ranks"):
        ThreadGroup(5).run(lambda comm: forward(comm, 5, shard_frames(wide, 5, comm.rank)))
