"""The wide UNet forward across real processes (gloo): exact against the single-process forward for P = 2, 3, 4
with uneven frame and position splits and the CFG batch of two; the same bits on every rank; bytes as predicted;
and local GroupNorm statistics (the negative control) measurably wrong."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
import torch.multiprocessing as mp

from svdpipe.architectures import TINY_UNET
from svdpipe.wide.traffic import forward_bytes, gather_bytes
from tests.unit.wide_gloo_worker import GROUP_SIZES, SHAPE, run_rank
from tests.unit.wide_support import one_thread, tiny_unet, unet_inputs

WORLD = max(GROUP_SIZES)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[int, list[dict]]:
    """Each group size's per-rank results, from one start of WORLD processes.

    Forked from a forkserver that has imported the worker (torch, diffusers) once; forking this process instead
    could hang in OpenMP, which earlier tests may have used."""
    tmp = tmp_path_factory.mktemp("wide_gloo")
    multiprocessing.get_context("forkserver").set_forkserver_preload([run_rank.__module__])
    args = (WORLD, str(tmp / "rendezvous"), str(tmp))
    mp.start_processes(run_rank, args=args, nprocs=WORLD, join=True, start_method="forkserver")
    return {p: [torch.load(tmp / f"p{p}_rank{r}.pt", weights_only=False) for r in range(p)] for p in GROUP_SIZES}


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    """The plain single-process `unet(...)` prediction, in fp64 and fp32."""
    out = {}
    for name, dtype in (("fp64", torch.float64), ("fp32", torch.float32)):
        unet = tiny_unet(dtype)
        with torch.no_grad(), one_thread():
            out[name] = unet(**unet_inputs(unet, *SHAPE.values(), dtype)).sample
    return out


@pytest.mark.parametrize("parts", GROUP_SIZES)
def test_wide_forward_is_exact_on_every_rank(ranks, reference, parts):
    results = ranks[parts]
    fp64 = (results[0]["fp64"] - reference["fp64"]).abs().max().item()
    fp32 = (results[0]["fp32"] - reference["fp32"]).abs().max().item() / reference["fp32"].abs().max().item()
    assert fp64 < 1e-10
    assert fp32 < 1e-5
    for other in results[1:]:  # statistics merged in rank order: every rank computes the same bits
        assert torch.equal(other["fp64"], results[0]["fp64"])
        assert torch.equal(other["fp32"], results[0]["fp32"])


@pytest.mark.parametrize("parts", GROUP_SIZES)
def test_local_group_norm_statistics_are_wrong(ranks, reference, parts):
    error = (ranks[parts][0]["local"] - reference["fp64"]).abs().max().item()
    assert error > 1e-4


@pytest.mark.parametrize("parts", GROUP_SIZES)
def test_bytes_moved_match_the_analytic_count(ranks, parts):
    for item_bytes, name in ((8, "fp64"), (4, "fp32")):
        expected = forward_bytes(TINY_UNET, *SHAPE.values(), parts, item_bytes)
        gathered = gather_bytes(
            SHAPE["batch"], SHAPE["frames"], TINY_UNET["out_channels"], *list(SHAPE.values())[2:], parts, item_bytes
        )
        for rank, result in enumerate(ranks[parts]):
            count = result[f"{name}_count"]
            assert count.all_to_all_bytes == expected.all_to_all_bytes[rank]
            assert count.stats_bytes == expected.stats_bytes[rank]
            assert (count.all_to_all_calls, count.stats_calls) == (expected.all_to_all_calls, expected.stats_calls)
            assert result[f"{name}_gather_bytes"] == gathered[rank]
