"""Long videos on the engine: K chained clips equal diffusers' own loop, resume from a work directory, cancel."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from svdpipe.clips import ClipDir, clip_params
from svdpipe.config import VideoParams, resolve_params
from svdpipe.errors import RequestCancelledError
from svdpipe.models import model_spec
from tests.conftest import diffusers_frames
from tests.ray.conftest import decoded, running_engine

TOLERANCE = 1e-5
PARAMS = VideoParams(num_inference_steps=4, num_frames=3, decode_chunk_size=1, seed=7, num_clips=3)


def diffusers_loop(pipe, image: PIL.Image.Image, params, num_clips: int) -> np.ndarray:
    """The reference: diffusers' pipeline called once per clip, each call's image the previous call's last frame
    as output_type='pil' makes it, its generator seeded with seed + k; the frames concatenated."""
    from diffusers.image_processor import VaeImageProcessor

    clips = []
    for k in range(num_clips):
        frames = diffusers_frames(pipe, image, params.model_copy(update={"seed": params.seed + k}))
        clips.append(frames)
        image = VaeImageProcessor.numpy_to_pil(frames[-1:])[0]
    return np.concatenate(clips)


@pytest.fixture(scope="module")
def expected(reference_pipe, png) -> np.ndarray:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the actors run: reductions in the same order
    try:
        params = resolve_params(PARAMS, model_spec("tiny"))
        image = PIL.Image.open(io.BytesIO(png)).convert("RGB")
        return diffusers_loop(reference_pipe, image, params, PARAMS.num_clips)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def engine(aloop):
    with running_engine(aloop, num_stages=3, name_prefix="clips", num_mux_actors=2) as engine:
        yield engine


def test_clip_params_follow_the_loop():
    params = resolve_params(PARAMS, model_spec("tiny"))
    assert [clip_params(params, k).seed for k in range(3)] == [7, 8, 9]
    with pytest.raises(ValueError, match="clip 3"):
        clip_params(params, 3)


def test_three_clips_equal_the_diffusers_loop(aloop, engine, png, expected, tmp_path):
    steps: list[tuple[int, int]] = []
    result = aloop.run(
        engine.generate(png, PARAMS, "npy", on_progress=lambda d, t: steps.append((d, t)), work_dir=tmp_path)
    )
    assert result.video.path is not None and result.video.data == b""
    frames = np.load(result.video.path)
    assert frames.shape == expected.shape == (9, *expected.shape[1:])
    assert float(np.abs(frames - expected).max()) <= TOLERANCE
    # progress counts every clip's steps, never backwards, and ends at K x steps
    assert [d for d, _ in steps] == sorted({d for d, _ in steps}) and steps[-1] == (12, 12)
    assert ClipDir(tmp_path).done(3) == 3


def test_a_video_file_streams_the_clips(aloop, engine, png, expected, tmp_path):
    result = aloop.run(engine.generate(png, PARAMS, "mp4", work_dir=tmp_path))
    frames = decoded(Path(result.video.path).read_bytes())
    assert frames.shape == (9, *expected.shape[1:])
    # H.264 is lossy: near the exact frames, not equal
    assert float(np.abs(frames / 255.0 - expected).mean()) < 0.05


def test_resume_runs_only_the_missing_clips(aloop, engine, png, expected, tmp_path):
    first = aloop.run(engine.generate(png, PARAMS, "npy", work_dir=tmp_path))
    whole = np.load(first.video.path)
    # as after a crash during clip 2: clips 0 and 1 kept, clip 2 and the file gone
    Path(first.video.path).unlink()
    ClipDir(tmp_path).clip_path(2).unlink()
    steps: list[int] = []
    again = aloop.run(engine.generate(png, PARAMS, "npy", work_dir=tmp_path, on_progress=lambda d, t: steps.append(d)))
    assert steps[0] >= 8  # two clips of 4 steps were already done
    np.testing.assert_array_equal(np.load(again.video.path), whole)
    assert len(again.timings) < len(first.timings)  # only clip 2's calls ran


def test_a_work_directory_of_another_request_is_not_reused(aloop, engine, png, tmp_path):
    other = PARAMS.model_copy(update={"seed": 8, "num_clips": 2})
    aloop.run(engine.generate(png, other, "npy", work_dir=tmp_path))
    result = aloop.run(engine.generate(png, PARAMS, "npy", work_dir=tmp_path))
    assert np.load(result.video.path).shape[0] == 9


def test_cancel_mid_video(aloop, engine, png, tmp_path):
    params = PARAMS.model_copy(update={"num_clips": 6})
    progress: list[int] = []

    async def go():
        task = asyncio.ensure_future(
            engine.generate(
                png, params, "npy", request_id="long", work_dir=tmp_path, on_progress=lambda d, t: progress.append(d)
            )
        )
        deadline = time.time() + 60
        while (not progress or progress[-1] < 5) and time.time() < deadline:
            await asyncio.sleep(0.05)
        assert engine.cancel("long")
        with pytest.raises(RequestCancelledError):
            await task

    aloop.run(go())
    assert progress[-1] < 24
    assert engine.inflight == 0
    assert not (tmp_path / "video.npy").exists()


def test_more_clips_than_the_limit_are_refused(aloop, engine, png):
    from svdpipe.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="max_clips"):
        aloop.run(engine.generate(png, PARAMS.model_copy(update={"num_clips": 41}), "npy"))


def test_color_match_keeps_clip_zero_and_matches_the_rest(aloop, engine, png, expected, tmp_path):
    params = PARAMS.model_copy(update={"color_match": True})
    result = aloop.run(engine.generate(png, params, "npy", work_dir=tmp_path))
    frames = np.load(result.video.path)
    np.testing.assert_allclose(frames[:3], expected[:3], atol=TOLERANCE)  # clip 0 is never changed
    ref_mean = frames[:3].mean(axis=(0, 1, 2))
    for k in (1, 2):
        np.testing.assert_allclose(frames[3 * k : 3 * k + 3].mean(axis=(0, 1, 2)), ref_mean, atol=0.02)


def test_the_local_loop_equals_the_diffusers_loop(png, expected, tmp_path):
    from svdpipe.config import EngineConfig
    from svdpipe.local import LocalPipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        image = PIL.Image.open(io.BytesIO(png)).convert("RGB")
        path = LocalPipeline(EngineConfig(num_stages=2)).generate_clips(image, PARAMS, tmp_path / "v.npy")
    finally:
        torch.set_num_threads(threads)
    assert float(np.abs(np.load(path) - expected).max()) <= TOLERANCE
