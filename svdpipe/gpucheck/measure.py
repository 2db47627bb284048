"""The in-process parts of `svdpipe gpu-check`, each run in a subprocess of its own (a crash, an out-of-memory
or a hang loses that part only): `export` the model once, `measure` our per-step, decode and memory figures
next to diffusers' own pipeline on the same weights, and `compile` the UNet and time it again.

Results are written to the part's JSON file after every figure, so a part stopped at its budget keeps what it
measured. Times come from CUDA events on a GPU (perf_counter on the CPU), never from a clock read while kernels
are still queued.

    python -m svdpipe.gpucheck.measure PART SETTINGS.json MODEL_DIR OUT.json
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from svdpipe.gpucheck.settings import CheckSettings


class Timer:
    """Milliseconds of the work between start() and stop(): CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def time(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end), out
        t0 = time.perf_counter()
        out = fn()
        return (time.perf_counter() - t0) * 1000, out


class Results:
    """The part's JSON object, rewritten after every figure."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")


def _peak(device: torch.device) -> int:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0


def _allocated(device: torch.device) -> int:
    return int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else 0


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def export(s: CheckSettings, model_dir: Path, out: Results) -> None:
    """The built-in architecture with random weights, saved in the check's dtype (built on the device: random
    initialisation of 2 billion parameters is minutes on a CPU; the weights need only be the same in every
    part, which loading one directory guarantees)."""
    from svdpipe.models import build_random_pipeline, torch_dtype

    t0 = time.perf_counter()
    with torch.device(s.device):
        pipe = build_random_pipeline(s.model)
    pipe.to(dtype=torch_dtype(s.dtype))
    pipe.save_pretrained(model_dir)
    out.put("model_dir", str(model_dir))
    out.put("export_s", time.perf_counter() - t0)


def _request(s: CheckSettings, frames: int, steps: int, chunk: int | None = None) -> Any:
    from svdpipe.config import VideoParams, resolve_params
    from svdpipe.models import model_spec

    params = VideoParams(
        height=s.height, width=s.width, num_frames=frames, num_inference_steps=steps, seed=0, decode_chunk_size=chunk
    )
    return resolve_params(params, model_spec(s.model))


def _image(s: CheckSettings) -> Any:
    import PIL.Image

    from svdpipe.cli import SAMPLE_IMAGE

    return PIL.Image.open(SAMPLE_IMAGE).convert("RGB").resize((s.width, s.height))


def _step_ms(model: Any, s: CheckSettings, frames: int, timer: Timer) -> tuple[list[float], Any]:
    """Each denoising step's ms through svdpipe's stage code (the first is a warm-up, dropped)."""
    from svdpipe import stages

    params = _request(s, frames, s.timed_steps)
    state = stages.encode(model, _image(s), params)
    times = []
    for i in range(s.timed_steps):
        ms, state = timer.time(lambda i=i, st=state: stages.denoise(model, st, range(i, i + 1)))
        times.append(ms)
    return times[1:], state


def _diffusers_step_ms(model: Any, s: CheckSettings, frames: int, device: torch.device) -> list[float]:
    """diffusers' own StableVideoDiffusionPipeline on the same weights: ms between step-end callbacks, each read
    after a synchronise (the first step, which includes encoding, is dropped)."""
    marks: list[float] = []

    def on_step_end(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        marks.append(time.perf_counter())
        return kwargs

    params = _request(s, frames, s.timed_steps)
    model.pipe(
        _image(s),
        height=s.height,
        width=s.width,
        num_frames=frames,
        num_inference_steps=s.timed_steps,
        generator=torch.Generator("cpu").manual_seed(0),
        max_guidance_scale=params.max_guidance_scale,
        output_type="latent",
        callback_on_step_end=on_step_end,
    )
    return [(b - a) * 1000 for a, b in itertools.pairwise(marks)]


def measure(s: CheckSettings, model_dir: Path, out: Results) -> None:
    """Per frame count: per-step ms (svdpipe, then diffusers), VAE decode ms and peak per chunk size, peak memory;
    and the profile `svdpipe bench` uses instead of measuring its own."""
    from svdpipe import stages
    from svdpipe.memory import decode_chunk_for_memory
    from svdpipe.models import load_model, weight_bytes
    from svdpipe.profile import CostProfile

    t0 = time.perf_counter()
    model = load_model(str(model_dir), s.dtype, s.device)
    device = model.device
    timer = Timer(device)
    out.put("load_s", time.perf_counter() - t0)
    out.put("weights_allocated_bytes", _allocated(device))
    out.put("weights_estimated_bytes", weight_bytes(str(model_dir), s.dtype))
    per_frames: dict[str, Any] = {}
    for frames in s.frames:
        row: dict[str, Any] = {}
        per_frames[str(frames)] = row
        _reset_peak(device)
        steps, state = _step_ms(model, s, frames, timer)
        row["step_ms"] = steps
        row["step_ms_median"] = statistics.median(steps)
        row["denoise_peak_bytes"] = _peak(device)
        out.put("frames", per_frames)
        diffusers_steps = _diffusers_step_ms(model, s, frames, device)
        row["diffusers_step_ms"] = diffusers_steps
        row["diffusers_step_ms_median"] = statistics.median(diffusers_steps) if diffusers_steps else None
        out.put("frames", per_frames)
        decode: dict[str, Any] = {}
        row["decode"] = decode
        latents = state.latents  # after the timed steps (random weights: any latents decode alike)
        for chunk in [c for c in s.decode_chunks if c <= frames]:
            before = _allocated(device)
            _reset_peak(device)
            try:
                ms, _ = timer.time(lambda c=chunk, x=latents, f=frames: model.pipe.decode_latents(x, f, c))
            except torch.OutOfMemoryError as exc:
                decode[str(chunk)] = {"error": f"out of memory: {exc}".splitlines()[0]}
                torch.cuda.empty_cache()
                continue
            n_chunks = -(-frames // chunk)
            peak = _peak(device)
            decode[str(chunk)] = {
                "ms": ms,
                "ms_per_chunk": ms / n_chunks,
                "peak_bytes": peak,
                "frame_bytes": max(0, peak - before) // chunk,
            }
            out.put("frames", per_frames)
        if device.type == "cuda":
            measured = [d["frame_bytes"] for d in decode.values() if "frame_bytes" in d]
            free, _ = torch.cuda.mem_get_info(device)
            row["auto_decode_chunk"] = decode_chunk_for_memory(frames, max(measured), free) if measured else None
        out.put("frames", per_frames)
    # the cost profile of the largest frame count, in the form `svdpipe bench --profile` reads
    frames = s.bench_frames
    params = _request(s, frames, s.bench_steps)
    enc_ms, state = timer.time(lambda: stages.encode(model, _image(s), params))
    step_ms, state = timer.time(lambda: stages.denoise(model, state, range(params.num_inference_steps)))
    dec_ms, _ = timer.time(lambda: stages.decode(model, state))
    profile = CostProfile(
        enc_ms / 1000,
        (step_ms / 1000 / params.num_inference_steps,) * params.num_inference_steps,
        dec_ms / 1000,
        {"height": s.height, "width": s.width, "num_frames": frames, "dtype": s.dtype, "device": str(device)},
    )
    profile.save(out.path.with_name("profile.json"))
    out.put("profile", profile.to_json())
    out.put("peak_bytes", _peak(device))


def compile_unet(s: CheckSettings, model_dir: Path, out: Results) -> None:
    """torch.compile the UNet (svdpipe's compile_unet) and time a step again, per frame count; the first call
    per shape compiles, and its time is reported apart."""
    from svdpipe.models import load_model

    model = load_model(str(model_dir), s.dtype, s.device)
    timer = Timer(model.device)
    kwargs = {"backend": s.compile_backend} | ({"mode": s.compile_mode} if s.compile_mode else {})
    model.pipe.unet = torch.compile(model.pipe.unet, **kwargs)
    out.put("backend", s.compile_backend)
    per_frames: dict[str, Any] = {}
    for frames in s.frames:
        t0 = time.perf_counter()
        steps, _ = _step_ms(model, s, frames, timer)
        per_frames[str(frames)] = {
            "first_call_s": time.perf_counter() - t0,
            "step_ms": steps,
            "step_ms_median": statistics.median(steps),
            "peak_bytes": _peak(model.device),
        }
        out.put("frames", per_frames)


PARTS = {"export": export, "measure": measure, "compile": compile_unet}


def main(argv: list[str]) -> int:
    part, settings_path, model_dir, out_path = argv
    settings = CheckSettings.from_json(json.loads(Path(settings_path).read_text()))
    PARTS[part](settings, Path(model_dir), Results(Path(out_path)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
