"""Which failures are the machine's and which are the request's: only the first kind rebuilds and retries.

An actor that died or cannot be reached, a lost object, a failed transfer between actors: infrastructure, worth a
rebuild and a retry. An exception raised by the request's own computation (a stage's code raising on its input)
would raise again on a retry: the request fails at once and no actor is touched.
"""

from __future__ import annotations

import re

import ray

from svdpipe.errors import cause_message

# Errors that a transfer between actors raises inside a task (gloo / NCCL / RDT), as their messages name them.
_TRANSPORT = re.compile(r"gloo|nccl|collective|rdt transfer|connection (?:closed|reset)", re.IGNORECASE)


class ActorLostError(RuntimeError):
    """An actor of the request's plan died or stopped answering (found by the engine's health watch)."""


_INFRA = (
    ActorLostError,
    ray.exceptions.RayActorError,  # ActorDiedError, ActorUnavailableError
    ray.exceptions.ObjectLostError,  # OwnerDiedError, ObjectReconstructionFailedError, ...
    ray.exceptions.ObjectFetchTimedOutError,
    ray.exceptions.RaySystemError,
    ray.exceptions.OutOfMemoryError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.WorkerCrashedError,
)


def is_infrastructure(exc: BaseException) -> bool:
    """True for actor death, lost objects and transport failures; False for the request's own errors."""
    if isinstance(exc, _INFRA):
        return True
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        if isinstance(cause, _INFRA):
            return True
        return bool(_TRANSPORT.search(f"{type(cause).__name__}: {cause}"))
    return False


def short(exc: BaseException) -> str:
    """One line for errors a user reads: the root cause's type and message (errors.cause_message); the whole
    text, with Ray's actor and pid, goes to the logs."""
    return cause_message(exc)
