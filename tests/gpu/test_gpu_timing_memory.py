"""On a GPU: stage traces time the work, not its queueing (a step's traced time within 10 % of CUDA events),
progress fires after a step's kernels finish, and an actor's peak memory is within 15 % of the fit check's
estimate (weights counted before loading, activations from the warm-up's measured peak)."""

from __future__ import annotations

import io

import pytest
import torch

from svdpipe.config import EngineConfig, VideoParams, resolve_params

# A shape where a tiny-model step takes milliseconds, so 10 % is not launch-latency noise.
PARAMS = VideoParams(num_frames=8, num_inference_steps=6, seed=3, height=256, width=256)


def _worker(dtype: str = "fp16"):
    from svdpipe.placement import ActorSpec
    from svdpipe.worker import ModelWorker

    config = EngineConfig(num_stages=1, dtype=dtype, device="cuda", num_gpus_per_actor=1)
    return ModelWorker(config, ActorSpec("gpu-test-model-0", "model", 0))


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_traced_step_time_matches_cuda_events(record_property, gpu_image):
    from svdpipe import stages
    from svdpipe.planner import ActorCall
    from svdpipe.worker import EncodeRequest

    worker = _worker()
    resolved = resolve_params(PARAMS, worker.model.spec)
    worker.warm_up(_png(gpu_image), resolved)
    steps = resolved.num_inference_steps
    call = ActorCall(0, True, (0, steps), ())
    state = worker.run(EncodeRequest("t", _png(gpu_image), resolved, "npy", 0.0), call)
    entry = state.trace[-1]
    traced_step_ms = (entry.finished - entry.started - entry.codec_s) * 1000 / steps
    # the same steps timed with CUDA events
    start_state = stages.encode(worker.model, gpu_image, resolved)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    stages.denoise(worker.model, start_state, range(steps))
    end.record()
    end.synchronize()
    event_step_ms = start.elapsed_time(end) / steps
    record_property("traced_step_ms", traced_step_ms)
    record_property("event_step_ms", event_step_ms)
    assert abs(traced_step_ms - event_step_ms) <= 0.10 * event_step_ms


def test_progress_fires_after_the_step_finished(gpu_image):
    from svdpipe import device, stages

    worker = _worker()
    resolved = resolve_params(PARAMS, worker.model.spec)
    state = stages.encode(worker.model, gpu_image, resolved)
    after_step: dict[int, torch.cuda.Event] = {}  # recorded on the stream right after each step's kernels
    done_at_report: list[bool] = []
    original = device.CompletedSteps.queued

    def queued(self, i):
        after_step[i] = torch.cuda.Event()
        after_step[i].record()
        original(self, i)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(device.CompletedSteps, "queued", queued)
        stages.denoise(
            worker.model,
            state,
            range(resolved.num_inference_steps),
            lambda i: done_at_report.append(after_step[i].query()),
        )
    assert done_at_report == [True] * resolved.num_inference_steps


def test_peak_memory_within_15_percent_of_the_estimate(record_property, gpu_image):
    from svdpipe.models import weight_bytes
    from svdpipe.planner import ActorCall
    from svdpipe.worker import EncodeRequest

    worker = _worker()
    resolved = resolve_params(PARAMS, worker.model.spec)
    worker.warm_up(_png(gpu_image), resolved)
    report = worker.device_report()
    estimate = weight_bytes("tiny", "fp16")
    record_property("weights_allocated", report.weight_bytes)
    record_property("weights_estimated", estimate)
    assert abs(report.weight_bytes - estimate) <= 0.15 * estimate
    # a real request's peak up to decoding against the warm-up's (the activation estimate the engine checks)
    torch.cuda.reset_peak_memory_stats()
    call = ActorCall(0, True, (0, resolved.num_inference_steps), ())
    worker.run(EncodeRequest("m", _png(gpu_image), resolved, "npy", 0.0), call)
    peak = torch.cuda.max_memory_allocated()
    record_property("request_peak", peak)
    record_property("warmup_peak", report.peak_bytes)
    assert abs(peak - report.peak_bytes) <= 0.15 * report.peak_bytes
