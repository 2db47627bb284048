"""Engine output equals the single-process core exactly, for any split and transport, many requests at once."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch

from svdpipe.config import EngineConfig, VideoParams
from svdpipe.images import load_image
from svdpipe.local import LocalPipeline
from tests.ray.conftest import running_engine

# Different seeds, step counts, frame counts, sizes and guidance, all in flight together.
REQUESTS = [
    VideoParams(num_inference_steps=7, seed=1),
    VideoParams(num_inference_steps=8, seed=2, num_frames=3, max_guidance_scale=1.0),
    VideoParams(num_inference_steps=7, seed=3, height=48, width=80, min_guidance_scale=2.0, max_guidance_scale=2.5),
    VideoParams(num_inference_steps=9, seed=1, fps=10, motion_bucket_id=20),
]


@pytest.fixture(scope="module")
def expected(png) -> list[np.ndarray]:
    # The actors run torch with one thread; so does the reference, so reductions happen in the same order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = LocalPipeline(EngineConfig(num_stages=1))
        return [local.generate(load_image(png), p).frames for p in REQUESTS]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("transport", ["object_store", "gloo"])
@pytest.mark.parametrize(("num_stages", "colocate"), [(1, True), (2, True), (3, False), (7, True)])
def test_engine_equals_local(aloop, png, expected, transport, num_stages, colocate):
    with running_engine(aloop, num_stages=num_stages, transport=transport, colocate_codec=colocate) as engine:
        assert engine.transport == transport

        async def run_all():
            return await asyncio.gather(*[engine.generate(png, p, "npy") for p in REQUESTS])

        results = aloop.run(run_all())
    for params, result, want in zip(REQUESTS, results, expected, strict=True):
        frames = np.load(io.BytesIO(result.video.data))
        assert result.params.seed == params.seed
        np.testing.assert_array_equal(frames, want)
        assert [t.stage for t in result.timings] == [s.name for s in engine.layout]
        assert sum(t.steps for t in result.timings) == params.num_inference_steps
