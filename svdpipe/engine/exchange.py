"""The per-step CFG exchange: carried into the owner actor's call, it sends each step's latents to the helper
actor and brings the helper's conditional half back, over Ray's object store, whatever the hand-off transport.

Tensors cross in host memory (the owner's stage function copies the latents to the CPU on a side stream while
its own half runs, the receiver's stage functions move them to its device), so the exchange is correct on every
transport by construction: GPU actors never rely on how a CUDA tensor pickles. For SVD-XT at 576x1024 that is
1.8 MB fp16 each way per step, a device copy of well under a millisecond against a half step of ~380 ms on an
H100 (BENCHMARKS.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray

from svdpipe.state import RequestState


class HalfExchange:
    """One request's exchange with one helper actor for one stage range (created by the engine, used by the
    owner's StageWorker through `open`, `start` and the counters; no Ray import needed there)."""

    def __init__(self, helper: Any, helper_name: str) -> None:
        self.helper, self.helper_name = helper, helper_name
        self._cond: ray.ObjectRef | None = None
        self._key = ""
        self._sent_cond = False
        self._last = -1
        self.declined = False  # the helper said no once: the owner computes the rest of the range itself
        self.steps = 0
        self.helper_s = 0.0
        self.exchange_s = 0.0

    def open(self, state: RequestState, steps: range) -> None:
        """Put the request's conditioning in the object store; the helper reads it with the first step and
        keeps it for the range, so each later step sends only the latents."""
        self._cond = ray.put(state.to("cpu"))
        self._key = f"{state.request_id}:{steps.start}"
        self._last = steps.stop - 1

    def start(self, latents: Any, i: int) -> Callable[[], Any]:
        if self.declined or self._cond is None:
            return lambda: None
        sent = time.perf_counter()
        try:
            # The helper's "help" concurrency group: a half never waits behind the helper's own stage calls.
            cond = None if self._sent_cond else self._cond
            half = self.helper.half.options(concurrency_group="help")
            ref = half.remote(self._key, cond, latents.cpu(), i, i == self._last)
            self._sent_cond = True
        except ray.exceptions.RayActorError:
            return self._dead_helper()

        def wait() -> Any:
            try:
                cond, busy_s = ray.get(ref)
            except ray.exceptions.RayActorError:
                return self._dead_helper()()
            if cond is None:
                self.declined = True
                return None
            self.steps += 1
            self.helper_s += busy_s
            self.exchange_s += time.perf_counter() - sent - busy_s
            return cond.to(latents.device)

        return wait

    def _dead_helper(self) -> Callable[[], None]:
        """A dead helper: the owner computes the rest of the range itself; the engine replaces the helper when
        the request reaches it (or the next request does) and retries as for any dead stage actor."""
        self.declined = True
        return lambda: None
