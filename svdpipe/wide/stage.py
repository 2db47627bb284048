"""A wide stage: denoising steps [start, stop) run by the P ranks of a group together, each UNet call split over
them (svdpipe/wide/unet.py). The latents stay as frame shards from step to step (guidance and the Euler update
are per frame and per element) and are gathered once at the end, so every rank returns the whole state.

The same sampler arithmetic as stages.denoise, on each rank's frames: the result equals the single-process steps
up to float rounding of the sharded UNet (tests/ray/test_wide.py: within 1e-5 of diffusers' frames).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from svdpipe import device, sampler
from svdpipe.stages import check_steps
from svdpipe.wide.splits import FrameShard
from svdpipe.wide.unet import gather_frames, wide_unet_forward

if TYPE_CHECKING:
    from svdpipe.models import SVDModel
    from svdpipe.stages import StepCallback
    from svdpipe.state import RequestState
    from svdpipe.wide.comm import Communicator


@torch.no_grad()
def denoise_wide(
    model: SVDModel,
    state: RequestState,
    steps: range,
    comm: Communicator,
    on_step: StepCallback | None = None,
) -> RequestState:
    """Run steps [start, stop) of `state` (at `start`, whole on every rank) with this rank's share of each UNet
    call; every rank of `comm` calls this together and gets the same whole state back."""
    check_steps(state, steps)
    state = state.to(model.device)
    do_cfg = state.params.do_classifier_free_guidance
    frames = state.params.num_frames
    mine = FrameShard.of(2 if do_cfg else 1, frames, comm.size, comm.rank).frame_slice
    latents = state.latents[:, mine]
    image_latents = state.image_latents[:, mine]
    scales = state.guidance_scale[:, mine]
    sigmas = torch.tensor(state.sigmas, dtype=torch.float32)
    timesteps = torch.tensor(state.timesteps, dtype=torch.float32, device=model.device)
    unet = model.pipe.unet
    # The benchmarks' stand-in UNet (simulate.py) waits for its frames' share instead of computing.
    forward = getattr(unet, "wide_forward", None)
    done = device.step_reporter(on_step, model.device)
    for i in steps:
        sigma = sigmas[i]
        model_input = sampler.scale_model_input(torch.cat([latents] * 2) if do_cfg else latents, sigma)
        model_input = torch.cat([model_input, image_latents], dim=2)
        args = (model_input, timesteps[i], state.image_embeddings, state.added_time_ids)
        if forward is not None:
            noise_pred = forward(comm, *args, num_frames=frames)
        else:
            noise_pred = wide_unet_forward(unet, comm, *args, num_frames=frames)
        if do_cfg:
            noise_pred = sampler.apply_guidance(noise_pred, scales)
        latents = sampler.euler_step(noise_pred, latents, sigma, sigmas[i + 1], state.prediction_type)
        if done is not None:
            done.queued(i)
    if done is not None:
        done.flush()
    return state.advanced(gather_frames(comm, latents, frames), steps.stop)
