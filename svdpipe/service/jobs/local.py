"""What one replica knows of the jobs it runs: their tasks and live progress, and the signals that wake others."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from svdpipe.service.events import ChangeSignal


@dataclass
class LocalJobs:
    """The jobs running on this replica, shared by the dispatcher, the lease keeper and the API facade."""

    tasks: dict[str, asyncio.Task] = field(default_factory=dict)  # jobs running here
    progress: dict[str, int] = field(default_factory=dict)  # live progress (stored with every heartbeat)
    clips_done: dict[str, int] = field(default_factory=dict)  # live clips done of multi-clip jobs (likewise)
    completions: deque[float] = field(default_factory=lambda: deque(maxlen=64))  # when jobs completed here
    # A slot freed up or a job was submitted here: claim now, not at the next poll.
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # Notified on every status, queue or progress change made here (event streams wait on it; they also poll
    # the store, for changes made by other replicas).
    changes: ChangeSignal = field(default_factory=ChangeSignal)
    stopping: bool = False  # shutting down: a cancelled job is re-queued, not recorded as cancelled
    draining: bool = False  # the replica is stopping: no new claims, running jobs may finish
    loop: asyncio.AbstractEventLoop | None = None  # the replica's event loop, once started

    def wake(self) -> None:
        """Wake the dispatcher (callable from any thread: the API submits jobs from worker threads)."""
        self.call(self.wakeup.set)

    def call(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` on the replica's event loop: now if this is its thread, else as soon as it can."""
        loop = self.loop
        try:
            on_loop = loop is None or asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop or loop is None:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)
