"""The job store: durable job records, input images and finished videos, and the shared queue, behind one protocol.

The service keeps every job in a :class:`JobStore`. Two backends share all of their logic (:class:`SQLJobStore`):

* :class:`SQLiteJobStore`, the embedded default: records in a SQLite database under ``data_dir`` (WAL journal,
  ``synchronous=FULL``, so a committed change survives a crash of the process or of the machine). Zero set-up;
  replicas on one machine can share it, replicas on several machines cannot.
* :class:`~svdpipe.service.store.postgres.PostgresJobStore`: records in PostgreSQL, so replicas on any number of
  machines share one queue. :func:`open_job_store` picks it for a ``postgresql://`` address.

Either way, input images and finished videos are plain files under ``data_dir`` (a volume every replica mounts
in a cluster), each written atomically (temporary file, ``fsync``, ``os.replace``), so any replica serves any
video and a reader never sees half a file.

Layout under ``data_dir``::

    jobs.sqlite3                  the records (SQLite backend only)
    inputs/<id>                   the input image of each job, exactly as uploaded
    videos/<id>.<output_format>   the finished video of each completed job
    clips/<id>/                   a multi-clip job's work directory: its finished clips, so that the replica
                                  that runs it after a crash resumes at the clip in progress; removed once the
                                  job ends or is deleted (the finished video is moved from it into videos/)

The queue (shared by every replica that uses the store):

* :meth:`JobStore.claim` moves the oldest ``queued`` job to ``in_progress`` for one replica, atomically (SQLite:
  one writer at a time; PostgreSQL: ``FOR UPDATE SKIP LOCKED``), so each job runs on exactly one replica. The
  claim gives the replica a **lease** on the job and counts an attempt.
* The replica renews its leases with :meth:`JobStore.heartbeat`, which also stores the jobs' progress (so any
  replica shows it) and answers which jobs the replica still holds: a job cancelled or deleted through another
  replica is missing from the answer, and its owner stops it.
* :meth:`JobStore.requeue_expired`, which every replica runs now and then, **re-queues** a job whose lease has
  expired: its replica died. Its input image is stored and the output for a given seed is deterministic, so running
  it again gives exactly the video the user would have got; failing it instead would throw away work the user asked
  for because of a problem on our side. Unless it has already been started ``max_attempts`` times: then it is
  marked ``failed`` ("the service restarted while this job was running, <n> times; giving up"), since a job that
  crashes its replica every time would otherwise take replica after replica down, forever.

Recovery when a replica starts (:meth:`JobStore.recover`): expired leases as above (a job from before leases
existed has none, so it counts as expired); a ``completed`` job whose video file is gone is marked ``failed``
with an error saying so, so that clients are never told to download something that does not exist; a ``queued``
job whose input image is gone cannot run and is marked ``failed`` too; temporary files older than an hour (writes
that a crash interrupted) are removed, and so are the work directories of jobs that finished or were deleted.

Job ids end up in file names, so they are restricted to ``[A-Za-z0-9_-]`` (at most 128 characters): nothing can be
read or written outside ``data_dir``. :meth:`JobStore.get` answers None for any other id (it cannot exist, so a
lookup of a user-supplied id is simply "not found"); the other methods reject it with ``ValueError``.

A database that cannot be reached raises :class:`~svdpipe.errors.StoreUnavailableError` from any method (the API
answers 503 with Retry-After); nothing is changed then.

Modules: :mod:`.records` (the record, statuses, ids), :mod:`.protocol` (the :class:`JobStore` contract),
:mod:`.files` (atomic files), :mod:`.sql` (the shared SQL queue), :mod:`.sqlite` and :mod:`.postgres` (the
backends), :mod:`.addresses` and :mod:`.factory` (:func:`open_job_store`). PostgreSQL (psycopg) is imported only
when a ``postgresql://`` store is opened.
"""

from svdpipe.service.store.addresses import POSTGRES_SCHEMES, redact
from svdpipe.service.store.factory import open_job_store
from svdpipe.service.store.protocol import JobStore
from svdpipe.service.store.records import (
    MISSING_IMAGE_ERROR,
    MISSING_VIDEO_ERROR,
    RESTART_ERROR,
    STATUSES,
    TERMINAL,
    JobRecord,
    JobStatus,
    is_valid_job_id,
    validate_job_id,
)
from svdpipe.service.store.sql import SQLJobStore
from svdpipe.service.store.sqlite import SQLiteJobStore

__all__ = [
    "MISSING_IMAGE_ERROR",
    "MISSING_VIDEO_ERROR",
    "POSTGRES_SCHEMES",
    "RESTART_ERROR",
    "STATUSES",
    "TERMINAL",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "SQLJobStore",
    "SQLiteJobStore",
    "is_valid_job_id",
    "open_job_store",
    "redact",
    "validate_job_id",
]
