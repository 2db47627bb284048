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
from typing import TYPE_CHECKING

from svdpipe.config import EngineConfig, OutputFormat, ResolvedParams
from svdpipe.placement import ActorSpec
from svdpipe.state import RequestState, StageTrace

if TYPE_CHECKING:
    from svdpipe.engine.progress import StepReporter

logger = logging.getLogger(__name__)


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

    def __init__(
        self,
        config: EngineConfig,
        spec: ActorSpec,
        fresh_tensors: bool = False,
        progress: StepReporter | None = None,
    ) -> None:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        import torch

        from svdpipe.models import load_model

        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.config, self.spec, self.fresh_tensors = config, spec, fresh_tensors
        self.progress = progress  # reports each finished step, without waiting (engine/progress.py)
        self.model = load_model(config.model, config.dtype, config.device, spec.parts)
        if spec.denoise_stage is not None:
            self._prepare_unet()
        self.simulate_s = config.simulate_step_ms / 1000 if config.simulate_step_ms is not None else None
        # One request in the model at a time, even when Ray gives the actor a second thread to receive the next.
        self._lock = threading.Lock()
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

    def process(self, item: EncodeRequest | RequestState, steps: tuple[int, int] | None) -> RequestState | EncodedVideo:
        """Run this actor's phases on `item`; `steps` is its step range for this request."""
        with self._lock:
            return self._process(item, steps)

    def _process(
        self, item: EncodeRequest | RequestState, steps: tuple[int, int] | None
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
        if steps is not None:
            on_step = self.progress.for_request(state.request_id) if self.progress is not None else None
            state = stages.denoise(self.model, state, range(*steps), on_step=on_step, simulate_step_s=self.simulate_s)
        result: RequestState | EncodedVideo
        if self.spec.decodes:
            result = self._decode(state, started, _steps(steps), codec_s)
        else:
            trace = StageTrace(self.spec.name, started, time.time(), self.idle_since, _steps(steps), codec_s)
            result = state.traced(trace).fresh() if self.fresh_tensors else state.traced(trace)
        self.idle_since = time.time()
        return result

    def _decode(self, state: RequestState, started: float, steps: int, codec_s: float) -> EncodedVideo:
        from svdpipe import stages
        from svdpipe.video import encode_video

        decode_start = time.time()
        frames = stages.decode(self.model, state)
        data = encode_video(frames, state.output_format, state.params.fps)  # type: ignore[arg-type]
        finished = time.time()
        codec_s += finished - decode_start
        trace = StageTrace(self.spec.name, started, finished, self.idle_since, steps, codec_s)
        return EncodedVideo(state.request_id, data, state.output_format, int(frames.shape[0]), (*state.trace, trace))  # type: ignore[arg-type]


def _steps(steps: tuple[int, int] | None) -> int:
    return 0 if steps is None else steps[1] - steps[0]
