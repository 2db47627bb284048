"""The parareal executor: drives svdpipe.parareal's iterations over a plan's stages; each stage's actor runs that
block's fine solve (its own step range) and its coarse step; encode, decode and mux run where the plan puts
them. Solves go over the object store in host memory whatever the hand-off transport (the driver combines them
and holds no device); a solve's inputs and outputs are one latent tensor, 1.8 MB fp16 for SVD-XT at 576x1024,
against a block of ~3 steps of ~0.76 s each on an H100. Whether parareal runs is the plan's decision
(Plan.parareal); this module only carries it out."""

from __future__ import annotations

import logging
from typing import Any

from svdpipe import parareal
from svdpipe.engine.pool import ActorPool
from svdpipe.engine.request import RequestRecord
from svdpipe.planner import UNTRACKED, ActorCall, Plan, mux_call_index
from svdpipe.state import RequestState
from svdpipe.worker import EncodedVideo, EncodeRequest

logger = logging.getLogger(__name__)


class PararealExecutor:
    """Runs a plan whose `parareal` is set; the request's statistics land on `record.parareal`."""

    def __init__(self, pool: ActorPool, tol: float, max_iters: int | None) -> None:
        self.pool, self.tol, self.max_iters = pool, tol, max_iters

    async def execute(self, plan: Plan, req: EncodeRequest, record: RequestRecord) -> EncodedVideo:
        import ray

        models, blocks = self.pool.models, [st.steps for st in plan.stages]
        record.refs = []

        def submit(ref: Any) -> Any:
            record.refs.append(ref)
            return ref

        # 1. encode (in host memory: this process combines the solves)
        encode = ActorCall(plan.encode_actor, True, None, (), UNTRACKED)
        state: RequestState = await submit(models[plan.encode_actor].run.remote(req, encode, None, True))
        cond = ray.put(state)  # the conditioning travels once; each solve sends only the latents

        # 2. denoise: parareal over the stage blocks, each solve on its stage's actor
        async def solve(n: int, latents: Any, coarse: bool) -> Any:
            stage = plan.stages[n]
            return await submit(models[stage.actor].solve.remote(cond, latents, stage.start, stage.stop, coarse))

        async def fine(n: int, latents: Any) -> Any:
            return await solve(n, latents, False)

        async def coarse(n: int, latents: Any) -> Any:
            return await solve(n, latents, True)

        def progress(k: int, exact_steps: int) -> None:  # the first k blocks are final: report their steps
            record.report(exact_steps)

        latents, stats = await parareal.parareal(
            state.latents, blocks, fine, coarse, self.tol, self.max_iters, progress
        )
        record.parareal = stats
        logger.info(
            "request %s: parareal %d iteration(s), %s, %d UNet evaluations (serial: %d), final change %.3g",
            record.request_id,
            stats.iterations,
            "exact" if stats.exact else "stopped at the tolerance or the iteration cap",
            stats.unet_evals,
            plan.num_steps,
            stats.final_change,
        )
        # 3. decode the plan's chunks, 4. mux
        final = state.advanced(latents, plan.num_steps)
        parts = [
            submit(models[d.actor].run.remote(final, ActorCall(d.actor, False, None, ((d.start, d.stop),), UNTRACKED)))
            for d in plan.decode
        ]
        mux = self.pool.muxers[plan.mux_actor].mux
        return await submit(mux.remote(*parts, index=mux_call_index(plan), out=req.clip))
