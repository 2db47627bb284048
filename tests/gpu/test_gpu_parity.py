"""On a GPU: the tiny model in fp32, fp16 and bf16 equals diffusers on the same GPU (single process and
through the engine), 3 actors sharing the GPU over CUDA IPC equal the single-process path, the CFG split and
parareal (tol 0) on GPU actors equal the serial path, and, on a host with 2 GPUs, so do wide steps over NCCL."""

from __future__ import annotations

import numpy as np
import pytest

from svdpipe.config import EngineConfig, VideoParams, resolve_params
from tests.conftest import diffusers_frames
from tests.gpu.conftest import TOLERANCE, max_abs_diff

PARAMS = VideoParams(num_frames=3, num_inference_steps=4, seed=7, decode_chunk_size=3)


def _reference(dtype: str, image, resolved) -> np.ndarray:
    """diffusers' StableVideoDiffusionPipeline on its own copy of the tiny model, on the GPU, in `dtype`."""
    from svdpipe.models import build_random_pipeline, torch_dtype

    pipe = build_random_pipeline("tiny").to("cuda", torch_dtype(dtype))
    return diffusers_frames(pipe, image, resolved)


def _local(dtype: str, image, params: VideoParams) -> np.ndarray:
    from svdpipe.local import LocalPipeline

    return (
        LocalPipeline(EngineConfig(num_stages=1, dtype=dtype, device="cuda", num_gpus_per_actor=1))
        .generate(image, params)
        .frames
    )


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_single_process_equals_diffusers(record_property, gpu_image, dtype):
    from svdpipe.models import model_spec

    ours = _local(dtype, gpu_image, PARAMS)
    want = _reference(dtype, gpu_image, resolve_params(PARAMS, model_spec("tiny")))
    diff = max_abs_diff(ours, want)
    record_property("max_abs_diff", diff)
    assert diff <= TOLERANCE[dtype], f"{dtype}: max abs diff {diff:.3g} (provisional tolerance {TOLERANCE[dtype]})"


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_three_actors_sharing_a_gpu_over_cuda_ipc(record_property, gpu_ray, gpu_image, dtype):
    """Through the engine: equal to diffusers on the same GPU, and to the single-process path."""
    from svdpipe.engine.sync import generate_once
    from svdpipe.models import model_spec

    config = EngineConfig(
        num_stages=3, dtype=dtype, num_gpus_per_actor=0.33, transport="cuda_ipc", name_prefix=f"ipc-{dtype}"
    )
    frames = generate_once(config, gpu_image, PARAMS).frames
    vs_diffusers = max_abs_diff(frames, _reference(dtype, gpu_image, resolve_params(PARAMS, model_spec("tiny"))))
    vs_local = max_abs_diff(frames, _local(dtype, gpu_image, PARAMS))
    record_property("max_abs_diff", vs_diffusers)
    record_property("max_abs_diff_vs_single_process", vs_local)
    assert vs_diffusers <= TOLERANCE[dtype], f"{dtype}: max abs diff {vs_diffusers:.3g} vs diffusers"
    assert vs_local <= TOLERANCE[dtype], f"{dtype}: max abs diff {vs_local:.3g} vs the single-process path"


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("latency_mode", ["cfg-split", "parareal"])
def test_latency_modes_on_gpu_actors_equal_serial(record_property, gpu_ray, gpu_image, dtype, latency_mode):
    from svdpipe.engine.sync import generate_once

    config = EngineConfig(
        num_stages=3,
        dtype=dtype,
        num_gpus_per_actor=0.33,
        latency_mode=latency_mode,
        parareal_tol=0.0,
        name_prefix=f"lat-{latency_mode}-{dtype}",
    )
    result = generate_once(config, gpu_image, PARAMS)
    diff = max_abs_diff(result.frames, _local(dtype, gpu_image, PARAMS))
    record_property("max_abs_diff", diff)
    assert diff <= TOLERANCE[dtype], f"{latency_mode} {dtype}: max abs diff {diff:.3g}"


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_wide_steps_over_nccl_equal_serial(record_property, gpu_ray, gpu_image, dtype):
    """The 'wide' mode on 2 GPUs (one actor each, NCCL): each UNet call split over both equals the serial path.
    Skipped, with the GPU count, on a host with one GPU (the check's report says so)."""
    import torch

    from svdpipe.engine.sync import generate_once

    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs for a wide step over NCCL; this host has {torch.cuda.device_count()}")
    config = EngineConfig(
        num_stages=2, dtype=dtype, num_gpus_per_actor=1, latency_mode="wide", wide_size=2, name_prefix=f"wide-{dtype}"
    )
    # One request on an idle engine of one group: it runs wide (tests/unit/test_wide_planning.py)
    result = generate_once(config, gpu_image, PARAMS)
    diff = max_abs_diff(result.frames, _local(dtype, gpu_image, PARAMS))
    record_property("max_abs_diff", diff)
    assert diff <= TOLERANCE[dtype], f"wide {dtype}: max abs diff {diff:.3g}"
