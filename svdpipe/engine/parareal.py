"""Parareal on the model actors: the engine drives svdpipe.parareal's iterations over the plan's stages, each
stage's actor runs that block's fine solve (its own step range) and its coarse step; encode, decode and mux
run where the plan puts them. Solves go over the object store in host memory whatever the hand-off transport
(the driver combines them and holds no device); a solve's inputs and outputs are one latent tensor, 1.8 MB fp16
for SVD-XT at 576x1024, against a block of ~3 steps of ~0.76 s each on an H100."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import ray

from svdpipe import parareal
from svdpipe.planner import ActorCall, Plan
from svdpipe.state import RequestState
from svdpipe.worker import EncodedVideo, EncodeRequest

if TYPE_CHECKING:
    from svdpipe.engine.core import Engine, _Inflight

logger = logging.getLogger(__name__)


async def run_parareal(engine: Engine, inf: _Inflight, req: EncodeRequest, plan: Plan) -> EncodedVideo:
    """One request by parareal over `plan`'s stages; its stats land on `inf.parareal`. Every call's ref goes on
    `inf.refs`, so cancel and timeout reach it; a failed call fails the attempt (the engine retries it)."""
    actors, config = engine._actors, engine.config
    blocks = [st.steps for st in plan.stages]
    inf.refs = []

    def submit(ref: ray.ObjectRef) -> ray.ObjectRef:
        inf.refs.append(ref)
        return ref

    # 1. encode
    encode = ActorCall(plan.encode_actor, True, None, ())
    state: RequestState = await submit(actors[plan.encode_actor].run.remote(req, encode, None, True))
    cond = ray.put(state)  # the conditioning travels once; each solve sends only the latents

    # 2. denoise: parareal over the stage blocks, each solve on its stage's actor
    async def solve(n: int, latents: Any, coarse: bool) -> Any:
        stage = plan.stages[n]
        return await submit(actors[stage.actor].solve.remote(cond, latents, stage.start, stage.stop, coarse))

    async def fine(n: int, latents: Any) -> Any:
        return await solve(n, latents, False)

    async def coarse(n: int, latents: Any) -> Any:
        return await solve(n, latents, True)

    def progress(k: int, exact_steps: int) -> None:  # the first k blocks are final: report their steps
        inf.report(exact_steps)

    latents, stats = await parareal.parareal(
        state.latents, blocks, fine, coarse, config.parareal_tol, config.parareal_max_iters, progress
    )
    inf.parareal = stats
    logger.info(
        "request %s: parareal %d iteration(s), %s, %d UNet evaluations (serial: %d), final change %.3g",
        inf.request_id,
        stats.iterations,
        "exact" if stats.exact else "stopped at the tolerance or the iteration cap",
        stats.unet_evals,
        plan.num_steps,
        stats.final_change,
    )
    # 3. decode the plan's chunks, 4. mux
    final = state.advanced(latents, plan.num_steps)
    parts = [
        submit(actors[d.actor].run.remote(final, ActorCall(d.actor, False, None, ((d.start, d.stop),))))
        for d in plan.decode
    ]
    return await submit(engine._muxers[plan.mux_actor].mux.remote(*parts))
