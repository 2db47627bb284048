"""One rank of the real multi-process wide-step test: gloo over a file rendezvous, subgroups of 2, 3 and 4 ranks.

Every rank builds the tiny UNet from its fixed seed (identical weights everywhere), runs the wide forward in fp64
and fp32 (and fp64 with local GroupNorm statistics, the negative control) for each group it belongs to, and saves
the gathered prediction and its byte counts for the parent test to check.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

# What building the tiny UNet imports (diffusers' pipeline, transformers' CLIP) is imported here, at module level,
# so that a forkserver preloading this module pays the ~8 s of imports once rather than once per rank.
from diffusers import StableVideoDiffusionPipeline  # noqa: F401
from transformers import CLIPVisionModelWithProjection  # noqa: F401

from svdpipe.wide.comm import TorchComm
from svdpipe.wide.unet import gather_frames, shard_frames, wide_unet_forward
from tests.unit.wide_support import LocalStats, tiny_unet, unet_inputs

SHAPE = {"batch": 2, "frames": 7, "height": 10, "width": 14}  # CFG batch; uneven frames and positions
GROUP_SIZES = (2, 3, 4)


def run_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        unets = {dtype: tiny_unet(dtype) for dtype in (torch.float64, torch.float32)}
        for parts in GROUP_SIZES:
            group = dist.new_group(list(range(parts)))  # every rank joins the call, members or not
            if rank >= parts:
                continue
            comm = TorchComm(group)
            results: dict[str, object] = {}
            for name, dtype, wrap in (
                ("fp64", torch.float64, None),
                ("fp32", torch.float32, None),
                ("local", torch.float64, LocalStats),
            ):
                unet = unets[dtype]
                inputs = unet_inputs(unet, SHAPE["batch"], SHAPE["frames"], SHAPE["height"], SHAPE["width"], dtype)
                sample = shard_frames(inputs.pop("sample"), parts, rank)
                with torch.no_grad():
                    shard = wide_unet_forward(
                        unet, wrap(comm) if wrap else comm, sample, **inputs, num_frames=SHAPE["frames"]
                    )
                    count = comm.reset()
                    full = gather_frames(comm, shard, SHAPE["frames"])
                results[name] = full
                results[f"{name}_count"] = count
                results[f"{name}_gather_bytes"] = comm.reset().total_bytes
            torch.save(results, Path(out_dir) / f"p{parts}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()
