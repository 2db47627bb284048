"""What `svdpipe simulate` and `svdpipe capacity` take beyond the bench's flags: the cost source and the
simulated service (flags generated from this model, as the bench's are from BenchSettings)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ProfileName = Literal["h100-trt", "a100-eager"]  # the keys of svdpipe.sim.costs.ASSUMPTIONS


class SimSettings(BaseModel):
    """The simulator's own settings (the workload's are BenchSettings)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    profile_name: ProfileName | None = Field(
        None, description="A table of ASSUMED costs shipped with svdpipe (svdpipe/sim/costs.py), instead of --profile."
    )
    replicas: int = Field(1, ge=1, le=1024, description="R pipelines of --stages model actors sharing one job queue.")
    cost_cv: float | None = Field(
        None,
        ge=0.0,
        le=10.0,
        description="Coefficient of variation of each call's duration, lognormal, seeded by --seed (None: the "
        "profile's spread over its steps, else 0: deterministic).",
    )
    hop_ms: float | None = Field(
        None, ge=0.0, le=60_000.0, description="Turnaround of every call on its actor (None: 3.0, measured here)."
    )
    mux_ms: float | None = Field(
        None, ge=0.0, le=600_000.0, description="Writing one video on a mux actor (None: the table's, else 50)."
    )
    max_inflight: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Requests each pipeline admits at once (None: the bench's max(16, C) for simulate, the "
        "engine's 16 for capacity).",
    )
    trace: str | None = Field(
        None, description="Open-loop arrivals from this file, one per line: seconds[,steps[,frames]] (not Poisson)."
    )
