"""errors.cause_message: a job's error is the root cause's message, one clean line (no ANSI, no Ray preamble)."""

from __future__ import annotations

import threading
import traceback

import pytest
from ray.exceptions import ActorDiedError, RayTaskError

from svdpipe.errors import InvalidRequestError, RequestFailedError, cause_message, clean_message, root_cause

PADDING = "Padding size should be less than the corresponding input dimension, but got: padding (1, 1)"


def _task_error(name: str, cause: BaseException, actor: str = "StageWorker") -> RayTaskError:
    """A RayTaskError as a Ray worker builds it: the cause's formatted traceback, the proctitle, pid, ip, actor."""
    try:
        raise cause
    except BaseException:
        tb = traceback.format_exc()
    return RayTaskError(
        f"{actor}.{name}",
        tb,
        cause,
        proctitle=f"ray::{actor}.{name}",
        pid=4242,
        ip="10.1.2.3",
        actor_repr=f"<svdpipe.worker.{actor} object at 0x7f00deadbeef>",
        actor_id="a1b2c3d4",
    ).as_instanceof_cause()


def test_a_nested_ray_task_error_gives_the_encode_failure_not_the_mux_actor() -> None:
    encode = _task_error("encode", RuntimeError(PADDING))
    mux = _task_error("mux", encode, actor="MuxWorker")
    assert "\x1b[" in str(mux) and "pid=4242" in str(mux)  # what the job showed before
    assert isinstance(root_cause(mux), RuntimeError) and not isinstance(root_cause(mux), RayTaskError)
    assert cause_message(mux) == f"RuntimeError: {PADDING}"


def test_the_engine_failure_wrapping_a_ray_error_reads_as_its_cause() -> None:
    mux = _task_error("mux", _task_error("encode", ValueError("Expected more than 1 value per channel")), "MuxWorker")
    try:
        raise RequestFailedError("request video_1 failed after 2 attempt(s)") from mux
    except RequestFailedError as exc:
        assert cause_message(exc) == "ValueError: Expected more than 1 value per channel"


def test_svdpipe_errors_keep_their_message_only() -> None:
    assert cause_message(InvalidRequestError("height: must be a multiple of 16")) == "height: must be a multiple of 16"


def test_a_cause_ray_could_not_send_back_is_read_from_the_traceback_text() -> None:
    class Unpicklable(Exception):
        def __init__(self, message: str) -> None:
            super().__init__(message)
            self.lock = threading.Lock()  # pickling fails: Ray keeps only the formatted traceback

    err = _task_error("encode", Unpicklable("boom in encode"))
    message = cause_message(err)
    assert "boom in encode" in message
    assert "\x1b[" not in message and "pid=" not in message and "\n" not in message


def test_actor_death_is_one_line_without_pids() -> None:
    message = cause_message(ActorDiedError())
    assert message.startswith("ActorDiedError: ") and "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\x1b[36mray::MuxWorker.mux()\x1b[39m (pid=1, ip=1.2.3.4, actor_id=ab, repr=<x at 0x1>)\nboom", "boom"),
        ("first line\nsecond line", "first line"),
        ("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n    g()\nKeyError: 'k'", "KeyError: 'k'"),
        ("worker died (pid=77, ip=10.0.0.1)", "worker died"),
        ("", ""),
    ],
)
def test_clean_message(text: str, expected: str) -> None:
    assert clean_message(text) == expected


def test_a_cycle_in_the_chain_ends() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    assert root_cause(a) is b
