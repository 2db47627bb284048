"""`svdpipe generate --engine ray --latency-mode cfg-split | parareal` end to end: diffusers' frames, and the log
says how the request ran."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from svdpipe.cli import main
from svdpipe.config import VideoParams, resolve_params
from svdpipe.images import load_image
from svdpipe.models import model_spec
from tests.conftest import diffusers_frames

TOLERANCE = 1e-5
SMALL = {"num_frames": 2, "height": 32, "width": 32}


@pytest.mark.parametrize(
    ("mode", "steps", "max_guidance", "split"),
    [
        ("cfg-split", 3, 3.0, True),  # three stages of one step each
        ("cfg-split", 5, 2.5, True),  # uneven ranges: 2, 2 and 1 steps
        ("cfg-split", 3, 1.0, False),  # guidance off: one half only, nothing to split
        ("parareal", 5, 3.0, False),  # tol 0: three blocks, three iterations, exact
    ],
)
def test_generate_latency_mode_equals_diffusers(
    ray_session, tmp_path, png, reference_pipe, caplog, mode, steps, max_guidance, split
):
    image_path = tmp_path / "in.png"
    image_path.write_bytes(png)
    out = tmp_path / "frames.npy"
    params = VideoParams(num_inference_steps=steps, max_guidance_scale=max_guidance, seed=11, **SMALL)
    args = ["generate", "--engine", "ray", "--image", str(image_path), "--out", str(out), "--model", "tiny"]
    args += ["--stages", "3", "--latency-mode", mode, "--transport", "object_store"]
    args += ["--num-cpus-per-actor", "0.05", "--torch-threads", "1"]
    args += ["--num-inference-steps", str(steps), "--max-guidance-scale", str(max_guidance), "--seed", "11"]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    log = caplog.text
    want = diffusers_frames(reference_pipe, load_image(png), resolve_params(params, model_spec("tiny")))
    got = np.load(out)
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= TOLERANCE
    if mode == "parareal":
        assert "parareal 3 iteration(s), exact" in log and "steps split" not in log
    elif split:
        assert "cfg-split: 3 of 3 ranges split" in log
        assert log.count("steps split, helper") == 3  # one line per stage range
    else:
        assert "guidance off" in log
        assert "steps split" not in log
