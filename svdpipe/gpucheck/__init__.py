"""`svdpipe gpu-check`: the whole GPU check in one command (the GPU test tier, per-step and decode figures next
to diffusers', torch.compile, and a shared-GPU bench), with a JSON and a Markdown report; `--dry-run` runs the
same parts on the CPU with the tiny model, which is how CI keeps the script from rotting."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

_HELP = """Run the GPU check on this machine's first GPU (in under 8 minutes) and write gpu-check.json and
gpu-check.md to --out. Parts, each with its own time budget, in a subprocess of its own (a failure or a timeout
loses that part only; the report says which): the GPU test tier (pytest -m gpu), export of random-full-xt in
fp16 (random weights: nothing is downloaded), per-step ms at 576x1024 with 14 and 25 frames through svdpipe and
through diffusers' own pipeline, VAE decode ms and peak memory per chunk size, the same steps with the UNet
compiled, and `svdpipe bench` with 7 model actors sharing the GPU against sequential."""


def add_gpu_check_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "gpu-check",
        help="the whole GPU check: GPU tests, step/decode/memory figures, shared-GPU bench; one report",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="folder for gpu-check.json, gpu-check.md and each part's log")
    p.add_argument("--dry-run", action="store_true", help="the same parts on the CPU with the tiny model (CI)")
    p.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="multiply every part's time budget (a busy CI machine; default 1: under 8 minutes on a GPU)",
    )


def run_gpu_check_command(args: argparse.Namespace) -> int:
    from svdpipe.gpucheck.run import run_check

    out = Path(args.out)
    if not 0 < args.budget_scale <= 100:
        raise ValueError(f"--budget-scale must be in (0, 100], got {args.budget_scale}")
    report = run_check(out, args.dry_run, args.budget_scale)
    failed = report["failed"]
    print(f"wrote {out / 'gpu-check.json'} and {out / 'gpu-check.md'}; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0
