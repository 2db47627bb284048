"""The engine: builds the model and mux actors and their collective group, admits requests, executes plans.

The planner (svdpipe.planner, pure) decides each request's plan; this module only runs it. Every call of a plan
is submitted at once, each taking the previous call's ObjectRef (the decode calls all take the chain's final
state, the mux call all decoded parts). Ray starts a call as soon as its input exists and its actor is free, so
requests overlap across actors (pipeline fill) with no round trip through this process per hop, and, with Ray
Direct Transport, latents go straight from actor to actor. This process created the collective group, so it is
the one allowed to submit calls that pass those refs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
    resolve_params,
)
from svdpipe.engine.exchange import HalfExchange
from svdpipe.engine.parareal import run_parareal
from svdpipe.engine.progress import ProgressFeed, StepReporter
from svdpipe.errors import (
    ConfigError,
    RequestCancelledError,
    RequestFailedError,
    RequestTimeoutError,
    SvdpipeError,
)
from svdpipe.latency import SplitPlan, plan_cfg_split, split_work
from svdpipe.memory import check_peaks, max_decode_chunk
from svdpipe.models import model_spec
from svdpipe.parareal import PararealStats
from svdpipe.placement import ActorSpec, actor_layout, bundles, check_devices, choose_transport, mux_layout
from svdpipe.planner import CostModel, Plan, Planner, RequestShape, actor_calls
from svdpipe.timing import HopTiming, StageStats
from svdpipe.worker import EncodedVideo, EncodeRequest, ModelWorker, MuxWorker, PhaseCosts, median_costs

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (steps done, total steps)
_GROUP_BACKENDS = {"gloo": "torch_gloo", "nccl": "nccl"}  # transports that need a collective group
_RDT = ("gloo", "nccl", "cuda_ipc")
_CALL_S = 0.002  # turnaround of one actor call (measured hop here: ~2.5 ms); lets the planner merge calls


@dataclass(frozen=True)
class EngineResult:
    """A finished request: the encoded video and where its time went."""

    request_id: str
    video: EncodedVideo
    params: ResolvedParams
    timings: list[HopTiming]
    latency_s: float
    attempts: int
    plan: Plan
    split: bool = False  # each step's guidance halves ran on two actors (latency_mode cfg-split / auto)
    split_reason: str = ""  # why it was or was not split
    parareal: PararealStats | None = None  # iterations, UNet evaluations, final change (latency_mode parareal)


@dataclass
class _Inflight:
    request_id: str
    refs: list[ray.ObjectRef] = field(default_factory=list)
    cancelled: bool = False
    on_progress: ProgressCallback | None = None
    plan: Plan | None = None
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
    """Owns the actors of one deployment and runs requests' plans on them (asyncio)."""

    def __init__(
        self, config: EngineConfig, placement_group: PlacementGroup | None = None, first_bundle: int = 0
    ) -> None:
        self.config = config
        self.layout: list[ActorSpec] = actor_layout(config)
        self.mux_layout: list[ActorSpec] = mux_layout(config)
        self.planner: Planner | None = None  # built at start, from the phase costs the actors measure
        self.spec = model_spec(config.model)
        self.max_decode_chunk: int | None = None  # GPU actors: the largest decode chunk that fits (warm-up)
        self.transport = choose_transport(config)
        self.stats = StageStats()
        self._pg = placement_group
        self._own_pg = placement_group is None
        self._first_bundle = first_bundle
        self._actors: list[Any] = []
        self._muxers: list[Any] = []
        self._load = [0.0] * len(self.layout)  # expected seconds of planned, unfinished work per model actor
        self._mux_load = [0.0] * len(self.mux_layout)  # unfinished requests per mux actor
        self._group: Any = None
        self._generation = 0
        self._inflight: dict[str, _Inflight] = {}
        self._slots: asyncio.Semaphore | None = None
        self._rebuild_lock: asyncio.Lock | None = None
        # Model actors report every finished step to the feed's sink (engine/progress.py).
        self._progress = ProgressFeed(self._on_step_report)
        self._reporter: StepReporter | None = None
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
            self._reporter = self._progress.start()
            self._actors = [await self._new_actor(spec) for spec in self.layout]
            self._muxers = [await self._new_actor(spec) for spec in self.mux_layout]
            await self._await_ready(self._actors + self._muxers)
            self._make_group()
            self.planner = self._make_planner(await self._warm_up(range(len(self._actors))))
        except BaseException:
            await self.shutdown()
            raise
        self._started = True
        logger.info(
            "engine ready: %d model actors, %d mux actors, %s, transport %s, costs %s",
            len(self._actors),
            len(self._muxers),
            self.config.parallelism,
            self.transport,
            self.planner.costs if self.planner is not None else None,
        )

    async def shutdown(self) -> None:
        """Cancel everything in flight, kill the actors and release the placement group."""
        for inf in list(self._inflight.values()):
            self._cancel_refs(inf)
        await self._progress.stop()
        self._destroy_group()
        for actor in self._actors + self._muxers:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self._actors, self._muxers = [], []
        if self._own_pg and self._pg is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(self._pg)
            self._pg = None
        self._started = False

    async def _new_actor(self, spec: ActorSpec) -> Any:
        if spec.role == "mux":
            return await self._create(ray.remote(MuxWorker), spec, {"num_cpus": self.config.num_cpus_per_actor})
        rdt = self.transport in _RDT
        # Every model actor gets a thread of its own for the CFG halves it computes as a helper, so a half is
        # never queued behind this actor's own calls; RDT's transfers stay on the single default thread.
        cls = ray.remote(enable_tensor_transport=rdt, concurrency_groups={"help": 1})(ModelWorker)
        options: dict[str, Any] = {
            "num_cpus": self.config.num_cpus_per_actor,
            "num_gpus": self.config.num_gpus_per_actor,
            # RDT needs single-threaded actors. On the object store a second thread lets Ray receive and
            # deserialise the next request while this one computes (the worker's lock keeps one request in
            # the model at a time): the busy-stage hand-off fell from 2.6 to 0.6 ms (BENCHMARKS.md).
            "max_concurrency": 1 if rdt else 2,
        }
        return await self._create(cls, spec, options, rdt, self._reporter)

    async def _create(self, cls: Any, spec: ActorSpec, options: dict[str, Any], *args: Any) -> Any:
        bundle = self._first_bundle + spec.index + (len(self.layout) if spec.role == "mux" else 0)
        options = {
            **options,
            "name": spec.name,
            "namespace": self.config.namespace,
            "max_restarts": 0,
            # Run whichever queued call has its input first: no head-of-line blocking behind a request still
            # upstream, and a cancelled call that never got its input does not stall the calls behind it
            # (in-order actors wait 30 s for the missing sequence number, then fail them).
            "allow_out_of_order_execution": True,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self._pg, placement_group_bundle_index=bundle
            ),
        }
        if self.transport not in _RDT:
            # Incoming tensors become views of the object store's shared memory instead of unpickled copies
            # (actors never write to their inputs).
            options["runtime_env"] = {"env_vars": {"RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1"}}
        for _ in range(50):  # a replaced actor's name frees once Ray has marked it dead
            try:
                return cls.options(**options).remote(self.config, spec, *args)
            except ValueError as exc:  # ActorAlreadyExistsError
                if "already taken" not in str(exc):
                    raise
                await asyncio.sleep(0.1)  # never time.sleep: this runs on the serving event loop
        raise ConfigError(
            f"an actor named {spec.name!r} already exists in Ray namespace {self.config.namespace!r}: is another "
            "svdpipe engine running? Give this one another name_prefix or namespace"
        )

    async def _await_ready(self, actors: list[Any]) -> None:
        try:
            await asyncio.gather(*[a.ping.remote() for a in actors])
        except ray.exceptions.RayActorError as exc:
            raise ConfigError(f"an actor failed to start: {exc}") from exc

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

    def _warmup_request(self, steps: int) -> tuple[bytes, ResolvedParams]:
        import io

        import PIL.Image

        buf = io.BytesIO()
        PIL.Image.new("RGB", (self.spec.default_width, self.spec.default_height), (127, 127, 127)).save(buf, "PNG")
        params = resolve_params(VideoParams(num_inference_steps=steps, seed=0, max_guidance_scale=2.0), self.spec)
        return buf.getvalue(), params

    async def _warm_up(self, fresh: range | list[int]) -> PhaseCosts | None:
        """Warm the `fresh` model actors with a request of the model's default shape run inside each (so no user
        request pays first-call costs: lazy initialisation, allocator growth, torch.compile for the default
        shape), then one request through every actor's hops; returns the median phase costs they measured
        (None when no actor was fresh: a rebuild that only remade the collective group)."""
        png, params = self._warmup_request(self.config.num_stages)
        costs = await asyncio.gather(*[self._actors[i].warm_up.remote(png, params) for i in fresh])
        measured = median_costs(list(costs)) if costs else None
        if self.config.latency_mode in ("cfg-split", "auto"):  # the helpers' batch-of-one on their own thread
            help_thread = [self._actors[i].warm_half.options(concurrency_group="help") for i in fresh]
            await asyncio.gather(*[m.remote(png, params) for m in help_thread])
        await self._check_devices()
        # One pipeline plan visits every model actor (and a mux actor), warming the transport between them.
        cost_model = self._cost_model(measured) if measured is not None else self._planner_costs()
        planner = Planner(len(self._actors), len(self._muxers), cost_model)
        plan = planner.plan("warmup", RequestShape(params.num_inference_steps, params.num_frames, params.num_frames))
        split = None
        if self.config.latency_mode in ("cfg-split", "auto"):  # warm the helpers' exchange as well
            owners = [st.actor for st in plan.stages]
            split = plan_cfg_split("cfg-split", True, owners, [0.0] * len(self._actors))
        refs = self._submit(plan, EncodeRequest("warmup", png, params, "npy", time.time()), split)
        await refs[-1]
        return measured

    async def _check_devices(self) -> None:
        """The actors' devices suit the transport (CUDA IPC: one physical GPU), the actors sharing a GPU fit at
        their warm-up peaks together, and the largest decode chunk their free memory holds, for requests that
        leave decode_chunk_size to 'auto'."""
        reports = await asyncio.gather(*[a.device_report.remote() for a in self._actors])
        check_devices(self.transport, [r.name for r in reports], [r.uuid for r in reports])
        check_peaks([(r.name, r.uuid, r.peak_bytes, r.total_bytes) for r in reports])
        self.max_decode_chunk = max_decode_chunk([(r.decode_frame_bytes, r.free_bytes) for r in reports])
        if self.max_decode_chunk is not None:
            logger.info("decode chunks of up to %d frames fit the actors' free memory", self.max_decode_chunk)

    def _cost_model(self, measured: PhaseCosts) -> CostModel:
        """Simulated costs where the config sets them (exact), the actors' measurements otherwise."""
        c = self.config

        def pick(ms: float | None, measured_s: float) -> float:
            return ms / 1000 if ms is not None else measured_s

        step = pick(c.simulate_step_ms, measured.step_s)
        return CostModel(
            encode_s=pick(c.simulate_encode_ms, measured.encode_s),
            step_s=max(step, 1e-6),
            decode_frame_s=pick(c.simulate_decode_frame_ms, measured.decode_frame_s),
            call_s=_CALL_S,
        )

    def _planner_costs(self) -> CostModel:
        assert self.planner is not None, "a rebuild without fresh actors happens only after start"
        return self.planner.costs

    def _make_planner(self, measured: PhaseCosts | None) -> Planner:
        assert measured is not None, "start warms every model actor, so they all measured"
        return Planner(
            len(self.layout),
            len(self.mux_layout),
            self._cost_model(measured),
            self.config.parallelism,
            self.config.step_weights,
        )

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
            params = resolve_params(params, self.spec, self.max_decode_chunk)
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
        """Cancel a running request: its remaining calls are skipped and its slot freed."""
        inf = self._inflight.get(request_id)
        if inf is None:
            return False
        inf.cancelled = True
        self._cancel_refs(inf)
        return True

    async def _run(
        self, inf: _Inflight, image_png: bytes, params: ResolvedParams, fmt: OutputFormat, timeout_s: float
    ) -> EngineResult:
        assert self.planner is not None
        admitted = time.time()
        deadline = admitted + timeout_s
        shape = RequestShape(
            params.num_inference_steps, params.num_frames, params.decode_chunk_size, params.do_classifier_free_guidance
        )
        attempt = 0
        while True:
            attempt += 1
            if self._recovery is not None and not self._recovery.done():
                await asyncio.shield(self._recovery)  # don't submit to actors being replaced
            generation = self._generation
            submitted = time.time()
            req = EncodeRequest(inf.request_id, image_png, params, fmt, submitted)
            # 1. plan against the work already planned and unfinished on each actor; 2. execute
            plan = self.planner.plan(inf.request_id, shape, self._load, self._mux_load)
            # 1b. the latency mode: helpers for CFG halves (latency.plan_cfg_split), or parareal when alone
            split = self._split_plan(plan, params)
            if split.split or self.config.latency_mode in ("cfg-split", "auto"):
                logger.info("request %s: %s", inf.request_id, split.reason)
            if split.split:
                plan = dataclasses.replace(plan, work_s=split_work(plan, split, self.planner.costs.step_s))
            inf.plan = plan
            self._account(plan, +1)
            inf.reported = 0  # a retry starts over
            inf.parareal = None
            result: Any
            if self._parareal_now(inf.request_id, plan):
                result = run_parareal(self, inf, req, plan)  # the engine drives, the model actors solve
            else:
                inf.refs = self._submit(plan, req, split)
                result = asyncio.wrap_future(inf.refs[-1].future())
            try:
                video: EncodedVideo = await asyncio.wait_for(result, timeout=max(0.0, deadline - time.time()))
            except asyncio.TimeoutError as exc:
                self._account(plan, -1)
                self._cancel_refs(inf)
                self.failed += 1
                raise RequestTimeoutError(f"request {inf.request_id} did not finish within {timeout_s:g} s") from exc
            except asyncio.CancelledError:
                self._account(plan, -1)
                self._cancel_refs(inf)
                raise
            except Exception as exc:
                self._account(plan, -1)
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
            self._account(plan, -1)
            inf.report(inf.total_steps)
            # A parareal request's trace holds encode and decode only: no hop figures to learn from it.
            timings = self.stats.add(video.trace, submitted) if inf.parareal is None else []
            self.completed += 1
            split_done = split.split and inf.parareal is None
            if split_done:
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
                plan,
                split_done,
                "parareal" if inf.parareal is not None else split.reason,
                inf.parareal,
            )

    def _split_plan(self, plan: Plan, params: ResolvedParams) -> SplitPlan:
        """Who helps which stage of this plan (the decision is latency.plan_cfg_split's, on the load ledger)."""
        owners = [st.actor for st in plan.stages]
        cfg = params.do_classifier_free_guidance
        return plan_cfg_split(self.config.latency_mode, cfg, owners, self._load)

    def _parareal_now(self, request_id: str, plan: Plan) -> bool:
        """Parareal is for one request on an idle pipeline; otherwise the request runs its plan as usual."""
        if self.config.latency_mode != "parareal":
            return False
        alone = all(r == request_id for r in self._inflight)
        if alone and len(plan.stages) > 1:
            return True
        logger.info(
            "request %s: runs its plan, not parareal (%s)",
            request_id,
            "other requests in flight" if not alone else "parareal needs >= 2 stages",
        )
        return False

    def _account(self, plan: Plan, sign: int) -> None:
        """Add (at submission) or remove (once it ended) a plan's expected work from the actors' loads."""
        for i, work in enumerate(plan.work_s):
            self._load[i] = max(0.0, self._load[i] + sign * work)
        self._mux_load[plan.mux_actor] = max(0.0, self._mux_load[plan.mux_actor] + sign)

    def _submit(self, plan: Plan, req: EncodeRequest, split: SplitPlan | None = None) -> list[ray.ObjectRef]:
        """Submit every call of `plan`; returns all refs (the video's last).
        With `split`, a call running a helped stage carries a HalfExchange with its helper actor."""
        chain, decodes = actor_calls(plan)
        helper_of: dict[tuple[int, int], int] = {}
        if split is not None:
            for st, helper in zip(plan.stages, split.helpers, strict=True):
                if helper is not None:
                    helper_of[(st.start, st.stop)] = helper
        refs: list[ray.ObjectRef] = []
        item: Any = req
        # 1. the chain: encode and the step ranges, each call taking the previous call's state
        for call in chain:
            method = self._actors[call.actor].run
            if self.transport in _RDT and not call.decode:  # decoded frames are numpy: the object store
                method = method.options(tensor_transport=self.transport)
            helper = helper_of.get(call.steps) if call.steps is not None else None
            if helper is not None:
                exchange = HalfExchange(self._actors[helper], self.layout[helper].name)
                item = method.remote(item, call, exchange)
            else:
                item = method.remote(item, call)
            refs.append(item)
        # 2. decode calls, all reading the final state at once (none when the last chain call decoded). Under RDT
        # one ref then goes to several actors, its creator possibly among them; Ray warns that RDT objects are
        # mutable, which is safe here because no phase writes to its input state (checked by the gloo parity test)
        parts = [self._actors[call.actor].run.remote(item, call) for call in decodes] or [item]
        if decodes:
            refs.extend(parts)
        # 3. the mux actor writes the file from every decoded part
        refs.append(self._muxers[plan.mux_actor].mux.remote(*parts))
        return refs

    def _cancel_refs(self, inf: _Inflight) -> None:
        for ref in inf.refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref)

    def _on_step_report(self, request_id: str, steps_done: int) -> None:
        inf = self._inflight.get(request_id)
        if inf is not None:  # else finished, cancelled, or the warm-up
            inf.report(steps_done)

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
            states = [_actor_state(a) for a in self._actors]
            dead = [i for i, state in enumerate(states) if state == "DEAD"]
            dead_mux = [i for i, a in enumerate(self._muxers) if _actor_state(a) == "DEAD"]
            grouped = self._group is not None
            if grouped:
                # A collective group cannot lose a member: rebuild it whole with the survivors.
                self._destroy_group()
            logger.warning(
                "rebuilding actors %s (transport %s)",
                [self.layout[i].name for i in dead] + [self.mux_layout[i].name for i in dead_mux] or "none dead",
                self.transport,
            )
            for i in dead:
                self._actors[i] = await self._new_actor(self.layout[i])
            for i in dead_mux:
                self._muxers[i] = await self._new_actor(self.mux_layout[i])
            try:
                await self._await_ready(self._actors + self._muxers)
                self._make_group()
                await self._warm_up(dead)
            except Exception as exc:  # survivors broken too (e.g. Ray killed the group): start over
                logger.warning("partial rebuild failed (%s); replacing every actor", _short(exc))
                self._destroy_group()
                for i, actor in enumerate(self._actors):
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
                    self._actors[i] = await self._new_actor(self.layout[i])
                await self._await_ready(self._actors + self._muxers)
                self._make_group()
                await self._warm_up(range(len(self._actors)))
            self._generation += 1

    # ---------------------------------------------------------------- health

    async def health(self) -> list[dict[str, Any]]:
        """Each actor's state (Ray's view: alive, dead, or unknown when Ray could not say) and recent timing."""
        summary = self.stats.summary()
        out = []
        for spec, actor in zip(self.layout + self.mux_layout, self._actors + self._muxers, strict=True):
            state = _actor_state(actor)
            out.append(
                {
                    "name": spec.name,
                    "role": spec.role,
                    "parts": list(spec.parts),
                    "state": "unknown" if state is None else "dead" if state == "DEAD" else "alive",
                    **summary.get(spec.name, {}),
                }
            )
        return out


def _actor_state(actor: Any) -> str | None:
    """Ray's own record of the actor ('ALIVE', 'DEAD', 'PENDING_CREATION', ...), None if Ray cannot say now.

    No call into the actor: a busy actor answers nothing until its queue drains. The public state API
    (ray.util.state.get_actor) needs the dashboard, which a deployment may run without, so this reads the GCS
    through ray._private.state; tests/ray/test_engine_behaviour.py fails loudly if that moves. A control-plane
    error is not a dead actor: callers treat None as "not known dead", so a hiccup never replaces healthy actors.
    """
    try:
        info = ray._private.state.actors(actor_id=actor._actor_id.hex())
    except Exception as exc:
        logger.warning("could not read the state of actor %s: %s", actor, _short(exc))
        return None
    return info.get("State") if info else None


def _user_error(exc: BaseException) -> SvdpipeError | None:
    """The request's own fault (bad image, bad parameter), raised inside a stage; None for infrastructure."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, SvdpipeError):
        return cause
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
