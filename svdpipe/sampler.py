"""SVD's sampler math, pure: Euler steps over a Karras sigma schedule, v-prediction, per-frame guidance.

Mirrors diffusers' EulerDiscreteScheduler (s_churn = 0, as StableVideoDiffusionPipeline uses it) and the
pipeline's guidance mixing operation for operation, so results are bit-comparable. The step position is an
argument, never hidden state: a stage that starts mid-schedule needs nothing but the sigmas and the index.
No Ray, Serve or HTTP here.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Schedule(NamedTuple):
    """The sigma/timestep schedule of one request: T timesteps, T + 1 sigmas (the last is 0)."""

    sigmas: torch.Tensor  # float32, CPU, shape (T + 1,)
    timesteps: torch.Tensor  # shape (T,), the UNet's conditioning value per step
    init_noise_sigma: float


def make_schedule(scheduler_config: dict, num_inference_steps: int, device: torch.device | str) -> Schedule:
    """The schedule diffusers' EulerDiscreteScheduler computes for this config (delegated, not re-derived)."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(num_inference_steps, device=device)
    return Schedule(scheduler.sigmas, scheduler.timesteps, float(scheduler.init_noise_sigma))


def scale_model_input(sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """EulerDiscreteScheduler.scale_model_input: x / sqrt(sigma^2 + 1)."""
    return sample / ((sigma**2 + 1) ** 0.5)


def euler_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    prediction_type: str = "v_prediction",
) -> torch.Tensor:
    """One Euler step from sigma to sigma_next (EulerDiscreteScheduler.step with s_churn = 0)."""
    sample32 = sample.to(torch.float32)  # diffusers upcasts for the update
    if prediction_type == "v_prediction":
        pred_original = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample32 / (sigma**2 + 1))
    elif prediction_type == "epsilon":
        pred_original = sample32 - sigma * model_output
    elif prediction_type in ("sample", "original_sample"):
        pred_original = model_output
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    derivative = (sample32 - pred_original) / sigma
    prev = sample32 + derivative * (sigma_next - sigma)
    return prev.to(model_output.dtype)


def guidance_scales(min_scale: float, max_scale: float, num_frames: int, batch: int, ndim: int) -> torch.Tensor:
    """Per-frame guidance rising linearly from the first to the last frame, shaped to broadcast on latents."""
    scale = torch.linspace(min_scale, max_scale, num_frames).unsqueeze(0).repeat(batch, 1)
    return scale.reshape(*scale.shape, *([1] * (ndim - scale.ndim)))


def apply_guidance(noise_pred: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance over a [uncond, cond] batch."""
    uncond, cond = noise_pred.chunk(2)
    return guide(uncond, cond, scale)


def guide(uncond: torch.Tensor, cond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance from the two halves' predictions, computed apart (e.g. on two actors)."""
    return uncond + scale * (cond - uncond)
