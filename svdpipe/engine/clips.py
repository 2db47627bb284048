"""A long video on the engine: its clips as a chain of dependent requests (svdpipe/clips.py says why the result
equals diffusers' loop).

Each clip is planned and run as a request of its own (its own plan, retries and deadline), under the id
`<request>#clip<k>`, all on the mux actor of the first clip planned, which keeps every finished clip in the work
directory and appends it to the video's file. Clip k+1 is admitted as soon as clip k's last frame is decoded:
its plan decodes the chunk holding that frame first (Plan.feeds_next), and the rest of clip k decodes and muxes
while clip k+1 encodes and denoises (with `color_match` the next clip starts from the matched frame, so it
waits for clip k's mux call). Clips already in the work directory are not run again: a video that stopped
(a replica or actor lost) resumes at the first missing clip, with the same result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from svdpipe.clips import ClipDir, ClipOutput, clip_params, image_png
from svdpipe.config import OutputFormat, ResolvedParams
from svdpipe.engine.request import RequestRecord
from svdpipe.engine.result import EngineResult
from svdpipe.errors import RequestCancelledError
from svdpipe.worker import EncodedVideo

logger = logging.getLogger(__name__)

# Runs one clip as a request of the engine's: (its record, image, parameters, where its mux keeps it, the mux
# actor or None for the planner's choice) -> its result (Engine._run_clip).
ClipRunner = Callable[[RequestRecord, bytes, ResolvedParams, ClipOutput, "int | None"], Awaitable[EngineResult]]


async def run_clips(
    run_clip: ClipRunner,
    muxers: list[Any],
    record: RequestRecord,
    image: bytes,
    params: ResolvedParams,
    fmt: OutputFormat,
    work_dir: str | os.PathLike[str] | None,
) -> EngineResult:
    """Run the video's clips from the first one its work directory lacks, each through `run_clip`, on the mux
    actors `muxers`; the result's `video.path` is the file."""
    own_dir = work_dir is None
    path = tempfile.mkdtemp(prefix="svdpipe-clips-") if work_dir is None else os.fspath(work_dir)
    clips = ClipDir(path)
    num_clips, steps = params.num_clips, params.num_inference_steps
    admitted = time.time()
    tasks: list[asyncio.Task[EngineResult]] = []
    mux_actor: int | None = None
    try:
        done = await asyncio.to_thread(clips.claim, params, fmt)
        if done:
            logger.info("request %s: resuming at clip %d of %d", record.request_id, done + 1, num_clips)
            record.report(done * steps)
            image = await asyncio.to_thread(lambda: image_png(clips.last_frame(done - 1)))
        for k in range(done, num_clips):
            if record.cancelled:
                raise RequestCancelledError(f"request {record.request_id} was cancelled")
            clip = _clip_record(record, k, steps, feeds_next=k + 1 < num_clips and not params.color_match)
            out = ClipOutput(path, k, num_clips, fmt, params.fps, params.color_match)
            tasks.append(asyncio.ensure_future(run_clip(clip, image, clip_params(params, k), out, mux_actor)))
            if k + 1 < num_clips:
                image = await _next_image(clip, tasks[-1], clips, k)
            if mux_actor is None and clip.plan is not None:
                mux_actor = clip.plan.mux_actor
        results = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if mux_actor is not None:
            with contextlib.suppress(Exception):
                await muxers[mux_actor].abandon.remote(_output(path, params, fmt))
        if own_dir:
            shutil.rmtree(path, ignore_errors=True)
        raise
    # The file is finished by the mux call that added its last clip in order, or else here (clips whose mux
    # calls ended out of order, or a video resumed with every clip already kept).
    file = next((r.video.path for r in results if r.video.path is not None), None)
    if file is None:
        muxer = muxers[mux_actor if mux_actor is not None else 0]
        file = await muxer.finish.remote(_output(path, params, fmt), params.num_frames)
    record.report(record.total_steps)
    last = results[-1] if results else None
    trace = tuple(t for r in results for t in r.video.trace)
    video = EncodedVideo(record.request_id, b"", fmt, num_clips * params.num_frames, trace, file)
    return EngineResult(
        record.request_id,
        video,
        params,
        [t for r in results for t in r.timings],
        time.time() - admitted,
        max((r.attempts for r in results), default=1),
        last.plan if last is not None else None,
        any(r.split for r in results),
        last.split_reason if last is not None else "every clip was already finished",
        None,
    )


def _clip_record(video: RequestRecord, k: int, steps: int, feeds_next: bool) -> RequestRecord:
    """Clip k's record: its steps count towards the video's progress after the k clips before it."""

    def progress(done: int, _total: int) -> None:
        video.report(k * steps + done)

    clip = RequestRecord(f"{video.request_id}#clip{k}", on_progress=progress, total_steps=steps)
    clip.parent = video.request_id
    clip.cancelled = video.cancelled
    if feeds_next:
        clip.next_image = asyncio.get_running_loop().create_future()
    return clip


async def _next_image(clip: RequestRecord, task: asyncio.Task, clips: ClipDir, k: int) -> bytes:
    """The next clip's image: clip k's last frame as soon as it is decoded, or, when the clip ends first (it
    had no separate last-frame part: colour matching, parareal), from the clip kept in the work directory."""
    waits: set[asyncio.Future] = {task}
    if clip.next_image is not None:
        waits.add(clip.next_image)
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    if clip.next_image is not None and clip.next_image.done():
        return clip.next_image.result()
    task.result()  # raises the clip's failure
    return await asyncio.to_thread(lambda: image_png(clips.last_frame(k)))


def _output(path: str, params: ResolvedParams, fmt: OutputFormat) -> ClipOutput:
    return ClipOutput(path, params.num_clips - 1, params.num_clips, fmt, params.fps, params.color_match)
