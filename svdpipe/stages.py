"""The three phases of SVD sampling as plain torch: encode, denoise a step range, decode.

Encoding and decoding call diffusers' own StableVideoDiffusionPipeline helpers (CLIP preprocessing, VAE
preprocessing, latent preparation, VAE decoding, post-processing), in the order its __call__ uses, so
nothing in them is re-implemented. Denoising is sampler.py's pure math driven by the state's position.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import PIL.Image
import torch

from svdpipe import device, sampler
from svdpipe.config import ResolvedParams
from svdpipe.images import clip_ready
from svdpipe.models import SVDModel
from svdpipe.state import RequestState

StepCallback = Callable[[int], None]
Half = Literal[0, 1]  # a guidance half: 0 unconditional, 1 conditional (the row order of the CFG batch)
# Starts the conditional half's prediction for (latents, step) elsewhere (the latents in host memory) and returns
# a function that waits for it; the wait gives None when the helper declined (it had other work), and this
# process computes that half.
HalfFuture = Callable[[torch.Tensor, int], Callable[[], torch.Tensor | None]]


@torch.no_grad()
def encode(
    model: SVDModel, image: PIL.Image.Image, params: ResolvedParams, request_id: str = "", output_format: str = "npy"
) -> RequestState:
    """CLIP + VAE encoding, initial noise and schedule: the request state before step 0."""
    from diffusers.utils.torch_utils import randn_tensor

    pipe, device = model.pipe, model.device
    do_cfg = params.do_classifier_free_guidance
    # diffusers draws from one CPU generator in this order: noise augmentation, then initial latents.
    generator = torch.Generator("cpu").manual_seed(params.seed)

    # 1. CLIP image embedding (diffusers' resize-to-224 + CLIPImageProcessor normalisation; a 1-pixel side is
    # repeated, as diffusers' blur cannot pad it).
    image_embeddings = pipe._encode_image(clip_ready(image), device, 1, do_cfg)

    # 2. VAE latents of the noise-augmented image.
    pixels = pipe.video_processor.preprocess(image, height=params.height, width=params.width).to(device)
    noise = randn_tensor(pixels.shape, generator=generator, device=device, dtype=pixels.dtype)
    pixels = pixels + params.noise_aug_strength * noise
    image_latents = _encode_vae_image(model, pixels, do_cfg).to(image_embeddings.dtype)
    image_latents = image_latents.unsqueeze(1).repeat(1, params.num_frames, 1, 1, 1)

    # 3. Micro-conditioning. SVD was trained on fps - 1, hence the shift (as in diffusers).
    added_time_ids = torch.tensor(
        [[params.fps - 1, params.motion_bucket_id, params.noise_aug_strength]], dtype=image_embeddings.dtype
    )
    _check_time_embedding(model, added_time_ids.shape[1])
    if do_cfg:
        added_time_ids = torch.cat([added_time_ids, added_time_ids])
    added_time_ids = added_time_ids.to(device)

    # 4. Schedule and initial latents. A scheduler of this request's own, never the pipeline's shared one: an
    # actor may hold several requests, and set_timesteps rewrites the scheduler. init_noise_sigma depends on the
    # schedule, and diffusers' prepare_latents scales by it: randn x init_noise_sigma, drawn as diffusers does.
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(params.num_inference_steps, device=device)
    shape = (
        1,
        params.num_frames,
        model.unet_config["in_channels"] // 2,
        params.height // pipe.vae_scale_factor,
        params.width // pipe.vae_scale_factor,
    )
    latents = randn_tensor(shape, generator=generator, device=device, dtype=image_embeddings.dtype)
    latents = latents * scheduler.init_noise_sigma

    # 5. Per-frame guidance, rising from the first frame to the last.
    guidance = sampler.guidance_scales(
        params.min_guidance_scale, params.max_guidance_scale, params.num_frames, 1, latents.ndim
    ).to(device, latents.dtype)

    return RequestState(
        request_id=request_id,
        params=params,
        latents=latents,
        image_latents=image_latents,
        image_embeddings=image_embeddings,
        added_time_ids=added_time_ids,
        guidance_scale=guidance,
        sigmas=tuple(scheduler.sigmas.tolist()),
        timesteps=tuple(scheduler.timesteps.tolist()),
        prediction_type=scheduler.config.prediction_type,
        output_format=output_format,
    )


def _encode_vae_image(model: SVDModel, pixels: torch.Tensor, do_cfg: bool) -> torch.Tensor:
    """diffusers' _encode_vae_image, on the VAE copy kept for encoding (models.SVDModel.encode_vae): an fp16 VAE
    that must upcast to encode is not cast back and forth in place, which would race with a decode."""
    vae = model.encode_vae if model.encode_vae is not None else model.pipe.vae
    latents = vae.encode(pixels.to(device=model.device, dtype=vae.dtype)).latent_dist.mode()
    if do_cfg:
        latents = torch.cat([torch.zeros_like(latents), latents])
    return latents


def _check_time_embedding(model: SVDModel, num_ids: int) -> None:
    cfg = model.unet_config
    if cfg["addition_time_embed_dim"] * num_ids != cfg["projection_class_embeddings_input_dim"]:
        raise ValueError("the UNet config's added time embedding does not take SVD's 3 conditioning ids")


def check_steps(state: RequestState, steps: range) -> None:
    """A stage's steps must start where the request's state is and end within its schedule."""
    if state.step != steps.start:
        raise RuntimeError(f"request {state.request_id} is at step {state.step}, stage expects {steps.start}")
    if steps.stop > state.num_steps:
        raise RuntimeError(f"step range {steps} exceeds the request's {state.num_steps} steps")


@torch.no_grad()
def denoise(
    model: SVDModel,
    state: RequestState,
    steps: range,
    on_step: StepCallback | None = None,
) -> RequestState:
    """Run denoising steps [start, stop) on `state`, which must be at `start`; returns a fresh state."""
    check_steps(state, steps)
    state = state.to(model.device)
    do_cfg = state.params.do_classifier_free_guidance
    latents = state.latents
    # float32 tensors from the exact float32 values: sigmas on the CPU and timesteps on the device, as in
    # diffusers' scheduler, so the arithmetic below is the same to the bit.
    sigmas = torch.tensor(state.sigmas, dtype=torch.float32)
    timesteps = torch.tensor(state.timesteps, dtype=torch.float32, device=model.device)
    # Kernels are queued asynchronously on a GPU: a step is reported once its work has finished.
    done = device.step_reporter(on_step, model.device)
    for i in steps:
        sigma = sigmas[i]
        model_input = torch.cat([latents] * 2) if do_cfg else latents
        noise_pred = _predict(model, state, model_input, i, timesteps, slice(None))
        if do_cfg:
            noise_pred = sampler.apply_guidance(noise_pred, state.guidance_scale)
        latents = sampler.euler_step(noise_pred, latents, sigma, sigmas[i + 1], state.prediction_type)
        if done is not None:
            done.queued(i)
    if done is not None:
        done.flush()
    return state.advanced(latents, steps.stop)


@torch.no_grad()
def predict_half(
    model: SVDModel,
    state: RequestState,
    latents: torch.Tensor,
    i: int,
    half: Half,
) -> torch.Tensor:
    """One guidance half's noise prediction at step i: the UNet on a batch of one.

    Under CFG the conditioning tensors are stacked [uncond, cond]; row `half` of each is this half's. (The
    stand-in UNet of simulate.py waits in proportion to the batch, so a simulated half costs half a step.)
    """
    if not state.params.do_classifier_free_guidance:
        raise RuntimeError(f"request {state.request_id} has no guidance halves (max_guidance_scale <= 1)")
    state = state.to(model.device)
    timesteps = torch.tensor(state.timesteps, dtype=torch.float32, device=model.device)
    return _predict(model, state, latents.to(model.device), i, timesteps, slice(half, half + 1))


@torch.no_grad()
def denoise_split(
    model: SVDModel,
    state: RequestState,
    steps: range,
    other_half: HalfFuture,
    on_step: StepCallback | None = None,
) -> RequestState:
    """denoise() with each step's conditional half computed elsewhere (`other_half`) while this process
    computes the unconditional one; the halves meet in the same guidance and Euler arithmetic.

    Only the UNet's batch changes (two calls of one instead of one of two), so the result equals denoise()'s
    up to the UNet's batch-size rounding (on CPU fp32 about 2e-7 per call on the tiny model).
    """
    if not state.params.do_classifier_free_guidance:
        raise RuntimeError(f"request {state.request_id} has no guidance halves to split (max_guidance_scale <= 1)")
    check_steps(state, steps)
    state = state.to(model.device)
    latents = state.latents
    sigmas = torch.tensor(state.sigmas, dtype=torch.float32)
    timesteps = torch.tensor(state.timesteps, dtype=torch.float32, device=model.device)
    done = device.step_reporter(on_step, model.device)
    owner_first = device.launch_owner_half_first(model.device)
    for i in steps:
        # 1. both halves start before either is awaited: on a GPU the owner queues its half first and the
        # latents go to the helper from a side-stream copy meanwhile; on the CPU, where the owner's half runs
        # to completion when called, the helper gets the latents first
        host_latents = device.host_copy(latents)
        if owner_first:
            uncond = _predict(model, state, latents, i, timesteps, slice(0, 1))
            wait_cond = other_half(host_latents(), i)
        else:
            wait_cond = other_half(host_latents(), i)
            uncond = _predict(model, state, latents, i, timesteps, slice(0, 1))
        cond = wait_cond()
        if cond is None:  # the same batch-of-one call here, so the result does not depend on who computed it
            cond = _predict(model, state, latents, i, timesteps, slice(1, 2))
        cond = cond.to(uncond.device)
        # 2. the same guidance and Euler update as the unsplit path
        noise_pred = sampler.guide(uncond, cond, state.guidance_scale)
        latents = sampler.euler_step(noise_pred, latents, sigmas[i], sigmas[i + 1], state.prediction_type)
        if done is not None:
            done.queued(i)
    if done is not None:
        done.flush()
    return state.advanced(latents, steps.stop)


@torch.no_grad()
def coarse_step(model: SVDModel, state: RequestState, steps: range) -> RequestState:
    """Parareal's coarse solver: one Euler step across the whole range, from sigma[start] to sigma[stop],
    with the UNet evaluated once at the range's first step (guidance as in denoise())."""
    if state.step != steps.start:
        raise RuntimeError(f"request {state.request_id} is at step {state.step}, coarse step expects {steps.start}")
    if steps.stop > state.num_steps or len(steps) < 1:
        raise RuntimeError(f"step range {steps} is not a non-empty part of the request's {state.num_steps} steps")
    state = state.to(model.device)
    do_cfg = state.params.do_classifier_free_guidance
    sigmas = torch.tensor(state.sigmas, dtype=torch.float32)
    timesteps = torch.tensor(state.timesteps, dtype=torch.float32, device=model.device)
    i = steps.start
    model_input = torch.cat([state.latents] * 2) if do_cfg else state.latents
    noise_pred = _predict(model, state, model_input, i, timesteps, slice(None))
    if do_cfg:
        noise_pred = sampler.apply_guidance(noise_pred, state.guidance_scale)
    latents = sampler.euler_step(noise_pred, state.latents, sigmas[i], sigmas[steps.stop], state.prediction_type)
    return state.advanced(latents, steps.stop)


def _predict(
    model: SVDModel,
    state: RequestState,
    latents: torch.Tensor,
    i: int,
    timesteps: torch.Tensor,
    rows: slice,
) -> torch.Tensor:
    """The UNet's noise prediction at step i for `latents` (the batch rows `rows` of the conditioning)."""
    sigma = torch.tensor(state.sigmas[i], dtype=torch.float32)
    model_input = sampler.scale_model_input(latents, sigma)
    model_input = torch.cat([model_input, state.image_latents[rows]], dim=2)
    return model.pipe.unet(
        model_input,
        timesteps[i],
        encoder_hidden_states=state.image_embeddings[rows],
        added_time_ids=state.added_time_ids[rows],
        return_dict=False,
    )[0]


@torch.no_grad()
def decode(model: SVDModel, state: RequestState, frames: tuple[int, int] | None = None) -> np.ndarray:
    """VAE-decode the final latents: float32 frames in [0, 1], shape (num_frames, H, W, 3).

    `frames` = (start, stop) decodes only those frames. It must be one of diffusers' decode chunks (or a run of
    them): decode_latents decodes each chunk on its own and post-processing is per pixel, so the pieces equal the
    corresponding frames of the whole.
    """
    if not state.done:
        raise RuntimeError(f"request {state.request_id} decoded at step {state.step} of {state.num_steps}")
    pipe, p = model.pipe, state.params
    start, stop = frames if frames is not None else (0, p.num_frames)
    if start % p.decode_chunk_size or (stop % p.decode_chunk_size and stop != p.num_frames) or not start < stop:
        raise ValueError(f"frames [{start}, {stop}) are not whole decode chunks of {p.decode_chunk_size}")
    latents = state.latents[:, start:stop].to(model.device)
    out = pipe.decode_latents(latents, stop - start, p.decode_chunk_size)
    out = pipe.video_processor.postprocess_video(video=out, output_type="np")
    return np.ascontiguousarray(out[0], dtype=np.float32)
