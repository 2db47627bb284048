"""Count the FLOPs of SVD-XT's UNet by layer kind (torch's FlopCounterMode on meta tensors: no weights, no
compute), to split a step into frame-sharded and position-sharded work: the source of
svdpipe.wide.costs.TEMPORAL_FLOP_SHARE. Usage: python scripts/wide_flops.py"""

from __future__ import annotations

import re

import torch
from diffusers import UNetSpatioTemporalConditionModel
from torch.utils.flop_counter import FlopCounterMode

from svdpipe.architectures import FULL_UNET

KINDS = {
    "temporal ResNets": r"temporal_res_block",
    "temporal transformer blocks": r"temporal_transformer_blocks\.\d+",
    "spatial ResNets": r"spatial_res_block",
    "spatial transformer blocks": r"\.transformer_blocks\.\d+",
}


def main(batch: int = 2, frames: int = 25, height: int = 72, width: int = 128) -> None:
    # .to("meta") after building: AlphaBlender makes its mix_factor with torch.Tensor([...]), on the CPU
    unet = UNetSpatioTemporalConditionModel(**{**FULL_UNET, "num_frames": frames}).half().to("meta")
    meta = {"device": "meta", "dtype": torch.half}
    counter = FlopCounterMode(display=False, depth=None)
    with torch.no_grad(), counter:
        unet(
            torch.empty(batch, frames, 8, height, width, **meta),
            torch.tensor([1.0], device="meta"),
            torch.empty(batch, 1, 1024, **meta),
            torch.empty(batch, 3, **meta),
        )
    counts = counter.get_flop_counts()
    total = sum(counts["Global"].values())
    print(f"total {total / 1e12:.1f} TFLOP per UNet call (batch {batch}, {frames} frames, latent {height}x{width})")
    for kind, pattern in KINDS.items():
        flops = sum(sum(v.values()) for name, v in counts.items() if re.search(pattern + "$", name))
        print(f"{kind:<28}{flops / total:8.2%}")


if __name__ == "__main__":
    main()
