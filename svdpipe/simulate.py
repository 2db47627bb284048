"""Stand-in model parts for benchmarks: a UNet, VAE and CLIP image encoder whose calls are CPU-free waits.

They replace the real modules inside the pipeline object, so the code that calls them (stages.encode, the
sampler loop in stages.denoise, diffusers' decode_latents) is the same code in simulation and for real. A wait
leaves the CPU free, as a GPU kernel would, so a 2-core machine can stand in for many GPUs. Outputs are zeros
of the right shape: simulated runs are for timing, never for frames.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from svdpipe.config import EngineConfig
    from svdpipe.models import SVDModel


@dataclass(frozen=True)
class SimulatedCosts:
    """Seconds each stand-in waits; None keeps the real module."""

    step_s: float | None = None  # one UNet call on a guidance batch of two; a batch of one waits half
    encode_s: float | None = None  # CLIP + VAE encode of the input image
    decode_frame_s: float | None = None  # VAE decode of one frame

    @classmethod
    def from_config(cls, config: EngineConfig) -> SimulatedCosts:
        def seconds(ms: float | None) -> float | None:
            return None if ms is None else ms / 1000

        return cls(
            seconds(config.simulate_step_ms),
            seconds(config.simulate_encode_ms),
            seconds(config.simulate_decode_frame_ms),
        )

    @property
    def any(self) -> bool:
        return self.step_s is not None or self.encode_s is not None or self.decode_frame_s is not None


class _StandIn(torch.nn.Module):
    """A module with one parameter, so pipe.to() and diffusers' dtype/device probes work on it."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    @property
    def device(self) -> torch.device:
        return self.anchor.device


class StandInUNet(_StandIn):
    """UNetSpatioTemporalConditionModel's call signature; waits step_s x batch / 2 (the batch is 2 under CFG)."""

    def __init__(self, config: Any, step_s: float) -> None:
        super().__init__(config)
        self.step_s = step_s

    def forward(self, sample: torch.Tensor, timestep: Any, *args: Any, return_dict: bool = True, **kwargs: Any):
        time.sleep(self.step_s * sample.shape[0] / 2)
        batch, frames, _, h, w = sample.shape
        out = torch.zeros(batch, frames, self.config["out_channels"], h, w, dtype=sample.dtype, device=sample.device)
        return (out,) if not return_dict else SimpleNamespace(sample=out)

    def wide_forward(self, comm: Any, sample: torch.Tensor, timestep: Any, *args: Any, num_frames: int) -> torch.Tensor:
        """One rank's share of a wide UNet call (svdpipe/wide/stage.py): waits for its frames' share of the call
        (the collectives' time is not simulated); zeros of its frames of the prediction."""
        batch, frames, _, h, w = sample.shape
        time.sleep(self.step_s * batch / 2 * frames / num_frames)
        return torch.zeros(batch, frames, self.config["out_channels"], h, w, dtype=sample.dtype, device=sample.device)


class StandInImageEncoder(_StandIn):
    """CLIPVisionModelWithProjection's call: waits the whole simulated encode cost (the VAE encode is free)."""

    def __init__(self, config: Any, encode_s: float) -> None:
        super().__init__(config)
        self.encode_s = encode_s

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        time.sleep(self.encode_s)
        embeds = torch.zeros(pixel_values.shape[0], self.config.projection_dim, dtype=self.dtype, device=self.device)
        return SimpleNamespace(image_embeds=embeds)


class StandInVAE(_StandIn):
    """AutoencoderKLTemporalDecoder's encode/decode; each is simulated or handed to the real VAE."""

    def __init__(self, real: torch.nn.Module, simulate_encode: bool, decode_frame_s: float | None) -> None:
        super().__init__(real.config)
        self.real = real
        self.simulate_encode = simulate_encode
        self.decode_frame_s = decode_frame_s
        self.factor = 2 ** (len(real.config.block_out_channels) - 1)

    def encode(self, x: torch.Tensor) -> Any:
        if not self.simulate_encode:
            return self.real.encode(x.to(self.real.dtype))
        lat = torch.zeros(x.shape[0], self.config.latent_channels, x.shape[2] // self.factor, x.shape[3] // self.factor)
        lat = lat.to(x.device, x.dtype)
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: lat))

    def forward(self, z: torch.Tensor, num_frames: int) -> Any:  # decode_latents reads this signature
        return self.decode(z, num_frames)

    def decode(self, z: torch.Tensor, num_frames: int) -> Any:
        if self.decode_frame_s is None:
            return self.real.decode(z, num_frames=num_frames)
        time.sleep(self.decode_frame_s * z.shape[0])
        out = torch.zeros(z.shape[0], 3, z.shape[2] * self.factor, z.shape[3] * self.factor)
        return SimpleNamespace(sample=out.to(z.device, z.dtype))


def install_stand_ins(model: SVDModel, costs: SimulatedCosts) -> None:
    """Swap the simulated parts of `model`'s pipeline for stand-ins (parts the model does not hold stay None)."""
    pipe = model.pipe
    if costs.step_s is not None and pipe.unet is not None:
        pipe.unet = StandInUNet(model.unet_config, costs.step_s).to(model.device, model.dtype)
    if costs.encode_s is not None and pipe.image_encoder is not None:
        pipe.image_encoder = StandInImageEncoder(pipe.image_encoder.config, costs.encode_s).to(
            model.device, model.dtype
        )
    if costs.encode_s is not None:
        model.encode_vae = None  # the stand-in VAE simulates encoding whatever the dtype
    if (costs.encode_s is not None or costs.decode_frame_s is not None) and pipe.vae is not None:
        pipe.vae = StandInVAE(pipe.vae, costs.encode_s is not None, costs.decode_frame_s).to(model.device, model.dtype)
