"""`svdpipe gpu-check`'s driver: each part in a subprocess with its own time budget, their results (or what
went wrong) in one JSON and one Markdown report. Nothing is downloaded: the model is a built-in architecture
with random weights, exported once to a directory in the output folder."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from svdpipe.gpucheck.report import markdown
from svdpipe.gpucheck.settings import CheckSettings

PARTS = ("gpu_tests", "export", "measure", "compile", "bench")
REPO_ROOT = Path(__file__).resolve().parents[2]


def run_check(out_dir: Path, dry_run: bool, budget_scale: float = 1.0) -> dict[str, Any]:
    """Run every part (one failing or running out of time does not stop the others) and write the reports."""
    settings = (CheckSettings.for_dry_run() if dry_run else CheckSettings.for_gpu()).scaled(budget_scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_path = out_dir / "settings.json"
    settings_path.write_text(json.dumps(settings.to_json(), indent=2) + "\n")
    deadline = time.monotonic() + settings.total_s
    report: dict[str, Any] = {
        "dry_run": dry_run,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(settings),
        "settings": settings.to_json(),
        "parts": {},
    }
    model_dir = out_dir / "model"
    env = _child_env()
    for name in PARTS:
        budget = min(settings.budgets[name], max(0.0, deadline - time.monotonic()))
        if name in ("measure", "compile", "bench") and not (model_dir / "model_index.json").exists():
            report["parts"][name] = {"status": "skipped", "reason": "the export part did not produce a model"}
            continue
        if budget < 1:
            report["parts"][name] = {"status": "skipped", "reason": "the check's total time was used up"}
            continue
        command, result_path = _command(name, settings, settings_path, model_dir, out_dir)
        report["parts"][name] = _run_part(name, command, result_path, budget, env, out_dir)
        _write(report, out_dir)
    report["failed"] = [n for n, p in report["parts"].items() if p["status"] != "ok"]
    report["wall_s"] = settings.total_s - max(0.0, deadline - time.monotonic())
    shutil.rmtree(model_dir, ignore_errors=True)  # gigabytes of random weights; the figures are in the report
    _write(report, out_dir)
    return report


def _write(report: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "gpu-check.md").write_text(markdown(report))


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("DIFFUSERS_VERBOSITY", "error")
    env["HF_HUB_OFFLINE"] = "1"  # never download anything
    return env


def _command(
    name: str, s: CheckSettings, settings_path: Path, model_dir: Path, out_dir: Path
) -> tuple[list[str], Path]:
    py = sys.executable
    result = out_dir / f"{name}.json"
    if name == "gpu_tests":
        junit = out_dir / "gpu-tests.xml"
        cmd = [py, "-m", "pytest", "-m", "gpu", str(REPO_ROOT / "tests" / "gpu"), "-q", "-p", "no:cacheprovider"]
        return [*cmd, f"--junitxml={junit}"], junit
    if name in ("export", "measure", "compile"):
        return [py, "-m", "svdpipe.gpucheck.measure", name, str(settings_path), str(model_dir), str(result)], result
    profile = out_dir / "profile.json"
    bench = [
        py, "-m", "svdpipe", "bench",
        "--model", str(model_dir),
        "--dtype", s.dtype,
        "--num-gpus-per-actor", str(s.bench_gpus_per_actor),
        "--stages", str(s.bench_stages),
        "--modes", "pipeline,sequential",
        "--steps", str(s.bench_steps),
        "--frames", str(s.bench_frames),
        "--height", str(s.height),
        "--width", str(s.width),
        "--requests", str(s.bench_requests),
        "--idle-requests", "1",
        "--out-json", str(result),
        "--json",
    ]  # fmt: skip
    if profile.exists():
        bench += ["--profile", str(profile)]
    return bench, result


def _run_part(
    name: str, command: list[str], result_path: Path, budget: float, env: dict[str, str], out_dir: Path
) -> dict[str, Any]:
    t0 = time.monotonic()
    log = out_dir / f"{name}.log"
    part: dict[str, Any] = {"budget_s": round(budget, 1)}
    try:
        with log.open("w") as fh:
            proc = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, timeout=budget, env=env, check=False)
        # pytest exits 5 when it collects nothing (no tests/gpu in an installed copy): no failure of the GPU
        ok = proc.returncode == 0 or (name == "gpu_tests" and proc.returncode == 5)
        part["status"] = "ok" if ok else "failed"
        if not ok:
            part["error"] = f"exit status {proc.returncode}: {_tail(log)}"
    except subprocess.TimeoutExpired:
        part["status"] = "timeout"
        part["error"] = f"stopped at its budget of {budget:.0f} s: {_tail(log)}"
    except OSError as exc:
        part["status"] = "failed"
        part["error"] = f"could not start: {exc}"
    part["seconds"] = round(time.monotonic() - t0, 1)
    part["log"] = log.name
    try:
        part["result"] = _read_result(name, result_path)
    except (OSError, ValueError, ET.ParseError) as exc:
        part["result"] = None
        if part["status"] == "ok":
            part["status"], part["error"] = "failed", f"no readable result: {exc}"
    return part


def _read_result(name: str, path: Path) -> Any:
    if name == "gpu_tests":
        return junit_results(path)
    return json.loads(path.read_text())


def junit_results(path: Path) -> dict[str, Any]:
    """pytest's JUnit XML as JSON: counts, and each test's outcome, skip reason and recorded properties."""
    root = ET.parse(path).getroot()
    tests = []
    for case in root.iter("testcase"):
        outcome, reason = "passed", None
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                reason = node.get("message")
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        tests.append(
            {"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome, "reason": reason, **props}
        )
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "tests": tests}


def _tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def environment(s: CheckSettings) -> dict[str, Any]:
    """GPU name, driver, torch, CUDA and library versions (no GPU: says so)."""
    import diffusers
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = props.name
        env["gpu_memory_bytes"] = props.total_memory
        env["gpu_count"] = torch.cuda.device_count()
        env["driver"] = _driver_version()
    else:
        env["gpu"] = None
        env["driver"] = None
    return env


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
