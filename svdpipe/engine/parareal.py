"""Parareal on the stage actors: the engine drives svdpipe.parareal's iterations, each stage actor runs the
fine solve (its own step range) and the coarse step of its block; encode and decode run as usual."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import ray

from svdpipe import parareal
from svdpipe.state import RequestState
from svdpipe.worker import EncodedVideo, EncodeRequest

if TYPE_CHECKING:
    import torch

    from svdpipe.engine.core import Engine, _Inflight

logger = logging.getLogger(__name__)


async def run_parareal(engine: Engine, inf: _Inflight, req: EncodeRequest, ranges: list[range]) -> EncodedVideo:
    """One request by parareal over `ranges`; its stats land on `inf.parareal`. Every call's ref goes on
    `inf.refs`, so cancel and timeout reach it; a failed call fails the request (the engine retries it)."""
    actors, layout, config = engine._actors, engine.layout, engine.config
    encoder = next(i for i, spec in enumerate(layout) if spec.encodes)
    decoder = next(i for i, spec in enumerate(layout) if spec.decodes)
    stage_actor = {spec.denoise_stage: i for i, spec in enumerate(layout) if spec.denoise_stage is not None}
    inf.refs = []

    def submit(ref: ray.ObjectRef) -> ray.ObjectRef:
        inf.refs.append(ref)
        return ref

    # 1. encode
    state: RequestState = await submit(actors[encoder].process.remote(req, None))
    cond = ray.put(state)  # the conditioning travels once; each solve sends only the latents

    # 2. denoise: parareal over the stage blocks, each solve on its block's actor
    async def solve(n: int, latents: torch.Tensor, coarse: bool) -> torch.Tensor:
        block = ranges[n]
        actor = actors[stage_actor[n]]
        return await submit(actor.solve.remote(cond, latents, block.start, block.stop, coarse))

    async def fine(n: int, latents: Any) -> Any:
        return await solve(n, latents, False)

    async def coarse(n: int, latents: Any) -> Any:
        return await solve(n, latents, True)

    latents, stats = await parareal.parareal(
        state.latents, ranges, fine, coarse, config.parareal_tol, config.parareal_max_iters
    )
    inf.parareal = stats
    logger.info(
        "request %s: parareal %d iteration(s), %s, %d UNet evaluations (serial: %d), final change %.3g",
        inf.request_id,
        stats.iterations,
        "exact" if stats.exact else "stopped at tolerance",
        stats.unet_evals,
        ranges[-1].stop,
        stats.final_change,
    )
    # 3. decode
    final = state.advanced(latents, ranges[-1].stop)
    return await submit(actors[decoder].process.remote(final, None))
