"""The dispatcher: claims the oldest queued job whenever the pipeline has a free slot, and runs it on the engine."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from svdpipe.config import OutputFormat, ResolvedParams, VideoParams
from svdpipe.errors import (
    InvalidRequestError,
    RequestCancelledError,
    RequestFailedError,
    StoreUnavailableError,
    SvdpipeError,
    cause_message,
    clean_message,
)
from svdpipe.service.config import ServiceConfig
from svdpipe.service.jobs.local import LocalJobs
from svdpipe.service.jobs.outage import StoreOutage
from svdpipe.service.jobs.outcomes import Outcome, OutcomeRecorder
from svdpipe.service.metrics import ServiceMetrics
from svdpipe.service.store import TERMINAL, JobRecord, JobStore

logger = logging.getLogger(__name__)


class EngineLike(Protocol):
    """What the job manager needs of the engine."""

    config: Any
    spec: Any
    stats: Any
    max_decode_chunk: int | None  # GPU actors: the largest decode chunk that fits ('auto' requests)

    async def generate(
        self,
        image_png: bytes,
        params: VideoParams | ResolvedParams,
        output_format: OutputFormat = "mp4",
        request_id: str | None = None,
        on_progress: Any = None,
        timeout_s: float | None = None,
        work_dir: str | Path | None = None,
    ) -> Any: ...

    def cancel(self, request_id: str) -> bool: ...

    async def health(self) -> list[dict[str, Any]]: ...


class Dispatcher:
    """The claim loop and the jobs it starts: queued -> in_progress -> completed | failed | cancelled."""

    def __init__(
        self,
        engine: EngineLike,
        store: JobStore,
        config: ServiceConfig,
        owner: str,
        local: LocalJobs,
        recorder: OutcomeRecorder,
        metrics: ServiceMetrics,
        outage: StoreOutage,
    ) -> None:
        self.engine, self.store, self.config, self.owner, self.local = engine, store, config, owner, local
        self.recorder, self.metrics, self.outage = recorder, metrics, outage

    async def run(self) -> None:
        """Claim the oldest queued job whenever the pipeline has a free slot."""
        local = self.local
        while True:
            record = None
            local.wakeup.clear()  # before the claim: a submit during it must still wake the next wait
            if not local.draining and len(local.tasks) < self.engine.config.max_inflight:
                try:
                    record = await asyncio.to_thread(self.store.claim, self.owner, self.config.lease_s)
                    self.outage.ok()
                except StoreUnavailableError as exc:
                    self.outage.failed(exc)
                except Exception:
                    logger.exception("claiming a job failed")
            if record is None:
                # Sleep until woken or the next poll (other replicas' jobs). asyncio.wait, not wait_for: in
                # Python 3.11 wait_for can swallow a cancel that arrives as the event fires, and stop() hangs.
                waiter = asyncio.ensure_future(local.wakeup.wait())
                try:
                    await asyncio.wait({waiter}, timeout=self.config.poll_interval_s)
                finally:
                    waiter.cancel()
                continue
            if record.id in local.tasks:
                # Our own job, still running here: our lease lapsed (a stalled loop or a slow store), the job was
                # re-queued and we claimed it back. The run in progress goes on under the new lease; a second run
                # would collide with it in the engine (one request per id) and end the job as neither finished.
                logger.warning("job %s: re-claimed while still running here; its run goes on", record.id)
                continue
            self.metrics.job_status("in_progress")
            local.progress[record.id] = 0
            local.changes.notify()  # it started, and every job behind it moved up
            task = asyncio.get_running_loop().create_task(self._run(record))
            local.tasks[record.id] = task
            task.add_done_callback(lambda _t, job_id=record.id: self._done(job_id))

    def _done(self, job_id: str) -> None:
        self.local.tasks.pop(job_id, None)
        self.local.progress.pop(job_id, None)
        self.local.clips_done.pop(job_id, None)
        self.local.wakeup.set()

    def stop_local(self, job_id: str) -> None:
        """Stop a job running here (cancelled or deleted, here or through another replica)."""
        task = self.local.tasks.get(job_id)
        if task is not None and not self.engine.cancel(job_id):
            task.cancel()  # not inside the engine yet

    async def _run(self, record: JobRecord) -> None:
        try:
            params = ResolvedParams(**record.parameters)
        except ValueError as exc:  # a record this version cannot read (pydantic's ValidationError is one)
            logger.exception("job %s: unreadable parameters", record.id)
            ended = {"started_at": record.started_at or time.time(), "created_at": record.created_at}
            await self.recorder.record(record.id, Outcome("failed", f"internal error: {cause_message(exc)}", **ended))
            return
        clips = params.num_clips
        if clips == 1:
            await self._generate(record, params, None)
            return
        # A multi-clip video keeps its finished clips in a directory of its own under data_dir, which outlives
        # this replica: whichever replica runs the job next (its lease expired) resumes at the clip in progress.
        work_dir = self.store.work_dir(record.id)
        try:
            await self._generate(record, params, work_dir)
        finally:
            await self._tidy(record.id)  # kept while the job may run again (a stopping replica re-queues it)

    async def _tidy(self, job_id: str) -> None:
        """Remove the job's work directory once it will not run again: it ended (here, or cancelled or deleted
        elsewhere). A job another replica took over (our lease expired) keeps it: that replica is using it. If
        the store does not answer, the housekeeper removes it later."""

        def tidy() -> None:
            current = self.store.get(job_id)
            if current is None or current.status in TERMINAL:
                self.store.remove_work_dir(job_id)

        try:
            await asyncio.to_thread(tidy)
        except StoreUnavailableError:
            pass
        except Exception:
            logger.exception("job %s: removing its work directory failed", job_id)

    async def _generate(self, record: JobRecord, params: ResolvedParams, work_dir: Path | None) -> None:
        job_id = record.id
        clips = params.num_clips

        def on_progress(done: int, total: int) -> None:
            self.local.progress[job_id] = min(99, int(100 * done / total))  # 100 only once the video is stored
            if clips > 1:  # total counts the steps of every clip; done includes clips resumed from work_dir
                self.local.clips_done[job_id] = min(done // max(1, total // clips), clips - 1)
            self.local.changes.notify(progress_only=True)

        ended = {"started_at": record.started_at or time.time(), "created_at": record.created_at}
        extra: dict[str, Any] = {} if work_dir is None else {"work_dir": work_dir}
        try:
            image = await asyncio.to_thread(self.store.image, job_id)
            result = await self.engine.generate(
                image,
                params,
                record.output_format,  # type: ignore[arg-type]
                request_id=job_id,
                on_progress=on_progress,
                **extra,
            )
        except (RequestCancelledError, asyncio.CancelledError):
            if self.local.stopping:
                raise  # shutting down: stop() re-queues the job for another replica
            await self.recorder.record(job_id, Outcome("cancelled", **ended))
            return
        except KeyError:
            return  # deleted before it started
        except StoreUnavailableError as exc:
            # Could not read the input: give the job back rather than fail it for our outage.
            logger.warning(
                "job %s: job store unreachable before start (%s); it is re-queued when its lease ends", job_id, exc
            )
            return
        except (InvalidRequestError, RequestFailedError, SvdpipeError) as exc:
            logger.info("job %s failed: %s", job_id, exc)
            await self.recorder.record(
                job_id, Outcome("failed", clean_message(str(exc)) or type(exc).__name__, **ended)
            )
            return
        except Exception as exc:
            logger.exception("job %s failed unexpectedly", job_id)
            await self.recorder.record(job_id, Outcome("failed", f"internal error: {cause_message(exc)}", **ended))
            return
        # How the job ran (nothing of it changes the frames beyond fp32 rounding): kept with its parameters.
        ran: dict[str, Any] = {"latency_mode": self.engine.config.latency_mode, "cfg_split": result.split}
        if result.parareal is not None:  # issue 13: iterations, UNet evaluations in total, final change
            ran["parareal_iterations"] = result.parareal.iterations
            ran["parareal_unet_evals"] = result.parareal.unet_evals
            ran["parareal_final_change"] = result.parareal.final_change
        if result.plan is not None and result.plan.wide:  # its steps ran on this many actors together
            ran["wide_actors"] = len(result.plan.wide)
        self.metrics.latency_mode(result.split, sum(t.helper_s for t in result.video.trace))
        await self.recorder.record(
            job_id,
            Outcome(
                "completed",
                video=result.video.data,
                video_path=result.video.path,
                timings=result.timings,
                parameters={**record.parameters, **ran},
                **ended,
            ),
        )
