"""What one replica knows of the jobs it runs: their tasks and live progress, and the signals that wake others."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from svdpipe.service.events import ChangeSignal


@dataclass
class LocalJobs:
    """The jobs running on this replica, shared by the dispatcher, the lease keeper and the API facade."""

    tasks: dict[str, asyncio.Task] = field(default_factory=dict)  # jobs running here
    progress: dict[str, int] = field(default_factory=dict)  # live progress (stored with every heartbeat)
    completions: deque[float] = field(default_factory=lambda: deque(maxlen=64))  # when jobs completed here
    # A slot freed up or a job was submitted here: claim now, not at the next poll.
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # Notified on every status, queue or progress change made here (event streams wait on it; they also poll
    # the store, for changes made by other replicas).
    changes: ChangeSignal = field(default_factory=ChangeSignal)
    stopping: bool = False  # shutting down: a cancelled job is re-queued, not recorded as cancelled
