"""The bytes of a wide forward of SVD-XT itself (25 frames, 72x128 latent, fp16, the CFG batch of two), counted
by running the wide forward on meta tensors (shapes only, no weights or arithmetic) against the analytic count."""

from __future__ import annotations

import torch

from svdpipe.architectures import FULL_UNET
from svdpipe.wide.splits import frame_splits
from svdpipe.wide.traffic import forward_bytes
from svdpipe.wide.unet import wide_unet_forward
from tests.unit.wide_support import ThreadGroup

BATCH, FRAMES, HEIGHT, WIDTH, PARTS = 2, 25, 72, 128, 7  # 7 ranks: frames and every level's positions uneven


def test_svd_xt_bytes_match_the_analytic_count():
    from diffusers import UNetSpatioTemporalConditionModel

    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(**{**FULL_UNET, "num_frames": FRAMES})
    unet = unet.half().to("meta")  # AlphaBlender builds mix_factor with torch.Tensor([...]), on the CPU
    meta = {"device": "meta", "dtype": torch.half}

    def work(comm):
        frames = frame_splits(FRAMES, PARTS)[comm.rank]
        with torch.no_grad():
            out = wide_unet_forward(
                unet,
                comm,
                torch.empty(BATCH, frames, 8, HEIGHT, WIDTH, **meta),
                torch.tensor([1.0], device="meta"),
                torch.empty(BATCH, 1, 1024, **meta),
                torch.empty(BATCH, 3, **meta),
                FRAMES,
            )
        assert out.shape == (BATCH, frames, 4, HEIGHT, WIDTH)
        return comm.count

    counts = ThreadGroup(PARTS).run(work)
    expected = forward_bytes(unet.config, BATCH, FRAMES, HEIGHT, WIDTH, PARTS, 2)
    assert tuple(c.all_to_all_bytes for c in counts) == expected.all_to_all_bytes
    assert tuple(c.stats_bytes for c in counts) == expected.stats_bytes
    assert {(c.all_to_all_calls, c.stats_calls) for c in counts} == {(76, 44)}
