"""Blocking helpers for one-shot use (the CLI): start Ray if needed, run the engine, tear it down."""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import ray

from svdpipe.config import EngineConfig, OutputFormat, VideoParams
from svdpipe.engine.core import Engine, EngineResult
from svdpipe.local import VideoResult

logger = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Join `address`, or start a local Ray when none is running in this process."""
    if ray.is_initialized():
        return
    kwargs: dict = {"namespace": "svdpipe", "log_to_driver": True, "configure_logging": False}
    if address is not None:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, **kwargs)


async def _run_once(
    config: EngineConfig,
    image: PIL.Image.Image,
    params: VideoParams,
    fmt: OutputFormat,
    work_dir: str | Path | None,
    on_steps: Callable[[int], None] | None,
    on_ready: Callable[[], None] | None,
) -> EngineResult:
    """Start an engine, run one request, shut the engine down; `on_steps` gets each newly finished step count."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    engine = Engine(config)
    await engine.start()
    if on_ready is not None:
        on_ready()
    reported = 0

    def progress(done: int, _total: int) -> None:
        nonlocal reported
        if on_steps is not None and done > reported:
            on_steps(done - reported)
            reported = done

    try:
        return await engine.generate(buf.getvalue(), params, fmt, on_progress=progress, work_dir=work_dir)
    finally:
        await engine.shutdown()


def generate_once(
    config: EngineConfig,
    image: PIL.Image.Image,
    params: VideoParams,
    address: str | None = None,
    on_steps: Callable[[int], None] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> VideoResult:
    """Build an engine, run one request as raw frames, shut the engine down."""
    ensure_ray(address)
    result = asyncio.run(_run_once(config, image, params, "npy", None, on_steps, on_ready))
    frames = np.load(io.BytesIO(result.video.data))
    for t in result.timings:
        logger.info(
            "%s: work %.1f ms, hop %.2f ms, queue %.1f ms (%d steps)", t.stage, t.work_ms, t.hop_ms, t.queue_ms, t.steps
        )
    for entry in result.video.trace:
        if entry.split_steps:
            logger.info(
                "%s: %d of %d steps split, helper %.1f ms, exchange %.2f ms per step",
                entry.stage,
                entry.split_steps,
                entry.steps,
                entry.helper_s * 1000,
                entry.exchange_s * 1000 / entry.split_steps,
            )
    if result.split_reason:
        logger.info("latency mode: %s", result.split_reason)
    return VideoResult(result.request_id, frames, result.params)


def generate_file_once(
    config: EngineConfig,
    image: PIL.Image.Image,
    params: VideoParams,
    out: str | Path,
    fmt: OutputFormat,
    work_dir: str | Path | None = None,
    address: str | None = None,
    on_steps: Callable[[int], None] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> Path:
    """Build an engine, run one request (a long video too) into the file `out`, shut the engine down. A long
    video's finished clips are kept in `work_dir` (a temporary directory if None, removed afterwards): the same
    call again resumes where a stopped one ended."""
    ensure_ray(address)
    scratch = None if work_dir is not None else tempfile.mkdtemp(prefix="svdpipe-clips-")
    try:
        result = asyncio.run(_run_once(config, image, params, fmt, work_dir or scratch, on_steps, on_ready))
        target = Path(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        if result.video.path is not None:
            shutil.move(result.video.path, target)
        else:
            target.write_bytes(result.video.data)
        return target
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
