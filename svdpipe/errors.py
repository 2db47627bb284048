"""Errors svdpipe raises for problems a user can fix; the CLI and HTTP layer show their message, not a traceback."""


class SvdpipeError(Exception):
    """Base class: the message is meant for the user."""


class InvalidRequestError(SvdpipeError, ValueError):
    """A request parameter or input image is not acceptable."""


class ModelLoadError(SvdpipeError):
    """The model could not be found or loaded."""


class ConfigError(SvdpipeError, ValueError):
    """The engine configuration is inconsistent or cannot run on this machine."""


class RequestFailedError(SvdpipeError):
    """A request could not be completed (after any retries)."""


class RequestCancelledError(SvdpipeError):
    """The request was cancelled before it finished."""


class RequestTimeoutError(RequestFailedError):
    """The request did not finish within its time limit."""


class QueueFullError(SvdpipeError):
    """The engine is at capacity; try again later."""


class StoreUnavailableError(SvdpipeError):
    """The job store (its database server) cannot be reached right now; try again later."""


class StorageFullError(SvdpipeError):
    """The data directory has no room for a file (ENOSPC), or less free space than the service's floor."""


def describe_validation_error(exc: Exception) -> str:
    """One readable line per problem in a pydantic ValidationError (other exceptions: their message)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for err in errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "input"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)
