"""Executors: a plan in, Ray calls out. They decide nothing: every step range, helper, transport and call order
comes from the plan (svdpipe/planner.py), and which actor runs each call from the planner's dispatch
(svdpipe/dispatch.py). Both executors take the actor pool and the request's record, and nothing of the engine's.

The chain executor hands the planner each call of a plan when its input exists (the previous call ended) and
submits it to the actor the planner binds it to, taking the previous call's ObjectRef: with Ray Direct Transport
the latents go straight from actor to actor, never through this process. It learns that a call ended by polling
`ray.wait(..., fetch_local=False)` over every running call (a few microseconds each; nothing is fetched), so a
free actor gets its next call within about one poll interval. This process created the collective group, so it
is the one allowed to submit calls that pass those refs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import ray

from svdpipe.engine.exchange import HalfExchange
from svdpipe.engine.pool import ActorPool
from svdpipe.engine.request import RequestRecord
from svdpipe.planner import ActorCall, Plan, Planner, actor_calls, mux_call_index
from svdpipe.worker import EncodedVideo, EncodeRequest

logger = logging.getLogger(__name__)

POLL_S = 0.002  # how often the running calls are checked for their end (ray.wait with timeout 0: ~6 us)


class Executor(Protocol):
    """Runs one attempt of a plan; every ref it submits goes on `record.refs` (cancel and timeout reach it)."""

    async def execute(self, plan: Plan, req: EncodeRequest, record: RequestRecord) -> EncodedVideo: ...


class ChainExecutor:
    """A plan's calls, each submitted when its input exists, to the actor the planner's dispatch binds it to."""

    def __init__(self, pool: ActorPool, planner: Callable[[], Planner | None]) -> None:
        self.pool = pool
        self._planner = planner  # the engine's planner (built at start, after the actors measured their costs)
        self._waiting: dict[str, tuple[RequestRecord, asyncio.Future, Any]] = {}  # request:call -> who waits
        # ref -> its bound call, its waiter, and the refs of that call still running (a wide call has one per rank)
        self._running: dict[Any, tuple[ActorCall, asyncio.Future, set[Any]]] = {}
        self._poll: asyncio.Task | None = None

    @property
    def planner(self) -> Planner:
        planner = self._planner()
        assert planner is not None, "the engine has no planner yet"
        return planner

    async def stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
            self._poll = None

    async def execute(self, plan: Plan, req: EncodeRequest, record: RequestRecord) -> EncodedVideo:
        record.refs = []
        chain, decodes = actor_calls(plan)
        since = record.admitted
        # 1. the chain: encode and the step ranges, each call taking the previous call's state when it has ended
        item: Any = req
        previous: int | None = None
        for call in chain:
            item, previous = await self._run(record, call, item, since, previous)
        # 2. the decode calls, all reading the final state at once (none when the last chain call decoded). Under
        # RDT one ref then goes to several actors, its creator possibly among them; Ray warns that RDT objects are
        # mutable, which is safe here because no phase writes to its input state (checked by the gloo parity test)
        runs = [asyncio.ensure_future(self._run(record, call, item, since, previous)) for call in decodes]
        if plan.feeds_next and record.next_image is not None and not record.next_image.done():
            # A long video's clip: the chunk holding its last frame decodes first (actor_calls); the next clip
            # starts from that frame while the other chunks still decode.
            first = runs[0] if runs else None
            record.watch(asyncio.ensure_future(_deliver_last_frame(first, item, record.next_image)))
        try:
            parts = [ref for ref, _ in await asyncio.gather(*runs)] or [item]
        except BaseException:
            for run in runs:
                run.cancel()
            raise
        # 3. the mux actor writes the file from every decoded part
        mux = self.pool.muxers[plan.mux_actor].mux.remote(*parts, index=mux_call_index(plan), out=req.clip)
        record.refs.append(mux)
        return await mux

    async def _run(
        self, record: RequestRecord, call: ActorCall, item: Any, since: float, previous: int | None
    ) -> tuple[Any, int]:
        """Hand `call` to the planner, submit it where the dispatch binds it, and return its ref and actor once it
        has ended (its result, or its error, is then in the ref)."""
        planner = self.planner
        bound: asyncio.Future = asyncio.get_running_loop().create_future()
        key = f"{record.request_id}:{call.index}"
        self._waiting[key] = (record, bound, item)
        planner.ready(record.request_id, call, since, previous)
        try:
            self._pump()
            ref, actor = await bound
            await self._ended(ref)
        finally:
            self._waiting.pop(key, None)
        return ref, actor

    def _pump(self) -> None:
        """Submit every call the planner binds now; start the poll if calls run."""
        planner = self.planner
        for request_id, call in planner.assign(time.time()):
            waiter = self._waiting.get(f"{request_id}:{call.index}")
            if waiter is None or waiter[1].done():  # its attempt was abandoned meanwhile: nothing to run
                planner.ended(call)
                continue
            record, bound, item = waiter
            try:
                refs = self._submit(call, item)
            except Exception as exc:
                planner.ended(call)
                bound.set_exception(exc)
                continue
            record.refs.extend(refs)
            record.bound.update(call.wide or (call.actor,))
            ended: asyncio.Future = asyncio.get_running_loop().create_future()
            members = set(refs)
            for ref in refs:
                self._running[ref] = (call, ended, members)
            bound.set_result((refs[0], call.actor))
        if self._running and (self._poll is None or self._poll.done()):
            self._poll = asyncio.get_running_loop().create_task(self._poll_running())

    def _submit(self, call: ActorCall, item: Any) -> list[Any]:
        """The call's refs: one, or a wide call's one per rank (rank 0's, on `call.actor`, first: the next calls
        take its state; every rank ends with the same one)."""
        pool = self.pool
        refs = []
        for actor in call.wide or (call.actor,):
            method = pool.models[actor].run
            if call.output != "object_store":
                method = method.options(tensor_transport=call.output)
            if call.helper is not None:
                exchange = HalfExchange(pool.models[call.helper], pool.layout[call.helper].name)
                refs.append(method.remote(item, call, exchange))
            else:
                refs.append(method.remote(item, call))
        return refs

    async def _ended(self, ref: Any) -> None:
        entry = self._running.get(ref)
        if entry is not None:
            await asyncio.shield(entry[1])  # a cancelled attempt stops waiting; the poll still frees the actor

    async def _poll_running(self) -> None:
        """While calls run: every POLL_S, the calls that ended free their actors, and the planner binds the
        next ready calls to them."""
        while self._running:
            await asyncio.sleep(POLL_S)
            refs = list(self._running)
            try:
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            except Exception:  # Ray shutting down under the poll, or a passing fault: look again
                logger.warning("polling %d running calls failed", len(refs), exc_info=True)
                continue
            for ref in done:
                call, ended, members = self._running.pop(ref)
                members.discard(ref)
                if members:  # a wide call: its other ranks still run
                    continue
                self.planner.ended(call)
                if not ended.done():
                    ended.set_result(None)
            if done:
                self._pump()


async def _deliver_last_frame(run: asyncio.Future | None, last: Any, future: asyncio.Future) -> None:
    """The last frame of a clip's decoded part (the first decode call's, else the last chain call's: `last`), as
    the next clip's image (clips.image_png), into `future`. A failure here is the attempt's too: it is left to the
    attempt, whose retry delivers again."""
    from svdpipe.clips import image_png

    try:
        ref = (await asyncio.shield(run))[0] if run is not None else last
        part = await ref
        _, frames = max(part.chunks, key=lambda c: c[0])
        png = await asyncio.to_thread(image_png, frames[-1])
    except Exception:
        return
    if not future.done():
        future.set_result(png)
