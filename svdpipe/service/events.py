"""Server-Sent Events of one job (GET /v1/videos/{id}/events): its state as it changes, then the outcome.

A job's state is a few numbers that only move forward (status, queue position, progress, and the clip of a long
video), so the stream sends the job whenever they change, not a log of everything that happened: an event's id
*is* the state it shows (`<status>.<progress>.<queue position>`, then `.<clip>` for a video of several clips),
and a client reconnecting with `Last-Event-ID` gets only what changed
since (missed intermediate progress values are not replayed; the latest is). No server keeps per-stream
history, so this works on any replica and with any job store.

Waking: the job manager calls `ChangeSignal.notify()` whenever any job changes; streams re-read their job then,
and at least every `poll_s` too (a change made by another process, e.g. another replica, notifies nobody here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

from svdpipe.errors import StoreUnavailableError
from svdpipe.service.schemas import VideoJob
from svdpipe.service.store import STATUSES, TERMINAL

RETRY_MS = 1000  # how soon an EventSource reconnects after a dropped connection
POLL_S = 1.0
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing a quiet stream (a long queue)

EVENT_NAMES = ("status", "queue_position", "progress", *TERMINAL, "error")
EVENTS_DOC = f"""A `text/event-stream` of the job, from now until it ends (then the server closes the stream).

Every event's `data` is the job as `GET /v1/videos/{{id}}` returns it. The event name says what changed:
`status` (the first event, and on every non-final status change), `queue_position`, `progress` (whenever the
percentage moves: every denoising step, for up to 100 steps; over every clip's steps together for a video of
several clips, whose `clip` field then names the clip being made, 1 to `num_clips`, and a new clip is a
`progress` event even when the percentage has not moved), and finally one of
`completed`, `failed`
(`error` says why) or `cancelled`; `error` (data: an error body) if the job is deleted meanwhile.
An event's `id` names the state it shows; reconnecting with `Last-Event-ID` sends only what changed since
(the latest values, not every missed step), and answers 204 if that event was already the final one.
`retry: {RETRY_MS}` is sent first; a `:` comment line every {KEEPALIVE_S:g} s keeps idle connections open."""


class ChangeSignal:
    """Wakes every waiter when any job changes. Take `waiter()` *before* reading state, so no change is missed.

    `notify()` may be called from any thread (the API runs store calls in worker threads): off the event loop's
    thread it hands the wake-up to the loop. A change of progress alone (`notify(progress_only=True)`) does not
    wake `waiter(progress=False)`: what needs the store only for other changes waits on that."""

    def __init__(self) -> None:
        self._event = asyncio.Event()  # any change
        self._moved = asyncio.Event()  # a change other than progress
        self._loop: asyncio.AbstractEventLoop | None = None

    def notify(self, progress_only: bool = False) -> None:
        loop = self._loop
        if loop is not None and not _on_loop(loop):
            loop.call_soon_threadsafe(self._notify, progress_only)
        else:
            self._notify(progress_only)

    def _notify(self, progress_only: bool) -> None:
        self._event.set()
        self._event = asyncio.Event()
        if not progress_only:
            self._moved.set()
            self._moved = asyncio.Event()

    def waiter(self, progress: bool = True) -> asyncio.Event:
        if self._loop is None:
            with contextlib.suppress(RuntimeError):
                self._loop = asyncio.get_running_loop()
        return self._event if progress else self._moved


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this thread is running ``loop``."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class JobState(NamedTuple):
    """What the stream reports changes of."""

    status: str
    progress: int
    queue_position: int
    # The clip in progress of a video of several clips (0 otherwise): a new clip is an event even when the
    # percentage of a long video's many steps has not moved.
    clip: int = 0

    @classmethod
    def of(cls, job: VideoJob) -> JobState:
        return cls(job.status, job.progress, job.queue_position or 0, (job.clip or 0) if job.num_clips > 1 else 0)

    @property
    def event_id(self) -> str:
        head = f"{self.status}.{self.progress}.{self.queue_position}"
        return f"{head}.{self.clip}" if self.clip else head

    @classmethod
    def parse(cls, event_id: str | None) -> JobState | None:
        """The state a Last-Event-ID names; None for a missing or foreign id (the client then gets everything)."""
        if not event_id:
            return None
        parts = event_id.strip().split(".")
        if len(parts) not in (3, 4) or parts[0] not in STATUSES or not all(p.isdigit() for p in parts[1:]):
            return None
        return cls(parts[0], *(int(p) for p in parts[1:]))

    @property
    def final(self) -> bool:
        return self.status in TERMINAL


def event_name(previous: JobState | None, current: JobState) -> str:
    """What changed from `previous` to `current` (the final event is named after the final status)."""
    if current.final:
        return current.status
    if previous is None or previous.status != current.status:
        return "status"
    if previous.progress != current.progress or previous.clip != current.clip:
        return "progress"
    return "queue_position"


def format_event(name: str, data: str, event_id: str | None = None) -> str:
    """One SSE message; `data` is a single line (JSON)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {data}\n\n"


def already_final(job: VideoJob, last_event_id: str | None) -> bool:
    """The client's last event was this job's final one: nothing left to send (answer 204)."""
    seen = JobState.parse(last_event_id)
    return seen is not None and seen.final and seen == JobState.of(job)


async def job_events(
    read: Callable[[], VideoJob | None],
    changes: ChangeSignal,
    last_event_id: str | None = None,
    poll_s: float = POLL_S,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[str]:
    """The stream: `read()` gives the job now (None once deleted); ends after the final event."""
    yield f"retry: {RETRY_MS}\n\n"
    previous = JobState.parse(last_event_id)
    last_sent = time.monotonic()
    while True:
        changed = changes.waiter()
        try:
            job = read()
        except StoreUnavailableError:  # the store is down for a moment: keep the stream, ask again
            await asyncio.sleep(poll_s)
            continue
        if job is None:
            body = {"error": {"message": "the job was deleted", "type": "not_found_error", "code": "404"}}
            yield format_event("error", json.dumps(body))
            return
        state = JobState.of(job)
        if state != previous:
            yield format_event(event_name(previous, state), job.model_dump_json(), state.event_id)
            previous, last_sent = state, time.monotonic()
        if state.final:
            return
        # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancel (a client that went away)
        # that lands as the event fires, and the stream would outlive its connection.
        waiter = asyncio.ensure_future(changed.wait())
        try:
            await asyncio.wait({waiter}, timeout=poll_s)
        finally:
            waiter.cancel()
        if time.monotonic() - last_sent >= keepalive_s:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
