"""Executors: a plan in, Ray calls out. They decide nothing: every actor, step range, helper, transport and the
call order come from the plan (svdpipe/planner.py). Both executors take the actor pool and the request's record,
and nothing of the engine's.

The chain executor submits every call of a plan at once, each taking the previous call's ObjectRef (the decode
calls all take the chain's final state, the mux call all decoded parts). Ray starts a call as soon as its input
exists and its actor is free, so requests overlap across actors (pipeline fill) with no round trip through this
process per hop, and, with Ray Direct Transport, latents go straight from actor to actor. This process created
the collective group, so it is the one allowed to submit calls that pass those refs.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from svdpipe.engine.exchange import HalfExchange
from svdpipe.engine.pool import ActorPool
from svdpipe.engine.request import RequestRecord
from svdpipe.planner import Plan, actor_calls, mux_call_index
from svdpipe.worker import EncodedVideo, EncodeRequest


class Executor(Protocol):
    """Runs one attempt of a plan; every ref it submits goes on `record.refs` (cancel and timeout reach it)."""

    async def execute(self, plan: Plan, req: EncodeRequest, record: RequestRecord) -> EncodedVideo: ...


class ChainExecutor:
    """A plan's calls as one chain of Ray calls (svdpipe.planner.actor_calls)."""

    def __init__(self, pool: ActorPool) -> None:
        self.pool = pool

    async def execute(self, plan: Plan, req: EncodeRequest, record: RequestRecord) -> EncodedVideo:
        record.refs = self.submit(plan, req)
        if plan.feeds_next and record.next_image is not None and not record.next_image.done():
            # A long video's clip: the call decoding its last frame comes first among the decodes (actor_calls);
            # the next clip starts from that frame while the other chunks still decode.
            chain, decodes = actor_calls(plan)
            last = record.refs[len(chain)] if decodes else record.refs[len(chain) - 1]
            record.watch(asyncio.ensure_future(_deliver_last_frame(last, record.next_image)))
        return await asyncio.wrap_future(record.refs[-1].future())

    def submit(self, plan: Plan, req: EncodeRequest) -> list[Any]:
        """Submit every call of `plan`; returns all refs (the video's last)."""
        pool = self.pool
        chain, decodes = actor_calls(plan)
        refs: list[Any] = []
        item: Any = req
        # 1. the chain: encode and the step ranges, each call taking the previous call's state
        for call in chain:
            method = pool.models[call.actor].run
            if call.output != "object_store":
                method = method.options(tensor_transport=call.output)
            if call.helper is not None:
                exchange = HalfExchange(pool.models[call.helper], pool.layout[call.helper].name)
                item = method.remote(item, call, exchange)
            else:
                item = method.remote(item, call)
            refs.append(item)
        # 2. decode calls, all reading the final state at once (none when the last chain call decoded). Under RDT
        # one ref then goes to several actors, its creator possibly among them; Ray warns that RDT objects are
        # mutable, which is safe here because no phase writes to its input state (checked by the gloo parity test)
        parts = [pool.models[call.actor].run.remote(item, call) for call in decodes] or [item]
        if decodes:
            refs.extend(parts)
        # 3. the mux actor writes the file from every decoded part
        refs.append(pool.muxers[plan.mux_actor].mux.remote(*parts, index=mux_call_index(plan), out=req.clip))
        return refs


async def _deliver_last_frame(ref: Any, future: asyncio.Future) -> None:
    """The last frame of a clip's decoded part, as the next clip's image (clips.image_png), into `future`. A
    failure here is the attempt's too: it is left to the attempt, whose retry delivers again."""
    from svdpipe.clips import image_png

    try:
        part = await ref
        _, frames = max(part.chunks, key=lambda c: c[0])
        png = await asyncio.to_thread(image_png, frames[-1])
    except Exception:
        return
    if not future.done():
        future.set_result(png)
