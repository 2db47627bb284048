"""The hand-off object: one request's whole state as it moves from the encoding actor through the step ranges."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from svdpipe.config import ResolvedParams

_TENSORS = ("latents", "image_latents", "image_embeddings", "added_time_ids", "guidance_scale")


@dataclass(frozen=True)
class StageTrace:
    """When one stage worked on a request (time.time() seconds), for hop/queue/step accounting."""

    stage: str
    started: float
    finished: float
    idle_since: float  # when this stage finished its previous task (before `started` means it waited)
    steps: int = 0
    codec_s: float = 0.0  # of the work, time spent encoding, decoding or muxing
    parallel: bool = False  # started from the same input as the entry before it (decode chunks on several actors)
    split_steps: int = 0  # steps whose conditional half a helper actor computed (CFG split)
    helper_s: float = 0.0  # the helper's compute time for those halves
    exchange_s: float = 0.0  # round trips to the helper minus its compute: the cost of the exchange


@dataclass(frozen=True)
class RequestState:
    """Everything a stage needs to continue a request; tensors only, no scheduler object.

    `step` is the scheduler position: the index of the next denoising step to run. A stage owning
    range [a, b) asserts step == a and hands on a state with step == b.
    """

    request_id: str
    params: ResolvedParams
    latents: torch.Tensor  # (1, F, 4, h, w): the sample being denoised
    image_latents: torch.Tensor  # (1 or 2, F, 4, h, w): VAE latents of the input image, [uncond, cond] under CFG
    image_embeddings: torch.Tensor  # (1 or 2, 1, D): CLIP image embedding, [zeros, embed] under CFG
    added_time_ids: torch.Tensor  # (1 or 2, 3): fps - 1, motion_bucket_id, noise_aug_strength
    guidance_scale: torch.Tensor  # (1, F, 1, 1, 1): per-frame CFG scale
    # The schedule as float32 values held in Python floats (exact), so every tensor above lives on the
    # stage's device: GPU transports (NCCL, CUDA IPC) carry one device's tensors only.
    sigmas: tuple[float, ...]  # T + 1 values, the last 0
    timesteps: tuple[float, ...]  # T values
    prediction_type: str
    output_format: str = "npy"  # what the decoder writes: mp4 | webm | gif | npy
    step: int = 0
    trace: tuple[StageTrace, ...] = field(default=())

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def done(self) -> bool:
        return self.step >= self.num_steps

    def advanced(self, latents: torch.Tensor, step: int) -> RequestState:
        return dataclasses.replace(self, latents=latents, step=step)

    def traced(self, entry: StageTrace) -> RequestState:
        return dataclasses.replace(self, trace=(*self.trace, entry))

    def fresh(self) -> RequestState:
        """A copy owning new tensors: Ray Direct Transport requires methods to return fresh tensors."""
        return dataclasses.replace(self, **{f: getattr(self, f).clone() for f in _TENSORS})

    def to(self, device: torch.device) -> RequestState:
        """The same state with its tensors on `device`."""
        return dataclasses.replace(self, **{f: getattr(self, f).to(device) for f in _TENSORS})
