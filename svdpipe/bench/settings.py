"""One `svdpipe bench` run's settings: the workload, the modes, and the engine fields shared with the main CLI."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from svdpipe.config import Dtype, EngineConfig, LatencyMode, Transport

Mode = Literal["pipeline", "data-parallel", "sequential"]
MODES: tuple[Mode, ...] = get_args(Mode)
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
    stages: int = Field(7, ge=1, le=64, description="N: model actors of every mode but sequential (which has one).")
    mux_actors: int = Field(2, ge=1, le=64, description="CPU-only mux actors, the same pool size in every mode.")
    steps: int = Field(21, ge=1, le=1000, description="T: denoising steps per request.")
    frames: int = Field(2, ge=1, le=256, description="Frames per video.")
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
    requests: int | None = Field(None, ge=2, le=100_000, description="M: requests per mode (default 4N).")
    concurrency: int | None = Field(None, ge=1, le=4096, description="C: requests in flight (default 2 x workers).")
    idle_requests: int = Field(3, ge=0, le=100, description="Single requests on the idle system, per mode.")
    torch_threads: int = Field(1, ge=1, le=256, description="torch threads per actor and in this process.")
    address: str | None = Field(None, description="Ray cluster to join (default: start a local one).")
    ray_timeline: str | None = Field(None, description="Write Ray's timeline of the pipeline run to this file.")

    @model_validator(mode="after")
    def _cross_field(self) -> BenchSettings:
        if len(set(self.modes)) != len(self.modes):
            raise ValueError(f"--modes lists a mode twice: {','.join(self.modes)}")
        needed = 2 * max(self.workers_for(m) for m in self.modes)
        if self.requests is not None and self.requests < needed:
            raise ValueError(f"--requests must be at least {needed}: two rounds of the largest mode's workers")
        return self

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
