"""The CLI end to end on the tiny model (single-process engine)."""

from __future__ import annotations

import av
import numpy as np
import pytest

from svdpipe.cli import main


def test_generate_local_mp4(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    code = main(
        [
            "generate",
            "--engine",
            "local",
            "--model",
            "tiny",
            "--out",
            str(out),
            "--stages",
            "3",
            "--num-inference-steps",
            "4",
            "--num-frames",
            "3",
            "--seed",
            "5",
            "--height",
            "48",
        ]
    )
    assert code == 0
    assert "seed 5" in capsys.readouterr().out
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 3 and frames[0].shape == (48, 64, 3)


def test_generate_npy_matches_local_pipeline(tmp_path):
    from svdpipe.config import EngineConfig, VideoParams
    from svdpipe.images import load_image
    from svdpipe.local import LocalPipeline

    out = tmp_path / "frames.npy"
    args = [
        "generate",
        "--engine",
        "local",
        "--out",
        str(out),
        "--stages",
        "2",
        "--num-inference-steps",
        "3",
        "--seed",
        "3",
    ]
    assert main(args) == 0
    from svdpipe.cli import SAMPLE_IMAGE

    expected = LocalPipeline(EngineConfig(num_stages=1)).generate(
        load_image(SAMPLE_IMAGE), VideoParams(num_inference_steps=3, seed=3)
    )
    np.testing.assert_array_equal(np.load(out), expected.frames)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--height", "60"], "multiples of 8"),
        (["--num-frames", "0"], "num_frames"),
        (["--model", "/no/such/model"], "neither a built-in model"),
        (["--image", "/no/such.png"], "image file not found"),
        # the model's and the deployment's limits, checked before any work
        (["--height", "8", "--width", "8"], "height and width: 8x8 is too small"),
        (["--num-frames", "200", "--max-video-pixels", "100000"], "num_frames x height x width: 200x64x64"),
    ],
)
def test_generate_errors_are_one_line(tmp_path, capsys, args, message):
    code = main(["generate", "--engine", "local", "--out", str(tmp_path / "x.mp4"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def test_bad_extension(tmp_path, capsys):
    assert main(["generate", "--engine", "local", "--out", str(tmp_path / "x.avi")]) == 2
    assert "cannot tell the output format" in capsys.readouterr().err
