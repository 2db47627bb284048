"""The wide-step cost model (pure): compute shares with frame and position imbalance, bytes from the shapes,
latency per collective, and the idle-request projection."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from svdpipe.wide.costs import LINKS, SVD_XT, TEMPORAL_FLOP_SHARE, Link, compute_share, project, wide_step
from svdpipe.wide.traffic import forward_bytes

NVLINK = LINKS["nvlink"]


def test_one_gpu_is_the_one_gpu_step():
    step = wide_step(0.76, 1, NVLINK)
    assert (step.compute_s, step.transfer_s, step.latency_s, step.gpus) == (0.76, 0.0, 0.0, 1)


def test_compute_share_takes_the_busiest_rank():
    assert compute_share(1) == 1.0
    # 25 frames over 4: 7 on the busiest rank; the innermost 9x16 = 144 positions split evenly
    assert compute_share(4) == pytest.approx((1 - TEMPORAL_FLOP_SHARE) * 7 / 25 + TEMPORAL_FLOP_SHARE * 36 / 144)
    # 7 ranks: 4 of 25 frames, 21 of 144 positions
    assert compute_share(7) == pytest.approx((1 - TEMPORAL_FLOP_SHARE) * 4 / 25 + TEMPORAL_FLOP_SHARE * 21 / 144)
    # 25 frames split evenly over 5, but not the innermost 144 positions (29 on the busiest rank)
    assert compute_share(5) == pytest.approx((1 - TEMPORAL_FLOP_SHARE) / 5 + TEMPORAL_FLOP_SHARE * 29 / 144)
    assert compute_share(4) > 1 / 4


def test_transfer_is_the_analytic_bytes_over_the_link():
    link = Link("test", 1e9, 1e-3, "test")
    step = wide_step(1.0, 4, link, shape=SVD_XT)
    traffic = forward_bytes(SVD_XT.unet_config, 2, 25, 72, 128, 4, 2)
    assert step.bytes_per_rank == max(traffic.total_bytes)
    assert step.transfer_s == pytest.approx(step.bytes_per_rank / 1e9)
    assert step.latency_s == pytest.approx((traffic.all_to_all_calls + traffic.stats_calls) * 1e-3)
    assert traffic.all_to_all_calls == 2 * (22 + 16) and traffic.stats_calls == 2 * 22


def test_cfg_halves_run_batch_one_on_twice_the_gpus_and_swap_predictions():
    halves = wide_step(0.76, 4, NVLINK, cfg_halves=True)
    whole = wide_step(0.76, 4, NVLINK)
    assert halves.gpus == 8
    assert halves.compute_s == pytest.approx(whole.compute_s / 2)
    swap = 7 * 4 * 72 * 128 * 2  # the busiest rank's 7 frames of the prediction, fp16
    assert halves.bytes_per_rank == max(forward_bytes(SVD_XT.unet_config, 1, 25, 72, 128, 4, 2).total_bytes) + swap
    assert wide_step(0.76, 1, NVLINK, cfg_halves=True).compute_s == pytest.approx(0.38)  # the repo's CFG split


def test_slower_links_cost_more():
    assert wide_step(0.76, 4, LINKS["pcie"]).total_s > wide_step(0.76, 4, NVLINK).total_s


def test_projection_keeps_the_other_phases():
    p = project("P=4", 4, True, NVLINK, step_s=0.76, steps=25, encode_s=0.1, decode_s=3.4, mux_s=0.3, hop_s=0.003)
    assert p.one_gpu_latency_s == pytest.approx(0.003 + 0.1 + 25 * 0.76 + 3.4 + 0.3)
    assert p.latency_s == pytest.approx(0.403 + 25 * p.step.total_s + 3.4)
    assert p.latency_split_decode_s == pytest.approx(0.403 + 25 * p.step.total_s + 3.4 * 4 / 25)  # 4 of 25 frames
    assert p.step_ratio == pytest.approx(p.step.total_s / 0.76)


def test_refuses_bad_input():
    with pytest.raises(ValueError, match="parts >= 1"):
        wide_step(0.76, 0, NVLINK)
    with pytest.raises(ValueError, match="positive step"):
        wide_step(0.0, 2, NVLINK)


def test_cost_model_imports_no_torch():
    code = "import sys, svdpipe.wide.costs; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]  # `-c` puts the working directory first on sys.path
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0
