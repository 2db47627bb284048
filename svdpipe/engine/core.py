"""The engine: builds the stage actors and their collective group, admits requests, pipelines their hops.

Every request's whole chain (encoder -> N denoise stages -> decoder) is submitted at once, each call taking
the previous call's ObjectRef. Ray starts a call as soon as its input exists and its actor is free, so
requests overlap across stages (pipeline fill) with no round trip through this process per hop, and, with
Ray Direct Transport, latents go straight from actor to actor. This process created the collective group,
so it is the one allowed to submit calls that pass those refs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from svdpipe.config import (
    EngineConfig,
    OutputFormat,
    ResolvedParams,
    VideoParams,
    check_steps_cover_stages,
    resolve_params,
)
from svdpipe.engine.exchange import HalfExchange
from svdpipe.engine.parareal import run_parareal
from svdpipe.errors import (
    ConfigError,
    RequestCancelledError,
    RequestFailedError,
    RequestTimeoutError,
    SvdpipeError,
)
from svdpipe.latency import SplitPlan, plan_cfg_split
from svdpipe.models import model_spec
from svdpipe.parareal import PararealStats
from svdpipe.partition import partition_steps, request_ranges
from svdpipe.placement import ActorSpec, actor_layout, bundles, choose_transport
from svdpipe.timing import HopTiming, StageStats
from svdpipe.worker import EncodedVideo, EncodeRequest, StageWorker

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (steps done, total steps)
_GROUP_BACKENDS = {"gloo": "torch_gloo", "nccl": "nccl"}  # transports that need a collective group
_RDT = ("gloo", "nccl", "cuda_ipc")
_PROGRESS_POLL_S = 0.02


@dataclass(frozen=True)
class EngineResult:
    """A finished request: the encoded video and where its time went."""

    request_id: str
    video: EncodedVideo
    params: ResolvedParams
    timings: list[HopTiming]
    latency_s: float
    attempts: int
    split: bool = False  # each step's guidance halves ran on two actors (latency_mode cfg-split / auto)
    split_reason: str = ""  # why it was or was not split
    parareal: PararealStats | None = None  # iterations, UNet evaluations, final change (latency_mode parareal)


@dataclass
class _Inflight:
    request_id: str
    refs: list[ray.ObjectRef] = field(default_factory=list)
    cancelled: bool = False
    on_progress: ProgressCallback | None = None
    step_marks: list[tuple[ray.ObjectRef, int]] = field(default_factory=list)  # (ref, steps done when ready)
    total_steps: int = 0
    reported: int = 0
    parareal: PararealStats | None = None

    def report(self, steps_done: int) -> None:
        """Tell the caller about newly completed steps (each count once, never backwards)."""
        if self.on_progress is None or steps_done <= self.reported:
            return
        self.reported = steps_done
        try:
            self.on_progress(steps_done, self.total_steps)
        except Exception:  # a broken progress callback must not break the request
            logger.exception("progress callback for %s failed", self.request_id)


class Engine:
    """Owns the stage actors of one deployment and runs requests through them (asyncio)."""

    def __init__(
        self, config: EngineConfig, placement_group: PlacementGroup | None = None, first_bundle: int = 0
    ) -> None:
        self.config = config
        self.layout: list[ActorSpec] = actor_layout(config)
        self.spec = model_spec(config.model)
        self.transport = choose_transport(config)
        self.stats = StageStats()
        self._pg = placement_group
        self._own_pg = placement_group is None
        self._first_bundle = first_bundle
        self._actors: list[Any] = []
        self._group: Any = None
        self._generation = 0
        self._inflight: dict[str, _Inflight] = {}
        self._slots: asyncio.Semaphore | None = None
        self._rebuild_lock: asyncio.Lock | None = None
        self._progress_task: asyncio.Task | None = None
        self._recovery: asyncio.Task | None = None
        self._started = False
        self.completed = 0
        self.failed = 0
        self.split_requests = 0  # requests whose steps were split over an owner and a helper actor
        self.helper_busy_s = 0.0  # helper actors' compute time for those halves

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Create the placement group, the actors and their group, and warm every stage."""
        if not ray.is_initialized():
            raise ConfigError("Ray is not initialised: call ray.init() (or use svdpipe.engine.sync)")
        # 1. check the cluster can hold the layout, before any actor starts
        self.transport = choose_transport(self.config, ray.cluster_resources().get("GPU", 0.0))
        self._slots = asyncio.Semaphore(self.config.max_inflight)
        self._rebuild_lock = asyncio.Lock()
        # 2. placement: one bundle per actor
        if self._pg is None:
            self._pg = placement_group(bundles(self.config), strategy=self.config.placement_strategy)
            try:
                await asyncio.wait_for(self._pg.ready(), timeout=60)
            except asyncio.TimeoutError as exc:
                remove_placement_group(self._pg)
                self._pg = None
                raise ConfigError(
                    f"could not reserve {len(self.layout)} bundles of {bundles(self.config)[0]} "
                    f"({self.config.placement_strategy}) within 60 s: {ray.available_resources()} available"
                ) from exc
        # 3. actors, group, warm-up; on any failure release what was built
        try:
            self._actors = [self._new_actor(spec) for spec in self.layout]
            await self._await_ready(self._actors)
            self._make_group()
            await self._warm_up()
        except BaseException:
            await self.shutdown()
            raise
        self._progress_task = asyncio.get_running_loop().create_task(self._progress_loop())
        self._started = True
        logger.info(
            "engine ready: %d actors (%s), transport %s",
            len(self._actors),
            ", ".join(s.name for s in self.layout),
            self.transport,
        )

    async def shutdown(self) -> None:
        """Cancel everything in flight, kill the actors and release the placement group."""
        for inf in list(self._inflight.values()):
            self._cancel_refs(inf)
        if self._progress_task is not None:
            self._progress_task.cancel()
        self._destroy_group()
        for actor in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self._actors = []
        if self._own_pg and self._pg is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(self._pg)
            self._pg = None
        self._started = False

    def _new_actor(self, spec: ActorSpec) -> Any:
        rdt = self.transport in _RDT
        # Object-store actors get a thread of their own for CFG halves they compute as a helper, so a half is
        # never queued behind this actor's stage calls (RDT actors stay single-threaded: no CFG split there).
        cls = (
            ray.remote(enable_tensor_transport=True)(StageWorker)
            if rdt
            else ray.remote(concurrency_groups={"help": 1})(StageWorker)
        )
        options: dict[str, Any] = {
            "name": spec.name,
            "namespace": self.config.namespace,
            "num_cpus": self.config.num_cpus_per_actor,
            "num_gpus": self.config.num_gpus_per_actor,
            "max_restarts": 0,
            # RDT needs single-threaded actors. On the object store a second thread lets Ray receive and
            # deserialise the next request while this one computes (the worker's lock keeps one request in
            # the model at a time): the busy-stage hand-off fell from 2.6 to 0.6 ms (BENCHMARKS.md).
            "max_concurrency": 1 if rdt else 2,
            # Run whichever queued call has its input first: no head-of-line blocking behind a request still
            # upstream, and a cancelled call that never got its input does not stall the calls behind it
            # (in-order actors wait 30 s for the missing sequence number, then fail them).
            "allow_out_of_order_execution": True,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self._pg, placement_group_bundle_index=self._first_bundle + spec.index
            ),
        }
        if not rdt:
            # Incoming tensors become views of the object store's shared memory instead of unpickled copies
            # (stages never write to their inputs).
            options["runtime_env"] = {"env_vars": {"RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1"}}
        for _ in range(50):  # a replaced actor's name frees once Ray has marked it dead
            try:
                return cls.options(**options).remote(self.config, spec, rdt)
            except ValueError as exc:  # ActorAlreadyExistsError
                if "already taken" not in str(exc):
                    raise
                time.sleep(0.1)
        raise ConfigError(
            f"an actor named {spec.name!r} already exists in Ray namespace {self.config.namespace!r}: is another "
            "svdpipe engine running? Give this one another name_prefix or namespace"
        )

    async def _await_ready(self, actors: list[Any]) -> None:
        try:
            await asyncio.gather(*[a.ping.remote() for a in actors])
        except ray.exceptions.RayActorError as exc:
            raise ConfigError(f"a stage actor failed to start: {exc}") from exc

    def _make_group(self) -> None:
        backend = _GROUP_BACKENDS.get(self.transport)
        if backend is None:
            return
        from ray.experimental.collective import create_collective_group

        # Named "default": gloo ranks use torch's process-wide world group, which only a group of that name
        # tears down, so surviving actors can join the rebuilt group after a failure. One grouped engine per
        # process therefore.
        self._group = create_collective_group(self._actors, backend=backend, name="default")

    def _destroy_group(self) -> None:
        if self._group is None:
            return
        from ray.experimental.collective import destroy_collective_group

        with contextlib.suppress(Exception):
            destroy_collective_group(self._group)
        self._group = None

    async def _warm_up(self) -> None:
        """One request of the model's default shape through the whole chain, so no user request pays first-call
        costs (lazy initialisation, allocator growth, torch.compile for the default shape)."""
        import io

        import PIL.Image

        buf = io.BytesIO()
        PIL.Image.new("RGB", (self.spec.default_width, self.spec.default_height), (127, 127, 127)).save(buf, "PNG")
        params = resolve_params(
            VideoParams(num_inference_steps=self.config.num_stages, seed=0, max_guidance_scale=2.0),
            self.spec,
            self.config.num_stages,
        )
        req = EncodeRequest("warmup", buf.getvalue(), params, "npy", time.time())
        ranges = partition_steps(params.num_inference_steps, self.config.num_stages)
        split = None
        if self.config.latency_mode in ("cfg-split", "auto"):  # warm the batch-of-one UNet calls as well
            split = plan_cfg_split("cfg-split", True, range(len(ranges)), [0] * len(ranges), self._can_split)
        refs = self._submit_chain(req, ranges, split)
        await refs[-1]

    # ---------------------------------------------------------------- requests

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def generate(
        self,
        image_png: bytes,
        params: VideoParams | ResolvedParams,
        output_format: OutputFormat = "mp4",
        request_id: str | None = None,
        on_progress: ProgressCallback | None = None,
        timeout_s: float | None = None,
    ) -> EngineResult:
        """Run one request; waits for a slot (max_inflight), retries once on a stage failure.

        `timeout_s` (default: config.request_timeout_s) counts from admission into the pipeline.
        Raises RequestCancelledError, RequestTimeoutError, RequestFailedError, or InvalidRequestError.
        """
        if not self._started or self._slots is None:
            raise RequestFailedError("the engine is not running")
        if isinstance(params, VideoParams):
            params = resolve_params(params, self.spec, self.config.num_stages)
        check_steps_cover_stages(params.num_inference_steps, self.config.num_stages)  # resolved elsewhere
        request_id = request_id or uuid.uuid4().hex
        if request_id in self._inflight:
            raise ValueError(f"request {request_id} is already running")
        inf = _Inflight(request_id, on_progress=on_progress, total_steps=params.num_inference_steps)
        async with self._slots:
            self._inflight[request_id] = inf
            try:
                return await self._run(
                    inf, image_png, params, output_format, timeout_s or self.config.request_timeout_s
                )
            finally:
                self._inflight.pop(request_id, None)

    def cancel(self, request_id: str) -> bool:
        """Cancel a running request: its remaining stages are skipped and its slot freed."""
        inf = self._inflight.get(request_id)
        if inf is None:
            return False
        inf.cancelled = True
        self._cancel_refs(inf)
        return True

    async def _run(
        self, inf: _Inflight, image_png: bytes, params: ResolvedParams, fmt: OutputFormat, timeout_s: float
    ) -> EngineResult:
        admitted = time.time()
        deadline = admitted + timeout_s
        ranges = request_ranges(params.num_inference_steps, self.config.num_stages, self.config.step_weights)
        attempt = 0
        while True:
            attempt += 1
            if self._recovery is not None and not self._recovery.done():
                await asyncio.shield(self._recovery)  # don't submit to actors being replaced
            generation = self._generation
            submitted = time.time()
            req = EncodeRequest(inf.request_id, image_png, params, fmt, submitted)
            split = self._split_plan(inf.request_id, params, len(ranges))
            if split.split or self.config.latency_mode in ("cfg-split", "auto"):
                logger.info("request %s: %s", inf.request_id, split.reason)
            inf.reported = 0  # a retry starts over
            inf.parareal = None
            result: Any
            if self._parareal_now(inf.request_id, len(ranges)):
                # Parareal: the engine drives the iterations, the stage actors run the solves.
                result = run_parareal(self, inf, req, ranges)
            else:
                inf.refs = self._submit_chain(req, ranges, split)
                inf.step_marks = self._step_marks(inf.refs, ranges)
                result = asyncio.wrap_future(inf.refs[-1].future())
            try:
                video: EncodedVideo = await asyncio.wait_for(result, timeout=max(0.0, deadline - time.time()))
            except asyncio.TimeoutError as exc:
                self._cancel_refs(inf)
                self.failed += 1
                raise RequestTimeoutError(f"request {inf.request_id} did not finish within {timeout_s:g} s") from exc
            except asyncio.CancelledError:
                self._cancel_refs(inf)
                raise
            except Exception as exc:
                if inf.cancelled or isinstance(exc, ray.exceptions.TaskCancelledError):
                    raise RequestCancelledError(f"request {inf.request_id} was cancelled") from None
                user_error = _user_error(exc)
                if user_error is not None:
                    self.failed += 1
                    raise user_error from None
                logger.warning("request %s attempt %d failed: %s", inf.request_id, attempt, _short(exc))
                recovery = self._recovery_for(generation)  # rebuild even if this request gives up
                if attempt > self.config.max_retries:
                    self.failed += 1
                    raise RequestFailedError(
                        f"request {inf.request_id} failed after {attempt} attempt(s): {_short(exc)}"
                    ) from exc
                try:
                    await asyncio.shield(recovery)
                except Exception as rebuild_exc:
                    self.failed += 1
                    raise RequestFailedError(
                        f"request {inf.request_id} failed and the stages could not be rebuilt: {_short(rebuild_exc)}"
                    ) from rebuild_exc
                if inf.cancelled:
                    raise RequestCancelledError(f"request {inf.request_id} was cancelled") from None
                continue
            inf.report(inf.total_steps)
            # A parareal request's trace holds encode and decode only: no hop figures to learn from it.
            timings = self.stats.add(video.trace, submitted) if inf.parareal is None else []
            self.completed += 1
            if split.split:
                self.split_requests += 1
                self.helper_busy_s += sum(t.helper_s for t in video.trace)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "request %s done in %.3f s: %s",
                    inf.request_id,
                    time.time() - admitted,
                    "; ".join(
                        f"{t.stage} step {t.step_ms:.1f} hop {t.hop_ms:.2f} queue {t.queue_ms:.1f} ms" for t in timings
                    ),
                )
            return EngineResult(
                inf.request_id,
                video,
                params,
                timings,
                time.time() - admitted,
                attempt,
                split.split and inf.parareal is None,
                split.reason if inf.parareal is None else "parareal",
                inf.parareal,
            )

    @property
    def _can_split(self) -> bool:
        """CFG halves are exchanged over the object store, between actors with a helper thread."""
        return self.transport == "object_store"

    def _parareal_now(self, request_id: str, num_ranges: int) -> bool:
        """Parareal is for one request on an idle pipeline; otherwise the request is pipelined as usual."""
        if self.config.latency_mode != "parareal":
            return False
        alone = all(r == request_id for r in self._inflight)
        if not (alone and num_ranges > 1 and self._can_split):
            logger.info(
                "request %s: runs pipelined, not by parareal (%s)",
                request_id,
                "other requests in flight" if not alone else "needs >= 2 object-store stage actors",
            )
            return False
        return True

    def _split_plan(self, request_id: str, params: ResolvedParams, num_ranges: int) -> SplitPlan:
        """Who helps which stage range of this request (the decision is latency.plan_cfg_split's)."""
        mode = self.config.latency_mode
        load = self._denoise_load(request_id) if mode == "auto" else [0] * num_ranges
        return plan_cfg_split(mode, params.do_classifier_free_guidance, range(num_ranges), load, self._can_split)

    def _denoise_load(self, request_id: str) -> list[int]:
        """Per denoise stage, the calls of other in-flight requests not finished yet (queued or running)."""
        load = [0] * self.config.num_stages
        pending: list[tuple[int, ray.ObjectRef]] = []
        for inf in self._inflight.values():
            if inf.request_id == request_id:
                continue
            if not inf.refs:  # admitted but not submitted yet: it will want every stage
                load = [x + 1 for x in load]
            for i, ref in enumerate(inf.refs):
                stage = self.layout[i].denoise_stage
                if stage is not None:
                    pending.append((stage, ref))
        if pending:
            refs = [ref for _, ref in pending]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            done = set(ready)
            for stage, ref in pending:
                if ref not in done:
                    load[stage] += 1
        return load

    def _submit_chain(
        self, req: EncodeRequest, ranges: list[range], split: SplitPlan | None = None
    ) -> list[ray.ObjectRef]:
        refs: list[ray.ObjectRef] = []
        item: Any = req
        stage_actor = {spec.denoise_stage: i for i, spec in enumerate(self.layout) if spec.denoise_stage is not None}
        for actor, spec in zip(self._actors, self.layout, strict=True):
            steps, exchange = None, None
            if spec.denoise_stage is not None:
                r = ranges[spec.denoise_stage]
                steps = (r.start, r.stop)
                helper = split.helpers[spec.denoise_stage] if split is not None else None
                if helper is not None:
                    h = stage_actor[helper]
                    exchange = HalfExchange(self._actors[h], self.layout[h].name)
            method = actor.process
            if self.transport in _RDT and not spec.decodes:
                method = method.options(tensor_transport=self.transport)
            item = method.remote(item, steps, exchange) if exchange is not None else method.remote(item, steps)
            refs.append(item)
        return refs

    def _step_marks(self, refs: list[ray.ObjectRef], ranges: list[range]) -> list[tuple[ray.ObjectRef, int]]:
        marks = []
        for ref, spec in zip(refs, self.layout, strict=True):
            if spec.denoise_stage is not None and not spec.decodes:
                marks.append((ref, ranges[spec.denoise_stage].stop))
        return marks

    def _cancel_refs(self, inf: _Inflight) -> None:
        for ref in inf.refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref)

    async def _progress_loop(self) -> None:
        """Report completed step ranges without fetching the latents (ray.wait with fetch_local=False)."""
        while True:
            await asyncio.sleep(_PROGRESS_POLL_S)
            watched = {ref: inf for inf in self._inflight.values() if inf.on_progress for ref, _ in inf.step_marks}
            if not watched:
                continue
            try:
                ready, _ = ray.wait(list(watched), num_returns=len(watched), timeout=0, fetch_local=False)
            except Exception:  # a ref cancelled under us; the next round sees the new set
                continue
            for ref in ready:
                inf = watched[ref]
                for i, (mark_ref, steps) in enumerate(inf.step_marks):
                    if mark_ref == ref:
                        inf.step_marks.pop(i)
                        inf.report(steps)
                        break

    # ---------------------------------------------------------------- failures

    def _recovery_for(self, generation: int) -> asyncio.Task:
        """The one rebuild task for failures seen at `generation` (started on first call)."""
        if self._recovery is None or (self._recovery.done() and self._generation == generation):
            self._recovery = asyncio.get_running_loop().create_task(self._recover(generation))
        return self._recovery

    async def _recover(self, generation: int) -> None:
        """Replace dead actors (and the collective group they were in); one rebuild per failure."""
        assert self._rebuild_lock is not None
        async with self._rebuild_lock:
            if self._generation != generation:
                return  # another request already rebuilt after this failure
            dead = [i for i, a in enumerate(self._actors) if not _alive(a)]
            grouped = self._group is not None
            if grouped:
                # A collective group cannot lose a member: rebuild it whole with the survivors.
                self._destroy_group()
            logger.warning(
                "rebuilding stage actors %s (transport %s)",
                [self.layout[i].name for i in dead] or "none dead",
                self.transport,
            )
            for i in dead:
                with contextlib.suppress(Exception):
                    ray.kill(self._actors[i])
                self._actors[i] = self._new_actor(self.layout[i])
            try:
                await self._await_ready(self._actors)
                self._make_group()
                await self._warm_up()
            except Exception as exc:  # survivors broken too (e.g. Ray killed the group): start over
                logger.warning("partial rebuild failed (%s); replacing every actor", _short(exc))
                self._destroy_group()
                for i, actor in enumerate(self._actors):
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
                    self._actors[i] = self._new_actor(self.layout[i])
                await self._await_ready(self._actors)
                self._make_group()
                await self._warm_up()
            self._generation += 1

    # ---------------------------------------------------------------- health

    async def health(self) -> list[dict[str, Any]]:
        """Each stage's state: alive (Ray's view) and its recent timing."""
        summary = self.stats.summary()
        out = []
        for spec, actor in zip(self.layout, self._actors, strict=True):
            out.append(
                {
                    "name": spec.name,
                    "role": spec.role,
                    "parts": list(spec.parts),
                    "state": "alive" if _alive(actor) else "dead",
                    **summary.get(spec.name, {}),
                }
            )
        return out


def _alive(actor: Any) -> bool:
    """Ray's own view of the actor (no call into it: a busy stage answers nothing until its queue drains)."""
    try:
        info = ray._private.state.actors(actor_id=actor._actor_id.hex())
    except Exception:
        return False
    return bool(info) and info.get("State") in ("ALIVE", "PENDING_CREATION", "DEPENDENCIES_UNREADY", "RESTARTING")


def _user_error(exc: BaseException) -> SvdpipeError | None:
    """The request's own fault (bad image, bad parameter), raised inside a stage; None for infrastructure."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, SvdpipeError):
        return cause
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
