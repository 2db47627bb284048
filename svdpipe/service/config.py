"""The service's typed configuration: the engine config plus what the HTTP front door needs."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, model_validator

from svdpipe.config import EngineConfig, LatencyMode

# A service splits CFG halves onto idle actors by default: it costs nothing under load (latency.plan_cfg_split).
SERVICE_LATENCY_MODE: LatencyMode = "auto"


class ServiceConfig(BaseModel):
    """Arguments of the Serve app builder: `serve run deploy/serve_config.yaml` and `svdpipe serve` both build
    the same app from one of these."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: EngineConfig = Field(
        default_factory=lambda: EngineConfig(latency_mode=SERVICE_LATENCY_MODE),
        description="The model actors behind the API (latency_mode defaults to 'auto' here).",
    )
    data_dir: str = Field("./svdpipe-data", min_length=1, description="Job records (SQLite) and video files.")
    max_queue: int = Field(64, ge=0, le=100_000, description="Jobs waiting beyond those in flight; past it 429.")
    max_upload_bytes: int = Field(20 * 2**20, ge=1024, description="Largest accepted request body.")
    max_image_pixels: int = Field(36_000_000, ge=64, description="Largest accepted image (decompression bombs).")
    retention_s: float = Field(7 * 24 * 3600.0, gt=0, description="Finished jobs and videos are deleted after this.")
    max_job_attempts: int = Field(3, ge=1, le=10, description="Restarts of the service a running job survives.")
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
        return self

    def bundles(self) -> list[dict[str, float]]:
        """The replica's placement-group bundles: its own first, then one per stage actor."""
        from svdpipe.placement import bundles

        return [{"CPU": self.replica_cpus}, *bundles(self.engine)]
