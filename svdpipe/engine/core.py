"""The engine: admission, the executors and the event loop between them and the planner.

The planner (svdpipe.planner, pure) decides every request's plan from a ledger it owns; the executors
(engine/executor.py, engine/parareal.py) turn a plan into Ray calls; the actor pool (engine/pool.py) owns the
actors. This module admits requests (max_inflight slots, deadlines), hands the planner the actors' call events,
retries a request after an actor or transport failure (once the pool is rebuilt), and fails it at once when its
own computation raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import os
import time
import uuid
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup

from svdpipe.clips import ClipOutput
from svdpipe.config import EngineConfig, OutputFormat, ResolvedParams, VideoParams, resolve_params
from svdpipe.engine.clips import run_clips
from svdpipe.engine.executor import ChainExecutor, Executor
from svdpipe.engine.failures import ActorLostError, is_infrastructure, short
from svdpipe.engine.parareal import PararealExecutor
from svdpipe.engine.pool import ActorPool
from svdpipe.engine.progress import ProgressFeed
from svdpipe.engine.request import ProgressCallback, RequestRecord
from svdpipe.engine.result import EngineResult
from svdpipe.errors import (
    ConfigError,
    RequestCancelledError,
    RequestFailedError,
    RequestTimeoutError,
    SvdpipeError,
)
from svdpipe.ledger import CallEvent
from svdpipe.memory import check_peaks, max_decode_chunk
from svdpipe.models import model_spec
from svdpipe.placement import ActorSpec, check_devices, choose_transport
from svdpipe.planner import CALL_S, CostModel, Plan, Planner, RequestShape, choose_costs
from svdpipe.timing import StageStats
from svdpipe.worker import EncodedVideo, EncodeRequest, ModelWorker, median_costs

logger = logging.getLogger(__name__)

_WATCH_S = 2.0  # while requests run, how often every actor is pinged (each ping bounded by ping_timeout_s)

__all__ = ["Engine", "EngineResult", "ProgressCallback"]


class Engine:
    """Owns one deployment's actor pool and runs requests' plans on it (asyncio)."""

    def __init__(
        self,
        config: EngineConfig,
        placement_group: PlacementGroup | None = None,
        first_bundle: int = 0,
        worker: type = ModelWorker,
    ) -> None:
        self.config = config
        self.spec = model_spec(config.model)
        self.max_decode_chunk: int | None = None  # GPU actors: the largest decode chunk that fits (warm-up)
        self.transport = choose_transport(config)
        self.pool = ActorPool(config, self.transport, placement_group, first_bundle, worker)
        self.planner: Planner | None = None  # built at start, from the phase costs the actors measure
        self.stats = StageStats()
        self._chain = ChainExecutor(self.pool, lambda: self.planner)
        self._parareal = PararealExecutor(self.pool, config.parareal_tol, config.parareal_max_iters)
        self._generation = 0
        self._inflight: dict[str, RequestRecord] = {}
        self._slots: asyncio.Semaphore | None = None
        self._rebuild_lock: asyncio.Lock | None = None
        # The actors report every finished step and every call's start and end (engine/progress.py).
        self._progress = ProgressFeed(self._on_step_report, self._on_call_event)
        self._recovery: asyncio.Task | None = None
        self._watch: asyncio.Task | None = None
        self._started = False
        self.completed = 0
        self.failed = 0
        self.split_requests = 0  # requests whose steps were split over an owner and a helper actor
        self.helper_busy_s = 0.0  # helper actors' compute time for those halves
        self.rebuilds = 0  # pool rebuilds after actor or transport failures

    @property
    def layout(self) -> list[ActorSpec]:
        return self.pool.layout

    @property
    def mux_layout(self) -> list[ActorSpec]:
        return self.pool.mux_layout

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the pool, measure the phase costs, build the planner, and warm every hop."""
        if not ray.is_initialized():
            raise ConfigError("Ray is not initialised: call ray.init() (or use svdpipe.engine.sync)")
        # 1. check the cluster can hold the layout, before any actor starts
        self.transport = choose_transport(self.config, ray.cluster_resources().get("GPU", 0.0))
        self.pool.transport = self.transport
        self._slots = asyncio.Semaphore(self.config.max_inflight)
        self._rebuild_lock = asyncio.Lock()
        # 2. actors, group, warm-up; on any failure release what was built
        try:
            await self.pool.start(self._progress.start())
            png, params = self._warmup_request()
            measured = median_costs(await self.pool.warm_up(range(len(self.layout)), png, params))
            await self._check_devices()
            c = self.config
            costs = choose_costs(
                CostModel(measured.encode_s, max(measured.step_s, 1e-6), measured.decode_frame_s, CALL_S),
                c.simulate_step_ms,
                c.simulate_encode_ms,
                c.simulate_decode_frame_ms,
            )
            self.planner = Planner(
                len(self.layout),
                len(self.mux_layout),
                costs,
                c.parallelism,
                c.step_weights,
                c.latency_mode,
                self.transport,
                c.wide_size,
                c.wide_steps,
            )
            await self._warm_chain()
        except BaseException:
            await self.shutdown()
            raise
        self._started = True
        self._watch = asyncio.get_running_loop().create_task(self._watch_health())
        logger.info(
            "engine ready: %d model actors, %d mux actors, %s, transport %s, costs %s",
            len(self.layout),
            len(self.mux_layout),
            self.config.parallelism,
            self.transport,
            self.planner.costs,
        )

    async def shutdown(self) -> None:
        """Cancel everything in flight, stop the actors and release the placement group."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        for record in list(self._inflight.values()):
            self._cancel_refs(record)
        await self._chain.stop()
        await self._progress.stop()
        await self.pool.shutdown()
        self._started = False

    def _warmup_request(self) -> tuple[bytes, ResolvedParams]:
        import PIL.Image

        buf = io.BytesIO()
        PIL.Image.new("RGB", (self.spec.default_width, self.spec.default_height), (127, 127, 127)).save(buf, "PNG")
        params = VideoParams(num_inference_steps=self.config.num_stages, seed=0, max_guidance_scale=2.0)
        return buf.getvalue(), resolve_params(params, self.spec)

    async def _check_devices(self) -> None:
        """The actors' devices suit the transport (CUDA IPC: one physical GPU), the actors sharing a GPU fit at
        their warm-up peaks together, and the largest decode chunk their free memory holds, for requests that
        leave decode_chunk_size to 'auto'."""
        reports = await self.pool.device_reports()
        check_devices(self.transport, [r.name for r in reports], [r.uuid for r in reports])
        check_peaks([(r.name, r.uuid, r.peak_bytes, r.total_bytes) for r in reports])
        self.max_decode_chunk = max_decode_chunk([(r.decode_frame_bytes, r.free_bytes) for r in reports])
        if self.max_decode_chunk is not None:
            logger.info("decode chunks of up to %d frames fit the actors' free memory", self.max_decode_chunk)

    async def _warm_chain(self) -> None:
        """One request through every model actor's hops (and a mux actor, and the helpers' exchange in a
        CFG-split mode), so no user request pays for a transport's first use."""
        assert self.planner is not None
        png, params = self._warmup_request()
        shape = RequestShape(params.num_inference_steps, params.num_frames, params.num_frames)
        plan = self.planner.warmup_plan(shape)
        record = RequestRecord("warmup")
        run = self._chain.execute(plan, EncodeRequest("warmup", png, params, "npy", time.time()), record)
        try:
            await asyncio.wait_for(run, self.config.start_timeout_s)
        except asyncio.TimeoutError as exc:
            self._cancel_refs(record)
            raise TimeoutError(f"the warm-up request did not finish within {self.config.start_timeout_s:g} s") from exc

    # ---------------------------------------------------------------- requests

    @property
    def inflight(self) -> int:
        return sum(1 for r in self._inflight.values() if r.parent is None)  # a long video's clips count as one

    async def generate(
        self,
        image_png: bytes,
        params: VideoParams | ResolvedParams,
        output_format: OutputFormat = "mp4",
        request_id: str | None = None,
        on_progress: ProgressCallback | None = None,
        timeout_s: float | None = None,
        work_dir: str | os.PathLike[str] | None = None,
    ) -> EngineResult:
        """Run one request; waits for a slot (max_inflight); retries after an actor or transport failure.

        `timeout_s` (default: config.request_timeout_s) counts from admission into the pipeline, per clip.
        A long video (num_clips > 1) keeps its finished clips in `work_dir` (a temporary directory if None) and
        resumes from those already there; its file is `result.video.path`, in that directory (engine/clips.py).
        Raises RequestCancelledError, RequestTimeoutError, RequestFailedError, or InvalidRequestError.
        """
        if not self._started or self._slots is None:
            raise RequestFailedError("the engine is not running")
        if isinstance(params, VideoParams):
            c = self.config
            params = resolve_params(params, self.spec, c.max_video_pixels, self.max_decode_chunk, c.max_clips)
        request_id = request_id or uuid.uuid4().hex
        if request_id in self._inflight:
            raise ValueError(f"request {request_id} is already running")
        timeout_s = timeout_s or self.config.request_timeout_s
        total = params.num_inference_steps * params.num_clips
        record = RequestRecord(request_id, on_progress=on_progress, total_steps=total)
        async with self._slots:
            self._inflight[request_id] = record
            try:
                if params.num_clips > 1:
                    run_clip = functools.partial(self._run_clip, fmt=output_format, timeout_s=timeout_s)
                    muxers = self.pool.muxers
                    return await run_clips(run_clip, muxers, record, image_png, params, output_format, work_dir)
                return await self._run(record, image_png, params, output_format, timeout_s)
            finally:
                self._inflight.pop(request_id, None)

    async def _run_clip(
        self,
        clip: RequestRecord,
        image_png: bytes,
        params: ResolvedParams,
        out: ClipOutput,
        mux_actor: int | None,
        *,
        fmt: OutputFormat,
        timeout_s: float,
    ) -> EngineResult:
        """One clip of a long video (engine/clips.py), as a request in flight: its actors' progress, cancel and
        the health watch reach it; it holds no slot of its own (its video does)."""
        self._inflight[clip.request_id] = clip
        try:
            return await self._run(clip, image_png, params, fmt, timeout_s, out, mux_actor)
        finally:
            self._inflight.pop(clip.request_id, None)

    def cancel(self, request_id: str) -> bool:
        """Cancel a running request (a long video: the clips in flight too): its remaining calls are skipped and
        its slot freed."""
        record = self._inflight.get(request_id)
        if record is None:
            return False
        for r in [record, *(r for r in self._inflight.values() if r.parent == request_id)]:
            r.cancelled = True
            self._cancel_refs(r)
        return True

    async def _run(
        self,
        record: RequestRecord,
        image_png: bytes,
        params: ResolvedParams,
        fmt: OutputFormat,
        timeout_s: float,
        clip: ClipOutput | None = None,
        mux_actor: int | None = None,
    ) -> EngineResult:
        """One request, or one clip of a long video (`clip`: where its mux call keeps it; `mux_actor`: the mux
        actor writing the video's file), attempt after attempt."""
        planner = self.planner
        assert planner is not None
        admitted = time.time()
        deadline = admitted + timeout_s
        shape = RequestShape(
            params.num_inference_steps,
            params.num_frames,
            params.decode_chunk_size,
            params.do_classifier_free_guidance,
            feeds_next=record.next_image is not None,
            positions=self.spec.innermost_positions(params.height, params.width),
        )
        record.admitted = admitted
        attempt = 0
        while True:
            attempt += 1
            if self._recovery is not None and not self._recovery.done():
                await asyncio.shield(self._recovery)  # don't submit to actors being replaced
            generation = self._generation
            submitted = time.time()
            req = EncodeRequest(record.request_id, image_png, params, fmt, submitted, clip)
            # 1. the plan, from the planner's ledger
            plan = planner.admit(record.request_id, shape, submitted, mux_actor)
            if plan.split or plan.parareal or self.config.latency_mode != "off":
                logger.info("request %s: %s", record.request_id, plan.split_reason)
            record.plan = plan
            record.restart()
            # 2. execute it
            executor: Executor = self._parareal if plan.parareal else self._chain
            completed = False
            try:
                video = await self._attempt(executor, plan, req, record, deadline)
                completed = True
            except asyncio.TimeoutError as exc:
                self._cancel_refs(record)
                self.failed += 1
                raise RequestTimeoutError(f"request {record.request_id} did not finish within {timeout_s:g} s") from exc
            except asyncio.CancelledError:
                self._cancel_refs(record)
                raise
            except Exception as exc:
                self._cancel_refs(record)
                if record.cancelled or isinstance(exc, ray.exceptions.TaskCancelledError):
                    raise RequestCancelledError(f"request {record.request_id} was cancelled") from None
                user_error = _user_error(exc)
                if user_error is not None:
                    self.failed += 1
                    raise user_error from None
                if not is_infrastructure(exc):  # the request's own computation raised: again would raise again
                    self.failed += 1
                    logger.warning("request %s failed in its own computation: %s", record.request_id, short(exc))
                    raise RequestFailedError(f"request {record.request_id} failed: {short(exc)}") from exc
                logger.warning("request %s attempt %d failed: %s", record.request_id, attempt, exc)  # whole, for logs
                recovery = self._recovery_for(generation)  # rebuild even if this request gives up
                if attempt > self.config.max_retries:
                    self.failed += 1
                    raise RequestFailedError(
                        f"request {record.request_id} failed after {attempt} attempt(s): {short(exc)}"
                    ) from exc
                try:
                    await asyncio.shield(recovery)
                except Exception as rebuild_exc:
                    self.failed += 1
                    raise RequestFailedError(
                        f"request {record.request_id} failed and the actors could not be rebuilt: {short(rebuild_exc)}"
                    ) from rebuild_exc
                if record.cancelled:
                    raise RequestCancelledError(f"request {record.request_id} was cancelled") from None
                continue
            finally:
                planner.release(record.request_id, completed)
            return self._finished(record, video, params, plan, admitted, attempt, submitted)

    async def _attempt(
        self, executor: Executor, plan: Plan, req: EncodeRequest, record: RequestRecord, deadline: float
    ) -> EncodedVideo:
        """One attempt of the plan, until it ends, the deadline passes (TimeoutError), or the health watch finds
        one of its actors lost (ActorLostError): a call downstream of a dead actor may otherwise never fail."""
        run = asyncio.ensure_future(executor.execute(plan, req, record))
        try:
            done, _ = await asyncio.wait(
                {run, record.lost}, timeout=max(0.0, deadline - time.time()), return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            run.cancel()
            raise
        lost = record.lost.exception() if record.lost.done() else None  # retrieved either way: no asyncio warning
        if run in done:
            return run.result()
        run.cancel()
        if lost is not None:
            raise lost
        raise asyncio.TimeoutError

    async def _watch_health(self) -> None:
        """While requests run, ping every actor; a lost one (dead, or no answer within ping_timeout_s) fails the
        attempts whose plans use it, and they retry after the rebuild like any actor failure."""
        while True:
            await asyncio.sleep(_WATCH_S)
            busy = [r for r in self._inflight.values() if r.lost is not None and not r.lost.done()]
            if not busy or (self._recovery is not None and not self._recovery.done()):
                continue
            try:
                states = await self.pool.states()
            except Exception:  # the pool is changing under the watch: look again next time
                continue
            n = len(self.layout)
            lost = {i for i, s in enumerate(states[:n]) if s != "alive"}
            lost_mux = {i for i, s in enumerate(states[n:]) if s != "alive"}
            if not lost and not lost_mux:
                continue
            names = [self.layout[i].name for i in sorted(lost)] + [self.mux_layout[i].name for i in sorted(lost_mux)]
            for record in busy:
                if record.uses(lost, lost_mux) and not record.lost.done():
                    record.lost.set_exception(ActorLostError(f"actor(s) {', '.join(names)} lost"))

    def _finished(
        self,
        record: RequestRecord,
        video: EncodedVideo,
        params: ResolvedParams,
        plan: Plan,
        admitted: float,
        attempt: int,
        submitted: float,
    ) -> EngineResult:
        record.report(record.total_steps)
        # A parareal request's trace holds encode and decode only: no hop figures to learn from it.
        timings = self.stats.add(video.trace, submitted) if record.parareal is None else []
        self.completed += 1
        split_done = plan.split and record.parareal is None
        if split_done:
            self.split_requests += 1
            self.helper_busy_s += sum(t.helper_s for t in video.trace)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "request %s done in %.3f s: %s",
                record.request_id,
                time.time() - admitted,
                "; ".join(f"{t.stage} step {t.step_ms:.1f} hop {t.hop_ms:.2f} queue {t.queue_ms:.1f}" for t in timings),
            )
        return EngineResult(
            record.request_id,
            video,
            params,
            timings,
            time.time() - admitted,
            attempt,
            plan,
            split_done,
            plan.split_reason,
            record.parareal,
        )

    def _cancel_refs(self, record: RequestRecord) -> None:
        for task in record.tasks:
            task.cancel()
        for ref in record.refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref)

    def _on_step_report(self, request_id: str, steps_done: int) -> None:
        record = self._inflight.get(request_id)
        if record is not None:  # else finished, cancelled, or the warm-up
            record.report(steps_done)

    def _on_call_event(self, event: CallEvent) -> None:
        if self.planner is not None:
            self.planner.record(event)

    # ---------------------------------------------------------------- failures

    def _recovery_for(self, generation: int) -> asyncio.Task:
        """The one rebuild task for failures seen at `generation` (started on first call)."""
        if self._recovery is None or (self._recovery.done() and self._generation == generation):
            self._recovery = asyncio.get_running_loop().create_task(self._recover(generation))
        return self._recovery

    async def _recover(self, generation: int) -> None:
        """Replace lost actors and the collective group (pool.rebuild), warm the new ones and every hop; if that
        fails, replace every model actor once more. Each wait inside is bounded (config.start_timeout_s)."""
        assert self._rebuild_lock is not None
        async with self._rebuild_lock:
            if self._generation != generation:
                return  # another request already rebuilt after this failure
            png, params = self._warmup_request()
            try:
                fresh = await self.pool.rebuild()
                await self.pool.warm_up(fresh, png, params)
                await self._check_devices()
                await self._warm_chain()
            except Exception as exc:
                logger.warning("rebuild failed (%s); replacing every model actor", short(exc))
                fresh = await self.pool.replace_all()
                await self.pool.warm_up(fresh, png, params)
                await self._check_devices()
                await self._warm_chain()
            self._generation += 1
            self.rebuilds += 1

    # ---------------------------------------------------------------- health

    async def health(self) -> list[dict[str, Any]]:
        """Each actor's state (alive, dead, or unresponsive: no answer to a ping within ping_timeout_s) and
        its recent timing."""
        summary = self.stats.summary()
        specs = self.layout + self.mux_layout
        states = await self.pool.states() if self.pool.models else ["dead"] * len(specs)
        return [
            {"name": s.name, "role": s.role, "parts": list(s.parts), "state": state, **summary.get(s.name, {})}
            for s, state in zip(specs, states, strict=True)
        ]


def _user_error(exc: BaseException) -> SvdpipeError | None:
    """The request's own fault (bad image, bad parameter), raised inside a stage as one of ours."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, SvdpipeError):
        return cause
    return None
