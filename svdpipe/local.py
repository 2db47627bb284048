"""The single-process path: encode, every step range in turn, decode, in this process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import os
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import PIL.Image

from svdpipe import parareal, stages
from svdpipe.clips import image_png
from svdpipe.config import EngineConfig, ResolvedParams, VideoParams, resolve_params
from svdpipe.models import SVDModel, load_model
from svdpipe.partition import request_ranges
from svdpipe.simulate import SimulatedCosts, install_stand_ins
from svdpipe.state import RequestState

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class VideoResult:
    """A finished request: frames (F, H, W, 3) float32 in [0, 1] and the parameters actually used."""

    request_id: str
    frames: np.ndarray
    params: ResolvedParams
    parareal: parareal.PararealStats | None = None  # set when the request was solved by parareal


class LocalPipeline:
    """Runs requests in this process, still split into `config.num_stages` step ranges (one per step when a
    request has fewer steps, as the engine's planner does)."""

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
        params: VideoParams | ResolvedParams,
        on_step: Callable[[int], None] | None = None,
        request_id: str | None = None,
    ) -> VideoResult:
        resolved = params if isinstance(params, ResolvedParams) else resolve_params(params, self.model.spec)
        request_id = request_id or uuid.uuid4().hex
        # 1. encode
        state = stages.encode(self.model, image, resolved, request_id)
        total = resolved.num_inference_steps
        ranges = request_ranges(total, min(self.config.num_stages, total), self.config.step_weights)
        stats = None
        if self.config.latency_mode == "parareal":
            # 2. denoise by parareal over the stage blocks (the fine solves one after another here: the same
            # result as on the stage actors, none of the speed-up)
            state, stats = solve_parareal(
                self.model, state, ranges, self.config.parareal_tol, self.config.parareal_max_iters
            )
            logger.info("request %s: parareal %s", request_id, stats)
        else:
            if self.config.latency_mode != "off":
                logger.info(
                    "request %s: one process has no second actor, so latency_mode %s runs unsplit",
                    request_id,
                    self.config.latency_mode,
                )
            # 2. denoise, one step range per (virtual) stage
            for steps in ranges:
                state = stages.denoise(self.model, state, steps, on_step)
        # 3. decode
        return VideoResult(request_id, stages.decode(self.model, state), resolved, stats)

    def generate_clips(
        self,
        image: PIL.Image.Image,
        params: VideoParams,
        out: str | os.PathLike[str],
        on_step: Callable[[int], None] | None = None,
    ) -> Path:
        """A long video in this process, clip after clip as diffusers' loop makes it (svdpipe/clips.py), streamed
        into the file `out` (one clip's frames in memory at a time)."""
        from svdpipe.clips import clip_params, color_stats, match_colors
        from svdpipe.video import VideoStream, format_from_path

        resolved = resolve_params(params, self.model.spec, max_clips=self.config.max_clips)
        stream = VideoStream(out, format_from_path(out), resolved.fps, resolved.num_frames * resolved.num_clips)
        colors = None
        try:
            for k in range(resolved.num_clips):
                frames = self.generate(image, clip_params(resolved, k), on_step).frames
                if resolved.color_match:
                    colors = colors or color_stats(frames)
                    frames = match_colors(frames, colors) if k else frames
                stream.append(frames)
                image = PIL.Image.open(io.BytesIO(image_png(frames[-1])))
            return stream.close()
        except BaseException:
            stream.abort()
            raise


def solve_parareal(
    model: SVDModel,
    state: RequestState,
    blocks: Sequence[range],
    tol: float = 0.0,
    max_iters: int | None = None,
) -> tuple[RequestState, parareal.PararealStats]:
    """Denoise `state` (at step 0) over `blocks` by parareal, every solve in this process."""

    async def fine(n: int, latents):
        return stages.denoise(model, state.advanced(latents, blocks[n].start), blocks[n]).latents

    async def coarse(n: int, latents):
        return stages.coarse_step(model, state.advanced(latents, blocks[n].start), blocks[n]).latents

    latents, stats = _run_to_end(parareal.parareal(state.latents, blocks, fine, coarse, tol, max_iters))
    return state.advanced(latents, blocks[-1].stop), stats


def _run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from synchronous code, also when the caller is inside an event loop (a
    server or the bench calling the local path): then on a thread of its own, with its own loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
