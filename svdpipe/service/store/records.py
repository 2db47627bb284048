"""The job record as stored: its statuses, its id rules and the errors recovery writes into it."""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
STATUSES: tuple[str, ...] = get_args(JobStatus)
TERMINAL: tuple[str, ...] = ("completed", "failed", "cancelled")

_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
FORMAT_RE = re.compile(r"[A-Za-z0-9]{1,16}")

RESTART_ERROR = "the service restarted while this job was running, {n} times; giving up"
MISSING_VIDEO_ERROR = "the finished video is missing from storage (lost after a restart); please submit the job again"
MISSING_IMAGE_ERROR = "the input image is missing from storage (lost after a restart); please submit the job again"


def is_valid_job_id(job_id: object) -> bool:
    """Whether ``job_id`` is a string of 1-128 characters from ``[A-Za-z0-9_-]``."""
    return isinstance(job_id, str) and _ID_RE.fullmatch(job_id) is not None


def validate_job_id(job_id: str) -> str:
    """Return ``job_id`` if valid (see :func:`is_valid_job_id`), else raise ``ValueError``."""
    if not is_valid_job_id(job_id):
        raise ValueError(f"invalid job id {job_id!r}: use 1-128 characters from A-Z, a-z, 0-9, '_' and '-'")
    return job_id


class JobRecord(BaseModel):
    """One job, as stored. Immutable: change it with :meth:`JobStore.update`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    status: JobStatus
    progress: int = Field(default=0, ge=0, le=100)
    created_at: float
    started_at: float | None = None
    completed_at: float | None = None
    error: str | None = None
    seed: int
    parameters: dict[str, Any]
    output_format: str
    attempts: int = Field(default=0, ge=0)
    content_bytes: int | None = Field(default=None, ge=0)
    owner: str | None = None  # the replica running the job (kept once it ends: who ran it)
    lease_expires_at: float | None = None  # while running: re-queued if its owner has not renewed it by then
    # Clips of a multi-clip video before the one in progress, by denoising steps (num_clips once completed), as
    # the running replica last reported them; 0 again when the job is (re)started.
    clips_done: int = Field(default=0, ge=0)

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        return validate_job_id(value)

    @field_validator("output_format")
    @classmethod
    def _check_format(cls, value: str) -> str:
        if FORMAT_RE.fullmatch(value) is None:
            raise ValueError(f"invalid output format {value!r}")
        return value
