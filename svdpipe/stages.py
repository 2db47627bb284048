"""The three phases of SVD sampling as plain torch: encode, denoise a step range, decode.

Encoding and decoding call diffusers' own StableVideoDiffusionPipeline helpers (CLIP preprocessing, VAE
preprocessing, latent preparation, VAE decoding, post-processing), in the order its __call__ uses, so
nothing in them is re-implemented. Denoising is sampler.py's pure math driven by the state's position.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import PIL.Image
import torch

from svdpipe import sampler
from svdpipe.config import ResolvedParams
from svdpipe.models import SVDModel
from svdpipe.state import RequestState

StepCallback = Callable[[int], None]


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

    # 1. CLIP image embedding (diffusers' resize-to-224 + CLIPImageProcessor normalisation).
    image_embeddings = pipe._encode_image(image, device, 1, do_cfg)

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


@torch.no_grad()
def denoise(
    model: SVDModel,
    state: RequestState,
    steps: range,
    on_step: StepCallback | None = None,
) -> RequestState:
    """Run denoising steps [start, stop) on `state`, which must be at `start`; returns a fresh state."""
    if state.step != steps.start:
        raise RuntimeError(f"request {state.request_id} is at step {state.step}, stage expects {steps.start}")
    if steps.stop > state.num_steps:
        raise RuntimeError(f"step range {steps} exceeds the request's {state.num_steps} steps")
    state = state.to(model.device)
    unet = model.pipe.unet
    do_cfg = state.params.do_classifier_free_guidance
    latents = state.latents
    # float32 tensors from the exact float32 values: sigmas on the CPU and timesteps on the device, as in
    # diffusers' scheduler, so the arithmetic below is the same to the bit.
    sigmas = torch.tensor(state.sigmas, dtype=torch.float32)
    timesteps = torch.tensor(state.timesteps, dtype=torch.float32, device=model.device)
    for i in steps:
        sigma, t = sigmas[i], timesteps[i]
        model_input = torch.cat([latents] * 2) if do_cfg else latents
        model_input = sampler.scale_model_input(model_input, sigma)
        model_input = torch.cat([model_input, state.image_latents], dim=2)
        noise_pred = unet(
            model_input,
            t,
            encoder_hidden_states=state.image_embeddings,
            added_time_ids=state.added_time_ids,
            return_dict=False,
        )[0]
        if do_cfg:
            noise_pred = sampler.apply_guidance(noise_pred, state.guidance_scale)
        latents = sampler.euler_step(noise_pred, latents, sigma, sigmas[i + 1], state.prediction_type)
        if on_step is not None:
            on_step(i)
    return state.advanced(latents, steps.stop)


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
