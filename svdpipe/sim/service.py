"""The model of execution: R pipelines sharing one job queue, each driving the real `svdpipe.planner.Planner`
on the virtual clock, with its model actors' gates and its mux actors, as the engine runs them.

What each part mirrors (read against engine/core.py, engine/executor.py, worker.py, gate.py):

- Admission (Engine.generate): each pipeline admits `max_inflight` requests at once; the others wait in one
  queue shared by every pipeline (the service's job queue), first come first served; a free slot goes to the
  pipeline with the fewest requests in flight.
- The plan (Engine._run): `planner.admit(request_id, shape, now)` at admission, `planner.release(request_id,
  True)` when the mux call ends. Every call reports `CallEvent("started")` when it gets its actor's gate and
  `CallEvent("ended", duration)` when it ends (ModelWorker.run, MuxWorker.mux; the mux call under
  `mux_call_index(plan)`), and the planner sees them at once (the engine sees them about one round trip late).
- The calls (ChainExecutor): `actor_calls(plan)`; each chain call needs the previous one's output, the
  decode calls all need the last chain call's, the mux call needs every decode's. A call whose input exists
  goes to the planner (`planner.ready`); `planner.assign(now)` binds ready calls to free actors (late binding,
  svdpipe/dispatch.py) and `planner.ended(call)` frees the actor when it ends. The engine learns of an end
  within one poll (POLL_S, ~2 ms); the simulator at once.
- A model actor (PriorityGate): one call at a time; of the calls waiting at it (bound calls, parareal's calls)
  the smallest `call.priority` goes first, ties by arrival.
- A call's duration: hop + encode + steps x step cost + frames x decode_frame_s, each call's whole duration
  times one draw of the spread. With a CFG helper (Plan.helpers, guidance on), step by step: the helper takes
  the half only if nothing runs or waits on it then (ModelWorker.half / latency.should_help), and the step
  costs half a guided step plus one hop of exchange; otherwise the owner computes the whole step.
- A mux actor (MuxWorker's lock): one mux call at a time, first come first served, `mux_s` each.
- Parareal (PararealExecutor), coarsely: encode on the plan's encode actor, then every stage actor busy with a
  solve of D = (K (B + 1) + 1) step costs (K iterations = parareal_max_iters or the number of stages, B the
  largest block in steps: per iteration one fine block and one coarse step on the critical path, plus the first
  coarse step), all starting together once the encode is done; then the plan's decode chunks (one call each)
  and the mux. Those calls report under UNTRACKED, as in the engine (the ledger holds the request's whole
  parareal work from admission); the solves report nothing.
- Long videos (`clips` K > 1): K dependent clip requests on one slot; clip k + 1 is admitted (planner.admit)
  when clip k's call that decodes the last frame ends; each clip is released when its mux call ends, and the
  request ends with the last clip's mux call (every clip's, should an earlier clip's mux end later). The
  planner chooses each clip's mux actor (Planner.admit takes none).

Pure Python: no Ray, no torch.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from svdpipe.ledger import CallEvent
from svdpipe.planner import UNTRACKED, ActorCall, Parallelism, Plan, Planner, RequestShape, actor_calls, mux_call_index
from svdpipe.sim.clock import EventLoop
from svdpipe.sim.costs import SimCosts, Spread
from svdpipe.wide.splits import max_share


@dataclass(frozen=True)
class Layout:
    """One simulated service: `replicas` pipelines of `actors` model actors and `mux_actors` mux actors each."""

    actors: int
    mux_actors: int = 2
    replicas: int = 1
    parallelism: Parallelism = "pipeline"
    latency_mode: str = "off"
    max_inflight: int = 16  # per pipeline (EngineConfig.max_inflight)
    parareal_max_iters: int | None = None
    name_prefix: str = "sim"
    wide_size: int = 2  # P of the 'wide' latency mode (EngineConfig.wide_size)

    def __post_init__(self) -> None:
        if min(self.actors, self.mux_actors, self.replicas, self.max_inflight) < 1:
            raise ValueError(f"every count of a layout must be at least 1: {self}")

    @property
    def gpus(self) -> int:
        return self.actors * self.replicas

    def prefix(self, replica: int) -> str:
        return self.name_prefix if self.replicas == 1 else f"{self.name_prefix}{replica}"

    def model_names(self) -> list[str]:
        return [f"{self.prefix(r)}-model-{i}" for r in range(self.replicas) for i in range(self.actors)]

    def describe(self) -> str:
        mode = "" if self.latency_mode == "off" else f", latency {self.latency_mode}"
        return f"{self.replicas}x{self.actors} {self.parallelism}{mode}"


@dataclass(frozen=True)
class Job:
    """One request of the workload: when it arrives, its shape, and how many clips it makes."""

    index: int
    arrival: float
    shape: RequestShape
    clips: int = 1


@dataclass(frozen=True)
class TraceEntry:
    """One call's time on an actor (the fields of state.StageTrace the bench's metrics read)."""

    stage: str
    started: float
    finished: float


@dataclass(frozen=True)
class HopEntry:
    """How one call entered its actor (the fields of timing.HopTiming the bench's metrics read)."""

    stage: str
    hop_ms: float
    queue_ms: float
    step_ms: float
    steps: int


@dataclass
class Finished:
    """One finished request."""

    job: Job
    admitted: float
    done: float
    trace: list[TraceEntry]
    timings: list[HopEntry]
    plans: list[Plan]  # one per clip
    replica: int
    helped_steps: int = 0  # CFG-split steps whose helper took the half
    declined_steps: int = 0  # CFG-split steps whose helper was busy (the owner computed the whole step)

    @property
    def split(self) -> bool:
        return any(p.split for p in self.plans)


# Planner calls as (kind, payload) records, when the caller asks for them (the equivalence tests replay them).
PlannerLog = list[tuple[str, Any]]


@dataclass(eq=False)
class _Request:
    job: Job
    replica: int
    admitted: float
    clip: int = 0  # the latest clip admitted
    muxed: int = 0  # clips whose mux call has ended
    trace: list[TraceEntry] = field(default_factory=list)
    timings: list[HopEntry] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)
    helped: int = 0
    declined: int = 0


@dataclass(eq=False)
class _Clip:
    request: _Request
    rid: str
    plan: Plan
    chain: list[ActorCall]
    decodes: list[ActorCall]
    last_clip: bool
    admitted: float = 0.0  # when the clip's plan was admitted: the dispatch serves older requests first
    pending: int = 0  # decode (or parareal solve) calls still to end before the next phase


@dataclass(eq=False)
class _Run:
    """One call on one actor."""

    clip: _Clip
    actor: int
    priority: float
    index: int  # reported in the call events (UNTRACKED for parareal's encode and decodes)
    encode: bool
    steps: int
    frames: int
    role: str  # chain, decode, p-encode, p-solve, p-decode
    position: int = 0  # in the chain
    call: ActorCall | None = None  # the plan's call, for the dispatch (parareal's calls are not dispatched)
    previous: int | None = None  # the actor that ran the request's previous call
    helper: int | None = None
    decodes_last_frame: bool = False
    fixed_s: float = 0.0  # a parareal solve's whole duration
    ready: float = 0.0
    started: float = 0.0
    factor: float = 1.0
    steps_left: int = 0
    helped: bool = False


@dataclass(eq=False)
class _Actor:
    name: str
    running: bool = False
    helping: bool = False  # holding the gate for another actor's CFG half
    queue: list[tuple[float, int, _Run]] = field(default_factory=list)

    @property
    def free(self) -> bool:
        return not self.running and not self.helping


@dataclass(eq=False)
class _Mux:
    name: str
    running: bool = False
    queue: deque[_Clip] = field(default_factory=deque)


@dataclass(eq=False)
class _Replica:
    planner: Planner
    models: list[_Actor]
    muxes: list[_Mux]
    inflight: int = 0


class Service:
    """A simulated service on `loop`: `submit(job)` at the job's arrival; `on_done(Finished)` when it ends."""

    def __init__(
        self,
        layout: Layout,
        costs: SimCosts,
        loop: EventLoop,
        on_done: Callable[[Finished], None],
        seed: int = 0,
        log: PlannerLog | None = None,
    ) -> None:
        self.layout, self.costs, self.loop, self.on_done, self.log = layout, costs, loop, on_done, log
        self.spread = Spread(costs.cv, seed)
        self.replicas = [
            _Replica(
                # The engine's construction (Engine.start), with the costs its planner would hold.
                Planner(
                    layout.actors,
                    layout.mux_actors,
                    costs.planner_costs(),
                    layout.parallelism,
                    None,
                    layout.latency_mode,  # type: ignore[arg-type]
                    wide_size=layout.wide_size,
                ),
                [_Actor(f"{layout.prefix(r)}-model-{i}") for i in range(layout.actors)],
                [_Mux(f"{layout.prefix(r)}-mux-{i}") for i in range(layout.mux_actors)],
            )
            for r in range(layout.replicas)
        ]
        self.waiting: deque[Job] = deque()
        self._arrivals = itertools.count()
        self._unbound: dict[tuple[int, str, int], _Run] = {}  # (replica, request id, call index) -> ready run

    # ---------------------------------------------------------------- admission

    def submit(self, job: Job) -> None:
        """The job arrives now: admitted at once if a pipeline has a free slot, else queued."""
        self.waiting.append(job)
        self._admit_waiting()

    def _admit_waiting(self) -> None:
        while self.waiting:
            replica = min(range(len(self.replicas)), key=lambda r: (self.replicas[r].inflight, r))
            if self.replicas[replica].inflight >= self.layout.max_inflight:
                return
            job = self.waiting.popleft()
            self.replicas[replica].inflight += 1
            self._begin_clip(_Request(job, replica, self.loop.now), 0)

    # ---------------------------------------------------------------- the planner, as the engine calls it

    def _admit(self, replica: _Replica, rid: str, shape: RequestShape, mux_actor: int | None = None) -> Plan:
        now = self.loop.now
        plan = replica.planner.admit(rid, shape, now, mux_actor)
        if self.log is not None:
            self.log.append(("admit", (self.replicas.index(replica), rid, shape, now, plan, mux_actor)))
        return plan

    def _record(self, replica: _Replica, event: CallEvent) -> None:
        replica.planner.record(event)
        if self.log is not None:
            self.log.append(("record", (self.replicas.index(replica), event)))

    def _ready_call(self, replica: _Replica, rid: str, run: _Run) -> None:
        assert run.call is not None
        since = run.clip.admitted
        replica.planner.ready(rid, run.call, since, run.previous)
        if self.log is not None:
            self.log.append(("ready", (self.replicas.index(replica), rid, run.call, since, run.previous)))

    def _assign(self, replica: _Replica) -> list[tuple[str, ActorCall]]:
        now = self.loop.now
        bound = replica.planner.assign(now)
        if self.log is not None:
            self.log.append(("assign", (self.replicas.index(replica), now, bound)))
        return bound

    def _ended(self, replica: _Replica, call: ActorCall) -> None:
        replica.planner.ended(call)
        if self.log is not None:
            self.log.append(("ended", (self.replicas.index(replica), call)))

    def _release(self, replica: _Replica, rid: str) -> None:
        replica.planner.release(rid, True)
        if self.log is not None:
            self.log.append(("release", (self.replicas.index(replica), rid, True)))

    # ---------------------------------------------------------------- a request's clips and calls

    def _begin_clip(self, request: _Request, k: int) -> None:
        job = request.job
        rid = str(job.index) if job.clips == 1 else f"{job.index}.clip{k}"
        replica = self.replicas[request.replica]
        last = k == job.clips - 1
        # As the engine runs a long video (engine/clips.py): a clip with a clip after it decodes its last frame
        # first, and every clip goes to the mux actor of the first.
        shape = dataclasses.replace(job.shape, feeds_next=not last)
        plan = self._admit(replica, rid, shape, request.plans[0].mux_actor if request.plans else None)
        request.clip = k
        request.plans.append(plan)
        if plan.parareal:
            clip = _Clip(request, rid, plan, [], [], last)
            self._ready(clip, _Run(clip, plan.encode_actor, 0.0, UNTRACKED, True, 0, 0, "p-encode"))
            return
        chain, decodes = actor_calls(plan)
        clip = _Clip(request, rid, plan, chain, decodes, last, self.loop.now, pending=len(decodes))
        self._ready(clip, self._chain_run(clip, 0, None))

    def _chain_run(self, clip: _Clip, i: int, previous: int | None) -> _Run:
        call = clip.chain[i]
        return self._run_of(clip, call, "chain", i, previous)

    def _run_of(self, clip: _Clip, call: ActorCall, role: str, position: int = 0, previous: int | None = None) -> _Run:
        steps = call.steps[1] - call.steps[0] if call.steps is not None else 0
        frames = sum(b - a for a, b in call.decode)
        last_frame = any(b == clip.plan.num_frames for _, b in call.decode)
        helper = call.helper if clip.plan.cfg else None
        dispatched = call if role in ("chain", "decode") else None
        return _Run(
            clip,
            call.actor,
            call.priority,
            call.index,
            call.encode,
            steps,
            frames,
            role,
            position,
            dispatched,
            previous,
            helper,
            last_frame,
        )

    def _ready(self, clip: _Clip, run: _Run) -> None:
        """The call's input exists: a plan's call goes to the planner's dispatch, which binds it to a free actor;
        parareal's calls wait at their actor's gate."""
        replica = clip.request.replica
        run.ready = self.loop.now
        if run.call is None:
            self._queue(replica, run)
            return
        self._unbound[(replica, clip.rid, run.index)] = run
        self._ready_call(self.replicas[replica], clip.rid, run)
        self._dispatch(replica, run.actor)

    def _queue(self, replica: int, run: _Run) -> None:
        actor = self.replicas[replica].models[run.actor]
        heapq.heappush(actor.queue, (run.priority, next(self._arrivals), run))
        self._dispatch(replica, run.actor)

    def _dispatch(self, replica: int, index: int) -> None:
        """Bind what the planner binds now, then start a waiting call on every free actor touched."""
        models = self.replicas[replica].models
        touched = [index]
        for rid, call in self._assign(self.replicas[replica]):
            run = self._unbound.pop((replica, rid, call.index))
            run.actor, run.call = call.actor, call
            heapq.heappush(models[call.actor].queue, (run.priority, next(self._arrivals), run))
            touched.append(call.actor)
        for i in touched:
            actor = models[i]
            if actor.free and actor.queue:
                _, _, run = heapq.heappop(actor.queue)
                self._start(replica, actor, run)

    def _start(self, replica: int, actor: _Actor, run: _Run) -> None:
        now, c = self.loop.now, self.costs
        actor.running = True
        run.started, run.factor = now, self.spread.factor()
        rep = self.replicas[replica]
        if run.role != "p-solve":
            self._record(rep, CallEvent(run.clip.rid, run.index, "started", now))
        if run.role == "p-solve":
            self.loop.after(run.fixed_s * run.factor, self._end, replica, actor, run)
            return
        prefix = c.hop_s + (c.encode_s if run.encode else 0.0)
        if run.helper is not None and run.steps:
            run.steps_left = run.steps
            self.loop.after(prefix * run.factor, self._step, replica, actor, run)
            return
        step = c.step_s if run.clip.plan.cfg else c.step_s / 2
        if run.call is not None and run.call.wide:  # every rank busy for the busiest rank's share of each call
            for a in run.call.wide:
                self.replicas[replica].models[a].running = True
            step *= max_share(run.clip.plan.num_frames, len(run.call.wide))
        work = prefix + run.steps * step + run.frames * c.decode_frame_s
        self.loop.after(work * run.factor, self._end, replica, actor, run)

    def _step(self, replica: int, actor: _Actor, run: _Run) -> None:
        """A CFG-split call's next step: the helper takes the half if nothing runs or waits on it now."""
        models = self.replicas[replica].models
        if run.helped:  # the previous step's half is back: the helper's gate is free again
            run.helped = False
            models[run.helper].helping = False  # type: ignore[index]
            self._dispatch(replica, run.helper)  # type: ignore[arg-type]
        if not run.steps_left:
            self.loop.after(run.frames * self.costs.decode_frame_s * run.factor, self._end, replica, actor, run)
            return
        run.steps_left -= 1
        helper = models[run.helper]  # type: ignore[index]
        if helper.free and not helper.queue:
            helper.helping = run.helped = True
            run.clip.request.helped += 1
            dt = self.costs.step_s / 2 + self.costs.hop_s
        else:
            run.clip.request.declined += 1
            dt = self.costs.step_s
        self.loop.after(dt * run.factor, self._step, replica, actor, run)

    def _end(self, replica: int, actor: _Actor, run: _Run) -> None:
        now = self.loop.now
        actor.running = False
        wide = run.call.wide if run.call is not None else ()
        for a in wide:
            self.replicas[replica].models[a].running = False
        clip, request = run.clip, run.clip.request
        rep = self.replicas[replica]
        if run.role != "p-solve":
            self._record(rep, CallEvent(clip.rid, run.index, "ended", now, now - run.started))
        request.trace.append(TraceEntry(actor.name, run.started, now))
        step_ms = 0.0
        if run.steps:
            step_ms = 1000 * self.costs.step_s * (1.0 if clip.plan.cfg else 0.5) * run.factor
        request.timings.append(
            HopEntry(actor.name, self.costs.hop_s * 1000, (run.started - run.ready) * 1000, step_ms, run.steps)
        )
        if run.call is not None:
            self._ended(rep, run.call)
        self._output(run)
        self._dispatch(replica, run.actor)
        for a in wide:
            self._dispatch(replica, a)

    def _output(self, run: _Run) -> None:
        """Where the call's result goes: the next chain call, the decodes, the mux, the next clip."""
        clip = run.clip
        if run.decodes_last_frame and not clip.last_clip:
            self._begin_clip(clip.request, clip.request.clip + 1)
        if run.role == "chain":
            if run.position + 1 < len(clip.chain):
                self._ready(clip, self._chain_run(clip, run.position + 1, run.actor))
            elif clip.decodes:
                for call in clip.decodes:
                    self._ready(clip, self._run_of(clip, call, "decode", previous=run.actor))
            else:
                self._mux_ready(clip)
        elif run.role in ("decode", "p-decode"):
            clip.pending -= 1
            if not clip.pending:
                self._mux_ready(clip)
        elif run.role == "p-encode":
            self._parareal_solves(clip)
        elif run.role == "p-solve":
            clip.pending -= 1
            if not clip.pending:
                plan = clip.plan
                clip.pending = len(plan.decode)
                for d in plan.decode:
                    call = ActorCall(d.actor, False, None, ((d.start, d.stop),), UNTRACKED)
                    self._ready(clip, self._run_of(clip, call, "p-decode"))

    def _parareal_solves(self, clip: _Clip) -> None:
        plan, step = clip.plan, self.costs.step_s
        iters = min(self.layout.parareal_max_iters or len(plan.stages), len(plan.stages))
        block = max(len(st.steps) for st in plan.stages)
        solve_s = (iters * (block + 1) + 1) * step
        clip.pending = len(plan.stages)
        for st in plan.stages:
            run = _Run(clip, st.actor, 0.0, UNTRACKED, False, 0, 0, "p-solve", fixed_s=solve_s)
            self._ready(clip, run)

    # ---------------------------------------------------------------- mux

    def _mux_ready(self, clip: _Clip) -> None:
        replica = clip.request.replica
        mux = self.replicas[replica].muxes[clip.plan.mux_actor]
        mux.queue.append(clip)
        self._mux_dispatch(replica, mux)

    def _mux_dispatch(self, replica: int, mux: _Mux) -> None:
        if mux.running or not mux.queue:
            return
        clip = mux.queue.popleft()
        mux.running = True
        now = self.loop.now
        self._record(self.replicas[replica], CallEvent(clip.rid, mux_call_index(clip.plan), "started", now))
        self.loop.after(self.costs.mux_s * self.spread.factor(), self._mux_end, replica, mux, clip, now)

    def _mux_end(self, replica: int, mux: _Mux, clip: _Clip, started: float) -> None:
        now = self.loop.now
        rep = self.replicas[replica]
        mux.running = False
        self._record(rep, CallEvent(clip.rid, mux_call_index(clip.plan), "ended", now, now - started))
        request = clip.request
        request.trace.append(TraceEntry(mux.name, started, now))
        self._release(rep, clip.rid)
        request.muxed += 1
        if request.muxed == request.job.clips:
            rep.inflight -= 1
            r = request
            self.on_done(Finished(r.job, r.admitted, now, r.trace, r.timings, r.plans, replica, r.helped, r.declined))
            self._admit_waiting()
        self._mux_dispatch(replica, mux)
