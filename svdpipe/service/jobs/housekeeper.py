"""The housekeeper: re-queues the jobs of dead replicas, deletes jobs past retention, updates gauges and logs."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from svdpipe.errors import StoreUnavailableError
from svdpipe.service.config import ServiceConfig
from svdpipe.service.jobs.local import LocalJobs
from svdpipe.service.jobs.outage import StoreOutage
from svdpipe.service.metrics import ServiceMetrics
from svdpipe.service.store import JobStore

logger = logging.getLogger(__name__)

HOUSEKEEPING_S = 1.0
_PURGE_EVERY_S = 600.0


class Housekeeper:
    """One round every ``HOUSEKEEPING_S``, on every replica (the store makes concurrent rounds safe)."""

    def __init__(
        self,
        engine: Any,
        store: JobStore,
        config: ServiceConfig,
        local: LocalJobs,
        metrics: ServiceMetrics,
        outage: StoreOutage,
    ) -> None:
        self.engine, self.store, self.config, self.local = engine, store, config, local
        self.metrics, self.outage = metrics, outage
        self._last_purge = self._last_log = 0.0

    async def housekeeping_once(self) -> None:
        now = time.time()
        summary = self.engine.stats.summary()
        self.metrics.stages(summary)
        tasks = self.local.tasks
        try:
            queued = await asyncio.to_thread(self._store_round, now)
        except StoreUnavailableError as exc:
            self.outage.failed(exc)
            return
        self.metrics.occupancy(queued, len(tasks))
        if now - self._last_log > self.config.progress_log_interval_s and (tasks or queued):
            self._last_log = now
            logger.info(
                "queued %d (all replicas), in progress here %d; stages: %s",
                queued,
                len(tasks),
                ", ".join(
                    f"{s} busy {f['busy_fraction']:.2f} hop {f['hop_ms_p50']:.1f} ms" for s, f in summary.items()
                ),
            )

    def _store_round(self, now: float) -> int:
        """The store's part of a round (run in a worker thread); the number of queued jobs."""
        # Any replica re-queues the jobs of a dead one; the store makes it safe to do so concurrently.
        self.store.requeue_expired(self.config.max_job_attempts)
        queued = self.store.counts()["queued"]
        if now - self._last_purge > _PURGE_EVERY_S:
            self._last_purge = now
            purged = self.store.purge_expired(self.config.retention_s)
            if purged:
                logger.info("deleted %d job(s) past retention", purged)
            # Work directories a replica could not remove (it died, or the store was down when its job ended).
            orphans = self.store.remove_orphan_work_dirs()
            if orphans:
                logger.info("removed %d work directories of finished or deleted jobs", orphans)
        return queued
