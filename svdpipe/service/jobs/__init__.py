"""The job manager: one replica's side of the shared job queue, between the job store and its stage engine.

Jobs wait in the store's queue, which every replica shares. A manager claims the oldest queued job whenever its
pipeline has a free slot (`engine.config.max_inflight` jobs inside the pipeline at once; the engine overlaps
them across stages), holds a lease on each job it runs and renews it every `poll_interval_s`, together with the
job's progress. The same heartbeat tells it which of its jobs were cancelled or deleted through another
replica, so it stops them within about one poll interval; a job whose replica died is re-queued by any replica
once the lease expires. If the store is unreachable, running jobs carry on, their results wait in memory, and
they are recorded when the store is back.

Modules: :mod:`.facade` (the API side, :class:`JobManager`), :mod:`.dispatcher` (claims and runs jobs),
:mod:`.lease_keeper` (heartbeats, cancels from other replicas), :mod:`.outcomes` (recording results, buffered
through an outage), :mod:`.housekeeper` (expired leases, retention, gauges), :mod:`.local` and :mod:`.outage`
(the state they share).

No torch, no Ray: the engine is anything with the Engine's `generate` / `cancel` / `health` methods, so this
logic is unit-tested with a fake.
"""

from svdpipe.service.jobs.dispatcher import EngineLike
from svdpipe.service.jobs.facade import JobManager, QueueFull

__all__ = ["EngineLike", "JobManager", "QueueFull"]
