"""The planner: one request's plan (who encodes, who runs which steps, who decodes which frames, where the video
is muxed, who helps with guidance halves, whether parareal runs, which transport carries each hand-off) as plain
data, from a ledger of the actors' outstanding work that it owns. Pure: no Ray, no torch, no clock of its own;
the engine only executes what it returns and reports the calls' events back (`record`).

The shape of vLLM's scheduler -> SchedulerOutput -> executor. Every model actor holds the UNet, the VAE and CLIP,
so any of them may run any phase; the planner spreads each request's work so that every actor's expected work
is equal. It is greedy least-expected-work: the request's step ranges go, largest first, to the actors with the
least work (the engine's outstanding expected seconds per actor plus what this plan has already put on them),
then encode and each decode chunk go to whichever actor has the least work at that point. An actor that owns
fewer steps thus takes more codec work, and over a stream of requests the per-actor totals stay within one work
item of each other (tests/unit/test_planner.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from svdpipe.dispatch import Dispatch
from svdpipe.latency import plan_cfg_split, split_work
from svdpipe.ledger import CallEvent, Ledger
from svdpipe.partition import request_ranges
from svdpipe.wide.splits import max_share

if TYPE_CHECKING:
    from svdpipe.config import LatencyMode

# pipeline: the request's steps are split over every model actor in a chain (one step range per actor).
# data-parallel: one actor runs the whole request (encode, every step, decode), as an independent replica would.
Parallelism = Literal["pipeline", "data-parallel"]
# How a call's result reaches the next call (placement.choose_transport picks the hand-off transport).
Transport = Literal["nccl", "cuda_ipc", "gloo", "object_store"]
UNTRACKED = -1  # the index of a call the ledger does not follow (parareal's encode, solves and decodes)
_PARAREAL_WORK = -2  # the ledger's one entry for a parareal request's whole work, released when it ends
CALL_S = 0.002  # turnaround of one actor call (measured hop here: ~2.5 ms); lets the planner merge calls


@dataclass(frozen=True)
class CostModel:
    """Expected seconds of each phase on a model actor (from the simulated costs or a measured profile)."""

    encode_s: float  # CLIP + VAE encode of the input image
    step_s: float  # one denoising step with classifier-free guidance (a UNet batch of two)
    decode_frame_s: float  # VAE decode of one frame
    call_s: float = 0.0  # the turnaround of one actor call (dispatch, arguments, result): merging calls saves it

    def __post_init__(self) -> None:
        if min(self.encode_s, self.decode_frame_s, self.call_s) < 0 or not self.step_s > 0:
            raise ValueError(f"costs must be non-negative and the step cost positive: {self}")

    def step_cost(self, cfg: bool) -> float:
        """Without guidance the UNet batch is one sample instead of two: half the work."""
        return self.step_s if cfg else self.step_s / 2


@dataclass(frozen=True)
class RequestShape:
    """What the planner needs to know about a request."""

    num_steps: int
    num_frames: int
    decode_chunk_size: int
    cfg: bool = True  # classifier-free guidance (max_guidance_scale > 1)
    feeds_next: bool = False  # a clip of a long video: its last frame is the next clip's image, wanted first
    positions: int | None = None  # latent positions at the UNet's innermost level (a wide step splits them)

    def __post_init__(self) -> None:
        if self.num_steps < 1 or self.num_frames < 1 or self.decode_chunk_size < 1:
            raise ValueError(f"steps, frames and decode_chunk_size must be at least 1: {self}")


@dataclass(frozen=True)
class StageAssignment:
    """One stage of the chain: `actor` runs denoising steps [start, stop)."""

    actor: int
    start: int
    stop: int

    @property
    def steps(self) -> range:
        return range(self.start, self.stop)


@dataclass(frozen=True)
class DecodeAssignment:
    """`actor` VAE-decodes frames [start, stop): one of diffusers' decode chunks."""

    actor: int
    start: int
    stop: int


@dataclass(frozen=True)
class Plan:
    """Everything the executor needs to run one request, and the work it expects to put on each actor."""

    request_id: str
    parallelism: Parallelism
    encode_actor: int
    stages: tuple[StageAssignment, ...]  # in chain order: stage i's steps directly follow stage i-1's
    decode: tuple[DecodeAssignment, ...]  # frame chunks in frame order; they may run at the same time
    mux_actor: int  # which CPU mux actor writes the video file
    work_s: tuple[float, ...]  # expected seconds on each model actor (helpers' halves included)
    helpers: tuple[int | None, ...] = ()  # per stage: the actor computing its guidance halves (CFG split), or None
    split_reason: str = ""  # why the request is or is not split (or runs parareal), for logs and the job record
    parareal: bool = False  # the stages' blocks are solved by parareal (their solves cross in host memory)
    transport: Transport = "object_store"  # how latents move from call to call (decoded frames: object store)
    cfg: bool = True  # classifier-free guidance: a step is a batch of two
    feeds_next: bool = False  # the chunk holding the last frame decodes first (the next clip starts from it)
    pinned: bool = False  # every call runs on the actor named here (the warm-up: each hop must run once)
    wide: tuple[int, ...] = ()  # the 'wide' mode: these actors run the one stage's steps together, rank order

    @property
    def split(self) -> bool:
        return any(h is not None for h in self.helpers)

    @property
    def num_steps(self) -> int:
        return self.stages[-1].stop

    @property
    def num_frames(self) -> int:
        return self.decode[-1].stop


@dataclass(frozen=True)
class ActorCall:
    """One call into a model actor: the consecutive phases of a plan that run there, merged to save hops."""

    actor: int
    encode: bool  # the input is the encode request
    steps: tuple[int, int] | None  # denoising steps [start, stop) run in this call
    decode: tuple[tuple[int, int], ...]  # frame chunks decoded in this call (each as diffusers decodes it)
    index: int = 0  # position in the plan's calls (plan_calls), named in the events the actor reports
    priority: float = 0.0  # smaller first in the actor's queue: the call's place in its chain (upstream first)
    output: Transport = "object_store"  # how the result leaves (decoded frames always by the object store)
    helper: int | None = None  # the actor computing this call's guidance halves (CFG split)
    pinned: bool = False  # runs on `actor` only; else the dispatch may give it to another free actor (dispatch.py)
    wide: tuple[int, ...] = ()  # its steps run on these actors together, each UNet call split over them (rank order)


def decode_chunks(num_frames: int, chunk_size: int) -> list[tuple[int, int]]:
    """diffusers' decode chunks: decode_latents decodes frames [i, i + chunk_size) for i = 0, chunk_size, ..."""
    if num_frames < 1 or chunk_size < 1:
        raise ValueError(f"num_frames and chunk_size must be at least 1, got {num_frames}, {chunk_size}")
    return [(i, min(i + chunk_size, num_frames)) for i in range(0, num_frames, chunk_size)]


@dataclass(frozen=True)
class Planner:
    """Plans requests for `num_actors` model actors and `num_mux` mux actors."""

    num_actors: int
    num_mux: int
    costs: CostModel
    parallelism: Parallelism = "pipeline"
    step_weights: tuple[float, ...] | None = None  # relative per-step costs for the step split (None: equal)
    latency_mode: LatencyMode = "off"  # single-request speed-up: CFG halves on idle actors, or parareal
    transport: Transport = "object_store"  # the hand-off transport between model actors
    wide_size: int = 2  # P: actors sharing one UNet call in the 'wide' latency mode
    wide_in_auto: bool = False  # 'auto' gives an idle request a wide group first (EngineConfig.wide_steps)
    ledger: Ledger = field(init=False, repr=False, compare=False)  # outstanding work, from the calls' events
    dispatch: Dispatch = field(init=False, repr=False, compare=False)  # which actor runs each ready call

    def __post_init__(self) -> None:
        if self.num_actors < 1 or self.num_mux < 1:
            raise ValueError(f"need at least one model actor and one mux actor, got {self.num_actors}, {self.num_mux}")
        if self.wide_size < 2:
            raise ValueError(f"wide_size must be at least 2, got {self.wide_size}")
        object.__setattr__(self, "ledger", Ledger(self.num_actors, self.num_mux))
        object.__setattr__(self, "dispatch", Dispatch(self.num_actors))

    # ------------------------------------------------------------ the stateful side: admission and events

    def admit(self, request_id: str, shape: RequestShape, now: float, mux_actor: int | None = None) -> Plan:
        """Plan a request against the ledger at `now`, decide its latency mode, and enter its calls in the
        ledger. `mux_actor` keeps a long video's clips on the mux actor that writes its file."""
        load = self.ledger.backlog(now)
        plan = self.plan(request_id, shape, load, self.ledger.mux_backlog())
        if mux_actor is not None:
            if not 0 <= mux_actor < self.num_mux:
                raise ValueError(f"mux actor {mux_actor} of {self.num_mux}")
            plan = dataclasses.replace(plan, mux_actor=mux_actor)
        plan = self._latency(plan, shape, load, alone=not self.ledger.requests)
        plan = dataclasses.replace(plan, transport=self.transport)
        self._enter(plan, now)
        return plan

    def warmup_plan(self, shape: RequestShape) -> Plan:
        """A plan through every actor (and its helper exchange, in a CFG-split mode) on an idle pipeline; not
        entered in the ledger: warm-up runs before any request."""
        plan = Planner(self.num_actors, self.num_mux, self.costs).plan("warmup", shape)
        mode: LatencyMode = "cfg-split" if self.latency_mode in ("cfg-split", "auto") else "off"
        split = plan_cfg_split(mode, shape.cfg, [st.actor for st in plan.stages], [0.0] * self.num_actors)
        return dataclasses.replace(
            plan, helpers=split.helpers, split_reason=split.reason, transport=self.transport, pinned=True
        )

    def ready(self, request_id: str, call: ActorCall, since: float, previous: int | None = None) -> None:
        """A call of an admitted plan has its input (the previous call ended): it waits for `assign`. `since`:
        when its request was first admitted; `previous`: the actor that ran the request's previous call."""
        self.dispatch.ready(request_id, call, since, previous)

    def assign(self, now: float) -> list[tuple[str, ActorCall]]:
        """Bind ready calls to free actors (svdpipe/dispatch.py); each comes back with the actor that runs it,
        and its expected seconds move to that actor in the ledger. Run each, then report `ended`."""
        bound = self.dispatch.assign()
        for request_id, call in bound:
            self.ledger.rebind(request_id, call.index, call.actor, now)
        return bound

    def ended(self, call: ActorCall) -> None:
        """A call `assign` bound has ended (done, failed or cancelled): its actor (a wide call's every actor) is
        free for the next one."""
        for actor in call.wide or (call.actor,):
            self.dispatch.ended(actor)

    def record(self, event: CallEvent) -> None:
        """A call started or ended (reported by the executor): the ledger follows."""
        self.ledger.record(event)

    def release(self, request_id: str, completed: bool = True) -> None:
        """The request ended (`completed`), or failed or was cancelled: it leaves the ledger (Ledger.release) and
        its calls not yet bound are dropped."""
        self.ledger.release(request_id, completed)
        self.dispatch.drop(request_id)

    def _latency(self, plan: Plan, shape: RequestShape, load: Sequence[float], alone: bool) -> Plan:
        """The latency mode's decision for this plan: parareal for a request alone on a chain of >= 2 stages;
        else CFG helpers (latency.plan_cfg_split: 'auto' only borrows actors with nothing outstanding)."""
        if self.latency_mode == "wide" or (self.latency_mode == "auto" and self.wide_in_auto):
            wide = self._wide(plan, shape, load)
            if wide.wide or self.latency_mode == "wide":
                return wide
        if self.latency_mode == "parareal":
            if alone and len(plan.stages) > 1:
                return dataclasses.replace(plan, parareal=True, split_reason="parareal: alone on the pipeline")
            why = "other requests in flight" if not alone else "parareal needs >= 2 stages"
            return dataclasses.replace(plan, split_reason=f"runs its plan, not parareal ({why})")
        owners = [st.actor for st in plan.stages]
        split = plan_cfg_split(self.latency_mode, shape.cfg, owners, load, stage_starts(plan, self.costs))
        if not split.split:
            return dataclasses.replace(plan, split_reason=split.reason)
        work = split_work(plan, split, self.costs.step_s)
        return dataclasses.replace(plan, helpers=split.helpers, split_reason=split.reason, work_s=work)

    def _wide(self, plan: Plan, shape: RequestShape, load: Sequence[float]) -> Plan:
        """The 'wide' mode: a request that finds a group of `wide_size` actors (num_actors // P groups of P
        consecutive actors) with nothing outstanding runs all its steps on that group, each UNet call split over
        it; under load it keeps its plan (width 1)."""
        p = self.wide_size
        groups = [tuple(range(g, g + p)) for g in range(0, self.num_actors - p + 1, p)]
        idle = [g for g in groups if all(load[a] <= 0.0 for a in g)]
        if not idle:
            return dataclasses.replace(plan, split_reason=f"width 1: no group of {p} idle actors")
        if shape.num_frames < p or (shape.positions is not None and shape.positions < p):
            why = f"{shape.num_frames} frames, {shape.positions} innermost positions"
            return dataclasses.replace(plan, split_reason=f"width 1: {why}, fewer than {p} ranks to split over")
        group = idle[0]
        chunks = [(d.start, d.stop) for d in plan.decode]
        wide = self._plan_wide(plan.request_id, shape, chunks, list(load), group)
        return dataclasses.replace(
            plan, **wide, wide=group, split_reason=f"wide: steps on actors {list(group)} together"
        )

    def _enter(self, plan: Plan, now: float) -> None:
        calls = plan_calls(plan)
        if plan.parareal:  # its solves report no call events: each actor's share runs from admission
            work = [(_PARAREAL_WORK, {a: w for a, w in enumerate(plan.work_s) if w > 0})]
            self.ledger.add(plan.request_id, work, len(calls), plan.mux_actor, now, started=True)
            return
        share = max_share(plan.num_frames, len(plan.wide)) if plan.wide else 1.0
        entries = [(c.index, call_work(c, self.costs, plan.cfg, share)) for c in calls]
        self.ledger.add(plan.request_id, entries, len(calls), plan.mux_actor, now)

    def plan(
        self,
        request_id: str,
        shape: RequestShape,
        load: Sequence[float] | None = None,
        mux_load: Sequence[float] | None = None,
    ) -> Plan:
        """The plan for one request, given each actor's expected outstanding work in seconds (None: idle)."""
        load = list(load) if load is not None else [0.0] * self.num_actors
        mux = list(mux_load) if mux_load is not None else [0.0] * self.num_mux
        if len(load) != self.num_actors or len(mux) != self.num_mux:
            raise ValueError(f"expected {self.num_actors} actor loads and {self.num_mux} mux loads")
        chunks = decode_chunks(shape.num_frames, shape.decode_chunk_size)
        if self.parallelism == "data-parallel":
            plan = self._replica(request_id, shape, chunks, load)
        else:
            plan = self._pipeline(request_id, shape, chunks, load)
        return Plan(**{**plan, "mux_actor": _argmin(mux), "cfg": shape.cfg, "feeds_next": shape.feeds_next})  # type: ignore[arg-type]

    def _replica(self, request_id: str, shape: RequestShape, chunks: list[tuple[int, int]], load: list[float]) -> dict:
        actor = _argmin(load)
        c = self.costs
        work = [0.0] * self.num_actors
        work[actor] = c.encode_s + shape.num_steps * c.step_cost(shape.cfg) + shape.num_frames * c.decode_frame_s
        work[actor] += c.call_s
        return {
            "request_id": request_id,
            "parallelism": "data-parallel",
            "encode_actor": actor,
            "stages": (StageAssignment(actor, 0, shape.num_steps),),
            "decode": tuple(DecodeAssignment(actor, a, b) for a, b in chunks),
            "work_s": tuple(work),
        }

    def _pipeline(self, request_id: str, shape: RequestShape, chunks: list[tuple[int, int]], load: list[float]) -> dict:
        c, n = self.costs, self.num_actors
        step = c.step_cost(shape.cfg)
        total = list(load)
        # 1. step ranges in actor order (actor i always runs stage i: requests flow through the chain in the same
        # order, so each actor gets work at a steady cadence). Weighted ranges come from the profile; otherwise
        # each actor gets T // N steps and the T % N spare ones go to the least-loaded actors, so over a stream of
        # requests they rotate (with fewer steps than actors: one step each on the T least-loaded, none elsewhere)
        if self.step_weights is not None and shape.num_steps >= n:
            sizes = [len(r) for r in request_ranges(shape.num_steps, n, self.step_weights)]
        else:
            base, extra = divmod(shape.num_steps, n)
            longer = set(sorted(range(n), key=lambda a: (total[a], a))[:extra])
            sizes = [base + (a in longer) for a in range(n)]
        stages, start = [], 0
        for actor, size in enumerate(sizes):
            if not size:
                continue
            stages.append(StageAssignment(actor, start, start + size))
            total[actor] += size * step + c.call_s
            start += size
        # 2. encode: the stage-0 actor does it in the same call (no extra call) unless another is less loaded
        encode_actor = _least(total, prefer=0, extra=c.call_s)
        total[encode_actor] += c.encode_s + (0.0 if encode_actor == stages[0].actor else c.call_s)
        # 3. decode chunks: each to the least-loaded actor; one call per actor, however many chunks it decodes
        decode = self._place_decode(chunks, total, stages[-1].actor)
        return {
            "request_id": request_id,
            "parallelism": "pipeline",
            "encode_actor": encode_actor,
            "stages": tuple(stages),
            "decode": tuple(decode),
            "work_s": tuple(t - before for t, before in zip(total, load, strict=True)),
        }

    def _plan_wide(
        self, request_id: str, shape: RequestShape, chunks: list[tuple[int, int]], load: list[float], group: tuple
    ) -> dict:
        """Every step on `group` together (each actor the busiest rank's share of each call), encode on its
        first actor (rank 0, whose state the others receive), decode chunks to the least-loaded actors."""
        c = self.costs
        total = list(load)
        steps_s = shape.num_steps * c.step_cost(shape.cfg) * max_share(shape.num_frames, len(group)) + c.call_s
        for a in group:
            total[a] += steps_s
        total[group[0]] += c.encode_s
        decode = self._place_decode(chunks, total, group[0])
        return {
            "encode_actor": group[0],
            "stages": (StageAssignment(group[0], 0, shape.num_steps),),
            "decode": tuple(decode),
            "work_s": tuple(t - before for t, before in zip(total, load, strict=True)),
        }

    def _place_decode(self, chunks: list[tuple[int, int]], total: list[float], last: int) -> list[DecodeAssignment]:
        """Each decode chunk to the least-loaded actor (the chain's `last` actor first: no extra call); one call
        per actor, however many chunks it decodes. Updates `total`."""
        c = self.costs
        decode: list[DecodeAssignment] = []
        decoders: set[int] = set()
        for a, b in chunks:
            actor = _least(total, prefer=last if not decoders else None, extra=c.call_s, free=decoders)
            total[actor] += (b - a) * c.decode_frame_s + (0.0 if actor in decoders else c.call_s)
            decoders.add(actor)
            decode.append(DecodeAssignment(actor, a, b))
        return decode


def actor_calls(plan: Plan) -> tuple[list[ActorCall], list[ActorCall]]:
    """The plan as actor calls: the chain (each taking the previous call's output) and the decode calls (each
    taking the chain's final state, all at once). Consecutive phases on one actor share a call; when one actor
    decodes every chunk and ran the last steps, decoding joins that call and the decode list is empty. Calls
    are numbered chain first, then decodes (the mux call comes after them all: `mux_call_index`)."""
    chain: list[ActorCall] = []
    # A wide stage's ranks all start from one encoded state: encode runs in a call of its own, before it
    if plan.encode_actor != plan.stages[0].actor or plan.wide:
        chain.append(ActorCall(plan.encode_actor, True, None, ()))
    for stage in plan.stages:
        last = chain[-1] if chain else None
        mergeable = last is not None and last.actor == stage.actor and not plan.wide
        if mergeable and (last.steps is None or last.steps[1] == stage.start):
            start = last.steps[0] if last.steps is not None else stage.start
            chain[-1] = ActorCall(stage.actor, last.encode, (start, stage.stop), ())
        else:
            chain.append(ActorCall(stage.actor, not chain, (stage.start, stage.stop), ()))
    by_actor: dict[int, list[tuple[int, int]]] = {}
    decode = plan.decode
    if plan.feeds_next:  # the chunk holding the last frame first: its actor's call first, that chunk first in it
        decode = (decode[-1], *decode[:-1])
    for d in decode:
        by_actor.setdefault(d.actor, []).append((d.start, d.stop))
    decodes: list[ActorCall] = []
    if list(by_actor) == [chain[-1].actor]:
        last = chain[-1]
        chain[-1] = ActorCall(last.actor, last.encode, last.steps, tuple(by_actor[last.actor]))
    else:
        decodes = [ActorCall(actor, False, None, tuple(frames)) for actor, frames in by_actor.items()]
    helper_of = {(st.start, st.stop): h for st, h in zip(plan.stages, plan.helpers, strict=False) if h is not None}
    numbered = [
        dataclasses.replace(
            call,
            index=i,
            # Upstream first: a call early in its chain feeds the actors after it, so serving it first keeps the
            # pipeline full (measured against oldest-request-first and arrival order: BENCHMARKS.md). A long
            # video's clip decodes first of all: its last frame starts the next clip, and its other chunks would
            # otherwise wait behind the next clips' steps until the video's end (nothing else holds them back).
            priority=0.0 if plan.feeds_next and i >= len(chain) else float(i),
            output="object_store" if call.decode else plan.transport,
            helper=helper_of.get(call.steps) if call.steps is not None else None,
            pinned=plan.pinned or (call.steps is not None and bool(plan.wide)),
            wide=plan.wide if call.steps is not None else (),
        )
        for i, call in enumerate([*chain, *decodes])
    ]
    return numbered[: len(chain)], numbered[len(chain) :]


def plan_calls(plan: Plan) -> list[ActorCall]:
    """Every model-actor call of the plan, in index order (chain, then decodes)."""
    chain, decodes = actor_calls(plan)
    return [*chain, *decodes]


def mux_call_index(plan: Plan) -> int:
    """The index the plan's mux call reports its events under (after every model-actor call)."""
    return len(plan_calls(plan))


def stage_starts(plan: Plan, costs: CostModel) -> list[float]:
    """When the request reaches each stage of the plan, in seconds from now, if no actor makes it wait (unsplit
    stage costs: a split stage ends sooner, so this errs towards splitting; a helper busy by then declines)."""
    starts, t = [], 0.0
    step = costs.step_cost(plan.cfg)
    for i, stage in enumerate(plan.stages):
        starts.append(t)
        t += len(stage.steps) * step + (costs.encode_s if i == 0 else 0.0) + costs.call_s
    return starts


def call_work(call: ActorCall, costs: CostModel, cfg: bool, wide_share: float = 1.0) -> dict[int, float]:
    """Expected seconds of one call on each actor it loads: its own (turnaround, encode, steps, decode); with a
    helper, the conditional halves moved to the helper (a batch of one: half a guided step); for a wide call,
    `wide_share` of the steps on every actor of its group (the busiest rank's share of each UNet call)."""
    steps = call.steps[1] - call.steps[0] if call.steps is not None else 0
    frames = sum(b - a for a, b in call.decode)
    if call.wide:
        work = {a: costs.call_s + steps * costs.step_cost(cfg) * wide_share for a in call.wide}
        work[call.actor] += (costs.encode_s if call.encode else 0.0) + frames * costs.decode_frame_s
        return work
    own = costs.call_s + (costs.encode_s if call.encode else 0.0) + steps * costs.step_cost(cfg)
    own += frames * costs.decode_frame_s
    work = {call.actor: own}
    if call.helper is not None and cfg:
        half = steps * costs.step_s / 2
        work[call.actor] -= half
        work[call.helper] = work.get(call.helper, 0.0) + half
    return work


def choose_costs(
    measured: CostModel,
    simulate_step_ms: float | None,
    simulate_encode_ms: float | None,
    simulate_decode_frame_ms: float | None,
) -> CostModel:
    """The planner's cost model, chosen once: a simulated cost where one is configured (then it is exact), what
    the actors measured at warm-up otherwise."""

    def pick(ms: float | None, measured_s: float) -> float:
        return ms / 1000 if ms is not None else measured_s

    return CostModel(
        encode_s=pick(simulate_encode_ms, measured.encode_s),
        step_s=max(pick(simulate_step_ms, measured.step_s), 1e-6),
        decode_frame_s=pick(simulate_decode_frame_ms, measured.decode_frame_s),
        call_s=measured.call_s,
    )


def _argmin(values: Sequence[float]) -> int:
    return min(range(len(values)), key=lambda i: (values[i], i))


def _least(
    total: Sequence[float], prefer: int | None, extra: float, free: set[int] | frozenset[int] = frozenset()
) -> int:
    """The least-loaded actor, counting `extra` (a call's turnaround) for actors other than `prefer` and those in
    `free` (already called for this phase), so that work stays in an existing call when that costs no more."""

    def cost(a: int) -> tuple[float, int, int]:
        return (total[a] + (0.0 if a == prefer or a in free else extra), 0 if a == prefer else 1, a)

    return min(range(len(total)), key=cost)
