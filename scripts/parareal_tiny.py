"""Parareal on the tiny model (random weights): iterations, frame error and modelled latency per tolerance.

    PYTHONPATH=. python scripts/parareal_tiny.py [--steps 25] [--blocks 7 5] [--seeds 0 1 2]

For each (T, N, tol): parareal in this process (the values are those the stage actors would compute), then
the frames' max abs difference from the serial result, and svdpipe.parareal.schedule's latency and compute
in UNet evaluations against the serial T. Real SVD weights are not available here: how fast parareal
converges on the real model is unknown, and these random-weight figures say nothing about it.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from svdpipe import parareal, stages
from svdpipe.cli import SAMPLE_IMAGE
from svdpipe.config import VideoParams, resolve_params
from svdpipe.images import load_image
from svdpipe.local import solve_parareal
from svdpipe.models import load_model
from svdpipe.partition import partition_steps

TOLS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--blocks", type=int, nargs="+", default=[7, 5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model("tiny", "fp32", "cpu")
    image = load_image(SAMPLE_IMAGE.read_bytes())
    rows = []
    for n in args.blocks:
        blocks = partition_steps(args.steps, n)
        for seed in args.seeds:
            params = resolve_params(VideoParams(num_inference_steps=args.steps, seed=seed), model.spec)
            state = stages.encode(model, image, params, "tiny")
            serial = state
            for block in blocks:
                serial = stages.denoise(model, serial, block)
            serial_frames = stages.decode(model, serial)
            scale = float(serial.latents.abs().max())
            for tol in TOLS:
                solved, stats = solve_parareal(model, state, blocks, tol)
                frames = stages.decode(model, solved)
                sched = parareal.schedule([len(b) for b in blocks], max(stats.iterations, 1))
                rows.append(
                    {
                        "steps": args.steps,
                        "blocks": n,
                        "seed": seed,
                        "tol": tol,
                        "iterations": stats.iterations,
                        "exact": stats.exact,
                        "final_change": stats.final_change,
                        "changes": list(stats.changes),
                        "final_latents_max_abs": scale,
                        "latents_max_diff": float((solved.latents - serial.latents).abs().max()),
                        "frames_max_diff": float(np.abs(frames - serial_frames).max()),
                        "unet_evals_started_in_process": stats.unet_evals,
                        "latency_ratio": sched.latency_ratio,
                        "compute_ratio": sched.compute_ratio,
                    }
                )
                r = rows[-1]
                print(
                    f"T={args.steps} N={n} seed={seed} tol={tol:g}: k={r['iterations']} exact={r['exact']} "
                    f"change={r['final_change']:.3g} frames diff={r['frames_max_diff']:.3g} "
                    f"latency x{r['latency_ratio']:.2f} compute x{r['compute_ratio']:.2f}",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
