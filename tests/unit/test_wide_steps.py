"""Guided Euler steps with the latents kept as frame shards from step to step (guidance per global frame,
gathered once at the end) equal the same steps on the full latents: what a wide stage would run."""

from __future__ import annotations

from itertools import pairwise

import torch

from svdpipe.sampler import apply_guidance, euler_step, guidance_scales, scale_model_input
from svdpipe.wide.splits import FrameShard
from svdpipe.wide.unet import gather_frames, wide_unet_forward
from tests.unit.wide_support import ThreadGroup, one_thread, tiny_unet

FRAMES, HEIGHT, WIDTH, PARTS = 7, 6, 7, 3
SIGMAS = torch.tensor([2.0, 1.2, 0.5], dtype=torch.float64)


def _steps(forward, latents, image_latents, context, time_ids, scales):
    """Two guided steps as StableVideoDiffusionPipeline runs them: [uncond, cond] batch, image latents
    concatenated on channels, per-frame guidance, Euler update."""
    for sigma, sigma_next in pairwise(SIGMAS):
        model_input = scale_model_input(torch.cat([latents] * 2), sigma)
        model_input = torch.cat([model_input, image_latents], dim=2)
        noise_pred = forward(model_input, 0.25 * sigma.log(), context, time_ids)
        latents = euler_step(apply_guidance(noise_pred, scales), latents, sigma, sigma_next)
    return latents


def test_sharded_guided_steps_equal_the_full_steps():
    unet = tiny_unet(torch.float64)
    gen = torch.Generator().manual_seed(3)
    latents = torch.randn(1, FRAMES, 4, HEIGHT, WIDTH, generator=gen, dtype=torch.float64)
    image = torch.randn(1, 1, 4, HEIGHT, WIDTH, generator=gen, dtype=torch.float64)
    image_latents = torch.cat([torch.zeros_like(image), image]).repeat(1, FRAMES, 1, 1, 1)  # uncond: zeros
    context = torch.randn(2, 1, 32, generator=gen, dtype=torch.float64)
    time_ids = torch.tensor([[6.0, 127.0, 0.02]] * 2, dtype=torch.float64)
    scales = guidance_scales(1.0, 3.0, FRAMES, 1, 5).double()

    with torch.no_grad(), one_thread():
        expected = _steps(lambda *a: unet(*a).sample, latents, image_latents, context, time_ids, scales)

    def work(comm):
        shard = FrameShard.of(2, FRAMES, PARTS, comm.rank)
        mine = shard.frame_slice
        with torch.no_grad():
            out = _steps(
                lambda *a: wide_unet_forward(unet, comm, *a, num_frames=FRAMES),
                latents[:, mine],
                image_latents[:, mine],
                context,
                time_ids,
                scales[:, mine],
            )
            return gather_frames(comm, out, FRAMES)

    for got in ThreadGroup(PARTS).run(work):
        # euler_step updates in fp32, so differences of 1e-15 in the UNet output can round to one fp32 ulp
        assert (got - expected).abs().max().item() < 1e-6
