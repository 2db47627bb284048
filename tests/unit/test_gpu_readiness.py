"""The GPU defects that show on the CPU: memory arithmetic, device checks, fp32 parareal correction, progress
after a step's work, decode chunks from memory, loading in the target dtype."""

from __future__ import annotations

import asyncio

import numpy as np
import pydantic
import pytest
import torch

from svdpipe import device, memory, parareal, stages
from svdpipe.config import EngineConfig, VideoParams, resolve_params
from svdpipe.errors import ConfigError
from svdpipe.models import encoder_copy, model_spec, weight_bytes
from svdpipe.placement import check_devices
from tests.conftest import diffusers_frames

GIB = 1024**3

# ------------------------------------------------------------------ fit check


def test_fit_check_arithmetic():
    fit = memory.check_fit(4 * GIB, 2 * GIB, 3, 20 * GIB, headroom=0.9)
    assert fit.per_copy_bytes == 6 * GIB
    assert fit.needed_bytes == 18 * GIB
    assert fit.usable_bytes == 18 * GIB
    assert fit.fits


def test_fit_check_rejects_with_the_arithmetic():
    with pytest.raises(ConfigError, match=r"4 model copies need 24.00 GiB .* 20.00 GiB free"):
        memory.check_fit(4 * GIB, 2 * GIB, 4, 20 * GIB, headroom=0.9)
    with pytest.raises(ConfigError):  # one byte over the usable memory
        memory.check_fit(9 * GIB + 1, 0, 2, 20 * GIB, headroom=0.9)


@pytest.mark.parametrize(("fraction", "actors", "copies"), [(1.0, 7, 1), (2.0, 7, 1), (0.33, 3, 3), (0.1, 3, 3)])
def test_copies_per_gpu(fraction, actors, copies):
    assert memory.copies_per_gpu(fraction, actors) == copies


def test_fit_check_bad_input():
    with pytest.raises(ValueError, match="copies"):
        memory.check_fit(1, 1, 0, 1)
    with pytest.raises(ValueError, match="headroom"):
        memory.check_fit(1, 1, 1, 1, headroom=0)


# ------------------------------------------------------------------ decode chunk from memory


def test_decode_chunk_is_the_largest_that_fits():
    # 10 GiB free, 90 % usable = 9 GiB, 1 GiB per frame: 9 frames at once
    assert memory.decode_chunk_for_memory(25, GIB, 10 * GIB, headroom=0.9) == 9
    assert memory.decode_chunk_for_memory(25, GIB, 9 * GIB, headroom=1.0) == 9
    assert memory.decode_chunk_for_memory(25, GIB, 9 * GIB - 1, headroom=1.0) == 8
    assert memory.decode_chunk_for_memory(4, GIB, 100 * GIB) == 4  # never more than the frames
    assert memory.decode_chunk_for_memory(25, GIB, GIB // 2) == 1  # nothing smaller exists
    assert memory.decode_chunk_for_memory(25, 0, GIB) == 25  # not measured: diffusers' default


def test_max_decode_chunk_is_the_tightest_actor():
    assert memory.max_decode_chunk([(GIB, 10 * GIB), (GIB, 5 * GIB)]) == 4
    assert memory.max_decode_chunk([(0, 0), (0, 0)]) is None  # CPU actors


def test_auto_decode_chunk_resolves_from_the_limit():
    spec = model_spec("tiny")
    auto = VideoParams(num_frames=6, decode_chunk_size="auto")
    assert resolve_params(auto, spec, max_decode_chunk=4).decode_chunk_size == 4
    assert resolve_params(VideoParams(num_frames=6), spec, max_decode_chunk=4).decode_chunk_size == 4  # GPU default
    assert resolve_params(auto, spec, max_decode_chunk=None).decode_chunk_size == 6  # CPU: diffusers' default
    assert resolve_params(VideoParams(num_frames=6), spec).decode_chunk_size == 6
    explicit = VideoParams(num_frames=6, decode_chunk_size=2)
    assert resolve_params(explicit, spec, max_decode_chunk=4).decode_chunk_size == 2
    with pytest.raises(pydantic.ValidationError):
        VideoParams(decode_chunk_size=0)


def test_auto_chunk_frames_equal_diffusers_with_that_chunk(tiny_model, reference_pipe, image):
    params = resolve_params(
        VideoParams(num_frames=3, num_inference_steps=2, seed=5, height=64, width=64, decode_chunk_size="auto"),
        tiny_model.spec,
        max_decode_chunk=2,
    )
    assert params.decode_chunk_size == 2
    state = stages.encode(tiny_model, image, params)
    state = stages.denoise(tiny_model, state, range(params.num_inference_steps))
    ours = stages.decode(tiny_model, state)
    np.testing.assert_array_equal(ours, diffusers_frames(reference_pipe, image, params))


# ------------------------------------------------------------------ transports and devices


def test_gloo_with_gpu_actors_is_rejected():
    with pytest.raises(pydantic.ValidationError, match="'gloo' moves CPU tensors only"):
        EngineConfig(transport="gloo", num_gpus_per_actor=0.5)
    EngineConfig(transport="gloo", num_gpus_per_actor=0)


def test_cuda_ipc_needs_one_physical_gpu():
    names = ["m0", "m1", "m2"]
    check_devices("cuda_ipc", names, ["GPU-a", "GPU-a", "GPU-a"])
    with pytest.raises(ConfigError, match=r"one physical GPU.*m2 on GPU-b"):
        check_devices("cuda_ipc", names, ["GPU-a", "GPU-a", "GPU-b"])
    with pytest.raises(ConfigError, match="needs every model actor on a GPU"):
        check_devices("nccl", names, ["GPU-a", None, "GPU-c"])
    check_devices("nccl", names, ["GPU-a", "GPU-b", "GPU-c"])
    check_devices("object_store", names, [None, "GPU-a", "GPU-b"])


# ------------------------------------------------------------------ parareal correction in fp32


def test_parareal_correction_is_computed_in_fp32():
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(4096, generator=gen).half()
    # coarse solves of different magnitudes: their fp16 difference is not exact
    g_old = (torch.randn(4096, generator=gen) * 100).half()
    g_new = (torch.randn(4096, generator=gen) * 0.37).half()
    reference = (f.double() + (g_new.double() - g_old.double())).float().half()
    out = parareal.correct(f, g_new, g_old)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    in_fp16 = f + (g_new - g_old)
    assert not torch.equal(in_fp16, reference)  # what the fp16 arithmetic gave: not the fp32 correction


def test_parareal_correction_is_zero_where_coarse_solves_agree():
    f = torch.randn(64).half()
    g = torch.randn(64).half()
    assert torch.equal(parareal.correct(f, g, g.clone()), f)


def test_parareal_fp16_driver_uses_the_fp32_correction():
    blocks = [range(0, 2), range(2, 4), range(4, 6)]
    calls = []

    async def fine(n, x):
        return (x.float() * 0.9 + 0.1).to(x.dtype)

    async def coarse(n, x):
        calls.append(x.dtype)
        return (x.float() * 0.8 + 0.1).to(x.dtype)

    u0 = torch.linspace(-1, 1, 257).half()
    out, stats = asyncio.run(parareal.parareal(u0, blocks, fine, coarse))
    assert out.dtype == torch.float16 and stats.exact
    serial = u0
    for n in range(3):
        serial = asyncio.run(fine(n, serial))
    assert torch.equal(out, serial)


# ------------------------------------------------------------------ progress after the step's work


class RecordingEvent:
    def __init__(self, log, count):
        self.log, self.n = log, count

    def record(self):
        self.log.append(("record", self.n))

    def synchronize(self):
        self.log.append(("done", self.n))


def test_progress_fires_after_the_step_finishes():
    log: list = []
    counter = iter(range(100))
    # a device whose kernels run asynchronously (as on a GPU): a report lags one step behind
    steps = device.CompletedSteps(
        lambda i: log.append(("report", i)), "cuda", lambda: RecordingEvent(log, next(counter)), lag=1
    )
    for i in range(3):
        log.append(("launch", i))
        steps.queued(i)
    steps.flush()
    for i in range(3):
        assert log.index(("done", i)) < log.index(("report", i))  # reported only once its work finished
        assert log.index(("record", i)) > log.index(("launch", i))
    # step i is reported while step i + 1 is queued: the device never waits for a report
    assert log.index(("launch", 1)) < log.index(("report", 0))
    assert [e for e in log if e[0] == "report"] == [("report", 0), ("report", 1), ("report", 2)]


def test_on_the_cpu_a_step_is_reported_when_queued():
    reported: list[int] = []
    steps = device.CompletedSteps(reported.append, "cpu")
    steps.queued(0)
    assert reported == [0]  # the CPU ran the step before `queued`: no reason to wait for the next one


def test_denoise_reports_each_step_once_in_order(tiny_model, image):
    params = resolve_params(
        VideoParams(num_frames=2, num_inference_steps=3, seed=1, height=64, width=64), tiny_model.spec
    )
    seen: list[int] = []
    state = stages.encode(tiny_model, image, params)
    stages.denoise(tiny_model, state, range(3), seen.append)
    assert seen == [0, 1, 2]


def test_owner_half_first_only_where_launches_are_asynchronous():
    assert device.launch_owner_half_first("cuda:0")
    assert not device.launch_owner_half_first("cpu")
    t = torch.ones(3)
    assert device.host_copy(t)() is t


def test_wall_clock_is_time_time_on_cpu():
    import time

    assert device.wall_clock("cpu") is time.time


# ------------------------------------------------------------------ loading


def test_weight_bytes_of_the_tiny_model(tiny_model):
    parts = tiny_model.pipe.unet, tiny_model.pipe.vae, tiny_model.pipe.image_encoder
    counted = sum(t.numel() for m in parts for t in m.state_dict().values())
    assert weight_bytes("tiny", "fp32") == counted * 4
    encoder = tiny_model.pipe.vae.encoder, tiny_model.pipe.vae.quant_conv
    encoder_elements = sum(t.numel() for m in encoder for t in m.state_dict().values())
    assert weight_bytes("tiny", "fp16") == counted * 2 + encoder_elements * 4  # + the fp32 encoder copy


def test_weight_bytes_from_a_saved_directory(tmp_path, tiny_model):
    tiny_model.pipe.save_pretrained(tmp_path)
    assert weight_bytes(str(tmp_path), "fp32") == weight_bytes("tiny", "fp32")
    assert weight_bytes("org/some-model", "fp16") is None


def test_encoder_copy_has_no_decoder_and_encodes_the_same(tiny_model):
    vae = tiny_model.pipe.vae
    copy = encoder_copy(vae)
    assert copy.decoder is None and vae.decoder is not None
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(copy.encode(x).latent_dist.mode(), vae.encode(x).latent_dist.mode(), rtol=0, atol=0)


def test_from_pretrained_loads_in_the_target_dtype(tmp_path, tiny_model):
    from svdpipe.models import load_model

    tiny_model.pipe.save_pretrained(tmp_path)
    model = load_model(str(tmp_path), "bf16", "cpu")
    assert model.pipe.unet.dtype == torch.bfloat16 and model.pipe.vae.dtype == torch.bfloat16


def test_cli_takes_a_decode_chunk_size_or_auto(capsys):
    from svdpipe.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["generate", "--out", "x.mp4", "--decode-chunk-size", "2"]).decode_chunk_size == 2
    assert parse(["generate", "--out", "x.mp4", "--decode-chunk-size", "auto"]).decode_chunk_size == "auto"
    with pytest.raises(SystemExit):
        parse(["generate", "--out", "x.mp4", "--decode-chunk-size", "most"])
    assert "expected 'auto' or a number, got 'most'" in capsys.readouterr().err


def test_actors_sharing_a_gpu_must_fit_at_their_peaks_together():
    memory.check_peaks([("m0", "GPU-a", 4 * GIB, 10 * GIB), ("m1", "GPU-a", 5 * GIB, 10 * GIB)], headroom=0.9)
    memory.check_peaks([("m0", "GPU-a", 6 * GIB, 10 * GIB), ("m1", "GPU-b", 6 * GIB, 10 * GIB)])  # one each
    memory.check_peaks([("m0", None, 0, 0), ("m1", None, 0, 0)])  # CPU actors
    with pytest.raises(ConfigError, match=r"peak at 9.50 GiB together \(m0 4.50 GiB, m1 5.00 GiB\)"):
        memory.check_peaks([("m0", "GPU-a", int(4.5 * GIB), 10 * GIB), ("m1", "GPU-a", 5 * GIB, 10 * GIB)])
