"""latency_mode parareal and wide behind the jobs API: a job gives the serial video and reports how it ran.

(That a cfg-split job records `cfg_split` is tests/unit/test_jobs.py's: a second Serve app costs ~35 s here.)"""

from __future__ import annotations

import time

import httpx
import numpy as np
import torch

from svdpipe.config import EngineConfig, VideoParams
from svdpipe.images import load_image
from svdpipe.local import LocalPipeline
from svdpipe.service.config import ServiceConfig
from svdpipe.video import encode_video
from tests.conftest import diffusers_frames
from tests.ray.conftest import decoded, serving, small_engine

TOLERANCE = 1e-5
PARAMS = VideoParams(num_inference_steps=4, num_frames=2, height=32, width=32, seed=9)


def _service(tmp_path, name: str, **engine_fields) -> ServiceConfig:
    fields = {"latency_mode": "parareal", "parareal_tol": 0.0, **engine_fields}
    engine = small_engine(name, num_stages=3, transport="object_store", **fields)
    return ServiceConfig(data_dir=str(tmp_path / name), replica_cpus=0.1, engine=engine)


def _run_job(client: httpx.Client, png: bytes, timeout: float = 180) -> tuple[dict, bytes]:
    """Submit PARAMS with `png` as an mp4 job, wait for it; its status JSON and its video."""
    fields = {k: str(v) for k, v in PARAMS.model_dump(exclude_none=True).items()}
    resp = client.post("/v1/videos", files={"image": ("in.png", png, "image/png")}, data=fields)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    deadline = time.time() + timeout
    while (job := client.get(f"/v1/videos/{job_id}").json())["status"] not in ("completed", "failed", "cancelled"):
        assert time.time() < deadline, f"job {job_id} stuck: {job}"
        time.sleep(0.1)
    assert job["status"] == "completed", job
    return job, client.get(f"/v1/videos/{job_id}/content").content


def _serial_frames(png: bytes) -> np.ndarray:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the actors: the same reduction order, so the same bits
    try:
        return LocalPipeline(EngineConfig(num_stages=1)).generate(load_image(png), PARAMS).frames
    finally:
        torch.set_num_threads(threads)


def test_parareal_job_gives_the_serial_video_and_reports_the_solve(ray_session, tmp_path, png, reference_pipe):
    with serving(_service(tmp_path, "svc-pr"), "svdpipe-parareal") as (client, _port):
        job, mp4 = _run_job(client, png)
    ran = job["parameters"]
    assert ran["latency_mode"] == "parareal" and ran["cfg_split"] is False
    # tol 0: iterations run out at k = N = 3 blocks, every block's steps were evaluated at least once
    assert ran["parareal_iterations"] == 3
    assert ran["parareal_unet_evals"] >= PARAMS.num_inference_steps
    assert isinstance(ran["parareal_final_change"], float) and ran["parareal_final_change"] >= 0
    # The API serves lossy containers, not float frames. That parareal at tol 0 gives the serial floats to the bit
    # is tests/ray/test_latency_modes.py's; here the job's video must be the serial frames' video. Not to the
    # byte: x264 turns a one-level change of a few uint8 values (an fp32 rounding flip) into decoded
    # differences of up to ~16 levels in a block (BENCHMARKS.md), and one CI run differed that way. A wrong
    # result differs everywhere: one step fewer gives a mean of 13.5 levels, another seed 18.7.
    serial = _serial_frames(png)
    got, expected = decoded(mp4), decoded(encode_video(serial, "mp4", PARAMS.fps))
    assert got.shape == expected.shape
    assert float(np.abs(got.astype(float) - expected).mean()) <= 2.0
    resolved = VideoParams(**{k: ran[k] for k in VideoParams.model_fields})
    want = diffusers_frames(reference_pipe, load_image(png), resolved)
    assert float(np.abs(serial - want).max()) <= TOLERANCE


def test_wide_job_gives_the_serial_video(ray_session, tmp_path, png):
    with serving(_service(tmp_path, "svc-wide", latency_mode="wide", wide_size=2), "svdpipe-wide") as (client, _):
        job, mp4 = _run_job(client, png)
    ran = job["parameters"]
    assert ran["latency_mode"] == "wide" and ran["wide_actors"] == 2
    # Lossy containers again (see above): the float frames' equality is tests/ray/test_wide.py's
    got, expected = decoded(mp4), decoded(encode_video(_serial_frames(png), "mp4", PARAMS.fps))
    assert got.shape == expected.shape
    assert float(np.abs(got.astype(float) - expected).mean()) <= 2.0
