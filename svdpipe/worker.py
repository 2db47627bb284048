"""What one stage actor does, as a plain class (no Ray import): the engine wraps it with ray.remote.

An actor runs its phases of the chain on each item it gets: encode (an EncodeRequest in), denoise its step
range, decode (an EncodedVideo out). It records when it worked so the engine can tell hop time (transport)
from queue time (the stage was busy with another request).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from svdpipe.config import EngineConfig, OutputFormat, ResolvedParams
from svdpipe.placement import ActorSpec
from svdpipe.state import RequestState, StageTrace

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
_MAX_HELPED = 8


@dataclass(frozen=True)
class EncodeRequest:
    """What the first actor of the chain receives."""

    request_id: str
    image_png: bytes  # the (already validated) input image, re-opened by the encoder
    params: ResolvedParams
    output_format: OutputFormat
    submitted: float  # time.time() when the engine submitted the chain


@dataclass(frozen=True)
class EncodedVideo:
    """What the last actor returns: the finished video file plus the request's stage trace."""

    request_id: str
    data: bytes
    output_format: OutputFormat
    num_frames: int
    trace: tuple[StageTrace, ...]


class StageWorker:
    """One actor's model parts and its phases of the chain."""

    def __init__(self, config: EngineConfig, spec: ActorSpec, fresh_tensors: bool = False) -> None:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        import torch

        from svdpipe.models import load_model

        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.config, self.spec, self.fresh_tensors = config, spec, fresh_tensors
        self.model = load_model(config.model, config.dtype, config.device, spec.parts)
        if spec.denoise_stage is not None:
            self._prepare_unet()
        self.simulate_s = config.simulate_step_ms / 1000 if config.simulate_step_ms is not None else None
        # One request in the model at a time, even when Ray gives the actor a second thread to receive the next.
        self._lock = threading.Lock()
        self._pending = 0  # stage calls entered but waiting for the lock: a helper declines halves meanwhile
        self._pending_lock = threading.Lock()
        self._helping: dict[str, RequestState] = {}  # conditioning of the ranges this actor helps with
        with contextlib.suppress(ImportError):  # inputs are read-only views on the object store: expected
            from ray._private.tensor_serialization_utils import ZeroCopyTensorsWarning

            warnings.filterwarnings("ignore", category=ZeroCopyTensorsWarning)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        self.idle_since = time.time()
        logger.info("%s ready on %s (%s)", spec.name, self.model.device, ", ".join(spec.parts))

    def _prepare_unet(self) -> None:
        import torch

        unet = self.model.pipe.unet
        if self.config.channels_last:
            unet.to(memory_format=torch.channels_last)
        if self.config.compile_unet:
            self.model.pipe.unet = torch.compile(unet, mode=self.config.compile_mode)

    def ping(self) -> str:
        return self.spec.name

    def process(
        self, item: EncodeRequest | RequestState, steps: tuple[int, int] | None, exchange: Any = None
    ) -> RequestState | EncodedVideo:
        """Run this actor's phases on `item`; `steps` is its step range for this request. With `exchange` (an
        engine.exchange.HalfExchange) a helper actor computes each step's conditional guidance half."""
        with self._pending_lock:
            self._pending += 1
        try:
            self._lock.acquire()
        finally:
            with self._pending_lock:
                self._pending -= 1
        try:
            return self._process(item, steps, exchange)
        finally:
            self._lock.release()

    def half(
        self, key: str, state: RequestState | None, latents: torch.Tensor, i: int, last: bool
    ) -> tuple[torch.Tensor | None, float]:
        """As a helper: the conditional half's noise prediction at step i, and the seconds it took; (None, 0)
        when this actor has work of its own (running or waiting), which always goes first. `state` (the
        conditioning) comes with a range's first step only and is kept under `key` until its `last` step."""
        from svdpipe import stages
        from svdpipe.latency import should_help

        if state is not None:
            self._helping[key] = state
            while len(self._helping) > _MAX_HELPED:  # an owner that died mid-range never sends `last`
                self._helping.pop(next(iter(self._helping)))
        state = self._helping.pop(key, None) if last else self._helping.get(key)
        if state is None:
            return None, 0.0
        if not should_help(self._lock.locked(), self._pending) or not self._lock.acquire(blocking=False):
            return None, 0.0
        try:
            started = time.time()
            out = stages.predict_half(self.model, state, latents, i, 1, self.simulate_s)
            return out, time.time() - started
        finally:
            self._lock.release()

    def solve(self, state: RequestState, latents: torch.Tensor, start: int, stop: int, coarse: bool) -> torch.Tensor:
        """A parareal solve of block [start, stop) from `latents`: the block's own steps (fine) or one Euler
        step across it (coarse); `state` carries the request's conditioning."""
        from svdpipe import stages

        with self._lock:
            at_start = state.advanced(latents, start)
            if coarse:
                out = stages.coarse_step(self.model, at_start, range(start, stop), self.simulate_s)
            else:
                out = stages.denoise(self.model, at_start, range(start, stop), simulate_step_s=self.simulate_s)
            self.idle_since = time.time()
            return out.latents

    def _process(
        self, item: EncodeRequest | RequestState, steps: tuple[int, int] | None, exchange: Any = None
    ) -> RequestState | EncodedVideo:
        from svdpipe import stages
        from svdpipe.images import load_image

        started = time.time()
        codec_s = 0.0
        if isinstance(item, EncodeRequest):
            if not self.spec.encodes:
                raise RuntimeError(f"{self.spec.name} got an encode request but does not encode")
            state = stages.encode(
                self.model, load_image(item.image_png), item.params, item.request_id, item.output_format
            )
            codec_s = time.time() - started
        else:
            state = item
        split = {}
        if steps is not None and exchange is not None and state.params.do_classifier_free_guidance:
            exchange.open(state, range(*steps))
            state = stages.denoise_split(self.model, state, range(*steps), exchange.start, None, self.simulate_s)
            split = {"split_steps": exchange.steps, "helper_s": exchange.helper_s, "exchange_s": exchange.exchange_s}
        elif steps is not None:
            state = stages.denoise(self.model, state, range(*steps), simulate_step_s=self.simulate_s)
        result: RequestState | EncodedVideo
        if self.spec.decodes:
            result = self._decode(state, started, _steps(steps), codec_s, split)
        else:
            trace = StageTrace(self.spec.name, started, time.time(), self.idle_since, _steps(steps), codec_s, **split)
            result = state.traced(trace).fresh() if self.fresh_tensors else state.traced(trace)
        self.idle_since = time.time()
        return result

    def _decode(
        self, state: RequestState, started: float, steps: int, codec_s: float, split: dict[str, Any]
    ) -> EncodedVideo:
        from svdpipe import stages
        from svdpipe.video import encode_video

        decode_start = time.time()
        frames = stages.decode(self.model, state)
        data = encode_video(frames, state.output_format, state.params.fps)  # type: ignore[arg-type]
        finished = time.time()
        codec_s += finished - decode_start
        trace = StageTrace(self.spec.name, started, finished, self.idle_since, steps, codec_s, **split)
        return EncodedVideo(state.request_id, data, state.output_format, int(frames.shape[0]), (*state.trace, trace))  # type: ignore[arg-type]


def _steps(steps: tuple[int, int] | None) -> int:
    return 0 if steps is None else steps[1] - steps[0]
