"""Device-aware helpers for asynchronous CUDA work: clocks that wait for queued kernels, progress reported
when a step has finished (not when it was queued), and a host copy that does not wait for later work.

On the CPU kernels run synchronously, so each helper is its plain form there (time.time, an immediate report,
the tensor itself); the CUDA forms are used only where a trace or a report is taken, never per kernel.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import torch


class _Event(Protocol):
    def record(self) -> None: ...

    def synchronize(self) -> None: ...


def is_cuda(device: Any) -> bool:
    return torch.device(device).type == "cuda"


def wall_clock(device: Any) -> Callable[[], float]:
    """time.time() (comparable across processes, as traces need), read after the device's queued kernels
    have finished when `device` is a GPU; plain time.time on the CPU."""
    if not is_cuda(device):
        return time.time

    def clock() -> float:
        torch.cuda.synchronize(device)
        return time.time()

    return clock


def _cuda_event() -> _Event:
    return torch.cuda.Event()


class _Done:
    """An event on the CPU: the step's work finished before its report was queued."""

    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


class CompletedSteps:
    """Calls `on_step(i)` once step i's work has finished on the device.

    `queued(i)` is called after step i's kernels are launched: it records an event and reports the steps more
    than `lag` behind, waiting on their events. On a GPU the lag is one step: step i - 1 is reported once step i
    is queued behind it, so the device never runs dry while this thread waits for a report. On the CPU the step
    has finished when `queued` is called, and is reported at once. `flush()` reports the rest after the loop.
    """

    def __init__(
        self,
        on_step: Callable[[int], None],
        device: Any,
        event: Callable[[], _Event] | None = None,
        lag: int | None = None,
    ) -> None:
        cuda = is_cuda(device)
        self._on_step = on_step
        self._event = event if event is not None else (_cuda_event if cuda else _Done)
        self._lag = lag if lag is not None else (1 if cuda else 0)
        self._pending: deque[tuple[int, _Event]] = deque()

    def queued(self, i: int) -> None:
        event = self._event()
        event.record()
        self._pending.append((i, event))
        while len(self._pending) > self._lag:
            self._report()

    def flush(self) -> None:
        while self._pending:
            self._report()

    def _report(self) -> None:
        i, event = self._pending.popleft()
        event.synchronize()
        self._on_step(i)


def step_reporter(on_step: Callable[[int], None] | None, device: Any) -> CompletedSteps | None:
    return CompletedSteps(on_step, device) if on_step is not None else None


def launch_owner_half_first(device: Any) -> bool:
    """Under a CFG split, whether the owner launches its own half before sending the latents to the helper.

    On a GPU the launch only queues kernels, so the owner's half runs while the host copy and the send happen;
    on the CPU the owner's half runs to completion when called, so the helper must be sent the latents first
    or the halves would not overlap."""
    return is_cuda(device)


@functools.cache
def _copy_stream(index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(device=index)


def host_copy(tensor: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Start copying `tensor` to host memory; the returned function waits for the copy and gives the copy.

    On a GPU the copy runs on a side stream that waits only for the work queued so far (the kernels that
    produce `tensor`), so work launched afterwards on the current stream (the owner's own guidance half) runs
    alongside it instead of in front of it; a plain `.cpu()` would wait for all of it. A CPU tensor is
    returned as is."""
    if not tensor.is_cuda:
        return lambda: tensor
    stream = _copy_stream(tensor.device.index if tensor.device.index is not None else torch.cuda.current_device())
    stream.wait_stream(torch.cuda.current_stream(tensor.device))
    with torch.cuda.stream(stream):
        out = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        out.copy_(tensor, non_blocking=True)
        done = torch.cuda.Event()
        done.record(stream)
    tensor.record_stream(stream)  # the allocator must not reuse `tensor` until the copy has read it

    def wait() -> torch.Tensor:
        done.synchronize()
        return out

    return wait
