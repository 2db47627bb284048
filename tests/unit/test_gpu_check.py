"""`svdpipe gpu-check --dry-run`: the whole GPU check's script, end to end on the CPU with the tiny model, so it
cannot rot between the runs on a GPU. Checks the report's keys and that every part ran, not how fast."""

from __future__ import annotations

import json

from svdpipe.cli import main
from svdpipe.gpucheck.report import markdown
from svdpipe.gpucheck.run import PARTS

# The parts' budgets times this: the check's subprocesses share a busy machine's cores with other tests, and
# this test checks that every part runs and reports, not how fast (`svdpipe gpu-check` keeps the real budgets).
BUDGET_SCALE = "10"


def test_gpu_check_dry_run_writes_both_reports(tmp_path, capsys):
    rc = main(["gpu-check", "--dry-run", "--budget-scale", BUDGET_SCALE, "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["failed"] == [], {n: p.get("error") for n, p in report["parts"].items()}
    assert rc == 0
    assert report["dry_run"] is True
    assert {"gpu", "driver", "torch", "diffusers", "python"} <= report["environment"].keys()
    assert set(report["parts"]) == set(PARTS)
    parts = report["parts"]
    for part in parts.values():
        assert part["status"] == "ok" and part["seconds"] <= part["budget_s"]
    # the GPU tier: collected, and on this CPU machine every test skipped with its reason
    tests = parts["gpu_tests"]["result"]
    assert tests["counts"]["skipped"] == len(tests["tests"]) > 0
    assert all("CUDA" in t["reason"] for t in tests["tests"])
    # per frame count: our step ms, diffusers' step ms, decode per chunk size; then the compiled steps
    s = report["settings"]
    measured = parts["measure"]["result"]
    assert set(measured["frames"]) == {str(f) for f in s["frames"]}
    for frames, row in measured["frames"].items():
        assert row["step_ms_median"] > 0 and row["diffusers_step_ms_median"] > 0
        chunks = {str(c) for c in s["decode_chunks"] if c <= int(frames)}
        assert set(row["decode"]) == chunks and all(d["ms"] > 0 for d in row["decode"].values())
    assert measured["weights_estimated_bytes"] > 0
    assert set(parts["compile"]["result"]["frames"]) == {str(f) for f in s["frames"]}
    # the shared-device bench against sequential
    assert set(parts["bench"]["result"]["modes"]) == {"pipeline", "sequential"}
    assert not (tmp_path / "model").exists()  # the exported weights are removed
    md = (tmp_path / "gpu-check.md").read_text()
    assert md == markdown(report)
    for heading in ("## Parts", "## GPU tests", "## Per-step and decode figures", "## svdpipe bench"):
        assert heading in md
    assert "gpu-check.json" in capsys.readouterr().out


def test_report_says_what_failed():
    report = {
        "dry_run": False,
        "environment": {"gpu": "X"},
        "settings": {},
        "parts": {"export": {"status": "timeout", "error": "stopped at its budget of 45 s"}},
        "failed": ["export"],
    }
    md = markdown(report)
    assert "| export | timeout |" in md and "Failed or incomplete: export." in md


def test_gpu_budgets_keep_the_eight_minute_promise():
    from svdpipe.gpucheck.settings import CheckSettings

    gpu = CheckSettings.for_gpu()
    assert set(gpu.budgets) == set(PARTS)
    assert sum(gpu.budgets.values()) <= gpu.total_s <= 8 * 60  # the driver also stops at total_s
    assert gpu.bench_stages * gpu.bench_gpus_per_actor <= 1  # all bench actors on one GPU
    assert CheckSettings.for_dry_run().scaled(2).total_s == 2 * CheckSettings.for_dry_run().total_s
