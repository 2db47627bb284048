"""The single-process path: encode, every step range in turn, decode, in this process."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import PIL.Image

from svdpipe import stages
from svdpipe.config import EngineConfig, ResolvedParams, VideoParams, resolve_params
from svdpipe.models import SVDModel, load_model
from svdpipe.partition import request_ranges
from svdpipe.simulate import SimulatedCosts, install_stand_ins


@dataclass(frozen=True)
class VideoResult:
    """A finished request: frames (F, H, W, 3) float32 in [0, 1] and the parameters actually used."""

    request_id: str
    frames: np.ndarray
    params: ResolvedParams


class LocalPipeline:
    """Runs requests in this process, still split into `config.num_stages` step ranges."""

    def __init__(self, config: EngineConfig, model: SVDModel | None = None) -> None:
        self.config = config
        self.model = model or load_model(config.model, config.dtype, config.device)
        costs = SimulatedCosts.from_config(config)
        if costs.any:
            install_stand_ins(self.model, costs)
        if config.torch_threads:
            import torch

            torch.set_num_threads(config.torch_threads)

    def generate(
        self,
        image: PIL.Image.Image,
        params: VideoParams,
        on_step: Callable[[int], None] | None = None,
        request_id: str | None = None,
    ) -> VideoResult:
        resolved = resolve_params(params, self.model.spec, self.config.num_stages)
        request_id = request_id or uuid.uuid4().hex
        # 1. encode
        state = stages.encode(self.model, image, resolved, request_id)
        # 2. denoise, one step range per (virtual) stage
        for steps in request_ranges(resolved.num_inference_steps, self.config.num_stages, self.config.step_weights):
            state = stages.denoise(self.model, state, steps, on_step)
        # 3. decode
        return VideoResult(request_id, stages.decode(self.model, state), resolved)
