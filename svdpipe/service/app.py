"""The Ray Serve application: a FastAPI jobs API for image-to-video; each replica owns one stage pipeline.

Each replica reserves a placement group (its own bundle first, then one per stage actor, the pattern Ray Serve
LLM uses), builds its engine inside it, and serves the OpenAI-videos-shaped jobs API on top of a job manager
and the job store. All replicas share one queue in the store (PostgreSQL for replicas on several machines), so
any replica answers for any job and each job runs on exactly one pipeline. `app_builder` is the typed builder
that `serve run deploy/serve_config.yaml` and `svdpipe serve` both use.

(No `from __future__ import annotations` here: FastAPI must see real types on the ingress methods.)
"""

import asyncio
import base64
import binascii
import hmac
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException as StarletteHTTPException

from svdpipe import __version__
from svdpipe.config import VideoParams
from svdpipe.errors import InvalidRequestError, StorageFullError, StoreUnavailableError, describe_validation_error
from svdpipe.images import load_image
from svdpipe.limits import describe_limits
from svdpipe.service.config import ServiceConfig
from svdpipe.service.events import EVENTS_DOC, already_final, job_events
from svdpipe.service.jobs import JobManager, QueueFull
from svdpipe.service.schemas import (
    CreateVideoForm,
    CreateVideoJSON,
    DeletedVideo,
    ErrorBody,
    Health,
    VideoJob,
    VideoJobList,
)
from svdpipe.service.store import JobRecord
from svdpipe.service.watch import JobWatch
from svdpipe.video import CONTENT_TYPES

logger = logging.getLogger(__name__)

_PARAM_FIELDS = set(VideoParams.model_fields)
WEB_DIR = Path(__file__).parent / "web"  # the page at / (plain HTML/CSS/JS, package data)
_FORM_FIELDS = _PARAM_FIELDS | {"output_format"}
_STORAGE_RETRY_AFTER_S = 30  # Retry-After of a 507: space is freed by retention or an operator, not in seconds
SHUTDOWN_MARGIN_S = 30.0  # beyond the jobs' grace period: HTTP calls to end, leases released, actors removed


class ApiError(Exception):
    """An error answered with `status` and an OpenAI-style JSON error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


def _error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    body = ErrorBody(error={"message": message, "type": kind, "code": str(status)})  # type: ignore[arg-type]
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


# The replica serves /openapi.json and /docs itself (routes below): the schema states the limits of the model
# it loaded, and Serve runs a copy of this app, so the schema cannot be set on `api` from a replica.
api = FastAPI(
    title="svdpipe",
    version=__version__,
    description="Image-to-video with Stable Video Diffusion, denoising steps pipelined across GPU workers.",
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)
api.mount("/web", StaticFiles(directory=WEB_DIR), name="web")


@api.exception_handler(ApiError)
async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return _error(exc.status, exc.message, exc.kind, exc.headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(422, describe_validation_error(exc), "invalid_request_error")


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
    return _error(exc.status_code, str(exc.detail), kind if exc.status_code < 500 else "server_error")


@api.exception_handler(StoreUnavailableError)
async def _store_unavailable(request: Request, exc: StoreUnavailableError) -> JSONResponse:
    # The database is down (a restart, a failover): the client should retry, nothing it sent was wrong.
    retry_after = getattr(request.app.state, "store_retry_after_s", 5)
    return _error(503, f"{exc}; retry later", "service_unavailable_error", {"Retry-After": str(retry_after)})


@api.exception_handler(StorageFullError)
async def _storage_full(_request: Request, exc: StorageFullError) -> JSONResponse:
    # The data directory is (nearly) full: nothing the client sent was wrong; a job accepted now could not be done.
    headers = {"Retry-After": str(_STORAGE_RETRY_AFTER_S)}
    return _error(507, str(exc), "insufficient_storage_error", headers)


@api.exception_handler(Exception)
async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error")
    return _error(500, f"internal error: {type(exc).__name__}", "server_error")


def _form_schema() -> dict[str, Any]:
    """CreateVideoForm's JSON schema without `null` options: a form has no null (leave a field out for the
    model's default), and a client that sent the text "null" would get a 400."""
    schema = CreateVideoForm.model_json_schema()
    for prop in schema["properties"].values():
        options = [o for o in prop.get("anyOf", []) if o.get("type") != "null"]
        if len(options) == 1:
            del prop["anyOf"]
            prop.update(options[0])
    return schema


_CREATE_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _form_schema()},
            "application/json": {"schema": CreateVideoJSON.model_json_schema()},
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Bad input (not an image, bad parameter)",
        401: "Missing or wrong API key",
        404: "Unknown job id",
        409: "Video not ready",
        413: "Upload too large",
        415: "Unsupported content type",
        429: "Queue full; see Retry-After",
        503: "Job store unreachable for a moment; see Retry-After",
        507: "The data directory is below its free-space floor (min_free_mb) or full; see Retry-After",
    }.items()
}


def _decode_data_url(url: str) -> bytes:
    if not url.startswith("data:") or "," not in url:
        raise ApiError(400, "image must be a data URL: data:image/<type>;base64,<data>")
    header, data = url[5:].split(",", 1)
    if not header.endswith(";base64"):
        raise ApiError(400, "image data URL must be base64-encoded (data:image/png;base64,...)")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"image data URL is not valid base64: {exc}") from exc


def openapi_with_limits(config: ServiceConfig, spec: Any) -> dict[str, Any]:
    """The OpenAPI schema, stating this deployment's request limits (they depend on the model): in words on
    POST /v1/videos, and the model's size multiple on height and width (multipleOf)."""
    schema = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
    create = schema["paths"]["/v1/videos"]["post"]
    max_clips = config.engine.max_clips
    create["description"] = describe_limits(
        spec, config.engine.max_video_pixels, config.max_image_pixels, config.max_image_side
    ) + (
        f" A long video chains num_clips clips (each num_frames frames; num_frames x height x width is a limit "
        f"per clip), at most {max_clips} (max_clips)."
    )
    for media in create["requestBody"]["content"].values():
        props = media["schema"]["properties"]
        for name in ("height", "width"):
            prop = props[name]
            for option in [prop, *prop.get("anyOf", [])]:
                if option.get("type") == "integer":
                    option["multipleOf"] = spec.size_multiple
        props["num_clips"]["maximum"] = max_clips
    return schema


# Helpers the ingress uses are defined above it: Serve serialises the class where it is decorated.
@serve.deployment(max_ongoing_requests=512, graceful_shutdown_timeout_s=30)
@serve.ingress(api)
class VideoService:
    """One replica: owns one pipeline (the engine and its stage actors) and serves every job in the shared store."""

    async def __init__(self, config: ServiceConfig | dict[str, Any]) -> None:
        from ray.util import get_current_placement_group

        from svdpipe.engine import Engine
        from svdpipe.service.metrics import ServiceMetrics
        from svdpipe.service.store import open_job_store

        self.config = config if isinstance(config, ServiceConfig) else ServiceConfig.model_validate(config)
        # 1. Who this replica is: its id names its stage actors (the dashboard shows which pipeline an actor
        # belongs to, and two replicas' actors never collide) and its leases in the shared job store.
        replica = serve.get_replica_context().replica_id.unique_id
        engine_config = self.config.engine.model_copy(
            update={"name_prefix": f"{self.config.engine.name_prefix}-{replica}"}
        )
        # 2. The job store first: if it is unreachable the replica fails to start (Serve retries it) before it
        # reserves any accelerator.
        self.store = await asyncio.to_thread(open_job_store, self.config.store_address(), self.config.data_dir)
        api.state.store_retry_after_s = self.config.store_retry_after_s
        # 3. The pipeline, in this replica's own placement group: bundle 0 is the replica's, the stage actors
        # take the bundles after it.
        pg = get_current_placement_group()
        self.engine = Engine(engine_config, placement_group=pg, first_bundle=1 if pg is not None else 0)
        await self.engine.start()
        self.openapi = openapi_with_limits(self.config, self.engine.spec)
        # 4. Start claiming jobs from the shared queue.
        self.jobs = JobManager(self.engine, self.store, self.config, ServiceMetrics(), owner=replica)
        await self.jobs.start()
        # 5. One reader of the store for every event stream of this replica.
        self.watch = JobWatch(
            self._read_jobs,
            self.jobs.changes,
            self.config.poll_interval_s,
            local_progress=self.jobs.local.progress.get,
            local_clips=self.jobs.local.clips_done.get,
        )
        self._watch_task = asyncio.get_running_loop().create_task(self.watch.run())
        logger.info("svdpipe replica %s ready: actors %s-*, files in %s", replica, engine_config.name_prefix,
                    self.config.data_dir)  # fmt: skip

    async def __del__(self) -> None:
        self._watch_task.cancel()
        # Serve calls this on a graceful stop, once in-flight HTTP calls are done: running jobs get the grace
        # period, the rest go back in the queue for the other replicas (or the next one to start).
        await self.jobs.drain(self.config.shutdown_grace_s)
        await self.engine.shutdown()
        await asyncio.to_thread(self.store.close)

    # ---------------------------------------------------------------- helpers

    def _auth(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), key.encode())):
            raise ApiError(
                401, "missing or invalid API key (send 'Authorization: Bearer <key>')", "authentication_error"
            )

    # The store and the disk are only ever called in worker threads (asyncio.to_thread): the event loop, which
    # serves every request and event stream of this replica, never waits on them.

    def _job_now(self, record: JobRecord) -> VideoJob:
        """The API view of a job (blocking: asks the store for its queue position)."""
        position = self.jobs.queue_position(record.id) if record.status == "queued" else None
        return VideoJob.from_record(record, position)

    async def _job(self, record: JobRecord) -> VideoJob:
        return await asyncio.to_thread(self._job_now, record)

    async def _get(self, job_id: str) -> JobRecord:
        record = await asyncio.to_thread(self.jobs.get, job_id)
        if record is None:
            raise ApiError(404, f"no video job with id {job_id!r}", "not_found_error")
        return record

    def _read_jobs(self, job_ids: list[str]) -> dict[str, VideoJob | None]:
        """The watched jobs, for the event streams (blocking: the job watch calls it in a worker thread)."""
        records = {job_id: self.jobs.get(job_id) for job_id in job_ids}
        queued = [job_id for job_id, r in records.items() if r is not None and r.status == "queued"]
        positions = self.jobs.queue_positions(queued) if queued else {}
        return {
            job_id: None if r is None else VideoJob.from_record(r, positions.get(job_id))
            for job_id, r in records.items()
        }

    async def _parse_create(self, request: Request) -> tuple[bytes, VideoParams, str]:
        length = request.headers.get("content-length")
        if length is None:
            raise ApiError(411, "a Content-Length header is required")
        if not length.isdigit() or int(length) > self.config.max_upload_bytes:
            raise ApiError(413, f"request body is larger than {self.config.max_upload_bytes} bytes")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            try:
                form = await request.form(max_files=1, max_fields=64, max_part_size=self.config.max_upload_bytes)
            except Exception as exc:  # malformed multipart
                raise ApiError(400, f"malformed multipart body: {exc}") from exc
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "multipart field 'image' (a file) is required")
            image = await upload.read()
            fields = {k: v for k, v in form.items() if k != "image" and isinstance(v, str) and v.strip() != ""}
        elif ctype == "application/json":
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ApiError(400, f"invalid JSON: {exc}") from exc
            if not isinstance(body, dict):
                raise ApiError(400, "the JSON body must be an object")
            try:
                parsed = CreateVideoJSON.model_validate(body)
            except ValidationError as exc:
                raise ApiError(400, describe_validation_error(exc)) from exc
            image = _decode_data_url(parsed.image)
            fields = parsed.model_dump(exclude={"image"}, exclude_none=True)
        else:
            raise ApiError(415, "send multipart/form-data (image file + fields) or application/json (data URL)")
        unknown = set(fields) - _FORM_FIELDS
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        fmt = str(fields.pop("output_format", "mp4"))
        if fmt not in ("mp4", "webm", "gif"):
            raise ApiError(400, f"output_format must be mp4, webm or gif, not {fmt!r}")
        try:
            params = VideoParams.model_validate(fields)
        except ValidationError as exc:
            raise ApiError(400, describe_validation_error(exc)) from exc
        return image, params, fmt

    # ---------------------------------------------------------------- routes

    @api.get("/", include_in_schema=False)
    async def root(self) -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi_schema(self) -> JSONResponse:
        return JSONResponse(self.openapi)

    @api.get("/docs", include_in_schema=False)
    async def docs(self) -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{api.title} - API docs")

    @api.post(
        "/v1/videos",
        status_code=202,
        response_model=VideoJob,
        openapi_extra=_CREATE_DOC,
        responses=_ERRORS,
        summary="Create a video job from an image",
    )
    async def create_video(self, request: Request) -> VideoJob:
        self._auth(request)
        image, params, fmt = await self._parse_create(request)
        try:
            # reject bad images now, not in the pipeline
            load_image(image, self.config.max_image_pixels, self.config.max_image_side)
            record = await asyncio.to_thread(self.jobs.submit, image, params, fmt)  # type: ignore[arg-type]
        except QueueFull as exc:
            raise ApiError(429, str(exc), "rate_limit_error", {"Retry-After": str(exc.retry_after_s)}) from exc
        except InvalidRequestError as exc:
            raise ApiError(400, str(exc)) from exc
        return await self._job(record)

    @api.get("/v1/videos", response_model=VideoJobList, responses=_ERRORS, summary="List jobs, newest first")
    async def list_videos(
        self,
        request: Request,
        limit: int = Query(20, ge=1, le=100),
        after: str | None = Query(None, description="Cursor: the last id of the previous page."),
        status: str | None = Query(None, description="Only jobs in this status."),
    ) -> VideoJobList:
        self._auth(request)
        try:  # the store checks status and cursor
            records = await asyncio.to_thread(
                self.store.list, limit=limit + 1, after=after or None, status=status or None
            )  # "" = absent
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        queued = [r.id for r in records[:limit] if r.status == "queued"]
        positions = await asyncio.to_thread(self.jobs.queue_positions, queued)
        page = [VideoJob.from_record(self.jobs.live(r), positions.get(r.id)) for r in records[:limit]]
        return VideoJobList(
            data=page,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
            has_more=len(records) > limit,
        )

    @api.get("/v1/videos/{video_id}", response_model=VideoJob, responses=_ERRORS, summary="Get a job")
    async def get_video(self, request: Request, video_id: str) -> VideoJob:
        self._auth(request)
        return await self._job(await self._get(video_id))

    @api.get(
        "/v1/videos/{video_id}/content",
        responses={
            **_ERRORS,
            200: {"content": {t: {} for t in CONTENT_TYPES.values()}},
            206: {"description": "The byte range asked for with a Range header (browsers seek with it)"},
            416: {"description": "The Range lies outside the video"},
        },
        response_class=Response,
        summary="Download the finished video (Range requests supported)",
    )
    async def get_content(self, request: Request, video_id: str) -> Response:
        self._auth(request)
        record = await self._get(video_id)
        if record.status != "completed":
            raise ApiError(409, f"video {video_id} is {record.status}, not completed", "conflict_error")
        path = await asyncio.to_thread(self.store.content_path, video_id)
        if path is None:
            raise ApiError(404, f"the video of {video_id} is no longer stored", "not_found_error")
        # Served from the file in chunks (Starlette reads it in worker threads), with Range/206 and ETag; the file
        # was renamed into place whole, so no reader ever sees part of a video.
        return FileResponse(
            path,
            media_type=CONTENT_TYPES[record.output_format],
            filename=f"{video_id}.{record.output_format}",
            content_disposition_type="attachment",
        )

    @api.get(
        "/v1/videos/{video_id}/events",
        response_class=StreamingResponse,
        responses={
            **_ERRORS,
            200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "The stream"},
            204: {"description": "The event named by Last-Event-ID was already the job's final one"},
        },
        summary="Stream the job's status and progress (Server-Sent Events)",
        description=EVENTS_DOC,
    )
    async def video_events(
        self,
        request: Request,
        video_id: str,
        last_event_id: str | None = Header(None, description="Resume after this event (sent by EventSource)."),
    ) -> Response:
        self._auth(request)
        job = await self._job(await self._get(video_id))
        if already_final(job, last_event_id):
            return Response(status_code=204)  # tells an EventSource not to reconnect
        watched = self.watch.subscribe(job)  # the stream reads the watch's snapshots, never the store

        async def stream() -> AsyncIterator[str]:
            try:
                async for chunk in job_events(watched.read, watched.changes, last_event_id):
                    yield chunk
            finally:
                self.watch.unsubscribe(video_id)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},  # no proxy buffering
        )

    @api.post("/v1/videos/{video_id}/cancel", response_model=VideoJob, responses=_ERRORS, summary="Cancel a job")
    async def cancel_video(self, request: Request, video_id: str) -> VideoJob:
        self._auth(request)
        await self._get(video_id)
        record = await asyncio.to_thread(self.jobs.cancel, video_id)
        return await self._job(record or await self._get(video_id))

    @api.delete("/v1/videos/{video_id}", response_model=DeletedVideo, responses=_ERRORS, summary="Delete a job")
    async def delete_video(self, request: Request, video_id: str) -> DeletedVideo:
        self._auth(request)
        await self._get(video_id)
        return DeletedVideo(id=video_id, deleted=await asyncio.to_thread(self.jobs.delete, video_id))

    @api.get("/v1/health", response_model=Health, summary="Each stage's state")
    async def health(self) -> Health:
        return Health.model_validate(await self.jobs.health())


def app_builder(args: ServiceConfig) -> Application:
    """Typed Serve app builder: `serve run svdpipe.service.app:app_builder` / deploy/serve_config.yaml."""
    if isinstance(args, dict):  # older Serve passes the raw dict
        args = ServiceConfig.model_validate(args)
    if args.api_key is None:
        logger.info("no API key configured: the jobs API is open (fine on localhost; set SVDPIPE_API_KEY otherwise)")
    scaling: dict[str, Any] = {"num_replicas": args.num_replicas}
    if args.autoscaling is not None:
        scaling = {"autoscaling_config": args.autoscaling.model_dump()}
    return VideoService.options(
        **scaling,
        # Serve kills a stopping replica after this: the jobs' grace period, plus time to re-queue the rest and
        # remove the stage actors.
        graceful_shutdown_timeout_s=args.shutdown_grace_s + SHUTDOWN_MARGIN_S,
        placement_group_bundles=args.bundles(),
        placement_group_strategy=args.engine.placement_strategy,
        ray_actor_options={"num_cpus": args.replica_cpus},
    ).bind(args.model_dump())
