"""Errors svdpipe raises for problems a user can fix; the CLI and HTTP layer show their message, not a traceback."""

from __future__ import annotations

import re


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


# ANSI colour codes (Ray colours its "ray::Actor.method()" preamble) and the preamble's process details.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RAY_PREAMBLE = re.compile(r"^\s*ray::\S+\(\)\s*(\([^)]*\))?\s*$")
_PROCESS_DETAILS = re.compile(r"\s*\((?:pid|ip|actor_id|repr)=[^)]*\)")
_MAX_MESSAGE = 500


def root_cause(exc: BaseException) -> BaseException:
    """The exception at the bottom of a chain: through Ray's RayTaskError (`.cause`, the exception raised in the
    task) and Python's explicit chaining (`__cause__`). Stops at a cycle."""
    seen = {id(exc)}
    while True:
        inner = getattr(exc, "cause", None)
        if not isinstance(inner, BaseException):
            inner = exc.__cause__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def clean_message(text: str) -> str:
    """One line a user can act on from an exception's text: no ANSI codes, no Ray task preamble
    ("ray::MuxWorker.mux() (pid=…, ip=…, actor_id=…, repr=…)"), no traceback, no process details."""
    lines = [_ANSI.sub("", line).rstrip() for line in text.strip().splitlines()]
    lines = [line for line in lines if line.strip() and not _RAY_PREAMBLE.match(line)]
    if not lines:
        return ""
    if any(line.startswith("Traceback (most recent call last)") or line.startswith("  File ") for line in lines):
        # A formatted traceback (a RayTaskError whose cause could not be sent back): its last line is the error.
        lines = [line for line in lines if not line.startswith(" ")]
        text = lines[-1]
    else:
        text = lines[0]
    return _PROCESS_DETAILS.sub("", text).strip()[:_MAX_MESSAGE]


def cause_message(exc: BaseException) -> str:
    """`Type: message` of the root cause of `exc`, as one clean line (see `root_cause`, `clean_message`).

    svdpipe's own errors are written for users, so they keep only their message."""
    cause = root_cause(exc)
    message = clean_message(str(cause))
    if isinstance(cause, SvdpipeError):
        return message or type(cause).__name__
    name = type(cause).__name__
    if "(" in name:  # Ray's dual class "RayTaskError(RuntimeError)": the user's type is in the brackets
        name = name[name.index("(") + 1 : name.rindex(")")]
    return f"{name}: {message}" if message else name
