"""What the actors do, as plain classes (no Ray import): the engine wraps them with ray.remote.

A ModelWorker holds the UNet, the VAE and CLIP and runs whatever phases a plan's call gives it (encode, a step
range, decode chunks); a MuxWorker (CPU only) writes the decoded frames into the video file, so no GPU actor
ever waits on ffmpeg. Both record when they worked so the engine can tell hop time (transport) from queue time
(the actor was busy with another request).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import statistics
import threading
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from svdpipe.clips import ClipOutput
from svdpipe.config import EngineConfig, OutputFormat, ResolvedParams
from svdpipe.gate import PriorityGate
from svdpipe.placement import ActorSpec
from svdpipe.planner import ActorCall
from svdpipe.state import RequestState, StageTrace

if TYPE_CHECKING:
    import torch

    from svdpipe.reporting import StepReporter

logger = logging.getLogger(__name__)
_MAX_HELPED = 8  # conditioning kept for ranges this actor helps with (an owner that died never says `last`)


@dataclass(frozen=True)
class EncodeRequest:
    """What the first call of a plan receives."""

    request_id: str
    image_png: bytes  # the (already validated) input image, re-opened by the encoding actor
    params: ResolvedParams
    output_format: OutputFormat
    submitted: float  # time.time() when the engine submitted the plan
    clip: ClipOutput | None = None  # one clip of a long video: where its mux call keeps it


@dataclass(frozen=True)
class DecodedFrames:
    """Decoded frame chunks of one request, on their way to a mux actor.

    uint8 for video formats (what diffusers' own PIL/video output rounds to), float32 for .npy, which must equal
    diffusers' float frames.
    """

    request_id: str
    chunks: tuple[tuple[int, np.ndarray], ...]  # (first frame index, frames (n, H, W, 3))
    output_format: OutputFormat
    fps: int
    num_frames: int
    chain: tuple[StageTrace, ...]  # the trace of the calls before this one
    entry: StageTrace  # this call


@dataclass(frozen=True)
class EncodedVideo:
    """What the mux actor returns: the finished video file plus the request's trace."""

    request_id: str
    data: bytes
    output_format: OutputFormat
    num_frames: int
    trace: tuple[StageTrace, ...]
    path: str | None = None  # a long video's finished file (then `data` is empty): clips.ClipOutput.video_path


@dataclass(frozen=True)
class DeviceReport:
    """Where a model actor runs and what its memory looked like at warm-up (bytes; zeros on the CPU)."""

    name: str
    device: str
    uuid: str | None  # the GPU's UUID (torch.cuda.get_device_properties(i).uuid); None on the CPU
    weight_bytes: int  # allocated after loading, before any request
    peak_bytes: int  # the warm-up's peak allocation up to decoding (torch.cuda.max_memory_allocated)
    decode_frame_bytes: int  # the VAE decode's peak beyond the state, per frame decoded at once
    free_bytes: int  # what a decode on this actor may count on: its share of the device's free memory
    total_bytes: int = 0  # the device's memory


@dataclass(frozen=True)
class PhaseCosts:
    """Seconds one actor measured for each phase (for the planner's cost model)."""

    encode_s: float
    step_s: float
    decode_frame_s: float


def _quiet_zero_copy_warnings() -> None:
    with contextlib.suppress(ImportError):  # inputs are read-only views on the object store: expected
        from ray._private.tensor_serialization_utils import ZeroCopyTensorsWarning

        warnings.filterwarnings("ignore", category=ZeroCopyTensorsWarning)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)


class ModelWorker:
    """One model actor: UNet + VAE + CLIP, running the phases of each call it gets."""

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
        from svdpipe.simulate import SimulatedCosts, install_stand_ins

        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.config, self.spec, self.fresh_tensors = config, spec, fresh_tensors
        self.progress = progress  # reports each finished step and call, without waiting (svdpipe/reporting.py)
        _check_fit_before_loading(config)
        self.model = load_model(config.model, config.dtype, config.device)
        costs = SimulatedCosts.from_config(config)
        install_stand_ins(self.model, costs)
        if costs.step_s is None:
            self._prepare_unet()
        # One call in the model at a time, the oldest request's first, when Ray gives the actor threads to
        # receive the next calls while one computes (svdpipe/gate.py).
        self._gate = PriorityGate()
        self._helping: dict[str, RequestState] = {}  # conditioning of the ranges this actor helps with
        self._weight_bytes = _allocated(self.model.device)
        self._peak_bytes = self._decode_frame_bytes = 0
        _quiet_zero_copy_warnings()
        self.idle_since = time.time()
        self._wide: Any = None  # this actor's rank in its 'wide' group (svdpipe.wide.comm.TorchComm), if any
        logger.info("%s ready on %s", spec.name, self.model.device)

    def _prepare_unet(self) -> None:
        import torch

        unet = self.model.pipe.unet
        if self.config.channels_last:
            unet.to(memory_format=torch.channels_last)
        if self.config.compile_unet:
            self.model.pipe.unet = torch.compile(unet, mode=self.config.compile_mode)

    def ping(self) -> str:
        return self.spec.name

    def wide_address(self) -> str:
        """host:port where this actor (rank 0 of the 'wide' process group) can listen: a port free now."""
        import socket

        import ray

        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return f"{ray.util.get_node_ip_address()}:{port}"

    def join_wide(self, address: str, rank: int, world: int, size: int, timeout_s: float) -> None:
        """Join the model actors' torch.distributed process group (gloo on CPU actors, NCCL on GPU ones; formed
        again whole after a rebuild) and this actor's group of `size` consecutive ranks for wide steps. Every
        model actor calls this together, with the same `address` and `world`."""
        import datetime

        import torch.distributed as dist

        from svdpipe.wide.comm import TorchComm

        if dist.is_initialized():  # a rebuild: the old group lost a member
            dist.destroy_process_group()
        backend = "nccl" if self.model.device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(backend, init_method=f"tcp://{address}", rank=rank, world_size=world, timeout=timeout)
        self._wide = None
        for start in range(0, world - size + 1, size):  # every rank creates every group, in the same order
            ranks = list(range(start, start + size))
            group = dist.new_group(ranks, timeout=timeout)
            if rank in ranks:
                self._wide = TorchComm(group)

    def warm_up(self, image_png: bytes, params: ResolvedParams) -> PhaseCosts:
        """Run one request here twice (first calls pay lazy initialisation, allocator growth, compilation) and
        return what each phase cost the second time."""
        from svdpipe import stages
        from svdpipe.images import load_image
        from svdpipe.profile import device_clock

        clock = device_clock(self.model.device)
        dev = self.model.device
        with self._gate.hold(0.0):
            for _ in range(2):
                _reset_peak(dev)
                t0 = clock()
                state = stages.encode(self.model, load_image(image_png), params, "warmup", "npy")
                t1 = clock()
                state = stages.denoise(self.model, state, range(params.num_inference_steps))
                t2 = clock()
                before_decode, denoise_peak = _allocated(dev), _peak(dev)
                _reset_peak(dev)
                stages.decode(self.model, state)
                t3 = clock()
                # Weights + the UNet's activations: what every request reaches. The decode's peak is per frame,
                # for choosing decode chunks that fit (memory.decode_chunk_for_memory).
                self._peak_bytes = denoise_peak
                self._decode_frame_bytes = max(0, _peak(dev) - before_decode) // params.decode_chunk_size
            if params.do_classifier_free_guidance:  # the batch-of-one call the owner's half of a CFG split makes
                stages.predict_half(self.model, state, state.latents, 0, 1)
            self.idle_since = time.time()
        return PhaseCosts(t1 - t0, (t2 - t1) / params.num_inference_steps, (t3 - t2) / params.num_frames)

    def warm_half(self, image_png: bytes, params: ResolvedParams) -> None:
        """Warm the batch-of-one UNet call on the thread that calls this: the engine sends it to the "help"
        concurrency group, whose thread computes a helper's CFG halves (torch.compile's CUDA-graph trees are per
        thread, so warming on the default thread would leave the first split request to compile)."""
        from svdpipe import stages
        from svdpipe.images import load_image

        if not params.do_classifier_free_guidance:
            return
        with self._gate.hold(0.0):
            state = stages.encode(self.model, load_image(image_png), params, "warmup", "npy")
            for _ in range(2):
                stages.predict_half(self.model, state, state.latents, 0, 1)
            wall_clock_of(self.model.device)()
            self.idle_since = time.time()

    def device_report(self) -> DeviceReport:
        """Where this actor runs and its memory figures from warm-up (for the engine's device checks)."""
        import torch

        dev = self.model.device
        uuid, free, total = None, 0, 0
        if dev.type == "cuda":
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            device_free, total = torch.cuda.mem_get_info(index)
            cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
            sharing = _copies_here(self.config)
            free = cached + device_free // sharing  # actors sharing the GPU may decode at the same time
        return DeviceReport(
            self.spec.name, str(dev), uuid, self._weight_bytes, self._peak_bytes, self._decode_frame_bytes, free, total
        )

    def run(
        self, item: EncodeRequest | RequestState, call: ActorCall, exchange: Any = None, host: bool = False
    ) -> RequestState | DecodedFrames:
        """Run `call`'s phases on `item`: a RequestState out, or decoded frames when the call decodes. With
        `exchange` (an engine.exchange.HalfExchange) a helper actor computes each step's conditional half; with
        `host` a state comes back in host memory (for the engine's own process, which holds no device)."""
        with self._gate.hold(call.priority):
            started = self.progress.call_started(item.request_id, call.index) if self.progress else time.time()
            try:
                result = self._run(item, call, exchange)
            finally:
                if self.progress is not None:
                    self.progress.call_ended(item.request_id, call.index, started)
            return result.to("cpu") if host and isinstance(result, RequestState) else result

    def half(
        self, key: str, state: RequestState | None, latents: torch.Tensor, i: int, last: bool
    ) -> tuple[torch.Tensor | None, float]:
        """As a helper: the conditional half's noise prediction at step i, and the seconds it took; (None, 0)
        when this actor has work of its own (running or waiting), which always goes first. `state` (the
        conditioning) comes with a range's first step only and is kept under `key` until its `last` step."""
        from svdpipe import stages
        from svdpipe.latency import should_help

        if state is not None:  # arrives in host memory: onto this actor's device once per range
            self._helping[key] = state.to(self.model.device)
            while len(self._helping) > _MAX_HELPED:
                self._helping.pop(next(iter(self._helping)))
        state = self._helping.pop(key, None) if last else self._helping.get(key)
        if state is None:
            return None, 0.0
        if not should_help(self._gate.busy, self._gate.waiting) or not self._gate.try_acquire():
            return None, 0.0
        try:
            started = time.time()
            out = stages.predict_half(self.model, state, latents, i, 1).cpu()  # waits for the device
            return out, time.time() - started  # host memory: see engine/exchange.py
        finally:
            self._gate.release()

    def solve(self, state: RequestState, latents: torch.Tensor, start: int, stop: int, coarse: bool) -> torch.Tensor:
        """A parareal solve of block [start, stop) from `latents`: the block's own steps (fine) or one Euler
        step across it (coarse); `state` carries the request's conditioning. The result is in host memory: the
        engine's driver, which combines the solves, holds no device."""
        from svdpipe import stages

        with self._gate.hold(0.0):  # parareal runs alone on the pipeline
            at_start = state.advanced(latents, start)
            if coarse:
                out = stages.coarse_step(self.model, at_start, range(start, stop))
            else:
                out = stages.denoise(self.model, at_start, range(start, stop))
            self.idle_since = time.time()
            return out.latents.cpu()

    def _run(
        self, item: EncodeRequest | RequestState, call: ActorCall, exchange: Any = None
    ) -> RequestState | DecodedFrames:
        from svdpipe import stages
        from svdpipe.images import load_image

        # Trace times are read after the device has finished the work they time (kernels run asynchronously on
        # a GPU): one synchronise per phase boundary of a call, none per step.
        clock = wall_clock_of(self.model.device)
        started = time.time()  # the previous call's work was finished before its trace ended
        codec_s = 0.0
        # 1. encode
        if call.encode:
            if not isinstance(item, EncodeRequest):
                raise RuntimeError(f"{self.spec.name}: an encode call got {type(item).__name__}")
            state = stages.encode(
                self.model, load_image(item.image_png), item.params, item.request_id, item.output_format
            )
            codec_s = clock() - started
        elif isinstance(item, RequestState):
            state = item
        else:
            raise RuntimeError(f"{self.spec.name}: a call without encode got {type(item).__name__}")
        # 2. denoise this call's step range
        steps, split = 0, {}
        on_step = self.progress.for_request(state.request_id) if self.progress is not None else None
        if call.steps is not None and exchange is not None and state.params.do_classifier_free_guidance:
            exchange.open(state, range(*call.steps))
            state = stages.denoise_split(self.model, state, range(*call.steps), exchange.start, on_step)
            split = {"split_steps": exchange.steps, "helper_s": exchange.helper_s, "exchange_s": exchange.exchange_s}
            steps = call.steps[1] - call.steps[0]
        elif call.steps is not None and call.wide:
            state = self._denoise_wide(state, call, on_step)
            steps = call.steps[1] - call.steps[0]
        elif call.steps is not None:
            state = stages.denoise(self.model, state, range(*call.steps), on_step)
            steps = call.steps[1] - call.steps[0]
        # 3. decode this call's frame chunks (diffusers' chunks, so they equal the whole decode's frames)
        result: RequestState | DecodedFrames
        if call.decode:
            decode_start = clock()
            fmt = state.output_format
            chunks = tuple((a, _for_format(stages.decode(self.model, state, (a, b)), fmt)) for a, b in call.decode)
            finished = time.time()  # the frames are numpy arrays: the device is done
            codec_s += finished - decode_start
            entry = StageTrace(self.spec.name, started, finished, self.idle_since, steps, codec_s, **split)
            result = DecodedFrames(
                state.request_id,
                chunks,
                fmt,
                state.params.fps,
                state.params.num_frames,
                state.trace,
                entry,  # type: ignore[arg-type]
            )
        else:
            entry = StageTrace(self.spec.name, started, clock(), self.idle_since, steps, codec_s, **split)
            result = state.traced(entry).fresh() if self.fresh_tensors else state.traced(entry)
        self.idle_since = time.time()
        return result

    def _denoise_wide(self, state: RequestState, call: ActorCall, on_step: Any) -> RequestState:
        from svdpipe.wide.stage import denoise_wide

        comm = self._wide
        if comm is None or comm.size != len(call.wide) or call.wide[comm.rank] != self.spec.index:
            raise RuntimeError(f"{self.spec.name} holds no rank of the wide group {list(call.wide)}")
        return denoise_wide(self.model, state, range(*call.steps), comm, on_step)


def wall_clock_of(device: Any) -> Any:
    from svdpipe.device import wall_clock

    return wall_clock(device)


def _copies_here(config: EngineConfig) -> int:
    from svdpipe.memory import copies_per_gpu

    return copies_per_gpu(config.num_gpus_per_actor, config.num_stages)


def _check_fit_before_loading(config: EngineConfig) -> None:
    """Refuse to load when the model copies that share this GPU cannot fit: all of their weights in the
    device's total memory, and this copy's in what is free now. (The actors sharing a GPU load at the same
    time, so the free memory may already hold some of their copies: all N against it would refuse layouts that
    fit.) Activations are checked from the warm-up's measured peaks (DeviceReport, engine start)."""
    import torch

    from svdpipe.memory import check_fit
    from svdpipe.models import resolve_device, weight_bytes

    if config.num_gpus_per_actor <= 0 or config.simulate_step_ms is not None:
        return
    dev = resolve_device(config.device)
    if dev.type != "cuda":
        return
    weights = weight_bytes(config.model, config.dtype)
    if weights is None:
        logger.info("weights of %s not countable before loading: no fit check", config.model)
        return
    free, total = torch.cuda.mem_get_info(dev.index if dev.index is not None else torch.cuda.current_device())
    check_fit(weights, 0, _copies_here(config), total)
    check_fit(weights, 0, 1, free)


def _allocated(device: Any) -> int:
    import torch

    return int(torch.cuda.memory_allocated(device)) if torch.device(device).type == "cuda" else 0


def _peak(device: Any) -> int:
    import torch

    return int(torch.cuda.max_memory_allocated(device)) if torch.device(device).type == "cuda" else 0


def _reset_peak(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _for_format(frames: np.ndarray, fmt: str) -> np.ndarray:
    """uint8 for video files (a quarter of the bytes to move), exact float32 for .npy."""
    from svdpipe.video import to_uint8

    return frames if fmt == "npy" else to_uint8(frames)


class MuxWorker:
    """A CPU-only actor that assembles decoded chunks in frame order and writes the video file."""

    def __init__(self, config: EngineConfig, spec: ActorSpec, progress: StepReporter | None = None) -> None:
        self.config, self.spec, self.progress = config, spec, progress
        _quiet_zero_copy_warnings()
        self.idle_since = time.time()
        self._lock = threading.Lock()
        self._streams: dict[str, list[Any]] = {}  # long videos' files being written: work dir -> [stream, next clip]

    def ping(self) -> str:
        return self.spec.name

    def mux(self, *parts: DecodedFrames, index: int = -1, out: ClipOutput | None = None) -> EncodedVideo:
        """The video file of one request from its decoded parts (each part's chunks in any order); `index` is
        the mux call's index in the plan, for the call events. With `out` the parts are one clip of a long
        video: it is kept in the video's work directory and appended to the video's file (`_add_clip`)."""
        from svdpipe.video import encode_video

        with self._lock:
            started = time.time()
            first = parts[0]
            if self.progress is not None:
                self.progress.call_started(first.request_id, index)
            chunks = sorted((c for p in parts for c in p.chunks), key=lambda c: c[0])
            frames = np.concatenate([f for _, f in chunks])
            if frames.shape[0] != first.num_frames:
                raise RuntimeError(f"request {first.request_id}: {frames.shape[0]} of {first.num_frames} frames")
            path = None
            if out is None:
                data = encode_video(frames, first.output_format, first.fps)
            else:
                data, path = b"", self._add_clip(out, frames)
            finished = time.time()
            # Decode calls after the first ran on the same input, at the same time: hop_timings must know.
            decodes = tuple(
                p.entry if i == 0 else dataclasses.replace(p.entry, parallel=True) for i, p in enumerate(parts)
            )
            entry = StageTrace(self.spec.name, started, finished, self.idle_since, 0, finished - started)
            self.idle_since = finished
            if self.progress is not None:
                self.progress.call_ended(first.request_id, index, started)
        return EncodedVideo(
            first.request_id, data, first.output_format, first.num_frames, (*first.chain, *decodes, entry), path
        )

    def finish(self, out: ClipOutput, frames_per_clip: int) -> str:
        """A long video's file, once every clip is in its work directory (clips whose mux calls ended out of
        order, or on an actor that has since been replaced, are appended from there)."""
        with self._lock:
            if out.video_path.is_file() and out.work_dir not in self._streams:
                return str(out.video_path)
            path = self._advance(out, frames_per_clip, None)
            if path is None:
                raise RuntimeError(f"{out.work_dir}: clips missing, the video cannot be finished")
            return path

    def abandon(self, out: ClipOutput) -> None:
        """A long video stopped (cancelled or failed): drop its partial file; its kept clips stay for a resume."""
        with self._lock:
            entry = self._streams.pop(out.work_dir, None)
            if entry is not None:
                entry[0].abort()

    def _add_clip(self, out: ClipOutput, frames: np.ndarray) -> str | None:
        """Keep clip `out.clip` (colour-matched to clip 0 if asked) in the work directory, then append every clip
        that is next in order to the video's file; returns the file's path once the last clip is in."""
        from svdpipe.clips import ClipDir, color_stats, match_colors

        clips = ClipDir(out.work_dir)
        if out.color_match:
            if out.clip == 0:
                clips.set_colors(color_stats(frames))
            else:
                reference = clips.colors()
                if reference is None:
                    raise RuntimeError(f"{out.work_dir}: clip 0's colours are missing")
                frames = match_colors(frames, reference)
        clips.write_clip(out.clip, frames)
        return self._advance(out, len(frames), (out.clip, frames))

    def _advance(self, out: ClipOutput, frames_per_clip: int, fresh: tuple[int, np.ndarray] | None) -> str | None:
        from svdpipe.clips import ClipDir
        from svdpipe.video import VideoStream

        clips = ClipDir(out.work_dir)
        entry = self._streams.get(out.work_dir)
        if entry is None:  # the video's first clip here: (re)start its file, replaying clips already kept
            stream = VideoStream(out.video_path, out.output_format, out.fps, out.num_clips * frames_per_clip)
            entry = self._streams[out.work_dir] = [stream, 0]
        stream, next_clip = entry
        try:
            while next_clip < out.num_clips and clips.clip_path(next_clip).is_file():
                stream.append(fresh[1] if fresh is not None and fresh[0] == next_clip else clips.read_clip(next_clip))
                next_clip += 1
            entry[1] = next_clip
            if next_clip < out.num_clips:
                return None
            del self._streams[out.work_dir]
            return str(stream.close())
        except BaseException:
            self._streams.pop(out.work_dir, None)
            stream.abort()
            raise


def median_costs(costs: list[PhaseCosts]) -> PhaseCosts:
    """The median of each phase over actors (one actor slowed by a neighbour should not skew the plan)."""
    return PhaseCosts(
        statistics.median(c.encode_s for c in costs),
        statistics.median(c.step_s for c in costs),
        statistics.median(c.decode_frame_s for c in costs),
    )
