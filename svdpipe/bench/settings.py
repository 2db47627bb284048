"""One `svdpipe bench` run's settings: the workload, the modes, and the engine fields shared with the main CLI."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from svdpipe.config import Dtype, EngineConfig, LatencyMode, Transport

Mode = Literal["pipeline", "data-parallel", "sequential"]
MODES: tuple[Mode, ...] = get_args(Mode)
Loop = Literal["closed", "open"]
LOOPS: tuple[Loop, ...] = get_args(Loop)
MAX_REQUESTS = 100_000
_ENGINE = EngineConfig.model_fields  # the engine's own field definitions (descriptions, bounds), not copies


class BenchSettings(BaseModel):
    """One `svdpipe bench` run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = _ENGINE["model"]
    dtype: Dtype = _ENGINE["dtype"]
    transport: Transport = _ENGINE["transport"]
    num_gpus_per_actor: float = _ENGINE["num_gpus_per_actor"]
    num_cpus_per_actor: float = _ENGINE["num_cpus_per_actor"]
    latency_mode: LatencyMode = _ENGINE["latency_mode"]
    parareal_tol: float = _ENGINE["parareal_tol"]
    parareal_max_iters: int | None = _ENGINE["parareal_max_iters"]
    wide_size: int = _ENGINE["wide_size"]
    stages: int = Field(7, ge=1, le=64, description="N: model actors of every mode but sequential (which has one).")
    mux_actors: int = Field(2, ge=1, le=64, description="CPU-only mux actors, the same pool size in every mode.")
    steps: int = Field(21, ge=1, le=1000, description="T: denoising steps per request.")
    frames: int = Field(2, ge=1, le=256, description="Frames per video (per clip of a long video).")
    clips: int = Field(
        1, ge=1, le=1000, description="Clips per request: long videos of clips x frames, each clip from the last."
    )
    height: int = Field(32, ge=8, le=4096, description="Video height in pixels.")
    width: int = Field(32, ge=8, le=4096, description="Video width in pixels.")
    decode_chunk_size: int | None = Field(
        None, ge=1, le=256, description="Frames per VAE decode chunk (chunks decode in parallel); None: all frames."
    )
    simulate_step_ms: float | None = Field(
        None,
        gt=0.0,
        le=600_000.0,
        description="Stand-in UNet: ms per denoising step with guidance (a batch of two; a batch of one waits half).",
    )
    simulate_encode_ms: float | None = Field(
        None, ge=0.0, le=600_000.0, description="Stand-in CLIP + VAE encoder: ms per request."
    )
    simulate_decode_ms: float | None = Field(
        None, ge=0.0, le=600_000.0, description="Stand-in VAE decoder: ms per video (all frames; chunks pro rata)."
    )
    modes: tuple[Mode, ...] = Field(MODES, min_length=1, description="Which modes to run, in this order.")
    profile: str | None = Field(None, description="Read the cost profile from this JSON file instead of measuring.")
    save_profile: str | None = Field(None, description="Write the cost profile to this JSON file.")
    requests: int | None = Field(None, ge=2, le=MAX_REQUESTS, description="M: requests per mode (default 4N).")
    concurrency: int | None = Field(None, ge=1, le=4096, description="C: requests in flight (default 2 x workers).")
    loops: tuple[Loop, ...] | None = Field(
        None,
        description="Which loops to run per mode (default: closed, and open with an arrival rate); none: only the "
        "single requests on the idle system.",
    )
    arrival_rate: float | None = Field(
        None, gt=0.0, le=100_000.0, description="Open loop: Poisson arrivals, requests per second."
    )
    arrival_rate_frac: float | None = Field(
        None,
        gt=0.0,
        le=100.0,
        description="Open loop: the arrival rate as a fraction of the ideal N / W (N = --stages in every mode).",
    )
    duration_s: float | None = Field(
        None, gt=0.0, le=86_400.0, description="Open loop: arrivals only in the first this many seconds."
    )
    seed: int = Field(0, ge=0, description="Seed of the open loop's arrival times (the same ones in every mode).")
    mode_latency: dict[Mode, LatencyMode] = Field(
        default_factory=dict, description="Per-mode latency modes, over --latency-mode for the modes named."
    )
    idle_requests: int = Field(3, ge=0, le=100, description="Single requests on the idle system, per mode.")
    torch_threads: int = Field(1, ge=1, le=256, description="torch threads per actor and in this process.")
    address: str | None = Field(None, description="Ray cluster to join (default: start a local one).")
    ray_timeline: str | None = Field(None, description="Write Ray's timeline of the pipeline run to this file.")

    @model_validator(mode="after")
    def _cross_field(self) -> BenchSettings:
        if len(set(self.modes)) != len(self.modes):
            raise ValueError(f"--modes lists a mode twice: {','.join(self.modes)}")
        if self.loops is not None and len(set(self.loops)) != len(self.loops):
            raise ValueError(f"--loops lists a loop twice: {','.join(self.loops)}")
        unused = [m for m in self.mode_latency if m not in self.modes]
        if unused:
            raise ValueError(f"--mode-latency names {','.join(unused)}, which --modes does not run")
        if self.arrival_rate is not None and self.arrival_rate_frac is not None:
            raise ValueError("give --arrival-rate or --arrival-rate-frac, not both")
        has_rate = self.arrival_rate is not None or self.arrival_rate_frac is not None
        if "open" in self.loop_kinds and not has_rate:
            raise ValueError("the open loop needs --arrival-rate or --arrival-rate-frac")
        if has_rate and "open" not in self.loop_kinds:
            raise ValueError("an arrival rate is for the open loop: add open to --loops")
        if self.duration_s is not None and "open" not in self.loop_kinds:
            raise ValueError("--duration-s bounds the open loop: give an arrival rate")
        needed = 2 * max(self.workers_for(m) for m in self.modes)
        if "closed" in self.loop_kinds and self.requests is not None and self.requests < needed:
            raise ValueError(f"--requests must be at least {needed}: two rounds of the largest mode's workers")
        return self

    @property
    def loop_kinds(self) -> tuple[Loop, ...]:
        """The loops each mode runs: --loops, or closed (and open when an arrival rate is given)."""
        if self.loops is not None:
            return self.loops
        has_rate = self.arrival_rate is not None or self.arrival_rate_frac is not None
        return ("closed", "open") if has_rate else ("closed",)

    def latency_mode_for(self, mode: Mode) -> LatencyMode:
        return self.mode_latency.get(mode, self.latency_mode)

    @property
    def open_requests(self) -> int:
        """The open loop's most arrivals: --requests, else MAX_REQUESTS when --duration-s stops it, else 4N."""
        if self.requests is not None:
            return self.requests
        return MAX_REQUESTS if self.duration_s is not None else 4 * self.stages

    def workers_for(self, mode: Mode) -> int:
        """Model actors of `mode`: N, or one for sequential."""
        return 1 if mode == "sequential" else self.stages

    @property
    def num_requests(self) -> int:
        return self.requests if self.requests is not None else 4 * self.stages

    def concurrency_for(self, mode: Mode) -> int:
        return self.concurrency if self.concurrency is not None else 2 * self.workers_for(mode)

    @property
    def simulate_decode_frame_ms(self) -> float | None:
        return None if self.simulate_decode_ms is None else self.simulate_decode_ms / self.frames
