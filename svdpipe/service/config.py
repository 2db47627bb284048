"""The service's typed configuration: the engine config plus what the HTTP front door needs."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, model_validator

from svdpipe.config import EngineConfig, LatencyMode
from svdpipe.service.store import POSTGRES_SCHEMES

# A service splits CFG halves onto idle actors by default: it costs nothing under load (latency.plan_cfg_split).
SERVICE_LATENCY_MODE: LatencyMode = "auto"


class Autoscaling(BaseModel):
    """Serve's autoscaling_config for the replicas (each replica brings a whole pipeline, so scale slowly)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_replicas: int = Field(1, ge=1, le=64, description="Replicas (pipelines) kept even when idle.")
    max_replicas: int = Field(2, ge=1, le=64, description="At most this many pipelines: as many as the GPUs hold.")
    target_ongoing_requests: float = Field(
        4.0, gt=0, description="HTTP requests in flight per replica that Serve aims for (polling clients included)."
    )
    upscale_delay_s: float = Field(30.0, ge=0, description="Sustained load before a pipeline is added.")
    downscale_delay_s: float = Field(600.0, ge=0, description="Sustained idleness before a pipeline is removed.")

    @model_validator(mode="after")
    def _check(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError("autoscaling.max_replicas must be >= min_replicas")
        return self


class ServiceConfig(BaseModel):
    """Arguments of the Serve app builder: `serve run deploy/serve_config.yaml` and `svdpipe serve` both build
    the same app from one of these."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: EngineConfig = Field(
        default_factory=lambda: EngineConfig(latency_mode=SERVICE_LATENCY_MODE),
        description="The model actors behind the API (latency_mode defaults to 'auto' here).",
    )
    data_dir: str = Field(
        "./svdpipe-data",
        min_length=1,
        description="Input images and videos (a volume every replica mounts), and the SQLite job store.",
    )
    job_store: str | None = Field(
        None,
        description="PostgreSQL address (postgresql://user@host:port/db) of the job store replicas share "
        "(default: $SVDPIPE_JOB_STORE where each replica runs, else SQLite in data_dir).",
    )
    num_replicas: int = Field(1, ge=1, le=64, description="Serve replicas, each owning one stage pipeline.")
    lease_s: float = Field(
        30.0, ge=1.0, le=3600.0, description="A running job is re-queued this long after its replica stops renewing."
    )
    poll_interval_s: float = Field(
        0.5,
        gt=0.0,
        le=10.0,
        description="How often a replica renews leases, stores progress, and looks for cancels and new jobs "
        "from other replicas.",
    )
    store_retry_after_s: int = Field(5, ge=1, le=300, description="Retry-After of a 503 while the job store is down.")
    autoscaling: Autoscaling | None = Field(
        None, description="Serve autoscaling between min and max replicas instead of a fixed num_replicas."
    )
    max_queue: int = Field(64, ge=0, le=100_000, description="Jobs waiting beyond those in flight; past it 429.")
    max_upload_bytes: int = Field(20 * 2**20, ge=1024, description="Largest accepted request body.")
    max_image_pixels: int = Field(36_000_000, ge=64, description="Largest accepted image (decompression bombs).")
    min_free_mb: float = Field(
        256.0,
        ge=0.0,
        description="Free space (MB) the data directory must keep: below it new jobs get 507 and health says "
        "degraded (0: no floor).",
    )
    max_image_side: int = Field(
        16_384, ge=2, description="Longest accepted image side (CLIP preprocessing time grows with its square)."
    )
    retention_s: float = Field(7 * 24 * 3600.0, gt=0, description="Finished jobs and videos are deleted after this.")
    shutdown_grace_s: float = Field(
        30.0,
        ge=0.0,
        le=3600.0,
        description="On stop (SIGTERM), running jobs may finish for this long; the rest go back to the queue.",
    )
    max_job_attempts: int = Field(
        3, ge=1, le=10, description="Starts of a job (its replica died or restarted while it ran) before it fails."
    )
    api_key: str | None = Field(
        default_factory=lambda: os.environ.get("SVDPIPE_API_KEY") or None,
        description="Bearer token required on every /v1 call (default: $SVDPIPE_API_KEY; unset = no auth).",
    )
    replica_cpus: float = Field(0.5, gt=0, description="CPUs of the ingress replica (its own bundle).")
    progress_log_interval_s: float = Field(30.0, gt=0, description="How often queue/stage figures are logged.")

    @model_validator(mode="after")
    def _check(self) -> ServiceConfig:
        if self.api_key is not None and len(self.api_key) < 8:
            raise ValueError("api_key must be at least 8 characters")
        if self.job_store is not None and not self.job_store.startswith(POSTGRES_SCHEMES):
            raise ValueError("job_store must be a postgresql:// address (leave it unset for SQLite in data_dir)")
        # A lease must outlive several missed renewals, or a busy replica loses jobs it is still running.
        if self.lease_s < 4 * self.poll_interval_s:
            raise ValueError("lease_s must be at least 4 x poll_interval_s")
        if self.autoscaling is not None and self.num_replicas != 1:
            raise ValueError("set either num_replicas or autoscaling, not both")
        return self

    def store_address(self) -> str | None:
        """Where this replica's job store is: ``job_store``, else $SVDPIPE_JOB_STORE, else None (SQLite)."""
        return self.job_store or os.environ.get("SVDPIPE_JOB_STORE") or None

    def bundles(self) -> list[dict[str, float]]:
        """The replica's placement-group bundles: its own first, then one per stage actor."""
        from svdpipe.placement import bundles

        return [{"CPU": self.replica_cpus}, *bundles(self.engine)]
