"""The jobs API's request and response bodies (pydantic; no torch)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from svdpipe.config import VideoParams
from svdpipe.service.store import JobRecord, JobStatus

ApiFormat = Literal["mp4", "webm", "gif"]


class CreateVideoJSON(VideoParams):
    """JSON body of POST /v1/videos: the image as a base64 data URL plus SVD parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image: str = Field(..., description="The input image as a data URL: data:image/png;base64,....")
    output_format: ApiFormat = Field("mp4", description="Container of the finished video.")


class CreateVideoForm(VideoParams):
    """Multipart form of POST /v1/videos (documentation of the fields; `image` is the file part)."""

    image: bytes = Field(..., description="The input image file (PNG, JPEG, WEBP, ...).")
    output_format: ApiFormat = Field("mp4", description="Container of the finished video.")


class VideoJob(BaseModel):
    """A video job as the API shows it."""

    id: str
    object: Literal["video"] = "video"
    status: JobStatus
    progress: int = Field(
        ..., ge=0, le=100, description="Completed denoising steps, in percent (of every clip's steps together)."
    )
    num_clips: int = Field(1, ge=1, description="Clips the video chains (num_frames each).")
    clips_done: int = Field(
        0,
        ge=0,
        description="Clips before the one in progress, counted by denoising steps (num_clips once completed; "
        "0 again when a re-queued job restarts).",
    )
    clip: int | None = Field(
        None, ge=1, description="The clip being made, 1 to num_clips ('clip 2 of 5'); null unless in progress."
    )
    queue_position: int | None = Field(None, description="1 = next to start; null unless queued.")
    created_at: float
    started_at: float | None
    completed_at: float | None
    error: str | None
    seed: int
    parameters: dict[str, Any]
    output_format: str

    @classmethod
    def from_record(cls, record: JobRecord, queue_position: int | None) -> VideoJob:
        num_clips = max(1, int(record.parameters.get("num_clips", 1)))
        return cls(
            id=record.id,
            status=record.status,
            progress=record.progress,
            num_clips=num_clips,
            clips_done=min(record.clips_done, num_clips),
            clip=clip_in_progress(record.status, record.clips_done, num_clips),
            queue_position=queue_position if record.status == "queued" else None,
            created_at=record.created_at,
            started_at=record.started_at,
            completed_at=record.completed_at,
            error=record.error,
            seed=record.seed,
            parameters=record.parameters,
            output_format=record.output_format,
        )


def clip_in_progress(status: str, clips_done: int, num_clips: int) -> int | None:
    """The 1-based clip a running job is making (the one after those done); None unless in progress."""
    return min(clips_done + 1, num_clips) if status == "in_progress" else None


class VideoJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VideoJob]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedVideo(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class StageHealth(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    role: str
    state: Literal["alive", "dead", "unknown"]  # unknown: Ray's control plane did not answer


class Health(BaseModel):
    status: Literal["ok", "degraded", "starting"]
    data_dir_free_mb: float  # free space where videos are written; below min_free_mb the status is degraded
    min_free_mb: float  # new jobs are refused (507) while data_dir_free_mb is below this
    queued: int
    in_progress: int
    max_inflight: int
    max_queue: int
    max_clips: int  # a request's num_clips may be at most this (400 beyond it)
    stages: list[StageHealth]
