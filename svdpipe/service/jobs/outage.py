"""Tracks an outage of the job store: when it began, and a warning now and then (not one per failed call)."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)

_OUTAGE_LOG_EVERY_S = 10.0


class StoreOutage:
    """Whether the job store is answering, as the replica's background loops last saw it."""

    def __init__(self) -> None:
        self.down_since: float | None = None
        self._last_log = 0.0

    def ok(self) -> None:
        if self.down_since is not None:
            logger.info("job store reachable again after %.1f s", time.time() - self.down_since)
            self.down_since = None

    def failed(self, exc: Exception) -> None:
        now = time.time()
        if self.down_since is None:
            self.down_since = now
        if now - self._last_log > _OUTAGE_LOG_EVERY_S:
            self._last_log = now
            logger.warning("job store unreachable for %.0f s: %s", now - self.down_since, exc)
