"""The lease keeper: renews this replica's leases and stores progress; stops jobs cancelled through another replica."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from svdpipe.errors import StoreUnavailableError
from svdpipe.service.config import ServiceConfig
from svdpipe.service.jobs.local import LocalJobs
from svdpipe.service.jobs.outage import StoreOutage
from svdpipe.service.jobs.outcomes import OutcomeRecorder
from svdpipe.service.store import JobStore

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """One heartbeat per poll interval: a job missing from the store's answer was cancelled, deleted or re-queued
    elsewhere, and is stopped here."""

    def __init__(
        self,
        store: JobStore,
        config: ServiceConfig,
        owner: str,
        local: LocalJobs,
        recorder: OutcomeRecorder,
        stop_local: Callable[[str], None],
        outage: StoreOutage,
    ) -> None:
        self.store, self.config, self.owner, self.local = store, config, owner, local
        self.recorder, self.stop_local, self.outage = recorder, stop_local, outage

    async def heartbeat_once(self) -> None:
        """Renew leases and store progress; stop jobs that were cancelled or deleted through another replica."""
        unrecorded = self.recorder.unrecorded
        progress = {**{j: 99 for j in unrecorded}, **self.local.progress}
        if not progress:
            return
        try:
            held = await asyncio.to_thread(
                self.store.heartbeat, self.owner, progress, self.config.lease_s, None, dict(self.local.clips_done)
            )
            self.outage.ok()
        except StoreUnavailableError as exc:
            self.outage.failed(exc)
            return  # jobs keep running; their leases are renewed once the store answers again
        for job_id in progress.keys() - held:
            if job_id in unrecorded:
                unrecorded.pop(job_id, None)  # cancelled, deleted or re-run elsewhere meanwhile
            elif job_id in self.local.tasks:
                logger.info("job %s was cancelled or deleted through another replica: stopping it", job_id)
                self.stop_local(job_id)
        await self.recorder.flush()
