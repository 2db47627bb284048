"""The actor pool: placement, the model and mux actors' lifecycle, the collective group, health and rebuild.

Public Ray APIs only. Health is a ping on each actor's own "control" thread, so a busy actor answers and a dead
one raises at once. Every wait on an actor (ready, warm-up, ping, group creation) has a timeout: a survivor stuck
in a collective receive cannot hang a rebuild; an actor that does not answer in time is replaced like a dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any, Literal

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from svdpipe.config import EngineConfig, ResolvedParams
from svdpipe.errors import ConfigError
from svdpipe.placement import ActorSpec, ConcreteTransport, actor_layout, bundles, mux_layout
from svdpipe.reporting import StepReporter
from svdpipe.worker import ModelWorker, MuxWorker, PhaseCosts

logger = logging.getLogger(__name__)

ActorState = Literal["alive", "dead", "unresponsive"]
_GROUP_BACKENDS = {"gloo": "torch_gloo", "nccl": "nccl"}  # transports that need a collective group
RDT = ("gloo", "nccl", "cuda_ipc")  # Ray Direct Transport: tensors move actor to actor, not via the object store


class ActorPool:
    """The actors of one engine: `models[i]` runs layout[i]'s calls, `muxers[j]` writes video files."""

    def __init__(
        self,
        config: EngineConfig,
        transport: ConcreteTransport,
        placement: PlacementGroup | None = None,
        first_bundle: int = 0,
        worker: type = ModelWorker,
    ) -> None:
        self.config, self.transport = config, transport
        self.layout: list[ActorSpec] = actor_layout(config)
        self.mux_layout: list[ActorSpec] = mux_layout(config)
        self.models: list[Any] = []
        self.muxers: list[Any] = []
        self._worker = worker  # the model actor's body (a test may give a subclass)
        self._pg = placement
        self._own_pg = placement is None
        self._first_bundle = first_bundle
        self._group: Any = None
        self._reporter: StepReporter | None = None

    @property
    def rdt(self) -> bool:
        return self.transport in RDT

    # ---------------------------------------------------------------- start and stop

    async def start(self, reporter: StepReporter) -> None:
        """Reserve the placement group, start every actor, wait until each answers, and form the group."""
        self._reporter = reporter
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
        self.models = [None] * len(self.layout)
        self.muxers = [await self._new_actor(spec) for spec in self.mux_layout]
        await self._ready()
        await self._make_group()
        await self._make_wide()

    async def shutdown(self) -> None:
        """Kill every actor and release the placement group (if this pool reserved it)."""
        await self._destroy_group()
        for actor in self.models + self.muxers:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self.models, self.muxers = [], []
        if self._own_pg and self._pg is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(self._pg)
            self._pg = None

    async def warm_up(self, indices: Iterable[int], image_png: bytes, params: ResolvedParams) -> list[PhaseCosts]:
        """Each listed model actor runs a request of its own (first-call costs paid here, not by users) and
        returns the phase costs it measured."""
        indices = list(indices)
        calls = [self.models[i].warm_up.remote(image_png, params) for i in indices]
        costs = list(await self._within(asyncio.gather(*calls), self.config.start_timeout_s, "warm up"))
        if self.config.latency_mode in ("cfg-split", "auto"):  # the helpers' batch-of-one, on their own thread
            halves = [
                self.models[i].warm_half.options(concurrency_group="help").remote(image_png, params) for i in indices
            ]
            await self._within(asyncio.gather(*halves), self.config.start_timeout_s, "warm up")
        return costs

    async def device_reports(self) -> list[Any]:
        """Each model actor's device, memory and warm-up peaks (worker.DeviceReport)."""
        calls = [a.device_report.options(concurrency_group="control").remote() for a in self.models]
        return list(await self._within(asyncio.gather(*calls), self.config.ping_timeout_s, "report their devices"))

    # ---------------------------------------------------------------- health and rebuild

    async def states(self) -> list[ActorState]:
        """Each actor's state (models, then muxers), from a ping on its control thread."""
        return list(await asyncio.gather(*[self._state(a) for a in self.models + self.muxers]))

    async def rebuild(self) -> list[int]:
        """Replace dead and unresponsive actors and re-form the collective group; returns the indices of the
        new model actors (to warm up). If the group cannot be formed in time (a survivor stuck in a transfer,
        or killed by Ray's transfer monitor meanwhile), every model actor is replaced."""
        states = await self.states()
        n = len(self.models)
        bad = [i for i, s in enumerate(states[:n]) if s != "alive"]
        bad_mux = [i for i, s in enumerate(states[n:]) if s != "alive"]
        logger.warning(
            "rebuilding actors %s (transport %s)",
            [f"{self.layout[i].name} ({states[i]})" for i in bad]
            + [f"{self.mux_layout[i].name} ({states[n + i]})" for i in bad_mux]
            or "none lost",
            self.transport,
        )
        await self._destroy_group()  # a collective group cannot lose a member: it is formed again whole
        for i in bad:
            self._replace(i)
        for i in bad_mux:
            with contextlib.suppress(Exception):
                ray.kill(self.muxers[i])
            self.muxers[i] = await self._new_actor(self.mux_layout[i])
        try:
            await self._ready()
            await self._make_group()
            await self._make_wide()
        except Exception as exc:
            logger.warning("partial rebuild failed (%s); replacing every model actor", type(exc).__name__)
            bad = await self.replace_all()
        return bad

    async def replace_all(self) -> list[int]:
        """Replace every model actor (a rebuild whose warm-up through the chain failed)."""
        await self._destroy_group()
        for i in range(len(self.models)):
            self._replace(i)
        await self._ready()
        await self._make_group()
        await self._make_wide()
        return list(range(len(self.models)))

    def _replace(self, i: int) -> None:
        with contextlib.suppress(Exception):
            ray.kill(self.models[i])
        self.models[i] = None  # created again in _ready, once Ray has freed the name

    # ---------------------------------------------------------------- internals

    async def _state(self, actor: Any) -> ActorState:
        try:
            await self._within(
                actor.ping.options(concurrency_group="control").remote(), self.config.ping_timeout_s, "ping"
            )
        except TimeoutError:
            return "unresponsive"
        except ray.exceptions.RayActorError:
            return "dead"
        return "alive"

    async def _within(self, awaitable: Any, timeout_s: float, what: str) -> Any:
        try:
            return await asyncio.wait_for(awaitable, timeout_s)
        except asyncio.TimeoutError as exc:
            raise TimeoutError(f"actors did not {what} within {timeout_s:g} s") from exc

    async def _ready(self) -> None:
        """Create the model actors still missing (new or replaced), then wait (bounded) until every actor
        answers."""
        for i, actor in enumerate(self.models):
            if actor is None:
                self.models[i] = await self._new_actor(self.layout[i])
        pings = [a.ping.options(concurrency_group="control").remote() for a in self.models + self.muxers]
        try:
            await self._within(asyncio.gather(*pings), self.config.start_timeout_s, "start")
        except ray.exceptions.RayActorError as exc:
            raise ConfigError(f"an actor failed to start: {exc}") from exc

    async def _new_actor(self, spec: ActorSpec) -> Any:
        if spec.role == "mux":
            cls = ray.remote(concurrency_groups={"control": 1})(MuxWorker)
            return await self._create(cls, spec, {"num_cpus": self.config.num_cpus_per_actor}, self._reporter)
        # Every model actor gets a thread of its own for the CFG halves it computes as a helper, so a half is
        # never queued behind this actor's own calls, and one for pings; RDT's transfers stay on the single
        # default thread.
        cls = ray.remote(enable_tensor_transport=self.rdt, concurrency_groups={"help": 1, "control": 1})(self._worker)
        options: dict[str, Any] = {
            "num_cpus": self.config.num_cpus_per_actor,
            "num_gpus": self.config.num_gpus_per_actor,
            # RDT needs single-threaded actors. On the object store, threads let Ray receive and deserialise the
            # next calls while one computes (the busy-stage hand-off fell from 2.6 to 0.6 ms, BENCHMARKS.md),
            # and the worker's priority gate then runs them in the plan's order (svdpipe/gate.py).
            "max_concurrency": 1 if self.rdt else self.config.max_inflight + 1,
        }
        return await self._create(cls, spec, options, self.rdt, self._reporter)

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
        if not self.rdt:
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

    async def _make_group(self) -> None:
        backend = _GROUP_BACKENDS.get(self.transport)
        if backend is None:
            return
        from ray.experimental.collective import create_collective_group

        # Named "default": gloo ranks use torch's process-wide world group, which only a group of that name
        # tears down, so surviving actors can join the rebuilt group after a failure. One grouped engine per
        # process therefore. Ray's call blocks on every member's init: in a thread, bounded.
        create = asyncio.to_thread(create_collective_group, self.models, backend=backend, name="default")
        self._group = await self._within(create, self.config.start_timeout_s, "form the collective group")

    async def _make_wide(self) -> None:
        """The 'wide' latency mode: every model actor joins one torch.distributed group (rank = its index) and its
        group of wide_size (worker.join_wide); formed whole again after a rebuild, bounded like the rest."""
        if not self.config.wide_steps:
            return
        timeout_s = self.config.start_timeout_s
        address = await self._within(self.models[0].wide_address.remote(), self.config.ping_timeout_s, "answer")
        n, size = len(self.models), self.config.wide_size
        joins = [actor.join_wide.remote(address, i, n, size, timeout_s) for i, actor in enumerate(self.models)]
        await self._within(asyncio.gather(*joins), timeout_s, "form the wide process group")

    async def _destroy_group(self) -> None:
        if self._group is None:
            return
        from ray.experimental.collective import destroy_collective_group

        group, self._group = self._group, None
        with contextlib.suppress(Exception):  # Ray's transfer monitor may have destroyed it already
            await self._within(asyncio.to_thread(destroy_collective_group, group), self.config.ping_timeout_s, "leave")
